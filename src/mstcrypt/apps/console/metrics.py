"""Prometheus metrics of the platform, computed at scrape time from the shared store.

Counters come from the audit log, the platform's ground truth: each instance reads the
records appended since its previous scrape (by ``seq``, the primary key; at most
:data:`SCAN_BATCH` per scrape, so a first scrape of a long log catches up over a few
scrapes) and counts them by action — so every instance reports the same cluster-wide
totals, and a restart only re-reads the log. Gauges (CRL age, audit checkpoint lag,
queue depths, certificate and key counts) are read in one short read transaction.
No label carries a name, serial or secret: actions and reasons only.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from mstcrypt.errors import MstCryptError
from mstcrypt.kmc.audit import APPEND_TIMINGS
from mstcrypt.kmc.context import aware
from mstcrypt.kmc.models import (
    AuditCheckpoint,
    AuditHead,
    AuditRecord,
    CertificateAuthority,
    EncryptionKey,
    EnrollmentCode,
    IssuedCertificate,
    RecoveryRequest,
)
from mstcrypt.kmc.service import Kmc

__all__ = ["SCAN_BATCH", "PlatformCollector"]

SCAN_BATCH = 100_000
#: login failure reasons are a closed vocabulary (mstcrypt.protocols.login); anything
#: else is counted as "other" so a label can never grow without bound
_REASON_MAX = 48


class PlatformCollector(Collector):
    def __init__(self, kmc: Kmc) -> None:
        self.kmc = kmc
        self._lock = threading.Lock()
        self._seq = 0
        self._actions: Counter[str] = Counter()
        self._login_failures: Counter[str] = Counter()

    # -- the audit log, incrementally ---------------------------------------------------------
    def _scan(self) -> None:
        with self.kmc.ctx.read() as s:
            head = s.get(AuditHead, 1)
            if head is None:
                return
            if head.seq < self._seq:  # a restore replaced the log: count again
                self._seq, self._actions, self._login_failures = 0, Counter(), Counter()
            rows = s.execute(
                select(AuditRecord.seq, AuditRecord.action, AuditRecord.details)
                .where(AuditRecord.seq > self._seq)
                .order_by(AuditRecord.seq)
                .limit(SCAN_BATCH)
            ).all()
        for seq, action, details in rows:
            self._actions[str(action)[:64]] += 1
            if action == "login.failure":
                reason = (details or {}).get("reason")
                ok = isinstance(reason, str) and reason.replace("_", "").isalnum()
                self._login_failures[reason[:_REASON_MAX] if ok else "other"] += 1
            self._seq = int(seq)

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        with self._lock:
            self._scan()
            actions = dict(self._actions)
            failures = dict(self._login_failures)
            seq = self._seq
        events = CounterMetricFamily(
            "mstcrypt_audit_events", "Audit records by action (the whole log)", labels=["action"]
        )
        for action, n in sorted(actions.items()):
            events.add_metric([action], n)
        yield events
        yield _counter("mstcrypt_enrollments", "Certificate enrollments", actions.get("enroll", 0))
        yield _counter(
            "mstcrypt_logins", "Certificate logins (§7.3)", actions.get("login.success", 0)
        )
        lf = CounterMetricFamily(
            "mstcrypt_login_failures", "Refused logins by reason", labels=["reason"]
        )
        for reason, n in sorted(failures.items()):
            lf.add_metric([reason], n)
        yield lf
        yield _counter("mstcrypt_login_lockouts", "Lockouts set", actions.get("login.lockout", 0))
        yield _counter(
            "mstcrypt_revocations", "Certificate revocations", actions.get("cert.revoke", 0)
        )
        yield _gauge("mstcrypt_audit_scanned_seq", "Newest audit record counted", seq)
        bounds, cumulative, count, total = APPEND_TIMINGS.snapshot()
        yield HistogramMetricFamily(
            "mstcrypt_audit_append_seconds",
            "Audit record appends in this process, head-row lock wait included",
            buckets=[
                *((f"{b:g}", n) for b, n in zip(bounds, cumulative, strict=True)),
                ("+Inf", count),
            ],
            sum_value=total,
        )
        yield from self._gauges()
        yield _gauge(
            "mstcrypt_metrics_scrape_seconds",
            "Time this scrape took to read the store",
            time.monotonic() - started,
        )

    # -- gauges ---------------------------------------------------------------------------------
    def _gauges(self) -> Iterator[Metric]:
        now = self.kmc.clock()
        ic = IssuedCertificate
        with self.kmc.ctx.read() as s:
            head = s.get(AuditHead, 1)
            cp = s.scalars(
                select(AuditCheckpoint).order_by(AuditCheckpoint.seq.desc()).limit(1)
            ).first()
            certs = dict(
                s.execute(
                    select(ic.status, func.count()).where(ic.usage != "ca").group_by(ic.status)
                ).all()
            )
            expiring = s.scalar(
                select(func.count()).where(
                    ic.status == "active",
                    ic.usage != "ca",
                    ic.not_after <= now + _days(30),
                )
            )
            keys = dict(
                s.execute(
                    select(EncryptionKey.state, func.count()).group_by(EncryptionKey.state)
                ).all()
            )
            pending = s.scalar(select(func.count()).where(RecoveryRequest.status == "pending"))
            codes = s.scalar(
                select(func.count()).where(
                    EnrollmentCode.used_at.is_(None), EnrollmentCode.expires_at > now
                )
            )
            cas = [
                (ca.name, int(ca.revocation_seq or 0) - int(ca.crl_seq or 0))
                for ca in s.scalars(select(CertificateAuthority))
            ]
        head_seq = head.seq if head else 0
        yield _gauge("mstcrypt_audit_head_seq", "Audit records appended", head_seq)
        yield _gauge(
            "mstcrypt_audit_unsigned_records",
            "Audit records after the newest signed checkpoint",
            head_seq - (cp.seq if cp else 0),
        )
        if cp is not None:
            yield _gauge(
                "mstcrypt_audit_checkpoint_age_seconds",
                "Seconds since the newest signed audit checkpoint",
                (now - aware(cp.signed_at)).total_seconds(),
            )
        g = GaugeMetricFamily("mstcrypt_certificates", "End-entity certificates", labels=["status"])
        for status in ("active", "revoked"):
            g.add_metric([status], certs.get(status, 0))
        yield g
        yield _gauge(
            "mstcrypt_certificates_expiring_30d",
            "Active certificates expiring within 30 days",
            expiring or 0,
        )
        g = GaugeMetricFamily(
            "mstcrypt_keys", "Encryption keys by lifecycle state", labels=["state"]
        )
        for state, n in sorted(keys.items()):
            g.add_metric([str(state)], n)
        yield g
        yield _gauge(
            "mstcrypt_recovery_pending", "Recovery requests awaiting approval", pending or 0
        )
        yield _gauge(
            "mstcrypt_enrollment_codes_open",
            "Enrollment codes neither used nor expired",
            codes or 0,
        )
        age = GaugeMetricFamily(
            "mstcrypt_crl_age_seconds", "Seconds since the newest CRL's thisUpdate", labels=["ca"]
        )
        left = GaugeMetricFamily(
            "mstcrypt_crl_next_update_seconds",
            "Seconds until the newest CRL's nextUpdate (negative: overdue)",
            labels=["ca"],
        )
        queue = GaugeMetricFamily(
            "mstcrypt_crl_pending_revocations",
            "Revocations not yet on a published CRL",
            labels=["ca"],
        )
        for name, pending_revocations in cas:
            queue.add_metric([name], max(0, pending_revocations))
            try:
                pub = self.kmc.ca.current_crl(name, publish=False)
            except MstCryptError:
                continue
            age.add_metric([name], (now - aware(pub.this_update)).total_seconds())
            left.add_metric([name], (aware(pub.next_update) - now).total_seconds())
        yield age
        yield left
        yield queue


def _days(n: int) -> Any:
    from datetime import timedelta

    return timedelta(days=n)


def _counter(name: str, doc: str, value: float) -> Metric:
    m = CounterMetricFamily(name, doc)
    m.add_metric([], value)
    return m


def _gauge(name: str, doc: str, value: float) -> Metric:
    m = GaugeMetricFamily(name, doc)
    m.add_metric([], value)
    return m
