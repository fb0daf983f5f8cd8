"""The Redis channel layer as this app runs it: a bounded pool that waits, and one round trip per join.

channels_redis gives each event loop a redis-py ``ConnectionPool``, which opens a new
connection for every command that finds none free and fails with ``MaxConnectionsError``
past its limit (100 by default). When a worker restarts, every tab it served reconnects
at once, and each connect joins two groups: 200 tabs made over 100 commands at once, so
about half were closed with 1011, and the rest waited on hundreds of new connections being
opened (issue #15). Here the pool is a ``BlockingConnectionPool``: at most
``max_connections`` connections, and a command that finds none free waits its turn (up to
``pool_timeout`` seconds, then ``PoolExhausted``, which names the setting to raise). A
Redis command takes a fraction of a millisecond, so a few dozen connections carry a storm
of hundreds of tabs; one of them is held by the worker's blocking receive (BZPOPMIN),
and one by its fan-out inbox's subscription (chat.fanout).

Only the ``address`` form of a host is used by chatsite/settings.py; the others (sentinel,
host/port dicts) fall back to channels_redis's own pools.
"""

import asyncio
import time

from channels_redis.core import RedisChannelLayer
from redis import asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

MAX_CONNECTIONS_SETTING = "CHAT_REDIS_MAX_CONNECTIONS"


class PoolExhausted(RedisConnectionError):
    """Every connection of this worker's pool stayed busy for the whole pool timeout."""


class WaitingPool(aioredis.BlockingConnectionPool):
    """redis-py's blocking pool, with an error that says what to change when it runs dry."""

    async def get_connection(self, *args, **kwargs):
        try:
            return await super().get_connection(*args, **kwargs)
        except RedisConnectionError as exc:
            if not isinstance(exc.__cause__, asyncio.TimeoutError):
                raise  # Redis itself is unreachable: redis-py's own message says so
            raise PoolExhausted(
                f"all {self.max_connections} Redis connections of this worker stayed busy for "
                f"{self.timeout} s; raise {MAX_CONNECTIONS_SETTING} (docs/deploy.md)"
            ) from exc


class ChannelLayer(RedisChannelLayer):
    """channels_redis's layer with a waiting pool of ``max_connections`` per event loop."""

    def __init__(self, *args, max_connections: int = 50, pool_timeout: float = 10.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_connections = max_connections
        self.pool_timeout = pool_timeout

    def create_pool(self, index: int):
        host = dict(self.hosts[index])
        if "address" not in host:
            return super().create_pool(index)
        address = host.pop("address")
        return WaitingPool.from_url(
            address, max_connections=self.max_connections, timeout=self.pool_timeout, **host
        )

    async def group_add(self, group: str, channel: str) -> None:
        """channels_redis's ZADD then EXPIRE, sent together: one round trip per join, not two."""
        assert self.require_valid_group_name(group), "Group name not valid"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        connection = self.connection(self.consistent_hash(group))
        group_key = self._group_key(group)
        async with connection.pipeline(transaction=False) as pipe:
            pipe.zadd(group_key, {channel: time.time()})  # the score channels_redis expires by
            pipe.expire(group_key, self.group_expiry)
            await pipe.execute()
