"""Reading server frames the way a client does (docs/protocol.md)."""

import json


class FrameDecoder:
    """One socket's server frames as dicts. A text delta (`+` and the text) comes back in a
    JSON delta's shape, with the message_id and seq the protocol implies for it."""

    def __init__(self) -> None:
        self.message_id: int | None = None
        self.seq = 0

    def decode(self, raw: str) -> dict:
        if raw.startswith("+"):
            frame = {"type": "delta", "message_id": self.message_id, "seq": self.seq + 1, "content": raw[1:]}
        else:
            frame = json.loads(raw)
        if frame["type"] == "start":
            self.message_id, self.seq = frame["message_id"], 0
        elif frame["type"] in ("resume", "delta"):
            self.message_id, self.seq = frame["message_id"], frame["seq"]
        return frame
