import json
import sys

from django.core.management.base import BaseCommand

from chat import exports
from chat.models import Conversation


class Command(BaseCommand):
    help = "Write every conversation with its messages as JSON Lines (one conversation a line), for backup."

    def add_arguments(self, parser):
        parser.add_argument("--output", "-o", default="-", help="File to write; - for standard output.")

    def handle(self, *args, output, **options):
        stream = sys.stdout if output == "-" else open(output, "w", encoding="utf-8")  # noqa: SIM115
        count = 0
        try:
            for conversation in (
                Conversation.objects.select_related("user").order_by("id").iterator(chunk_size=200)
            ):
                stream.write(json.dumps(exports.conversation_json(conversation), ensure_ascii=False) + "\n")
                count += 1
        finally:
            if stream is not sys.stdout:
                stream.close()
        self.stderr.write(f"Exported {count} conversations.")
