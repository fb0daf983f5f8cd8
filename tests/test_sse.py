"""The SSE decoder gives the same events however the network splits the bytes.

Each transcript is byte-exact and checked whole, split in two at every offset,
and fed one byte at a time (SSE-CONFORMANCE.md, framing rules and case 3).
"""

import json
import time

import pytest

from chat.upstream.sse import Event, SSEDecoder


def decode(*reads: bytes) -> list[Event]:
    decoder = SSEDecoder()
    events = []
    for read in reads:
        events += decoder.feed(read)
    return events + decoder.close()


def every_split(transcript: bytes):
    """The transcript whole, in two pieces at every offset, and one byte per read."""
    yield "whole", (transcript,)
    for offset in range(1, len(transcript)):
        yield f"split at {offset}", (transcript[:offset], transcript[offset:])
    yield "one byte per read", tuple(transcript[i : i + 1] for i in range(len(transcript)))


CHUNK = '{"choices":[{"index":0,"delta":{"content":"Hi"}}]}'

TRANSCRIPTS = {
    "LF": (
        f"data: {CHUNK}\n\ndata: two\n\n".encode(),
        [Event(CHUNK), Event("two")],
    ),
    "CRLF": (
        f"data: {CHUNK}\r\n\r\ndata: two\r\n\r\n".encode(),
        [Event(CHUNK), Event("two")],
    ),
    "CR": (
        f"data: {CHUNK}\r\rdata: two\r\r".encode(),
        [Event(CHUNK), Event("two")],
    ),
    "mixed endings": (
        f"data: {CHUNK}\r\n\ndata: two\r\rdata: three\n\r\ndata: four\r\n\r".encode(),
        [Event(CHUNK), Event("two"), Event("three"), Event("four")],
    ),
    "BOM": (
        f"\ufeffdata: {CHUNK}\n\n".encode(),
        [Event(CHUNK)],
    ),
    "BOM then CRLF": (
        b"\xef\xbb\xbf: hello\r\n\r\ndata: x\r\n\r\n",
        [Event("x")],
    ),
    "data with 0, 1 and 2 spaces": (
        b"data:zero\n\ndata: one\n\ndata:  two\n\n",
        [Event("zero"), Event("one"), Event(" two")],  # exactly one space is removed
    ),
    "comments": (
        b": OPENROUTER PROCESSING\n\n:\n\n: keep-alive\ndata: a\n: between lines\ndata: b\n\n",
        [Event("a\nb")],
    ),
    "multi-line data": (
        b'data: {"a":\ndata: 1}\n\ndata:\ndata: x\n\n',
        [Event('{"a":\n1}'), Event("\nx")],
    ),
    "id, retry and event only": (
        b"id: 42\n\nretry: 1000\n\nevent: ping\n\nid: 43\nretry: 5\n\ndata: real\n\n",
        [Event("real")],
    ),
    "unknown fields and no colon": (
        b"foo: bar\ndata\ndata: x\nnonsense\n\n",
        [Event("\nx")],
    ),
    "event type": (
        b'event: error\ndata: {"message":"boom"}\n\ndata: after\n\n',
        [Event('{"message":"boom"}', "error"), Event("after")],
    ),
    "llama.cpp bare error line": (
        b'error: {"code":500,"message":"slot unavailable"}\n\ndata: [DONE]\n\n',
        [Event('{"code":500,"message":"slot unavailable"}', "error"), Event("[DONE]")],
    ),
    "multibyte UTF-8": (
        'data: {"content":"h\u00e9llo \U0001f44b \u4f60\u597d\u4e16\u754c"}\n\ndata: \u00e9\U0001f600\n\n'.encode(),
        [Event('{"content":"h\u00e9llo \U0001f44b \u4f60\u597d\u4e16\u754c"}'), Event("\u00e9\U0001f600")],
    ),
    "trailing [DONE] without blank line": (
        f"data: {CHUNK}\n\ndata: [DONE]".encode(),
        [Event(CHUNK), Event("[DONE]")],
    ),
    "trailing [DONE] with one line end": (
        f"data: {CHUNK}\r\n\r\ndata: [DONE]\r\n".encode(),
        [Event(CHUNK), Event("[DONE]")],
    ),
}


