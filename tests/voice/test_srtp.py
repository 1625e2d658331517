"""mstcrypt.protocols.srtp: RFC 3711 vectors, round trips on every profile, the private
profiles against an independent reference (srtp_ref.py over gmalg), index/ROC estimation
and the replay window."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mstcrypt.crypto import aes
from mstcrypt.errors import DecodeError, PolicyError, UnsupportedError
from mstcrypt.protocols import srtp
from mstcrypt.protocols.srtp import kdf
from mstcrypt.protocols.srtp._transforms import _xor_iv

from . import srtp_ref

PRIVATE = ["MST_SM4_CM_128_HMAC_SM3_80", "MST_AEAD_SM4_128_GCM", "MST_ZUC_128_EEA3_EIA3_32"]
ALL = list(srtp.PROFILES)


def rtp(
    seq: int,
    ssrc: int = 0x11223344,
    payload: bytes = b"\x55" * 160,
    *,
    csrc: int = 0,
    ext: bytes | None = None,
    pt: int = 0,
    ts: int | None = None,
) -> bytes:
    b0 = 0x80 | csrc | (0x10 if ext is not None else 0)
    h = bytes([b0, pt]) + (seq & 0xFFFF).to_bytes(2, "big")
    h += ((seq * 160 if ts is None else ts) & 0xFFFFFFFF).to_bytes(4, "big") + ssrc.to_bytes(
        4, "big"
    )
    h += b"".join((0xC0000000 + i).to_bytes(4, "big") for i in range(csrc))
    if ext is not None:
        assert len(ext) % 4 == 0
        h += b"\xbe\xde" + (len(ext) // 4).to_bytes(2, "big") + ext
    return h + payload


def rtcp_rr(ssrc: int = 0x11223344, n_reports: int = 1) -> bytes:
    body = ssrc.to_bytes(4, "big") + os.urandom(24 * n_reports)
    return bytes([0x80 | n_reports, 201]) + (len(body) // 4).to_bytes(2, "big") + body


def pair(name: str, **kw: object) -> tuple[srtp.SrtpContext, srtp.SrtpContext]:
    p = srtp.profile(name)
    mk, ms = os.urandom(p.key_len), os.urandom(p.salt_len)
    return srtp.SrtpContext(p, mk, ms, **kw), srtp.SrtpContext(p, mk, ms, **kw)  # type: ignore[arg-type]


# --- RFC 3711 appendix B ----------------------------------------------------------------


def test_rfc3711_b3_key_derivation() -> None:
    p = srtp.AES_CM_128_HMAC_SHA1_80
    mk = bytes.fromhex("E1F97A0D3E018BE0D64FA32C06DE4139")
    ms = bytes.fromhex("0EC675AD498AFEEBB6960B3AABE6")
    assert kdf.derive(p, mk, ms, kdf.LABEL_RTP_ENCRYPTION, 16).hex().upper() == (
        "C61E7A93744F39EE10734AFE3FF7A087"
    )
    assert kdf.derive(p, mk, ms, kdf.LABEL_RTP_SALT, 14).hex().upper() == (
        "30CBBC08863D8C85D49DB34A9AE1"
    )
    auth = (
        "CEBE321F6FF7716B6FD4AB49AF256A15"
        "6D38BAA48F0A0ACF3C34E2359E6CDBCE"
        "E049646C43D9327AD175578EF7227098"
        "6371C10C9A369AC2F94A8C5FBCDDDC25"
        "6D6E919A48B610EF17C2041E47403576"
        "6B68642C59BBFC2F34DB60DBDFB2"
    )
    assert kdf.derive(p, mk, ms, kdf.LABEL_RTP_AUTH, 94).hex().upper() == auth


def test_rfc3711_b2_aes_cm_keystream() -> None:
    key = bytes.fromhex("2B7E151628AED2A6ABF7158809CF4F3C")
    salt = bytes.fromhex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD")
    iv = _xor_iv(salt, 0, 0)  # SSRC 0, ROC 0, SEQ 0
    assert iv.hex().upper() == "F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000"
    ks = aes.ctr(key, iv, bytes(0xFF02 * 16))
    blocks = {
        0x0000: "E03EAD0935C95E80E166B16DD92B4EB4",
        0x0001: "D23513162B02D0F72A43A2FE4A5F97AB",
        0x0002: "41E95B3BB0A2E8DD477901E4FCA894C0",
        0xFEFF: "EC8CDF7398607CB0F2D21675EA9EA1E4",
        0xFF00: "362B7C3C6773516318A077D7FC5073AE",
        0xFF01: "6A2CC3787889374FBEB4C81B17BA6C44",
    }
    for n, want in blocks.items():
        assert ks[16 * n : 16 * n + 16].hex().upper() == want


def test_kdf_rate_and_argument_checks() -> None:
    p = srtp.AES_CM_128_HMAC_SHA1_80
    mk, ms = bytes(16), bytes(14)
    # r = index DIV kdr enters the low 48 bits of key_id
    assert kdf.derive(p, mk, ms, 0, 16, index=5, kdr=4) == kdf.derive(
        p, mk, ms, 0, 16, index=7, kdr=4
    )
    assert kdf.derive(p, mk, ms, 0, 16, index=8, kdr=4) != kdf.derive(
        p, mk, ms, 0, 16, index=7, kdr=4
    )
    with pytest.raises(PolicyError):
        kdf.derive(p, mk, ms, 0, 16, kdr=3)
    with pytest.raises(DecodeError):
        kdf.derive(p, bytes(15), ms, 0, 16)
    with pytest.raises(PolicyError):
        kdf.derive(p, mk, ms, 0, 16, ssrc=1)
    with pytest.raises(PolicyError):
        kdf.derive(srtp.ZUC_128_EEA3_EIA3_32, mk, ms, 0, 16)


# --- profiles ---------------------------------------------------------------------------


def test_private_profile_ids_never_collide() -> None:
    for p in srtp.PROFILES.values():
        if p.private:
            assert p.id >> 8 == 0xFF, p
            assert p.id not in srtp.COLLIDING_IDS
            assert p.name.startswith("MST_")
        else:
            assert p.id <= 0x0010
    assert len({p.id for p in srtp.PROFILES.values()}) == len(srtp.PROFILES)
    assert srtp.profile("sm4_cm_128_hmac_sm3_80") is srtp.SM4_CM_128_HMAC_SM3_80
    assert srtp.profile(0xFF03) is srtp.ZUC_128_EEA3_EIA3_32
    for bad in (0x0009, 0x000A, "SRTP_SM4_CTR_HMAC_SM3_128", 1.5):
        with pytest.raises(UnsupportedError):
            srtp.profile(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ALL)
def test_round_trip_every_profile(name: str) -> None:
    tx, rx = pair(name)
    p = tx.profile
    rng = random.Random(1)
    seq = 0
    for size in [0, 1, 15, 16, 17, 160, 320, 1000]:
        for csrc, ext in ((0, None), (2, b"\x10\xaa\x00\x00"), (15, b"")):
            seq += 1
            pkt = rtp(seq, payload=rng.randbytes(size), csrc=csrc, ext=ext)
            wire = tx.protect(pkt)
            assert len(wire) == len(pkt) + p.srtp_tag_len
            hlen = srtp.rtp_header_length(pkt)
            assert wire[:hlen] == pkt[:hlen]  # the header stays in the clear
            if size >= 16:
                assert pkt[hlen:] not in wire  # the payload does not
            assert rx.unprotect(wire) == pkt
    for n in (0, 1, 3):
        pkt = rtcp_rr(n_reports=n)
        wire = tx.protect_rtcp(pkt)
        assert len(wire) == len(pkt) + 4 + p.srtcp_tag_len
        assert rx.unprotect_rtcp(wire) == pkt
    assert rx.stats.rtp_unprotected == 24 and rx.stats.rtcp_unprotected == 3
    assert rx.stats.dropped == 0


@pytest.mark.parametrize("name", PRIVATE)
def test_private_profiles_match_independent_reference(name: str) -> None:
    p = srtp.profile(name)
    rng = random.Random(name)
    for trial in range(6):
        mk, ms = rng.randbytes(p.key_len), rng.randbytes(p.salt_len)
        ssrc = rng.getrandbits(32)
        roc = rng.choice([0, 1, 0xFFFF, 0x10000, 0x12345678])
        tx = srtp.SrtpContext(p, mk, ms)
        tx.set_roc(ssrc, roc, outbound=True)
        payload = rng.randbytes(rng.choice([0, 1, 13, 160, 333]))
        pkt = rtp(rng.getrandbits(16), ssrc, payload, csrc=trial % 3)
        want = srtp_ref.protect(name, mk, ms, pkt, srtp.rtp_header_length(pkt), roc)
        assert tx.protect(pkt) == want
        rr = rtcp_rr(ssrc, n_reports=trial % 2)
        assert tx.protect_rtcp(rr) == srtp_ref.protect_rtcp(name, mk, ms, rr, 0)


def test_zuc_profile_keys_are_per_stream() -> None:
    # two SSRCs with the same sequence number under one key must not share keystream
    tx, _ = pair("MST_ZUC_128_EEA3_EIA3_32")
    a = tx.protect(rtp(7, 0xAAAA0001, bytes(64)))
    b = tx.protect(rtp(7, 0xAAAA0002, bytes(64)))
    assert a[12:76] != b[12:76]


# --- index, ROC and replay --------------------------------------------------------------


def test_guess_index_rfc3711_appendix_a() -> None:
    g = srtp.guess_index
    assert g(-1, 65535, 0) == 65535
    assert g(-1, 10, 3) == (3 << 16) | 10
    assert g(65535, 0, 0) == 1 << 16  # wrap forwards
    assert g((1 << 16) | 2, 65534, 0) == 65534  # late packet from before the wrap
    assert g((5 << 16) | 40000, 100, 0) == (6 << 16) | 100
    assert g((5 << 16) | 100, 60000, 0) == (4 << 16) | 60000
    with pytest.raises(srtp.ReplayError):
        g(100, 60000, 0)  # would need ROC -1
    with pytest.raises(srtp.KeyLimitError):
        g((0xFFFFFFFF << 16) | 65535, 0, 0)


def test_roc_wraps_at_65535_with_reordering() -> None:
    tx, rx = pair("MST_SM4_CM_128_HMAC_SM3_80")
    seqs = list(range(65500, 65536)) + list(range(0, 40))
    wires = [tx.protect(rtp(s)) for s in seqs]
    assert tx.roc(0x11223344) == 1
    order = list(range(len(wires)))
    rng = random.Random(3)
    for i in range(0, len(order) - 4, 4):  # shuffle within blocks of five across the wrap
        block = order[i : i + 5]
        rng.shuffle(block)
        order[i : i + 5] = block
    got = [rx.unprotect(wires[i]) for i in order]
    assert sorted(got, key=lambda p: seqs.index(int.from_bytes(p[2:4], "big"))) == [
        rtp(s) for s in seqs
    ]
    assert rx.roc(0x11223344) == 1


def test_replay_window() -> None:
    w = srtp.ReplayWindow(64)
    for i in (10, 12, 11, 100):
        w.check(i)
        w.add(i)
    for i in (10, 11, 12, 100, 36):  # repeats, and 100 - 36 = 64 is outside the window
        with pytest.raises(srtp.ReplayError):
            w.check(i)
    w.check(37)  # inside the window, never seen
    w.add(1000)
    with pytest.raises(srtp.ReplayError):
        w.check(100)
    for bad in (32, 1 << 16):
        with pytest.raises(PolicyError):
            srtp.ReplayWindow(bad)


@pytest.mark.parametrize("window", [64, 128, 1024])
def test_out_of_order_inside_window_accepted_outside_refused(window: int) -> None:
    tx, rx = pair("AES_CM_128_HMAC_SHA1_80", window_size=window)
    wires = [tx.protect(rtp(s)) for s in range(window + 2)]
    rx.unprotect(wires[-1])  # newest first
    rx.unprotect(wires[2])  # window - 1 behind: the oldest index inside
    with pytest.raises(srtp.ReplayError):
        rx.unprotect(wires[1])  # window behind: outside
    assert rx.stats.replays == 1


def test_late_joiner_needs_roc_from_signalling() -> None:
    p = srtp.AEAD_SM4_128_GCM
    mk, ms = os.urandom(16), os.urandom(12)
    tx = srtp.SrtpContext(p, mk, ms)
    tx.set_roc(0x11223344, 7, outbound=True)
    wire = tx.protect(rtp(9))
    with pytest.raises(srtp.SrtpAuthError):  # ROC 0 assumed: wrong index, the tag fails
        srtp.SrtpContext(p, mk, ms).unprotect(wire)
    rx = srtp.SrtpContext(p, mk, ms)
    rx.set_roc(0x11223344, 7, outbound=False)
    assert rx.unprotect(wire) == rtp(9)
    assert rx.roc(0x11223344) == 7
    with pytest.raises(PolicyError):
        rx.set_roc(0x11223344, 8, outbound=False)


# --- properties -------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    start=st.integers(0, (3 << 16) - 1),
    steps=st.lists(st.integers(1, 3), min_size=5, max_size=120),
    jitter=st.lists(st.integers(0, 40), min_size=120, max_size=120),
    dups=st.sets(st.integers(0, 119), max_size=15),
)
def test_receiver_recovers_every_index_once(
    start: int, steps: list[int], jitter: list[int], dups: set[int]
) -> None:
    """Packets with true indices start, start+steps…, delivered with bounded reordering
    (< 64 packets, inside the window and within 2^15 of the highest) and duplicates:
    each unique index is accepted exactly once with the right ROC, every repeat refused."""
    p = srtp.AES_CM_128_HMAC_SHA1_80
    mk, ms = bytes(range(16)), bytes(range(14))
    tx = srtp.SrtpContext(p, mk, ms)
    tx.set_roc(9, start >> 16, outbound=True)
    rx = srtp.SrtpContext(p, mk, ms)
    rx.set_roc(9, start >> 16, outbound=False)
    idx = [start]
    for s in steps:
        idx.append(idx[-1] + s)
    # each packet carries its true index in the payload
    wires = [tx.protect(rtp(i & 0xFFFF, 9, i.to_bytes(8, "big"))) for i in idx]
    # the first packet arrives first (it fixes the ROC); the others up to ~27 places late
    order = [0, *sorted(range(1, len(idx)), key=lambda k: k + jitter[k] / 1.5)]
    seen: set[int] = set()
    for k in [*order, *[d for d in sorted(dups) if d < len(idx)]]:
        if idx[k] in seen or (seen and max(seen) - idx[k] >= rx.window_size):
            with pytest.raises(srtp.ReplayError):
                rx.unprotect(wires[k])
            continue
        got = rx.unprotect(wires[k])
        assert int.from_bytes(got[12:], "big") == idx[k]
        seen.add(idx[k])
    assert rx.roc(9) == max(seen) >> 16
