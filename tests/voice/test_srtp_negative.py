"""Attacks on the SRTP layer, each performed and shown refused: tampering, replay, wrong
key, SSRC collision/reflection, ROC and index exhaustion, oversized and malformed
packets, malformed SRTCP. A refused packet is counted and leaves the context unchanged."""

from __future__ import annotations

import os

import pytest

from mstcrypt.errors import DecodeError, PolicyError
from mstcrypt.protocols import srtp

from .test_srtp import ALL, pair, rtcp_rr, rtp


@pytest.mark.parametrize("name", ALL)
def test_every_tampered_byte_is_refused_and_the_stream_survives(name: str) -> None:
    tx, rx = pair(name)
    pkt = rtp(1, payload=os.urandom(40))
    wire = tx.protect(pkt)
    for i in range(len(wire)):
        for bit in (0x01, 0x80):
            bad = bytearray(wire)
            bad[i] ^= bit
            with pytest.raises((srtp.SrtpAuthError, srtp.SrtpFormatError)):
                rx.unprotect(bytes(bad))
    assert rx.stats.dropped == 2 * len(wire)
    assert rx.stats.auth_failures >= 2 * len(wire) - 2  # only byte 0 can break the format
    assert rx.stats.rtp_unprotected == 0
    # nothing was learnt from the forgeries: the genuine packet still goes through, once
    assert rx.unprotect(wire) == pkt


@pytest.mark.parametrize("name", ALL)
def test_tamper_then_genuine(name: str) -> None:
    tx, rx = pair(name)
    pkt = rtp(1, payload=os.urandom(40))
    wire = tx.protect(pkt)
    for i in (0, 1, 2, 8, 12, len(wire) // 2, len(wire) - 1):
        bad = bytearray(wire)
        bad[i] ^= 0x04
        with pytest.raises((srtp.SrtpAuthError, srtp.SrtpFormatError)):
            rx.unprotect(bytes(bad))
    truncated = wire[:-1]
    with pytest.raises((srtp.SrtpAuthError, srtp.SrtpFormatError)):
        rx.unprotect(truncated)
    assert rx.stats.auth_failures >= 6
    assert rx.unprotect(wire) == pkt
    with pytest.raises(srtp.ReplayError):
        rx.unprotect(wire)
    assert rx.stats.replays == 1


@pytest.mark.parametrize("name", ALL)
def test_wrong_key_refused(name: str) -> None:
    tx, _ = pair(name)
    _, other = pair(name)
    with pytest.raises(srtp.SrtpAuthError):
        other.unprotect(tx.protect(rtp(5)))
    with pytest.raises(srtp.SrtpAuthError):
        other.unprotect_rtcp(tx.protect_rtcp(rtcp_rr()))


@pytest.mark.parametrize("name", ALL)
def test_replayed_srtcp_refused(name: str) -> None:
    tx, rx = pair(name)
    w = [tx.protect_rtcp(rtcp_rr()) for _ in range(3)]
    assert rx.unprotect_rtcp(w[2]) and rx.unprotect_rtcp(w[0])
    for again in (w[0], w[2]):
        with pytest.raises(srtp.ReplayError):
            rx.unprotect_rtcp(again)
    assert rx.unprotect_rtcp(w[1])


def test_reflection_under_a_shared_key_is_an_ssrc_collision() -> None:
    # RFC 3711 §9.1: one master key for both directions. Our own packet reflected back
    # would authenticate; the context refuses the SSRC it sends on.
    ctx, _ = pair("AES_CM_128_HMAC_SHA1_80")
    wire = ctx.protect(rtp(1, 0xCAFE))
    with pytest.raises(srtp.SsrcCollisionError):
        ctx.unprotect(wire)
    with pytest.raises(srtp.SsrcCollisionError):
        ctx.unprotect_rtcp(ctx.protect_rtcp(rtcp_rr(0xCAFE)))
    assert ctx.stats.collisions == 2
    # and a peer's SSRC cannot then be used for sending (that would repeat its keystream)
    mk, ms = os.urandom(16), os.urandom(14)
    shared = srtp.SrtpContext(ctx.profile, mk, ms)
    peer = srtp.SrtpContext(ctx.profile, mk, ms)
    shared.unprotect(peer.protect(rtp(1, 0xBEEF)))
    with pytest.raises(srtp.SsrcCollisionError):
        shared.protect(rtp(2, 0xBEEF))


def test_sender_never_reuses_an_index() -> None:
    tx, _ = pair("MST_ZUC_128_EEA3_EIA3_32")
    tx.protect(rtp(10))
    with pytest.raises(srtp.KeyLimitError):
        tx.protect(rtp(10, payload=b"different"))  # two-time pad otherwise
    retx = srtp.SrtpContext(tx.profile, os.urandom(16), os.urandom(14), allow_repeat_tx=True)
    assert retx.protect(rtp(10)) == retx.protect(rtp(10))


def test_roc_exhaustion_forces_rekey() -> None:
    tx, rx = pair("MST_SM4_CM_128_HMAC_SM3_80")
    tx.set_roc(1, 0xFFFFFFFF, outbound=True)
    rx.set_roc(1, 0xFFFFFFFF, outbound=False)
    assert rx.unprotect(tx.protect(rtp(65535, 1))) == rtp(65535, 1)
    with pytest.raises(srtp.KeyLimitError):
        tx.protect(rtp(0, 1))


def test_srtcp_index_exhaustion_forces_rekey() -> None:
    tx, _ = pair("AES_CM_128_HMAC_SHA1_80")
    tx.protect_rtcp(rtcp_rr(7))
    tx._streams[7].rtcp_next = 0x7FFFFFFF
    tx.protect_rtcp(rtcp_rr(7))
    with pytest.raises(srtp.KeyLimitError):
        tx.protect_rtcp(rtcp_rr(7))


@pytest.mark.parametrize("name", ALL)
def test_oversized_packets_refused(name: str) -> None:
    tx, rx = pair(name, max_packet_size=600)
    tag = tx.profile.srtp_tag_len
    ok = rtp(1, payload=bytes(600 - 12 - tag))
    assert rx.unprotect(tx.protect(ok)) == ok
    with pytest.raises(srtp.SrtpFormatError):
        tx.protect(rtp(2, payload=bytes(600 - 12 - tag + 1)))
    big, _ = pair(name, max_packet_size=2000)
    wire = big.protect(rtp(3, payload=bytes(1000)))
    with pytest.raises(srtp.SrtpFormatError):
        rx.unprotect(wire)
    with pytest.raises(srtp.SrtpFormatError):
        rx.unprotect_rtcp(bytes([0x80, 200, 0, 1]) + bytes(700))
    assert rx.stats.malformed == 2
    with pytest.raises(PolicyError):
        srtp.SrtpContext(name, bytes(16), bytes(tx.profile.salt_len), max_packet_size=70000)


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x80",
        bytes(11),
        b"\x40" + bytes(30),  # version 1
        b"\x81" + bytes(13),  # one CSRC announced, none present
        b"\x90" + bytes(11) + b"\xbe\xde\x00\x09" + bytes(8),  # extension runs past the end
        b"\x80" + bytes(11) + bytes(3),  # header only, shorter than the tag
    ],
)
def test_malformed_srtp(packet: bytes) -> None:
    _, rx = pair("AES_CM_128_HMAC_SHA1_80")
    with pytest.raises(srtp.SrtpFormatError) as e:
        rx.unprotect(packet)
    assert isinstance(e.value, DecodeError)
    assert rx.stats.malformed == 1


