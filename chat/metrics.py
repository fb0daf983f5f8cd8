"""Prometheus metrics of this worker process, served at /metrics when an operator asks.

Each daphne worker is its own process with its own port, so each is scraped on its own
and Prometheus's `instance` label tells them apart (docs/deploy.md). prometheus_client's
multiprocess mode is for workers forked behind one port (gunicorn), which cannot be
addressed one by one; it writes every change to a shared file, cannot tell a worker
killed with SIGKILL from a live one without the server's help, and sums gauges such as
streams in flight, which are wanted per worker.

Nothing here is on the per-delta path. The deltas relayed and the streams in flight are
read at scrape time from what the relay keeps anyway (each reply's `seq`, the running
replies), so a delta costs no more than it did; the histograms take one observation per
reply, per checkpoint or per fan-out message.

The endpoint is off (404) unless CHAT_METRICS_TOKEN or CHAT_METRICS_ALLOW is set. With a
token, a scrape must send `Authorization: Bearer <token>` (compared in constant time);
with an allow-list, it must come from one of its addresses; with both, both.
"""

import hmac
import ipaddress
import time

from django.conf import settings
from django.http import HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from chat.conf import allowed_networks

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

TIME_TO_FIRST_TOKEN = Histogram(
    "chat_time_to_first_token_seconds",
    "From a reply's start to the model's first piece.",
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0),
)
REPLY_DURATION = Histogram(
    "chat_reply_duration_seconds",
    "A reply from its start to its end, by how it ended (finished, failed, cancelled, interrupted).",
    ["status"],
    buckets=(0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0),
)
UPSTREAM_ERRORS = Counter(
    "chat_upstream_errors",
    "Errors from the model provider, each attempt counted (retried ones too): the app's "
    "error code and the HTTP status (empty when there was no HTTP answer).",
    ["code", "status"],
)
CHECKPOINT_DURATION = Histogram(
    "chat_checkpoint_duration_seconds",
    "One checkpoint of every streaming reply of this worker: a trip to the database.",
    buckets=_FAST,
)
CHECKPOINT_FAILURES = Counter("chat_checkpoint_failures", "Checkpoints whose database trip failed.")
FANOUT_LAG = Histogram(
    "chat_fanout_lag_seconds",
    "From the oldest frame of a fan-out message being ready on the worker streaming the reply "
    "to the message's arrival on this worker (Redis layer; the clocks must agree).",
    buckets=_FAST,
)


class _Relay:
    """What the relay keeps anyway, read when Prometheus asks: chat.worker.Worker's running
    replies and their `seq`, and the pieces of those that ended (`ended_deltas`)."""

    def describe(self):
        # Without this, registering would call collect(), importing chat.worker too early.
        return self._families(0, 0, 0)

    def collect(self):
        from chat import worker  # imported late: chat.worker imports chat.generation, which imports this

        workers = worker.workers()
        running = [g for w in workers for g in list(w.running.values())]
        sockets = sum(len(sockets) for w in workers for sockets in list(w.watchers.sockets.values()))
        deltas = sum(w.ended_deltas for w in workers) + sum(g.seq for g in running)
        return self._families(deltas, len(running), sockets)

    @staticmethod
    def _families(deltas: int, streams: int, sockets: int):
        relayed = CounterMetricFamily(
            "chat_deltas_relayed", "Pieces of the model's replies relayed to the sockets."
        )
        relayed.add_metric([], deltas)
        return [
            relayed,
            GaugeMetricFamily("chat_streams_in_flight", "Replies streaming in this worker.", streams),
            GaugeMetricFamily("chat_sockets_open", "Chat sockets open on this worker.", sockets),
        ]


REGISTRY.register(_Relay())


def upstream_error(error) -> None:
    UPSTREAM_ERRORS.labels(error.code, "" if error.status is None else str(error.status)).inc()


def fanout_arrived(oldest: float | None) -> None:
    if oldest is not None:
        FANOUT_LAG.observe(max(0.0, time.time() - oldest))


# -- the endpoint ------------------------------------------------------------------------------
def enabled() -> bool:
    return bool(settings.CHAT_METRICS_TOKEN or settings.CHAT_METRICS_ALLOW)


def _address_allowed(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in allowed_networks(settings.CHAT_METRICS_ALLOW))


def _token_given(request) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), settings.CHAT_METRICS_TOKEN.encode())


async def metrics_view(request):
    if not enabled():
        return HttpResponse("Not found.\n", status=404, content_type="text/plain")
    if settings.CHAT_METRICS_ALLOW and not _address_allowed(request.META.get("REMOTE_ADDR", "")):
        return HttpResponse("Not from an allowed address.\n", status=403, content_type="text/plain")
    if settings.CHAT_METRICS_TOKEN and not _token_given(request):
        response = HttpResponse("A bearer token is needed.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    # Read on the event loop's own thread, as the relay writes what it reads: a consistent view.
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
