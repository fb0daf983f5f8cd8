"""What a socket's commands do: send, edit, regenerate, switch, stop (docs/protocol.md).

Each begins by counting the new text's tokens, then the process's turn writer
(chat.writers.TurnWriter) saves the turn and starts its reply (chat.worker.Worker.start).
A refusal becomes an `error` frame on the socket that asked; the socket stays open.
"""

import functools
import logging

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError

from chat import attachments, cluster, early, remote, replies, tokens, versions, worker
from chat.budgets import BudgetExceeded
from chat.frames import branch_frame
from chat.models import Conversation

log = logging.getLogger(__name__)

BUSY = "A reply is still being written. Stop it or wait for it to finish."
SWITCH_BUSY = "A reply is still being written. Stop it or wait for it to finish, then switch versions."
UNKNOWN_ATTACHMENT = (
    "A file in that message is not one of yours waiting to be sent (sent already, or removed). "
    "Nothing was sent; attach it again."
)
DELETED = "This conversation was deleted (in another tab?). Nothing was saved."
DATABASE_ERROR = (
    "The server could not save your message just now (its database is busy). Nothing was saved; try again."
)


async def send(
    socket, conversation, content: str, request_id: str | None = None, attachment_ids: tuple[int, ...] = ()
) -> None:
    files = (
        functools.partial(attachments.pending, conversation.user_id, attachment_ids)
        if attachment_ids
        else None
    )
    # Sends with files go the old way: chat.early builds prompts of text alone.
    await _begin(
        socket, conversation, replies.begin_turn, (content,), request_id, files, ahead=not attachment_ids
    )


async def regenerate(socket, conversation, request_id: str | None = None) -> None:
    await _begin(socket, conversation, replies.begin_regenerate, (), request_id)


async def edit(
    socket,
    conversation,
    content: str,
    request_id: str | None = None,
    message_id: int | None = None,
    attachment_ids: tuple[int, ...] | None = None,
) -> None:
    """A new version of a user message; its files are `attachment_ids` (the edited message's
    kept, uploads added), or with None all of the edited message's (attachments.for_edit)."""
    begin = functools.partial(replies.begin_edit, message_id=message_id)
    files = functools.partial(
        attachments.for_edit, conversation.user_id, conversation.id, message_id, attachment_ids
    )
    await _begin(socket, conversation, begin, (content,), request_id, files)


async def switch(socket, conversation, message_id: int, request_id: str | None = None) -> None:
    """Show another version of a message (chat.versions); every tab on the conversation is
    told, so they all show the same branch."""
    here = worker.current()
    if here.busy(conversation.id):
        await socket.send_error("busy", SWITCH_BUSY)
        return
    try:
        await database_sync_to_async(versions.switch)(conversation.id, message_id, here.live_ids())
    except replies.Busy:
        await socket.send_error("busy", SWITCH_BUSY)
        return
    except versions.NotAVersion:
        await socket.send_error("unknown_message", "That version is not in this conversation.")
        return
    except DatabaseError:
        log.exception("Could not switch versions in conversation %s", conversation.id)
        await socket.send_error("database_error", DATABASE_ERROR)
        return
    early.forget(here, conversation.id)
    await _tell_every_tab(conversation.id, branch_frame(message_id, request_id))


async def _tell_every_tab(conversation_id: int, text: str) -> None:
    """A frame to every socket on the conversation, in this process or (Redis) any other:
    the conversation's group reaches this process's sockets too, so it is one or the other."""
    if cluster.single_process():
        await worker.current().watchers.send(conversation_id, text)
    else:
        await get_channel_layer().group_send(
            cluster.conversation_group(conversation_id), {"type": "chat.branch", "frame": text}
        )


async def stop(socket, conversation_id: int) -> None:
    generation = worker.current().running.get(conversation_id)
    if generation is not None:
        generation.stop()
        return
    if not cluster.single_process() and await remote.stop(conversation_id):
        return
    await socket.send_error("not_streaming", "Nothing is being written right now.")


