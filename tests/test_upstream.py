"""The streaming client against a real loopback server replaying providers' streams.

Each test follows a conformance case in shared SSE-CONFORMANCE.md and checks what
the user ends up with: the text shown, how the reply ended, the usage, and the
error in plain words. Transcripts are byte-exact recordings of each provider's
shape (ids and numbers shortened).
"""

import asyncio
import contextlib
import json
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

import pytest

from chat.upstream import ChatStream, Retry, UpstreamError
from tests.conftest import TEST_API_KEY
from tests.upstream_server import Reply, chat_chunks, sse

HELLO = [{"role": "user", "content": "Say hello"}]
JSON = {"content-type": "application/json"}


@dataclass
class Outcome:
    """What the user saw: the reply's text as shown, how it ended, and any error."""

    text: str = ""
    reasoning: str = ""
    refusal: str = ""
    pieces: int = 0
    finish_reason: str = ""
    usage: dict | None = None
    error: UpstreamError | None = None
    retries: list[Retry] = field(default_factory=list)


async def ask(provider, messages=HELLO, model="test-model") -> Outcome:
    outcome = Outcome()
    stream = ChatStream(provider, model, messages, on_retry=outcome.retries.append)
    try:
        async for piece in stream:
            outcome.pieces += 1
            outcome.text += piece.content
            outcome.reasoning += piece.reasoning
            outcome.refusal += piece.refusal
    except UpstreamError as exc:
        outcome.error = exc
    if outcome.pieces:  # how the reply ended, once it has
        outcome.finish_reason, outcome.usage = stream.finish_reason, stream.usage
    return outcome


def assert_plain_words(detail: str) -> None:
    """A sentence a person can read: no JSON, no HTML, no traceback, no key."""
    assert detail and detail[0].isupper()
    for fragment in ("{", "}", "<", "Traceback", "httpx", "httpcore", TEST_API_KEY, "SECRET"):
        assert fragment not in detail, detail


@pytest.fixture(autouse=True)
def quick_upstream(settings):
    """No retries unless a test asks; a hang fails in seconds, not a minute."""
    settings.CHAT_UPSTREAM_RETRIES = 0
    settings.CHAT_UPSTREAM_IDLE_TIMEOUT = 5.0
    settings.CHAT_UPSTREAM_CONNECT_TIMEOUT = 5.0
    settings.CHAT_UPSTREAM_MAX_RETRY_WAIT = 5.0
    return settings


def events(*lines: str) -> bytes:
    """A transcript from its lines, each ending in LF (blank lines included as "")."""
    return "".join(line + "\n" for line in lines).encode()


# -- Transcripts, as each provider writes them ---------------------------------------------------------

_OA = '"id":"chatcmpl-B1","object":"chat.completion.chunk","created":1732000000,"model":"gpt-4o-mini-2024-07-18"'
_OA += ',"service_tier":"default","system_fingerprint":"fp_0ba0d124f1"'
OPENAI = events(
    f'data: {{{_OA},"choices":[{{"index":0,"delta":{{"role":"assistant","content":"","refusal":null}},'
    '"logprobs":null,"finish_reason":null}],"usage":null}',
    "",
    f'data: {{{_OA},"choices":[{{"index":0,"delta":{{"content":"Hello"}},"logprobs":null,"finish_reason":null}}],'
    '"usage":null}',
    "",
    f'data: {{{_OA},"choices":[{{"index":0,"delta":{{"content":", w\u00f6rld \U0001f44b"}},"logprobs":null,'
    '"finish_reason":null}],"usage":null}',
    "",
    f'data: {{{_OA},"choices":[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"stop"}}],"usage":null}}',
    "",
    f'data: {{{_OA},"choices":[],"usage":{{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,'
    '"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":'
    '{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}',
    "",
    "data: [DONE]",
    "",
)
OPENAI_TEXT = "Hello, w\u00f6rld \U0001f44b"
OPENAI_USAGE = {
    "prompt_tokens": 10,
    "completion_tokens": 5,
    "total_tokens": 15,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}

_AZ_SAFE = (
    '{"hate":{"filtered":false,"severity":"safe"},"self_harm":{"filtered":false,"severity":"safe"},'
    '"sexual":{"filtered":false,"severity":"safe"},"violence":{"filtered":false,"severity":"safe"}}'
)
_AZ = '"created":1732000000,"id":"chatcmpl-Az1","model":"gpt-4o-2024-08-06","object":"chat.completion.chunk"'
_AZ += ',"system_fingerprint":"fp_04751d0b65"'
AZURE = events(
    'data: {"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":'
    f'[{{"prompt_index":0,"content_filter_results":{_AZ_SAFE}}}]}}',
    "",
    'data: {"choices":[{"content_filter_results":{},"delta":{"content":"","refusal":null,"role":"assistant"},'
    f'"finish_reason":null,"index":0,"logprobs":null}}],{_AZ}}}',
    "",
    f'data: {{"choices":[{{"content_filter_results":{_AZ_SAFE},"delta":{{"content":"Hello"}},'
    f'"finish_reason":null,"index":0,"logprobs":null}}],{_AZ}}}',
    "",
    f'data: {{"choices":[{{"content_filter_results":{_AZ_SAFE},"delta":{{"content":" from Azure."}},'
    f'"finish_reason":null,"index":0,"logprobs":null}}],{_AZ}}}',
    "",
    'data: {"choices":[{"content_filter_results":{},"delta":{},"finish_reason":"stop","index":0,'
    f'"logprobs":null}}],{_AZ}}}',
    "",
    # Asynchronous filter: annotations arrive after the finish chunk, with no delta and an empty id.
    'data: {"choices":[{"content_filter_offsets":{"check_offset":0,"start_offset":0,"end_offset":17},'
    f'"content_filter_results":{_AZ_SAFE},"finish_reason":null,"index":0}}],"created":0,"id":"",'
    '"model":"","object":""}',
    "",
    "data: [DONE]",
    "",
)

_VL = '"id":"chatcmpl-9f2","object":"chat.completion.chunk","created":1732000000'
_VL += ',"model":"meta-llama/Llama-3.1-8B-Instruct"'
VLLM = events(
    f'data: {{{_VL},"choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},"logprobs":null,'
    '"finish_reason":null}],"usage":{"prompt_tokens":12,"total_tokens":12,"completion_tokens":0}}',
    "",
    f'data: {{{_VL},"choices":[{{"index":0,"delta":{{"content":"Hello"}},"logprobs":null,'
    '"finish_reason":null}],"usage":{"prompt_tokens":12,"total_tokens":13,"completion_tokens":1}}',
    "",
    # The last text rides on the finish chunk.
    f'data: {{{_VL},"choices":[{{"index":0,"delta":{{"content":" from vLLM."}},"logprobs":null,'
    '"finish_reason":"stop","stop_reason":null}],"usage":{"prompt_tokens":12,"total_tokens":16,'
    '"completion_tokens":4}}',
    "",
    f'data: {{{_VL},"choices":[],"usage":{{"prompt_tokens":12,"total_tokens":16,"completion_tokens":4}}}}',
    "",
    "data: [DONE]",
    "",
)

_OL = '"id":"chatcmpl-322","object":"chat.completion.chunk","created":1732000000,"model":"llama3.2"'
_OL += ',"system_fingerprint":"fp_ollama"'
OLLAMA = events(
    f'data: {{{_OL},"choices":[{{"index":0,"delta":{{"role":"assistant","content":"Hello"}},'
    '"finish_reason":null}]}',
    "",
    f'data: {{{_OL},"choices":[{{"index":0,"delta":{{"role":"assistant","content":" from Ollama."}},'
    '"finish_reason":null}]}',
    "",
    f'data: {{{_OL},"choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},'
    '"finish_reason":"stop"}]}',
    "",
    f'data: {{{_OL},"choices":[],"usage":{{"prompt_tokens":26,"completion_tokens":4,"total_tokens":30}}}}',
    "",
    "data: [DONE]",
    "",
)

_LC = '"created":1732000000,"id":"chatcmpl-Qx","model":"gpt-3.5-turbo","system_fingerprint":"b4000-1f5ec6e8"'
_LC += ',"object":"chat.completion.chunk"'
LLAMA_CPP = events(
    f'data: {{"choices":[{{"finish_reason":null,"index":0,"delta":{{"role":"assistant","content":null}}}}],{_LC}}}',
    "",
    f'data: {{"choices":[{{"finish_reason":null,"index":0,"delta":{{"content":"Hello"}}}}],{_LC}}}',
    "",
    f'data: {{"choices":[{{"finish_reason":null,"index":0,"delta":{{"content":" from llama.cpp."}}}}],{_LC}}}',
    "",
    f'data: {{"choices":[{{"finish_reason":"stop","index":0,"delta":{{}}}}],{_LC},"timings":{{"prompt_n":10,'
    '"prompt_ms":20.1,"prompt_per_second":497.5,"predicted_n":5,"predicted_ms":30.5,"predicted_per_second":163.9}}',
    "",
    "data: [DONE]",
    "",
)

