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

import json
import re
from datetime import datetime
from types import TracebackType
from typing import Any

from mstcrypt.kmc import audit
from mstcrypt.kmc.db import Database

_NAMED = re.compile(r":([a-z_][a-z0-9_]*)")


class RawTx:
    """``with RawTx(db) as tx: tx.q(sql, params)`` — one transaction; SQL uses ``:name``
    parameters and ``{lock}`` where a row lock belongs.

    ``durable=False`` (SQLite) commits without waiting for the disk: the transaction is
    written to the WAL and made durable by the next durable commit's sync (of any
    writer), so a power cut can lose it but never corrupts or reorders the database.
    Only for rows whose loss costs a retry (a login challenge): its commit then holds
    the database's single write lock without an fsync."""

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
        except BaseException:
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
            if exc_type is None:
                self._raw.commit() if not self.sqlite else self._cur.execute("COMMIT")
            else:
                self._raw.rollback() if not self.sqlite else self._cur.execute("ROLLBACK")
        finally:
            try:
                if self._lazy:
                    try:
                        self._cur.execute("PRAGMA synchronous=FULL")
                    except Exception:  # never hand out a connection that skips syncs
                        self._raw.invalidate()
                self._cur.close()
                self._raw.close()
            finally:
                self._turn.__exit__(None, None, None)

    def q(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        sql = sql.replace("{lock}", self._lock)
        if not self.sqlite:
            sql = _NAMED.sub(r"%(\1)s", sql)
        self._cur.execute(sql, params or {})
        return self._cur

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
                cur.execute(_NAMED.sub(r"%(\1)s", sql), params)
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
