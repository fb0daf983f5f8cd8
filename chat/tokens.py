"""Token counting with tiktoken, matching what OpenAI bills for chat requests.

Prompt tokens follow the OpenAI cookbook's chat format: every message costs 3
tokens of framing plus its role and content (+1 with a `name`), and 3 more prime
the reply. Each message's content count is stored on the message, so a prompt's
count is a sum rather than a re-tokenisation of the whole history.

Vocabularies load from the local tiktoken cache only (TIKTOKEN_CACHE_DIR). When
one is missing, counts are None ("unavailable"), never a guess and never a
download in the middle of a chat: `manage.py fetch_vocabularies` fetches them.
"""

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from pathlib import Path

from django.conf import settings

log = logging.getLogger(__name__)

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
VOCABULARY_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
_load_lock = threading.Lock()


def cache_dir() -> Path:
    """Where tiktoken looks for vocabularies (its own rules, in its own order: a variable
    that is set wins even when empty, see tiktoken.load.read_file_cached)."""
    for variable in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if variable in os.environ:
            return Path(os.environ[variable])
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def cache_disabled() -> bool:
    """An empty TIKTOKEN_CACHE_DIR makes tiktoken download the vocabulary on every load."""
    return os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get("DATA_GYM_CACHE_DIR")) == ""


def vocabulary_path(name: str) -> Path:
    url = VOCABULARY_URL.format(name=name)
    return cache_dir() / hashlib.sha1(url.encode()).hexdigest()


def encoding_name(model: str, override: str = "") -> str:
    """The model's configured encoding, else tiktoken's for it, else CHAT_TOKEN_ENCODING."""
    from tiktoken.model import encoding_name_for_model

    if override:
        return override
    try:
        return encoding_name_for_model(model)
    except KeyError:
        return settings.CHAT_TOKEN_ENCODING


def _load(name: str, allow_download: bool):
    import tiktoken

    if not allow_download and cache_disabled():
        log.warning("Token counts are unavailable: TIKTOKEN_CACHE_DIR is empty, so tiktoken would download.")
        return None
    if not allow_download and not vocabulary_path(name).exists():
        log.warning(
            "Token counts are unavailable: the %s vocabulary is not in %s. "
            "Run `python manage.py fetch_vocabularies` once with network access.",
            name,
            cache_dir(),
        )
        return None
    try:
        return tiktoken.get_encoding(name)
    except OSError as error:  # no network, a refused download, an unreadable file (requests' errors too)
        log.error("Token counts are unavailable: the %s vocabulary could not be loaded: %s", name, error)
        return None
    except Exception:
        log.exception("Token counts are unavailable: the %s vocabulary could not be loaded", name)
        return None


# How to turn token counts on, in the words the page shows (a tooltip on "tokens not
# counted", the budget line): the operator's fix, not the user's.
HOW_TO_COUNT = (
    "Token counts need tiktoken's vocabularies on the server: start it with ./run.sh while "
    "it can reach the internet, or run `python manage.py fetch_vocabularies` once."
)


def can_count(model: str, override: str = "") -> bool:
    """Whether this model's replies can be counted now: its vocabulary is loaded or on disk.
    Cheap (no loading): the page asks on every render."""
    name = encoding_name(model, override)
    return name in _encodings or (not cache_disabled() and vocabulary_path(name).exists())


_encodings: dict[str, object] = {}
_missing_until: dict[str, float] = {}
RETRY_MISSING_AFTER = 30.0  # seconds; so `fetch_vocabularies` takes effect without a restart


def get_encoding(name: str, allow_download: bool = False):
    """The tiktoken Encoding, or None when its vocabulary cannot be loaded (retried later)."""
    encoding = _encodings.get(name)
    if encoding is not None:
        return encoding
    with _load_lock:  # two threads loading the same 3 MB vocabulary at once is wasted work
        if name in _encodings:
            return _encodings[name]
        if not allow_download and _missing_until.get(name, 0) > time.monotonic():
            return None
        encoding = _load(name, allow_download)
        if encoding is None:
            _missing_until[name] = time.monotonic() + RETRY_MISSING_AFTER
        else:
            _encodings[name] = encoding
            _missing_until.pop(name, None)
        return encoding


def forget_encodings() -> None:
    """Drop loaded and missing vocabularies (tests; a changed cache directory)."""
    with _load_lock:
        _encodings.clear()
        _missing_until.clear()


