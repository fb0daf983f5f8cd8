from django.contrib import admin
from django.urls import include, path

from chat.health import healthz
from chat.metrics import metrics_view
from chat.oidc_views import SignInView, SignOutView, admin_login, password_accounts
from chat.throttle import password_reset

# The site's name, not Django's: named here, in the project, so that a host site that mounts
# the chat app (docs/reusable-app.md) keeps its own admin's name.
admin.site.site_header = admin.site.site_title = "Chat admin"
admin.site.index_title = "Conversations, usage and settings"

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
    # Before the admin's and Django's own: the same pages with single sign-on (chat/oidc_views.py).
    path("admin/login/", admin_login),
    path("accounts/login/", SignInView.as_view(), name="login"),
    path("accounts/logout/", SignOutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    # Django's view with a limit on requests (chat/throttle.py); the rest are Django's own.
    path("accounts/password_reset/", password_accounts(password_reset), name="password_reset"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("accounts/", include("chat.accounts_urls")),
    path("", include("chat.urls")),
]
