"""One well-formed instance of every WAI message, with the bytes an independent encoder
(tests/wapi/kit.py) produces for it."""

from __future__ import annotations

import struct

import wapi_kit as kit

from mstcrypt.protocols.wai import messages as m
from mstcrypt.protocols.wai.constants import AccessResult, Flag, VerifyResult

OID192 = bytes.fromhex("06092a811cd76301010201")
AE_MAC = bytes.fromhex("020000000001")
STA_MAC = bytes.fromhex("020000000002")
ADDID = AE_MAC + STA_MAC


def b(n: int, fill: int) -> bytes:
    return bytes([fill]) * n


AE_ID = b(40, 0xA1)
ASUE_ID = b(41, 0xA2)
ASU_ID = b(42, 0xA3)
AE_CERT = b(300, 0xC1)
ASUE_CERT = b(301, 0xC2)
KEY_ASUE = b"\x04" + b(48, 0x51)
KEY_AE = b"\x04" + b(48, 0x52)
IE = m.WapiIE().encode()


def sig(ident: bytes, fill: int) -> tuple[m.SignatureAttr, bytes]:
    value = b(48, fill)
    return (
        m.SignatureAttr(m.Identity(ident), 1, 1, OID192, value),
        kit.signature(ident, 1, 1, OID192, value),
    )