_OR = '"id":"gen-1732000000-abc","provider":"OpenAI","model":"openai/gpt-4o-mini"'
_OR += ',"object":"chat.completion.chunk","created":1732000000'
OPENROUTER = events(
    ": OPENROUTER PROCESSING",
    "",
    ": OPENROUTER PROCESSING",
    "",
    f'data: {{{_OR},"choices":[{{"index":0,"delta":{{"role":"assistant","content":"Hello"}},'
    '"finish_reason":null,"native_finish_reason":null,"logprobs":null}]}',
    "",
    ": OPENROUTER PROCESSING",
    "",
    f'data: {{{_OR},"choices":[{{"index":0,"delta":{{"role":"assistant","content":" via OpenRouter."}},'
    '"finish_reason":null,"native_finish_reason":null,"logprobs":null}]}',
    "",
    f'data: {{{_OR},"choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},'
    '"finish_reason":"stop","native_finish_reason":"stop","logprobs":null}]}',
    "",
    f'data: {{{_OR},"choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},"finish_reason":null,'
    '"native_finish_reason":null,"logprobs":null}],"usage":{"prompt_tokens":10,"completion_tokens":5,'
    '"total_tokens":15,"cost":0.0000045}}',
    "",
    "data: [DONE]",
    "",
)

_DS = '"id":"d1","object":"chat.completion.chunk","created":1732000000,"model":"deepseek-reasoner"'
_DS += ',"system_fingerprint":"fp_7e73fd9a08"'
DEEPSEEK = events(
    ": keep-alive",
    "",
    f'data: {{{_DS},"choices":[{{"index":0,"delta":{{"role":"assistant","content":null,'
    '"reasoning_content":""},"logprobs":null,"finish_reason":null}]}',
    "",
    f'data: {{{_DS},"choices":[{{"index":0,"delta":{{"content":null,"reasoning_content":"The user"}},'
    '"logprobs":null,"finish_reason":null}]}',
    "",
    f'data: {{{_DS},"choices":[{{"index":0,"delta":{{"content":null,"reasoning_content":" greets me."}},'
    '"logprobs":null,"finish_reason":null}]}',
    "",
    f'data: {{{_DS},"choices":[{{"index":0,"delta":{{"content":"Hello!","reasoning_content":null}},'
    '"logprobs":null,"finish_reason":null}]}',
    "",
    f'data: {{{_DS},"choices":[{{"index":0,"delta":{{"content":"","reasoning_content":null}},'
    '"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":20,'
    '"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":'
    '{"reasoning_tokens":16},"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":9}}',
    "",
    "data: [DONE]",
    "",
)

_GQ = '"id":"chatcmpl-g1","object":"chat.completion.chunk","created":1732000000,"model":"qwen/qwen3-32b"'
_GQ += ',"system_fingerprint":"fp_a4265e44d5"'
GROQ = events(
    f'data: {{{_GQ},"choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},"logprobs":null,'
    '"finish_reason":null}],"x_groq":{"id":"req_01jd"}}',
    "",
    f'data: {{{_GQ},"choices":[{{"index":0,"delta":{{"reasoning":"Greeting back."}},"logprobs":null,'
    '"finish_reason":null}]}',
    "",
    f'data: {{{_GQ},"choices":[{{"index":0,"delta":{{"content":"Hello from Groq."}},"logprobs":null,'
    '"finish_reason":null}]}',
    "",
    f'data: {{{_GQ},"choices":[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"stop"}}],'
    '"x_groq":{"id":"req_01jd","usage":{"queue_time":0.01,"prompt_tokens":40,"prompt_time":0.002,'
    '"completion_tokens":7,"completion_time":0.004,"total_tokens":47,"total_time":0.006}}}',
    "",
    "data: [DONE]",
    "",
)

_MI = '"id":"cmpl-m1","object":"chat.completion.chunk","created":1732000000,"model":"mistral-small-latest"'
MISTRAL = events(
    f'data:  {{{_MI},"choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},"finish_reason":null}}]}}',
    "",
    f'data:  {{{_MI},"choices":[{{"index":0,"delta":{{"content":[{{"type":"text","text":"Hello"}},'
    '{"type":"text","text":" from"}]},"finish_reason":null}]}',
    "",
    f'data:  {{{_MI},"choices":[{{"index":0,"delta":{{"content":" Mistral."}},"finish_reason":"stop"}}],'
    '"usage":{"prompt_tokens":8,"total_tokens":12,"completion_tokens":4}}',
    "",
    "data:  [DONE]",
    "",
)


# -- 1. Line endings and `data:` spacing ---------------------------------------------------------------


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r", "mixed"])
async def test_it_reads_the_same_reply_whatever_the_line_endings(upstream, provider, ending):
    if ending == "mixed":
        endings = iter(["\r\n", "\n", "\r"] * 100)
        transcript = b"".join(line + next(endings).encode() for line in OPENAI.split(b"\n")[:-1])
    else:
        transcript = OPENAI.replace(b"\n", ending.encode())
    upstream.queue(Reply(body=[transcript]))

    outcome = await ask(provider)

    assert outcome.error is None
    assert (outcome.text, outcome.finish_reason, outcome.usage) == (OPENAI_TEXT, "stop", OPENAI_USAGE)


@pytest.mark.parametrize("spaces", ["", " ", "  "])
async def test_it_reads_data_lines_with_zero_one_or_two_spaces(upstream, provider, spaces):
    transcript = OPENAI.replace(b"data: ", f"data:{spaces}".encode())
    upstream.queue(Reply(body=[transcript]))

    outcome = await ask(provider)

    assert (outcome.text, outcome.finish_reason, outcome.error) == (OPENAI_TEXT, "stop", None)


async def test_it_reads_mistral_two_space_data_and_content_parts(upstream, provider):
    upstream.queue(Reply(body=[MISTRAL]))

    outcome = await ask(provider)

    assert outcome.error is None
    assert outcome.text == "Hello from Mistral."
    assert outcome.finish_reason == "stop"
    assert outcome.usage == {"prompt_tokens": 8, "total_tokens": 12, "completion_tokens": 4}


# -- 2. Comments ---------------------------------------------------------------------------------------


async def test_it_ignores_openrouter_processing_comments(upstream, provider):
    upstream.queue(Reply(body=[event + b"\n\n" for event in OPENROUTER.split(b"\n\n")[:-1]]))  # a read each

    outcome = await ask(provider)

    assert outcome.error is None
    assert outcome.text == "Hello via OpenRouter."
    assert outcome.finish_reason == "stop"
    assert outcome.usage["total_tokens"] == 15


async def test_it_ignores_deepseek_keep_alives_while_queued(upstream, provider):
    keep_alives = [b": keep-alive\n\n"] * 5
    upstream.queue(Reply(body=keep_alives + [DEEPSEEK], delay=0.01))

    outcome = await ask(provider)

    assert (outcome.error, outcome.text, outcome.finish_reason) == (None, "Hello!", "stop")


# -- 3. Any byte-level split ---------------------------------------------------------------------------


async def test_it_gives_the_same_reply_when_every_read_is_one_byte(upstream, provider):
    upstream.queue(Reply(body=[OPENAI[i : i + 1] for i in range(len(OPENAI))]))

    outcome = await ask(provider)

    assert outcome.error is None
    assert (outcome.text, outcome.finish_reason, outcome.usage) == (OPENAI_TEXT, "stop", OPENAI_USAGE)


async def test_it_gives_the_same_reply_split_in_two_at_every_offset(upstream, provider):
    """Every split of the stream, including between CR and LF and inside a multibyte character."""
    transcript = (
        'data: {"choices":[{"index":0,"delta":{"content":"Hello, w\u00f6rld \U0001f44b"}}]}\r\n\r\n'
        ": keep-alive\r\n\r\n"
        'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\r\n\r\n'
        'data: {"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}\r\n\r\n'
        "data: [DONE]\r\n\r\n"
    ).encode()
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    upstream.queue(*(Reply(body=[transcript[:i], transcript[i:]]) for i in range(1, len(transcript))))

    for offset in range(1, len(transcript)):
        outcome = await ask(provider)
        assert outcome.error is None, f"split at {offset}: {outcome.error}"
        assert (outcome.text, outcome.finish_reason, outcome.usage) == (OPENAI_TEXT, "stop", usage), offset
    assert len(upstream.requests) == len(transcript) - 1


