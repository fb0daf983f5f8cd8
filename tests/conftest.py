# --- loopback upstream server (tests/upstream_server.py) ----------------------------------------
# Import helpers in tests with: from tests.upstream_server import Reply, chat_chunks, sse
import pytest

from tests.upstream_server import UpstreamServer

TEST_API_KEY = "sk-test-SECRET-key-123456"


@pytest.fixture
def upstream():
    """A running OpenAI-compatible server on 127.0.0.1; queue replies with `upstream.queue(...)`."""
    server = UpstreamServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def provider(upstream):
    """A chat.upstream.Provider pointed at the `upstream` server, with TEST_API_KEY."""
    from chat.upstream import Provider

    return Provider(base_url=upstream.base_url, api_key=TEST_API_KEY)


@pytest.fixture
def use_upstream(upstream, settings):
    """The site's default provider is the `upstream` server (gpt-4o-mini, TEST_API_KEY)."""
    settings.CHAT_DEMO = False
    settings.OPENAI_BASE_URL = upstream.base_url
    settings.OPENAI_API_KEY = TEST_API_KEY
    settings.CHAT_MODEL = "gpt-4o-mini"
    return upstream


# --- end of loopback upstream server block -------------------------------------------------------


# --- titles the model writes (chat.titles) -------------------------------------------------------
@pytest.fixture(autouse=True)
def no_model_titles(settings):
    """Off unless a test turns it on: a title request after a first reply would take the
    next reply a test queued on the loopback upstream."""
    settings.CHAT_MODEL_TITLES = False


# --- rate-limit counters (django-ratelimit, in the process's cache) ---------------------------------
@pytest.fixture(autouse=True)
def forget_rate_limits():
    """Each test starts with no sign-ups or reset requests counted (axes' are in the database)."""
    yield
    from django.core.cache import cache

    cache.clear()


# --- this process's replies and sockets (chat.worker) ---------------------------------------------
@pytest.fixture(autouse=True)
def fresh_worker():
    """Each test gets a fresh chat.worker.Worker: no reply streaming, no socket watching,
    no sweep done (ids repeat after a flush)."""
    yield
    from chat import budgets, image_tokens, providers, worker

    providers.forget_models()  # a flush between tests sends no signals
    budgets.forget_budgets()
    image_tokens.forget_rules()
    worker.forget()


# --- attached files (chat.attachments) --------------------------------------------------------------
@pytest.fixture
def stored(settings, tmp_path):
    """Attached files go to a fresh directory for the test; the directory."""
    location = tmp_path / "files"
    settings.STORAGES = {
        **settings.STORAGES,
        "chat_attachments": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(location)},
        },
    }
    return location


@pytest.fixture
def gpt4o_images(db):
    """gpt-4o's published image rule (85 + 170 per tile), whether or not an earlier test that
    flushed the database (transaction=True) took the seeded rules with it."""
    from chat.models import ImageTokenRule

    ImageTokenRule.objects.update_or_create(
        pattern="gpt-4o", defaults={"method": "tile", "base_tokens": 85, "tokens_per_tile": 170}
    )
