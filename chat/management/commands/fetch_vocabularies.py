import socket

from django.core.management.base import BaseCommand, CommandError

from chat import tokens


class Command(BaseCommand):
    help = "Download tiktoken vocabularies into TIKTOKEN_CACHE_DIR so token counting works offline."

    def add_arguments(self, parser):
        parser.add_argument("encodings", nargs="*", default=["o200k_base", "cl100k_base"])
        parser.add_argument(
            "--if-missing",
            action="store_true",
            help="only fetch vocabularies not in the cache yet (./run.sh: no network when all are there)",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=30.0,
            help="seconds a connection may stay silent before the download gives up (default 30)",
        )

    def handle(self, *args, encodings, if_missing, timeout, **options):
        if tokens.cache_disabled():
            raise CommandError(
                "TIKTOKEN_CACHE_DIR is set but empty: set it to a directory to keep vocabularies in."
            )
        missing = [name for name in encodings if not tokens.vocabulary_path(name).exists()]
        if if_missing and not missing:
            return
        self.stdout.write(f"Vocabulary cache: {tokens.cache_dir()}")
        # tiktoken downloads with requests and no timeout: a network that drops packets
        # would hang ./run.sh forever. urllib3 falls back to the socket default.
        socket.setdefaulttimeout(timeout)
        for name in missing if if_missing else encodings:
            if tokens.get_encoding(name, allow_download=True) is None:
                raise CommandError(f"Could not fetch the {name} vocabulary (see the log above).")
            self.stdout.write(self.style.SUCCESS(f"{name}: ready at {tokens.vocabulary_path(name)}"))
