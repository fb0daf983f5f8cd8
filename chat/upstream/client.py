"""The OpenAI-compatible streaming client: the only code in the app that talks to a model.

One shared HTTP client per process and event loop (chat.upstream.http: httpx over
aiohttp's transport, the demo model mounted on it), explicit timeouts (the idle
timeout applies between bytes, so keep-alive comments keep a queued request alive
while a silent stream ends), retries only before any text exists, and every failure
mapped to UpstreamError.
"""

import asyncio
import collections
import json
import logging
import math
import random
import re
import urllib.parse
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from django.conf import settings

from chat import metrics
from chat.text import StorableStream, storable
from chat.upstream.chunks import parse_chunk
from chat.upstream.demo import DEMO_ORIGIN
from chat.upstream.errors import UpstreamError, redact, secrets_of
from chat.upstream.http import Client, Readable, Response, TransportError
from chat.upstream.sse import SSEDecoder

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
MAX_ERROR_BODY = 64 * 1024
FINISH_GRACE = 2.0  # seconds to wait for usage/[DONE] once the finish chunk has come
MAX_MODEL_NAME = 200  # Message.model is a CharField(max_length=200)


@dataclass(frozen=True)
class Provider:
    base_url: str
    api_key: str = field(default="", repr=False)
    headers: tuple[tuple[str, str], ...] = ()
    demo: bool = False

    @classmethod
    def from_settings(cls) -> "Provider":
        if settings.CHAT_DEMO:
            return cls(base_url=f"{DEMO_ORIGIN}/v1", demo=True)
        return cls(base_url=settings.OPENAI_BASE_URL.rstrip("/"), api_key=settings.OPENAI_API_KEY)

    def redact(self, text: str) -> str:
        """`text` from this provider (an error body, a mid-stream error) without any secret
        this provider's requests carry: its API key and its extra headers' values."""
        return redact(text, *secrets_of(self.api_key, self.headers))


@dataclass(slots=True)
class Piece:
    """What one network read added to the reply."""

    content: str = ""
    reasoning: str = ""
    refusal: str = ""

    def __bool__(self) -> bool:
        return bool(self.content or self.reasoning or self.refusal)


@dataclass(frozen=True)
class Retry:
    attempt: int
    delay: float
    reason: str


# Base URLs that answered 400 to stream_options; asked without it from then on.
_rejects_usage_option: set[str] = set()
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, Client]] = (
    weakref.WeakKeyDictionary()
)


def get_client() -> Client:
    """The process's shared client for the running event loop (connections belong to a loop).

    Keyed by the loop object, weakly: an id() is reused once a loop is collected, and
    a client whose pool belongs to a dead loop fails; loops running side by side (an
    async_to_sync call beside the server's loop) each keep their own client. The
    timeout settings are part of the key so a changed value takes effect. The demo
    model is mounted on every client, so one client serves both.
    """
    loop = asyncio.get_running_loop()
    key = (
        settings.CHAT_UPSTREAM_CONNECT_TIMEOUT,
        settings.CHAT_UPSTREAM_IDLE_TIMEOUT,
        settings.CHAT_UPSTREAM_MAX_CONNECTIONS,
    )
    per_loop = _clients.setdefault(loop, {})
    client = per_loop.get(key)
    if client is None or client.is_closed:
        client = per_loop[key] = new_client()
    return client


def new_client() -> Client:
    """A client as the settings say. Proxy variables are read here, once, not per request."""
    return Client(
        connect_timeout=settings.CHAT_UPSTREAM_CONNECT_TIMEOUT,
        idle_timeout=settings.CHAT_UPSTREAM_IDLE_TIMEOUT,
        max_connections=settings.CHAT_UPSTREAM_MAX_CONNECTIONS,
    )


def warm_up() -> None:
    """Make this loop's client now: its TLS context takes tens of milliseconds, which
    would otherwise land on the first reply's first token."""
    try:
        get_client()
    except Exception:  # the first reply will make it again, and report what is wrong
        log.exception("Could not make the upstream client ahead of the first reply")