async def test_it_shows_text_as_it_arrives(upstream, provider):
    """A piece per read that carried text: the user sees the reply grow, not all at the end."""
    held = threading.Event()
    body = sse(*chat_chunks(["Hel", "lo", "!"]))
    upstream.queue(Reply(body=[b"".join(body[:2])] + body[2:], wait_for=held))

    async def first_piece():
        async for piece in ChatStream(provider, "test-model", HELLO):
            return piece.content

    assert await asyncio.wait_for(first_piece(), 5) == "Hel"  # while the rest is held back
    held.set()


# -- 4. Odd chunks -------------------------------------------------------------------------------------


async def test_it_reads_azure_filter_results_and_late_annotations(upstream, provider):
    upstream.queue(Reply(body=[AZURE]))

    outcome = await ask(provider)

    assert (outcome.error, outcome.text, outcome.finish_reason) == (None, "Hello from Azure.", "stop")


async def test_it_keeps_text_when_azure_filters_the_rest(upstream, provider):
    filtered = AZURE.replace(b'"finish_reason":"stop"', b'"finish_reason":"content_filter"')
    upstream.queue(Reply(body=[filtered]))

    outcome = await ask(provider)

    assert (outcome.error, outcome.text, outcome.finish_reason) == (
        None,
        "Hello from Azure.",
        "content_filter",
    )


async def test_it_survives_chunks_with_missing_or_oddly_typed_fields(upstream, provider):
    odd = [
        {"choices": None},
        {"choices": [{"index": 0}]},
        {"choices": [{"index": 0, "delta": None}]},
        {"choices": [{"index": 0, "delta": {"content": 42, "tool_calls": None}}]},
        {"choices": [None, "x", {"index": 0, "delta": {"content": "Hello"}, "future_field": {"a": 1}}]},
        {"choices": [{"index": 1, "delta": {"content": " (second choice, not shown)"}}]},
        {"object": "chat.completion.chunk"},
        "just a string",
        [1, 2, 3],
        None,
        {"choices": [{"index": 0, "delta": {"content": " world"}, "finish_reason": None}], "usage": "n/a"},
    ]
    body = b"".join(f"data: {json.dumps(chunk)}\n\n".encode() for chunk in odd)
    body += b"data: {not json at all\n\n"
    body += b"".join(
        sse(*chat_chunks([], usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}))
    )
    upstream.queue(Reply(body=[body]))

    outcome = await ask(provider)

    assert outcome.error is None
    assert outcome.text == "Hello world"
    assert outcome.finish_reason == "stop"
    assert outcome.usage == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


async def test_it_reads_llama_cpp_null_first_delta_and_timings(upstream, provider):
    upstream.queue(Reply(body=[LLAMA_CPP]))

    outcome = await ask(provider)

    assert (outcome.error, outcome.text, outcome.finish_reason) == (None, "Hello from llama.cpp.", "stop")
    assert outcome.usage is None  # counted locally with tiktoken instead


async def test_it_reads_ollama_repeated_roles(upstream, provider):
    upstream.queue(Reply(body=[OLLAMA]))

    outcome = await ask(provider)

    assert (outcome.error, outcome.text, outcome.finish_reason) == (None, "Hello from Ollama.", "stop")
    assert outcome.usage == {"prompt_tokens": 26, "completion_tokens": 4, "total_tokens": 30}


# -- 5. Content on the finish chunk, content as parts --------------------------------------------------


async def test_it_keeps_vllm_text_on_the_finish_chunk(upstream, provider):
    upstream.queue(Reply(body=[VLLM]))

    outcome = await ask(provider)

    assert (outcome.error, outcome.text, outcome.finish_reason) == (None, "Hello from vLLM.", "stop")


async def test_it_reads_legacy_completion_text(upstream, provider):
    chunks = [
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "choices": [{"index": 0, "text": "Once", "finish_reason": None}],
        },
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "choices": [{"index": 0, "text": " upon", "finish_reason": "length"}],
        },
    ]
    upstream.queue(Reply(body=sse(*chunks)))

    outcome = await ask(provider)

    assert (outcome.error, outcome.text, outcome.finish_reason) == (None, "Once upon", "length")


# -- 6. Usage in all its forms -------------------------------------------------------------------------


async def test_it_takes_the_last_cumulative_usage_from_vllm_never_the_sum(upstream, provider):
    upstream.queue(Reply(body=[VLLM]))

    outcome = await ask(provider)

    assert outcome.usage == {"prompt_tokens": 12, "total_tokens": 16, "completion_tokens": 4}


async def test_it_reads_usage_on_the_deepseek_finish_chunk(upstream, provider):
    upstream.queue(Reply(body=[DEEPSEEK]))

    outcome = await ask(provider)

    assert outcome.usage["prompt_tokens"] == 9
    assert outcome.usage["completion_tokens"] == 20


async def test_it_reads_groq_usage_under_x_groq(upstream, provider):
    upstream.queue(Reply(body=[GROQ]))

    outcome = await ask(provider)

    assert outcome.error is None
    assert outcome.usage["prompt_tokens"] == 40
    assert outcome.usage["completion_tokens"] == 7


async def test_it_reads_usage_from_the_openai_usage_chunk(upstream, provider):
    upstream.queue(Reply(body=[OPENAI]))

    outcome = await ask(provider)

    assert outcome.usage == OPENAI_USAGE


# -- 7. Reasoning --------------------------------------------------------------------------------------


async def test_it_keeps_deepseek_reasoning_apart_from_the_answer(upstream, provider):
    upstream.queue(Reply(body=[DEEPSEEK]))

    outcome = await ask(provider)

    assert outcome.reasoning == "The user greets me."
    assert outcome.text == "Hello!"


async def test_it_keeps_groq_and_ollama_reasoning_apart_from_the_answer(upstream, provider):
    upstream.queue(Reply(body=[GROQ]))

    outcome = await ask(provider)

    assert (outcome.reasoning, outcome.text, outcome.finish_reason) == (
        "Greeting back.",
        "Hello from Groq.",
        "stop",
    )


# -- 8. Refusals ---------------------------------------------------------------------------------------


async def test_it_keeps_a_refusal_apart_from_the_content(upstream, provider):
    base = {"id": "chatcmpl-R", "object": "chat.completion.chunk", "model": "gpt-4o-2024-08-06"}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": None, "refusal": ""}}]},
        {**base, "choices": [{"index": 0, "delta": {"refusal": "I'm sorry, "}, "finish_reason": None}]},
        {
            **base,
            "choices": [{"index": 0, "delta": {"refusal": "I can't help with that."}, "finish_reason": None}],
        },
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    upstream.queue(Reply(body=sse(*chunks)))

    outcome = await ask(provider)

    assert outcome.error is None
    assert outcome.refusal == "I'm sorry, I can't help with that."
    assert outcome.text == ""


# -- 9. Errors in the middle of the stream -------------------------------------------------------------


async def test_it_reports_an_openai_mid_stream_error_and_keeps_the_partial_text(upstream, provider):
    error = {
        "error": {"message": "The server had an error while processing your request.", "type": "server_error"}
    }
    upstream.queue(
        Reply(body=sse(*chat_chunks(["Partial ", "answer"], finish_reason=None), error, done=False))
    )

    outcome = await ask(provider)

    assert outcome.text == "Partial answer"
    assert outcome.error.code == "upstream_error"
    assert "The server had an error while processing your request." in outcome.error.detail
    assert_plain_words(outcome.error.detail)


async def test_it_reports_a_vllm_error_even_when_done_follows(upstream, provider):
    error = {
        "error": {
            "object": "error",
            "message": "This model's maximum context length is 8192 tokens.",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }
    }
    upstream.queue(Reply(body=sse(*chat_chunks(["Half"], finish_reason=None), error)))

    outcome = await ask(provider)

    assert outcome.text == "Half"
    assert outcome.error.code == "upstream_error"
    assert outcome.error.provider_code == "400"
    assert "maximum context length is 8192 tokens" in outcome.error.detail
    assert_plain_words(outcome.error.detail)


async def test_it_reports_an_openrouter_error_chunk_with_finish_reason_error(upstream, provider):
    error_chunk = {
        "id": "gen-1",
        "object": "chat.completion.chunk",
        "created": 1732000000,
        "model": "openai/gpt-4o-mini",
        "provider": "OpenAI",
        "error": {"code": "server_error", "message": "Provider disconnected unexpectedly"},
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
    }
    upstream.queue(
        Reply(body=sse(": OPENROUTER PROCESSING\n\n", *chat_chunks(["So far"], None), error_chunk))
    )

    outcome = await ask(provider)

    assert outcome.text == "So far"
    assert outcome.error.code == "upstream_error"
    assert "Provider disconnected unexpectedly" in outcome.error.detail
    assert_plain_words(outcome.error.detail)


async def test_it_reports_a_bare_finish_reason_error(upstream, provider):
    upstream.queue(Reply(body=sse(*chat_chunks(["Some text"], finish_reason="error"))))

    outcome = await ask(provider)

    assert outcome.text == "Some text"
    assert outcome.error.code == "upstream_error"
    assert_plain_words(outcome.error.detail)


