"""SM2 verification with precomputed tables (crypto/_fixedbase.py) against libcrypto's own
SM2 verification (EVP, forced with MSTCRYPT_SM2_VERIFY=evp): the same verdict for valid,
tampered, foreign-key and random signatures, the t = 0 edge, every DER form, after table
eviction, and from several threads while tables are being built."""

from __future__ import annotations

import secrets
import threading

import pytest

from mstcrypt.crypto import _fixedbase
from mstcrypt.crypto.curve import N
from mstcrypt.crypto.sm2 import (
    SignatureEncoding,
    SM2PrivateKey,
    SM2PublicKey,
    signature_from_raw,
)
from mstcrypt.errors import SignatureFormatError, VerificationError

pytestmark = pytest.mark.skipif(
    not _fixedbase.enabled(), reason="this libcrypto has no low-level EC API"
)


def _verdict(pub: SM2PublicKey, sig: bytes, msg: bytes, **kw: object) -> str:
    try:
        pub.verify(sig, msg, **kw)  # type: ignore[arg-type]
    except SignatureFormatError:
        return "format"
    except VerificationError:
        return "bad"
    return "ok"


def _both(
    monkeypatch: pytest.MonkeyPatch, pub: SM2PublicKey, sig: bytes, msg: bytes, **kw: object
) -> str:
    """The verdict of the table path, checked equal to libcrypto's EVP verdict."""
    fast = _verdict(pub, sig, msg, **kw)
    with monkeypatch.context() as m:
        m.setenv("MSTCRYPT_SM2_VERIFY", "evp")
        assert not _fixedbase.enabled()
        evp = _verdict(SM2PublicKey.from_bytes(pub.to_bytes()), sig, msg, **kw)
    assert fast == evp, (fast, evp)
    return fast


def test_same_verdicts_as_libcrypto(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [SM2PrivateKey.generate() for _ in range(6)]
    before = _fixedbase.stats()
    for i in range(120):
        k = keys[i % len(keys)]
        msg = secrets.token_bytes(i % 70)
        sig = k.sign(msg)
        assert _both(monkeypatch, k.public_key(), sig, msg) == "ok"
        assert _both(monkeypatch, k.public_key(), sig, msg + b"\x00") == "bad"
        assert _both(monkeypatch, keys[(i + 1) % len(keys)].public_key(), sig, msg) == "bad"
        uid = b"ALICE123@YAHOO.COM"
        assert _both(monkeypatch, k.public_key(), k.sign(msg, signer_id=uid), msg) == "bad"
    after = _fixedbase.stats()
    # the repeated keys went through their own tables, the first uses through G's
    assert after["table"] - before["table"] >= 300
    assert after["built"] - before["built"] >= len(keys) or after["cached"] >= len(keys)


def test_random_and_edge_signatures(monkeypatch: pytest.MonkeyPatch) -> None:
    k = SM2PrivateKey.generate()
    pub, msg = k.public_key(), b"edge cases"
    good = k.sign(msg, encoding=SignatureEncoding.RAW)
    r, s = int.from_bytes(good[:32], "big"), int.from_bytes(good[32:], "big")
    cases = [
        (r, s),
        (s, r),
        (r, N - s),  # the "negated" s that is valid for some other schemes
        (N - 1, 1),  # t = r + s = n: t = 0 must be refused (B5)
        (1, N - 1),
        (r, (N - r) % N or 1),
        (1, 1),
        (N - 1, N - 1),
    ] + [(secrets.randbelow(N - 1) + 1, secrets.randbelow(N - 1) + 1) for _ in range(40)]
    for rr, ss in cases:
        raw = rr.to_bytes(32, "big") + ss.to_bytes(32, "big")
        want = "ok" if (rr, ss) == (r, s) else "bad"
        for _ in range(2):  # first use (G table only), then the key's table
            assert _both(monkeypatch, pub, signature_from_raw(raw), msg) == want
            assert _both(monkeypatch, pub, raw, msg, encoding="raw") == want


def test_malformed_der_is_a_format_error_on_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    k = SM2PrivateKey.generate()
    msg = b"der"
    der = k.sign(msg)
    r_len = der[3]
    broken = [
        der + b"\x00",  # trailing byte
        der[:-1],  # truncated
        b"\x31" + der[1:],  # SET, not SEQUENCE
        der[:2] + b"\x02" + bytes([r_len + 1]) + b"\x00" + der[4:],  # non-minimal r
        b"\x30\x06\x02\x01\x00\x02\x01\x01",  # r = 0
        b"\x30\x06\x02\x01\x01\x02\x01\x81",  # s negative
        b"\x30\x81" + bytes([len(der) - 2]) + der[2:],  # long-form length
    ]
    for bad in broken:
        assert _both(monkeypatch, k.public_key(), bad, msg) in ("format", "bad"), bad.hex()
        with pytest.raises(VerificationError):
            k.public_key().verify(bad, msg)
    n_bytes = N.to_bytes(32, "big")
    over = b"\x30\x26\x02\x21\x00" + n_bytes + b"\x02\x01\x01"  # r = n
    assert _both(monkeypatch, k.public_key(), over, msg) == "format"


def test_parse_der_signature_is_strict() -> None:
    k = SM2PrivateKey.generate()
    for _ in range(50):
        der = k.sign(secrets.token_bytes(8))
        rs = _fixedbase.parse_der_signature(der)
        assert (
            rs is not None
            and signature_from_raw(rs[0].to_bytes(32, "big") + rs[1].to_bytes(32, "big")) == der
        )
    assert _fixedbase.parse_der_signature(b"\x30\x00") is None
    assert _fixedbase.parse_der_signature(b"\x30\x06\x02\x01\x01\x02\x01\x00") is None


def test_eviction_keeps_verifying(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_fixedbase, "TABLES", 3)
    keys = [SM2PrivateKey.generate() for _ in range(8)]
    before = _fixedbase.stats()["evicted"]
    for rnd in range(4):
        for k in keys:
            msg = f"round {rnd}".encode()
            k.public_key().verify(k.sign(msg), msg)
            with pytest.raises(VerificationError):
                k.public_key().verify(k.sign(msg), msg + b"!")
    assert _fixedbase.stats()["evicted"] > before
    assert _fixedbase.stats()["cached"] <= 3


def test_threads_share_tables_safely() -> None:
    keys = [SM2PrivateKey.generate() for _ in range(4)]
    sigs = [(k.public_key().to_bytes(), k.sign(b"m%d" % i)) for i, k in enumerate(keys)]
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for j in range(60):
                i = (seed + j) % len(keys)
                pub = SM2PublicKey.from_bytes(sigs[i][0])
                pub.verify(sigs[i][1], b"m%d" % i)
                with pytest.raises(VerificationError):
                    pub.verify(sigs[i][1], b"m%d" % (i + 1))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
