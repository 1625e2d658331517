"""The hash-chained audit log.

Record n stores hash_n = SM3(hash_{n-1} ‖ canonical JSON of {seq, ts, actor, action,
target, details}), with hash_0 = 32 zero bytes. Appending locks the single-row chain
head, so concurrent transactions (and several server instances) serialise. The KMC's
audit key signs checkpoints SM2(label ‖ seq ‖ hash), each only after the records since
the previous one were verified.

Verification streams the log in ``seq`` order inside one read-only snapshot
(:meth:`mstcrypt.kmc.db.Database.snapshot`: no write lock, constant memory) and names the
first record that was edited, deleted or reordered:

* :func:`verify_chain` (full): every record from the genesis, every checkpoint, the head;
* :func:`verify_incremental`: the newest signed checkpoint, then only the records after it;
* :func:`verify_range`: records ``a``..``b``, linked at both ends to the stored chain.
"""

from __future__ import annotations

import bisect
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Text, bindparam, func, insert, select, type_coerce, update
from sqlalchemy.orm import Session

from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.crypto.sm3 import sm3
from mstcrypt.errors import MstCryptError, PolicyError
from mstcrypt.kmc.models import AuditCheckpoint, AuditHead, AuditRecord

GENESIS = "00" * 32
CHECKPOINT_LABEL = b"mstcrypt-audit-checkpoint-v1"
_FORBIDDEN_KEYS = ("private", "secret", "password", "pin", "code", "key_blob", "plaintext")


#: the canonical JSON of a record (sorted keys, no spaces, UTF-8): one encoder, built once
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_hash(
    prev_hash: str, seq: int, ts: str, actor: str, action: str, target: str, details: dict[str, Any]
) -> str:
    body = _CANONICAL.encode(
        {
            "seq": seq,
            "ts": ts,
            "actor": actor,
            "action": action,
            "target": target,
            "details": details,
        }
    ).encode("utf-8")
    return sm3(bytes.fromhex(prev_hash) + body).hex()


def ensure_head(session: Session) -> None:
    if session.get(AuditHead, 1) is None:
        session.add(AuditHead(id=1, seq=0, hash=GENESIS))
        session.flush()


def check_details(details: dict[str, Any]) -> None:
    """Refuse detail fields named like secrets (keys, codes, PINs, passwords)."""
    for k in details:
        if any(bad in k.lower() for bad in _FORBIDDEN_KEYS) and not k.endswith("_id"):
            raise PolicyError(f"audit details must not carry secrets (field {k!r})")


@dataclass(frozen=True)
class Appended:
    seq: int
    hash: str


_HEAD = AuditHead.__table__
_LOG = AuditRecord.__table__
_Q_HEAD = select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == 1).with_for_update(key_share=True)
_I_LOG = insert(_LOG)
_U_HEAD = update(_HEAD).where(_HEAD.c.id == 1)


class AppendTimings:
    """How long :func:`append` takes in this process (the head-row lock wait included),
    as a cumulative histogram for the metrics endpoint: ``(bounds, counts, count, sum)``
    where ``counts[i]`` appends took at most ``bounds[i]`` seconds."""

    BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets = [0] * len(self.BOUNDS)
        self._count = 0
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        i = bisect.bisect_left(self.BOUNDS, seconds)
        with self._lock:
            if i < len(self._buckets):
                self._buckets[i] += 1
            self._count += 1
            self._sum += seconds

    def snapshot(self) -> tuple[tuple[float, ...], list[int], int, float]:
        with self._lock:
            buckets, count, total = list(self._buckets), self._count, self._sum
        cumulative, running = [], 0
        for n in buckets:
            running += n
            cumulative.append(running)
        return self.BOUNDS, cumulative, count, total


#: this process's append latencies (read by mstcrypt.apps.console.metrics)
APPEND_TIMINGS = AppendTimings()


def append(
    session: Session | Connection,
    *,
    actor: str,
    action: str,
    target: str,
    details: dict[str, Any] | None = None,
) -> Appended:
    """Append one record inside the caller's transaction (an ORM Session or a Core
    Connection). Core statements keep this cheap on hot paths such as login."""
    started = time.perf_counter()
    details = dict(details or {})
    check_details(details)
    head = session.execute(_Q_HEAD).first()
    if head is None:
        session.execute(insert(_HEAD).values(id=1, seq=0, hash=GENESIS))
        head = session.execute(_Q_HEAD).first()
        assert head is not None
    prev_seq, prev_hash = int(head[0]), str(head[1])
    seq = prev_seq + 1
    ts = now_iso()
    h = record_hash(prev_hash, seq, ts, actor, action, target, details)
    session.execute(
        insert(_LOG).values(
            seq=seq,
            ts=ts,
            actor=actor,
            action=action,
            target=target,
            details=details,
            prev_hash=prev_hash,
            hash=h,
        )
    )
    session.execute(update(_HEAD).where(_HEAD.c.id == 1).values(seq=seq, hash=h))
    APPEND_TIMINGS.observe(time.perf_counter() - started)
    return Appended(seq, h)


