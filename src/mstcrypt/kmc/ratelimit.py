"""Fixed-window rate limits kept in the database, shared by every server instance."""

from __future__ import annotations

from typing import Any

from mstcrypt.kmc.context import KmcContext
from mstcrypt.kmc.models import RateLimit

__all__ = ["RateLimiter"]


class RateLimiter:
    def __init__(self, ctx: KmcContext) -> None:
        self.ctx = ctx

    def allow(self, bucket: str, *, limit: int, window_seconds: int = 60) -> bool:
        with self.ctx.db.tx() as s:  # counts are writes
            return self.allow_in(s, bucket, limit=limit, window_seconds=window_seconds)

    def allow_in(self, s: Any, bucket: str, *, limit: int, window_seconds: int = 60) -> bool:
        """:meth:`allow` inside the caller's transaction."""
        window = int(self.ctx.clock().timestamp()) // window_seconds
        table = RateLimit.__table__
        count = self.ctx.db.upsert_increment(
            s, table, {"key": bucket[:128], "window": window}, "count"
        )
        if count == 1:
            s.execute(table.delete().where(table.c.window < window - 1))
        return count <= limit