@pytest.mark.parametrize("name", ALL)
def test_malformed_srtcp(name: str) -> None:
    tx, rx = pair(name)
    good = tx.protect_rtcp(rtcp_rr())
    t = tx.profile.srtcp_tag_len
    cases = [
        b"",
        good[: 8 + 4 + t - 1],  # shorter than header + index + tag
        b"\x40" + good[1:],  # version 1
        good[:1] + b"\x10" + good[2:],  # packet type 16: not RTCP
    ]
    for c in cases:
        with pytest.raises(srtp.SrtpFormatError):
            rx.unprotect_rtcp(c)
    # a flipped E bit or index is caught by the tag
    pos = len(good) - 4 if tx.profile.aead else len(good) - t - 4
    for bit in (0x80, 0x01):
        bad = bytearray(good)
        bad[pos] ^= bit
        with pytest.raises(srtp.SrtpAuthError):
            rx.unprotect_rtcp(bytes(bad))
    assert rx.unprotect_rtcp(good)
    # the sender refuses to protect malformed RTCP (lengths that do not add up)
    with pytest.raises(srtp.SrtpFormatError):
        tx.protect_rtcp(bytes([0x80, 201, 0, 9]) + bytes(8))
    with pytest.raises(srtp.SrtpFormatError):
        tx.protect_rtcp(rtcp_rr() + b"\x80")


def test_authentic_srtcp_with_bad_lengths_is_refused_after_decryption() -> None:
    # a peer holding the key (or a buggy one) sends RTCP whose inner lengths lie: the
    # decrypted packet never reaches an RTCP parser
    tx, rx = pair("MST_SM4_CM_128_HMAC_SM3_80")
    lying = bytes([0x80, 201, 0, 1]) + bytes(4) + bytes([0x80, 202, 0, 40]) + bytes(4)
    wire = tx._x.rtcp_seal(lying, 0, 0)
    with pytest.raises(srtp.SrtpFormatError):
        rx.unprotect_rtcp(wire)


def test_stream_limit_and_forged_ssrcs_do_not_create_state() -> None:
    tx, rx = pair("AES_CM_128_HMAC_SHA1_80", max_streams=2)
    tx.max_streams = 1000  # the sender side is not under test
    for ssrc in range(100, 200):  # forged packets for 100 SSRCs
        forged = bytearray(tx.protect(rtp(1, ssrc)))
        forged[-1] ^= 1
        with pytest.raises(srtp.SrtpAuthError):
            rx.unprotect(bytes(forged))
    assert len(rx._streams) == 0
    rx.unprotect(tx.protect(rtp(2, 1)))
    rx.unprotect(tx.protect(rtp(2, 2)))
    with pytest.raises(srtp.StreamLimitError):
        rx.unprotect(tx.protect(rtp(2, 3)))


def test_key_and_salt_lengths_checked() -> None:
    with pytest.raises(DecodeError):
        srtp.SrtpContext("AES_CM_128_HMAC_SHA1_80", bytes(15), bytes(14))
    with pytest.raises(DecodeError):
        srtp.SrtpContext("MST_AEAD_SM4_128_GCM", bytes(16), bytes(14))
    with pytest.raises(PolicyError):
        srtp.SrtpContext("AES_CM_128_HMAC_SHA1_80", bytes(16), bytes(14), window_size=32)


def test_repr_holds_no_secret() -> None:
    mk = bytes(range(16))
    ctx = srtp.SrtpContext("MST_SM4_CM_128_HMAC_SM3_80", mk, bytes(14))
    assert mk.hex() not in repr(ctx) and "SM4" in repr(ctx)
