from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from chat import attachments
from chat.models import Attachment, Conversation


class Command(BaseCommand):
    help = (
        "Delete conversations (their messages and attached files) not updated for N days: a data-retention "
        "policy. Files uploaded but never sent are removed after a day either way."
    )

    def add_arguments(self, parser):
        parser.add_argument("--older-than", type=int, required=True, metavar="DAYS")
        parser.add_argument("--dry-run", action="store_true", help="Only say how many would go.")

    def handle(self, *args, older_than, dry_run, **options):
        if older_than < 1:
            raise CommandError("--older-than must be at least 1 day")
        old = Conversation.objects.filter(updated_at__lt=timezone.now() - timedelta(days=older_than))
        count = old.count()
        unsent = Attachment.objects.unsent().filter(
            created_at__lt=timezone.now() - attachments.UNSENT_LIFETIME
        )
        if dry_run:
            self.stdout.write(f"{count} conversations not updated for {older_than} days would be deleted.")
            self.stdout.write(
                f"{unsent.count()} files uploaded over a day ago and never sent would be removed."
            )
            return
        old.delete()  # each attachment's file goes with its row (chat.attachments.delete_stored_file)
        self.stdout.write(f"Deleted {count} conversations not updated for {older_than} days.")
        removed = attachments.purge_unsent()
        self.stdout.write(f"Removed {removed} files uploaded over a day ago and never sent.")