async def _begin(
    socket, conversation, begin, args: tuple, request_id: str | None, files=None, ahead: bool = False
) -> None:
    """Count the send's tokens, save the turn (replies.begin_*), then start streaming;
    refusals become error frames. With `ahead` (a plain send), the provider request goes
    out before the save where chat.early can tell what it will be.

    Counting happens here, not in begin_* on the database thread every socket shares
    (issue #12: long system prompts counted there held up other users' sends for
    seconds). The model and system prompt are the socket's last knowledge of them; if
    they changed, begin_* says so (Uncounted) before writing, and we count again."""
    here = worker.current()
    if here.busy(conversation.id):
        await socket.send_error("busy", BUSY)
        return
    content = args[0] if args else None
    if files is not None:
        # The message's files (`files()`: chat.attachments.pending or for_edit), read here so
        # their text is counted with the message's, off the database thread.
        try:
            attached = await database_sync_to_async(files)()
        except attachments.UnknownAttachment:
            await socket.send_error("unknown_attachment", UNKNOWN_ATTACHMENT)
            return
        begin = functools.partial(begin, attached=attached)
        content = attachments.message_text(content, attached)
    model, encoding, system = socket.counting or (
        conversation.model or settings.CHAT_MODEL,
        "",
        replies.system_prompt(conversation),
    )
    ahead_of_save = None  # the writer hands it to the reply, or abandons it if the save fails
    try:
        for attempt in (1, 2, 3):
            # A third attempt (the settings changed twice while we counted) counts where it runs.
            counted = await _count_ahead(model, encoding, content, system) if attempt < 3 else None
            if ahead and attempt == 1 and not here.busy(conversation.id):
                ahead_of_save = early.begin(here, conversation.id, content, counted)
            try:
                await here.turns.save(
                    functools.partial(begin, counted=counted), conversation, args, request_id, ahead_of_save
                )
                return
            except replies.Uncounted as exc:
                model, encoding, system = exc.model, exc.encoding, exc.system
                socket.counting = (model, encoding, system)
                ahead_of_save = None  # built on what changed: the writer abandoned it
    except replies.Busy:
        await socket.send_error("busy", BUSY)
    except replies.TooManyReplies:
        await socket.send_error(
            "too_many_replies",
            f"You have {settings.CHAT_MAX_REPLIES_PER_USER} replies being written already. "
            "Wait for one to finish or stop one, then try again.",
        )
    except replies.NothingToRegenerate:
        await socket.send_error("nothing_to_regenerate", "There is no message to answer again or edit yet.")
    except replies.NotEditable:
        await socket.send_error(
            "unknown_message",
            "That message is not one of yours in the conversation as shown; nothing was sent.",
        )
    except BudgetExceeded as exc:
        await socket.send_error(exc.code, exc.detail)
    except attachments.UnknownAttachment:  # sent from another tab since we read them
        await socket.send_error("unknown_attachment", UNKNOWN_ATTACHMENT)
    except attachments.ImagesNotSupported as exc:
        await socket.send_error(
            "images_not_supported",
            f"{exc.model} does not read images. Remove the image or pick a model that reads them; "
            "nothing was sent.",
        )
    except Conversation.DoesNotExist:  # replies._fresh: deleted in another tab since this socket opened
        await socket.send_error("conversation_deleted", DELETED)
    except DatabaseError:
        # The turn's savepoint (or the whole batch's transaction) was rolled back: nothing
        # of it is saved. Locked for longer than the busy timeout, or the database away.
        log.exception("Could not save a turn in conversation %s", conversation.id)
        await socket.send_error("database_error", DATABASE_ERROR)
    except Exception:  # a frame answered, never a socket closed with 1011
        log.exception("Could not begin a reply in conversation %s", conversation.id)
        await socket.send_error("internal_error", "Something went wrong on the server. Try again.")


async def _count_ahead(model: str, encoding: str, content: str | None, system: str) -> replies.Counted:
    """replies.count_ahead, off the database thread."""
    size = len(content or "")
    if system and tokens.system_prompts.get(system, model, encoding) is None:
        size += len(system)
    return await tokens.count_soon(size, replies.count_ahead, model, encoding, content, system)