def checkpoint_message(seq: int, hash_hex: str) -> bytes:
    """What the audit key signs: label ‖ seq (8 bytes, big-endian) ‖ hash (32 bytes).
    Raises ``ValueError`` when ``hash_hex`` is not hex."""
    return CHECKPOINT_LABEL + seq.to_bytes(8, "big") + bytes.fromhex(hash_hex)


class AuditChainError(PolicyError):
    """The chain does not verify, so the audit key refuses to sign a checkpoint on it."""


_CP = AuditCheckpoint.__table__


def store_checkpoint(
    session: Session | Connection,
    seq: int,
    hash_hex: str,
    sign: Callable[[bytes], bytes],
    *,
    now: datetime | None = None,
) -> bool:
    """Sign record ``seq`` (whose hash the caller has just verified to be ``hash_hex``)
    and store the checkpoint inside the caller's short write transaction. Returns False
    when that record is already signed. The record is re-read here: if it changed since
    it was verified, :class:`AuditChainError`."""
    if session.execute(select(_CP.c.seq).where(_CP.c.seq == seq)).first() is not None:
        return False
    stored = session.execute(select(_LOG.c.hash).where(_LOG.c.seq == seq)).scalar()
    if stored != hash_hex:
        raise AuditChainError(f"record {seq} changed while its checkpoint was being signed")
    session.execute(
        insert(_CP).values(
            seq=seq,
            hash=hash_hex,
            signature=sign(checkpoint_message(seq, hash_hex)),
            signed_at=now or datetime.now(UTC),
        )
    )
    return True


def checkpoint_due(
    conn: Session | Connection, *, every_records: int, every_seconds: float, now: datetime
) -> bool:
    """Whether the head should be signed now: it has moved since the last checkpoint,
    and by at least ``every_records`` records or ``every_seconds`` after that
    checkpoint was signed (two indexed reads; the decision is shared by every instance
    through the database)."""
    head = conn.execute(select(_HEAD.c.seq).where(_HEAD.c.id == 1)).scalar() or 0
    last = conn.execute(
        select(_CP.c.seq, _CP.c.signed_at).order_by(_CP.c.seq.desc()).limit(1)
    ).first()
    if last is None:
        return head > 0
    seq, signed_at = int(last[0]), last[1]
    if head <= seq:
        return False
    if every_records > 0 and head - seq >= every_records:
        return True
    if signed_at.tzinfo is None:
        signed_at = signed_at.replace(tzinfo=UTC)
    return (now - signed_at).total_seconds() >= every_seconds


# -- verification ----------------------------------------------------------------------
#: records fetched per query (keyset pagination on ``seq``): the memory bound of a walk
BATCH = 2000
_NO_END = 2**62


@dataclass
class ChainReport:
    """The result of one verification. ``ok`` is False at the first problem found,
    ``first_bad_seq`` and ``problem`` say where and what. ``records`` and
    ``checkpoints`` count what this run checked; ``from_seq``..``to_seq`` is the span of
    records it recomputed (0, 0 for none), ``to_hash`` the hash at ``to_seq``.
    ``mode`` is ``full``, ``incremental`` or ``range``; an incremental run starts after
    the signed checkpoint ``anchor_seq`` (None: no checkpoint yet, so from the first
    record) and is ``complete`` when it reached the head (a ``limit`` may stop it
    earlier)."""

    ok: bool
    records: int
    checkpoints: int
    first_bad_seq: int | None = None
    problem: str = ""
    notes: list[str] = field(default_factory=list)
    mode: str = "full"
    from_seq: int = 0
    to_seq: int = 0
    to_hash: str = GENESIS
    head_seq: int = 0
    anchor_seq: int | None = None
    complete: bool = True


class _Broken(Exception):
    def __init__(self, seq: int | None, problem: str) -> None:
        self.seq, self.problem = seq, problem


def _is_hash(value: object) -> bool:
    if not isinstance(value, str) or len(value) != 64:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return value == value.lower()


