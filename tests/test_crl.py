"""Revocation at scale: revocations mark rows, the CRL publisher publishes in batches (at
once for key compromise) from cached entry DER outside the write transaction, exactly
one publisher at a time, pruning, delta CRLs, the CRL index for status lookups, HTTP
caching (ETag / 304) and the client's and login server's caches."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text, update

from conftest import OpenSSL
from http_helpers import Platform, platform
from mstcrypt.apps.login.service import LoginService
from mstcrypt.client import Client
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import DecodeError, PolicyError, UnsupportedError
from mstcrypt.kmc import publisher as publisher_mod
from mstcrypt.kmc.db import Database
from mstcrypt.kmc.models import (
    AuditRecord,
    CertificateAuthority,
    CrlRecord,
    DeltaCrlRecord,
    IssuedCertificate,
    Lease,
)
from mstcrypt.kmc.publisher import CrlPolicy, CrlPublisher
from mstcrypt.kmc.service import Kmc
from mstcrypt.module.sscc import SoftKeyStore
from mstcrypt.pki import (
    CRL,
    Certificate,
    CertificateError,
    CrlIndex,
    Issuer,
    Profile,
    RevokedEntry,
    build_crl,
    build_csr,
    name,
    validate_path,
)
from mstcrypt.pki.crl_der import entry_der, sign_tbs_cert_list, tbs_cert_list_der
from mstcrypt.server.config import Settings
from platform_helpers import InvariantChecker, master_key

BASE = "http://kmc.test"


def new_kmc(url: str, **policy: Any) -> Kmc:
    kmc = Kmc(
        Database(url), SoftKeyStore(master_key()), crl_base_url=BASE, crl_policy=CrlPolicy(**policy)
    )
    kmc.create_schema()
    return kmc


@pytest.fixture
def kmc(database_url: str) -> Iterator[Kmc]:
    """A KMC that batches revocations for an hour (so only what a test publishes is)."""
    k = new_kmc(database_url, max_delay=3600)
    k.init_ca(actor="test")
    yield k
    k.db.dispose()


def enroll(kmc: Kmc, owner: str) -> Any:
    key = SM2PrivateKey.generate()
    code, _ = kmc.create_enrollment_code(owner=owner, subject={"CN": owner}, actor="op")
    return kmc.enroll(code, build_csr(name(CN=owner), key.public_key(), key.sign).der)


def revoke(kmc: Kmc, cert: Certificate, reason: str = "superseded") -> list[str]:
    return kmc.revoke_certificate(f"{cert.serial:x}", reason=reason, actor="op")


def ca_row(kmc: Kmc, name_: str = "issuing") -> CertificateAuthority:
    with kmc.db.snapshot() as s:
        row = s.scalar(select(CertificateAuthority).where(CertificateAuthority.name == name_))
        assert row is not None
        return row


def stored(kmc: Kmc, model: Any = CrlRecord, ca_id: int = 2) -> list[int]:
    with kmc.db.snapshot() as s:
        return list(s.scalars(select(model.number).where(model.ca_id == ca_id).order_by("number")))


def audit_count(kmc: Kmc, action: str) -> int:
    with kmc.db.snapshot() as s:
        q = select(func.count()).select_from(AuditRecord).where(AuditRecord.action == action)
        return int(s.scalar(q) or 0)


# ------------------------------------------------------------ building from cached DER ---
def _issuer() -> tuple[Issuer, SM2PrivateKey]:
    key = SM2PrivateKey.generate()
    return Issuer.self_signed(name(C="CN", O="t", CN="CRL CA"), key.public_key(), key.sign), key


def test_assembled_crl_is_byte_equal_to_the_asn1crypto_builder() -> None:
    issuer, key = _issuer()
    now = datetime.now(UTC).replace(microsecond=0)
    reasons = [None, "key_compromise", "superseded", "certificate_hold", "ca_compromise"]
    serials = [1, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, (1 << 126) + 5, (1 << 159) - 1]
    serials += [int.from_bytes(os.urandom(16), "big") >> 1 for _ in range(60)]
    entries = [
        RevokedEntry(sn, now - timedelta(seconds=i * 977), reasons[i % len(reasons)])
        for i, sn in enumerate(dict.fromkeys(serials))
    ]
    entries.append(RevokedEntry(3, datetime(2051, 6, 1, tzinfo=UTC), None))  # GeneralizedTime
    urls = ["http://kmc.test/crl/x-delta.crl"]
    for kw in ({}, {"delta_base": 7}, {"freshest_crl_urls": urls}, {"delta_base": 300}):
        ref = issuer.crl(
            number=300,
            entries=entries,
            this_update=now,
            next_update=now + timedelta(days=1),
            **kw,  # type: ignore[arg-type]
        )
        ders = [
            entry_der(e.serial, e.revoked_at, e.reason)
            for e in sorted(entries, key=lambda e: e.serial)
        ]
        tbs = tbs_cert_list_der(
            issuer_der=issuer.certificate.subject.dump(),
            authority_key_id=issuer.certificate.subject_key_id or b"",
            number=300,
            this_update=now,
            next_update=now + timedelta(days=1),
            entries=ders,
            **kw,  # type: ignore[arg-type]
        )
        assert tbs == ref.tbs_der, kw
        ours = CRL.from_der(sign_tbs_cert_list(tbs, key.sign, key.public_key()))
        ours.verify_signature(key.public_key())
        assert ours.entries == ref.entries and ours.delta_base == ref.delta_base
    empty = issuer.crl(number=1, this_update=now, next_update=now + timedelta(hours=1))
    assert (
        tbs_cert_list_der(
            issuer_der=issuer.certificate.subject.dump(),
            authority_key_id=issuer.certificate.subject_key_id or b"",
            number=1,
            this_update=now,
            next_update=now + timedelta(hours=1),
            entries=[],
        )
        == empty.tbs_der
    )
    with pytest.raises(PolicyError):
        entry_der(0, now)
    with pytest.raises(PolicyError):
        entry_der(5, now, "no_such_reason")


def test_published_crl_equals_the_reference_builder(kmc: Kmc) -> None:
    """The publisher's CRL, rebuilt by build_crl from its own content, is the same TBS."""
    e = [enroll(kmc, f"u{i}") for i in range(3)]
    revoke(kmc, e[0].sign_certificate, "key_compromise")
    revoke(kmc, e[1].encryption_certificate, "superseded")
    kmc.publish_crls(force=True)
    issuing = kmc.chain()[0]
    for der in (kmc.crl(), kmc.delta_crl()):
        crl = CRL.from_der(der)
        crl.verify_signature(issuing.public_key)
        assert crl.next_update is not None
        key_sign = _resigner(kmc)
        rebuilt = build_crl(
            issuer=issuing,
            issuer_public_key=issuing.public_key,
            signer=key_sign,
            number=crl.number or 0,
            this_update=crl.this_update,
            next_update=crl.next_update,
            entries=list(crl.entries.values()),
            delta_base=crl.delta_base,
            freshest_crl_urls=crl.freshest_crl_urls,
        )
        assert rebuilt.tbs_der == crl.tbs_der
    complete, delta = CRL.from_der(kmc.crl()), CRL.from_der(kmc.delta_crl())
    assert complete.freshest_crl_urls == (f"{BASE}/crl/issuing-delta.crl",)
    assert not complete.is_delta and delta.is_delta and delta.number == complete.number
    assert e[0].sign_certificate.serial in complete.entries
    assert e[0].encryption_certificate.serial in complete.entries  # the pair went too
    assert e[1].encryption_certificate.serial in delta.entries


