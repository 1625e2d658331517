"""Generate the encrypted-file test kit: valid and malformed files of the format in
``docs/file-format.md`` and ``manifest.json``, which lists for each file the outcome
every reader must produce (the plaintext's SM3, or the exact error class, code and
message).

This is an independent writer of the format, built from the specification and the
primitives only (SM3, HMAC-SM3, SM4-GCM, SM2 point arithmetic); it does not import
``mstcrypt.apps.files``. It is deterministic: the keys, file keys, salts and even the
SM2 encryption nonces k are fixed, so the output is byte-for-byte reproducible and the
test suite checks that the stored corpus equals a fresh run.

    python tests/filekit/generate.py [OUTPUT_DIR]     # default: this directory
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mstcrypt.crypto import sm4
from mstcrypt.crypto.curve import N
from mstcrypt.crypto.hazmat.ec import Point, mul_base
from mstcrypt.crypto.sm3 import hmac_sm3, kdf, sm3
from mstcrypt.formats.gmt0009 import SM2CipherParts, encode_cipher

HERE = Path(__file__).resolve().parent
MAGIC = b"\x89MST\r\n\x1a\n"
LOG2 = 10  # 1 KiB chunks keep the corpus small
C = 1 << LOG2


def scalar(label: str) -> int:
    return int.from_bytes(sm3(b"mstcrypt filekit " + label.encode()), "big") % (N - 2) + 1


@dataclass(frozen=True)
class Key:
    name: str
    d: int

    @property
    def point(self) -> Point:
        return mul_base(self.d)

    @property
    def public(self) -> bytes:
        return self.point.to_bytes()

    @property
    def key_id(self) -> bytes:
        return sm3(self.public)


READER = Key("reader", scalar("reader"))
OTHER = Key("other", scalar("other"))
ESCROW = Key("escrow", scalar("escrow"))
ATTACKER = Key("attacker", scalar("attacker"))
FEK = sm3(b"mstcrypt filekit fek")[:16]
FEK2 = sm3(b"mstcrypt filekit fek 2")[:16]
SALT = sm3(b"mstcrypt filekit salt")[:16]
CERT_FP = sm3(b"mstcrypt filekit certificate")


def sm2_encrypt(to: Key, msg: bytes, label: str) -> bytes:
    """SM2 encryption (GB/T 32918.4) with a fixed k, as DER SM2Cipher (C1, C3, C2)."""
    k = scalar("k " + label)
    c1 = mul_base(k)
    s = to.point * k
    x2, y2 = s.x.to_bytes(32, "big"), s.y.to_bytes(32, "big")
    t = kdf(x2 + y2, len(msg))
    c2 = bytes(a ^ b for a, b in zip(msg, t, strict=True))
    return encode_cipher(SM2CipherParts(c1, sm3(x2 + msg + y2), c2))


def der_len(n: int) -> bytes:
    return bytes([n]) if n < 0x80 else bytes([0x81, n])


def der_int(v: int) -> bytes:
    body = v.to_bytes(v.bit_length() // 8 + 1, "big")
    return b"\x02" + der_len(len(body)) + body


def keys(fek: bytes, salt: bytes) -> tuple[bytes, bytes, bytes]:
    """(K_header, K_payload, N_prefix) per §4: HKDF-SM3 with one-block expands."""
    prk = hmac_sm3(salt, fek)
    return (
        hmac_sm3(prk, b"mstcrypt/file/v1 header\x01"),
        hmac_sm3(prk, b"mstcrypt/file/v1 payload\x01")[:16],
        hmac_sm3(prk, b"mstcrypt/file/v1 nonce\x01")[:4],
    )


def stanza(
    to: Key,
    *,
    kind: int = 1,
    flags: int | None = None,
    key_id: bytes | None = None,
    cert_fp: bytes | None = None,
    wrapped: bytes | None = None,
    length: int | None = None,
    fek: bytes = FEK,
    label: str = "",
) -> bytes:
    if wrapped is None:
        wrapped = sm2_encrypt(to, fek, f"{to.name} {label}")
    if flags is None:
        flags = 1 if cert_fp is not None else 0
    return (
        bytes([kind, flags])
        + (key_id if key_id is not None else to.key_id)
        + (cert_fp or b"")
        + (len(wrapped) if length is None else length).to_bytes(2, "big")
        + wrapped
    )


def seal(k_payload: bytes, prefix: bytes, index: int, final: bool, data: bytes) -> bytes:
    nonce = prefix + index.to_bytes(7, "big") + (b"\x01" if final else b"\x00")
    return sm4.gcm_encrypt(k_payload, nonce, data)


def plaintext(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + 3 + seed) & 0xFF for i in range(n))


def split(pt: bytes, size: int = C) -> list[bytes]:
    if not pt:
        return [b""]
    return [pt[i : i + size] for i in range(0, len(pt), size)]


@dataclass
class File:
    """A file under construction: every field may be overridden to break one rule."""

    plaintext: bytes = b""
    stanzas: list[bytes] = field(default_factory=lambda: [stanza(READER)])
    magic: bytes = MAGIC
    version: int = 1
    suite: int = 1
    log2: int = LOG2
    flags: int = 0
    salt: bytes = SALT
    count: int | None = None
    fek: bytes = FEK
    mac: bytes | None = None
    mac_over: Callable[[bytes], bytes] | None = None  # MAC computed over another header
    chunks: list[tuple[int, bool, bytes]] | None = None  # (counter, final, plaintext)
    payload_chunk: int | None = None  # plaintext chunk size used for the payload
    payload_keys: tuple[bytes, bytes] | None = None

    def header(self) -> bytes:
        n = len(self.stanzas) if self.count is None else self.count
        body = (
            self.magic
            + bytes([self.version, self.suite, self.log2, self.flags])
            + self.salt
            + n.to_bytes(2, "big")
            + b"".join(self.stanzas)
        )
        k_header, _, _ = keys(self.fek, self.salt)
        if self.mac is not None:
            return body + self.mac
        signed = self.mac_over(body) if self.mac_over else body
        return body + hmac_sm3(k_header, signed)

    def chunk_list(self) -> list[tuple[int, bool, bytes]]:
        if self.chunks is not None:
            return self.chunks
        parts = split(self.plaintext, self.payload_chunk or (1 << self.log2))
        return [(i, i == len(parts) - 1, p) for i, p in enumerate(parts)]

    def payload_parts(self) -> list[bytes]:
        _, k_payload, prefix = keys(self.fek, self.salt)
        if self.payload_keys is not None:
            k_payload, prefix = self.payload_keys
        return [seal(k_payload, prefix, i, f, p) for i, f, p in self.chunk_list()]

    def build(self) -> bytes:
        return self.header() + b"".join(self.payload_parts())


def ok(pt: bytes) -> dict[str, Any]:
    return {"expect": "ok", "plaintext_size": len(pt), "plaintext_sm3": sm3(pt).hex()}


def err(cls: str, code: str, message: str) -> dict[str, Any]:
    return {"expect": "error", "class": cls, "code": code, "message": message}


def fmt(code: str, message: str) -> dict[str, Any]:
    return err("FileFormatError", code, message)


def payload(code: str, message: str) -> dict[str, Any]:
    return err("PayloadError", code, message)


def kid8(k: Key) -> str:
    return k.key_id[:8].hex()


MAC_MISMATCH = err(
    "HeaderMacError",
    "header-mac-mismatch",
    "header MAC does not verify: the header was modified or the stanza wraps a different file key",
)
UNWRAP_FAILED = err(
    "StanzaUnwrapError",
    "stanza-decrypt-failed",
    f"stanza for key {kid8(READER)}… does not decrypt (SM2 C3 mismatch): the stanza was modified",
)


def no_match(n: int) -> dict[str, Any]:
    return err(
        "NoMatchingRecipientError",
        "no-matching-recipient",
        f"the file is not encrypted to this key (tried {kid8(READER)}…; the header names "
        f"{n} stanza(s))",
    )


def auth(i: int) -> dict[str, Any]:
    return payload("chunk-auth-failed", f"chunk {i} fails authentication")


def cases() -> list[tuple[str, str, bytes, dict[str, Any]]]:
    """(name, description, file bytes, expectation)."""
    out: list[tuple[str, str, bytes, dict[str, Any]]] = []

    def add(name: str, desc: str, data: bytes, expect: dict[str, Any]) -> None:
        out.append((name, desc, data, expect))

    base = File(plaintext=plaintext(2 * C + 100))
    good = base.build()
    hsize = len(base.header())
    p3 = base.payload_parts()  # chunks of C+16, C+16, 116 bytes
    full2 = File(plaintext=plaintext(2 * C, 1))  # the final chunk is full
    f2 = full2.payload_parts()

    # --- valid files ------------------------------------------------------------------
    for name, desc, n in (
        ("ok_empty", "empty plaintext: one empty final chunk (16-byte tag)", 0),
        ("ok_one_byte", "1-byte plaintext", 1),
        ("ok_chunk_minus_one", "C-1 bytes: one partial final chunk", C - 1),
        ("ok_one_full_chunk", "exactly C bytes: one full final chunk", C),
        ("ok_chunk_plus_one", "C+1 bytes: a full chunk and a 1-byte final chunk", C + 1),
        ("ok_three_chunks", "2C+100 bytes", 2 * C + 100),
        ("ok_two_full_chunks", "exactly 2C bytes: the final chunk is full", 2 * C),
    ):
        pt = plaintext(n, n)
        add(name, desc, File(plaintext=pt).build(), ok(pt))
    pt = plaintext(500, 9)
    add(
        "ok_multi_recipient",
        "three recipients; the reader's stanza is the second",
        File(pt, [stanza(OTHER), stanza(READER), stanza(ATTACKER)]).build(),
        ok(pt),
    )
    add(
        "ok_escrow",
        "a recipient stanza and an escrow stanza for the KMC file-recovery key",
        File(pt, [stanza(READER), stanza(ESCROW, kind=2)]).build(),
        ok(pt),
    )
    add(
        "ok_cert_fingerprint",
        "a stanza that names its certificate's SM3 fingerprint (flags bit 0)",
        File(pt, [stanza(READER, cert_fp=CERT_FP)]).build(),
        ok(pt),
    )
    add(
        "ok_max_chunk_size",
        "chunk_log2 = 24 (16 MiB chunks) with a short plaintext",
        File(pt, log2=24).build(),
        ok(pt),
    )
    pt64 = plaintext(70000, 3)
    add(
        "ok_default_chunk_size",
        "chunk_log2 = 16, 70000 bytes",
        File(pt64, log2=16).build(),
        ok(pt64),
    )

    # --- header structure ----------------------------------------------------------------
    add(
        "header_empty_file",
        "a zero-byte file",
        b"",
        fmt("truncated-header", "file ends inside the header (magic)"),
    )
    add(
        "header_truncated_magic",
        "the first 5 bytes of the magic",
        good[:5],
        fmt("truncated-header", "file ends inside the header (magic)"),
    )
    add(
        "header_truncated_salt",
        "cut inside the salt",
        good[:20],
        fmt("truncated-header", "file ends inside the header (salt)"),
    )
    add(
        "header_truncated_stanza",
        "cut inside the first stanza's wrapped key",
        good[:100],
        fmt("truncated-header", "file ends inside the header (stanza 0 wrapped key)"),
    )
    add(
        "header_truncated_mac",
        "cut inside the header MAC",
        good[: hsize - 10],
        fmt("truncated-header", "file ends inside the header (header MAC)"),
    )
    add(
        "bad_magic",
        "one byte of the magic changed",
        b"\x89MSU" + good[4:],
        fmt("bad-magic", "not an mstcrypt encrypted file (bad magic)"),
    )
    add(
        "bad_magic_crlf_mangled",
        "CR LF in the magic turned into LF (text-mode transfer)",
        good[:4] + good[5:],
        fmt("bad-magic", "not an mstcrypt encrypted file (bad magic)"),
    )
    add(
        "bad_magic_age",
        "an age file",
        b"age-encryption.org/v1\n-> X25519 abc\n",
        fmt("bad-magic", "not an mstcrypt encrypted file (bad magic)"),
    )
    for v in (0, 2):
        add(
            f"version_{v}",
            f"version byte {v}",
            replace(base, version=v).build(),
            fmt("unsupported-version", f"unsupported format version {v} (expected 1)"),
        )
    add(
        "suite_2",
        "unknown algorithm suite 0x02",
        replace(base, suite=2).build(),
        fmt("unsupported-suite", "unsupported algorithm suite 0x02"),
    )
    for e in (9, 25, 0):
        add(
            f"chunk_log2_{e}",
            f"chunk size exponent {e}",
            replace(base, log2=e).build(),
            fmt("bad-chunk-size", f"chunk size exponent {e} outside 10..24"),
        )
    add(
        "header_flags_set",
        "a reserved header flag",
        replace(base, flags=0x80).build(),
        fmt("bad-header-flags", "reserved header flags set (0x80)"),
    )
    add(
        "no_stanzas",
        "stanza count 0",
        replace(base, stanzas=[]).build(),
        fmt("no-stanzas", "header has no recipient stanza"),
    )
    add(
        "too_many_stanzas",
        "stanza count 257",
        replace(base, count=257).build(),
        fmt("too-many-stanzas", "header has 257 stanzas (at most 256)"),
    )
    count2 = replace(base, count=2).build()
    assert count2[hsize - 32] not in (1, 2), "the MAC's first byte must not be a stanza kind"
    add(
        "stanza_count_too_high",
        "stanza count 2 but one stanza: the MAC is read as a stanza",
        count2,
        fmt("bad-stanza-kind", f"stanza 1: unknown kind {count2[hsize - 32]:#04x}"),
    )
    for k in (0, 3):
        add(
            f"stanza_kind_{k}",
            f"stanza kind {k}",
            replace(base, stanzas=[stanza(READER, kind=k)]).build(),
            fmt("bad-stanza-kind", f"stanza 0: unknown kind {k:#04x}"),
        )
    add(
        "stanza_flags_reserved",
        "a reserved stanza flag bit",
        replace(base, stanzas=[stanza(READER, flags=0x02)]).build(),
        fmt("bad-stanza-flags", "stanza 0: reserved flags set (0x02)"),
    )
    add(
        "stanza_length_0",
        "wrapped key length 0",
        replace(base, stanzas=[stanza(READER, wrapped=b"", length=0)]).build(),
        fmt("bad-stanza-length", "stanza 0: wrapped key length 0 outside 1..1024"),
    )
    add(
        "stanza_length_1025",
        "wrapped key length 1025",
        replace(base, stanzas=[stanza(READER, wrapped=bytes(1025))]).build(),
        fmt("bad-stanza-length", "stanza 0: wrapped key length 1025 outside 1..1024"),
    )
    not_der = "stanza 0: wrapped key is not a canonical DER SM2Cipher"
    w = sm2_encrypt(READER, FEK, "reader ")
    add(
        "wrapped_not_der",
        "the wrapped key is 100 bytes of 0x41",
        replace(base, stanzas=[stanza(READER, wrapped=b"A" * 100)]).build(),
        fmt("bad-wrapped-key", not_der),
    )
    add(
        "wrapped_trailing_byte",
        "a byte after the DER SM2Cipher (inside the stanza length)",
        replace(base, stanzas=[stanza(READER, wrapped=w + b"\x00")]).build(),
        fmt("bad-wrapped-key", not_der),
    )
    assert w[1] < 0x80, "the test DER SM2Cipher uses a short-form length"
    body = w[2:]
    add(
        "wrapped_long_form_length",
        "the SEQUENCE length in non-minimal long form",
        replace(
            base, stanzas=[stanza(READER, wrapped=b"\x30\x81" + bytes([len(body)]) + body)]
        ).build(),
        fmt("bad-wrapped-key", not_der),
    )
    g = mul_base(1)
    off = der_int(g.x) + der_int(g.y ^ 1) + b"\x04\x20" + bytes(32) + b"\x04\x10" + bytes(16)
    add(
        "wrapped_c1_off_curve",
        "C1 is not a point on the curve",
        replace(base, stanzas=[stanza(READER, wrapped=b"\x30" + der_len(len(off)) + off)]).build(),
        fmt("bad-wrapped-key", not_der),
    )
    add(
        "wrapped_17_byte_key",
        "the stanza wraps 17 bytes",
        replace(base, stanzas=[stanza(READER, fek=FEK + b"\x00")]).build(),
        fmt("bad-wrapped-key", "stanza 0: wrapped key holds 17 bytes, expected a 16-byte file key"),
    )
    add(
        "wrapped_15_byte_key",
        "the stanza wraps 15 bytes",
        replace(base, stanzas=[stanza(READER, fek=FEK[:15])]).build(),
        fmt("bad-wrapped-key", "stanza 0: wrapped key holds 15 bytes, expected a 16-byte file key"),
    )
    add(
        "duplicate_recipient",
        "two stanzas name the reader's key",
        replace(base, stanzas=[stanza(READER), stanza(READER, label="again")]).build(),
        fmt("duplicate-recipient", f"stanza 1: key {kid8(READER)}… named twice"),
    )
    add(
        "duplicate_escrow",
        "two escrow stanzas",
        replace(
            base, stanzas=[stanza(READER), stanza(ESCROW, kind=2), stanza(OTHER, kind=2)]
        ).build(),
        fmt("duplicate-escrow", "stanza 2: a second escrow stanza"),
    )

    # --- stanzas and the header MAC ----------------------------------------------------------
    add(
        "stanza_for_other_recipient",
        "the only stanza is for another key",
        replace(base, stanzas=[stanza(OTHER)]).build(),
        no_match(1),
    )
    add(
        "escrow_only",
        "the only stanza is the escrow stanza",
        replace(base, stanzas=[stanza(ESCROW, kind=2)]).build(),
        no_match(1),
    )
    add(
        "stanza_key_id_relabelled",
        "a stanza wrapped to another key relabelled with the reader's key id",
        replace(base, stanzas=[stanza(OTHER, key_id=READER.key_id)]).build(),
        UNWRAP_FAILED,
    )
    c2_flip = bytearray(w)
    c2_flip[-1] ^= 1
    add(
        "stanza_c2_tampered",
        "one bit of C2 flipped",
        replace(base, stanzas=[stanza(READER, wrapped=bytes(c2_flip))]).build(),
        UNWRAP_FAILED,
    )
    c3_flip = bytearray(w)
    c3_flip[-20] ^= 0x80
    add(
        "stanza_c3_tampered",
        "one bit of C3 flipped",
        replace(base, stanzas=[stanza(READER, wrapped=bytes(c3_flip))]).build(),
        UNWRAP_FAILED,
    )
    add(
        "stanza_replaced",
        "the stanza replaced by one wrapping another FEK to the reader (MAC unchanged)",
        good[:30] + stanza(READER, fek=FEK2) + good[hsize - 32 :],
        MAC_MISMATCH,
    )
    add(
        "header_mac_flipped",
        "one bit of the header MAC flipped",
        good[: hsize - 1] + bytes([good[hsize - 1] ^ 1]) + good[hsize:],
        MAC_MISMATCH,
    )
    add(
        "header_mac_zero",
        "the header MAC is all zeros",
        replace(base, mac=bytes(32)).build(),
        MAC_MISMATCH,
    )
    add(
        "stanza_added",
        "an attacker's stanza appended (count updated, MAC of the original)",
        replace(
            base, stanzas=[stanza(READER), stanza(ATTACKER)], mac=good[hsize - 32 : hsize]
        ).build(),
        MAC_MISMATCH,
    )
    three = File(plaintext(300), [stanza(READER), stanza(OTHER), stanza(ESCROW, kind=2)])
    add(
        "stanza_removed",
        "a three-stanza header with the second stanza removed (MAC of the original)",
        replace(
            three, stanzas=[three.stanzas[0], three.stanzas[2]], mac=three.header()[-32:]
        ).build(),
        MAC_MISMATCH,
    )
    add(
        "stanzas_reordered",
        "the stanzas of a three-stanza header reordered (MAC of the original)",
        replace(three, stanzas=three.stanzas[::-1], mac=three.header()[-32:]).build(),
        MAC_MISMATCH,
    )
    add(
        "salt_changed",
        "one bit of the salt flipped (MAC of the original)",
        replace(base, salt=bytes([SALT[0] ^ 1]) + SALT[1:], mac=good[hsize - 32 : hsize]).build(),
        MAC_MISMATCH,
    )
    add(
        "chunk_size_changed",
        "chunk_log2 changed from 10 to 11 (MAC of the original)",
        replace(base, log2=11, mac=good[hsize - 32 : hsize]).build(),
        MAC_MISMATCH,
    )
    add(
        "cert_fingerprint_added",
        "a certificate fingerprint added to the stanza (MAC of the original)",
        replace(
            base, stanzas=[stanza(READER, cert_fp=CERT_FP)], mac=good[hsize - 32 : hsize]
        ).build(),
        MAC_MISMATCH,
    )

    # --- payload -------------------------------------------------------------------------------
    h = base.header()
    add(
        "missing_payload",
        "a header and nothing else",
        h,
        payload("missing-payload", "payload is empty (no final chunk)"),
    )
    add(
        "final_chunk_shorter_than_tag",
        "the final chunk cut to 10 bytes",
        h + p3[0] + p3[1] + p3[2][:10],
        payload("truncated-chunk", "chunk 2 is 10 bytes, shorter than its 16-byte tag"),
    )
    add(
        "final_chunk_truncated",
        "the final chunk loses its last byte",
        good[:-1],
        auth(2),
    )
    add("chunks_swapped", "chunks 0 and 1 swapped", h + p3[1] + p3[0] + p3[2], auth(0))
    add("chunk_duplicated", "chunk 0 repeated", h + p3[0] + p3[0] + p3[1] + p3[2], auth(1))
    add(
        "middle_chunk_dropped",
        "chunk 1 of 3 removed",
        h + p3[0] + p3[2],
        auth(1),
    )
    add(
        "last_chunk_dropped",
        "the partial final chunk removed: the file ends after a full non-final chunk",
        h + p3[0] + p3[1],
        payload(
            "missing-final-chunk",
            "file truncated: chunk 1 is not the final chunk and nothing follows it",
        ),
    )
    h2 = full2.header()
    add(
        "data_after_full_final_chunk",
        "one byte appended after a full final chunk",
        h2 + f2[0] + f2[1] + b"\x00",
        payload("trailing-data", "data follows the final chunk (chunk 1)"),
    )
    add(
        "chunk_appended_after_final",
        "a copy of chunk 0 appended after a full final chunk",
        h2 + f2[0] + f2[1] + f2[0],
        payload("trailing-data", "data follows the final chunk (chunk 1)"),
    )
    add(
        "data_after_partial_final_chunk",
        "50 bytes appended after a partial final chunk",
        good + bytes(50),
        auth(2),
    )
    add(
        "empty_final_chunk_after_full",
        "2C bytes encoded as two full non-final chunks and an empty final chunk",
        replace(
            full2,
            chunks=[
                (0, False, full2.plaintext[:C]),
                (1, False, full2.plaintext[C:]),
                (2, True, b""),
            ],
        ).build(),
        payload("empty-final-chunk", "chunk 2 is an empty final chunk after a full one"),
    )
    add(
        "final_flag_on_middle_chunk",
        "chunk 1 of 3 carries the final flag",
        replace(
            base,
            chunks=[
                (0, False, base.plaintext[:C]),
                (1, True, base.plaintext[C : 2 * C]),
                (2, True, base.plaintext[2 * C :]),
            ],
        ).build(),
        payload("trailing-data", "data follows the final chunk (chunk 1)"),
    )
    add(
        "partial_final_chunk_without_flag",
        "the partial last chunk is not flagged final",
        replace(
            base,
            chunks=[
                (0, False, base.plaintext[:C]),
                (1, False, base.plaintext[C : 2 * C]),
                (2, False, base.plaintext[2 * C :]),
            ],
        ).build(),
        auth(2),
    )
    add(
        "full_final_chunk_without_flag",
        "2C bytes whose full last chunk is not flagged final",
        replace(
            full2,
            chunks=[(0, False, full2.plaintext[:C]), (1, False, full2.plaintext[C:])],
        ).build(),
        payload(
            "missing-final-chunk",
            "file truncated: chunk 1 is not the final chunk and nothing follows it",
        ),
    )
    add(
        "short_non_final_chunk",
        "chunk 0 holds 1000 bytes (not C) but is not final",
        replace(
            base,
            chunks=[(0, False, base.plaintext[:1000]), (1, True, base.plaintext[1000:1500])],
        ).build(),
        auth(0),
    )
    empty = File(b"")
    add(
        "empty_plaintext_not_final",
        "the only, empty chunk is not flagged final",
        replace(empty, chunks=[(0, False, b"")]).build(),
        auth(0),
    )
    add(
        "empty_plaintext_two_empty_chunks",
        "an empty non-final chunk followed by an empty final chunk",
        replace(empty, chunks=[(0, False, b""), (1, True, b"")]).build(),
        auth(0),
    )
    add(
        "counter_starts_at_1",
        "chunk counters 1, 2, 3 instead of 0, 1, 2",
        replace(base, chunks=[(i + 1, f, p) for i, f, p in base.chunk_list()]).build(),
        auth(0),
    )
    add(
        "nonce_prefix_zero",
        "chunks sealed with a zero nonce prefix",
        replace(base, payload_keys=(keys(FEK, SALT)[1], bytes(4))).build(),
        auth(0),
    )
    add(
        "payload_key_is_fek",
        "chunks sealed with the FEK itself instead of K_payload",
        replace(base, payload_keys=(FEK, keys(FEK, SALT)[2])).build(),
        auth(0),
    )
    add(
        "wrong_chunk_size",
        "the payload is cut in 2 KiB chunks, the header says 1 KiB",
        replace(base, payload_chunk=2 * C).build(),
        auth(0),
    )
    add(
        "ciphertext_bit_flipped",
        "one bit of chunk 1's ciphertext flipped",
        good[: hsize + C + 16 + 5]
        + bytes([good[hsize + C + 16 + 5] ^ 4])
        + good[hsize + C + 16 + 6 :],
        auth(1),
    )
    add(
        "tag_bit_flipped",
        "one bit of chunk 0's tag flipped",
        good[: hsize + C + 15] + bytes([good[hsize + C + 15] ^ 1]) + good[hsize + C + 16 :],
        auth(0),
    )
    other_file = File(plaintext(2 * C + 100), fek=FEK2)
    add(
        "payload_from_other_file",
        "this header with the payload of a file under another FEK",
        h + b"".join(other_file.payload_parts()),
        auth(0),
    )
    add(
        "header_from_other_file",
        "the header of a file under another FEK (same recipient) with this payload",
        replace(other_file, stanzas=[stanza(READER, fek=FEK2, label="2")]).header() + b"".join(p3),
        auth(0),
    )
    return out


def generate(outdir: Path) -> dict[str, Any]:
    corpus = outdir / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    entries = []
    names = set()
    for name, desc, data, expect in cases():
        if name in names:
            raise SystemExit(f"duplicate case name {name}")
        names.add(name)
        (corpus / name).write_bytes(data)
        entries.append(
            {"file": f"corpus/{name}", "description": desc, "sm3": sm3(data).hex(), **expect}
        )
    manifest = {
        "format": "mstcrypt-filekit",
        "version": 1,
        "spec": "docs/file-format.md",
        "reader": {"private_key": f"{READER.d:064x}", "public_key": READER.public.hex()},
        "escrow": {"private_key": f"{ESCROW.d:064x}", "public_key": ESCROW.public.hex()},
        "cases": entries,
    }
    (outdir / "manifest.json").write_text(
        json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return manifest


def main(argv: list[str]) -> None:
    out = Path(argv[1]) if len(argv) > 1 else HERE
    manifest = generate(out)
    print(f"{len(manifest['cases'])} files in {out / 'corpus'}")


if __name__ == "__main__":
    main(sys.argv)