async def test_it_reports_a_llama_cpp_bare_error_line(upstream, provider):
    body = sse(
        *chat_chunks(["Hi"], finish_reason=None),
        'error: {"code":503,"message":"Loading model","type":"unavailable_error"}\n\n',
    )
    upstream.queue(Reply(body=body))

    outcome = await ask(provider)

    assert outcome.text == "Hi"
    assert outcome.error.code == "upstream_error"
    assert "Loading model" in outcome.error.detail
    assert_plain_words(outcome.error.detail)


async def test_it_keeps_text_that_arrived_in_the_same_read_as_the_error(upstream, provider):
    error = {"error": {"message": "Overloaded", "code": None}}
    upstream.queue(Reply(body=[b"".join(sse(*chat_chunks(["All ", "in ", "one read"], None), error))]))

    outcome = await ask(provider)

    assert outcome.text == "All in one read"
    assert outcome.error.code == "upstream_error"


async def test_it_raises_upstream_error_when_chat_stream_is_iterated_directly(upstream, provider):
    """The generation task iterates ChatStream itself: errors must still be UpstreamError."""
    upstream.queue(Reply(body=sse(*chat_chunks(["Partial"], None), {"error": {"message": "Boom"}})))
    stream = ChatStream(provider, "test-model", HELLO)
    text = ""

    with pytest.raises(UpstreamError) as raised:
        async for piece in stream:
            text += piece.content

    assert text == "Partial"
    assert raised.value.code == "upstream_error"


# -- 10. Interrupted streams ---------------------------------------------------------------------------


async def test_it_reports_a_cut_connection_as_interrupted_after_the_partial_text(upstream, provider):
    upstream.queue(Reply(body=sse(*chat_chunks(["The start", " of it"], None), done=False), cut=True))

    outcome = await ask(provider)

    assert outcome.text == "The start of it"
    assert outcome.error.code == "upstream_interrupted"
    assert_plain_words(outcome.error.detail)


async def test_it_reports_a_cut_in_the_middle_of_a_json_line_as_interrupted(upstream, provider):
    body = (
        b"".join(sse(*chat_chunks(["Kept"], None), done=False))
        + b'data: {"choices":[{"index":0,"delta":{"con'
    )
    upstream.queue(Reply(body=[body], cut=True))

    outcome = await ask(provider)

    assert (outcome.text, outcome.error.code) == ("Kept", "upstream_interrupted")


async def test_it_reports_an_end_without_finish_reason_or_done_as_interrupted(upstream, provider):
    upstream.queue(Reply(body=sse(*chat_chunks(["Cut short"], finish_reason=None), done=False)))

    outcome = await ask(provider)

    assert outcome.text == "Cut short"
    assert outcome.error.code == "upstream_interrupted"
    assert_plain_words(outcome.error.detail)


async def test_it_accepts_a_finish_reason_without_done(upstream, provider):
    upstream.queue(Reply(body=sse(*chat_chunks(["Complete."]), done=False)))

    outcome = await ask(provider)

    assert (outcome.error, outcome.text, outcome.finish_reason) == (None, "Complete.", "stop")


async def test_it_accepts_a_trailing_done_without_a_blank_line(upstream, provider):
    upstream.queue(Reply(body=sse(*chat_chunks(["Complete."]), done=False) + [b"data: [DONE]"]))

    outcome = await ask(provider)

    assert (outcome.error, outcome.text, outcome.finish_reason) == (None, "Complete.", "stop")


async def test_a_connection_cut_after_the_finish_reason_keeps_the_reply_finished(upstream, provider):
    """The usage chunk and [DONE] were lost, but the reply itself is whole."""
    upstream.queue(Reply(body=sse(*chat_chunks(["Whole reply."]), done=False), cut=True))

    outcome = await ask(provider)

    assert (outcome.error, outcome.text, outcome.finish_reason, outcome.usage) == (
        None,
        "Whole reply.",
        "stop",
        None,
    )


async def test_it_does_not_retry_once_text_was_shown(upstream, provider, settings):
    settings.CHAT_UPSTREAM_RETRIES = 3
    upstream.queue(Reply(body=sse(*chat_chunks(["Shown"], None), done=False), cut=True))
    upstream.default = Reply(body=sse(*chat_chunks(["A second answer"])))

    outcome = await ask(provider)

    assert outcome.text == "Shown"
    assert outcome.error.code == "upstream_interrupted"
    assert outcome.retries == []
    assert len(upstream.requests) == 1


async def test_closing_the_stream_early_hangs_up_on_the_provider(upstream, provider):
    """Stop: the provider connection is released at once, so it stops generating (and billing)."""
    held = threading.Event()
    events = sse(*chat_chunks(["First", " never sent"]))
    upstream.queue(Reply(body=[events[0] + events[1], *events[2:]], wait_for=held))
    replies = aiter(ChatStream(provider, "test-model", HELLO))

    piece = await anext(replies)
    await replies.aclose()

    assert piece.content == "First"
    assert await asyncio.to_thread(upstream.requests[0]["disconnected"].wait, 5)
    held.set()


# -- 11. HTTP errors before streaming ------------------------------------------------------------------


def error_body(message: str, type_: str, code) -> list[bytes]:
    return [json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}}).encode()]


async def test_it_reports_a_rejected_api_key_without_quoting_it(upstream, provider):
    masked = TEST_API_KEY[:3] + "*" * 18 + TEST_API_KEY[-4:]
    message = (
        f"Incorrect API key provided: {masked}. You can find your API key at "
        "https://platform.openai.com/account/api-keys."
    )
    upstream.queue(
        Reply(status=401, headers=JSON, body=error_body(message, "invalid_request_error", "invalid_api_key"))
    )

    outcome = await ask(provider)

    assert outcome.text == ""
    assert outcome.error.code == "upstream_auth"
    assert outcome.error.status == 401
    assert outcome.error.provider_code == "invalid_api_key"
    assert "HTTP 401" in outcome.error.detail and "Incorrect API key provided" in outcome.error.detail
    assert masked not in outcome.error.detail
    assert_plain_words(outcome.error.detail)


async def test_it_never_shows_the_api_key_even_when_the_provider_quotes_it_whole(upstream, provider):
    quoted = f"Invalid key {TEST_API_KEY} (key={TEST_API_KEY})"
    upstream.queue(
        Reply(status=401, headers=JSON, body=error_body(quoted, "auth", None)),
        Reply(body=sse(*chat_chunks(["x"], None), {"error": {"message": f"token {TEST_API_KEY} expired"}})),
    )

    rejected = await ask(provider)
    mid_stream = await ask(provider)

    for error in (rejected.error, mid_stream.error):
        assert TEST_API_KEY not in error.detail
        assert "SECRET" not in error.detail and "123456" not in error.detail
        assert TEST_API_KEY not in str(error) and TEST_API_KEY not in repr(error.args)
    assert "Invalid key" in rejected.error.detail


async def test_it_sends_the_api_key_as_a_bearer_token(upstream, provider):
    upstream.queue(Reply(body=[OPENAI]))

    await ask(provider)

    assert upstream.requests[0]["headers"]["authorization"] == f"Bearer {TEST_API_KEY}"


