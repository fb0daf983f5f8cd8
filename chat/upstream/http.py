"""The one HTTP client under chat.upstream.client: httpx's transports and models, over aiohttp.

httpx gives the request and response models and the transport interface; the transport is
aiohttp's, through the httpx-aiohttp package (the route the openai SDK takes for its
aiohttp client): aiohttp's C parser costs about half the CPU of httpx's own transport per
streamed read, and a reply is thousands of reads (docs/benchmark.md). `Client` picks the
transport for each URL itself rather than through httpx's client layer (see its docstring).

The rules, for every request: the connect timeout covers waiting for a pooled connection
and connecting; the idle timeout applies between reads (waiting for the response headers
included), so keep-alive comments keep a slow reply alive; redirects are not followed;
trust roots are certifi's, or SSL_CERT_FILE / SSL_CERT_DIR when set. HTTP_PROXY,
HTTPS_PROXY, ALL_PROXY and NO_PROXY are honoured, read when the client is made. The demo
model is a transport of its own for its own address, so a demo reply takes the same
client as a real one, proxies or not.

Every failure of the request or of the body is a TransportError, named by `_failure`.
"""

import functools
import json
import ssl
import urllib.request
from collections.abc import AsyncIterator, Mapping

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from chat.upstream.demo import DEMO_ORIGIN, DemoTransport


class TransportError(Exception):
    """The request could not be made, or the response body broke off or went silent."""

    def __init__(self, reason: str, *, timed_out: bool) -> None:
        super().__init__(reason)
        self.reason = reason  # a few words for the user, e.g. "connection refused or host not found"
        self.timed_out = timed_out


# What can come out of the client. httpx-aiohttp turns most aiohttp errors into httpx ones,
# but not all: a reply that is not HTTP at all comes out as aiohttp's ClientResponseError.
_FAILURES = (httpx.HTTPError, aiohttp.ClientError)
_CLOSED = (
    aiohttp.ServerDisconnectedError,
    httpx.RemoteProtocolError,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)
_PROXY = (httpx.ProxyError, aiohttp.ClientProxyConnectionError, aiohttp.ClientHttpProxyError)


def _failure(exc: Exception) -> TransportError:
    """The one error map: what went wrong, in a few words, judged by the root cause.

    The root, not the httpx class: httpx-aiohttp raises httpx.ConnectTimeout for every
    aiohttp connection error (a refused connection, an unknown host, a server that hung
    up), and chains the real one. So a timeout is a TimeoutError in the chain, or an httpx
    timeout that no connection error caused.
    """
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)

    def caused_by(*kinds: type[BaseException]) -> bool:
        return any(isinstance(link, kinds) for link in chain)

    if caused_by(TimeoutError) or (
        isinstance(exc, httpx.TimeoutException) and not caused_by(OSError, aiohttp.ClientError)
    ):
        return TransportError("timed out", timed_out=True)
    if caused_by(ssl.SSLCertVerificationError):
        reason = "its TLS certificate is not trusted"
    elif caused_by(*_PROXY):
        reason = "the HTTP proxy could not be reached or refused the request"
    elif caused_by(*_CLOSED):
        reason = "the connection was closed"
    elif caused_by(OSError, httpx.ConnectError):
        reason = "connection refused or host not found"
    elif caused_by(httpx.UnsupportedProtocol, httpx.InvalidURL, aiohttp.InvalidURL):
        reason = "the address is not a valid http(s) URL"
    elif caused_by(aiohttp.ClientResponseError, httpx.ProtocolError):
        reason = "it did not answer in HTTP"
    else:
        reason = type(chain[-1]).__name__
    return TransportError(reason, timed_out=False)


class Readable:
    """`read()` for a body read by `chunk()` (Response here; chat.upstream.client.ReadAhead)."""

    async def chunk(self) -> bytes:
        raise NotImplementedError

    async def read(self, limit: int | None = None) -> bytes:
        """The body, or its first `limit` bytes or a little more (an error page)."""
        parts, size = [], 0
        while (limit is None or size <= limit) and (data := await self.chunk()):
            parts.append(data)
            size += len(data)
        return b"".join(parts)


