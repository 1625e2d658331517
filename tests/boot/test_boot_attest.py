"""Measured boot and remote attestation: quotes, appraisal against golden values, and
the platform endpoints with their audit records (a replayed quote, another device's
quote, a forged log and a modified boot are each refused or flagged)."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bootkit import Chain, make_chain
from sqlalchemy import select

from http_helpers import Platform, Terminal, make_kmc, platform
from mstcrypt.apps import boot
from mstcrypt.apps.boot.attest import Quote, QuoteError, appraise
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.kmc.models import AuditRecord

MODEL = "phone-x1"


def _log(ch: Chain) -> boot.EventLog:
    with ch.verify() as r:
        return r.log


# --- quote and appraisal, no platform -----------------------------------------------


def test_quote_round_trip_and_hostile_bytes() -> None:
    k = SM2PrivateKey.generate()
    q = Quote.create(os.urandom(32), os.urandom(32), "1a2b", sign=k.sign)
    assert Quote.parse(q.raw) == q
    q.verify(k.public_key())
    with pytest.raises(QuoteError) as ei:
        q.verify(SM2PrivateKey.generate().public_key())
    assert ei.value.reason == "bad-signature"
    for bad in (
        b"",
        q.raw[:-1],
        q.raw + b"\0",
        b"\x88" + q.raw[1:],
        q.raw[:8] + b"\x02" + q.raw[9:],
    ):
        with pytest.raises(QuoteError) as ei:
            Quote.parse(bad)
        assert ei.value.reason == "malformed"
    bad_serial = bytearray(q.raw)
    bad_serial[74] = ord("G")
    with pytest.raises(QuoteError):
        Quote.parse(bytes(bad_serial))


def test_appraise_verdicts(tmp_path: Path) -> None:
    ch = make_chain(tmp_path)
    log = _log(ch)
    k = SM2PrivateKey.generate()
    nonce = os.urandom(32)
    q = Quote.create(nonce, log.pcr, "ab", sign=k.sign)
    golden = {e.stage: {e.digest} for e in log.events}
    kw: dict[str, Any] = {"public_key": k.public_key(), "nonce": nonce, "serial": "ab"}
    v = appraise(q, log.events, golden=golden, **kw)
    assert v.trusted and v.status == "trusted" and v.reasons == ()
    # an extra golden stage that was not measured, an unknown stage, no golden values
    v = appraise(q, log.events, golden={**golden, "apps": {bytes(32)}}, **kw)
    assert not v.trusted and v.reasons == ("stage apps was not measured",)
    v = appraise(q, log.events, golden={s: d for s, d in golden.items() if s != "kernel"}, **kw)
    assert "stage kernel is not part of this model's boot chain" in v.reasons
    assert not appraise(q, log.events, golden={}, **kw).trusted
    # quote-level refusals
    for change, reason in (
        ({"nonce": os.urandom(32)}, "nonce"),
        ({"serial": "ac"}, "device"),
        ({"public_key": SM2PrivateKey.generate().public_key()}, "bad-signature"),
    ):
        with pytest.raises(QuoteError) as ei:
            appraise(q, log.events, golden=golden, **{**kw, **change})
        assert ei.value.reason == reason
    with pytest.raises(QuoteError) as ei:  # a log edited to look golden
        appraise(q, log.events[:-1], golden=golden, **kw)
    assert ei.value.reason == "log"


# --- the platform ---------------------------------------------------------------------


@pytest.fixture
def plat(database_url: str, tmp_path: Path) -> Iterator[Platform]:
    kmc = make_kmc(database_url)
    gen = platform(kmc, tmp_path / "data")
    try:
        yield next(gen)
    finally:
        gen.close()
        kmc.db.dispose()


def _serial(p: Platform, t: Terminal) -> str:
    return str(p.c.get("/login/session", headers=t.headers).json()["serial"])


def _attest(
    p: Platform,
    t: Terminal,
    log: boot.EventLog,
    *,
    key: SM2PrivateKey | None = None,
    serial: str | None = None,
    events: list[dict[str, str]] | None = None,
) -> tuple[Any, bytes]:
    r = p.c.post("/boot/challenge", headers=t.headers)
    assert r.status_code == 200, r.text
    nonce = bytes.fromhex(r.json()["nonce"])
    q = Quote.create(nonce, log.pcr, serial or _serial(p, t), sign=(key or t.key).sign)
    body = {
        "quote": base64.b64encode(q.raw).decode(),
        "events": events or [e.to_json() for e in log.events],
    }
    return p.c.post("/boot/attest", json=body, headers=t.headers), q.raw


def _audit(p: Platform) -> list[AuditRecord]:
    with p.kmc.db.tx() as s:
        return [
            r
            for r in s.scalars(select(AuditRecord).order_by(AuditRecord.seq))
            if r.action.startswith("boot.")
        ]


def test_platform_attestation(plat: Platform, tmp_path: Path) -> None:
    p = plat
    alice, bob = p.terminal("alice"), p.terminal("bob")
    ch = (
        make_chain(tmp_path / "c", versions=(1, 1, 1)) if (tmp_path / "c").mkdir() is None else None
    )
    assert ch is not None
    good = _log(ch)
    # an unregistered model: the platform cannot vouch for the boot
    r, _ = _attest(p, alice, good)
    assert r.status_code == 200 and r.json()["status"] == "modified"
    assert "no golden values" in r.json()["reasons"][0]
    for e in good.events:
        r = p.c.post(
            "/admin/boot/golden",
            json={"model": MODEL, "stage": e.stage, "digest": e.digest.hex()},
            headers=p.auth(),
        )
        assert r.status_code == 200, r.text
    from mstcrypt.apps.boot.service import AttestationService

    assert AttestationService(p.kmc.ctx).golden(MODEL) == {e.stage: {e.digest} for e in good.events}
    for owner in ("alice", "bob"):
        r = p.c.post("/admin/boot/devices", json={"owner": owner, "model": MODEL}, headers=p.auth())
        assert r.status_code == 200, r.text
    r, raw = _attest(p, alice, good)
    assert r.status_code == 200 and r.json()["status"] == "trusted", r.text
    # the same quote again: refused (single-use nonce) and audited as rejected
    body = {"quote": base64.b64encode(raw).decode(), "events": [e.to_json() for e in good.events]}
    r = p.c.post("/boot/attest", json=body, headers=alice.headers)
    assert r.status_code == 403 and "already used" in r.json()["detail"]
    # bob's quote (his key, his serial) sent on alice's session; bob's key with alice's serial
    r, _ = _attest(p, alice, good, key=bob.key, serial=_serial(p, bob))
    assert r.status_code == 403 and "another device" in r.json()["detail"]
    r, _ = _attest(p, alice, good, key=bob.key)
    assert r.status_code == 403 and "signature" in r.json()["detail"]
    # a modified kernel: validly signed by the kernel key, but not a golden value
    m = boot.Manifest.parse(ch.manifests["kernel"])
    ch.images["vmlinuz"].write_bytes(b"patched kernel")
    descs = [
        boot.HashDescriptor.of("vmlinuz", b"patched kernel")
        if getattr(d, "name", "") == "vmlinuz"
        else d
        for d in m.descriptors
    ]
    ch.resign("kernel", descriptors=descs)
    modified = _log(ch)
    r, _ = _attest(p, bob, modified)
    assert r.status_code == 200 and r.json()["status"] == "modified"
    assert [x for x in r.json()["reasons"] if "kernel booted unapproved code" in x]
    # the modified boot's quote with the golden event log: the log does not replay
    r, _ = _attest(p, bob, modified, events=[e.to_json() for e in good.events])
    assert r.status_code == 403 and "does not replay" in r.json()["detail"]
    # hostile bodies
    for body in (
        {"quote": "!!", "events": []},
        {"quote": "AAAA", "events": []},
        {"quote": base64.b64encode(raw).decode(), "events": [{"stage": "x"}]},
    ):
        r = p.c.post("/boot/attest", json=body, headers=bob.headers)
        assert r.status_code in (400, 403, 422), r.text
    # auditors see the verdicts; the audit chain has them, alarms flagged
    r = p.c.get("/admin/boot/attestations", params={"owner": "alice"}, headers=p.auth())
    statuses = [a["status"] for a in r.json()["attestations"]]
    assert sorted(statuses) == ["modified", "rejected", "rejected", "rejected", "trusted"]
    recs = _audit(p)
    actions = [a.action for a in recs]
    assert actions.count("boot.attest.trusted") == 1 and actions.count("boot.attest.modified") == 2
    assert actions.count("boot.attest.rejected") >= 5
    assert all(
        a.details["alarm"]
        for a in recs
        if a.action in ("boot.attest.modified", "boot.attest.rejected")
    )
    assert "boot.golden.add" in actions and "boot.device.model" in actions
    r = p.c.get("/admin/audit/verify", headers=p.auth())
    assert r.status_code in (200, 403)


def test_admin_inputs_validated(plat: Platform) -> None:
    p = plat
    for body in (
        {"model": "Bad Model", "stage": "kernel", "digest": "00" * 32},
        {"model": "m", "stage": "kernel", "digest": "zz" * 32},
    ):
        r = p.c.post("/admin/boot/golden", json=body, headers=p.auth())
        assert r.status_code == 400, r.text
