"""Engine and transactions: SQLite by default (a file under the data directory),
PostgreSQL when a URL is configured. Schema changes go through Alembic migrations."""

from __future__ import annotations

import contextlib
import os
import select
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: SQLite's busy handler alone
    fcntl = None  # type: ignore[assignment]

__all__ = ["Database", "migrate"]

#: how long a SQLite writer waits for the write lock (SQLite's busy timeout)
SQLITE_BUSY_SECONDS = 60


class Database:
    """An engine plus a session factory; ``with db.tx() as s:`` is one transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"future": True}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_SECONDS, "check_same_thread": False}
        else:
            kwargs.update(pool_size=10, max_overflow=20)
        self.engine: Engine = create_engine(url, **kwargs)
        if not self.is_sqlite:
            _checkout_liveness(self.engine)
        #: SQLite's automatic WAL checkpoint threshold (pages) for new connections; 0
        #: while :meth:`start_checkpointer` checkpoints in the background
        self.autocheckpoint = 1000
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_stop = threading.Event()
        if self.is_sqlite:
            _sqlite_setup(self.engine, lambda: self.autocheckpoint)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite: the writers of this process queue here before BEGIN IMMEDIATE, instead
        # of polling SQLite's lock with growing sleeps (its busy handler), which gave
        # tails of hundreds of ms behind holds of a few ms. Re-entrant: a transaction
        # opened inside another in the same thread behaves as before.
        self._writer: threading.RLock | None = threading.RLock() if self.is_sqlite else None
        self._writer_depth = 0
        # ... and the writers of every process on the same file queue on a lock file
        # beside it (several `serve` processes, a server and its CA workers): a released
        # lock is seen within a millisecond, where SQLite's busy handler sleeps up to
        # 100 ms between tries
        path = self.engine.url.database if self.is_sqlite else None
        self._lock_path = f"{path}-writer.lock" if path and path != ":memory:" else None
        self._lock_fd: int | None = None  # opened on first use, again in a forked child
        _DATABASES.add(self)
        self._read_engine = self.engine.execution_options(mstcrypt_read_only=True)

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> Database:
        data_dir.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{(data_dir / 'mstcrypt.db').resolve()}")

    @contextmanager
    def writer(self) -> Iterator[None]:
        """This process's turn to write (SQLite; nothing to wait for on PostgreSQL)."""
        if self._writer is None:
            yield
            return
        # as long as SQLite's own busy timeout, and the same error when it runs out
        deadline = time.monotonic() + SQLITE_BUSY_SECONDS
        if not self._writer.acquire(timeout=SQLITE_BUSY_SECONDS):
            raise sqlite3.OperationalError("database is locked")
        try:
            if self._writer_depth == 0:
                self._lock_file(deadline)
            self._writer_depth += 1
            try:
                yield
            finally:
                self._writer_depth -= 1
                if self._writer_depth == 0:
                    self._unlock_file()
        finally:
            self._writer.release()

    def _after_fork_in_child(self) -> None:
        """A forked child holds none of its parent's write turns: the thread lock may
        have been held by the forking thread (whose id the child's thread reuses) and
        the lock file is the parent's open file (which would share its lock)."""
        if self._writer is not None:
            self._writer = threading.RLock()
        self._writer_depth = 0
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # the parent's lock stays (its own descriptor)
            self._lock_fd = None

    def _file_lock_fd(self) -> int | None:
        if self._lock_path is None or fcntl is None:
            return None
        if self._lock_fd is None:
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self._lock_fd

    def _lock_file(self, deadline: float) -> None:
        try:
            fd = self._file_lock_fd()
        except OSError:  # a read-only directory: SQLite's busy handler alone
            return
        if fd is None:
            return
        delay = 0.0001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise sqlite3.OperationalError("database is locked") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.001)

    def _unlock_file(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    @contextmanager
    def tx(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any exception."""
        with self.writer(), self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def snapshot(self) -> Iterator[Session]:
        """A read-only transaction on one consistent snapshot that takes no write lock:
        writers carry on while it runs. SQLite: a plain (deferred) read transaction,
        which in WAL mode sees the database as of its first read, with ``query_only``
        set so that a write fails; PostgreSQL: ``REPEATABLE READ READ ONLY``. Long scans
        (audit verification, backups, CRL building) use this instead of :meth:`tx`,
        whose ``BEGIN IMMEDIATE`` would stall every writer. Only read in it."""
        with self.engine.connect() as conn:
            if not self.is_sqlite:
                conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
                with conn.begin(), Session(bind=conn, expire_on_commit=False) as session:
                    yield session
                return
            conn.execution_options(mstcrypt_snapshot=True)
            try:
                with conn.begin():
                    conn.exec_driver_sql("PRAGMA query_only=ON")  # a write here fails
                    with Session(bind=conn, expire_on_commit=False) as session:
                        yield session
            finally:
                try:
                    conn.exec_driver_sql("PRAGMA query_only=OFF")
                except SQLAlchemyError:
                    conn.invalidate()  # never hand a read-only connection back to the pool

    @contextmanager
    def read(self) -> Iterator[Session]:
        """One read-only transaction that takes no write lock (on SQLite a deferred
        BEGIN: a snapshot of the WAL; writing in it is a bug). For the work done before
        a short write transaction, e.g. signing a certificate."""
        with Session(self._read_engine, expire_on_commit=False) as session, session.begin():
            yield session

    def upsert_increment(self, conn: Any, table: Any, key: dict[str, Any], column: str) -> int:
        """INSERT the row with ``column`` = 1, or add 1 to it when it exists, atomically
        (ON CONFLICT DO UPDATE on both SQLite and PostgreSQL); returns the new value."""
        if self.is_sqlite:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        stmt = dialect_insert(table).values(**key, **{column: 1})
        stmt = stmt.on_conflict_do_update(
            index_elements=list(key), set_={column: table.c[column] + 1}
        ).returning(table.c[column])
        return int(conn.execute(stmt).scalar_one())

    def lock_name(self, conn: Any, name: str) -> None:
        """Serialise transactions about one name (an owner) until this one ends: a
        transaction-scoped advisory lock on PostgreSQL; SQLite already serialises every
        writer with BEGIN IMMEDIATE."""
        if self.is_sqlite:
            return
        import hashlib

        from sqlalchemy import text

        key = int.from_bytes(
            hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True
        )
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})

    def flush_deleted(self) -> None:
        """After destroying key material: on SQLite, checkpoint and truncate the WAL so
        the old page images (already zeroed in the main file by secure_delete) leave
        the disk. Best effort: a busy reader defers it to the next checkpoint."""
        if not self.is_sqlite:
            return
        import sqlite3

        raw = self.engine.raw_connection()
        try:
            raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[union-attr]
        except sqlite3.OperationalError:
            pass
        finally:
            raw.close()

    def start_checkpointer(self, interval: float = 0.5) -> None:
        """SQLite, in a long-running process: checkpoint the WAL from a background thread
        (PASSIVE: it never waits for readers or writers) instead of in whichever commit
        crosses SQLite's threshold. That checkpoint copies up to 1000 pages into the
        database file and syncs it *inside* the committing writer's transaction, which
        then holds the write lock for tens to hundreds of milliseconds. Idempotent; a
        no-op on PostgreSQL. :meth:`dispose` stops it."""
        if not self.is_sqlite or self._checkpointer is not None:
            return
        self.leave_checkpoints_to_another_process()  # here: to the thread started below
        self._checkpoint_stop.clear()

        def run() -> None:
            while not self._checkpoint_stop.wait(interval):
                self.checkpoint_wal()

        self._checkpointer = threading.Thread(target=run, name="sqlite-checkpoint", daemon=True)
        self._checkpointer.start()

    def leave_checkpoints_to_another_process(self) -> None:
        """SQLite: this process's commits never checkpoint the WAL, because another
        process on the same file runs :meth:`start_checkpointer` (a CA worker and its
        API process). Without this, the commit that crosses SQLite's threshold copies
        and syncs up to 1000 pages while it holds the database's write lock (holds of
        60–100 ms measured in a CA worker). A no-op on PostgreSQL."""
        if not self.is_sqlite or self._checkpointer is not None:
            return
        self.autocheckpoint = 0
        self.engine.dispose()  # pooled connections take the new setting when reopened

    def checkpoint_wal(self) -> None:
        """One PASSIVE WAL checkpoint (SQLite); a busy database defers it to the next."""
        if not self.is_sqlite:
            return
        raw = self.engine.raw_connection()
        try:
            raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")  # type: ignore[union-attr]
        except sqlite3.OperationalError:
            pass
        finally:
            raw.close()

    def stop_checkpointer(self) -> None:
        t, self._checkpointer = self._checkpointer, None
        if t is not None:
            self._checkpoint_stop.set()
            t.join(10)
            self.checkpoint_wal()
            self.autocheckpoint = 1000
            self.engine.dispose()

    def dispose(self) -> None:
        self.stop_checkpointer()
        self.engine.dispose()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


_DATABASES: weakref.WeakSet[Database] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for d in list(_DATABASES):
        d._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


#: a pooled PostgreSQL connection idle longer than this is pinged at checkout
PING_IDLE_SECONDS = 10.0


def _checkout_liveness(engine: Engine) -> None:
    """Pooled connections are checked at checkout without a round trip when they can be.

    ``pool_pre_ping`` costs a ``SELECT 1`` round trip on every checkout: a login is a few
    short transactions, and under load each round trip also waits for the interpreter
    lock. Instead, a connection returned to the pool recently is checked locally: the
    server's goodbye (a restart, ``pg_terminate_backend``, an idle timeout) makes its
    socket readable, and a connection whose socket has nothing to read and that was in
    use less than ``PING_IDLE_SECONDS`` ago is taken as it is. A readable socket, a
    connection marked broken, or a long idle one is pinged, and a failed ping makes the
    pool replace the connection (``DisconnectionError``), as ``pool_pre_ping`` does."""

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info["mstcrypt_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("mstcrypt_idle_since", None)
        if since is None:  # just connected
            return
        if time.monotonic() - since < PING_IDLE_SECONDS and not _needs_ping(dbapi_conn):
            return
        try:
            cur = dbapi_conn.cursor()
            try:
                cur.execute("SELECT 1")
            finally:
                cur.close()
            dbapi_conn.rollback()
        except Exception as exc:  # any failure: this connection is replaced
            raise DisconnectionError(type(exc).__name__) from None


def _needs_ping(dbapi_conn: Any) -> bool:
    if getattr(dbapi_conn, "closed", False) or getattr(dbapi_conn, "broken", False):
        return True
    try:
        p = select.poll()
        p.register(dbapi_conn.fileno(), select.POLLIN | select.POLLPRI)
        return bool(p.poll(0))  # hang-ups and errors are always reported
    except (OSError, ValueError, AttributeError):
        return True


def _sqlite_setup(engine: Engine, autocheckpoint: Callable[[], int]) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA secure_delete=ON")  # destroyed key blobs are overwritten
        cur.execute(f"PRAGMA wal_autocheckpoint={int(autocheckpoint())}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        if conn.get_execution_options().get("mstcrypt_snapshot"):
            # A read-only snapshot (Database.snapshot): WAL readers take no write lock.
            conn.exec_driver_sql("BEGIN DEFERRED")
            return
        # Take the write lock at BEGIN: no lock upgrades, so no SQLITE_BUSY deadlocks.
        # Database.read() transactions never write, so they take no lock at all.
        if conn.get_execution_options().get("mstcrypt_read_only"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


#: advisory-lock key that serialises schema migrations of every instance (PostgreSQL)
MIGRATION_LOCK = 0x6D73_7463_6D69_6772  # "mstcmigr"


def migrate(db: Database) -> None:
    """Bring the schema to the newest Alembic revision. Several instances starting at
    once on one PostgreSQL database take turns (a transaction-scoped advisory lock; the
    DDL is transactional, so the later ones find the schema current); SQLite's
    BEGIN IMMEDIATE already serialises them."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with db.engine.begin() as conn:
        if not db.is_sqlite:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
