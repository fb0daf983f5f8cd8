"""A worker's fan-out inbox (chat/fanout.py) on the machine's Redis: an inbox whose
connection stops answering is noticed and listens again, so the tabs it serves are not left
waiting on a connection that died without a word from the network."""

import asyncio
import logging
import time

import msgpack
import pytest

from chat import fanout
from tests.services import redis_url, services  # noqa: F401 - fixtures

pytestmark = [pytest.mark.services]


class Tab:
    channel_name = "specific.test!tab"

    def __init__(self) -> None:
        self.frames: list[dict] = []
        self.arrived = asyncio.Event()

    async def chat_frame(self, item: dict) -> None:
        self.frames.append(item)
        self.arrived.set()


@pytest.fixture
def redis_layer(settings, redis_url):  # noqa: F811 - the fixture imported above
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "chat.layers.ChannelLayer",
            "CONFIG": {"hosts": [{"address": redis_url, "socket_timeout": 15}]},
        }
    }
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    yield client
    client.client_unpause()
    client.close()


async def test_an_inbox_whose_redis_stops_answering_listens_again_and_gets_what_follows(
    redis_layer, monkeypatch, caplog
):
    monkeypatch.setattr(fanout, "QUIET", 0.05)
    monkeypatch.setattr(fanout, "PONG_WAIT", 0.3)
    tab = Tab()
    fanout.register(tab)
    inbox = await fanout.inbox()
    state = fanout._state()
    try:
        # Redis stops answering (as a connection that died silently would): the inbox's ping
        # goes unanswered, and it gives that connection up.
        with caplog.at_level(logging.ERROR, logger="chat.fanout"):
            redis_layer.client_pause(1000, all=True)
            deadline = time.monotonic() + 5
            while state.listening.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert not state.listening.is_set(), "the inbox kept reading a connection that did not answer"
            await asyncio.wait_for(state.listening.wait(), 10)  # subscribed again once Redis answers
        assert any("subscribing again" in r.getMessage() for r in caplog.records)

        frame = {"channel": tab.channel_name, "type": "chat.frame", "frame": "+after"}
        redis_layer.publish(inbox, msgpack.packb({"items": [frame], "oldest": time.time()}))
        await asyncio.wait_for(tab.arrived.wait(), 5)
        assert tab.frames == [frame]
    finally:
        fanout.unregister(tab)
        state.reader.cancel()


async def test_a_quiet_inbox_proves_its_connection_and_stays_subscribed(redis_layer, monkeypatch, caplog):
    monkeypatch.setattr(fanout, "QUIET", 0.05)
    with caplog.at_level(logging.ERROR, logger="chat.fanout"):
        await fanout.inbox()
        state = fanout._state()
        try:

            def inbox_pinged() -> bool:
                return any(c["cmd"] == "ping" for c in redis_layer.client_list(_type="pubsub"))

            deadline = time.monotonic() + 5
            while not inbox_pinged() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert inbox_pinged(), "a quiet inbox never asked Redis whether it was there"
            assert state.listening.is_set()
        finally:
            state.reader.cancel()
    assert not [r for r in caplog.records if r.name == "chat.fanout"]  # answered: nothing dropped
