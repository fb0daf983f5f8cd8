"""The built-in demo model: an in-process OpenAI-compatible server.

It is an httpx transport mounted on the upstream client for DEMO_ORIGIN
(chat.upstream.http), answering with real SSE bytes, so the demo exercises the same
client, decoder and relay as a real provider, with realistic pacing. No network, no
key. Its text is canned; it says so.
"""

import asyncio
import json
import re
import time

import httpx
from django.conf import settings

# `.invalid` never resolves (RFC 2606), so no real server can answer at this address,
# and a proxy from HTTP_PROXY never sees it: the more specific mount wins.
DEMO_ORIGIN = "http://demo.invalid"
_WORD = re.compile(r"\s*\S+|\s+")
_COUNT = re.compile(r"\bcount (?:from 1 )?to (\d{1,4})\b", re.I)


def demo_reply(prompt: str) -> str:
    match = _COUNT.search(prompt)
    if match:
        n = min(int(match.group(1)), 1000)
        return ", ".join(str(i) for i in range(1, n + 1)) + "."
    quoted = " ".join(prompt.split())[:200] or "(an empty message)"
    return (
        "**This is the built-in demo model**, not a real language model. It streams "
        "this canned reply through the same path a real provider uses, so you can see "
        "streaming, stopping and token counting work.\n\n"
        f"You wrote: _{quoted}_\n\n"
        "To talk to a real model, set `OPENAI_API_KEY` (and `OPENAI_BASE_URL` for "
        "Gilas, vLLM, Ollama or any OpenAI-compatible server) and restart:\n\n"
        "```sh\nOPENAI_API_KEY=sk-... ./run.sh\n```\n\n"
        "| Setting | Example |\n|---|---|\n"
        "| `OPENAI_BASE_URL` | `http://localhost:11434/v1` |\n"
        "| `CHAT_MODEL` | `llama3.2` |\n\n"
        "Ask me to *count to 100* to see a longer stream."
    )


def _event(obj) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class DemoStream(httpx.AsyncByteStream):
    def __init__(self, text: str, model: str, include_usage: bool) -> None:
        self.text, self.model, self.include_usage = text, model, include_usage

    async def __aiter__(self):
        base = {
            "id": "chatcmpl-demo",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model,
        }
        yield _event(
            {
                **base,
                "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                ],
            }
        )
        delay = settings.CHAT_DEMO_DELAY
        pieces = _WORD.findall(self.text)
        for piece in pieces:
            if delay:
                await asyncio.sleep(delay)
            yield _event(
                {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            )
        yield _event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        yield b"data: [DONE]\n\n"


class DemoTransport(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(await request.aread())
        prompt = next(
            (m.get("content", "") for m in reversed(body.get("messages", [])) if m.get("role") == "user"), ""
        )
        stream = DemoStream(
            demo_reply(str(prompt)),
            body.get("model", "demo"),
            bool(body.get("stream_options", {}).get("include_usage")),
        )
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=stream)
