"""What the process does as it is asked to stop (SIGTERM or SIGINT to daphne).

daphne stops its Twisted reactor on either signal, and before the reactor stops it
only cancels the sockets' consumers: the replies this process streams (chat.worker)
would be dropped with whatever text came since their last checkpoint, up to a second
of it, though every open tab had already shown it (issue #14: "the page showed up to
65, after the restart it shows 50"). So the worker registers a flush here, which the
reactor runs and waits for in the same phase as its own clean-up.

Only public Twisted API (addSystemEventTrigger, Deferred.fromFuture). Under any other
server (or in tests, with no reactor running) nothing is registered; such a server's
lifespan shutdown could call the same flush.
"""

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


def when_stopping(flush: Callable[[], Awaitable[None]]) -> bool:
    """Run `flush()` (a coroutine function) on this loop before the server exits; whether it
    was registered (only under a running Twisted reactor, i.e. daphne)."""
    reactor = sys.modules.get("twisted.internet.reactor")  # never import it: that installs one
    if reactor is None or not getattr(reactor, "running", False):
        return False
    from twisted.internet.defer import Deferred

    def before_shutdown():
        return Deferred.fromFuture(asyncio.ensure_future(_logged(flush)))

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
    return True


async def _logged(flush: Callable[[], Awaitable[None]]) -> None:
    try:
        await flush()
    except Exception:
        log.exception("Could not save the streaming replies before stopping")
