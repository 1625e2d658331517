"""What the console shows: read-only queries over the KMC's store, each in one read
transaction, bounded (every list has a limit), never returning a secret (no key blob,
no code, no recovered key).

Changes are not made here: the console's actions call the same :class:`Kmc` methods as
the HTTP API, so they run in the same units (transaction + audit record).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select

from mstcrypt.errors import MstCryptError
from mstcrypt.formats._der import pem_encode
from mstcrypt.kmc.context import aware
from mstcrypt.kmc.models import (
    AuditCheckpoint,
    AuditHead,
    AuditRecord,
    EncryptionKey,
    EnrollmentCode,
    Group,
    GroupMember,
    IssuedCertificate,
    Operator,
    RecoveryRequest,
)
from mstcrypt.kmc.service import Kmc

__all__ = ["ALARM_ACTIONS", "AuditFilter", "Overview"]

#: audit actions shown as alarms on the dashboard
ALARM_ACTIONS = (
    "login.failure",
    "login.lockout",
    "cert.revoke",
    "key.destroy",
    "recovery.release",
)
PAGE = 50


def _like(text: str) -> str:
    """A LIKE pattern for a substring, with the wildcards of the text escaped."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


@dataclass(frozen=True)
class AuditFilter:
    actor: str = ""
    action: str = ""
    target: str = ""
    before: int | None = None  # seq: the page ends below this

    def query(self) -> Any:
        q = select(AuditRecord).order_by(AuditRecord.seq.desc())
        if self.actor:
            q = q.where(AuditRecord.actor.like(_like(self.actor), escape="\\"))
        if self.action:
            q = q.where(AuditRecord.action.like(_like(self.action), escape="\\"))
        if self.target:
            q = q.where(AuditRecord.target.like(_like(self.target), escape="\\"))
        if self.before is not None:
            q = q.where(AuditRecord.seq < self.before)
        return q