class _Walk:
    """One streaming pass over the log inside one snapshot: records in ``seq`` order,
    ``BATCH`` at a time, and the signed checkpoints met on the way — constant memory."""

    def __init__(self, conn: Session | Connection, pub: SM2PublicKey | None, batch: int) -> None:
        self.conn, self.pub, self.batch = conn, pub, max(1, batch)
        bind = conn.get_bind() if isinstance(conn, Session) else conn
        self.sqlite = bind.dialect.name == "sqlite"
        # SQLite: read details as stored text and parse here, so that text which is not
        # JSON is reported as an edit instead of failing the whole query
        details = type_coerce(_LOG.c.details, Text) if self.sqlite else _LOG.c.details
        self.q_page = (
            select(
                _LOG.c.seq,
                _LOG.c.ts,
                _LOG.c.actor,
                _LOG.c.action,
                _LOG.c.target,
                details,
                _LOG.c.prev_hash,
                _LOG.c.hash,
            )
            .where(_LOG.c.seq > bindparam("after"), _LOG.c.seq <= bindparam("stop"))
            .order_by(_LOG.c.seq)
            .limit(bindparam("n"))
        )
        self.q_cps = (
            select(_CP.c.seq, _CP.c.hash, _CP.c.signature)
            .where(_CP.c.seq >= bindparam("lo"), _CP.c.seq <= bindparam("hi"))
            .order_by(_CP.c.seq)
        )
        self.records = 0
        self.checkpoints = 0

    # -- reads -------------------------------------------------------------------------
    def head(self) -> tuple[int, str]:
        row = self.conn.execute(select(_HEAD.c.seq, _HEAD.c.hash).where(_HEAD.c.id == 1)).first()
        return (0, GENESIS) if row is None else (int(row[0]), str(row[1]))

    def record_hash_at(self, seq: int) -> str | None:
        return self.conn.execute(select(_LOG.c.hash).where(_LOG.c.seq == seq)).scalar()

    def checkpoint_at(self, seq: int) -> Any:
        return self.conn.execute(
            select(_CP.c.seq, _CP.c.hash, _CP.c.signature).where(_CP.c.seq == seq)
        ).first()

    def last_checkpoint(self) -> Any:
        return self.conn.execute(
            select(_CP.c.seq, _CP.c.hash, _CP.c.signature).order_by(_CP.c.seq.desc()).limit(1)
        ).first()

    def next_checkpoint_seq(self, at_or_after: int) -> int | None:
        return self.conn.execute(
            select(_CP.c.seq).where(_CP.c.seq >= at_or_after).order_by(_CP.c.seq).limit(1)
        ).scalar()

    # -- checks ------------------------------------------------------------------------
    def check_signature(self, seq: int, hash_hex: str, signature: bytes) -> None:
        if self.pub is None:
            raise _Broken(seq, f"signed checkpoint {seq} cannot be checked: no audit key")
        try:
            self.pub.verify(signature, checkpoint_message(seq, hash_hex))
        except (ValueError, OverflowError, MstCryptError):
            raise _Broken(seq, f"checkpoint {seq} has an invalid signature") from None
        self.checkpoints += 1

    def check_anchor(self, seq: int, signed_hash: str) -> None:
        """Record ``seq`` (where a signed checkpoint is) still carries the signed hash,
        and its content still hashes to it from its stored predecessor hash."""
        row = self.conn.execute(self.q_page, {"after": seq - 1, "stop": seq, "n": 1}).first()
        if row is None:
            raise _Broken(seq, f"record {seq} is missing (deleted)")
        _, ts, actor, action, target, details, prev_hash, hash_ = row
        if hash_ != signed_hash:
            raise _Broken(
                seq,
                f"record {seq} no longer matches its signed checkpoint: it or an earlier "
                "record was altered (run a full verification)",
            )
        try:
            if self.sqlite and details is not None:
                details = json.loads(details)
            ok = _is_hash(prev_hash) and signed_hash == record_hash(
                prev_hash, seq, ts, actor, action, target, details
            )
        except ValueError:
            ok = False
        if not ok:
            raise _Broken(seq, f"record {seq} was edited")

    def walk(self, after: int, prev: str, stop: int, last_good: int | None) -> tuple[int, str]:
        """Verify records ``after``+1 .. ``stop`` (or the end of the log), linked to
        ``prev``; every checkpoint among them must be signed and match. Returns the last
        record verified and its hash. ``last_good`` is the last point known to be intact
        (for the message when a checkpoint no longer matches), None if unknown."""
        expected, conn, sqlite, loads = after + 1, self.conn, self.sqlite, json.loads
        while True:
            rows = conn.execute(
                self.q_page, {"after": expected - 1, "stop": stop, "n": self.batch}
            ).all()
            if not rows:
                break
            cps = conn.execute(self.q_cps, {"lo": expected, "hi": rows[-1][0]}).all()
            ci, next_cp = 0, (cps[0][0] if cps else None)
            page_start = expected
            try:
                for seq, ts, actor, action, target, details, prev_hash, hash_ in rows:
                    if seq != expected:
                        raise _Broken(expected, f"record {expected} is missing (deleted)")
                    if prev_hash != prev:
                        raise _Broken(
                            seq,
                            f"record {seq} does not link to its predecessor "
                            "(reordered, or an earlier record was replaced)",
                        )
                    if sqlite and details is not None:
                        try:
                            details = loads(details)
                        except ValueError:
                            raise _Broken(seq, f"record {seq} was edited") from None
                    h = record_hash(prev, seq, ts, actor, action, target, details)
                    if h != hash_:
                        raise _Broken(seq, f"record {seq} was edited")
                    prev = h
                    expected += 1
                    if seq == next_cp:
                        cp_hash, cp_sig = cps[ci][1], cps[ci][2]
                        self.check_signature(seq, cp_hash, cp_sig)
                        if cp_hash != h:
                            # the chain was recomputed after an edit
                            if last_good is None:
                                raise _Broken(
                                    after + 1,
                                    f"history was rewritten: the chain no longer matches the "
                                    f"signed checkpoint {seq}; the altered record is at or "
                                    f"before {seq} (this range does not start at a signed "
                                    "checkpoint)",
                                )
                            raise _Broken(
                                last_good + 1,
                                f"history was rewritten: the chain no longer matches the "
                                f"signed checkpoint {seq}; the first altered record is after "
                                f"{last_good}",
                            )
                        last_good = seq
                        ci += 1
                        next_cp = cps[ci][0] if ci < len(cps) else None
            finally:
                self.records += expected - page_start
            if len(rows) < self.batch:
                break
        return expected - 1, prev

    def check_head(self, last: int, last_hash: str, head: tuple[int, str]) -> None:
        """The end of the log: the head row names the last record, and no signed
        checkpoint lies beyond it."""
        head_seq, head_hash = head
        if head_seq > last:
            raise _Broken(last + 1, f"records after {last} were deleted (head is at {head_seq})")
        if head_seq < last:
            raise _Broken(
                head_seq + 1,
                f"records after {head_seq} are not covered by the chain head "
                "(the head was moved back)",
            )
        if head_hash != last_hash:
            raise _Broken(last, f"the chain head does not match record {last}")
        top = self.conn.execute(select(func.max(_CP.c.seq))).scalar()
        if top is not None and int(top) > last:
            raise _Broken(
                last + 1, f"records after {last} were deleted (signed checkpoint at {top})"
            )

    def report(self, mode: str, exc: _Broken | None = None, **kw: Any) -> ChainReport:
        if exc is not None:
            return ChainReport(
                False, self.records, self.checkpoints, exc.seq, exc.problem, mode=mode, **kw
            )
        return ChainReport(True, self.records, self.checkpoints, mode=mode, **kw)


