"""`oidc_setup '<json>'`: the provider's users (with their groups) and the chat site's client.

{"users": [{"username": "ada", "password": "…", "email": "…", "groups": ["staff"]}],
 "client": {"client_id": "chat", "client_secret": "…",
            "redirect_uri": "http://127.0.0.1:…/accounts/oidc/callback/",
            "post_logout_redirect_uri": "http://127.0.0.1:…/accounts/login/"}}
"""

import json

from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand
from oauth2_provider.models import Application


class Command(BaseCommand):
    def add_arguments(self, parser):
        parser.add_argument("spec")

    def handle(self, spec, **options):
        spec = json.loads(spec)
        for entry in spec.get("users", []):
            user, _ = User.objects.get_or_create(username=entry["username"])
            user.email = entry.get("email", "")
            user.first_name = entry.get("given_name", "")
            user.set_password(entry["password"])
            user.save()
            user.groups.set([Group.objects.get_or_create(name=name)[0] for name in entry.get("groups", [])])
        client = spec.get("client")
        if client:
            Application.objects.filter(client_id=client["client_id"]).delete()
            Application.objects.create(
                name="chat",
                client_id=client["client_id"],
                client_secret=client["client_secret"],
                client_type=Application.CLIENT_CONFIDENTIAL,
                authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
                redirect_uris=client["redirect_uri"],
                post_logout_redirect_uris=client.get("post_logout_redirect_uri", ""),
                algorithm=Application.RS256_ALGORITHM,
                skip_authorization=True,
            )