def count_tokens(text: str, model: str, encoding_override: str = "") -> int | None:
    encoding = get_encoding(encoding_name(model, encoding_override))
    if encoding is None:
        return None
    return len(encoding.encode(text, disallowed_special=()))


class CountCache:
    """Token counts of texts sent again and again (system prompts), least recently used
    dropped first. Keyed by a digest of the text, the model and its encoding, so a
    32,000-character prompt is not kept twice and not encoded again on every send.
    Counts that are unavailable (no vocabulary) are not kept: they come back later."""

    def __init__(self, size: int = 128) -> None:
        self.size = size
        self._counts: OrderedDict[tuple, int] = OrderedDict()
        self._lock = threading.Lock()  # the event loop, worker threads and the database thread share it

    @staticmethod
    def key(text: str, model: str, encoding_override: str) -> tuple:
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        return digest, model, encoding_name(model, encoding_override)

    def get(self, text: str, model: str, encoding_override: str = "") -> int | None:
        """The remembered count, or None if this text was not counted (or not kept)."""
        return self._get(self.key(text, model, encoding_override))

    def count(self, text: str, model: str, encoding_override: str = "") -> int | None:
        """count_tokens, remembered."""
        key = self.key(text, model, encoding_override)  # digested once, for the look-up and the store
        count = self._get(key)
        if count is not None:
            return count
        count = count_tokens(text, model, encoding_override)
        if count is None:
            return None
        with self._lock:
            self._counts[key] = count
            while len(self._counts) > self.size:
                self._counts.popitem(last=False)
        return count

    def _get(self, key: tuple) -> int | None:
        with self._lock:
            count = self._counts.get(key)
            if count is not None:
                self._counts.move_to_end(key)
            return count

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()


system_prompts = CountCache()


# One thread for counts made from async code (chat.generation), not the database thread
# every socket shares (issue #12), and not asyncio's default pool either: the encoder holds
# the GIL, and with several pool threads counting at once (hundreds of replies ending
# together) the event loop waited its turn behind each, and every stream's deltas with it.
_counter = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="token-count")


async def counting(count, *args):
    """`count(*args)` on the counting thread."""
    return await asyncio.get_running_loop().run_in_executor(_counter, count, *args)


SMALL_TEXT = 256  # characters: encoded on the event loop rather than paying a thread hop (docs/benchmark.md)


async def count_soon(size: int, count, *args):
    """Run a token count of `size` characters: on the event loop when it is short enough
    that a thread hop would cost more, else on the one counting thread (`counting`)."""
    if size <= SMALL_TEXT:
        return count(*args)
    return await counting(count, *args)


_role_tokens: dict[tuple[str, str], int] = {}


def message_overhead(role: str, model: str, name: str = "", encoding_override: str = "") -> int | None:
    """Tokens a message costs beyond its content: framing, role, and name if any."""
    encoding_key = encoding_name(model, encoding_override)
    encoding = get_encoding(encoding_key)
    if encoding is None:
        return None
    role_tokens = _role_tokens.get((encoding_key, role))
    if role_tokens is None:  # a handful of roles: count each once per encoding, not per message
        role_tokens = _role_tokens[(encoding_key, role)] = len(encoding.encode(role))
    overhead = TOKENS_PER_MESSAGE + role_tokens
    if name:
        overhead += TOKENS_PER_NAME + len(encoding.encode(name))
    return overhead


def count_messages(
    roles: Sequence[str], counts: Sequence[int | None], model: str, encoding_override: str = ""
) -> int | None:
    """Tokens of messages given as their roles and stored content counts, framing included
    (a prompt's count without the reply priming); None if any count is unknown.

    Sums in C (`sum`, `Counter`), with each role's overhead resolved once.
    """
    if None in counts:
        return None
    total = sum(counts)
    for role, messages in Counter(roles).items():
        overhead = message_overhead(role, model, encoding_override=encoding_override)
        if overhead is None:
            return None
        total += messages * overhead
    return total


def warm_up(model: str) -> None:
    """Load the model's vocabulary ahead of the first message, which would otherwise wait
    for it (reading and parsing a few megabytes)."""
    get_encoding(encoding_name(model))


def warm_up_in_background() -> None:
    """warm_up() the default model in a thread, so start-up does not wait for it."""
    threading.Thread(
        target=warm_up, args=(settings.CHAT_MODEL,), name="tiktoken-warm-up", daemon=True
    ).start()