@pytest.mark.parametrize("name", TRANSCRIPTS)
def test_any_split_gives_the_same_events(name):
    transcript, expected = TRANSCRIPTS[name]
    for how, reads in every_split(transcript):
        assert decode(*reads) == expected, f"{name}: {how}"


def test_all_line_endings_give_the_same_events():
    """Conformance case 1: LF, CRLF, CR and mixed endings read the same."""
    body = ['data: {"x": 1}', "", ": comment", "data: a", "data: b", ""]
    expected = decode("\n".join(body).encode() + b"\n")
    assert expected == [Event('{"x": 1}'), Event("a\nb")]
    for ending in ("\r\n", "\r"):
        assert decode(ending.join(body).encode() + ending.encode()) == expected
    mixed = b'data: {"x": 1}\r\n\r: comment\ndata: a\r\ndata: b\r\r\n'
    assert decode(mixed) == expected


def test_a_cr_at_the_end_of_a_read_is_not_doubled_by_an_lf_opening_the_next():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n") == []  # the LF belongs to the CR: no blank line yet
    assert decoder.feed(b"\r") == [Event("a")]
    assert decoder.feed(b"\ndata: b\n\n") == [Event("b")]


def test_a_bom_is_only_stripped_at_the_start_of_the_stream():
    # Later, U+FEFF is part of the field name, so the line is an unknown field.
    assert decode(b"data: a\n\n\xef\xbb\xbfdata: b\n\n") == [Event("a")]


def test_events_come_out_as_soon_as_their_blank_line_arrives():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: one\n") == []
    assert decoder.feed(b"\ndata: tw") == [Event("one")]
    assert decoder.feed(b"o\n\n") == [Event("two")]
    assert decoder.close() == []


def test_a_multibyte_character_split_across_reads_is_not_mangled():
    text = "\u4f60\u597d \U0001f44b"
    data = f"data: {text}\n\n".encode()
    for offset in range(len(data)):
        events = decode(data[:offset], data[offset:])
        assert events == [Event(text)]
        assert "\ufffd" not in events[0].data


def test_a_200_kb_data_line_is_read_whole():
    """No 64 KiB line cap: a large JSON chunk (an image, a long tool call) arrives intact."""
    content = "x" * 200_000 + "\u00e9"
    line = json.dumps({"choices": [{"index": 0, "delta": {"content": content}}]})
    transcript = f"data: {line}\n\ndata: [DONE]\n\n".encode()
    expected = [Event(line), Event("[DONE]")]
    assert decode(transcript) == expected
    for offset in (1, 6, 65_535, 65_536, 65_537, 150_000, len(transcript) - 16, len(transcript) - 1):
        assert decode(transcript[:offset], transcript[offset:]) == expected
    assert decode(*(transcript[i : i + 1000] for i in range(0, len(transcript), 1000))) == expected


def test_a_long_line_in_one_byte_reads_takes_linear_time():
    line = "y" * 200_000
    transcript = f"data: {line}\n\n".encode()
    started = time.perf_counter()
    events = decode(*(transcript[i : i + 1] for i in range(len(transcript))))
    assert events == [Event(line)]
    assert time.perf_counter() - started < 5  # quadratic re-scanning took minutes


def test_an_unfinished_event_at_the_end_is_returned_for_the_caller_to_judge():
    # A cut mid-JSON: the caller's json.loads fails and it reports an interruption.
    assert decode(b'data: {"choices": [{"delta": {"content": "Hel') == [
        Event('{"choices": [{"delta": {"content": "Hel')
    ]
    assert decode(b"data: a\n") == [Event("a")]
    assert decode(b"") == []
    assert decode(b": only a comment") == []