def verify_chain(
    conn: Session | Connection, audit_public_key: SM2PublicKey | None, *, batch: int = BATCH
) -> ChainReport:
    """Full verification: recompute every record from the genesis, check every signed
    checkpoint on the way and the head at the end. Streams the log (constant memory);
    run it inside one snapshot (:meth:`mstcrypt.kmc.db.Database.snapshot`) so that
    writers are not blocked and the records, checkpoints and head agree."""
    w = _Walk(conn, audit_public_key, batch)
    head = w.head()
    try:
        last, last_hash = w.walk(0, GENESIS, _NO_END, 0)
        w.check_head(last, last_hash, head)
    except _Broken as exc:
        return w.report("full", exc, head_seq=head[0])
    return w.report(
        "full",
        from_seq=1 if last else 0,
        to_seq=last,
        to_hash=last_hash,
        head_seq=head[0],
    )


def verify_incremental(
    conn: Session | Connection,
    audit_public_key: SM2PublicKey | None,
    *,
    limit: int | None = None,
    batch: int = BATCH,
) -> ChainReport:
    """Incremental verification: check the signature of the newest signed checkpoint
    and that its record still carries the signed hash, then recompute only the records
    after it, up to the head (at most ``limit`` of them; ``complete`` says whether the
    head was reached). Each checkpoint is signed only after the records leading to it
    were verified (:meth:`mstcrypt.kmc.auditlog.AuditService.checkpoint`), so this is
    bounded work. Records before the checkpoint are the full and range verifications'
    business."""
    w = _Walk(conn, audit_public_key, batch)
    head = w.head()
    anchor, anchor_hash, notes = 0, GENESIS, []
    try:
        cp = w.last_checkpoint()
        if cp is None:
            notes.append("no signed checkpoint yet: verified from the first record")
        else:
            anchor, anchor_hash = int(cp[0]), str(cp[1])
            w.check_signature(anchor, anchor_hash, cp[2])
            if anchor > head[0]:
                raise _Broken(
                    head[0] + 1,
                    f"records after {head[0]} were deleted (signed checkpoint at {anchor})",
                )
            w.check_anchor(anchor, anchor_hash)
        stop = _NO_END if limit is None or head[0] - anchor <= limit else anchor + limit
        last, last_hash = w.walk(anchor, anchor_hash, stop, anchor)
        complete = stop == _NO_END
        if complete:
            w.check_head(last, last_hash, head)
        else:
            notes.append(
                f"stopped after {limit} records at record {last}; the head is at {head[0]}"
            )
    except _Broken as exc:
        return w.report(
            "incremental", exc, head_seq=head[0], anchor_seq=anchor or None, notes=notes
        )
    return w.report(
        "incremental",
        from_seq=anchor + 1 if last > anchor else 0,
        to_seq=last if last > anchor else 0,
        to_hash=last_hash,
        head_seq=head[0],
        anchor_seq=anchor or None,
        complete=complete,
        notes=notes,
    )


