"""The HTTP clients under chat.upstream.client: aiohttp, or httpx behind a proxy and for the demo.

ChatStream speaks to one small interface, `post`/`get` → `Response`, whatever does the
HTTP. aiohttp is used directly, not through httpx: its C parser and lean request path
cost half of httpx's CPU per streamed read, and httpx's request machinery (or an httpx
transport wrapped around aiohttp) added ~0.4 ms to every reply's first token
(docs/benchmark.md). httpx stays for what only it does here: HTTP(S)_PROXY variables,
and the in-process demo model (an httpx transport).

Both clients keep the same rules: the connect timeout covers waiting for a pooled
connection and connecting; the idle timeout applies between reads (waiting for the
response headers included), so keep-alive comments keep a slow reply alive; redirects
are not followed; trust roots are certifi's, or SSL_CERT_FILE / SSL_CERT_DIR when set.
Every failure of the request or of the body is a TransportError.
"""

import asyncio
import json
from collections.abc import Mapping

import aiohttp
import httpx


class TransportError(Exception):
    """The request could not be made, or the response body broke off or went silent."""

    def __init__(self, reason: str, *, timed_out: bool) -> None:
        super().__init__(reason)
        self.reason = reason  # a few words for the user, e.g. "connection refused or host not found"
        self.timed_out = timed_out


class Response:
    status: int
    headers: Mapping[str, str]  # case-insensitive

    async def chunk(self) -> bytes:
        """The next bytes of the body as they arrive; b"" at its end."""
        raise NotImplementedError

    async def read(self, limit: int | None = None) -> bytes:
        """The body, or its first `limit` bytes or a little more (an error page)."""
        parts, size = [], 0
        while (limit is None or size <= limit) and (data := await self.chunk()):
            parts.append(data)
            size += len(data)
        return b"".join(parts)

    async def close(self) -> None:
        """Done with it: a body read to its end leaves its connection in the pool; one
        closed early closes its connection, so the provider stops generating."""
        raise NotImplementedError


# -- aiohttp -----------------------------------------------------------------------------
_TIMEOUTS = (asyncio.TimeoutError, aiohttp.ServerTimeoutError)


def _aiohttp_failure(exc: Exception) -> TransportError:
    if isinstance(exc, _TIMEOUTS):
        return TransportError("timed out", timed_out=True)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return TransportError("its TLS certificate is not trusted", timed_out=False)
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ClientOSError):
        return TransportError("connection refused or host not found", timed_out=False)
    if isinstance(exc, aiohttp.InvalidURL):
        return TransportError("the address is not a valid http(s) URL", timed_out=False)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return TransportError("the connection was closed", timed_out=False)
    return TransportError(type(exc).__name__, timed_out=False)


class AiohttpResponse(Response):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._content = response.content
        self.status = response.status
        self.headers = response.headers

    async def chunk(self) -> bytes:
        try:
            return await self._content.readany()
        except (aiohttp.ClientError, *_TIMEOUTS) as exc:
            raise _aiohttp_failure(exc) from exc

    async def close(self) -> None:
        if self._content.at_eof():
            self._response.release()
        else:
            self._response.close()


class AiohttpClient:
    def __init__(self, *, connect_timeout: float, idle_timeout: float, max_connections: int) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, ssl=httpx.create_ssl_context()),
            timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=idle_timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )

    @property
    def is_closed(self) -> bool:
        return self.session.closed

    async def post(self, url: str, body: dict, headers: dict) -> Response:
        return await self._request("POST", url, headers, json.dumps(body).encode())

    async def get(self, url: str, headers: dict) -> Response:
        return await self._request("GET", url, headers, None)

    async def _request(self, method: str, url: str, headers: dict, data: bytes | None) -> Response:
        if data is not None:
            headers = {"content-type": "application/json", **headers}
        try:
            response = await self.session.request(
                method, url, data=data, headers=headers, allow_redirects=False
            )
        except (aiohttp.ClientError, *_TIMEOUTS) as exc:
            raise _aiohttp_failure(exc) from exc
        return AiohttpResponse(response)

    async def aclose(self) -> None:
        await self.session.close()


# -- httpx -------------------------------------------------------------------------------
def _httpx_failure(exc: httpx.HTTPError) -> TransportError:
    if isinstance(exc, httpx.TimeoutException):
        return TransportError("timed out", timed_out=True)
    if isinstance(exc, httpx.ConnectError) or isinstance(exc.__cause__, OSError):
        return TransportError("connection refused or host not found", timed_out=False)
    return TransportError(type(exc).__name__, timed_out=False)


class HttpxResponse(Response):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._reads = response.aiter_bytes()
        self.status = response.status_code
        self.headers = response.headers

    async def chunk(self) -> bytes:
        try:
            return await anext(self._reads)
        except StopAsyncIteration:
            return b""
        except httpx.HTTPError as exc:
            raise _httpx_failure(exc) from exc

    async def close(self) -> None:
        await self._response.aclose()


class HttpxClient:
    def __init__(
        self,
        *,
        connect_timeout: float,
        idle_timeout: float,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=connect_timeout, read=idle_timeout, write=30.0, pool=connect_timeout
            ),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=min(100, max_connections)
            ),
            transport=transport,
        )

    @property
    def is_closed(self) -> bool:
        return self.client.is_closed

    async def post(self, url: str, body: dict, headers: dict) -> Response:
        return await self._request(self.client.build_request("POST", url, json=body, headers=headers))

    async def get(self, url: str, headers: dict) -> Response:
        return await self._request(self.client.build_request("GET", url, headers=headers))

    async def _request(self, request: httpx.Request) -> Response:
        try:
            return HttpxResponse(await self.client.send(request, stream=True))
        except httpx.HTTPError as exc:
            raise _httpx_failure(exc) from exc

    async def aclose(self) -> None:
        await self.client.aclose()