class ChatStream:
    """One streamed chat completion.

    Iterate it for `Piece`s (one per network read that carried text); afterwards
    `finish_reason` and `usage` hold what the provider said. Any failure, including
    a stream that ends with no finish reason and no [DONE], raises UpstreamError;
    pieces already yielded stay valid (the caller keeps the partial reply).
    """

    def __init__(
        self,
        provider: Provider,
        model: str,
        messages: list[dict],
        *,
        include_usage: bool = True,
        stream: bool = True,
        api_style: str = "chat",
        on_retry: Callable[[Retry], object] | None = None,
        max_tokens: int | None = None,
    ) -> None:
        self.provider = provider
        self.max_tokens = max_tokens
        self.model = model
        self.messages = messages
        self.include_usage = include_usage
        self.stream = stream
        self.api_style = api_style
        self.on_retry = on_retry
        self.finish_reason = ""
        self.usage: dict | None = None
        self.done = False
        self._model = ""  # as the provider wrote it; see response_model
        # One per kind of text: a surrogate pair split across two events is joined again,
        # a lone half or a NUL becomes U+FFFD (chat.text), before anyone sees the text.
        self._content = StorableStream()
        self._reasoning = StorableStream()
        self._refusal = StorableStream()
        self._deadline = math.inf  # loop time by which the reply must have ended
        self._idle = 0.0
        self._opening: ReadAhead | None = None  # the request, sent ahead by begin()

    @property
    def response_model(self) -> str:
        """The model the provider says answered, storable and short enough to save."""
        return storable(self._model)[:MAX_MODEL_NAME] if self._model else ""

    # -- request ---------------------------------------------------------------
    def _body(self) -> dict:
        body = {"model": self.model, "stream": self.stream}
        if self.api_style == "completions":
            body["prompt"] = completion_prompt(self.messages)
        else:
            body["messages"] = self.messages
        if self.stream and self.include_usage and self.provider.base_url not in _rejects_usage_option:
            body["stream_options"] = {"include_usage": True}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return body

    def _url(self) -> str:
        endpoint = "completions" if self.api_style == "completions" else "chat/completions"
        return f"{self.provider.base_url}/{endpoint}"

    def _headers(self) -> dict:
        accept = "text/event-stream" if self.stream else "application/json"
        headers = {"accept": accept, **dict(self.provider.headers)}
        if self.provider.api_key:
            headers["authorization"] = f"Bearer {self.provider.api_key}"
        return headers

    async def _open(self) -> Response:
        """Send the request; retry transient failures, which is safe as nothing was shown yet."""
        client = get_client()
        url = self._url()
        attempt = 0
        while True:
            try:
                response = await client.post(url, self._body(), self._headers())
                if response.status < 400:
                    return response
                error = await self._http_error(response)
            except TransportError as exc:
                if exc.timed_out:
                    error = UpstreamError(
                        "upstream_timeout", "The model provider did not answer in time.", retryable=True
                    )
                else:
                    error = UpstreamError(
                        "upstream_connect",
                        f"Could not reach the model provider at {_host(url)} ({exc.reason}).",
                        retryable=True,
                    )
            if error.code == "upstream_usage_option_rejected":
                _rejects_usage_option.add(self.provider.base_url)
                continue
            metrics.upstream_error(error)
            delay = self._retry_delay(error, attempt)
            if delay is None:
                raise error
            attempt += 1
            if self.on_retry is not None:
                await _maybe_await(self.on_retry(Retry(attempt, delay, error.detail)))
            await asyncio.sleep(delay)

    def _retry_delay(self, error: UpstreamError, attempt: int) -> float | None:
        if not error.retryable or attempt >= settings.CHAT_UPSTREAM_RETRIES:
            return None
        if error.retry_after is not None:
            if error.retry_after > settings.CHAT_UPSTREAM_MAX_RETRY_WAIT:
                return None
            return error.retry_after
        backoff = min(0.5 * 2**attempt, settings.CHAT_UPSTREAM_MAX_RETRY_WAIT)
        return backoff * (0.75 + random.random() / 2)

    async def _http_error(self, response: Response) -> UpstreamError:
        body = b""
        try:
            body = await response.read(MAX_ERROR_BODY)
        except TransportError:
            pass
        finally:
            await response.close()
        status = response.status
        message, provider_code = _error_message(body, response.headers.get("content-type", ""))
        if (
            status in (400, 422)
            and "stream_options" in message
            and self.provider.base_url not in _rejects_usage_option
        ):
            return UpstreamError(
                "upstream_usage_option_rejected", self.provider.redact(message), status=status
            )
        message = self.provider.redact(message)
        code, what = _STATUS_WORDS.get(
            status, ("upstream_http_error", "The model provider returned an error")
        )
        if status >= 500 and status not in _STATUS_WORDS:
            code, what = "upstream_unavailable", "The model provider had a server error"
        detail = f"{what} (HTTP {status})" + (f": {message}" if message else ".")
        return UpstreamError(
            code,
            detail,
            status=status,
            retry_after=_retry_after(response.headers),
            # OpenAI's 429 insufficient_quota needs billing fixed, not another attempt.
            retryable=status in RETRYABLE_STATUS and provider_code != "insufficient_quota",
            provider_code=provider_code,
        )

    def begin(self) -> None:
        """Send the request now, before anyone iterates (chat.early: the provider thinks
        while the turn is saved). The response is read ahead into memory (ReadAhead) and
        handed out only when the stream is iterated, so nothing of the reply is seen before."""
        if self._opening is None:
            self._start_clock()
            self._opening = ReadAhead(self._open)

    def abandon(self) -> None:
        """The request begun by begin() is not wanted after all: cancel it, or close the
        response it already has. Safe to call more than once, and after iterating."""
        opening, self._opening = self._opening, None
        if opening is not None:
            opening.abandon()

    def _start_clock(self) -> None:
        self._idle = settings.CHAT_UPSTREAM_IDLE_TIMEOUT
        if settings.CHAT_UPSTREAM_REPLY_DEADLINE and self._deadline == math.inf:
            self._deadline = asyncio.get_running_loop().time() + settings.CHAT_UPSTREAM_REPLY_DEADLINE

    # -- response --------------------------------------------------------------
    async def __aiter__(self) -> AsyncIterator[Piece]:
        self._start_clock()
        opening, self._opening = self._opening, None
        response = await (opening.opened() if opening is not None else self._open())
        try:
            content_type = response.headers.get("content-type", "").lower()
            if "html" in content_type:
                raise await self._web_page(response)
            if "json" in content_type and "event-stream" not in content_type:
                piece = await self._whole_reply(response)
                if piece:
                    yield piece
                return
            shown = False
            try:
                decoder = SSEDecoder()
                while True:
                    data = await self._next_read(response)
                    if data is None:  # finished, then silent: see _next_read
                        break
                    if not data:
                        piece, error = self._read(decoder.close())
                        if piece:
                            yield piece
                        if error is not None:
                            raise error
                        break
                    piece, error = self._read(decoder.feed(data))
                    if piece:
                        shown = True
                        yield piece
                    if error is not None:
                        raise error
                    if self.done:
                        await _finish_body(response)
                        break
                if not self.done and not self.finish_reason:
                    if not shown and "event-stream" not in content_type:
                        raise _not_a_stream(content_type)
                    raise UpstreamError(
                        "upstream_interrupted",
                        "The model provider ended the stream before the reply finished; "
                        "the reply so far was kept.",
                    )
            except UpstreamError:
                # A high surrogate held back for its pair never got it: the partial reply keeps it as U+FFFD.
                tail = self._flush()
                if tail:
                    yield tail
                raise
            tail = self._flush()
            if tail:
                yield tail
        except UpstreamError as error:  # after the answer began (those before: _open)
            metrics.upstream_error(error)
            raise
        finally:
            await response.close()

    async def _next_read(self, response: Response) -> bytes | None:
        """The next bytes of the stream: b"" at its end, None when a finished reply went quiet.

        The reply deadline bounds the whole reply, which keep-alive comments could otherwise
        hold open forever (each one counts as activity for the idle timeout). A read that
        starts more than the idle timeout before the deadline cannot outlive it (the idle
        timeout ends it first), so only the reads near the deadline pay for a timer.
        """
        try:
            if self.finish_reason:
                # Finished, then silent: the usage chunk or [DONE] never came. Don't make the
                # user wait the whole idle timeout for a reply that is complete.
                try:
                    async with asyncio.timeout(FINISH_GRACE):
                        return await response.chunk()
                except TimeoutError:
                    log.info("No usage or [DONE] within %gs of finish_reason", FINISH_GRACE)
                    return None
            now = asyncio.get_running_loop().time()
            if now < self._deadline - self._idle:
                return await response.chunk()
            if now >= self._deadline:
                raise self._past_deadline()
            try:
                async with asyncio.timeout_at(self._deadline):
                    return await response.chunk()
            except TimeoutError:
                raise self._past_deadline() from None
        except TransportError as exc:
            if self.finish_reason:
                # The reply itself is whole; only the usage chunk or [DONE] was lost.
                log.info("Stream ended without [DONE] after finish_reason (%s)", exc.reason)
                return None
            if not exc.timed_out:
                raise UpstreamError(
                    "upstream_interrupted",
                    "The connection to the model provider was cut before the reply finished; "
                    "the reply so far was kept.",
                ) from None
            raise UpstreamError(
                "upstream_timeout",
                f"The model provider went silent for {self._idle:g} seconds; the reply so far was kept.",
            ) from None

    def _past_deadline(self) -> UpstreamError:
        return UpstreamError(
            "upstream_deadline",
            f"The reply took longer than the {settings.CHAT_UPSTREAM_REPLY_DEADLINE:g} seconds a reply "
            "may last; the reply so far was kept.",
        )

    def _read(self, events) -> tuple[Piece, UpstreamError | None]:
        """Fold the events of one read into a Piece; an error object ends the stream."""
        piece = Piece()
        error = None
        for event in events:
            if event.data.strip() == "[DONE]":
                self.done = True
                break
            try:
                obj = json.loads(event.data)
            except ValueError:
                if event.event == "error":
                    obj = {"error": {"message": event.data}}
                else:
                    log.warning("Ignored a stream event that is not JSON (%d bytes)", len(event.data))
                    continue
            if event.event == "error" and isinstance(obj, dict) and "error" not in obj:
                obj = {"error": obj}
            chunk = parse_chunk(obj)
            piece.content += chunk.content
            piece.reasoning += chunk.reasoning
            piece.refusal += chunk.refusal
            if chunk.usage is not None:
                self.usage = chunk.usage
            if isinstance(obj, dict) and isinstance(obj.get("model"), str):
                self._model = obj["model"]
            if chunk.error is not None:
                error = chunk.error
                break
            if chunk.finish_reason:
                self.finish_reason = chunk.finish_reason
        # Text is made storable once per read, not per event: this is the per-delta path.
        if piece.content:
            piece.content = self._content.feed(piece.content)
        if piece.reasoning:
            piece.reasoning = self._reasoning.feed(piece.reasoning)
        if piece.refusal:
            piece.refusal = self._refusal.feed(piece.refusal)
        if error is None:
            return piece, None
        self.done = True
        return piece, self._reported_error(error, " mid-reply")

    def _flush(self) -> Piece:
        """The end of the text: what each StorableStream still held (a U+FFFD at most)."""
        return Piece(self._content.flush(), self._reasoning.flush(), self._refusal.flush())

    def _reported_error(self, error: dict, when: str = "") -> UpstreamError:
        code = f" (code {error['code']})" if error.get("code") else ""
        detail = f"The model provider reported an error{when}{code}: {error['message']}"
        return UpstreamError("upstream_error", self.provider.redact(detail), provider_code=error.get("code"))

    async def _web_page(self, response: Response) -> UpstreamError:
        """A 200 with an HTML page: a captive portal, a proxy's login or a misconfigured base
        URL answered instead of the provider. It is no reply, and not an interruption."""
        try:
            body = await response.read(MAX_ERROR_BODY)
        except TransportError:
            body = b""
        title = _TITLE.search(body)
        named = ""
        if title:
            named = " ".join(title.group(1).decode("utf-8", "replace").split())[:200]
            named = f' ("{self.provider.redact(named)}")' if named else ""
        return UpstreamError(
            "upstream_bad_response",
            f"The model provider's address answered with a web page{named}, not a stream of the reply "
            f"(HTTP {response.status}). Check the provider's base URL, and any proxy or captive "
            "portal between this server and the provider.",
            status=response.status,
        )

    async def _whole_reply(self, response: Response) -> Piece:
        """Servers that ignore `stream: true` answer one JSON body; read it whole.

        The reply is read as one chunk whose delta is the message, so content parts,
        reasoning, refusals, usage and error objects are understood as in a stream.
        """
        try:
            async with asyncio.timeout_at(self._deadline if self._deadline != math.inf else None):
                body = await response.read()
        except TimeoutError:
            raise self._past_deadline() from None
        except TransportError as exc:
            raise UpstreamError(
                "upstream_interrupted",
                f"The connection to the model provider broke while it sent the reply ({exc.reason}).",
            ) from None
        try:
            obj = json.loads(body)
        except ValueError:
            obj = None
        choices = obj.get("choices") if isinstance(obj, dict) else None
        if isinstance(choices, list):
            obj = {
                **obj,
                "choices": [{**c, "delta": c.get("message")} if isinstance(c, dict) else c for c in choices],
            }
        chunk = parse_chunk(obj)
        if chunk.error is not None:
            raise self._reported_error(chunk.error)
        if not choices:
            raise UpstreamError(
                "upstream_bad_response", "The model provider sent a reply this app cannot read."
            )
        if isinstance(obj.get("model"), str):
            self._model = obj["model"]
        self.finish_reason = chunk.finish_reason or "stop"
        self.usage = chunk.usage
        self.done = True
        # Whole, so a pair cannot be split across pieces: storable() alone is enough.
        return Piece(storable(chunk.content), storable(chunk.reasoning), storable(chunk.refusal))


