"""The login hot path on the DB-API connection.

A login is a handful of statements (the challenge, one read, one short write
transaction); through SQLAlchemy's statement machinery they would cost more CPU than the
three SM2 operations of a login. This module runs them as plain SQL on the pooled DB-API
connection (SQLite or PostgreSQL), with the dialect differences handled here: parameter
markers, row locks, and statements run on their own (no ``BEGIN``/``COMMIT`` round
trips on PostgreSQL). Under load each round trip also waits for the interpreter lock,
so their number matters as much as their CPU.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from datetime import datetime
from types import TracebackType
from typing import Any

from mstcrypt.kmc import audit
from mstcrypt.kmc.db import Database

_NAMED = re.compile(r":([a-z_][a-z0-9_]*)")


@functools.cache
def _pipelines() -> bool:
    """Whether the PostgreSQL driver can pipeline (psycopg over libpq 14 or later; the
    binary wheel bundles one). Without it the same statements go one at a time."""
    try:
        import psycopg

        return bool(psycopg.Pipeline.is_supported())
    except Exception:  # no psycopg, or one too old to say
        return False


@functools.lru_cache(maxsize=256)
def _dialect_sql(sql: str, lock: str, sqlite: bool) -> str:
    """``sql`` with ``{lock}`` filled in and, on PostgreSQL, ``:name`` markers in the
    driver's ``%(name)s`` form. The statements are the module's constants, so each is
    converted once (a regex substitution with a template per statement was a tenth of
    a PostgreSQL login's CPU)."""
    sql = sql.replace("{lock}", lock)
    return sql if sqlite else _NAMED.sub(r"%(\1)s", sql)


class RawTx:
    """``with RawTx(db) as tx: tx.q(sql, params)`` — one transaction; SQL uses ``:name``
    parameters and ``{lock}`` where a row lock belongs.

    ``durable=False`` (SQLite) commits without waiting for the disk: the transaction is
    written to the WAL and made durable by the next durable commit's sync (of any
    writer), so a power cut can lose it but never corrupts or reorders the database.
    Only for rows whose loss costs a retry (a login challenge): its commit then holds
    the database's single write lock without an fsync.

    On PostgreSQL the connection is switched to autocommit for the transaction and
    ``BEGIN`` is sent in one pipeline with the first statement(s), instead of the
    driver's ``BEGIN`` round trip of its own; ``COMMIT`` or ``ROLLBACK`` ends it, and
    the connection goes back to the pool as it came (not autocommit, idle)."""

    def __init__(self, db: Database, *, durable: bool = True) -> None:
        self.db = db
        self.sqlite = db.is_sqlite
        self._lazy = self.sqlite and not durable
        self._lock = "" if self.sqlite else " FOR NO KEY UPDATE"

    def __enter__(self) -> RawTx:
        self._turn = self.db.writer()
        self._turn.__enter__()
        try:
            self._raw = self.db.engine.raw_connection()
            self._cur = self._raw.cursor()
            if self.sqlite:
                if self._lazy:  # outside a transaction; set back in __exit__
                    self._cur.execute("PRAGMA synchronous=NORMAL")
                self._cur.execute("BEGIN IMMEDIATE")
            else:
                self._begun = False
                self._raw.driver_connection.autocommit = True  # BEGIN is ours (see above)
        except BaseException:
            if not self.sqlite and hasattr(self, "_raw"):
                self._raw.invalidate()  # never hand out a half-set connection
                self._raw.close()
            self._turn.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.sqlite or self._begun:
                self._cur.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            try:
                if self._lazy:
                    try:
                        self._cur.execute("PRAGMA synchronous=FULL")
                    except Exception:  # never hand out a connection that skips syncs
                        self._raw.invalidate()
                if not self.sqlite:
                    try:
                        self._raw.driver_connection.autocommit = False
                    except Exception:  # broken, or still in a transaction: not reused
                        self._raw.invalidate()
                self._cur.close()
                self._raw.close()
            finally:
                self._turn.__exit__(None, None, None)

    def q(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        if not self.sqlite and not self._begun:
            self._pipeline([self._cur], [(sql, params or {})])
        else:
            self._cur.execute(_dialect_sql(sql, self._lock, self.sqlite), params or {})
        return self._cur

    def rows(self, *statements: tuple[str, dict[str, Any]]) -> list[Any]:
        """The first row (or None) of each statement, run one after another in this
        transaction. On PostgreSQL they go in one pipeline: the server still runs them
        in order (so the row locks they take come in that order) but the ``BEGIN`` and
        all of them cost one round trip instead of one each. For statements whose
        parameters do not depend on an earlier one's result."""
        if self.sqlite:
            return [self.q(sql, params).fetchone() for sql, params in statements]
        cursors = [self._raw.cursor() for _ in statements]
        try:
            self._pipeline(cursors, list(statements))
            return [cur.fetchone() for cur in cursors]
        finally:
            for cur in cursors:
                cur.close()

    def _pipeline(self, cursors: list[Any], statements: list[tuple[str, dict[str, Any]]]) -> None:
        """PostgreSQL: ``statements`` on ``cursors`` in one pipeline, after ``BEGIN``
        when the transaction has not begun yet: one round trip (one each when the
        driver cannot pipeline)."""
        begin = None if self._begun else self._raw.cursor()
        try:
            conn = self._raw.driver_connection
            with conn.pipeline() if _pipelines() else contextlib.nullcontext():
                if begin is not None:
                    # what the driver would send: each statement sees what has committed
                    # before it (the re-checks depend on it), whatever the server's default
                    begin.execute("BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE")
                    self._begun = True
                for cur, (sql, params) in zip(cursors, statements, strict=True):
                    cur.execute(_dialect_sql(sql, self._lock, False), params)
        finally:
            if begin is not None:
                begin.close()

    def ts(self, dt: datetime) -> Any:
        """A timezone-aware datetime as the column type expects it (SQLAlchemy stores
        naive UTC text on SQLite)."""
        if self.sqlite:
            return dt.replace(tzinfo=None).isoformat(sep=" ")
        return dt


def read_row(db: Database, sql: str, params: dict[str, Any]) -> Any:
    """One row of a read-only query (``:name`` parameters) on a pooled DB-API
    connection, without taking SQLite's write lock (RawTx begins IMMEDIATE).

    The statement runs on its own, outside any transaction: one statement sees one
    snapshot on both engines, and on PostgreSQL this saves the ``BEGIN`` and
    ``ROLLBACK`` round trips a driver-opened transaction would cost."""
    return _one_statement(db, sql, params)


def write_row(db: Database, sql: str, params: dict[str, Any]) -> Any:
    """One statement that writes, as a transaction of its own (all of it or nothing),
    in this process's writer turn on SQLite; its first row (``RETURNING``), if any.
    On PostgreSQL one round trip: no ``BEGIN``, no ``COMMIT``."""
    with db.writer():
        return _one_statement(db, sql, params)


def _one_statement(db: Database, sql: str, params: dict[str, Any]) -> Any:
    raw = db.engine.raw_connection()
    try:
        if db.is_sqlite:  # isolation_level None: no implicit transaction
            cur = raw.cursor()
            try:
                cur.execute(sql, params)
                return cur.fetchone()
            finally:
                cur.close()
        conn = raw.driver_connection
        conn.autocommit = True
        try:
            cur = raw.cursor()
            try:
                cur.execute(_dialect_sql(sql, "", False), params)
                return cur.fetchone()
            finally:
                cur.close()
        finally:
            try:
                conn.autocommit = False
            except Exception:  # a broken connection: the pool must not hand it out again
                raw.invalidate()
    finally:
        raw.close()


def append_audit(
    tx: RawTx,
    *,
    actor: str,
    action: str,
    target: str,
    details: dict[str, Any],
) -> None:
    """:func:`mstcrypt.kmc.audit.append` on a raw transaction (same chain, same hash).
    The log's head row is locked here, the transaction's last lock (every writer takes
    it last, so none waits for it while holding what another writer needs)."""
    audit.check_details(details)
    row = tx.q("SELECT seq, hash FROM audit_head WHERE id = 1{lock}").fetchone()
    if row is None:
        tx.q("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, :h)", {"h": audit.GENESIS})
        row = (0, audit.GENESIS)
    seq, prev = int(row[0]) + 1, str(row[1])
    ts = audit.now_iso()
    h = audit.record_hash(prev, seq, ts, actor, action, target, details)
    insert = (
        "INSERT INTO audit_log (seq, ts, actor, action, target, details, prev_hash, hash) "
        "VALUES (:seq, :ts, :actor, :action, :target, :details, :prev, :hash)"
    )
    advance = "UPDATE audit_head SET seq = :seq, hash = :hash WHERE id = 1"
    params = {
        "seq": seq,
        "ts": ts,
        "actor": actor,
        "action": action,
        "target": target,
        "details": json.dumps(details),
        "prev": prev,
        "hash": h,
    }
    if tx.sqlite:
        tx.q(insert, params)
        tx.q(advance, {"seq": seq, "hash": h})
    else:  # one round trip fewer while this transaction holds the log's head row
        tx.q(f"WITH appended AS ({insert}) {advance}", params)