def cases() -> list[tuple[m.Message, bytes]]:
    s_asue, s_asue_b = sig(ASUE_ID, 0x61)
    s_ae, s_ae_b = sig(AE_ID, 0x62)
    s_asu, s_asu_b = sig(ASU_ID, 0x63)
    s_asu2, s_asu2_b = sig(ASU_ID, 0x64)
    cvr = m.CertVerifyResult(
        b(32, 0x71),
        b(32, 0x72),
        VerifyResult.VALID,
        m.Certificate(ASUE_CERT),
        VerifyResult.REVOKED,
        m.Certificate(AE_CERT),
    )
    cvr_b = kit.flatten(
        [
            (
                "attr",
                (
                    2,
                    kit.flatten(
                        [
                            ("raw", b(32, 0x71)),
                            ("raw", b(32, 0x72)),
                            ("u8", 0),
                            ("tlv16", (1, ASUE_CERT)),
                            ("u8", 5),
                            ("tlv16", (1, AE_CERT)),
                        ]
                    ),
                ),
            )
        ]
    )
    asu_list = kit.flatten(
        [("attr", (3, b"\x00" + struct.pack(">H", 1) + kit.flatten([("tlv16", (1, ASU_ID))])))]
    )
    out: list[tuple[m.Message, bytes]] = []
    out.append(
        (
            m.Activation(
                Flag.CERT_AUTH_REQUIRED,
                b(32, 0x11),
                m.Identity(ASU_ID),
                m.Certificate(AE_CERT),
                m.EcdhParams(OID192),
            ),
            kit.flatten(
                [
                    ("u8", 4),
                    ("raw", b(32, 0x11)),
                    ("tlv16", (1, ASU_ID)),
                    ("tlv16", (1, AE_CERT)),
                    ("ecdh", (1, OID192)),
                ]
            ),
        )
    )
    for with_list in (False, True):
        msg = m.AccessAuthRequest(
            8 if with_list else 0,
            b(32, 0x11),
            b(32, 0x12),
            KEY_ASUE,
            m.Identity(AE_ID),
            m.Certificate(ASUE_CERT),
            m.EcdhParams(OID192),
            (m.Identity(ASU_ID),) if with_list else None,
            s_asue,
        )
        items = [
            ("u8", 8 if with_list else 0),
            ("raw", b(32, 0x11)),
            ("raw", b(32, 0x12)),
            ("key", KEY_ASUE),
            ("tlv16", (1, AE_ID)),
            ("tlv16", (1, ASUE_CERT)),
            ("ecdh", (1, OID192)),
        ]
        out.append((msg, kit.flatten(items) + (asu_list if with_list else b"") + s_asue_b))
    base = [
        ("raw", b(32, 0x12)),
        ("raw", b(32, 0x13)),
        ("u8", 0),
        ("key", KEY_ASUE),
        ("key", KEY_AE),
        ("tlv16", (1, AE_ID)),
        ("tlv16", (1, ASUE_ID)),
    ]
    for variant in ("plain", "one", "two"):
        msg = m.AccessAuthResponse(
            0 if variant == "plain" else 8,
            b(32, 0x12),
            b(32, 0x13),
            AccessResult.SUCCESS,
            KEY_ASUE,
            KEY_AE,
            m.Identity(AE_ID),
            m.Identity(ASUE_ID),
            None if variant == "plain" else cvr,
            None if variant == "plain" else s_asu,
            s_asu2 if variant == "two" else None,
            s_ae,
        )
        opt = (
            b"" if variant == "plain" else cvr_b + s_asu_b + (s_asu2_b if variant == "two" else b"")
        )
        out.append(
            (msg, kit.flatten([("u8", 0 if variant == "plain" else 8), *base]) + opt + s_ae_b)
        )
    out.append(
        (
            m.CertAuthRequest(
                ADDID, b(32, 0x14), b(32, 0x12), m.Certificate(ASUE_CERT), m.Certificate(AE_CERT)
            ),
            kit.flatten(
                [
                    ("raw", ADDID),
                    ("raw", b(32, 0x14)),
                    ("raw", b(32, 0x12)),
                    ("tlv16", (1, ASUE_CERT)),
                    ("tlv16", (1, AE_CERT)),
                ]
            ),
        )
    )
    out.append((m.CertAuthResponse(ADDID, cvr, s_asu), ADDID + cvr_b + s_asu_b))
    out.append((m.CertAuthResponse(ADDID, cvr, s_asu, s_asu2), ADDID + cvr_b + s_asu_b + s_asu2_b))
    bkid = b(16, 0x21)
    out.append(
        (
            m.UnicastKeyRequest(0, bkid, 0, ADDID, b(32, 0x15)),
            b"\x00" + bkid + b"\x00" + ADDID + b(32, 0x15),
        )
    )
    out.append(
        (
            m.UnicastKeyResponse(0, bkid, 1, ADDID, b(32, 0x16), b(32, 0x15), IE, b(20, 0x31)),
            b"\x00" + bkid + b"\x01" + ADDID + b(32, 0x16) + b(32, 0x15) + IE + b(20, 0x31),
        )
    )
    out.append(
        (
            m.UnicastKeyConfirm(0, bkid, 1, ADDID, b(32, 0x16), IE, b(20, 0x32)),
            b"\x00" + bkid + b"\x01" + ADDID + b(32, 0x16) + IE + b(20, 0x32),
        )
    )
    out.append(
        (
            m.MulticastAnnounce(0, 1, 0, ADDID, b(16, 0x41), b(16, 0x42), b(16, 0x43), b(20, 0x33)),
            b"\x00\x01\x00"
            + ADDID
            + b(16, 0x41)
            + b(16, 0x42)
            + b"\x10"
            + b(16, 0x43)
            + b(20, 0x33),
        )
    )
    out.append(
        (
            m.MulticastAnnounceResponse(0, 1, 0, ADDID, b(16, 0x42), b(20, 0x34)),
            b"\x00\x01\x00" + ADDID + b(16, 0x42) + b(20, 0x34),
        )
    )
    out.append(
        (
            m.PreAuthStart(2, 0, ADDID, b(16, 0x44), b(20, 0x35)),
            b"\x02\x00" + ADDID + b(16, 0x44) + b(20, 0x35),
        )
    )
    out.append(
        (
            m.StaKeyRequest(0x20, 3, 0, ADDID, b(16, 0x45), b(20, 0x36)),
            b"\x20\x03\x00" + ADDID + b(16, 0x45) + b(20, 0x36),
        )
    )
    return out