def _not_a_stream(content_type: str) -> UpstreamError:
    what = f"with {content_type.split(';')[0].strip()}" if content_type else "without a content type"
    return UpstreamError(
        "upstream_bad_response",
        f"The model provider answered {what}, not an event stream, and nothing in it could be read.",
    )


def completion_prompt(messages: list[dict]) -> str:
    """A chat history as one prompt for legacy /completions models (text-davinci-003 style)."""
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join([*lines, "Assistant:"])


async def _finish_body(response: Response) -> None:
    """Read what follows [DONE] (normally just the chunked-encoding terminator).

    A response closed before its end closes its connection too, so every reply
    paid a new TCP and TLS handshake; read to the end, the connection goes back to
    the pool. A server that keeps the body open after [DONE] is not waited for.
    """
    try:
        async with asyncio.timeout(1.0):
            while await response.chunk():
                pass
    except (TimeoutError, TransportError):
        pass


_STATUS_WORDS = {
    400: ("upstream_bad_request", "The model provider rejected the request"),
    401: ("upstream_auth", "The model provider rejected the API key"),
    403: ("upstream_auth", "The model provider refused access"),
    404: ("upstream_not_found", "The model or endpoint was not found at the provider"),
    408: ("upstream_timeout", "The model provider timed out"),
    413: ("upstream_bad_request", "The conversation is too long for the model provider"),
    429: ("upstream_rate_limited", "The model provider is rate limiting requests"),
    500: ("upstream_unavailable", "The model provider had a server error"),
    502: ("upstream_unavailable", "The model provider's gateway failed"),
    503: ("upstream_unavailable", "The model provider is unavailable"),
    504: ("upstream_unavailable", "The model provider's gateway timed out"),
}
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.I | re.S)


