"""Account creation: include under the same prefix as django.contrib.auth.urls, e.g.
``path("accounts/", include("chat.accounts_urls"))``. Optional for host sites that
create users their own way (SSO, their own sign-up)."""

from django.urls import path

from chat import accounts, oidc_views

app_name = "chat_accounts"

urlpatterns = [
    path("invite/<str:token>/", accounts.invite, name="invite"),
    path("signup/", accounts.signup, name="signup"),
    # Single sign-on (chat/oidc.py): the provider redirects back to the callback.
    path("oidc/start/", oidc_views.StartView.as_view(), name="oidc_start"),
    path("oidc/callback/", oidc_views.CallbackView.as_view(), name="oidc_callback"),
]