async def test_it_reports_an_unknown_model(upstream, provider):
    upstream.queue(
        Reply(
            status=404,
            headers=JSON,
            body=error_body(
                "The model `gpt-9` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            ),
        )
    )

    outcome = await ask(provider, model="gpt-9")

    assert outcome.error.code == "upstream_not_found"
    assert outcome.error.status == 404
    assert "The model `gpt-9` does not exist" in outcome.error.detail
    assert_plain_words(outcome.error.detail)


@pytest.mark.parametrize(
    ("status", "code"),
    [(500, "upstream_unavailable"), (503, "upstream_unavailable"), (429, "upstream_rate_limited")],
)
async def test_it_reports_server_errors_and_rate_limits(upstream, provider, status, code):
    headers = {**JSON, "retry-after": "7"}
    upstream.queue(
        Reply(status=status, headers=headers, body=error_body("Please slow down or retry.", "x", None))
    )

    outcome = await ask(provider)

    assert (outcome.error.code, outcome.error.status) == (code, status)
    assert outcome.error.retry_after == 7
    assert f"HTTP {status}" in outcome.error.detail and "Please slow down or retry." in outcome.error.detail
    assert_plain_words(outcome.error.detail)


async def test_it_reads_a_gateway_html_page_without_crashing(upstream, provider):
    page = (
        b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
        b"</center>\r\n<hr><center>nginx/1.25.3</center>\r\n</body>\r\n</html>\r\n"
    )
    upstream.queue(Reply(status=502, headers={"content-type": "text/html"}, body=[page]))

    outcome = await ask(provider)

    assert outcome.error.code == "upstream_unavailable"
    assert outcome.error.status == 502
    assert "502 Bad Gateway" in outcome.error.detail
    assert_plain_words(outcome.error.detail)


async def test_it_reads_a_plain_text_error_body(upstream, provider):
    upstream.queue(Reply(status=400, headers={"content-type": "text/plain"}, body=[b"model is required\n"]))

    outcome = await ask(provider)

    assert outcome.error.code == "upstream_bad_request"
    assert "model is required" in outcome.error.detail
    assert_plain_words(outcome.error.detail)


async def test_it_reads_ollama_string_errors(upstream, provider):
    body = b'{"error":"model \\"llama3.3\\" not found, try pulling it first"}'
    upstream.queue(Reply(status=404, headers=JSON, body=[body]))

    outcome = await ask(provider, model="llama3.3")

    assert outcome.error.code == "upstream_not_found"
    assert 'model "llama3.3" not found, try pulling it first' in outcome.error.detail
    assert_plain_words(outcome.error.detail)


async def test_it_reads_fastapi_validation_errors_as_words(upstream, provider):
    detail = [
        {"type": "missing", "loc": ["body", "model"], "msg": "Field required", "input": {"messages": []}},
        {
            "type": "bool_type",
            "loc": ["body", "stream"],
            "msg": "Input should be a valid boolean",
            "input": "x",
        },
    ]
    upstream.queue(Reply(status=422, headers=JSON, body=[json.dumps({"detail": detail}).encode()]))

    outcome = await ask(provider)

    assert outcome.error.status == 422
    assert "model: Field required; stream: Input should be a valid boolean" in outcome.error.detail
    assert_plain_words(outcome.error.detail)


async def test_it_reads_google_list_wrapped_errors(upstream, provider):
    body = [
        {
            "error": {
                "code": 400,
                "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT",
            }
        }
    ]
    upstream.queue(Reply(status=400, headers=JSON, body=[json.dumps(body).encode()]))

    outcome = await ask(provider)

    assert outcome.error.code == "upstream_bad_request"
    assert outcome.error.provider_code == "400"
    assert "API key not valid. Please pass a valid API key." in outcome.error.detail
    assert_plain_words(outcome.error.detail)


async def test_it_reports_an_unreachable_provider(provider, upstream):
    from chat.upstream import Provider

    upstream.close()  # nothing listens on that port any more
    outcome = await ask(Provider(base_url=provider.base_url, api_key=TEST_API_KEY))

    assert outcome.error.code == "upstream_connect"
    assert "127.0.0.1" in outcome.error.detail
    assert_plain_words(outcome.error.detail)


# -- 11b. Retries --------------------------------------------------------------------------------------


async def test_it_retries_a_503_and_then_streams(upstream, provider, settings):
    settings.CHAT_UPSTREAM_RETRIES = 2
    upstream.queue(
        Reply(status=503, headers={**JSON, "retry-after-ms": "20"}, body=error_body("Overloaded", "x", None)),
        Reply(body=[OPENAI]),
    )

    outcome = await ask(provider)

    assert outcome.error is None
    assert outcome.text == OPENAI_TEXT
    assert len(upstream.requests) == 2
    assert [(r.attempt, r.delay) for r in outcome.retries] == [(1, 0.02)]
    assert "HTTP 503" in outcome.retries[0].reason


async def test_retry_after_ms_wins_over_retry_after(upstream, provider, settings):
    settings.CHAT_UPSTREAM_RETRIES = 1
    headers = {**JSON, "retry-after": "3", "retry-after-ms": "15"}
    upstream.queue(
        Reply(status=429, headers=headers, body=error_body("Rate limit reached", "x", None)),
        Reply(body=[OPENAI]),
    )
    started = time.monotonic()

    outcome = await ask(provider)

    assert outcome.error is None
    assert [r.delay for r in outcome.retries] == [0.015]
    assert time.monotonic() - started < 2


async def test_it_does_not_wait_out_a_long_retry_after(upstream, provider, settings):
    settings.CHAT_UPSTREAM_RETRIES = 2
    settings.CHAT_UPSTREAM_MAX_RETRY_WAIT = 5
    upstream.queue(
        Reply(status=429, headers={**JSON, "retry-after": "60"}, body=error_body("Slow down", "x", None))
    )
    upstream.default = Reply(body=[OPENAI])

    outcome = await ask(provider)

    assert outcome.error.code == "upstream_rate_limited"
    assert outcome.error.retry_after == 60
    assert outcome.retries == []
    assert len(upstream.requests) == 1


async def test_it_gives_up_after_the_configured_retries(upstream, provider, settings):
    settings.CHAT_UPSTREAM_RETRIES = 2
    upstream.default = Reply(
        status=500, headers={**JSON, "retry-after-ms": "1"}, body=error_body("Boom", "x", None)
    )

    outcome = await ask(provider)

    assert outcome.error.code == "upstream_unavailable"
    assert [r.attempt for r in outcome.retries] == [1, 2]
    assert len(upstream.requests) == 3


async def test_it_does_not_retry_an_exhausted_quota(upstream, provider, settings):
    """OpenAI's 429 insufficient_quota needs billing, not patience."""
    settings.CHAT_UPSTREAM_RETRIES = 2
    upstream.default = Reply(
        status=429,
        headers=JSON,
        body=error_body("You exceeded your current quota.", "insufficient_quota", "insufficient_quota"),
    )

    outcome = await ask(provider)

    assert outcome.error.code == "upstream_rate_limited"
    assert "You exceeded your current quota." in outcome.error.detail
    assert len(upstream.requests) == 1


@pytest.mark.parametrize("status", [401, 404, 400])
async def test_it_does_not_retry_client_errors(upstream, provider, settings, status):
    settings.CHAT_UPSTREAM_RETRIES = 2
    upstream.default = Reply(status=status, headers=JSON, body=error_body("No.", "x", None))

    outcome = await ask(provider)

    assert outcome.error.status == status
    assert len(upstream.requests) == 1


# -- The request -----------------------------------------------------------------------------------------


async def test_it_asks_for_a_stream_with_usage(upstream, provider):
    upstream.queue(Reply(body=[OPENAI]))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi \u00e9\U0001f600"},
    ]

    await ask(provider, messages=messages, model="gpt-4o-mini")

    request = upstream.requests[0]
    assert (request["method"], request["path"]) == ("POST", "/v1/chat/completions")
    assert request["json"] == {
        "model": "gpt-4o-mini",
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert "text/event-stream" in request["headers"]["accept"]


async def test_it_asks_again_without_stream_options_when_the_server_rejects_them(upstream, provider):
    rejection = error_body(
        "Unrecognized request argument supplied: stream_options", "invalid_request_error", None
    )
    upstream.queue(
        Reply(status=400, headers=JSON, body=rejection), Reply(body=[LLAMA_CPP]), Reply(body=[LLAMA_CPP])
    )

    first = await ask(provider)
    second = await ask(provider)

    assert (first.error, first.text) == (None, "Hello from llama.cpp.")
    assert second.text == "Hello from llama.cpp."
    assert "stream_options" in upstream.requests[0]["json"]
    assert "stream_options" not in upstream.requests[1]["json"]
    assert "stream_options" not in upstream.requests[2]["json"]  # remembered for this server
    assert upstream.requests[1]["json"]["stream"] is True


async def test_it_reads_a_whole_json_reply_from_a_server_that_does_not_stream(upstream, provider):
    reply = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "tiny",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello in one go."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
    }
    upstream.queue(Reply(headers={"content-type": "application/json"}, body=[json.dumps(reply).encode()]))

    outcome = await ask(provider)

    assert outcome.error is None
    assert (outcome.text, outcome.finish_reason) == ("Hello in one go.", "stop")
    assert outcome.usage == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}


async def test_it_reports_an_error_in_a_whole_json_reply(upstream, provider):
    body = json.dumps({"error": {"message": "Model is loading", "code": 503}}).encode()
    upstream.queue(Reply(headers={"content-type": "application/json; charset=utf-8"}, body=[body]))

    outcome = await ask(provider)

    assert outcome.error.code == "upstream_error"
    assert "Model is loading" in outcome.error.detail
    assert_plain_words(outcome.error.detail)


async def test_it_reuses_the_connection_for_the_next_reply(upstream, provider):
    upstream.queue(Reply(body=[OPENAI]), Reply(body=[OPENAI]))

    first, second = await ask(provider), await ask(provider)

    assert first.text == second.text == OPENAI_TEXT
    assert [request["connection"] for request in upstream.requests] == [1, 1]


async def test_a_server_that_keeps_the_body_open_after_done_is_not_waited_for(upstream, provider):
    upstream.queue(Reply(body=[OPENAI], stall=4))
    started = time.monotonic()

    outcome = await ask(provider)

    assert (outcome.error, outcome.text, outcome.finish_reason) == (None, OPENAI_TEXT, "stop")
    assert time.monotonic() - started < 2.5


