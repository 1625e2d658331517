"""WAI packet codecs: byte-exact agreement with an independent encoder, round trips and
a corpus of malformed packets (truncated, oversized, trailing, inconsistent)."""

from __future__ import annotations

import pytest
import wapi_kit as kit
from wapi_samples import cases

from mstcrypt.errors import DecodeError
from mstcrypt.protocols.wai import messages as m
from mstcrypt.protocols.wai.constants import Subtype
from mstcrypt.protocols.wai.errors import WaiDecodeError

CASES = cases()
IDS = [f"{type(msg).__name__}-{i}" for i, (msg, _) in enumerate(CASES)]


@pytest.mark.parametrize(("msg", "expected"), CASES, ids=IDS)
def test_body_matches_independent_encoder_and_round_trips(msg: m.Message, expected: bytes) -> None:
    assert msg.encode() == expected
    assert m.decode_message(msg.SUBTYPE, expected) == msg
    pkt = m.encode_packet(msg, seq=7)
    assert pkt == kit.header(msg.SUBTYPE, len(expected), 7) + expected
    h, back = m.decode_packet(pkt)
    assert (h.subtype, h.seq, h.length) == (msg.SUBTYPE, 7, len(pkt))
    assert back == msg


@pytest.mark.parametrize(("msg", "expected"), CASES, ids=IDS)
def test_every_truncation_and_a_trailing_byte_are_refused(msg: m.Message, expected: bytes) -> None:
    # The one prefix that is itself well formed: a response with two ASU signatures cut
    # before its last signature reads as one with a single ASU signature (the format has
    # no count; the signature checks then fail, see the protocol tests).
    ambiguous = -1
    if isinstance(msg, m.AccessAuthResponse) and msg.asu_sig_ae is not None:
        assert msg.signature is not None
        ambiguous = len(expected) - len(msg.signature.encode())
    if isinstance(msg, m.CertAuthResponse) and msg.asu_sig_ae is not None:
        ambiguous = len(expected) - len(msg.asu_sig_ae.encode())
    for n in range(len(expected)):
        if n == ambiguous:
            assert m.decode_message(msg.SUBTYPE, expected[:n]).encode() == expected[:n]
            continue
        with pytest.raises(WaiDecodeError):
            m.decode_message(msg.SUBTYPE, expected[:n])
    with pytest.raises(WaiDecodeError):
        m.decode_message(msg.SUBTYPE, expected + b"\x00")


def test_decode_errors_are_decode_errors() -> None:
    assert issubclass(WaiDecodeError, DecodeError)


def _pkt() -> bytes:
    return m.encode_packet(CASES[-5][0], seq=1)


@pytest.mark.parametrize(
    ("offset", "value", "why"),
    [
        (1, 2, "version"),
        (2, 2, "type"),
        (3, 13, "subtype"),
        (3, 0, "subtype"),
        (5, 1, "reserved"),
        (11, 0x80, "flag"),
    ],
)
def test_bad_header_fields(offset: int, value: int, why: str) -> None:
    pkt = bytearray(_pkt())
    pkt[offset] = value
    with pytest.raises(WaiDecodeError):
        m.decode_packet(bytes(pkt))


def test_length_field_must_match() -> None:
    pkt = _pkt()
    with pytest.raises(WaiDecodeError, match="length"):
        m.decode_packet(pkt + b"\x00")
    with pytest.raises(WaiDecodeError):
        m.decode_packet(pkt[:-1])
    with pytest.raises(WaiDecodeError, match="truncated header"):
        m.decode_packet(pkt[:11])


def test_inner_length_overrun_and_empty_fields() -> None:
    act = CASES[0][1]
    bad = bytearray(act)
    bad[33 + 2 : 33 + 4] = (0xFFFF).to_bytes(2, "big")  # ASU identity length
    with pytest.raises(WaiDecodeError):
        m.decode_message(Subtype.AUTH_ACTIVATION, bytes(bad))
    bad = bytearray(act)
    bad[33 + 2 : 33 + 4] = (0).to_bytes(2, "big")
    with pytest.raises(WaiDecodeError):
        m.decode_message(Subtype.AUTH_ACTIVATION, bytes(bad))


def test_unknown_result_codes_are_refused() -> None:
    raw = next(b for a, b in CASES if isinstance(a, m.CertAuthResponse))
    bad = bytearray(raw)
    bad[12 + 3 + 64] = 9  # result1
    with pytest.raises(WaiDecodeError, match="verification result"):
        m.decode_message(Subtype.CERT_AUTH_RESPONSE, bytes(bad))
    raw = next(b for a, b in CASES if isinstance(a, m.AccessAuthResponse))
    bad = bytearray(raw)
    bad[65] = 4
    with pytest.raises(WaiDecodeError, match="access result"):
        m.decode_message(Subtype.ACCESS_AUTH_RESPONSE, bytes(bad))


def test_signature_attribute_strictness() -> None:
    msg, raw = CASES[1]
    sig = msg.signature.encode()  # type: ignore[attr-defined]
    body = raw[: -len(sig)]
    for bad in (b"\x02" + sig[1:], sig[:3] + sig[3:-1]):
        with pytest.raises(WaiDecodeError):
            m.decode_message(Subtype.ACCESS_AUTH_REQUEST, body + bad)


def test_oversized_packet_refused() -> None:
    big = m.Activation(
        0, bytes(32), m.Identity(b"x"), m.Certificate(bytes(65500)), m.EcdhParams(b"\x06\x01\x00")
    )
    with pytest.raises(WaiDecodeError, match="65535"):
        m.encode_packet(big, 1)
    with pytest.raises(WaiDecodeError):
        m.Certificate(bytes(70000)).encode()


def test_wapi_ie_round_trip_and_strictness() -> None:
    ie = m.WapiIE(akm_suites=(m.AKM_CERT_SM,), bkids=(bytes(16),))
    raw = ie.encode()
    assert raw[:2] == bytes([68, len(raw) - 2])
    assert raw[2:4] == b"\x01\x00"  # little-endian version
    assert m.WapiIE.decode(raw) == ie
    for n in range(len(raw)):
        with pytest.raises(WaiDecodeError):
            m.WapiIE.decode(raw[:n])
    with pytest.raises(WaiDecodeError):
        m.WapiIE.decode(raw + b"\x00")


def test_fragmentation_round_trip_and_reassembly_errors() -> None:
    msg = next(a for a, _ in CASES if isinstance(a, m.AccessAuthResponse) and a.asu_sig_ae)
    pkt = m.encode_packet(msg, seq=3)
    frags = m.fragment(pkt, 200)
    assert len(frags) > 2 and all(len(f) <= 200 for f in frags)
    assert [f[10] for f in frags] == list(range(len(frags)))
    assert all(f[11] == 1 for f in frags[:-1]) and frags[-1][11] == 0
    r = m.Reassembler()
    outs = [r.feed(f) for f in frags]
    assert outs[:-1] == [None] * (len(frags) - 1) and outs[-1] == pkt
    with pytest.raises(WaiDecodeError, match="reassemble"):
        m.decode_packet(frags[0])
    r = m.Reassembler()
    with pytest.raises(WaiDecodeError, match="without its first"):
        r.feed(frags[1])
    r.feed(frags[0])
    with pytest.raises(WaiDecodeError, match="out of order"):
        r.feed(frags[2])
    r = m.Reassembler(limit=400)
    with pytest.raises(WaiDecodeError, match="too large"):
        for f in frags:
            r.feed(f)
