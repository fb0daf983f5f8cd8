from django.core.management.base import BaseCommand, CommandError

from chat import tokens


class Command(BaseCommand):
    help = "Download tiktoken vocabularies into TIKTOKEN_CACHE_DIR so token counting works offline."

    def add_arguments(self, parser):
        parser.add_argument("encodings", nargs="*", default=["o200k_base", "cl100k_base"])

    def handle(self, *args, encodings, **options):
        self.stdout.write(f"Vocabulary cache: {tokens.cache_dir()}")
        for name in encodings:
            if tokens.get_encoding(name, allow_download=True) is None:
                raise CommandError(f"Could not fetch the {name} vocabulary (see the log above).")
            self.stdout.write(self.style.SUCCESS(f"{name}: ready at {tokens.vocabulary_path(name)}"))
