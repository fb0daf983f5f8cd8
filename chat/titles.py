"""A new chat's title, written by the model after its first reply (issue #14).

The first words of the user's first message title a chat at once (the page sends its
first line when it creates the chat; replies._title when it did not). Once the first
reply has finished, one short request asks the model for a better title. It runs after
the reply's `done` went out, in a task of the process's worker, so it never delays a
reply; open tabs learn the title from a `title` frame (docs/protocol.md).

- Not for the demo model, and not at all when CHAT_MODEL_TITLES is false.
- The chat's own model writes it, or CHAT_TITLE_MODEL (a cheaper one) when set.
- Never over a title the user chose: the new title is written only while the chat's
  title is still one of the first-words titles, in one UPDATE (a rename made while the
  request ran wins).
- A failure (no answer within TIMEOUT, an HTTP error, an empty answer) keeps the first
  words and is logged; chat.upstream's errors never carry the API key.
- Its tokens (a few hundred in, MAX_TOKENS out) are the site's cost, not the user's:
  budgets and the usage report sum the replies a user asked for (chat.budgets), and this
  request is not one of them.
"""

import asyncio
import logging
import re

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from chat import cluster, frames, providers, replies
from chat.forms import TITLE_LONGEST as LONGEST
from chat.forms import title_text
from chat.models import Conversation, Message
from chat.text import storable
from chat.upstream import UpstreamError, complete

log = logging.getLogger(__name__)

TIMEOUT = 15.0  # seconds for the whole request, retries included
MAX_TOKENS = 30
EXCERPT = 1000  # characters of the question and of the answer that are sent
PROMPT = (
    "Write a title of at most six words for the conversation below, in its language. "
    "Answer with the title only: no quotes, no full stop at the end.\n\n"
    "User: {question}\n\nAssistant: {answer}"
)
_WRAPPING = "\"'`*_#“”‘’«»「」 "
_LABEL = re.compile(r"^(title|titre|titel|título)\s*:\s*", re.I)


def wanted(turn: replies.Turn, status: str, answer: str) -> bool:
    """A chat's first exchange just finished with text, from a real model, titles on."""
    if not settings.CHAT_MODEL_TITLES or status != Message.Status.FINISHED or not answer.strip():
        return False
    if turn.target.provider.demo:
        return False
    asked = [m for m in turn.prompt if m["role"] != "system"]
    return len(asked) == 1 and asked[0]["role"] == "user"


def clean(text: str) -> str:
    """The model's answer as a title: its first line, without a "Title:" label, quotes,
    Markdown marks or a full stop; storable; at most LONGEST characters. "" if nothing is left."""
    line = next((line for line in storable(text).splitlines() if line.strip()), "")
    line = _LABEL.sub("", " ".join(line.split()).strip(_WRAPPING))
    line = line.strip(_WRAPPING).rstrip(".。").strip(_WRAPPING)
    if len(line) > LONGEST:
        line = line[: LONGEST - 1].rstrip() + "…"
    return line


def first_words_titles(question: str) -> set[str]:
    """The titles a chat has before it is titled: none, the page's (the first line, as
    TitleForm cleans it) and the server's own (replies._title)."""
    first_line = next((line for line in question.split("\n") if line.strip()), "")
    return {"", title_text(first_line), replies._title(question)}


def start(worker, turn: replies.Turn, status: str, answer: str) -> None:
    """After a reply has ended: title its chat if this was the first exchange. The task is
    the worker's (kept until it ends, cancelled with the worker's replies)."""
    if not wanted(turn, status, answer):
        return
    # What was typed, not the files sent with it (chat.attachments), which can be long; their
    # names for a message of files alone (replies.titled_by).
    question = turn.user_text
    if question is None:
        question = next(m["content"] for m in turn.prompt if m["role"] == "user")
    task = asyncio.create_task(
        title_chat(worker, turn, question, answer), name=f"title-{turn.conversation_id}"
    )
    worker.background.add(task)
    task.add_done_callback(worker.background.discard)


async def title_chat(worker, turn: replies.Turn, question: str, answer: str) -> str | None:
    """Ask for the title, save it unless the user renamed the chat, tell the open tabs."""
    conversation_id = turn.conversation_id
    if not await _still_first_words(conversation_id, question).aexists():
        return None  # renamed already, or titled before (a regenerated first reply): no request
    try:
        async with asyncio.timeout(TIMEOUT):
            target = turn.target
            if settings.CHAT_TITLE_MODEL:
                target = await database_sync_to_async(providers.resolve)(
                    Conversation(model=settings.CHAT_TITLE_MODEL)
                )
            if target.provider.demo:
                return None
            prompt = PROMPT.format(question=question[:EXCERPT], answer=answer[:EXCERPT])
            text, _ = await complete(
                target.provider,
                target.model,
                [{"role": "user", "content": prompt}],
                max_tokens=MAX_TOKENS,
                api_style=target.api_style,
            )
    except TimeoutError:
        log.warning(
            "No title for conversation %s: the model did not answer within %gs", conversation_id, TIMEOUT
        )
        return None
    except UpstreamError as exc:
        log.warning("No title for conversation %s: %s (%s)", conversation_id, exc.code, exc.detail)
        return None
    title = clean(text)
    if not title:
        log.warning("No title for conversation %s: the model's answer was empty", conversation_id)
        return None
    saved = await database_sync_to_async(_save)(conversation_id, question, title)
    if not saved:
        return None  # renamed (or deleted) meanwhile: the user's choice stands
    await _tell_tabs(worker, conversation_id, title)
    return title


def _still_first_words(conversation_id: int, question: str):
    return Conversation.objects.filter(pk=conversation_id, title__in=first_words_titles(question))


def _save(conversation_id: int, question: str, title: str) -> bool:
    # .update(): the title only; a new title is not activity (updated_at orders the sidebar).
    return bool(_still_first_words(conversation_id, question).update(title=title))


async def _tell_tabs(worker, conversation_id: int, title: str) -> None:
    text = frames.title_frame(conversation_id, title)
    if cluster.single_process():
        await worker.watchers.send(conversation_id, text)
    else:  # every tab on the conversation, in any process, is in this group
        await get_channel_layer().group_send(
            cluster.conversation_group(conversation_id), {"type": "chat.title", "frame": text}
        )
