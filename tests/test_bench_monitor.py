"""The write-lock monitor of bench/bench_platform.py measures what the benchmark's
figures say it does: every transaction that takes the lock (SQLite) or locks a row that
every writer serialises on (PostgreSQL) is one hold, the login fast path's statements
included, and a hold lasts to the end of COMMIT."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from mstcrypt.apps.login import fastpath
from mstcrypt.apps.login import service as login_service
from mstcrypt.kmc.db import Database, migrate

_PATH = Path(__file__).resolve().parents[1] / "bench" / "bench_platform.py"


@pytest.fixture(scope="module")
def bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_platform_under_test", _PATH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


class _Recorder:
    """A stand-in transaction that keeps the SQL the fast path would send."""

    sqlite = False

    def __init__(self) -> None:
        self.sql: list[str] = []

    def q(self, sql: str, params: Any = None) -> Any:
        self.sql.append(sql)
        return self

    def fetchone(self) -> tuple[int, str]:  # the log's head
        return (1, "00" * 32)


def test_the_login_statements_on_postgresql_count_as_holds(bench: Any) -> None:
    rec = _Recorder()
    fastpath.append_audit(
        rec,  # type: ignore[arg-type]
        actor="user:a",
        action="login.success",
        target="cert:1",
        details={},
    )
    m = bench.LockMonitor()
    # the first statement locks the log's head, the second appends and advances it
    assert len(rec.sql) == 2 and all(m.serialises(sql) for sql in rec.sql), rec.sql
    # the login's earlier statements lock rows no other kind of writer waits for
    assert not m.serialises(login_service._CONSUME_SQL)
    assert not m.serialises(login_service._RECHECK_PG_SQL)
    # reads of the same rows are not holds
    assert not m.serialises("SELECT seq, hash FROM audit_head WHERE id = 1")
    assert not m.serialises("SELECT updated_at FROM ca")


def _monitored(bench: Any, url: str) -> tuple[Any, Database]:
    db = Database(url)
    m = bench.LockMonitor()
    m.attach(db)  # before the first connection, as the benchmark does
    migrate(db)
    m.reset()
    return m, db


def test_a_transaction_is_one_hold_from_its_lock_to_its_end(bench: Any, database_url: str) -> None:
    m, db = _monitored(bench, database_url)
    saved = fastpath.RawTx.q, fastpath.RawTx.rows, fastpath.RawTx.__exit__
    try:
        with m.label("orm"), db.tx() as s:
            s.execute(text("UPDATE audit_head SET seq = seq WHERE id = 1"))
            time.sleep(0.06)
        assert len(m.holds) == 1 and m.holds[0] >= 0.06 and m.max_label == "orm", m.holds
        m.reset()
        with m.label("fast path"), fastpath.RawTx(db) as tx:
            tx.q("SELECT seq FROM audit_head WHERE id = 1{lock}")
            time.sleep(0.08)
        assert len(m.holds) == 1 and m.holds[0] >= 0.08 and m.max_label == "fast path", m.holds
        m.reset()
        with m.label("pipelined"), fastpath.RawTx(db) as tx:  # statements sent together
            tx.rows(("SELECT 1", {}), ("SELECT seq FROM audit_head WHERE id = 1{lock}", {}))
            time.sleep(0.05)
        assert len(m.holds) == 1 and m.holds[0] >= 0.05 and m.max_label == "pipelined", m.holds
        m.reset()
        with db.snapshot() as s:  # a read takes no lock
            s.execute(text("SELECT seq FROM audit_head WHERE id = 1"))
        assert m.holds == []
    finally:
        fastpath.RawTx.q, fastpath.RawTx.rows, fastpath.RawTx.__exit__ = saved
        db.dispose()


def test_a_hold_lasts_until_commit_has_returned(bench: Any, database_url: str) -> None:
    """A COMMIT that takes 150 ms (a deferred trigger that sleeps: what a slow WAL
    flush looks like from here) is inside the hold."""
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite has no deferred triggers to slow a COMMIT down")
    m, db = _monitored(bench, database_url)
    try:
        with db.tx() as s:
            s.execute(
                text(
                    "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN PERFORM pg_sleep(0.15); RETURN NULL; END $$"
                )
            )
            s.execute(
                text(
                    "CREATE CONSTRAINT TRIGGER slow_commit AFTER UPDATE ON audit_head "
                    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()"
                )
            )
        m.reset()
        with db.tx() as s:
            s.execute(text("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, 'x')"))
        with db.tx() as s:
            s.execute(text("UPDATE audit_head SET seq = seq WHERE id = 1"))
        assert len(m.holds) == 2 and m.holds[1] >= 0.15, m.holds
    finally:
        db.dispose()
