"""A socket opening on a conversation and closing: what it is shown on the way in.

On open a socket joins the conversation's watchers (chat.relay) and is caught up: the
reply streaming here (resume + render), or one streaming in another process (attach,
chat.remote). The first socket a process sees also sweeps replies left "streaming" by a
dead process, marking them interrupted and showing that to the tabs already open.
"""

import logging

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from chat import cluster, early, fanout, remote, replies, upstream, worker
from chat.frames import final_frames
from chat.models import Message

log = logging.getLogger(__name__)


async def watch(socket, conversation_id: int) -> None:
    """A socket opened on a conversation: follow it, and catch up on a streaming reply."""
    here = worker.current()
    if not cluster.single_process():
        fanout.register(socket)
        await get_channel_layer().group_add(cluster.conversation_group(conversation_id), socket.channel_name)
    swept = []
    if not here.swept:  # once per process: replies left streaming by a dead process
        here.swept = True
        upstream.warm_up()
        swept = await database_sync_to_async(replies.recover_stale)(None, here.live_ids())
    generation = here.running.get(conversation_id)
    here.watchers.add(conversation_id, socket)
    if generation is not None:
        for text in generation.resume_frames():
            await socket.send_frame(text)
        rendered = generation.render_frame()
        if rendered is not None:
            await socket.send_frame(rendered)
        await _show_ended(here, swept)
        return
    # In the same trip: what its next send will ask the provider (chat.early).
    recovered, streaming, found = await database_sync_to_async(replies.branch)(
        socket.conversation, here.live_ids(), conversation_id not in here.known
    )
    swept += recovered
    if conversation_id not in here.running and here.watchers.sockets.get(conversation_id):
        early.remember(here, found)
    await _show_ended(here, swept)
    if streaming is not None and not cluster.single_process():
        await remote.attach(socket, conversation_id, streaming)


async def unwatch(socket, conversation_id: int) -> None:
    here = worker.current()
    here.watchers.discard(conversation_id, socket)
    if conversation_id not in here.watchers.sockets:  # its text is held only while a tab shows it
        early.forget(here, conversation_id)
    if not cluster.single_process():
        fanout.unregister(socket)
        layer = get_channel_layer()
        await layer.group_discard(cluster.conversation_group(conversation_id), socket.channel_name)
        await layer.group_send(
            cluster.reply_group(conversation_id), {"type": "chat.detach", "channel": socket.channel_name}
        )


async def settle_remote(conversation_id: int, reply_id: int) -> list[str] | None:
    """For a socket following a reply in another process that has gone quiet: if the reply
    ended (or its process died), the frames that show its final state; None while it streams."""
    await database_sync_to_async(replies.recover_stale)(conversation_id, worker.current().live_ids())
    reply = await Message.objects.filter(pk=reply_id).afirst()
    if reply is None or reply.status == Message.Status.STREAMING:
        return None
    return final_frames(reply)


async def _show_ended(here: worker.Worker, reply_ids: list[int]) -> None:
    """Replies just found dead: pages and sockets opened before may still show them
    streaming (a tab reconnecting after a restart reloads its list while this runs)."""
    if not reply_ids:
        return
    async for reply in Message.objects.filter(pk__in=reply_ids):
        await here.watchers.show_ended(reply.conversation_id, reply.id, final_frames(reply))
