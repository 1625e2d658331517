"""Revocation and CRL publication at 1k / 10k / 100k revoked certificates.

    .venv/bin/python bench/bench_crl.py [--sizes 1000,10000,100000] [--revocations 20]
                                        [--database-url URL] [--reference-max 10000]

The store is filled with N revoked certificates through the models (rows with their
cached CRL entry DER and revocation sequence numbers, as revocations leave them; the
certificate DER of these rows is a placeholder, since nothing here reads it), then at each
size:

* ``revoke``: real revocations (``Kmc.revoke_certificate`` of enrolled terminals, pairs
  included, holders' keys rotated): CPU per revocation, and the longest write
  transaction one held (on SQLite the write lock, on PostgreSQL the CA row lock);
* ``publish``: one publication of the complete and delta CRLs: CPU to read, assemble and
  sign outside any transaction, and the longest write transaction it held (lease,
  store, pruning);
* ``scan`` / ``strict``: a relying party's cost per new CRL — the status index
  (:class:`~mstcrypt.pki.CrlIndex`) against the strict parse (:class:`~mstcrypt.pki.CRL`);
* reference, same run: ``old rebuild`` — what the previous design did inside every
  revocation's write transaction (the whole CRL built with asn1crypto and re-parsed), up
  to ``--reference-max`` entries (it is ~1 ms per entry).

Times are CPU seconds of this process (``time.process_time``, as ``openssl speed``)
except the write-lock column, which is wall time between BEGIN and COMMIT. Targets
(issue 11): revocation cost independent of N; no write transaction over 50 ms.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, insert, select, update

from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.kmc.db import Database
from mstcrypt.kmc.models import CertificateAuthority, IssuedCertificate
from mstcrypt.kmc.publisher import CrlPolicy
from mstcrypt.kmc.service import Kmc
from mstcrypt.module.sscc import SoftKeyStore
from mstcrypt.pki import CRL, CrlIndex, RevokedEntry, build_csr, name
from mstcrypt.pki.crl_der import entry_der

REASONS = ("superseded", "cessation_of_operation", "affiliation_changed", "unspecified")


class WriteTimer:
    """Wall time of every write transaction (session begin → after commit/rollback) of
    the KMC's read-write sessions; snapshots (read-only) are not counted."""

    def __init__(self, db: Database) -> None:
        self._t0: dict[int, float] = {}
        self.holds: list[float] = []
        maker = db._sessions
        event.listen(maker, "after_begin", self._begin)
        event.listen(maker, "after_commit", self._end)
        event.listen(maker, "after_rollback", self._end)

    def _begin(self, session: Any, _tx: Any, _conn: Any) -> None:
        self._t0.setdefault(id(session), time.perf_counter())

    def _end(self, session: Any) -> None:
        t0 = self._t0.pop(id(session), None)
        if t0 is not None:
            self.holds.append(time.perf_counter() - t0)

    @contextmanager
    def window(self) -> Iterator[list[float]]:
        start = len(self.holds)
        out: list[float] = []
        yield out
        out.extend(self.holds[start:])


def populate(kmc: Kmc, upto: int, template_der: bytes) -> None:
    """Add revoked rows until the issuing CA has ``upto`` revocations (entry DER cached,
    sequence numbers in order), in batches of 5,000 rows per transaction."""
    with kmc.db.snapshot() as s:
        ca = s.scalar(select(CertificateAuthority).where(CertificateAuthority.name == "issuing"))
        assert ca is not None
        have, ca_id = int(ca.revocation_seq), ca.id
    now = datetime.now(UTC).replace(microsecond=0)
    seq = have
    while seq < upto:
        batch = []
        for _ in range(min(5000, upto - seq)):
            seq += 1
            serial = (int.from_bytes(secrets.token_bytes(16), "big") >> 1) or 1
            reason = REASONS[seq % len(REASONS)]
            at = now - timedelta(seconds=seq)
            batch.append(
                {
                    "serial": f"{serial:x}",
                    "ca_id": ca_id,
                    "subject": f"CN=bench-{seq}",
                    "owner": f"bench-{seq}",
                    "profile": "device_sign",
                    "usage": "sign",
                    "key_id": None,
                    "der": template_der,
                    "fingerprint": secrets.token_hex(32),
                    "not_before": at,
                    "not_after": at + timedelta(days=365),
                    "status": "revoked",
                    "revoked_at": at,
                    "revocation_reason": reason,
                    "issued_at": at,
                    "pair_serial": None,
                    "revocation_seq": seq,
                    "crl_entry": entry_der(serial, at, reason),
                }
            )
        with kmc.db.tx() as s:
            s.execute(insert(IssuedCertificate), batch)
            s.execute(
                update(CertificateAuthority)
                .where(CertificateAuthority.id == ca_id)
                .values(revocation_seq=seq)
            )


