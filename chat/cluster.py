"""The other worker processes: whether there are any, and how they are addressed.

With the in-memory channel layer this is the only process. With Redis, a reply streams
in the process that began it; tabs on other processes reach it through two channel-layer
groups per conversation (chat.remote).
"""

import uuid

from django.conf import settings

PROCESS_ID = uuid.uuid4().hex  # tells this process's own announcements from others'


def single_process() -> bool:
    """With the in-memory channel layer, no other process can be streaming anything."""
    backend = settings.CHANNEL_LAYERS["default"]["BACKEND"]
    return backend.endswith("InMemoryChannelLayer")


def reply_group(conversation_id: int) -> str:
    """The process streaming the conversation's reply listens here (attach, detach, stop)."""
    return f"chat-gen-{conversation_id}"


def conversation_group(conversation_id: int) -> str:
    """Every socket on the conversation, in any process, listens here (a reply started)."""
    return f"chat-conv-{conversation_id}"