def _resigner(kmc: Kmc) -> Any:
    with kmc.db.snapshot() as s:
        row = s.scalar(select(CertificateAuthority).where(CertificateAuthority.name == "issuing"))
    return kmc.ca.issuer(row).signer


def test_interop_openssl_tongsuo_gmssl(kmc: Kmc, openssl: OpenSSL, tmp_path: Path) -> None:
    """openssl crl -text reads both; Tongsuo verifies both signatures (default SM2 ID);
    GmSSL's crlverify verifies the complete CRL (it refuses every critical CRL
    extension, so delta CRLs, by design of GmSSL)."""
    e = enroll(kmc, "alice")
    revoke(kmc, e.sign_certificate, "key_compromise")
    kmc.publish_crls()
    complete, delta = tmp_path / "c.der", tmp_path / "d.der"
    complete.write_bytes(kmc.crl())
    delta.write_bytes(kmc.delta_crl())
    ca = tmp_path / "ca.pem"
    ca.write_bytes(kmc.chain()[0].pem)
    out = openssl("crl", "-inform", "DER", "-in", str(complete), "-noout", "-text").decode()
    assert "Freshest CRL" in out and "issuing-delta.crl" in out
    assert f"{e.sign_certificate.serial:X}" in out and "Key Compromise" in out
    out = openssl("crl", "-inform", "DER", "-in", str(delta), "-noout", "-text").decode()
    assert "Delta CRL Indicator: critical" in out and f"{e.sign_certificate.serial:X}" in out
    tongsuo = os.environ.get("MSTCRYPT_TONGSUO") or shutil.which("tongsuo")
    if tongsuo and Path(tongsuo).is_file():
        for f in (complete, delta):
            p = subprocess.run(
                [
                    tongsuo,
                    "crl",
                    "-inform",
                    "DER",
                    "-in",
                    str(f),
                    "-CAfile",
                    str(ca),
                    "-noout",
                    "-verify",
                ],
                capture_output=True,
                check=False,
            )
            assert p.returncode == 0 and b"verify OK" in p.stdout + p.stderr, p.stderr
    gmssl = os.environ.get("MSTCRYPT_GMSSL") or shutil.which("gmssl")
    if gmssl and Path(gmssl).is_file():
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = (
            f"{Path(gmssl).resolve().parent.parent / 'lib'}:{env.get('LD_LIBRARY_PATH', '')}"
        )
        p = subprocess.run(
            [gmssl, "crlverify", "-in", str(complete), "-cacert", str(ca)],
            capture_output=True,
            env=env,
            check=False,
        )
        assert p.returncode == 0 and b"success" in p.stdout + p.stderr, p.stderr
    if not (tongsuo or gmssl):
        pytest.skip("neither Tongsuo nor GmSSL found (MSTCRYPT_TONGSUO / MSTCRYPT_GMSSL)")


# ------------------------------------------------------------------- revocation ----------
def test_revocation_marks_rows_and_defers_the_crl(kmc: Kmc) -> None:
    e = enroll(kmc, "alice")
    number = ca_row(kmc).crl_number
    before = audit_count(kmc, "crl.publish")
    revoke(kmc, e.sign_certificate)
    ca = ca_row(kmc)
    assert ca.crl_number == number and ca.revocation_seq == ca.crl_seq + 1
    assert ca.crl_due_at is not None
    with kmc.db.snapshot() as s:
        row = s.get(IssuedCertificate, f"{e.sign_certificate.serial:x}")
        assert (
            row is not None and row.status == "revoked" and row.revocation_seq == ca.revocation_seq
        )
        assert row.crl_entry == entry_der(
            e.sign_certificate.serial, row.revoked_at.replace(tzinfo=UTC), "superseded"
        )
    # not due for an hour: the served CRL is the old one, and nothing was published
    assert CRL.from_der(kmc.crl()).number == number
    assert kmc.publish_crls() == [] and audit_count(kmc, "crl.publish") == before
    assert kmc.crl_publisher.pending()["pending"] == 1
    # forced: one publication lists it
    (pub,) = [p for p in kmc.publish_crls(force=True) if p.ca == "issuing"]
    assert pub.number == number + 1 and pub.entries >= 1
    assert CRL.from_der(kmc.crl()).is_revoked(e.sign_certificate.serial)
    assert ca_row(kmc).crl_due_at is None and kmc.crl_publisher.pending()["pending"] == 0


