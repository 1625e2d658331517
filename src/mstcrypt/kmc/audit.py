"""The hash-chained audit log.

Record n stores hash_n = SM3(hash_{n-1} ‖ canonical JSON of {seq, ts, actor, action,
target, details}), with hash_0 = 32 zero bytes. Appending locks the single-row chain
head, so concurrent transactions (and several server instances) serialise. The KMC's
audit key signs checkpoints SM2(label ‖ seq ‖ hash); :func:`verify_chain` recomputes the
chain, checks every signed checkpoint and names the first record that was edited,
deleted or reordered.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.orm import Session

from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.crypto.sm3 import sm3
from mstcrypt.errors import PolicyError, VerificationError
from mstcrypt.kmc.models import AuditCheckpoint, AuditHead, AuditRecord

GENESIS = "00" * 32
CHECKPOINT_LABEL = b"mstcrypt-audit-checkpoint-v1"
_FORBIDDEN_KEYS = ("private", "secret", "password", "pin", "code", "key_blob", "plaintext")


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_hash(
    prev_hash: str, seq: int, ts: str, actor: str, action: str, target: str, details: dict[str, Any]
) -> str:
    body = json.dumps(
        {
            "seq": seq,
            "ts": ts,
            "actor": actor,
            "action": action,
            "target": target,
            "details": details,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
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
    return Appended(seq, h)


def checkpoint_message(seq: int, hash_hex: str) -> bytes:
    return CHECKPOINT_LABEL + seq.to_bytes(8, "big") + bytes.fromhex(hash_hex)


def sign_checkpoint(session: Session, sign: Callable[[bytes], bytes]) -> AuditCheckpoint | None:
    """Sign the current head with ``sign`` (the audit key's signer inside the SS-CC);
    a no-op if the head is already signed or the log is empty."""
    head = session.get(AuditHead, 1)
    if head is None or head.seq == 0 or session.get(AuditCheckpoint, head.seq) is not None:
        return None
    cp = AuditCheckpoint(
        seq=head.seq,
        hash=head.hash,
        signature=sign(checkpoint_message(head.seq, head.hash)),
        signed_at=datetime.now(UTC),
    )
    session.add(cp)
    session.flush()
    return cp


@dataclass
class ChainReport:
    ok: bool
    records: int
    checkpoints: int
    first_bad_seq: int | None = None
    problem: str = ""
    notes: list[str] = field(default_factory=list)


def verify_chain(session: Session, audit_public_key: SM2PublicKey | None) -> ChainReport:
    """Walk the whole log. Returns a report; ``ok`` is False at the first problem."""
    prev, expected, count = GENESIS, 1, 0
    hashes: dict[int, str] = {}
    stmt = select(AuditRecord).order_by(AuditRecord.seq).execution_options(yield_per=1000)
    for rec in session.execute(stmt).scalars():
        if rec.seq != expected:
            if rec.seq > expected:
                return ChainReport(
                    False, count, 0, expected, f"record {expected} is missing (deleted)"
                )
            return ChainReport(False, count, 0, rec.seq, f"record {rec.seq} is duplicated")
        if rec.prev_hash != prev:
            return ChainReport(
                False,
                count,
                0,
                rec.seq,
                f"record {rec.seq} does not link to its predecessor "
                "(reordered, or an earlier record was replaced)",
            )
        h = record_hash(
            prev, rec.seq, rec.ts, rec.actor, rec.action, rec.target, dict(rec.details or {})
        )
        if h != rec.hash:
            return ChainReport(False, count, 0, rec.seq, f"record {rec.seq} was edited")
        prev = rec.hash
        hashes[rec.seq] = rec.hash
        expected += 1
        count += 1
    last = expected - 1
    head = session.get(AuditHead, 1)
    if head is not None and (head.seq != last or head.hash != prev):
        return ChainReport(
            False, count, 0, last + 1, f"records after {last} were deleted (head is at {head.seq})"
        )
    checkpoints = (
        session.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.seq)).scalars().all()
    )
    last_good = 0
    for cp in checkpoints:
        if audit_public_key is not None:
            try:
                audit_public_key.verify(cp.signature, checkpoint_message(cp.seq, cp.hash))
            except VerificationError:
                return ChainReport(
                    False,
                    count,
                    len(checkpoints),
                    cp.seq,
                    f"checkpoint {cp.seq} has an invalid signature",
                )
        if cp.seq > last:
            return ChainReport(
                False,
                count,
                len(checkpoints),
                last + 1,
                f"records after {last} were deleted (signed checkpoint at {cp.seq})",
            )
        if hashes.get(cp.seq) != cp.hash:
            # The chain was recomputed after an edit: the first changed record lies after
            # the last checkpoint that still matches.
            return ChainReport(
                False,
                count,
                len(checkpoints),
                last_good + 1,
                f"history was rewritten: the chain no longer matches the signed "
                f"checkpoint {cp.seq}; the first altered record is after "
                f"{last_good}",
            )
        last_good = cp.seq
    return ChainReport(True, count, len(checkpoints))
