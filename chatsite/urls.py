from django.contrib import admin
from django.urls import include, path

from chat.health import healthz
from chat.throttle import password_reset

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    # Django's view with a limit on requests (chat/throttle.py); the rest are Django's own.
    path("accounts/password_reset/", password_reset, name="password_reset"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("accounts/", include("chat.accounts_urls")),
    path("", include("chat.urls")),
]