# -- 12. Idle timeout ----------------------------------------------------------------------------------


async def test_a_silent_upstream_ends_the_reply_with_a_timeout(upstream, provider, settings):
    settings.CHAT_UPSTREAM_IDLE_TIMEOUT = 0.5
    upstream.queue(Reply(body=sse(*chat_chunks(["Before the silence"], None), done=False), stall=3))
    started = time.monotonic()

    outcome = await ask(provider)

    assert outcome.text == "Before the silence"
    assert outcome.error.code == "upstream_timeout"
    assert "0.5 seconds" in outcome.error.detail
    assert_plain_words(outcome.error.detail)
    assert time.monotonic() - started < 2.5


async def test_keep_alive_comments_keep_a_slow_upstream_alive(upstream, provider, settings):
    settings.CHAT_UPSTREAM_IDLE_TIMEOUT = 0.5
    events = sse(*chat_chunks(["Slow", " but", " alive"]))
    keep_alives = [b": keep-alive\n\n"] * 7  # every 0.2 s for 1.4 s, then the rest of the reply
    upstream.queue(Reply(body=[events[0] + events[1], *keep_alives, b"".join(events[2:])], delay=0.2))

    outcome = await ask(provider)

    assert outcome.error is None
    assert (outcome.text, outcome.finish_reason) == ("Slow but alive", "stop")


async def test_a_finished_reply_does_not_wait_the_idle_timeout_for_a_missing_done(
    upstream, provider, settings
):
    settings.CHAT_UPSTREAM_IDLE_TIMEOUT = 30
    upstream.queue(Reply(body=sse(*chat_chunks(["All ", "done"]), done=False), stall=10))
    started = time.monotonic()
    outcome = await ask(provider)
    assert time.monotonic() - started < 5  # the finish chunk ended it, after a short grace for usage
    assert (outcome.text, outcome.finish_reason, outcome.error) == ("All done", "stop", None)


# -- 13. The HTTP client: one error map, its pool, proxies and the demo --------------------------------


async def test_it_reads_a_stream_that_arrives_seven_bytes_at_a_time(upstream, provider):
    usage = {"prompt_tokens": 5, "completion_tokens": 2}
    body = b"".join(sse(*chat_chunks(["Hel", "lo"], usage=usage)))
    upstream.queue(Reply(body=[body[i : i + 7] for i in range(0, len(body), 7)]))  # 7-byte reads
    outcome = await ask(provider)
    assert (outcome.text, outcome.finish_reason, outcome.usage, outcome.error) == (
        "Hello",
        "stop",
        usage,
        None,
    )


async def test_a_gzip_compressed_stream_is_read_as_plain_text(upstream, provider):
    """A proxy or provider may compress the stream; the client reads raw bytes only when
    nothing says the body is encoded."""
    import gzip

    body = gzip.compress(b"".join(sse(*chat_chunks(["Squeezed", " text"]))))
    headers = {"content-type": "text/event-stream", "content-encoding": "gzip"}
    upstream.queue(Reply(headers=headers, body=[body[:10], body[10:]]))
    outcome = await ask(provider)
    assert (outcome.text, outcome.finish_reason, outcome.error) == ("Squeezed text", "stop", None)


async def test_a_stream_cut_without_a_finish_is_interrupted(upstream, provider):
    upstream.queue(Reply(body=sse(*chat_chunks(["Half"], finish_reason=None), done=False), cut=True))
    outcome = await ask(provider)
    assert outcome.text == "Half" and outcome.error.code == "upstream_interrupted"


async def test_a_stream_silent_without_a_finish_ends_with_a_timeout(upstream, provider, settings):
    settings.CHAT_UPSTREAM_IDLE_TIMEOUT = 0.5
    upstream.queue(Reply(body=sse(*chat_chunks(["Slow"], finish_reason=None), done=False), stall=3))
    outcome = await ask(provider)
    assert outcome.text == "Slow" and outcome.error.code == "upstream_timeout"


async def test_a_refused_connection_is_called_refused_not_a_timeout(upstream, provider):
    """httpx-aiohttp raises httpx.ConnectTimeout for a refused connection; the user is told the truth."""
    from chat.upstream import Provider

    upstream.close()
    outcome = await ask(Provider(base_url=provider.base_url, api_key=TEST_API_KEY))
    assert outcome.error.code == "upstream_connect" and "connection refused" in outcome.error.detail