def test_batched_revocations_make_one_crl(database_url: str) -> None:
    kmc = new_kmc(database_url, max_delay=0.0)
    try:
        kmc.init_ca(actor="test")
        certs = [enroll(kmc, f"u{i}").sign_certificate for i in range(4)]
        number = ca_row(kmc).crl_number
        for c in certs:
            revoke(kmc, c)  # due at once, but nothing publishes until asked
        assert ca_row(kmc).crl_number == number
        crl = CRL.from_der(kmc.crl())  # overdue: published on read, all four at once
        assert crl.number == number + 1
        assert {c.serial for c in certs} <= set(crl.entries)
        assert kmc.publish_crls() == []
    finally:
        kmc.db.dispose()


def test_key_compromise_is_published_at_once(kmc: Kmc) -> None:
    """A one-hour batching window does not delay a key compromise: it is due now, and
    the in-process publisher is woken."""
    e = enroll(kmc, "alice")
    publisher = kmc.crl_publisher
    publisher._wake.clear()
    revoke(kmc, e.sign_certificate, "key_compromise")
    assert publisher._wake.is_set()
    due = ca_row(kmc).crl_due_at
    assert due is not None and due.replace(tzinfo=UTC) <= kmc.clock()
    crl = CRL.from_der(kmc.crl())
    entry = crl.is_revoked(e.sign_certificate.serial)
    assert entry is not None and entry.reason == "key_compromise"
    assert crl.is_revoked(e.encryption_certificate.serial)  # the pair


def test_background_publisher_publishes_when_woken(kmc: Kmc) -> None:
    e = enroll(kmc, "alice")
    seen: list[Any] = []
    kmc.crl_publisher.listeners.append(seen.append)
    kmc.crl_publisher.start()
    try:
        revoke(kmc, e.sign_certificate, "key_compromise")
        deadline = time.monotonic() + 30
        while not any(p.ca == "issuing" for p in seen) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        kmc.crl_publisher.stop()
    assert any(p.ca == "issuing" and p.why == "due" for p in seen)
    with kmc.db.snapshot() as s:
        der = s.scalar(
            select(CrlRecord.der)
            .where(CrlRecord.ca_id == 2)
            .order_by(CrlRecord.number.desc())
            .limit(1)
        )
    assert CRL.from_der(der).is_revoked(e.sign_certificate.serial)


def test_revocation_in_another_instance_wakes_the_publisher(database_url: str) -> None:
    """On PostgreSQL a revocation that wants its CRL now notifies every instance
    (NOTIFY at commit), so the lease holder publishes at once although the revocation
    was made elsewhere and its own interval is two minutes; stopping the publisher
    interrupts its wait."""
    if database_url.startswith("sqlite"):
        pytest.skip("one SQLite node: its publisher is woken in-process (previous test)")
    a = new_kmc(database_url, max_delay=3600, interval=120)
    a.init_ca(actor="test")
    b = Kmc(
        Database(database_url),
        a.keystore,
        crl_base_url=BASE,
        crl_policy=CrlPolicy(max_delay=3600, interval=120),
    )
    e = enroll(a, "alice")
    seen: list[Any] = []
    b.crl_publisher.listeners.append(seen.append)
    b.crl_publisher.start()
    try:
        deadline = time.monotonic() + 30  # its first run publishes what is overdue
        while b.crl_publisher._wake_pair is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        seen.clear()
        before = stored(a)
        revoke(a, e.sign_certificate, "key_compromise")  # at A, whose publisher is not running
        deadline = time.monotonic() + 60
        while not any(p.ca == "issuing" for p in seen) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(p.ca == "issuing" and p.why == "due" for p in seen), seen
        assert max(stored(a)) > max(before)
    finally:
        t0 = time.monotonic()
        b.crl_publisher.stop()
        stopped_in = time.monotonic() - t0
        b.db.dispose()
        a.db.dispose()
    assert b.crl_publisher._thread is None and stopped_in < 30
    assert CRL.from_der(a.crl()).is_revoked(e.sign_certificate.serial)


