"""Prometheus metrics at /metrics (chat.metrics): off by default, guarded, and moving with the relay.

The guard is tested in-process; what the metrics say is read from a real daphne serving
replies from the loopback upstream, and the fan-out lag from two daphne processes on
PostgreSQL and Redis (skipped with the reason when those are not there).
"""

import json

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from chat import conf
from chat.upstream import ChatStream, UpstreamError
from tests.conftest import TEST_API_KEY
from tests.live_server import Site
from tests.services import database_url, redis_url, services, upstream  # noqa: F401 (fixtures)
from tests.upstream_server import Reply, UpstreamServer, chat_chunks, held_reply, sse

TOKEN = "metrics-token-0123456789abcdef"
PASSWORD = "correct horse battery staple"
HELLO = [{"role": "user", "content": "Hello"}]


def prepare(site: Site, conversations: int) -> list[int]:
    """Migrated, with alice and her conversations: one manage.py start-up less per step."""
    site.migrate()
    return site.shell(
        "from django.contrib.auth.models import User\n"
        "from chat.models import Conversation\n"
        f"user = User.objects.create_user('alice', password={PASSWORD!r})\n"
        f"result = [Conversation.objects.create(user=user).pk for _ in range({conversations})]"
    )


def samples(text: str) -> dict[tuple, float]:
    """Every sample of a scrape by (name, (label, value)...)."""
    return {
        (sample.name, *sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scraped: dict, name: str, **labels) -> float:
    return scraped.get((name, *sorted(labels.items())), 0.0)


# -- the guard ---------------------------------------------------------------------------------
def test_off_by_default(client):
    assert client.get("/metrics").status_code == 404


def test_a_scrape_needs_the_bearer_token(client, settings):
    settings.CHAT_METRICS_TOKEN = TOKEN
    missing = client.get("/metrics")
    assert missing.status_code == 401 and missing["WWW-Authenticate"].startswith("Bearer")
    for header in (f"Bearer {TOKEN[:-1]}x", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN):
        assert client.get("/metrics", HTTP_AUTHORIZATION=header).status_code == 401, header
    good = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert good.status_code == 200 and good["Content-Type"].startswith("text/plain; version=")
    assert "chat_streams_in_flight" in good.content.decode()


def test_a_scrape_from_outside_the_allow_list_is_refused(client, settings):
    settings.CHAT_METRICS_ALLOW = "10.0.0.0/8, 192.168.1.7"
    assert client.get("/metrics").status_code == 403  # the test client is 127.0.0.1
    assert client.get("/metrics", REMOTE_ADDR="10.2.3.4").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::ffff:192.168.1.7").status_code == 200
    settings.CHAT_METRICS_TOKEN = TOKEN  # both set: both must pass
    assert client.get("/metrics", REMOTE_ADDR="10.2.3.4").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 403


@pytest.mark.parametrize(
    "name, bad, says",
    [
        ("CHAT_METRICS_TOKEN", "short", "at least 16"),
        ("CHAT_METRICS_TOKEN", f" {TOKEN}", "without spaces"),
        ("CHAT_METRICS_ALLOW", "10.0.0.0/8,intranet", "'intranet' is not an address"),
    ],
)
def test_a_bad_metrics_setting_stops_start_up(name, bad, says):
    with pytest.raises(ImproperlyConfigured, match=says):
        conf.check_chat_settings({**conf.DEFAULTS, name: bad})


# -- upstream errors, counted where the client meets them -------------------------------------
def errors(code: str, status: str) -> float:
    return REGISTRY.get_sample_value("chat_upstream_errors_total", {"code": code, "status": status}) or 0.0


async def read_all(provider) -> str:
    return "".join([piece.content async for piece in ChatStream(provider, "test-model", HELLO)])


async def test_every_attempt_is_counted_even_one_retried(upstream, provider, settings):
    settings.CHAT_UPSTREAM_RETRIES = 1
    before = errors("upstream_unavailable", "503")
    overloaded = json.dumps({"error": {"message": "Overloaded", "code": None}}).encode()
    upstream.queue(
        Reply(
            status=503,
            headers={"content-type": "application/json", "retry-after-ms": "10"},
            body=[overloaded],
        ),
        Reply(body=sse(*chat_chunks(["Fine"]))),
    )
    assert await read_all(provider) == "Fine"
    assert errors("upstream_unavailable", "503") - before == 1


async def test_a_stream_cut_mid_reply_is_counted_once_without_a_status(upstream, provider, settings):
    settings.CHAT_UPSTREAM_RETRIES = 0
    before = errors("upstream_interrupted", "")
    upstream.queue(Reply(body=sse(*chat_chunks(["Half"], None), done=False), cut=True))
    with pytest.raises(UpstreamError):
        await read_all(provider)
    assert errors("upstream_interrupted", "") - before == 1


# -- one daphne worker -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory, upstream):
    env = {"CHAT_METRICS_TOKEN": TOKEN, "CHAT_CHECKPOINT_INTERVAL": "0.05", "CHAT_UPSTREAM_RETRIES": "0"}
    site = Site(tmp_path_factory.mktemp("metrics"), upstream=upstream, env=env)
    conversations = prepare(site, 2)
    with site.server() as server:
        server.cookie = server.login("alice", PASSWORD)
        server.conversations = conversations
        yield server
    assert TEST_API_KEY not in server.log_text() and TOKEN not in server.log_text()


def scrape(server) -> str:
    response = httpx.get(server.url("/metrics"), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def test_daphne_serves_metrics_only_with_the_token(server):
    assert httpx.get(server.url("/metrics"), timeout=10).status_code == 401
    assert "chat_deltas_relayed_total" in scrape(server)


async def test_a_streamed_reply_moves_the_counters_and_histograms(server, upstream):
    conversation_id = server.conversations[0]
    before = samples(scrape(server))
    reply, release = held_reply(["Hel"], ["lo", " there", "!"])
    upstream.queue(reply)
    async with server.socket(conversation_id, server.cookie) as ws:
        await ws.send({"type": "send", "content": "Hi"})
        await ws.until_text("Hel")
        # While it streams: one stream in flight, and the checkpoint loop saves it.
        during = server.site.wait_for(
            lambda: (
                s
                if value(s := samples(scrape(server)), "chat_checkpoint_duration_seconds_count")
                > value(before, "chat_checkpoint_duration_seconds_count")
                else None
            )
        )
        assert value(during, "chat_streams_in_flight") == 1
        assert value(during, "chat_sockets_open") >= 1
        release.set()
        frames = await ws.frames_until("done")
    assert frames[-1]["status"] == "finished"
    relayed = [f for f in ws.frames if f["type"] == "delta"]
    after = samples(scrape(server))

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("chat_deltas_relayed_total") == len(relayed) == relayed[-1]["seq"]
    assert moved("chat_time_to_first_token_seconds_count") == 1
    assert moved("chat_reply_duration_seconds_count", status="finished") == 1
    assert moved("chat_reply_duration_seconds_sum", status="finished") > 0
    assert value(after, "chat_streams_in_flight") == 0
    assert value(after, "chat_checkpoint_duration_seconds_sum") > 0


async def test_an_upstream_http_error_is_counted_by_code_and_never_shows_the_key(server, upstream):
    conversation_id = server.conversations[1]
    before = samples(scrape(server))
    quoted = json.dumps({"error": {"message": f"Incorrect API key provided: {TEST_API_KEY}", "code": None}})
    upstream.queue(Reply(status=401, headers={"content-type": "application/json"}, body=[quoted.encode()]))
    async with server.socket(conversation_id, server.cookie) as ws:
        await ws.send({"type": "send", "content": "Hi"})
        error = (await ws.frames_until("done"))[-1]
    assert error["status"] == "failed"
    text = scrape(server)
    after = samples(text)
    code = next(
        labels["code"]
        for (name, *pairs), _ in after.items()
        if name == "chat_upstream_errors_total" and (labels := dict(pairs))["status"] == "401"
    )
    assert (
        value(after, "chat_upstream_errors_total", code=code, status="401")
        - value(before, "chat_upstream_errors_total", code=code, status="401")
        == 1
    )
    assert code.startswith("upstream_")
    assert value(after, "chat_reply_duration_seconds_count", status="failed") >= 1
    assert TEST_API_KEY not in text and TOKEN not in text


# -- two workers on PostgreSQL and Redis: the fan-out lag ---------------------------------------
@pytest.mark.services
async def test_the_fanout_lag_is_observed_on_the_worker_with_the_remote_tab(
    tmp_path_factory,
    upstream,
    database_url,  # noqa: F811
    redis_url,  # noqa: F811
):
    site = Site(
        tmp_path_factory.mktemp("metrics-scaled"),
        upstream=upstream,
        database_url=database_url,
        redis_url=redis_url,
        env={"CHAT_METRICS_TOKEN": TOKEN, "CHAT_UPSTREAM_RETRIES": "0"},
    )
    [conversation_id] = prepare(site, 1)
    a, b = site.start_servers(2)
    try:
        cookie = a.login("alice", PASSWORD)
        before = samples(scrape(b))
        reply, release = held_reply(["tok0 "], [f"tok{i} " for i in range(1, 20)])
        upstream.queue(reply)
        async with a.socket(conversation_id, cookie) as on_a, b.socket(conversation_id, cookie) as on_b:
            await on_a.send({"type": "send", "content": "Count"})
            await on_b.until_text("tok0 ")  # B's tab follows A's reply live, through Redis
            release.set()
            await on_b.frames_until("done")
            await on_a.frames_until("done")
            streamed = [f for f in on_a.frames if f["type"] == "delta"][-1]["seq"]
        after_b, after_a = samples(scrape(b)), samples(scrape(a))
    finally:
        site.stop()
    lag = "chat_fanout_lag_seconds_count"
    assert value(after_b, lag) > value(before, lag)  # B's tab got A's reply through Redis
    assert value(after_b, "chat_fanout_lag_seconds_sum") >= 0
    assert value(after_a, lag) == 0  # nothing came to A from elsewhere
    assert value(after_a, "chat_deltas_relayed_total") == streamed  # counted where the reply streamed
    assert value(after_b, "chat_deltas_relayed_total") == 0
    for server in (a, b):
        assert TEST_API_KEY not in server.log_text()
