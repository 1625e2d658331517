"""The WAPI 192-bit curve, KD-HMAC and WPI, each against an independent computation:
a published key pair on the curve, a pure-Python ECDSA/ECDH reference, a by-hand
KD-HMAC chain, and WPI built block by block from SM4-ECB (tests/wapi/wapi_kit.py)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
import wapi_kit as kit

from mstcrypt.crypto import wapi192
from mstcrypt.crypto.sm3 import hmac_sm3
from mstcrypt.errors import InvalidKeyError, VerificationError
from mstcrypt.protocols.wai import SM, STANDARD, wpi
from mstcrypt.protocols.wai.errors import WpiDecodeError, WpiError, WpiMicError, WpiReplayError

# A key pair on the curve published with php-src's OpenSSL explicit-curve tests.
D = 0x8D0AC65AAEA0D6B96254C65817D4A143A9E7A03876F1A37D
QX = 0x98E07AAD50C31F9189EBE6B8B5C70E5DEE59D7A8BC344CC6
QY = 0x6109D3D96E52D0867B9D05D72D07BE5876A3D973E0E96792


# ---------------------------------------------------------------- reference curve maths
def _add(p1, p2):  # type: ignore[no-untyped-def]
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    (x1, y1), (x2, y2) = p1, p2
    P = wapi192.P
    if x1 == x2 and (y1 + y2) % P == 0:
        return None
    if p1 == p2:
        lam = (3 * x1 * x1 + wapi192.A) * pow(2 * y1, -1, P) % P
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, P) % P
    x3 = (lam * lam - x1 - x2) % P
    return (x3, (lam * (x1 - x3) - y1) % P)


def _mul(k, pt):  # type: ignore[no-untyped-def]
    out = None
    while k:
        if k & 1:
            out = _add(out, pt)
        pt = _add(pt, pt)
        k >>= 1
    return out


G = (wapi192.GX, wapi192.GY)


def test_published_key_pair() -> None:
    k = wapi192.PrivateKey.from_int(D)
    assert k.public_key().to_bytes() == b"\x04" + QX.to_bytes(24, "big") + QY.to_bytes(24, "big")
    assert _mul(D, G) == (QX, QY)
    assert _mul(wapi192.N, G) is None  # G has order n


def test_ecdsa_matches_reference_verification() -> None:
    k = wapi192.PrivateKey.from_int(D)
    msg = b"WAI access authentication request"
    sig = k.sign(msg)
    r, s = int.from_bytes(sig[:24], "big"), int.from_bytes(sig[24:], "big")
    e = int.from_bytes(hashlib.sha256(msg).digest(), "big") >> (256 - 192)
    w = pow(s, -1, wapi192.N)
    pt = _add(_mul(e * w % wapi192.N, G), _mul(r * w % wapi192.N, (QX, QY)))
    assert pt is not None and pt[0] % wapi192.N == r
    k.public_key().verify(sig, msg)
    with pytest.raises(VerificationError):
        k.public_key().verify(sig, msg + b"!")
    with pytest.raises(VerificationError):
        k.public_key().verify(sig[:-1], msg)
    with pytest.raises(VerificationError):
        k.public_key().verify(bytes(48), msg)


def test_ecdh_matches_reference() -> None:
    a = wapi192.PrivateKey.generate()
    b = wapi192.PrivateKey.from_int(D)
    x = a.exchange(b.public_key())
    assert x == b.exchange(a.public_key())
    pub = a.public_key().to_bytes()
    ref = _mul(D, (int.from_bytes(pub[1:25], "big"), int.from_bytes(pub[25:], "big")))
    assert x == ref[0].to_bytes(24, "big")


def test_bad_public_keys_refused() -> None:
    good = wapi192.PrivateKey.from_int(D).public_key().to_bytes()
    off = good[:-1] + bytes([good[-1] ^ 1])
    for bad in (off, good[:-1], b"\x02" + good[1:25], b"\x04" + bytes(48), b"\x04" + b"\xff" * 48):
        with pytest.raises(InvalidKeyError):
            wapi192.PublicKey.from_bytes(bad)
    for d in (0, wapi192.N, -1):
        with pytest.raises(InvalidKeyError):
            wapi192.PrivateKey.from_int(d)
    assert "secret" in repr(wapi192.PrivateKey.from_int(D))


# ---------------------------------------------------------------- KD-HMAC
@pytest.mark.parametrize(
    ("suite", "fn"),
    [
        (STANDARD, lambda k, d: hmac.new(k, d, hashlib.sha256).digest()),
        (SM, hmac_sm3),
    ],
)
def test_kd_hmac_chain(suite, fn) -> None:  # type: ignore[no-untyped-def]
    key, text = b"k" * 24, b"text"
    for n in (1, 16, 32, 48, 96, 100):
        assert suite.kd(key, text, n) == kit.kd_hmac(fn, key, text, n)
    # not a counter-mode KDF: the second block chains from the first
    first = fn(key, text)
    assert suite.kd(key, text, 64)[32:] == fn(key, first)


def test_key_hierarchy_labels() -> None:
    x, n_ae, n_asue = bytes(range(24)), b"\x01" * 32, b"\x02" * 32
    bk, first_n_ae = STANDARD.derive_bk(x, n_ae, n_asue)
    raw = kit.kd_hmac(
        lambda k, d: hmac.new(k, d, hashlib.sha256).digest(),
        x,
        n_ae + n_asue + b"base key expansion for key and additional nonce",
        48,
    )
    assert bk == raw[:16] and first_n_ae == hashlib.sha256(raw[16:]).digest()
    addid = bytes(12)
    usk = STANDARD.derive_usk(bk, addid, n_ae, n_asue)
    raw = kit.kd_hmac(
        lambda k, d: hmac.new(k, d, hashlib.sha256).digest(),
        bk,
        addid + n_ae + n_asue + b"pairwise key expansion for unicast and additional keys and nonce",
        96,
    )
    assert (usk.uek, usk.uck, usk.mak, usk.kek) == (raw[:16], raw[16:32], raw[32:48], raw[48:64])
    assert usk.next_n_ae == hashlib.sha256(raw[64:]).digest()
    assert "secret" in repr(usk)


# ---------------------------------------------------------------- WPI
EK, CK = bytes(range(16)), bytes(range(16, 32))
HDR = wpi.Dot11Header(
    fc=b"\x88\x42",  # QoS data, from-DS, protected
    addr1=bytes.fromhex("020000000002"),
    addr2=bytes.fromhex("020000000001"),
    addr3=bytes.fromhex("020000000001"),
    seq_ctl=b"\x35\x12",
    qos=b"\x05\x00",
)


def test_pseudo_header_layout() -> None:
    ph = wpi.pseudo_header(HDR, 1, 0x0203)
    # FC: subtype bits cleared, retry/pm/more-data cleared, protected set
    assert ph[:2] == bytes([0x88 & ~0x70, 0x40 | (0x42 & ~0x38)])
    assert ph[2:14] == HDR.addr1 + HDR.addr2
    assert ph[14:16] == b"\x05\x00"  # fragment number only
    assert ph[16:22] == HDR.addr3 and ph[22:28] == bytes(6)
    assert ph[28:30] == b"\x05\x00" and ph[30:32] == b"\x01\x00" and ph[32:] == b"\x02\x03"


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 100, 1500])
def test_wpi_matches_independent_construction(size: int) -> None:
    data = bytes((i * 7) & 0xFF for i in range(size))
    tx = wpi.WpiSender(EK, CK, 1, unicast=True, from_ae=True)
    body = tx.protect_body(HDR, data)
    pn = wpi.PN_START + 1
    pn_field = pn.to_bytes(16, "little")
    assert body[2:18] == pn_field
    ph = wpi.pseudo_header(HDR, 1, size)
    assert body == kit.wpi_protect(EK, CK, pn_field, 1, ph, data)
    rx = wpi.WpiReceiver(EK, CK, 1, unicast=True, from_ae=True)
    assert rx.unprotect_body(HDR, body) == data


def test_pn_steps_and_parity() -> None:
    ae = wpi.WpiSender(EK, CK, 0, unicast=True, from_ae=True)
    sta = wpi.WpiSender(EK, CK, 0, unicast=True, from_ae=False)
    grp = wpi.WpiSender(EK, CK, 0, unicast=False, from_ae=True)
    pns = {}
    for name, s in (("ae", ae), ("sta", sta), ("grp", grp)):
        pns[name] = [int.from_bytes(s.protect_body(HDR, b"x")[2:18], "little") for _ in range(3)]
    assert pns["ae"] == [wpi.PN_START + 1, wpi.PN_START + 3, wpi.PN_START + 5]
    assert pns["sta"] == [wpi.PN_START, wpi.PN_START + 2, wpi.PN_START + 4]
    assert pns["grp"] == [wpi.PN_START, wpi.PN_START + 1, wpi.PN_START + 2]
    assert wpi.PN_START.to_bytes(16, "big") == bytes.fromhex("5c36" * 8)


def test_replay_reorder_tamper_and_truncation_refused() -> None:
    tx = wpi.WpiSender(EK, CK, 0, unicast=True, from_ae=True)
    rx = wpi.WpiReceiver(EK, CK, 0, unicast=True, from_ae=True)
    f1 = tx.protect(HDR, b"first frame")
    f2 = tx.protect(HDR, b"second frame")
    assert rx.unprotect(f2)[1] == b"second frame"
    with pytest.raises(WpiReplayError):
        rx.unprotect(f1)  # reordered
    with pytest.raises(WpiReplayError):
        rx.unprotect(f2)  # replayed
    f3 = bytearray(tx.protect(HDR, b"third frame"))
    for pos in (len(f3) - 1, len(f3) - 20, 26 + 18 + 2, 4):  # MIC, data, data, addr1
        bad = bytearray(f3)
        bad[pos] ^= 1
        with pytest.raises(WpiMicError):
            rx.unprotect(bytes(bad))
    with pytest.raises(WpiDecodeError):
        rx.unprotect(bytes(f3[: 26 + 18 + 15]))
    bad = bytearray(f3)
    bad[26] = 1  # key index not installed
    with pytest.raises(WpiDecodeError):
        rx.unprotect(bytes(bad))
    bad = bytearray(f3)
    bad[26 + 2] ^= 1  # PN parity of the other direction
    with pytest.raises(WpiReplayError):
        rx.unprotect(bytes(bad))
    assert rx.unprotect(bytes(f3))[1] == b"third frame"  # failures consumed nothing


def test_pn_exhaustion_refuses_to_wrap() -> None:
    tx = wpi.WpiSender(EK, CK, 0, unicast=False, from_ae=True)
    tx.pn = wpi.PN_MAX - 1
    tx.protect_body(HDR, b"x")
    with pytest.raises(WpiError, match="exhausted"):
        tx.protect_body(HDR, b"x")
