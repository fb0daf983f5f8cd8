from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from chat.models import Conversation


class Command(BaseCommand):
    help = "Delete conversations (and their messages) not updated for N days: a data-retention policy."

    def add_arguments(self, parser):
        parser.add_argument("--older-than", type=int, required=True, metavar="DAYS")
        parser.add_argument("--dry-run", action="store_true", help="Only say how many would go.")

    def handle(self, *args, older_than, dry_run, **options):
        if older_than < 1:
            raise CommandError("--older-than must be at least 1 day")
        old = Conversation.objects.filter(updated_at__lt=timezone.now() - timedelta(days=older_than))
        count = old.count()
        if dry_run:
            self.stdout.write(f"{count} conversations not updated for {older_than} days would be deleted.")
            return
        old.delete()
        self.stdout.write(f"Deleted {count} conversations not updated for {older_than} days.")