@contextlib.asynccontextmanager
async def raw_server(handle):
    """A loopback TCP server in the test's loop, answering with whatever `handle` writes."""

    async def serve(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
            await handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    finally:
        server.close()


async def test_a_server_that_hangs_up_before_answering_is_retried_then_reported(settings):
    from chat.upstream import Provider

    settings.CHAT_UPSTREAM_RETRIES = 1
    settings.CHAT_UPSTREAM_MAX_RETRY_WAIT = 0.05

    async def hang_up(reader, writer):
        pass

    async with raw_server(hang_up) as base_url:
        outcome = await ask(Provider(base_url=base_url))

    assert outcome.error.code == "upstream_connect"
    assert "the connection was closed" in outcome.error.detail
    assert len(outcome.retries) == 1
    assert_plain_words(outcome.error.detail)


async def test_a_server_that_does_not_speak_http_is_an_error_in_plain_words():
    """httpx-aiohttp lets this one through as aiohttp's own exception: it is mapped all the same."""
    from chat.upstream import Provider

    async def babble(reader, writer):
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()

    async with raw_server(babble) as base_url:
        outcome = await ask(Provider(base_url=base_url))

    assert outcome.error.code == "upstream_connect"
    assert "did not answer in HTTP" in outcome.error.detail
    assert_plain_words(outcome.error.detail)


async def test_a_full_connection_pool_waits_no_longer_than_the_connect_timeout(upstream, provider, settings):
    """CHAT_UPSTREAM_MAX_CONNECTIONS bounds the pool; a request waiting for a connection gives up
    after the connect timeout, while the reply holding the connection streams on."""
    settings.CHAT_UPSTREAM_MAX_CONNECTIONS = 1
    settings.CHAT_UPSTREAM_CONNECT_TIMEOUT = 0.3
    held = threading.Event()
    events = sse(*chat_chunks(["First", " and last"]))
    upstream.queue(Reply(body=[events[0] + events[1], *events[2:]], wait_for=held))
    first = aiter(ChatStream(provider, "test-model", HELLO))
    assert (await anext(first)).content == "First"
    started = time.monotonic()

    second = await ask(provider)

    assert second.error.code == "upstream_timeout"
    assert time.monotonic() - started < 2
    held.set()
    rest = "".join([piece.content async for piece in first])
    assert rest == " and last"
    assert len(upstream.requests) == 1


class ForwardProxy:
    """A plain-HTTP forward proxy on loopback (no CONNECT, so http:// targets only): it notes
    each request line and relays the bytes both ways, as squid does for http:// URLs."""

    def __init__(self) -> None:
        self.request_lines: list[str] = []
        self._tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> "ForwardProxy":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()

    async def _handle(self, reader, writer) -> None:
        self._tasks.add(asyncio.current_task())
        head = await reader.readuntil(b"\r\n\r\n")
        line, _, rest = head.partition(b"\r\n")
        method, target, version = line.decode("latin-1").split(" ")
        self.request_lines.append(f"{method} {target}")
        url = urllib.parse.urlsplit(target)
        to_reader, to_writer = await asyncio.open_connection(url.hostname, url.port)
        to_writer.write(f"{method} {url.path} {version}\r\n".encode() + rest)
        await asyncio.gather(self._pipe(reader, to_writer), self._pipe(to_reader, writer))

    @staticmethod
    async def _pipe(source, sink) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except ConnectionError:
            pass
        finally:
            sink.close()


@pytest.fixture
def proxy_env(monkeypatch):
    """No proxy variable from the machine running the tests; set the ones a test names."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


async def test_http_proxy_carries_the_request_to_the_provider(upstream, provider, proxy_env):
    upstream.queue(Reply(body=[OPENAI]))
    async with ForwardProxy() as proxy:
        proxy_env.setenv("HTTP_PROXY", proxy.url)

        outcome = await ask(provider)

    assert (outcome.error, outcome.text) == (None, OPENAI_TEXT)
    assert proxy.request_lines == [f"POST {upstream.base_url}/chat/completions"]
    assert upstream.requests[0]["path"] == "/v1/chat/completions"
    assert upstream.requests[0]["headers"]["authorization"] == f"Bearer {TEST_API_KEY}"


async def test_no_proxy_sends_a_matching_host_past_the_proxy(upstream, provider, proxy_env):
    upstream.queue(Reply(body=[OPENAI]))
    async with ForwardProxy() as proxy:
        proxy_env.setenv("HTTP_PROXY", proxy.url)
        proxy_env.setenv("NO_PROXY", "localhost,127.0.0.1")

        outcome = await ask(provider)

    assert (outcome.error, outcome.text) == (None, OPENAI_TEXT)
    assert proxy.request_lines == []
    assert len(upstream.requests) == 1


async def test_a_proxy_that_cannot_be_reached_is_named_in_the_error(upstream, provider, proxy_env):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{dead}")

    outcome = await ask(provider)

    assert outcome.error.code == "upstream_connect"
    assert "proxy" in outcome.error.detail
    assert upstream.requests == []
    assert_plain_words(outcome.error.detail)


async def test_the_demo_model_answers_through_the_client_even_behind_a_proxy(settings, proxy_env):
    """The demo is mounted on the same client for its own address, which no proxy sees."""
    from chat.upstream import Provider

    settings.CHAT_DEMO, settings.CHAT_DEMO_DELAY = True, 0
    async with ForwardProxy() as proxy:
        proxy_env.setenv("HTTP_PROXY", proxy.url)
        proxy_env.setenv("ALL_PROXY", proxy.url)

        outcome = await ask(Provider.from_settings(), [{"role": "user", "content": "count to 5"}])

    assert (outcome.error, outcome.text, outcome.finish_reason) == (None, "1, 2, 3, 4, 5.", "stop")
    assert proxy.request_lines == []


# -- Provider output that must not break the app (issue #12) -------------------------------------------

EMOJI = "\U0001f600"
REPLACEMENT = "\ufffd"


def storable_text(text: str) -> bool:
    """Text every database and socket takes: valid UTF-8, and no NUL (PostgreSQL)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


async def ask_pieces(provider) -> tuple[Outcome, list]:
    """As `ask`, keeping each piece: what is streamed must be storable, piece by piece."""
    outcome, pieces = Outcome(), []
    stream = ChatStream(provider, "test-model", HELLO)
    try:
        async for piece in stream:
            pieces.append(piece)
            outcome.text += piece.content
            outcome.reasoning += piece.reasoning
            outcome.refusal += piece.refusal
            outcome.finish_reason, outcome.usage = stream.finish_reason, stream.usage
    except UpstreamError as exc:
        outcome.error = exc
    return outcome, pieces


# The escapes as a provider writes them: each half of the emoji in its own event, and a NUL.
SPLIT_EMOJI = events(
    'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}',
    "",
    'data: {"choices":[{"index":0,"delta":{"content":"Hi \\ud83d"}}]}',
    "",
    'data: {"choices":[{"index":0,"delta":{"content":"\\ude00 th\\u0000ere"}}]}',
    "",
    'data: {"choices":[{"index":0,"delta":{"reasoning_content":"think \\ud83d"}}]}',
    "",
    'data: {"choices":[{"index":0,"delta":{"reasoning_content":"\\ude00"}}]}',
    "",
    'data: {"choices":[{"index":0,"delta":{"refusal":"no\\u0000 \\udc00"}}]}',
    "",
    'data: {"choices":[{"index":0,"delta":{"content":"!"},"finish_reason":"stop"}]}',
    "",
    "data: [DONE]",
    "",
)


@pytest.mark.parametrize("reads", ["whole", "an event a read", "a byte a read"])
async def test_it_rejoins_an_emoji_split_across_events_and_replaces_nul(upstream, provider, reads):
    if reads == "whole":
        body = [SPLIT_EMOJI]
    elif reads == "an event a read":
        body = [event + b"\n\n" for event in SPLIT_EMOJI.split(b"\n\n")[:-1]]
    else:
        body = [SPLIT_EMOJI[i : i + 1] for i in range(len(SPLIT_EMOJI))]
    upstream.queue(Reply(body=body))

    outcome, pieces = await ask_pieces(provider)

    assert outcome.error is None
    assert outcome.text == f"Hi {EMOJI} th{REPLACEMENT}ere!"
    assert outcome.reasoning == f"think {EMOJI}"
    assert outcome.refusal == f"no{REPLACEMENT} {REPLACEMENT}"
    for piece in pieces:
        assert all(map(storable_text, (piece.content, piece.reasoning, piece.refusal))), piece


async def test_it_rejoins_the_halves_at_every_split_of_the_stream(upstream, provider):
    transcript = SPLIT_EMOJI
    upstream.queue(*(Reply(body=[transcript[:i], transcript[i:]]) for i in range(1, len(transcript))))

    for offset in range(1, len(transcript)):
        outcome, pieces = await ask_pieces(provider)
        assert (outcome.text, outcome.reasoning) == (f"Hi {EMOJI} th{REPLACEMENT}ere!", f"think {EMOJI}"), (
            offset
        )
        assert all(storable_text(p.content + p.reasoning + p.refusal) for p in pieces), offset


async def test_a_half_held_back_when_the_stream_is_cut_is_kept_as_a_replacement(upstream, provider):
    body = events(
        'data: {"choices":[{"index":0,"delta":{"content":"Cut after \\ud83d"}}]}',
        "",
    )
    upstream.queue(Reply(body=[body], cut=True))

    outcome, pieces = await ask_pieces(provider)

    assert outcome.error.code == "upstream_interrupted"
    assert outcome.text == f"Cut after {REPLACEMENT}"  # the partial reply the user keeps
    assert all(storable_text(p.content) for p in pieces)


async def test_a_whole_json_reply_is_made_storable_too(upstream, provider):
    body = b'{"choices":[{"index":0,"message":{"content":"a\\u0000b \\ud83d\\ude00 \\ud83d"},"finish_reason":"stop"}]}'
    upstream.queue(Reply(headers=JSON, body=[body]))

    outcome = await ask(provider)

    assert (outcome.error, outcome.text) == (None, f"a{REPLACEMENT}b {EMOJI} {REPLACEMENT}")


async def test_what_the_provider_names_is_made_fit_to_save(upstream, provider):
    """The model name and finish reason are saved with the reply: a NUL or a lone half would
    fail the save on PostgreSQL, and so would a value longer than its column."""
    body = events(
        'data: {"model":"evil\\u0000model\\ud83d' + "x" * 300 + '","choices":[{"index":0,"delta":'
        '{"content":"ok"},"finish_reason":"stop\\u0000' + "y" * 100 + '"}]}',
        "",
        "data: [DONE]",
        "",
    )
    upstream.queue(Reply(body=[body]))
    stream = ChatStream(provider, "test-model", HELLO)

    assert [piece.content async for piece in stream] == ["ok"]

    assert storable_text(stream.response_model) and len(stream.response_model) <= 200
    assert stream.response_model.startswith(f"evil{REPLACEMENT}model{REPLACEMENT}x")
    assert storable_text(stream.finish_reason) and len(stream.finish_reason) <= 32
    assert stream.finish_reason.startswith(f"stop{REPLACEMENT}y")


async def test_it_keeps_a_provider_error_message_storable(upstream, provider):
    upstream.queue(
        Reply(
            body=sse(*chat_chunks(["x"], None), {"error": {"message": "bad \u0000 thing \ud83d"}}, done=False)
        )
    )

    outcome = await ask(provider)

    assert outcome.error.code == "upstream_error"
    assert storable_text(outcome.error.detail) and "bad \ufffd thing \ufffd" in outcome.error.detail


_MG = '"id":"b7f1","object":"chat.completion.chunk","created":1759000000,"model":"magistral-medium-2509"'
MAGISTRAL = events(
    f'data: {{{_MG},"choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},"finish_reason":null}}]}}',
    "",
    f'data: {{{_MG},"choices":[{{"index":0,"delta":{{"content":[{{"type":"thinking","thinking":'
    '[{"type":"text","text":"Okay, the user"}]}]},"finish_reason":null}]}',
    "",
    f'data: {{{_MG},"choices":[{{"index":0,"delta":{{"content":[{{"type":"thinking","thinking":'
    '[{"type":"text","text":" says hello."}]}]},"finish_reason":null}]}',
    "",
    f'data: {{{_MG},"choices":[{{"index":0,"delta":{{"content":[{{"type":"text","text":"Hello"}}]}},'
    '"finish_reason":null}]}',
    "",
    f'data: {{{_MG},"choices":[{{"index":0,"delta":{{"content":"!"}},"finish_reason":"stop"}}],'
    '"usage":{"prompt_tokens":11,"total_tokens":31,"completion_tokens":20}}',
    "",
    "data: [DONE]",
    "",
)


async def test_it_keeps_magistral_thinking_parts_as_reasoning(upstream, provider):
    upstream.queue(Reply(body=[MAGISTRAL]))

    outcome = await ask(provider)

    assert outcome.error is None
    assert (outcome.reasoning, outcome.text) == ("Okay, the user says hello.", "Hello!")
    assert outcome.usage["completion_tokens"] == 20


_MS = '"id":"chatcmpl-6a1","object":"chat.completion.chunk","created":1732000000,"model":"moonshot-v1-8k"'
MOONSHOT = events(
    f'data: {{{_MS},"choices":[{{"index":0,"delta":{{"role":"assistant","content":""}},"finish_reason":null}}]}}',
    "",
    f'data: {{{_MS},"choices":[{{"index":0,"delta":{{"content":"Hello from Kimi."}},"finish_reason":null}}]}}',
    "",
    f'data: {{{_MS},"choices":[{{"index":0,"delta":{{}},"finish_reason":"stop","usage":'
    '{"prompt_tokens":8,"completion_tokens":5,"total_tokens":13,"cached_tokens":0}}]}',
    "",
    "data: [DONE]",
    "",
)


async def test_it_reads_moonshot_usage_inside_the_choice(upstream, provider):
    upstream.queue(Reply(body=[MOONSHOT]))

    outcome = await ask(provider)

    assert (outcome.error, outcome.text) == (None, "Hello from Kimi.")
    assert outcome.usage == {
        "prompt_tokens": 8,
        "completion_tokens": 5,
        "total_tokens": 13,
        "cached_tokens": 0,
    }


async def test_it_keeps_only_integer_token_counts_in_usage(upstream, provider):
    usage = {
        "prompt_tokens": "12",
        "completion_tokens": 12.0,
        "total_tokens": True,
        "cached": None,
        "negative": -3,
        "huge": 2**40,
        "reasoning_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 2, "audio_tokens": "0"},
        "completion_tokens_details": {"note": "n/a"},
        "nested": {"deeper": {"tokens": 1}},
        "queue_time": 0.01,
    }
    upstream.queue(Reply(body=sse(*chat_chunks(["Hi"], usage=usage))))

    outcome = await ask(provider)

    assert outcome.error is None
    assert outcome.usage == {"reasoning_tokens": 7, "prompt_tokens_details": {"cached_tokens": 2}}


async def test_a_usage_with_no_counts_does_not_replace_an_earlier_one(upstream, provider):
    good = {"prompt_tokens": 4, "completion_tokens": 1}
    upstream.queue(
        Reply(body=sse(*chat_chunks(["Hi"], usage=good), {"choices": [], "usage": {"prompt_tokens": "x"}}))
    )

    outcome = await ask(provider)

    assert outcome.usage == good


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "application/xhtml+xml"])
async def test_a_web_page_instead_of_a_stream_is_a_bad_response(upstream, provider, content_type):
    portal = b"<!doctype html><html><head><title>Guest Wi-Fi - Sign in</title></head><body>...</body></html>"
    upstream.queue(Reply(headers={"content-type": content_type}, body=[portal]))

    outcome = await ask(provider)

    assert outcome.error.code == "upstream_bad_response"
    assert "web page" in outcome.error.detail and "Guest Wi-Fi - Sign in" in outcome.error.detail
    assert_plain_words(outcome.error.detail)