def enroll(kmc: Kmc, owner: str) -> Any:
    key = SM2PrivateKey.generate()
    code, _ = kmc.create_enrollment_code(owner=owner, subject={"CN": owner}, actor="bench")
    return kmc.enroll(code, build_csr(name(CN=owner), key.public_key(), key.sign).der)


def ms(x: float) -> str:
    return f"{x * 1000:8.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--revocations", type=int, default=20)
    ap.add_argument("--database-url")
    ap.add_argument("--reference-max", type=int, default=10000)
    args = ap.parse_args()
    sizes = sorted(int(x) for x in args.sizes.split(","))
    url = args.database_url or f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    kmc = Kmc(
        Database(url),
        SoftKeyStore(secrets.token_bytes(32)),
        crl_base_url="http://bench",
        crl_policy=CrlPolicy(max_delay=3600.0),  # publish only when the bench says so
    )
    kmc.create_schema()
    kmc.init_ca(actor="bench")
    timer = WriteTimer(kmc.db)
    terminals = [enroll(kmc, f"t{i}") for i in range(args.revocations * len(sizes))]
    template = terminals[0].sign_certificate.der
    with kmc.db.snapshot() as s:
        ca_row = s.scalar(
            select(CertificateAuthority).where(CertificateAuthority.name == "issuing")
        )
    issuer = kmc.ca.issuer(ca_row)
    backend = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
    print(f"bench_crl on {backend}; {args.revocations} revocations per size; CPU ms")
    head = (
        f"{'revoked':>8} | {'revoke':>8} {'rev max':>8} | {'publish':>8} {'read':>8} "
        f"{'store':>8} {'pub max':>8} | {'CRL KiB':>8} {'delta B':>8} | {'scan':>8} "
        f"{'strict':>8} | {'old rebuild':>11}"
    )
    print(head)
    print("-" * len(head))
    rows = []
    for i, n in enumerate(sizes):
        populate(kmc, n, template)
        kmc.crl_publisher.publish("issuing", force=True)  # the delta base at n
        # real revocations
        cpu, holds = [], []
        for t in terminals[i * args.revocations : (i + 1) * args.revocations]:
            with timer.window() as w:
                c0 = time.process_time()
                kmc.revoke_certificate(
                    f"{t.sign_certificate.serial:x}", reason="key_compromise", actor="bench"
                )
                cpu.append(time.process_time() - c0)
            holds.append(max(w))
        # one publication of what they revoked
        with timer.window() as w:
            c0 = time.process_time()
            pub = kmc.crl_publisher.publish("issuing", force=True)
            pub_cpu = time.process_time() - c0
        assert pub is not None
        pub_hold = max(w)
        complete, delta = kmc.crl(), kmc.delta_crl()
        c0 = time.process_time()
        index = CrlIndex.from_der(complete)
        scan = time.process_time() - c0
        assert len(index) == pub.entries
        strict = old = float("nan")
        if n <= args.reference_max:
            c0 = time.process_time()
            parsed = CRL.from_der(complete)
            strict = time.process_time() - c0
            entries = [RevokedEntry(sn, e.revoked_at, e.reason) for sn, e in parsed.entries.items()]
            c0 = time.process_time()
            issuer.crl(number=10**6, entries=entries)
            old = time.process_time() - c0
        rows.append((n, statistics.median(cpu), max(holds), pub_cpu, pub, pub_hold))
        print(
            f"{pub.entries:>8} | {ms(statistics.median(cpu))} {ms(max(holds))} | "
            f"{ms(pub_cpu)} {ms(pub.read_seconds)} {ms(pub.store_seconds)} {ms(pub_hold)} | "
            f"{len(complete) / 1024:8.0f} {len(delta):>8} | {ms(scan)} {ms(strict)} | "
            f"{ms(old):>11}"
        )
    print()
    print(
        "revoke: median CPU of one revocation (pair, keys, audit); rev max / pub max: the "
        "longest write transaction (wall); publish: CPU of one publication (read + "
        "assemble + 2 signatures + store); read / store: wall of the snapshot read and of "
        "the storing transaction; scan / strict: CPU to index / strictly parse the complete "
        "CRL; old rebuild: the previous design's per-revocation rebuild (asn1crypto)."
    )
    growth = rows[-1][1] / rows[0][1] if rows[0][1] else float("nan")
    worst = max(max(r[2], r[5]) for r in rows)
    print(
        f"revocation CPU {sizes[0]} -> {sizes[-1]}: x{growth:.2f}; "
        f"longest write transaction {worst * 1000:.1f} ms (target <= 50 ms)"
    )
    kmc.db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