def test_no_write_lock_while_building_and_signing(
    kmc: Kmc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the publisher assembles and signs, another transaction can write (SQLite)
    or lock the CA row (PostgreSQL): the publisher holds nothing."""
    enroll_ = enroll(kmc, "alice")
    revoke(kmc, enroll_.sign_certificate)
    real = publisher_mod.sign_tbs_cert_list
    probes: list[str] = []

    def probing(tbs: bytes, signer: Any, key: Any) -> bytes:
        if kmc.db.is_sqlite:
            path = kmc.db.url.removeprefix("sqlite:///")
            conn = sqlite3.connect(path, timeout=0.5, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("UPDATE ca SET created_at = created_at WHERE id = 2")
                conn.execute("COMMIT")
            finally:
                conn.close()
        else:
            with kmc.db.engine.connect() as conn, conn.begin():
                conn.execute(text("SELECT id FROM ca WHERE id = 2 FOR UPDATE NOWAIT"))
        probes.append("free")
        return real(tbs, signer, key)

    monkeypatch.setattr(publisher_mod, "sign_tbs_cert_list", probing)
    pub = kmc.crl_publisher.publish("issuing", force=True)
    assert pub is not None and probes == ["free", "free"]  # complete and delta
    assert pub.store_seconds >= 0 and pub.build_seconds >= 0


# ------------------------------------------------------------ one publisher at a time ----
def test_two_publishers_race(database_url: str) -> None:
    """Two instances on one database publish concurrently: CRL numbers advance by one
    per stored CRL, none is lost or duplicated, and every one is complete."""
    a = new_kmc(database_url, max_delay=0.0, keep=1000)  # no pruning: count them all
    a.init_ca(actor="test")
    b = Kmc(Database(database_url), a.keystore, crl_base_url=BASE, crl_policy=CrlPolicy(keep=1000))
    certs = [enroll(a, f"u{i}").sign_certificate for i in range(6)]
    results: list[Any] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run(k: Kmc, mine: list[Certificate]) -> None:
        try:
            start.wait()
            for c in mine:
                revoke(k, c)
                for _ in range(3):
                    results.append(k.crl_publisher.publish("issuing", force=True))
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [
            threading.Thread(target=run, args=(a, certs[:3])),
            threading.Thread(target=run, args=(b, certs[3:])),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        done = [r for r in results if r is not None]
        numbers = stored(a)
        assert numbers == list(range(1, len(numbers) + 1))
        assert sorted(p.number for p in done) == numbers[1:]  # 1 is the set-up CRL
        final = CRL.from_der(a.crl())
        assert {c.serial for c in certs} <= set(final.entries)
        InvariantChecker(a).check()
    finally:
        b.db.dispose()
        a.db.dispose()


def test_lease_excludes_a_second_publisher_until_it_expires(kmc: Kmc) -> None:
    other = CrlPublisher(kmc.ctx, kmc.ca, kmc.ca.crl_policy, holder="other-instance")
    assert other._acquire()  # the other instance is publishing (or crashed doing so)
    assert kmc.crl_publisher.publish("issuing", force=True) is None
    with kmc.db.snapshot() as s:
        lease = s.get(Lease, "crl-publisher")
        assert lease is not None and lease.holder == "other-instance"
    real = kmc.clock
    kmc.clock = lambda: real() + timedelta(seconds=kmc.ca.crl_policy.lease_ttl + 1)
    try:
        assert kmc.crl_publisher.publish("issuing", force=True) is not None
    finally:
        kmc.clock = real


def test_a_publisher_that_lost_its_lease_stores_nothing(
    kmc: Kmc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack on exclusion: an instance whose lease was taken over mid-build (it
    stalled past the lease) must not store its CRL; neither may one that lost the race
    for the CRL number."""
    before = stored(kmc)
    other = CrlPublisher(kmc.ctx, kmc.ca, kmc.ca.crl_policy, holder="thief")
    real = publisher_mod.tbs_cert_list_der

    def steal(**kw: Any) -> bytes:
        with kmc.db.tx() as s:
            s.execute(update(Lease).values(holder="thief"))
        return real(**kw)

    monkeypatch.setattr(publisher_mod, "tbs_cert_list_der", steal)
    assert kmc.crl_publisher.publish("issuing", force=True) is None
    monkeypatch.setattr(publisher_mod, "tbs_cert_list_der", real)
    assert stored(kmc) == before
    with kmc.db.tx() as s:  # the thief's lease ends
        s.execute(update(Lease).values(expires_at=datetime(1970, 1, 1, tzinfo=UTC)))

    def race(**kw: Any) -> bytes:  # the other publisher stores number n+1 first
        monkeypatch.setattr(publisher_mod, "tbs_cert_list_der", real)
        with kmc.db.tx() as s:
            s.execute(
                update(Lease).values(holder="thief", expires_at=datetime(1970, 1, 1, tzinfo=UTC))
            )
        assert other.publish("issuing", force=True) is not None
        with kmc.db.tx() as s:
            s.execute(update(Lease).values(holder=kmc.crl_publisher.holder))
        return real(**kw)

    monkeypatch.setattr(publisher_mod, "tbs_cert_list_der", race)
    assert kmc.crl_publisher.publish("issuing", force=True) is None
    assert stored(kmc) == [*before, before[-1] + 1]


# ----------------------------------------------------------------------- pruning ---------
def test_pruning_keeps_the_newest_and_the_delta_base(database_url: str) -> None:
    kmc = new_kmc(database_url, keep=3, keep_for=timedelta(0), delta_rebase=timedelta(days=30))
    try:
        kmc.init_ca(actor="test")
        for _ in range(6):
            pub = kmc.crl_publisher.publish("issuing", force=True)
            assert pub is not None
        numbers = stored(kmc)
        base = ca_row(kmc).delta_base
        assert numbers[-3:] == [5, 6, 7] and base in numbers
        assert set(numbers) == {5, 6, 7} | {base}
        assert stored(kmc, DeltaCrlRecord) == [5, 6, 7]
        delta = CRL.from_der(kmc.delta_crl())
        assert delta.delta_base == base and delta.number == 7
    finally:
        kmc.db.dispose()


def test_pruning_keeps_young_crls(database_url: str) -> None:
    kmc = new_kmc(database_url, keep=3, keep_for=timedelta(days=7))
    kmc.init_ca(actor="test")
    for _ in range(12):
        kmc.crl_publisher.publish("issuing", force=True)
    assert len(stored(kmc)) == 13  # all younger than keep_for
    kmc.db.dispose()


def test_large_crls_are_stored_in_chunks(kmc: Kmc, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CRL above the chunk size is written in chunks (one transaction each), read
    back whole, and its chunks deleted with it; chunks of a lost race are removed."""
    from mstcrypt.kmc.models import CrlChunk

    monkeypatch.setattr(publisher_mod, "CHUNK_SIZE", 200)
    certs = [enroll(kmc, f"u{i}").sign_certificate for i in range(3)]
    for c in certs:
        revoke(kmc, c)
    pub = kmc.crl_publisher.publish("issuing", force=True)
    assert pub is not None and pub.stage_seconds > 0
    with kmc.db.snapshot() as s:
        blob, inline = s.execute(
            select(CrlRecord.blob_id, CrlRecord.der).where(CrlRecord.number == pub.number)
        ).one()
        chunks = s.scalar(
            select(func.count()).select_from(CrlChunk).where(CrlChunk.blob_id == blob)
        )
    assert blob is not None and inline == b"" and chunks and chunks > 1
    kmc.crl_publisher._cache.clear()  # read back from the chunks
    crl = CRL.from_der(kmc.crl())
    assert crl.number == pub.number and {c.serial for c in certs} <= set(crl.entries)
    crl.verify_signature(kmc.chain()[0].public_key)
    # an orphan (a publisher that crashed after staging) is removed by the next pruning
    _, orphan = kmc.crl_publisher._stage(b"x" * 500)
    assert orphan is not None
    kmc.crl_publisher.publish("issuing", force=True)
    with kmc.db.snapshot() as s:
        left = select(func.count()).select_from(CrlChunk).where(CrlChunk.blob_id == orphan)
        assert s.scalar(left) == 0


# ------------------------------------------------------------------ delta CRLs ------------
def test_delta_crl_on_base(kmc: Kmc) -> None:
    """A certificate revoked after the delta base is only in the delta: validation with
    the base alone accepts it, with base + delta refuses it."""
    chain = kmc.chain()
    kmc.publish_crls(force=True)
    base = CRL.from_der(kmc.crl())
    root_crl = CRL.from_der(kmc.crl("root"))
    e = enroll(kmc, "alice")
    assert e.sign_certificate.freshest_crl_urls == (f"{BASE}/crl/issuing-delta.crl",)
    revoke(kmc, e.sign_certificate, "key_compromise")
    delta = CRL.from_der(kmc.delta_crl())
    assert delta.delta_base is not None and delta.delta_base <= (base.number or 0)
    assert e.sign_certificate.serial in delta.entries
    kw: dict[str, Any] = {"anchors": chain[1:], "intermediates": chain[:1]}
    validate_path(e.sign_certificate, crls=[base, root_crl], **kw)
    with pytest.raises(CertificateError) as exc:
        validate_path(e.sign_certificate, crls=[base, delta, root_crl], **kw)
    assert exc.value.reason == "revoked"
    # the status index gives the same answers
    ib, idl = CrlIndex.from_der(base.der), CrlIndex.from_der(delta.der)
    with pytest.raises(CertificateError) as exc:
        validate_path(e.sign_certificate, crls=[ib, idl, root_crl], **kw)
    assert exc.value.reason == "revoked"


def _world() -> tuple[Issuer, Certificate, datetime]:
    root, _ = _issuer()
    key = SM2PrivateKey.generate()
    leaf = root.issue(
        subject=name(CN="leaf"), public_key=key.public_key(), profile=Profile.DEVICE_SIGN
    )
    return root, leaf, datetime.now(UTC)


def test_validate_path_delta_rules() -> None:
    root, leaf, now = _world()
    kw: dict[str, Any] = {"anchors": [root.certificate], "key_usage": {"digital_signature"}}
    base = root.crl(number=5)
    revoked = [RevokedEntry(leaf.serial, now - timedelta(minutes=1), "key_compromise")]
    delta = root.crl(number=6, delta_base=5, entries=revoked)
    with pytest.raises(CertificateError) as exc:
        validate_path(leaf, crls=[base, delta], **kw)
    assert exc.value.reason == "revoked"
    # a delta on a newer base than any complete CRL given cannot be applied
    newer = root.crl(number=9, delta_base=8, entries=revoked)
    with pytest.raises(CertificateError) as exc:
        validate_path(leaf, crls=[base, newer], **kw)
    assert exc.value.reason == "crl_invalid" and "newer than" in str(exc.value)
    # a delta alone is not a complete CRL
    with pytest.raises(CertificateError) as exc:
        validate_path(leaf, crls=[delta], **kw)
    assert exc.value.reason == "crl_missing"
    with pytest.raises(CertificateError) as exc:
        validate_path(leaf, crls=[delta], require_revocation_check=False, **kw)
    assert exc.value.reason == "crl_missing"
    # a delta older than the complete CRL adds nothing (the complete CRL is newer)
    old_delta = root.crl(number=4, delta_base=3, entries=revoked)
    validate_path(leaf, crls=[base, old_delta], **kw)
    # a certificateHold released by removeFromCRL in a newer delta
    held = root.crl(number=10, entries=[RevokedEntry(leaf.serial, now, "certificate_hold")])
    with pytest.raises(CertificateError):
        validate_path(leaf, crls=[held], **kw)
    release = root.crl(
        number=11, delta_base=10, entries=[RevokedEntry(leaf.serial, now, "remove_from_crl")]
    )
    validate_path(leaf, crls=[held, release], **kw)
    # removeFromCRL does not undo a real revocation
    gone = root.crl(number=10, entries=revoked)
    with pytest.raises(CertificateError):
        validate_path(leaf, crls=[gone, release], **kw)
    with pytest.raises(PolicyError):
        root.crl(number=5, entries=[RevokedEntry(leaf.serial, now, "remove_from_crl")])
    with pytest.raises(PolicyError):
        root.crl(number=5, delta_base=6)


def test_forged_or_foreign_delta_is_refused() -> None:
    """Attacks: a delta CRL signed by another key under the same CA name (to revoke a
    certificate it cannot), a delta whose indicator is not critical, an expired delta."""
    root, leaf, now = _world()
    kw: dict[str, Any] = {"anchors": [root.certificate], "key_usage": {"digital_signature"}}
    base = root.crl(number=5)
    fake_key = SM2PrivateKey.generate()
    fake = Issuer.self_signed(root.certificate.subject, fake_key.public_key(), fake_key.sign)
    entries = [RevokedEntry(leaf.serial, now, "key_compromise")]
    forged = build_crl(
        issuer=root.certificate.subject,
        issuer_public_key=fake.public_key,
        signer=fake.signer,
        number=6,
        this_update=now,
        next_update=now + timedelta(days=1),
        entries=entries,
        delta_base=5,
        authority_key_id=root.certificate.subject_key_id,
    )
    with pytest.raises(CertificateError) as exc:
        validate_path(leaf, crls=[base, forged], **kw)
    assert exc.value.reason == "crl_invalid"
    with pytest.raises(CertificateError) as exc:
        validate_path(leaf, crls=[CrlIndex.from_der(base.der), CrlIndex.from_der(forged.der)], **kw)
    assert exc.value.reason == "crl_invalid"
    stale = root.crl(
        number=6,
        delta_base=5,
        this_update=now - timedelta(days=3),
        next_update=now - timedelta(days=2),
    )
    with pytest.raises(CertificateError) as exc:
        validate_path(leaf, crls=[base, stale], **kw)
    assert exc.value.reason == "crl_expired"
    # deltaCRLIndicator that is not critical: refused by both parsers
    bad = _non_critical_delta(root, root.crl(number=6, delta_base=5))
    with pytest.raises(DecodeError):
        CRL.from_der(bad)
    with pytest.raises(DecodeError):
        CrlIndex.from_der(bad)


def _non_critical_delta(issuer: Issuer, crl: CRL) -> bytes:
    """``crl`` with its deltaCRLIndicator made non-critical, re-signed by ``issuer``."""
    from asn1crypto import crl as acrl

    tbs = acrl.TbsCertList.load(crl.tbs_der)
    for ext in tbs["crl_extensions"]:
        if ext["extn_id"].dotted == "2.5.29.27":
            ext["critical"] = False
    return sign_tbs_cert_list(tbs.dump(force=True), issuer.signer, issuer.public_key)


# ------------------------------------------------------------------- the CRL index --------
def test_crl_index_matches_the_strict_parser(kmc: Kmc) -> None:
    certs = [enroll(kmc, f"u{i}") for i in range(3)]
    revoke(kmc, certs[0].sign_certificate, "key_compromise")
    revoke(kmc, certs[1].sign_certificate, "superseded")
    kmc.publish_crls(force=True)
    for der in (kmc.crl(), kmc.delta_crl(), kmc.crl("root")):
        strict, index = CRL.from_der(der), CrlIndex.from_der(der)
        assert set(index.serials()) == set(strict.entries) and len(index) == len(strict.entries)
        for sn in strict.entries:
            assert sn in index and index.is_revoked(sn) == strict.is_revoked(sn)
        assert index.is_revoked(certs[2].sign_certificate.serial) is None
        for attr in (
            "number",
            "this_update",
            "next_update",
            "authority_key_id",
            "delta_base",
            "tbs_der",
            "signature",
            "issuer_str",
            "is_delta",
        ):
            assert getattr(index, attr) == getattr(strict, attr), attr
        assert index.issued_by_name(strict.issuer)


def test_crl_index_refuses_malformed_and_tampered_crls(kmc: Kmc) -> None:
    """Attacks on the fast path: trailing bytes, truncation, a serial listed twice, a
    wrong signature algorithm, and a CRL with an entry dropped (re-framed, so the DER is
    well formed): the last only fails the signature, which validate_path checks."""
    e = enroll(kmc, "alice")
    revoke(kmc, e.sign_certificate, "key_compromise")
    der = kmc.crl()
    issuing = kmc.chain()[0]
    for bad in (der + b"\x00", der[:-1], der[:40], b"", b"\x30\x00"):
        with pytest.raises(DecodeError):
            CrlIndex.from_der(bad)
    strict = CRL.from_der(der)
    entry = entry_der(
        e.sign_certificate.serial,
        strict.entries[e.sign_certificate.serial].revoked_at,
        "key_compromise",
    )
    assert der.count(entry) == 1
    key = SM2PrivateKey.generate()
    dup_tbs = tbs_cert_list_der(
        issuer_der=issuing.subject.dump(),
        authority_key_id=issuing.subject_key_id or b"",
        number=9,
        this_update=strict.this_update,
        next_update=strict.next_update or strict.this_update + timedelta(days=1),
        entries=[entry, entry],
    )
    with pytest.raises(DecodeError, match="twice"):
        CrlIndex.from_der(sign_tbs_cert_list(dup_tbs, key.sign, key.public_key()))
    # the served CRL with the revoked entries removed, keeping its signature
    rest = [
        x
        for x in (entry_der(sn, v.revoked_at, v.reason) for sn, v in strict.entries.items())
        if x != entry
    ]
    tbs = tbs_cert_list_der(
        issuer_der=issuing.subject.dump(),
        authority_key_id=issuing.subject_key_id or b"",
        number=strict.number or 0,
        this_update=strict.this_update,
        next_update=strict.next_update or strict.this_update,
        entries=sorted(rest),
        freshest_crl_urls=strict.freshest_crl_urls,
    )
    from mstcrypt.pki.crl_der import certificate_list_der

    dropped = certificate_list_der(tbs, strict.signature)
    index = CrlIndex.from_der(dropped)
    assert e.sign_certificate.serial not in index
    chain = kmc.chain()
    with pytest.raises(CertificateError) as exc:
        validate_path(
            e.sign_certificate,
            anchors=chain[1:],
            intermediates=chain[:1],
            crls=[index, CrlIndex.from_der(kmc.crl("root"))],
        )
    assert exc.value.reason == "crl_invalid"
    sm2_sm3, other = bytes.fromhex("06082a811ccf550183 75"), bytes.fromhex("06082a811ccf550183 76")
    with pytest.raises(DecodeError, match="differs inside and outside"):
        CrlIndex.from_der(der.replace(sm2_sm3, other, 1))  # the TBS's algorithm only
    with pytest.raises(UnsupportedError):
        CrlIndex.from_der(der.replace(sm2_sm3, other))


def test_crl_index_signature_checked_once_per_key() -> None:
    root, _, now = _world()
    crl = root.crl(number=1, entries=[RevokedEntry(5, now, None)])
    index = CrlIndex.from_der(crl.der)
    calls: list[int] = []
    pub = root.public_key
    real = type(pub).verify

    def counting(self: Any, sig: bytes, data: bytes) -> None:
        calls.append(1)
        real(self, sig, data)

    try:
        type(pub).verify = counting  # type: ignore[method-assign]
        index.verify_signature(pub)
        index.verify_signature(pub)
    finally:
        type(pub).verify = real  # type: ignore[method-assign]
    assert len(calls) == 1


# ------------------------------------------------------------------- legacy rows ----------
def test_rows_revoked_before_the_migration_are_published(kmc: Kmc) -> None:
    """Rows revoked under revision 0003 have sequence 0 and no cached entry: the
    publisher writes their entries, and lists them."""
    e = enroll(kmc, "alice")
    serial = f"{e.sign_certificate.serial:x}"
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    with kmc.db.tx() as s:
        s.execute(
            update(IssuedCertificate)
            .where(IssuedCertificate.serial == serial)
            .values(
                status="revoked", revoked_at=at, revocation_reason="superseded", revocation_seq=0
            )
        )
    kmc.crl_publisher.publish("issuing", force=True)
    entry = CRL.from_der(kmc.crl()).is_revoked(e.sign_certificate.serial)
    assert entry is not None and entry.revoked_at == at and entry.reason == "superseded"
    with kmc.db.snapshot() as s:
        assert s.get(IssuedCertificate, serial).crl_entry == entry_der(
            e.sign_certificate.serial, at, "superseded"
        )  # type: ignore[union-attr]


# ------------------------------------------------------------------- invariants -----------
def test_invariant_checker_sees_broken_crl_rules(kmc: Kmc) -> None:
    e = [enroll(kmc, f"u{i}") for i in range(2)]
    revoke(kmc, e[0].sign_certificate, "key_compromise")
    kmc.publish_crls()
    checker = InvariantChecker(kmc)
    checker.check()
    revoke(kmc, e[1].sign_certificate)  # pending, due in an hour: fine
    checker.check()
    sn = f"{e[1].sign_certificate.serial:x}"

    def broken(change: Any, undo: Any, expected: str) -> None:
        with kmc.db.tx() as s:
            change(s)
        with pytest.raises(AssertionError, match=expected):
            checker.check()
        with kmc.db.tx() as s:
            undo(s)
        checker.check()

    ca = update(CertificateAuthority).where(CertificateAuthority.id == 2)
    due = ca_row(kmc).crl_due_at
    broken(
        lambda s: s.execute(ca.values(crl_due_at=None)),
        lambda s: s.execute(ca.values(crl_due_at=due)),
        "pending with no due time",
    )
    broken(
        lambda s: s.execute(ca.values(crl_due_at=datetime(2000, 1, 1, tzinfo=UTC))),
        lambda s: s.execute(ca.values(crl_due_at=due)),
        "overdue",
    )
    row = update(IssuedCertificate).where(IssuedCertificate.serial == sn)
    seq = ca_row(kmc).revocation_seq
    broken(
        lambda s: s.execute(row.values(revocation_seq=0)),
        lambda s: s.execute(row.values(revocation_seq=seq)),
        "misses revoked serials",
    )


# --------------------------------------------------------------------- HTTP ---------------
@pytest.fixture
def p(kmc: Kmc, tmp_path: Path) -> Iterator[Platform]:
    yield from platform(kmc, tmp_path / "data", crl_publisher=False)


def test_http_etag_cache_control_and_304(p: Platform) -> None:
    for path in (
        "/crl/issuing.crl",
        "/crl/issuing-delta.crl",
        "/crl/root.crl",
        "/crl/root-delta.crl",
    ):
        r = p.c.get(path)
        assert r.status_code == 200 and r.headers["content-type"] == "application/pkix-crl"
        crl = CRL.from_der(r.content)
        etag = r.headers["etag"]
        ca, kind = (
            ("root" if "root" in path else "issuing"),
            ("delta" if "delta" in path else "complete"),
        )
        assert etag == f'"{ca}-{kind}-{crl.number}"'
        assert (
            "max-age=" in r.headers["cache-control"]
            and r.headers["expires"]
            and r.headers["last-modified"]
        )
        assert crl.is_delta == ("delta" in path)
        again = p.c.get(path, headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
        assert p.c.get(path, headers={"If-None-Match": '"issuing-complete-0"'}).status_code == 200
    etag = p.c.get("/crl/issuing.crl").headers["etag"]
    _, body = p.enroll("alice")
    cert = Certificate.from_pem(body["sign_certificate"].encode())
    r = p.c.post(
        f"/admin/certificates/{cert.serial:x}/revoke",
        json={"reason": "key_compromise"},
        headers=p.auth(),
    )
    assert r.status_code == 200, r.text
    fresh = p.c.get("/crl/issuing.crl", headers={"If-None-Match": etag})
    assert fresh.status_code == 200 and fresh.headers["etag"] != etag
    assert CRL.from_der(fresh.content).is_revoked(cert.serial)
    delta = CRL.from_der(p.c.get("/crl/issuing-delta.crl").content)
    assert delta.is_revoked(cert.serial)
    r = p.c.get("/crl/other-delta.crl")
    assert r.status_code == 404


class Recorder(httpx.BaseTransport):
    """Forward to the app's TestClient transport, recording the paths and statuses."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner, self.log = inner, []  # type: ignore[var-annotated]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        r = self.inner.handle_request(request)
        self.log.append((request.url.path, r.status_code))
        return r


def test_client_caches_crls_and_fetches_deltas(p: Platform) -> None:
    rec = Recorder(p.c._transport)
    root = p.kmc.chain()[-1]
    with Client("http://testserver", anchors=[root], transport=rec) as c:
        _, body = p.enroll("alice")
        cert = Certificate.from_pem(body["sign_certificate"].encode())
        c.validate(cert)
        full = [x for x in rec.log if x[0] == "/crl/issuing.crl"]
        assert full == [("/crl/issuing.crl", 200)]
        rec.log.clear()
        c.validate(cert)  # within max-age: no CRL request at all
        assert not [x for x in rec.log if x[0].startswith("/crl/")]
        # revoked and published: after max-age the client takes the delta, not the complete CRL
        p.kmc.revoke_certificate(f"{cert.serial:x}", reason="key_compromise", actor="op")
        p.kmc.crl()  # published
        for cached in c._crls.values():
            cached.fresh_until = 0.0
        rec.log.clear()
        with pytest.raises(CertificateError) as exc:
            c.validate(cert)
        assert exc.value.reason == "revoked"
        crl_requests = [x for x in rec.log if x[0].startswith("/crl/")]
        assert ("/crl/issuing-delta.crl", 200) in crl_requests
        assert ("/crl/issuing.crl", 200) not in crl_requests
        assert ("/crl/root-delta.crl", 304) in crl_requests  # unchanged: revalidated, no body
        # explicit crl(): a conditional GET, 304 when unchanged, the same parsed object
        first = c.crl("root")
        assert c.crl("root") is first and rec.log[-1] == ("/crl/root.crl", 304)


def test_login_service_scans_each_crl_number_once(kmc: Kmc) -> None:
    kmc.publish_crls(force=True)
    svc = LoginService(kmc, server_name="login.example")
    svc.policy.crl_check_seconds = 0.0
    first = svc._crls()
    assert all(isinstance(x, CrlIndex) for x in first)
    assert svc._crls()[0] is first[0]  # same number: the same index, no reload
    e = enroll(kmc, "alice")
    revoke(kmc, e.sign_certificate, "key_compromise")
    assert svc._crls()[0] is first[0]  # a login never publishes (nor waits for it)
    kmc.crl()  # published
    # a login takes the index in hand; the refresh runs in the background
    deadline = time.monotonic() + 10
    while (second := svc._crls())[0] is first[0]:
        assert time.monotonic() < deadline, "the background refresh never came"
        time.sleep(0.01)
    assert e.sign_certificate.serial in second[0]
    assert second[1] is first[1]  # the root's CRL did not change


def test_first_logins_of_a_cold_login_service_load_the_crls_once(
    kmc: Kmc, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight logins arrive together at a login service that has loaded no CRL yet: one
    loads the CRLs, the others wait for it and take what it loaded instead of loading
    them again one after another (up to 326 ms of queueing at 1k terminals)."""
    kmc.publish_crls(force=True)
    svc = LoginService(kmc, server_name="login.example")
    loads: list[str] = []
    real = kmc.ca.current_crl

    def slow(ca: str, **kw: Any) -> Any:
        loads.append(ca)
        time.sleep(0.05)  # long enough for every login to be waiting meanwhile
        return real(ca, **kw)

    monkeypatch.setattr(kmc.ca, "current_crl", slow)
    start = threading.Barrier(8)

    def login() -> list[CrlIndex]:
        start.wait()
        return svc._crls()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: login(), range(8)))
    assert sorted(loads) == sorted(svc._CAS)  # each CA's CRL loaded once
    assert all(r[0] is results[0][0] and r[1] is results[0][1] for r in results)


# -------------------------------------------------------------------- configuration ------
def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for k, v in {
        "MSTCRYPT_CRL_INTERVAL": "2.5",
        "MSTCRYPT_CRL_MAX_DELAY": "30",
        "MSTCRYPT_CRL_LIFETIME": "7200",
        "MSTCRYPT_CRL_KEEP": "4",
        "MSTCRYPT_CRL_KEEP_SECONDS": "600",
        "MSTCRYPT_CRL_DELTA": "0",
        "MSTCRYPT_CRL_DELTA_REBASE": "3600",
        "MSTCRYPT_CRL_LEASE_SECONDS": "20",
        "MSTCRYPT_CRL_PUBLISHER": "0",
    }.items():
        monkeypatch.setenv(k, v)
    s = Settings.from_env(tmp_path)
    pol = s.crl_policy()
    assert (pol.interval, pol.max_delay, pol.keep, pol.delta, pol.lease_ttl) == (
        2.5,
        30.0,
        4,
        False,
        20.0,
    )
    assert pol.lifetime == timedelta(hours=2) and pol.keep_for == timedelta(minutes=10)
    assert pol.delta_rebase == timedelta(hours=1) and s.crl_publisher is False
    for bad in ("-1", "soon", "nan", "inf"):
        monkeypatch.setenv("MSTCRYPT_CRL_MAX_DELAY", bad)
        with pytest.raises(PolicyError, match="MSTCRYPT_CRL_MAX_DELAY"):
            Settings.from_env(tmp_path)
    monkeypatch.setenv("MSTCRYPT_CRL_MAX_DELAY", "1")
    monkeypatch.setenv("MSTCRYPT_CRL_LIFETIME", "10")
    with pytest.raises(PolicyError, match="lifetime"):
        Settings.from_env(tmp_path).crl_policy()
    with pytest.raises(PolicyError):
        CrlPolicy(interval=0)
    with pytest.raises(PolicyError):
        CrlPolicy(keep=0)


def test_no_delta_policy(database_url: str) -> None:
    kmc = new_kmc(database_url, delta=False)
    try:
        kmc.init_ca(actor="test")
        e = enroll(kmc, "alice")
        assert e.sign_certificate.freshest_crl_urls == ()
        crl = CRL.from_der(kmc.crl())
        assert crl.freshest_crl_urls == ()
        assert stored(kmc, DeltaCrlRecord) == []
        with pytest.raises(PolicyError):
            kmc.delta_crl()
    finally:
        kmc.db.dispose()


def test_cli_publish_crl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from mstcrypt.cli import app

    monkeypatch.setenv("MSTCRYPT_MASTER_KEY", master_key().hex())
    data = tmp_path / "data"
    runner = CliRunner()
    r = runner.invoke(app, ["ca", "init", "--data-dir", str(data)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["ca", "publish-crl", "--data-dir", str(data)])
    assert r.exit_code == 0 and "no CRL was due" in r.output, r.output
    r = runner.invoke(app, ["ca", "publish-crl", "--force", "--data-dir", str(data)])
    assert r.exit_code == 0 and "issuing" in r.output and "root" in r.output, r.output
    k = Settings.from_env(data).kmc()
    try:
        assert ca_row(k).crl_number == 2 and ca_row(k, "root").crl_number == 2
    finally:
        k.db.dispose()


_RACER = """
import sys
from mstcrypt.kmc.db import Database
from mstcrypt.kmc.publisher import CrlPolicy
from mstcrypt.kmc.service import Kmc
from mstcrypt.module.sscc import SoftKeyStore
kmc = Kmc(Database(sys.argv[1]), SoftKeyStore(bytes.fromhex(sys.argv[2])),
          crl_base_url="http://kmc.test", crl_policy=CrlPolicy(keep=1000))
done = 0
for _ in range(8):
    done += kmc.crl_publisher.publish("issuing", force=True) is not None
print(done)
"""


def test_two_publisher_processes_race(kmc: Kmc) -> None:
    """Two processes publishing at once on one database: the lease lets one at a time
    store, CRL numbers stay contiguous, and every publication that reported success is
    there."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, kmc.db.url, master_key().hex()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]  # (no pruning: keep=1000)
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    published = sum(int(o[0].strip()) for o in outs)
    numbers = stored(kmc)
    assert numbers == list(range(1, len(numbers) + 1)) and published == len(numbers) - 1
    assert published >= 1
    InvariantChecker(kmc).check()
