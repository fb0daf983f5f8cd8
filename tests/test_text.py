"""chat.text: whatever a model or a browser sends becomes text every database and socket takes."""

import json

import pytest

from chat.text import REPLACEMENT, StorableStream, storable

EMOJI = "\U0001f600"


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("plain ascii", "plain ascii"),
        ("caf\u00e9 \u4e2d\u6587 " + EMOJI, "caf\u00e9 \u4e2d\u6587 " + EMOJI),
        ("a\x00b", f"a{REPLACEMENT}b"),
        (json.loads('"x\\ud83d"'), f"x{REPLACEMENT}"),
        (json.loads('"\\ude00y"'), f"{REPLACEMENT}y"),
        (json.loads('"\\ud83d\\ude00"'), EMOJI),  # a pair written as two escapes
        (json.loads('"\\u0000\\ud83d \\u00e9"'), f"{REPLACEMENT}{REPLACEMENT} \u00e9"),
    ],
)
def test_it_makes_any_text_storable_and_keeps_what_already_was(raw, expected):
    assert storable(raw) == expected
    assert encodable(storable(raw))


def test_it_joins_a_surrogate_pair_split_across_two_pieces():
    stream = StorableStream()
    pieces = [json.loads('"Hi \\ud83d"'), json.loads('"\\ude00 there"')]

    assert "".join(stream.feed(p) for p in pieces) + stream.flush() == f"Hi {EMOJI} there"


def test_it_replaces_a_high_surrogate_that_never_gets_its_pair():
    stream = StorableStream()

    first = stream.feed(json.loads('"end \\ud83d"'))
    second = stream.feed("next")

    assert first + second + stream.flush() == f"end {REPLACEMENT}next"
    held_at_end = StorableStream()
    assert held_at_end.feed(json.loads('"\\ud83d"')) + held_at_end.flush() == REPLACEMENT