def verify_range(
    conn: Session | Connection,
    audit_public_key: SM2PublicKey | None,
    from_seq: int,
    to_seq: int,
    *,
    batch: int = BATCH,
) -> ChainReport:
    """Verify records ``from_seq``..``to_seq``: the first links to the stored hash of
    record ``from_seq``-1 (checked against its checkpoint when that one is signed), and
    the walk goes on to the first signed checkpoint at or after ``to_seq`` (or to the
    head, whose link is checked), so that an edit inside the range is caught even when
    every later hash was recomputed. ``to_seq`` beyond the head stops at the head."""
    if from_seq < 1 or to_seq < from_seq:
        raise PolicyError(f"not a range of records: {from_seq}..{to_seq}")
    w = _Walk(conn, audit_public_key, batch)
    head = w.head()
    if from_seq > head[0]:
        raise PolicyError(f"the log ends at record {head[0]}; nothing to verify from {from_seq}")
    notes: list[str] = []
    last = 0
    try:
        last_good: int | None = 0
        prev = GENESIS
        if from_seq > 1:
            stored = w.record_hash_at(from_seq - 1)
            if stored is None:
                raise _Broken(from_seq - 1, f"record {from_seq - 1} is missing (deleted)")
            if not _is_hash(stored):
                raise _Broken(from_seq - 1, f"record {from_seq - 1} was edited")
            prev = stored
            cp = w.checkpoint_at(from_seq - 1)
            if cp is None:
                last_good = None
            else:
                w.check_signature(int(cp[0]), str(cp[1]), cp[2])
                if cp[1] != stored:
                    raise _Broken(
                        from_seq - 1,
                        f"record {from_seq - 1} no longer matches its signed checkpoint",
                    )
                last_good = from_seq - 1
        to = min(to_seq, head[0])
        if to < to_seq:
            notes.append(f"the log ends at record {head[0]}")
        end_cp = w.next_checkpoint_seq(to)
        stop = end_cp if end_cp is not None else _NO_END
        if stop > to:
            notes.append(
                f"verified on to the signed checkpoint at {end_cp}"
                if end_cp is not None
                else "no signed checkpoint after the range: verified on to the head"
            )
        last, last_hash = w.walk(from_seq - 1, prev, stop, last_good)
        if last < min(stop, head[0]):
            raise _Broken(last + 1, f"record {last + 1} is missing (deleted)")
        if last < head[0]:
            nxt = conn.execute(select(_LOG.c.prev_hash).where(_LOG.c.seq == last + 1)).scalar()
            if nxt is None:
                raise _Broken(last + 1, f"record {last + 1} is missing (deleted)")
            if nxt != last_hash:
                raise _Broken(
                    last + 1,
                    f"record {last + 1} does not link to its predecessor "
                    "(reordered, or an earlier record was replaced)",
                )
        else:
            w.check_head(last, last_hash, head)
    except _Broken as exc:
        return w.report("range", exc, head_seq=head[0], notes=notes)
    return w.report(
        "range",
        from_seq=from_seq,
        to_seq=last,
        to_hash=last_hash,
        head_seq=head[0],
        notes=notes,
    )
