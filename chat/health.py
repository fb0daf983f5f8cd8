"""`/healthz`: is the database reachable, and does the channel layer carry a message?"""

import asyncio
import time

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.http import JsonResponse


@database_sync_to_async
def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def _channel_layer() -> None:
    layer = get_channel_layer()
    channel = await layer.new_channel("healthz.")
    await layer.send(channel, {"type": "healthz"})
    async with asyncio.timeout(2):
        await layer.receive(channel)


async def healthz(request):
    checks, healthy = {}, True
    for name, check in (("database", _database), ("channel_layer", _channel_layer)):
        started = time.monotonic()
        try:
            await check()
            checks[name] = {"ok": True, "ms": round((time.monotonic() - started) * 1000, 1)}
        except Exception as exc:  # report which part is down, never a traceback
            healthy = False
            checks[name] = {"ok": False, "error": type(exc).__name__}
    return JsonResponse({"ok": healthy, "checks": checks}, status=200 if healthy else 503)
