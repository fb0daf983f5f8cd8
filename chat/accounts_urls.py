"""Account creation: include under the same prefix as django.contrib.auth.urls, e.g.
``path("accounts/", include("chat.accounts_urls"))``. Optional for host sites that
create users their own way (SSO, their own sign-up)."""

from django.urls import path

from chat import accounts

app_name = "chat_accounts"

urlpatterns = [
    path("invite/<str:token>/", accounts.invite, name="invite"),
    path("signup/", accounts.signup, name="signup"),
]
