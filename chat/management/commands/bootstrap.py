import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from chat.accounts import FIRST_ADMIN, initial_password_path


class Command(BaseCommand):
    help = "First run only: create an `admin` superuser with a random password and say how to sign in."

    def handle(self, *args, **options):
        User = get_user_model()
        if User.objects.exists():
            return
        if not settings.CHAT_PASSWORD_LOGIN:
            # A password nobody can use: the first staff come from the provider's groups.
            self.stdout.write(
                "Single sign-on only (CHAT_PASSWORD_LOGIN=false): no admin account made. Staff are "
                "the members of CHAT_OIDC_STAFF_GROUPS / CHAT_OIDC_SUPERUSER_GROUPS when they sign in.\n"
            )
            return
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser(FIRST_ADMIN, "", password)
        path = initial_password_path()
        site = f"http://{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}/"
        path.write_text(password + "\n")
        path.chmod(0o600)
        self.stdout.write(
            self.style.SUCCESS(
                f"\nCreated the first account. Sign in at {site} with\n"
                f"    username: admin\n    password: {password}\n"
                f"(also saved in {path}; change it under Account once signed in)\n"
            )
        )
