"""SQLite's WAL checkpoints move off the commit path in long-running processes: with the
background checkpointer, new connections have automatic checkpoints off, the thread
copies the WAL into the database, and stopping it restores SQLite's default."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import text

from mstcrypt.kmc.db import Database


def _autocheckpoint(db: Database) -> int:
    with db.engine.connect() as c:
        return int(c.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() or 0)


def test_background_checkpoints(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        with db.tx() as s:
            s.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)"))
        assert _autocheckpoint(db) == 1000  # SQLite's default without the thread
        db.start_checkpointer(interval=0.05)
        db.start_checkpointer(interval=0.05)  # idempotent
        assert _autocheckpoint(db) == 0
        for _ in range(200):  # 4 MB: only a checkpoint moves it into the main file
            with db.tx() as s:
                s.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": bytes(20_000)})
        main = tmp_path / "c.db"
        deadline = time.monotonic() + 10
        while main.stat().st_size < 4_000_000 and time.monotonic() < deadline:
            time.sleep(0.05)  # no checkpoint here: the thread's alone
        assert main.stat().st_size >= 4_000_000
        db.stop_checkpointer()
        assert _autocheckpoint(db) == 1000
        with db.read() as s:
            assert s.execute(text("SELECT count(*) FROM t")).scalar() == 200
    finally:
        db.dispose()


def test_no_thread_on_postgresql_urls() -> None:
    db = Database("postgresql+psycopg://u:p@127.0.0.1:1/none")
    db.start_checkpointer()
    assert db._checkpointer is None  # nothing to do there: no connection was made
    db.dispose()