async def test_a_stream_without_the_event_stream_type_is_still_read(upstream, provider):
    """Some servers label their stream text/plain, or not at all: read it as one."""
    upstream.queue(
        Reply(headers={"content-type": "text/plain; charset=utf-8"}, body=[OPENAI]),
        Reply(headers={}, body=[OPENAI]),
    )

    for _ in range(2):
        outcome = await ask(provider)
        assert (outcome.error, outcome.text, outcome.finish_reason) == (None, OPENAI_TEXT, "stop")


async def test_a_body_that_is_no_stream_at_all_is_a_bad_response_not_an_interruption(upstream, provider):
    upstream.queue(Reply(headers={"content-type": "text/plain"}, body=[b"Service moved. Ask your admin.\n"]))

    outcome = await ask(provider)

    assert outcome.error.code == "upstream_bad_response"
    assert "text/plain" in outcome.error.detail and "not an event stream" in outcome.error.detail
    assert_plain_words(outcome.error.detail)


async def test_keep_alive_comments_cannot_hold_a_reply_open_past_its_deadline(upstream, provider, settings):
    # The idle timeout is shorter than the deadline, so both the reads far from the deadline
    # (bounded by the idle timeout) and the reads near it (bounded by the deadline) are used.
    settings.CHAT_UPSTREAM_IDLE_TIMEOUT = 0.3
    settings.CHAT_UPSTREAM_REPLY_DEADLINE = 1.0
    first = b"".join(sse(*chat_chunks(["Before the comments"], None), done=False))
    upstream.queue(Reply(body=[first], repeat=b": keep-alive\n\n", delay=0.02))
    started = time.monotonic()

    async with asyncio.timeout(10):  # without a deadline this reply would never end
        outcome = await ask(provider)

    elapsed = time.monotonic() - started
    assert outcome.error.code == "upstream_deadline"
    assert outcome.text == "Before the comments"  # the partial reply is kept
    assert "1 seconds" in outcome.error.detail
    assert_plain_words(outcome.error.detail)
    assert 0.9 <= elapsed < 2.5
    assert await asyncio.to_thread(upstream.requests[0]["disconnected"].wait, 5)  # hung up on the provider


async def test_the_deadline_also_ends_comments_before_the_first_text(upstream, provider, settings):
    settings.CHAT_UPSTREAM_REPLY_DEADLINE = 0.5  # far under the 5 s idle timeout: every read is timed
    upstream.queue(Reply(body=[b": queued\n\n"], repeat=b": still queued\n\n"))

    async with asyncio.timeout(10):
        outcome = await ask(provider)

    assert (outcome.error.code, outcome.text) == ("upstream_deadline", "")


async def test_a_zero_deadline_means_none(upstream, provider, settings):
    settings.CHAT_UPSTREAM_REPLY_DEADLINE = 0
    upstream.queue(Reply(body=sse(*chat_chunks(["No", " limit"])), delay=0.01))

    outcome = await ask(provider)

    assert (outcome.error, outcome.text) == (None, "No limit")


GROQ_KEY = "gsk_Q9xVt2LmNcR4bY7sK1wPzE3hJ6uA8dFg0iOqTnXy"
AZURE_HEADER_SECRET = "3f9c2a7b8d1e4f60a5b2c9d8e7f6a1b0"


@pytest.fixture
def secretive_provider(upstream):
    """A provider whose secrets are a Groq-style key and an Azure `api-key` header."""
    from chat.upstream import Provider

    return Provider(
        base_url=upstream.base_url,
        api_key=GROQ_KEY,
        headers=(("api-key", AZURE_HEADER_SECRET), ("x-gateway-auth", "Basic dXNlcjpwYXNzd29yZA==")),
    )


def quoting_secrets(where: str) -> str:
    return (
        f"{where}: key {GROQ_KEY} / other key gsk_AbCdEfGhIjKlMnOpQrStUv is wrong; "
        f"header api-key={AZURE_HEADER_SECRET}; auth dXNlcjpwYXNzd29yZA==; masked {AZURE_HEADER_SECRET[:4]}****"
    )


SECRET_FRAGMENTS = (
    GROQ_KEY,
    "gsk_AbCdEf",
    AZURE_HEADER_SECRET,
    "dXNlcjpwYXNzd29yZA",
    AZURE_HEADER_SECRET[:4] + "*",
)


async def test_no_secret_of_the_provider_reaches_the_error_or_the_log(upstream, secretive_provider, caplog):
    upstream.queue(
        Reply(status=401, headers=JSON, body=error_body(quoting_secrets("rejected"), "auth", None)),
        Reply(body=sse(*chat_chunks(["x"], None), {"error": {"message": quoting_secrets("mid-stream")}})),
        Reply(
            status=502,
            headers={"content-type": "text/html"},
            body=[f"<title>{quoting_secrets('page')}</title>".encode()],
        ),
        Reply(
            headers={"content-type": "text/html"},
            body=[f"<title>{quoting_secrets('portal')}</title>".encode()],
        ),
    )

    with caplog.at_level("DEBUG"):
        outcomes = [await ask(secretive_provider) for _ in range(4)]

    for outcome in outcomes:
        assert outcome.error is not None
        for secret in SECRET_FRAGMENTS:
            assert secret not in outcome.error.detail, (secret, outcome.error.detail)
        assert "[redacted]" in outcome.error.detail
    for secret in SECRET_FRAGMENTS:
        assert secret not in caplog.text
    assert upstream.requests[0]["headers"]["api-key"] == AZURE_HEADER_SECRET  # still sent, only not shown


async def test_the_model_list_error_never_shows_a_provider_secret(upstream, secretive_provider):
    from chat.upstream import list_models

    upstream.queue(Reply(status=403, headers=JSON, body=error_body(quoting_secrets("models"), "auth", None)))

    with pytest.raises(UpstreamError) as raised:
        await list_models(secretive_provider)

    for secret in SECRET_FRAGMENTS:
        assert secret not in raised.value.detail
