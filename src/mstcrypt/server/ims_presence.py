"""Presence for the IMS: which members are online, per device, across instances.

* :class:`LocalPresence` — one instance: the devices connected to this process.
* :class:`RedisPresence` — several instances on one Redis. Each instance keeps the set
  of its connected ``member/device`` pairs in a Redis set with a TTL
  (``mstcrypt:im:presence:i:<instance>``), refreshed by a heartbeat every ``ttl/3``
  seconds, and announces connects and disconnects on a pub/sub channel. Every instance
  rebuilds the global view from the instance sets when told of a change and on each
  heartbeat, so the devices of an instance that crashed (no disconnect ever announced)
  go offline when its set expires, within ``ttl`` plus one heartbeat.

A change of a device's state is reported through ``on_change(member, device, online)``
(the server turns it into ``presence`` frames for the groups' connected members).
Presence is metadata the server has anyway (who is connected); nothing here touches
messages or keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["LocalPresence", "Presence", "RedisPresence"]

log = logging.getLogger("mstcrypt.ims.presence")

PREFIX = "mstcrypt:im:presence"
CHANNEL = PREFIX + ":events"
INSTANCES = PREFIX + ":instances"
SEP = "\x1f"

OnChange = Callable[[str, str, bool], Awaitable[None]]


async def _nothing(_m: str, _d: str, _o: bool) -> None:
    return None


class Presence:
    """This instance's connected devices (counted: one device may reconnect before its
    old connection is gone) and the global view."""

    def __init__(self) -> None:
        self.local: dict[tuple[str, str], int] = {}
        self.known: set[tuple[str, str]] = set()
        self.on_change: OnChange = _nothing

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def connected(self, member: str, device: str) -> None:
        k = (member, device)
        self.local[k] = self.local.get(k, 0) + 1
        if self.local[k] == 1:
            await self._local_changed(k, True)

    async def disconnected(self, member: str, device: str) -> None:
        k = (member, device)
        n = self.local.get(k, 0) - 1
        if n > 0:
            self.local[k] = n
            return
        self.local.pop(k, None)
        await self._local_changed(k, False)

    async def _local_changed(self, k: tuple[str, str], online: bool) -> None:
        await self._set_known(set(self.local))

    async def _set_known(self, now: set[tuple[str, str]]) -> None:
        before, self.known = self.known, now
        for m, d in sorted(now - before):
            await self._notify(m, d, True)
        for m, d in sorted(before - now):
            await self._notify(m, d, False)

    async def _notify(self, member: str, device: str, online: bool) -> None:
        try:
            await self.on_change(member, device, online)
        except Exception as exc:  # a presence frame is best effort
            log.warning("presence notification failed: %s", type(exc).__name__)

    async def refresh(self) -> None:
        """Bring the global view up to date (nothing to do for one instance)."""

    async def online(self, members: list[str]) -> dict[str, list[str]]:
        """{member: [device, ...]} for those of ``members`` who are online."""
        await self.refresh()
        out: dict[str, list[str]] = {m: [] for m in members}
        for m, d in self.known | set(self.local):
            if m in out:
                out[m].append(d)
        return {m: sorted(ds) for m, ds in out.items()}


class LocalPresence(Presence):
    """One instance: the devices connected here."""


class RedisPresence(Presence):
    """Presence shared over Redis (module docstring)."""

    def __init__(self, url: str, instance: str, ttl: float = 30.0) -> None:
        super().__init__()
        self.url, self.instance, self.ttl = url, instance, max(float(ttl), 1.0)
        self.key = f"{PREFIX}:i:{instance}"
        self._redis: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._dirty = asyncio.Event()
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.Redis.from_url(
            self.url, socket_timeout=5, socket_connect_timeout=2, decode_responses=True
        )
        self._tasks = [
            asyncio.create_task(self._heartbeat()),
            asyncio.create_task(self._subscribe()),
            asyncio.create_task(self._refresher()),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._redis is not None:
            with contextlib.suppress(Exception):  # a clean stop: our devices go at once
                await self._redis.delete(self.key)
                await self._redis.srem(INSTANCES, self.instance)
                for m, d in list(self.local):
                    await self._publish(m, d, False)
            with contextlib.suppress(Exception):
                await self._redis.aclose()

    def _entry(self, member: str, device: str) -> str:
        return f"{member}{SEP}{device}"

    async def _publish(self, member: str, device: str, online: bool) -> None:
        await self._redis.publish(
            CHANNEL, json.dumps({"m": member, "d": device, "on": online, "i": self.instance})
        )

    async def _local_changed(self, k: tuple[str, str], online: bool) -> None:
        member, device = k
        try:
            pipe = self._redis.pipeline()
            if online:
                pipe.sadd(self.key, self._entry(member, device))
                pipe.expire(self.key, int(self.ttl + 0.999))
                pipe.sadd(INSTANCES, self.instance)
            else:
                pipe.srem(self.key, self._entry(member, device))
            await pipe.execute()
            await self._publish(member, device, online)
        except Exception as exc:  # Redis down: the heartbeat writes the set again
            log.warning("presence update failed (%s)", type(exc).__name__)
        self._dirty.set()

    async def refresh(self) -> None:
        """Read every instance's set (an expired set is a crashed instance's: dropped)."""
        async with self._lock:
            try:
                names = sorted(await self._redis.smembers(INSTANCES))
                pipe = self._redis.pipeline()
                for n in names:
                    pipe.smembers(f"{PREFIX}:i:{n}")
                sets = await pipe.execute()
            except Exception as exc:
                log.warning("presence refresh failed (%s); local view only", type(exc).__name__)
                await self._set_known(set(self.local))
                return
            now: set[tuple[str, str]] = set(self.local)
            gone = []
            for n, entries in zip(names, sets, strict=True):
                if not entries and n != self.instance:
                    gone.append(n)
                for e in entries:
                    m, _, d = e.partition(SEP)
                    if m and d:
                        now.add((m, d))
            if gone:
                with contextlib.suppress(Exception):
                    await self._redis.srem(INSTANCES, *gone)
            await self._set_known(now)

    async def _heartbeat(self) -> None:
        while True:
            try:
                pipe = self._redis.pipeline()
                entries = [self._entry(m, d) for m, d in self.local]
                if entries:
                    pipe.sadd(self.key, *entries)
                    pipe.expire(self.key, int(self.ttl + 0.999))
                    pipe.sadd(INSTANCES, self.instance)
                else:
                    pipe.delete(self.key)
                await pipe.execute()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("presence heartbeat failed (%s)", type(exc).__name__)
            self._dirty.set()
            await asyncio.sleep(self.ttl / 3)

    async def _refresher(self) -> None:
        """Coalesce change notices: at most one refresh per 50 ms."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self.refresh()
            await asyncio.sleep(0.05)

    async def _subscribe(self) -> None:
        import redis.asyncio as aioredis

        delay = 0.05
        while True:
            pubsub = None
            try:
                client = aioredis.Redis.from_url(
                    self.url, socket_connect_timeout=2, decode_responses=True
                )
                pubsub = client.pubsub()
                await pubsub.subscribe(CHANNEL)
                delay = 0.05
                self._dirty.set()
                async for item in pubsub.listen():
                    if item.get("type") == "message":
                        self._dirty.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("presence subscriber lost Redis (%s); retrying", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