class Response(Readable):
    """A response whose body is read as it arrives. Failures are TransportErrors."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        # The transport's own stream unless the body is compressed: httpx's decoder and
        # chunker layers cost every read of a stream that is almost never compressed.
        encoded = "content-encoding" in response.headers
        self._reads: AsyncIterator[bytes] = (
            response.aiter_bytes() if encoded else aiter(response.stream)  # type: ignore[arg-type]
        )
        self.status: int = response.status_code
        self.headers: Mapping[str, str] = response.headers  # case-insensitive

    async def chunk(self) -> bytes:
        """The next bytes of the body as they arrive; b"" at its end."""
        try:
            return await anext(self._reads)
        except StopAsyncIteration:
            return b""
        except _FAILURES as exc:
            raise _failure(exc) from exc

    async def close(self) -> None:
        """Done with it: a body read to its end leaves its connection in the pool; one
        closed early closes its connection, so the provider stops generating."""
        try:
            await self._response.aclose()
        except _FAILURES:
            pass  # the connection is gone either way


@functools.lru_cache(maxsize=64)
def _url(url: str) -> httpx.URL:
    """A provider's URL, parsed once: httpx's parser is a good part of a request's cost."""
    return httpx.URL(url)


class Client:
    """The process's HTTP client for one event loop (see client.get_client).

    httpx's transports and its request and response models, without httpx's client layer
    on top: per request that layer (building the request again, auth and redirect flows,
    a cookie jar) cost about twice the CPU of the aiohttp transport under it, and a burst
    of sends pays it once per send (docs/benchmark.md). What it did that we need is done
    here, once per client: which transport a URL takes (the demo's own; a proxy from
    HTTP_PROXY / HTTPS_PROXY / ALL_PROXY unless NO_PROXY names the host, by the standard
    library's rules) and the timeouts. Redirects are not followed, cookies not kept.
    """

    def __init__(self, *, connect_timeout: float, idle_timeout: float, max_connections: int) -> None:
        limits = httpx.Limits(max_connections=max_connections)
        # trust_env: the trust roots from SSL_CERT_FILE / SSL_CERT_DIR when set.
        self._direct = AiohttpTransport(limits=limits, trust_env=True)
        self._demo = DemoTransport()
        self._proxies = urllib.request.getproxies()  # read once, as httpx's client did
        self._via: dict[str, httpx.AsyncBaseTransport] = {}  # proxy URL -> its transport
        self._limits = limits
        # aiohttp's transport takes `pool` as its connect timeout (the wait for a pooled
        # connection, then connecting), `read` between reads; a request's small body has
        # no write timeout of its own.
        self._timeout = {
            "connect": connect_timeout,
            "read": idle_timeout,
            "write": idle_timeout,
            "pool": connect_timeout,
        }
        self._closed = False

    @property
    def is_closed(self) -> bool:
        return self._closed

    def _transport(self, url: httpx.URL) -> httpx.AsyncBaseTransport:
        if f"{url.scheme}://{url.netloc.decode()}" == DEMO_ORIGIN:
            return self._demo
        proxy = self._proxies.get(url.scheme) or self._proxies.get("all")
        if not proxy or urllib.request.proxy_bypass_environment(url.host, self._proxies):
            return self._direct
        transport = self._via.get(proxy)
        if transport is None:
            transport = self._via[proxy] = AiohttpTransport(
                limits=self._limits, trust_env=True, proxy=httpx.Proxy(proxy)
            )
        return transport

    async def post(self, url: str, body: dict, headers: dict) -> Response:
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        return await self._send("POST", _url(url), {**headers, "content-type": "application/json"}, content)

    async def get(self, url: str, headers: dict) -> Response:
        return await self._send("GET", _url(url), headers, b"")

    async def _send(self, method: str, url: httpx.URL, headers: dict, content: bytes) -> Response:
        try:
            request = httpx.Request(method, url, headers=headers, content=content)
            request.extensions["timeout"] = self._timeout
            return Response(await self._transport(url).handle_async_request(request))
        except _FAILURES as exc:
            raise _failure(exc) from exc

    async def aclose(self) -> None:
        self._closed = True
        for transport in (self._direct, self._demo, *self._via.values()):
            await transport.aclose()
