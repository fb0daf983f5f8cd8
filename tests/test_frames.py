"""Long replies cut into frames daphne will send (autobahn refuses messages over 1 MiB)."""

import json

from chat.frames import FRAME_CHARS, saved_text_frames, span_frames
from chat.models import Message

ONE_MIB = 1024 * 1024


def shown(frames: list[str]) -> tuple[str, str, int]:
    """What a client shows after applying these frames: text, reasoning, last seq."""
    text = reasoning = ""
    seq = -1
    for raw in frames:
        frame = json.loads(raw)
        assert frame["seq"] > seq  # seq only grows
        seq = frame["seq"]
        if frame["type"] == "resume":
            text, reasoning = frame["content"], frame["reasoning"]
        else:
            text += frame.get("content", "")
            reasoning += frame.get("reasoning", "")
    return text, reasoning, seq


def test_a_long_reply_resumes_as_a_resume_then_deltas_each_under_the_limit():
    content = [f"{n:04d}" + "é" * 996 for n in range(600)]  # 600k characters, 1.2 MB of UTF-8
    reasoning = ["why "] * 600
    frames = span_frames(7, content, reasoning, [""] * 600, 0, 600)
    assert len(frames) > 1 and json.loads(frames[0])["type"] == "resume"
    assert all(len(f.encode()) < ONE_MIB for f in frames)
    assert shown(frames) == ("".join(content), "why " * 600, 600)


def test_a_short_reply_is_one_resume_and_an_empty_one_too():
    assert [json.loads(f)["type"] for f in span_frames(1, ["Hi"], [""], [""], 0, 1)] == ["resume"]
    (only,) = span_frames(1, [], [], [], 0, 0)
    assert json.loads(only) == {
        "type": "resume",
        "message_id": 1,
        "content": "",
        "reasoning": "",
        "refusal": "",
        "seq": 0,
    }


def test_a_catch_up_from_the_middle_is_deltas_only():
    content = ["x" * 1000] * 400
    frames = span_frames(1, content, [""] * 400, [""] * 400, 100, 400)
    assert {json.loads(f)["type"] for f in frames} == {"delta"}
    assert "".join(json.loads(f)["content"] for f in frames) == "x" * 300_000
    assert json.loads(frames[-1])["seq"] == 400


def test_a_saved_long_reply_is_shown_whole():
    reply = Message(id=3, content="a" * (FRAME_CHARS * 3 + 5), reasoning="r" * 10, refusal="")
    text, reasoning, _ = shown(saved_text_frames(reply))
    assert (text, reasoning) == (reply.content, reply.reasoning)
