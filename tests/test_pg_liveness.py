"""PostgreSQL pooled connections: checked at checkout without a round trip while they
are fresh, replaced when the server has dropped them (a restart, a terminated backend),
pinged when they have been idle long."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from mstcrypt.apps.login.fastpath import RawTx, read_row
from mstcrypt.kmc import db as dbmod
from mstcrypt.kmc.db import Database


@pytest.fixture
def pg(database_url: str) -> Iterator[Database]:
    if database_url.startswith("sqlite"):
        pytest.skip("a PostgreSQL connection pool")
    d = Database(database_url)
    yield d
    d.dispose()


@pytest.fixture
def admin(pg: Database) -> Iterator[Engine]:
    """An observer outside the pool under test."""
    e = create_engine(pg.engine.url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    yield e
    e.dispose()


def _backend_pids(d: Database, n: int) -> list[int]:
    """Hold n pooled connections at once, so the pool has n distinct backends."""
    raws = [d.engine.raw_connection() for _ in range(n)]
    try:
        pids = []
        for raw in raws:
            cur = raw.cursor()
            cur.execute("SELECT pg_backend_pid()")
            pids.append(int(cur.fetchone()[0]))
            cur.close()
            raw.rollback()
        return pids
    finally:
        for raw in raws:
            raw.close()


def _last_query(admin: Engine, pid: int) -> str:
    with admin.connect() as conn:
        return str(
            conn.execute(
                text("SELECT query FROM pg_stat_activity WHERE pid = :p"), {"p": pid}
            ).scalar()
        )


def test_dropped_connections_are_replaced_at_checkout(pg: Database, admin: Engine) -> None:
    pids = _backend_pids(pg, 3)
    with admin.connect() as conn:
        for pid in pids:
            conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    deadline = time.monotonic() + 10
    with admin.connect() as conn:
        while conn.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:p)"), {"p": pids}
        ).scalar():
            assert time.monotonic() < deadline
            time.sleep(0.02)
    # every kind of use gets a live connection: raw reads, raw transactions, sessions
    for _ in range(3):
        assert read_row(pg, "SELECT :x", {"x": 7})[0] == 7
    for _ in range(3):
        with RawTx(pg) as tx:
            assert tx.q("SELECT 1").fetchone()[0] == 1
    for _ in range(3):
        with pg.tx() as s:
            assert s.execute(text("SELECT 2")).scalar() == 2
    assert not set(_backend_pids(pg, 3)) & set(pids)


def test_a_recently_used_connection_is_not_pinged(pg: Database, admin: Engine) -> None:
    (pid,) = _backend_pids(pg, 1)
    assert read_row(pg, "SELECT 'marker-1' AS m", {})[0] == "marker-1"
    assert _last_query(admin, pid) == "SELECT 'marker-1' AS m"
    # checked out and back without a statement: no SELECT 1 went to the server
    pg.engine.raw_connection().close()
    assert _last_query(admin, pid) == "SELECT 'marker-1' AS m"


def test_a_long_idle_connection_is_pinged(
    pg: Database, admin: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    (pid,) = _backend_pids(pg, 1)
    assert read_row(pg, "SELECT 'marker-2' AS m", {})[0] == "marker-2"
    monkeypatch.setattr(dbmod, "PING_IDLE_SECONDS", 0.0)
    pg.engine.raw_connection().close()
    # the ping's transaction ended with a rollback, the last statement that backend ran
    assert _last_query(admin, pid) == "ROLLBACK"
