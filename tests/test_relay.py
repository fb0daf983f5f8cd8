"""chat.relay: catching up a reader that fell behind, when a frame cannot be sent.

Issue #12: a failure that is not the connection's must be seen in the log, not taken
for a closed socket and swallowed (the tab then silently stops updating).
"""

import logging

import pytest

from chat.backpressure import Lag
from chat.relay import Watcher


class Reply:
    """A reply with two pieces the reader has not had, still streaming."""

    reply_id = 7
    seq = 2
    finals = None

    def batch_frames(self, start: int, budget: int) -> tuple[list[str], int]:
        return ["+piece"], self.seq


class FailingSocket(Watcher):
    def __init__(self, error: Exception) -> None:
        self.lag = Lag(None, 4096)  # no daphne transport: never behind, drained at once
        self.error = error

    async def send_frame(self, text: str) -> None:
        raise self.error


async def test_a_catch_up_that_fails_for_a_reason_other_than_the_connection_is_logged(caplog):
    socket = FailingSocket(UnicodeEncodeError("utf-8", "\ud83d", 0, 1, "surrogates not allowed"))
    socket.catching_up = object()  # as send_delta leaves it while the task runs

    with caplog.at_level(logging.ERROR, logger="chat.relay"):
        await socket.catch_up(Reply(), sent=0)

    assert "Could not catch up a lagging socket on reply 7" in caplog.text
    assert socket.catching_up is None  # live deltas reach it again


@pytest.mark.parametrize("error", [ConnectionResetError(), BrokenPipeError()])
async def test_a_catch_up_whose_connection_went_away_ends_quietly(caplog, error):
    socket = FailingSocket(error)

    with caplog.at_level(logging.DEBUG, logger="chat.relay"):
        await socket.catch_up(Reply(), sent=0)

    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert socket.catching_up is None
