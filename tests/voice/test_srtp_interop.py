"""The standard profiles against libsrtp (through pylibsrtp), packet for packet in both
directions: byte-identical output for the same input, our receiver on libsrtp's packets
across a ROC wrap with loss and reordering, libsrtp's receiver on ours, SRTCP both ways,
and both refusing the same replays and forgeries."""

from __future__ import annotations

import os
import random

import pytest

from mstcrypt.protocols import srtp

from .test_srtp import rtcp_rr, rtp

pylibsrtp = pytest.importorskip("pylibsrtp", reason="pylibsrtp (libsrtp binding) not installed")

LIBSRTP = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
}


def lib(name: str, key: bytes, inbound: bool, window: int = 128) -> pylibsrtp.Session:
    pol = pylibsrtp.Policy(
        key=key,
        ssrc_type=(
            pylibsrtp.Policy.SSRC_ANY_INBOUND if inbound else pylibsrtp.Policy.SSRC_ANY_OUTBOUND
        ),
        srtp_profile=LIBSRTP[name],
    )
    pol.window_size = window
    return pylibsrtp.Session(pol)


def ours(name: str, key: bytes) -> srtp.SrtpContext:
    p = srtp.profile(name)
    return srtp.SrtpContext(p, key[: p.key_len], key[p.key_len :])


def stream(rng: random.Random, start: int, n: int, ssrc: int) -> list[bytes]:
    out = []
    for i in range(n):
        ext = None if i % 3 else rng.randbytes(4 * rng.randint(0, 3))
        out.append(
            rtp(
                start + i,
                ssrc,
                rng.randbytes(rng.choice([0, 1, 20, 160, 161, 960])),
                csrc=rng.randint(0, 4),
                ext=ext,
            )
        )
    return out


@pytest.mark.parametrize("name", list(LIBSRTP))
def test_byte_identical_across_roc_wrap(name: str) -> None:
    key = os.urandom(srtp.profile(name).master_len)
    a, b = lib(name, key, inbound=False), ours(name, key)
    for pkt in stream(random.Random(name), 65000, 1200, 0x5EED0001):  # wraps once
        assert a.protect(pkt) == b.protect(pkt)
    # libsrtp numbers its first SRTCP packet 1; RFC 3711 §3.4 (and we) start at 0
    b._streams[0x5EED0001].rtcp_next = 1
    for _ in range(5):
        rr = rtcp_rr(0x5EED0001)
        assert a.protect_rtcp(rr) == b.protect_rtcp(rr)


@pytest.mark.parametrize("name", list(LIBSRTP))
def test_libsrtp_to_us_with_loss_reorder_duplicates(name: str) -> None:
    key = os.urandom(srtp.profile(name).master_len)
    tx, rx = lib(name, key, inbound=False), ours(name, key)
    rng = random.Random(7)
    plain = stream(rng, 64000, 3000, 0xA0A0A0A0)  # wraps at 65535
    wires = [tx.protect(p) for p in plain]
    delivered = [i for i in range(len(wires)) if rng.random() > 0.05]
    for k in range(0, len(delivered) - 8, 8):  # reorder within blocks of eight
        blk = delivered[k : k + 8]
        rng.shuffle(blk)
        delivered[k : k + 8] = blk
    got, replays = {}, 0
    for i in delivered:
        got[i] = rx.unprotect(wires[i])
        if rng.random() < 0.05:  # the network duplicates a packet
            with pytest.raises(srtp.ReplayError):
                rx.unprotect(wires[i])
            replays += 1
    assert all(got[i] == plain[i] for i in got)
    assert len(got) == len(set(delivered))
    assert rx.stats.replays == replays and rx.stats.auth_failures == 0
    assert rx.roc(0xA0A0A0A0) == 1
    for _ in range(3):
        rr = rtcp_rr(0xA0A0A0A0)
        assert rx.unprotect_rtcp(tx.protect_rtcp(rr)) == rr


@pytest.mark.parametrize("name", list(LIBSRTP))
def test_us_to_libsrtp_with_loss_and_reorder(name: str) -> None:
    key = os.urandom(srtp.profile(name).master_len)
    tx, rx = ours(name, key), lib(name, key, inbound=True)
    rng = random.Random(11)
    plain = stream(rng, 65300, 1000, 0x0B0B0B0B)
    wires = [tx.protect(p) for p in plain]
    order = [i for i in range(len(wires)) if rng.random() > 0.05]
    for k in range(0, len(order) - 6, 6):
        blk = order[k : k + 6]
        rng.shuffle(blk)
        order[k : k + 6] = blk
    for i in order:
        assert rx.unprotect(wires[i]) == plain[i]
    with pytest.raises(pylibsrtp.Error):  # libsrtp refuses our replay too
        rx.unprotect(wires[order[-1]])
    for _ in range(3):
        rr = rtcp_rr(0x0B0B0B0B)
        assert rx.unprotect_rtcp(tx.protect_rtcp(rr)) == rr


@pytest.mark.parametrize("name", list(LIBSRTP))
def test_both_refuse_the_same_forgeries(name: str) -> None:
    key = os.urandom(srtp.profile(name).master_len)
    ltx, otx = lib(name, key, inbound=False), ours(name, key)
    lrx, orx = lib(name, key, inbound=True), ours(name, key)
    pkt = rtp(100, 0x77, os.urandom(160))
    wire = ltx.protect(pkt)
    assert wire == otx.protect(pkt)
    for i in range(12, len(wire)):
        bad = bytearray(wire)
        bad[i] ^= 0x10
        with pytest.raises(pylibsrtp.Error):
            lrx.unprotect(bytes(bad))
        with pytest.raises(srtp.SrtpAuthError):
            orx.unprotect(bytes(bad))
    assert lrx.unprotect(wire) == orx.unprotect(wire) == pkt
    # an old packet outside the window: both refuse
    for s in range(101, 101 + 200):
        p = rtp(s, 0x77)
        w = ltx.protect(p)
        otx.protect(p)
        lrx.unprotect(w)
        orx.unprotect(w)
    with pytest.raises(pylibsrtp.Error):
        lrx.unprotect(wire)
    with pytest.raises(srtp.ReplayError):
        orx.unprotect(wire)