def _error_message(body: bytes, content_type: str) -> tuple[str, str | None]:
    """The provider's own words from an error body: JSON of any common shape, or HTML."""
    try:
        obj = json.loads(body)
    except ValueError:
        obj = None
    if isinstance(obj, list) and obj and isinstance(obj[0], dict):
        obj = obj[0]  # Google's OpenAI-compatible endpoint wraps the error object in a list
    if isinstance(obj, dict):
        error = obj.get("error", obj)
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail") or error.get("error") or ""
            code = error.get("code") if error.get("code") is not None else error.get("type")
            return _plain(message)[:500], None if code is None else str(code)
        return _plain(error)[:500], None
    title = _TITLE.search(body)
    if title:
        return " ".join(title.group(1).decode("utf-8", "replace").split())[:200], None
    if b"<" in body[:200] or "html" in content_type:
        return "an HTML error page", None
    return " ".join(body[:300].decode("utf-8", "replace").split()), None


def _plain(message) -> str:
    """A message as words. FastAPI servers answer 422 with `detail` as a list of
    {"loc": [...], "msg": ...} objects, which would otherwise reach the user as JSON."""
    if isinstance(message, list):
        parts = []
        for item in message:
            if isinstance(item, dict) and "msg" in item:
                where = ".".join(str(p) for p in item.get("loc") or () if p != "body")
                parts.append(f"{where}: {item['msg']}" if where else str(item["msg"]))
            else:
                parts.append(_plain(item))
        return "; ".join(parts)
    return str(message)


