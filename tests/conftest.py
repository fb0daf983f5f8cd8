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


# --- rate-limit counters (django-ratelimit, in the process's cache) ---------------------------------
@pytest.fixture(autouse=True)
def forget_rate_limits():
    """Each test starts with no sign-ups or reset requests counted (axes' are in the database)."""
    yield
    from django.core.cache import cache

    cache.clear()


# --- replies left running by a test ---------------------------------------------------------------
@pytest.fixture(autouse=True)
def forget_running_replies():
    """Each test starts with no reply streaming in this process (ids repeat after a flush)."""
    yield
    from chat import budgets, generation, providers

    providers.forget_models()  # a flush between tests sends no signals
    budgets.forget_budgets()

    for running in list(generation._running.values()):
        running.stop()
    generation._running.clear()
    generation._watchers.clear()
    generation._queued.clear()
    generation._swept = False