class Overview:
    def __init__(self, kmc: Kmc) -> None:
        self.kmc = kmc

    # -- dashboard -----------------------------------------------------------------------
    def dashboard(self, *, horizon_days: int = 30) -> dict[str, Any]:
        now = self.kmc.clock()
        horizon = now + timedelta(days=horizon_days)
        ic, ek = IssuedCertificate, EncryptionKey
        with self.kmc.ctx.read() as s:
            by_status = dict(
                s.execute(
                    select(ic.status, func.count()).where(ic.usage != "ca").group_by(ic.status)
                ).all()
            )
            terminals = s.scalar(
                select(func.count(func.distinct(ic.owner))).where(
                    ic.usage == "sign",
                    ic.status == "active",
                    ic.owner.is_not(None),
                    ic.owner.not_like("service:%"),
                    ic.owner.not_in(select(Operator.name)),
                )
            )
            keys = dict(s.execute(select(ek.state, func.count()).group_by(ek.state)).all())
            pending_recovery = s.scalar(
                select(func.count()).where(RecoveryRequest.status == "pending")
            )
            open_codes = s.scalar(
                select(func.count()).where(
                    EnrollmentCode.used_at.is_(None), EnrollmentCode.expires_at > now
                )
            )
            operators = s.scalar(select(func.count()).where(Operator.status == "active"))
            expiring = [
                {
                    "serial": r.serial,
                    "owner": r.owner or "",
                    "subject": r.subject,
                    "usage": r.usage,
                    "not_after": aware(r.not_after),
                    "days": max(0, (aware(r.not_after) - now).days),
                }
                for r in s.scalars(
                    select(ic)
                    .where(ic.status == "active", ic.not_after <= horizon, ic.usage != "ca")
                    .order_by(ic.not_after)
                    .limit(PAGE)
                )
            ]
            # the chart counts every one (up to 100,000); the list shows the first PAGE
            expiry_dates = [
                aware(d)
                for d in s.scalars(
                    select(ic.not_after)
                    .where(ic.status == "active", ic.not_after <= horizon, ic.usage != "ca")
                    .limit(100_000)
                )
            ]
            head = s.get(AuditHead, 1)
            last_cp = s.scalars(
                select(AuditCheckpoint).order_by(AuditCheckpoint.seq.desc()).limit(1)
            ).first()
            alarms = [
                _record(r)
                for r in s.scalars(
                    select(AuditRecord)
                    .where(AuditRecord.action.in_(ALARM_ACTIONS))
                    .order_by(AuditRecord.seq.desc())
                    .limit(10)
                )
            ]
        crls = []
        for ca in ("root", "issuing"):
            try:
                pub = self.kmc.ca.current_crl(ca, publish=False)
            except MstCryptError:  # a CA without a CRL yet is shown as such
                crls.append({"ca": ca, "number": None})
                continue
            age = now - aware(pub.this_update)
            crls.append(
                {
                    "ca": ca,
                    "number": pub.number,
                    "this_update": aware(pub.this_update),
                    "next_update": aware(pub.next_update),
                    "age_minutes": int(age.total_seconds() // 60),
                    "overdue": aware(pub.next_update) < now,
                }
            )
        return {
            "now": now,
            "horizon_days": horizon_days,
            "certificates": {
                "active": by_status.get("active", 0),
                "revoked": by_status.get("revoked", 0),
            },
            "terminals": terminals or 0,
            "key_states": keys,
            "pending_recovery": pending_recovery or 0,
            "open_codes": open_codes or 0,
            "operators": operators or 0,
            "expiring": expiring,
            "expiring_total": len(expiry_dates),
            "expiry_chart": _weeks(expiry_dates, now, horizon_days),
            "crls": crls,
            "audit": {
                "head_seq": head.seq if head else 0,
                "checkpoint_seq": last_cp.seq if last_cp else None,
                "checkpoint_at": aware(last_cp.signed_at) if last_cp else None,
                "unsigned": (head.seq if head else 0) - (last_cp.seq if last_cp else 0),
            },
            "alarms": alarms,
        }

    # -- certificates ----------------------------------------------------------------------
    def certificates(
        self, *, query: str = "", status: str = "", limit: int = PAGE
    ) -> list[dict[str, Any]]:
        ic = IssuedCertificate
        q = select(ic).where(ic.usage != "ca").order_by(ic.issued_at.desc())
        if query:
            pattern = _like(query)
            q = q.where(
                or_(
                    ic.owner.like(pattern, escape="\\"),
                    ic.subject.like(pattern, escape="\\"),
                    ic.serial == query.lower().lstrip("0"),
                )
            )
        if status in ("active", "revoked"):
            q = q.where(ic.status == status)
        with self.kmc.ctx.read() as s:
            return [_cert(r) for r in s.scalars(q.limit(min(limit, 500)))]

    def certificate(self, serial: str) -> dict[str, Any] | None:
        with self.kmc.ctx.read() as s:
            row = s.get(IssuedCertificate, serial.lower().lstrip("0") or "0")
            if row is None or row.usage == "ca":
                return None
            out = _cert(row)
            out["fingerprint"] = row.fingerprint
            out["profile"] = row.profile
            out["pair_serial"] = row.pair_serial
            out["key_id"] = row.key_id
            out["revoked_at"] = aware(row.revoked_at) if row.revoked_at else None
            out["revocation_reason"] = row.revocation_reason
            out["pem"] = pem_encode(row.der, "CERTIFICATE").decode()
            out["others"] = (
                [
                    _cert(r)
                    for r in s.scalars(
                        select(IssuedCertificate)
                        .where(
                            IssuedCertificate.owner == row.owner,
                            IssuedCertificate.serial != row.serial,
                        )
                        .order_by(IssuedCertificate.issued_at.desc())
                        .limit(20)
                    )
                ]
                if row.owner
                else []
            )
            return out

    # -- enrollment codes (never the code itself: only its hash is stored) -------------------
    def open_codes(self, limit: int = PAGE) -> list[dict[str, Any]]:
        now = self.kmc.clock()
        with self.kmc.ctx.read() as s:
            return [
                {
                    "id": r.id,
                    "owner": r.owner,
                    "profile": r.profile,
                    "purpose": r.purpose,
                    "created_by": r.created_by,
                    "expires_at": aware(r.expires_at),
                }
                for r in s.scalars(
                    select(EnrollmentCode)
                    .where(EnrollmentCode.used_at.is_(None), EnrollmentCode.expires_at > now)
                    .order_by(EnrollmentCode.created_at.desc())
                    .limit(limit)
                )
            ]

    # -- recovery ----------------------------------------------------------------------------
    def recoveries(self, limit: int = PAGE) -> list[dict[str, Any]]:
        with self.kmc.ctx.read() as s:
            ids = list(
                s.scalars(
                    select(RecoveryRequest.id)
                    .order_by(
                        (RecoveryRequest.status == "pending").desc(),
                        RecoveryRequest.created_at.desc(),
                    )
                    .limit(limit)
                )
            )
        return [_public_recovery(self.kmc.recovery_result(i)) for i in ids]

    def recovery(self, request_id: str) -> dict[str, Any]:
        return _public_recovery(self.kmc.recovery_result(request_id))

    # -- keys, operators, groups -----------------------------------------------------------
    def keys(self, owner: str) -> list[dict[str, Any]]:
        return self.kmc.keys(owner) if owner else []

    def groups(self, limit: int = 200) -> list[dict[str, Any]]:
        """IM groups: id, key version, member count (newest first)."""
        with self.kmc.ctx.read() as s:
            counts = dict(
                s.execute(
                    select(GroupMember.group_id, func.count()).group_by(GroupMember.group_id)
                ).all()
            )
            return [
                {
                    "id": g.id,
                    "version": g.current_version,
                    "members": counts.get(g.id, 0),
                    "created_at": aware(g.created_at),
                }
                for g in s.scalars(select(Group).order_by(Group.created_at.desc()).limit(limit))
            ]

    def group(self, group_id: str) -> dict[str, Any] | None:
        with self.kmc.ctx.read() as s:
            g = s.get(Group, group_id)
            if g is None:
                return None
            members = [
                {"member": m.member, "joined_version": m.joined_version}
                for m in s.scalars(
                    select(GroupMember)
                    .where(GroupMember.group_id == group_id)
                    .order_by(GroupMember.member)
                )
            ]
            return {"id": g.id, "version": g.current_version, "members": members}

    def operators(self) -> list[dict[str, Any]]:
        return self.kmc.operators.list()

    # -- audit -------------------------------------------------------------------------------
    def audit(self, flt: AuditFilter, limit: int = PAGE) -> list[dict[str, Any]]:
        with self.kmc.ctx.read() as s:
            return [_record(r) for r in s.scalars(flt.query().limit(min(limit, 1000)))]


def _record(r: AuditRecord) -> dict[str, Any]:
    return {
        "seq": r.seq,
        "ts": r.ts,
        "actor": r.actor,
        "action": r.action,
        "target": r.target,
        "details": r.details,
        "hash": r.hash,
    }


def _cert(r: IssuedCertificate) -> dict[str, Any]:
    return {
        "serial": r.serial,
        "owner": r.owner or "",
        "subject": r.subject,
        "usage": r.usage,
        "status": r.status,
        "not_before": aware(r.not_before),
        "not_after": aware(r.not_after),
        "issued_at": aware(r.issued_at),
    }


def _public_recovery(d: dict[str, Any]) -> dict[str, Any]:
    """A recovery request without its result (the enveloped key goes to the recipient
    through the API, not to a web page)."""
    out = {k: v for k, v in d.items() if k not in ("enveloped_key", "file_key_ciphertext")}
    out["released"] = d.get("status") == "released"
    return out


def _weeks(dates: list[datetime], now: datetime, days: int) -> list[dict[str, Any]]:
    """Certificates expiring per week of the horizon (the dashboard's timeline bars)."""
    weeks = max(1, (days + 6) // 7)
    counts = [0] * weeks
    for d in dates:
        counts[min(weeks - 1, max(0, (d - now).days // 7))] += 1
    top = max(counts) or 1
    return [
        {
            "label": (now + timedelta(days=7 * i)).strftime("%m-%d"),
            "count": n,
            "percent": round(100 * n / top),
        }
        for i, n in enumerate(counts)
    ]