def _retry_after(headers) -> float | None:
    """`retry-after-ms` (OpenAI) wins over `retry-after` (seconds; dates are not honoured)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).hostname or url


async def _maybe_await(value) -> None:
    if asyncio.iscoroutine(value):
        await value


async def complete(
    provider: Provider, model: str, messages: list[dict], *, max_tokens: int, api_style: str = "chat"
) -> tuple[str, dict | None]:
    """One short answer asked for whole (`stream: false`), e.g. a chat's title: its text and
    the provider's usage. Through the same client, retries and error mapping as a reply; a
    server that streams anyway is read as a stream. The caller bounds how long it may take."""
    request = ChatStream(
        provider,
        model,
        messages,
        stream=False,
        include_usage=False,
        api_style=api_style,
        max_tokens=max_tokens,
    )
    text = "".join([piece.content async for piece in request])
    return text, request.usage


async def list_models(provider: Provider) -> list[str]:
    """Model ids the provider offers (GET {base_url}/models), for the admin's "fetch models".

    Its own client, closed after: the admin calls this through async_to_sync, on an
    event loop of its own that ends with the call."""
    headers = {"authorization": f"Bearer {provider.api_key}"} if provider.api_key else {}
    headers.update(dict(provider.headers))
    client = new_client()
    try:
        response = await client.get(f"{provider.base_url}/models", headers=headers)
        try:
            body = await response.read()
        finally:
            await response.close()
    except TransportError as exc:
        raise UpstreamError("upstream_connect", f"Could not reach the provider ({exc.reason}).") from None
    finally:
        await client.aclose()
    if response.status >= 400:
        message, _ = _error_message(body, response.headers.get("content-type", ""))
        raise UpstreamError(
            "upstream_http_error",
            provider.redact(f"The provider answered HTTP {response.status}: {message}"),
            status=response.status,
        )
    try:
        data = json.loads(body).get("data", [])
        return sorted({str(item["id"]) for item in data if isinstance(item, dict) and item.get("id")})
    except (ValueError, AttributeError):
        raise UpstreamError("upstream_bad_response", "The provider's model list could not be read.") from None


class ReadAhead(Readable):
    """A request sent by ChatStream.begin(), its response read as its bytes arrive until
    someone asks for them: a provider that cuts the stream before the turn is saved must
    not take the bytes it had sent with it (aiohttp raises a cut connection's error before
    handing out what it buffered). So the first read follows the response's head in the
    same task, with no turn of the event loop between them in which the rest of the body
    and the cut could both arrive. Once asked, it stops reading ahead after its current
    read, and hands out what it kept, then the response's own reads, so a stream pays no
    extra step per read."""

    def __init__(self, open_response) -> None:
        loop = asyncio.get_running_loop()
        self._response: Response | None = None
        self._head: asyncio.Future = loop.create_future()
        self._kept: collections.deque[bytes] = collections.deque()
        self._error: BaseException | None = None
        self._stop = False
        self._reading = loop.create_task(self._run(open_response), name="upstream-request")

    async def _run(self, open_response) -> None:
        try:
            self._response = await open_response()
        except asyncio.CancelledError:  # abandoned
            self._head.cancel()
            raise
        except Exception as exc:  # the request failed: the reader's to raise, if one comes
            self._head.set_exception(exc)
            self._head.exception()  # marked as retrieved: an abandoned request has no reader
            return
        self.status, self.headers = self._response.status, self._response.headers
        self._head.set_result(self)
        try:
            while not self._stop:
                data = await self._response.chunk()
                self._kept.append(data)
                if not data:
                    return
        except Exception as exc:  # handed to the reader in its turn, after the bytes before it
            self._error = exc

    async def opened(self) -> "ReadAhead":
        """The response, once its head has come (or the request's error)."""
        try:
            return await asyncio.shield(self._head)
        except asyncio.CancelledError:  # the reply was stopped meanwhile
            self.abandon()
            raise

    def abandon(self) -> None:
        self._stop = True
        if not self._reading.done():
            self._reading.cancel()
        self._reading.add_done_callback(self._close_abandoned)

    def _close_abandoned(self, _task: asyncio.Task) -> None:
        if self._response is not None:
            closing = asyncio.get_running_loop().create_task(self._response.close())
            _closing.add(closing)
            closing.add_done_callback(_closing.discard)

    async def chunk(self) -> bytes:
        self._stop = True
        if not self._kept and not self._reading.done():
            await asyncio.shield(self._reading)  # its read in progress is the next bytes
        if self._kept:
            # One network read at a time, as they came: merged, what a fast provider sent
            # while the turn was saved became one piece and one text frame of megabytes,
            # and such a frame to a reader that had stopped reading was lost (a stalled
            # reader missed the reply's first 1.5 MB in tests/test_processes.py, 5 runs in 12).
            return self._kept.popleft()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return await self._response.chunk()

    async def close(self) -> None:
        self._stop = True
        await self._response.close()  # a read in progress ends with it


_closing: set[asyncio.Task] = set()  # tasks are weakly held; these must finish
