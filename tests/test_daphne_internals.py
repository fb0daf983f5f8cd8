"""chat/backpressure.py reads daphne's, autobahn's and Twisted's private attributes. Under the
versions pinned in requirements.txt its fast path must be on; when one of those attributes is
missing (an upgrade renamed it) or the setting turns it off, every frame still arrives, through
daphne's own path, with one warning in the log. Real daphne processes (tests/live_server.py).
"""

import re
from importlib import metadata
from pathlib import Path

import pytest

from chat.backpressure import Internals
from tests.live_server import Site
from tests.upstream_server import Reply, chat_chunks, sse

PASSWORD = "correct horse battery staple"
PINNED = ("daphne", "autobahn", "Twisted")
# Payload bytes of the delta frames (with the frame's `+`): each websocket length encoding,
# multibyte text, and pieces too big for the direct path.
SIZES = [2, 124, 125, 126, 127, 65_534, 65_535, 65_536, 70_000]
PIECES = ["é" * ((size - 1) // 2) + "x" * ((size - 1) % 2) for size in SIZES]


@pytest.fixture
def site(tmp_path, upstream):
    site = Site(tmp_path, upstream=upstream)
    site.migrate()
    site.create_user("alice", PASSWORD)
    site.conversation_id = site.create_conversation("alice")
    try:
        yield site
    finally:
        site.stop()


async def every_frame_arrives(site, upstream, server) -> None:
    """Two sockets, one after the other, each get a reply's deltas of every length, exact."""
    cookie = server.login("alice", PASSWORD)
    for _ in range(2):
        upstream.queue(Reply(body=sse(*chat_chunks(PIECES)), delay=0.02))
        async with server.socket(site.conversation_id, cookie) as ws:
            await ws.send({"type": "send", "content": "Go"})
            frames = await ws.frames_until("done")
        deltas = [f for f in frames if f["type"] == "delta"]
        assert [f["content"] for f in deltas] == PIECES
        assert [f["seq"] for f in deltas] == list(range(1, len(PIECES) + 1))
        assert frames[-1]["status"] == "finished"


def lines(server, pattern: str) -> list[str]:
    return [line for line in server.log_text().splitlines() if re.search(pattern, line)]


def test_the_installed_daphne_autobahn_and_twisted_are_the_pinned_ones():
    requirements = (Path(__file__).parent.parent / "requirements.txt").read_text()
    for name in PINNED:
        pin = re.search(rf"^{name}==(\S+)", requirements, re.MULTILINE)
        assert pin, f"{name} is not pinned exactly in requirements.txt"
        assert metadata.version(name) == pin[1], f"{name} installed is not the pinned version"


def test_daphnes_classes_are_found_at_start_up():
    import daphne.server  # noqa: F401  (as daphne's command line does before it loads the app)

    internals = Internals()
    internals.check_classes()
    assert internals.daphne and internals.missing == []
    assert internals.protocol_class.__module__ == "daphne.ws_protocol"
    assert internals.tcp_class.__module__ == "twisted.internet.tcp"


@pytest.mark.slow
async def test_under_the_pinned_versions_every_attribute_is_there_and_direct_writes_are_on(site, upstream):
    server = site.server()
    await every_frame_arrives(site, upstream, server)
    assert lines(
        server, r"INFO chat\.backpressure: daphne internals checked .*: all present; direct writes on"
    )
    assert not lines(server, r"WARNING chat\.backpressure")


@pytest.mark.slow
async def test_with_direct_writes_off_every_frame_goes_through_daphne(site, upstream):
    server = site.server(env={"CHAT_DIRECT_WRITES": "false"})
    await every_frame_arrives(site, upstream, server)
    assert lines(
        server, r"INFO chat\.backpressure: .*all present; direct writes off \(CHAT_DIRECT_WRITES=false\)"
    )
    assert not lines(server, r"WARNING chat\.backpressure")


@pytest.mark.slow
async def test_a_renamed_attribute_is_warned_once_and_every_frame_still_arrives(site, upstream):
    # What an upgrade that renamed Twisted's `_tempDataLen` looks like from chat/backpressure.py:
    # a name it reads is not there.
    rename = (
        "import chat.backpressure as b\n"
        "b.NEEDS['buffer'] = {'transport': ('dataBuffer', 'offset', '_tempDataLen_renamed')}"
    )
    server = site.server(before_start=rename)
    await every_frame_arrives(site, upstream, server)
    warnings = lines(server, r"WARNING chat\.backpressure")
    assert len(warnings) == 1  # once for the process, not per socket or per frame
    assert "Server._tempDataLen_renamed" in warnings[0]
    for name in PINNED:
        assert f"{name} {metadata.version(name)}" in warnings[0]
    assert "frames go through autobahn and Twisted" in warnings[0]
    assert "no longer held back" in warnings[0]
    assert not lines(server, r"Traceback")
