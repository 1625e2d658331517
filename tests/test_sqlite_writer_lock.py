"""SQLite writers of several processes on one file queue on the lock file beside it
(``Database.writer``): a waiting process gets the turn within milliseconds of its
release instead of polling SQLite's busy handler (sleeps up to 100 ms); a forked child
opens its own lock (a shared open file would share the lock with its parent); the wait
ends with SQLite's own "database is locked" after the busy timeout."""

from __future__ import annotations

import contextlib
import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from mstcrypt.kmc import db as dbmod
from mstcrypt.kmc.db import Database

ctx = multiprocessing.get_context("fork")


def _hold(url: str, held: object, release: object) -> None:
    d = Database(url)
    with d.writer():
        held.set()  # type: ignore[attr-defined]
        release.wait(10)  # type: ignore[attr-defined]
    d.dispose()


def test_a_writer_in_another_process_waits_for_the_lock_and_wakes_at_once(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    held, release = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_hold, args=(url, held, release))
    other.start()
    try:
        assert held.wait(10)
        d = Database(url)
        got: list[float] = []

        def write() -> None:
            with d.writer():
                got.append(time.monotonic())

        t = threading.Thread(target=write)
        t.start()
        time.sleep(0.3)
        assert not got, "entered while another process held the writer lock"
        released = time.monotonic()
        release.set()
        t.join(10)
        assert got and got[0] - released < 0.25, got
        d.dispose()
    finally:
        release.set()
        other.join(10)
    assert (tmp_path / "w.db-writer.lock").exists()


def _try_write(url: str, out: object) -> None:
    _same_db_write(Database(url), out)


def test_a_forked_child_does_not_share_its_parents_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'f.db'}"
    monkeypatch.setattr(dbmod, "SQLITE_BUSY_SECONDS", 0.5)
    d = Database(url)
    out = ctx.Queue()
    with d.writer():  # the parent holds the lock (its file is open) while forking
        assert _in_child(_same_db_write, d, out) == "database is locked"
    # released: a new child gets in
    assert _in_child(_same_db_write, d, out) == "entered"
    d.dispose()


def _in_child(target: object, arg: object, out: object) -> str:
    """What ``target(arg, out)`` reported from a forked child."""
    child = ctx.Process(target=target, args=(arg, out))
    child.start()
    try:
        return str(out.get(timeout=10))  # type: ignore[attr-defined]
    finally:
        child.join(10)


def _same_db_write(d: Database, out: object) -> None:
    try:
        with d.writer():
            out.put("entered")  # type: ignore[attr-defined]
    except sqlite3.OperationalError as exc:
        out.put(str(exc))  # type: ignore[attr-defined]


def test_nested_transactions_in_one_thread_keep_the_lock(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'n.db'}"
    d = Database(url)
    out = ctx.Queue()
    with d.writer():
        with d.writer():
            pass
        # still held after the inner one ended
        assert _in_child(_try_write_quick, url, out) == "database is locked"
    d.dispose()


def _try_write_quick(url: str, out: object) -> None:
    dbmod.SQLITE_BUSY_SECONDS = 0.3  # type: ignore[misc]
    _try_write(url, out)


def test_a_lazy_transaction_skips_the_sync_and_restores_it(tmp_path: Path) -> None:
    """RawTx(durable=False) commits with synchronous=NORMAL (no fsync inside the write
    lock) and hands its connection back with synchronous=FULL, after a commit and after
    a rollback alike; a durable transaction runs with FULL."""
    from mstcrypt.apps.login.fastpath import RawTx

    db = Database(f"sqlite:///{tmp_path / 'lazy.db'}")
    try:
        with db.engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        for fail in (False, True):
            with contextlib.suppress(RuntimeError), RawTx(db, durable=False) as tx:
                assert tx.q("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
                tx.q("INSERT INTO t (x) VALUES (1)")
                conn = tx._raw.driver_connection
                if fail:
                    raise RuntimeError("rolled back")
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again
        with RawTx(db) as tx:
            assert tx.q("PRAGMA synchronous").fetchone()[0] == 2
            assert tx.q("SELECT count(*) FROM t").fetchone()[0] == 1
    finally:
        db.dispose()
