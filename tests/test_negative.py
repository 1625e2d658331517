"""Negative tests (malformed encodings, off-curve points, out-of-range values, tampering,
wrong keys/IDs/passwords), a fuzz test of every parser, and round trips of every format.

Every failure must be reported with the documented subclass of MstCryptError; the fuzz
tests check that no parser ever leaks ValueError/IndexError/TypeError/... instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mstcrypt import errors
from mstcrypt.crypto import sm4
from mstcrypt.crypto.curve import GX, GY, A, B, N, P
from mstcrypt.crypto.hazmat.ec import Point, generator, mul_base
from mstcrypt.crypto.sm2 import (
    SM2PrivateKey,
    SM2PublicKey,
    signature_from_raw,
    signature_to_raw,
)
from mstcrypt.crypto.sm2_kex import KeyExchangeInitiator, KeyExchangeResponder
from mstcrypt.crypto.sm3 import HmacSM3, hmac_sm3, hmac_sm3_verify, kdf, pbkdf2_hmac_sm3
from mstcrypt.errors import (
    DecodeError,
    DecryptionError,
    InvalidKeyError,
    MstCryptError,
    PolicyError,
    SignatureFormatError,
    UnsupportedError,
    VerificationError,
)
from mstcrypt.formats.envelope import EnvelopedKey, build_enveloped_key, open_enveloped_key
from mstcrypt.formats.gmt0009 import cipher_from_raw, cipher_to_raw, decode_cipher, encode_cipher
from mstcrypt.formats.keys import (
    dump_private_key,
    dump_public_key,
    load_private_key,
    load_public_key,
    private_key_from_der,
    private_key_to_der,
    public_key_from_der,
    public_key_to_der,
)


def _load(name: str) -> Any:
    return json.loads((Path(__file__).parent / "vectors" / f"{name}.json").read_text("utf-8"))


# Fixed keys and the standard's signature/ciphertext keep every case deterministic.
_SIGN_V = _load("sm2_sign")["vectors"][0]
_ENC_V = _load("sm2_enc")["vectors"][0]
assert _SIGN_V["d"] == _ENC_V["d"]
KEY = SM2PrivateKey.from_bytes(bytes.fromhex(_SIGN_V["d"]))
OTHER = SM2PrivateKey(0x1F2E3D4C5B6A79880123456789ABCDEF0123456789ABCDEF0123456789ABCDEF)
THIRD = SM2PrivateKey(0x0AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA)
PUB = KEY.public_key()
MSG = _SIGN_V["msg_ascii"].encode()

# --- a minimal DER toolkit (test-only) ------------------------------------------------


def tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        length = bytes([n])
    else:
        nb = (n.bit_length() + 7) // 8
        length = bytes([0x80 | nb]) + n.to_bytes(nb, "big")
    return bytes([tag]) + length + body


def split_tlv(der: bytes) -> tuple[int, bytes, bytes]:
    """(tag, content, rest) of the first TLV (definite lengths only)."""
    tag, first = der[0], der[1]
    if first < 0x80:
        start, n = 2, first
    else:
        nb = first & 0x7F
        start, n = 2 + nb, int.from_bytes(der[2 : 2 + nb], "big")
    return tag, der[start : start + n], der[start + n :]


def children(der: bytes) -> list[bytes]:
    _, content, rest = split_tlv(der)
    assert not rest
    out = []
    while content:
        tag, body, content = split_tlv(content)
        out.append(tlv(tag, body))
    return out


def seq(*items: bytes, tag: int = 0x30) -> bytes:
    return tlv(tag, b"".join(items))


def der_int(v: int, *, pad: int = 0) -> bytes:
    body = v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big", signed=v < 0)
    return tlv(0x02, b"\x00" * pad + body)


def pad_first_integer(der: bytes) -> bytes | None:
    """Re-encode the first INTEGER (depth-first) with a superfluous leading 00 byte."""
    tag, content, rest = split_tlv(der)
    assert not rest
    if tag == 0x02:
        return tlv(0x02, b"\x00" + content)
    if not tag & 0x20:
        return None
    kids = children(der)
    for j, kid in enumerate(kids):
        padded = pad_first_integer(kid)
        if padded is not None:
            kids[j] = padded
            return tlv(tag, b"".join(kids))
    return None


def long_form_length(der: bytes) -> bytes:
    """The same value with its outer length in a non-minimal 3-byte long form."""
    tag, content, _ = split_tlv(der)
    return bytes([tag, 0x83]) + len(content).to_bytes(3, "big") + content


def malformed(der: bytes) -> dict[str, bytes]:
    """Generic malformations of one DER SEQUENCE."""
    out = {
        "truncated": der[:-1],
        "truncated-half": der[: len(der) // 2],
        "trailing-byte": der + b"\x00",
        "trailing-tlv": der + b"\x05\x00",
        "wrong-outer-tag": b"\x31" + der[1:],
        "octet-string-tag": b"\x04" + der[1:],
        "non-minimal-length": long_form_length(der),
        "indefinite-length": der[:1] + b"\x80" + split_tlv(der)[1] + b"\x00\x00",
        "empty": b"",
    }
    padded = pad_first_integer(der)
    if padded is not None:
        out["non-minimal-integer"] = padded
    return out


def off_curve(point: bytes) -> bytes:
    """Flip the lowest bit of y: x is unchanged, so the point leaves the curve."""
    return point[:-1] + bytes([point[-1] ^ 1])


def params(cases: dict[str, Any]) -> list[Any]:
    return [pytest.param(v, id=k) for k, v in cases.items()]


# --- error hierarchy ------------------------------------------------------------------


def test_error_hierarchy() -> None:
    assert issubclass(DecodeError, MstCryptError)
    assert issubclass(InvalidKeyError, DecodeError)
    assert issubclass(SignatureFormatError, DecodeError)
    assert issubclass(SignatureFormatError, VerificationError)
    for cls in (
        VerificationError,
        DecryptionError,
        errors.KeyStoreError,
        PolicyError,
        UnsupportedError,
        errors.BackendError,
    ):
        assert issubclass(cls, MstCryptError)
        assert not issubclass(cls, DecodeError)
    assert not issubclass(DecryptionError, VerificationError)
    assert set(errors.__all__) <= set(dir(errors))


# --- signatures -----------------------------------------------------------------------

SIG = signature_from_raw(bytes.fromhex(_SIGN_V["r"] + _SIGN_V["s"]))
_R, _S = int(_SIGN_V["r"], 16), int(_SIGN_V["s"], 16)


def _sig(*integers: bytes) -> bytes:
    return seq(*integers)


SIG_MALFORMED = {
    **malformed(SIG),
    "non-minimal-s": _sig(der_int(_R), der_int(_S, pad=1)),
    "r-as-negative-int": _sig(tlv(0x02, (_R | 1 << 255).to_bytes(32, "big")), der_int(_S)),
    "r-negative": _sig(der_int(-_R), der_int(_S)),
    "octet-string-r": _sig(tlv(0x04, _R.to_bytes(32, "big")), der_int(_S)),
    "three-integers": _sig(der_int(_R), der_int(_S), der_int(1)),
    "one-integer": _sig(der_int(_R)),
    "raw-r-s": _R.to_bytes(32, "big") + _S.to_bytes(32, "big"),
    "huge-r": _sig(der_int(_R << 64), der_int(_S)),
}


@pytest.mark.parametrize("sig", params(SIG_MALFORMED))
def test_malformed_der_signature(sig: bytes) -> None:
    with pytest.raises(SignatureFormatError):
        signature_to_raw(sig)
    with pytest.raises(SignatureFormatError) as info:
        PUB.verify(sig, MSG)
    assert isinstance(info.value, VerificationError)
    assert isinstance(info.value, DecodeError)


@pytest.mark.parametrize(
    ("r", "s"),
    [(0, 1), (1, 0), (0, 0), (N, 1), (1, N), (N + 1, 5), (5, 2**256 - 1)],
)
def test_signature_r_s_out_of_range(r: int, s: int) -> None:
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    with pytest.raises(SignatureFormatError):
        signature_from_raw(raw)
    with pytest.raises(SignatureFormatError):
        PUB.verify(raw, MSG, encoding="raw")
    der = _sig(der_int(r), der_int(s))
    with pytest.raises(SignatureFormatError):
        signature_to_raw(der)
    with pytest.raises(VerificationError):
        PUB.verify(der, MSG)


def test_signature_in_range_but_invalid() -> None:
    PUB.verify(SIG, MSG)  # the standard's signature is valid ...
    for r, s in [(1, 1), (N - 1, N - 1), (_R, N - _R)]:  # the last has r + s = n
        raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        with pytest.raises(VerificationError) as info:
            PUB.verify(raw, MSG, encoding="raw")
        assert not isinstance(info.value, SignatureFormatError)


@pytest.mark.parametrize("length", [0, 63, 65, 72])
def test_raw_signature_wrong_length(length: int) -> None:
    with pytest.raises(SignatureFormatError):
        signature_from_raw(bytes(range(1, length + 1)))
    with pytest.raises(SignatureFormatError):
        PUB.verify(bytes(range(1, length + 1)), MSG, encoding="raw")


def test_der_signature_passed_as_raw_and_vice_versa() -> None:
    with pytest.raises(SignatureFormatError):
        PUB.verify(SIG, MSG, encoding="raw")
    with pytest.raises(SignatureFormatError):
        PUB.verify(signature_to_raw(SIG), MSG, encoding="der")


def test_wrong_signer_id_message_key_or_tampered_signature() -> None:
    uid = b"alice@example.com"
    sig = KEY.sign(MSG, signer_id=uid)
    PUB.verify(sig, MSG, signer_id=uid)
    PUB.verify(sig, MSG, signer_id=uid.decode())  # str IDs are UTF-8 encoded
    cases: list[Callable[[], None]] = [
        lambda: PUB.verify(sig, MSG),  # default ID instead of uid
        lambda: PUB.verify(sig, MSG, signer_id=uid + b"\x00"),
        lambda: PUB.verify(sig, MSG, signer_id=b""),
        lambda: PUB.verify(SIG, MSG, signer_id=uid),
        lambda: PUB.verify(sig, MSG + b"!", signer_id=uid),
        lambda: OTHER.public_key().verify(sig, MSG, signer_id=uid),
        lambda: PUB.verify_digest(sig, PUB.message_digest(MSG)),
        lambda: PUB.verify(
            signature_from_raw(_flip(signature_to_raw(sig), 40)), MSG, signer_id=uid
        ),
    ]
    for case in cases:
        with pytest.raises(VerificationError):
            case()


def _flip(data: bytes, index: int, mask: int = 1) -> bytes:
    return data[:index] + bytes([data[index] ^ mask]) + data[index + 1 :]


def test_digest_and_id_policy() -> None:
    with pytest.raises(PolicyError):
        KEY.sign_digest(b"\x00" * 31)
    with pytest.raises(PolicyError):
        PUB.verify_digest(SIG, b"\x00" * 33)
    with pytest.raises(PolicyError):
        KEY.sign(MSG, signer_id=b"x" * 8192)  # ENTL is 16 bits: at most 8191 bytes
    KEY.public_key().verify(KEY.sign(MSG, signer_id=b"x" * 8191), MSG, signer_id=b"x" * 8191)


# --- points ---------------------------------------------------------------------------


def _no_sqrt_x() -> int:
    x = 1
    while True:
        rhs = (x**3 + A * x + B) % P
        if pow(rhs, (P - 1) // 2, P) == P - 1:
            return x
        x += 1


POINT_BAD = {
    "y-flipped": off_curve(PUB.to_bytes()),
    "xy-y-flipped": off_curve(PUB.to_bytes("xy")),
    "x-flipped": _flip(PUB.to_bytes(), 5),
    "x-eq-p": b"\x04" + P.to_bytes(32, "big") + PUB.to_bytes()[33:],
    "y-eq-p": PUB.to_bytes()[:33] + P.to_bytes(32, "big"),
    "all-ff": b"\x04" + b"\xff" * 64,
    "zero": b"\x04" + bytes(64),
    "infinity-00": b"\x00",
    "prefix-05": b"\x05" + PUB.to_bytes()[1:],
    "prefix-02-65": b"\x02" + PUB.to_bytes()[1:],
    "hybrid-06": b"\x06" + PUB.to_bytes()[1:],
    "compressed-04": b"\x04" + PUB.to_bytes("compressed")[1:],
    "compressed-no-sqrt": b"\x02" + _no_sqrt_x().to_bytes(32, "big"),
    "compressed-x-ge-p": b"\x03" + P.to_bytes(32, "big"),
    "66-bytes": PUB.to_bytes() + b"\x00",
    "32-bytes": PUB.to_bytes()[1:33],
    "empty": b"",
}


@pytest.mark.parametrize("data", params(POINT_BAD))
def test_bad_points(data: bytes) -> None:
    with pytest.raises(DecodeError):
        SM2PublicKey.from_bytes(data)
    with pytest.raises(DecodeError):
        Point.from_bytes(data)


def test_point_checks() -> None:
    with pytest.raises(InvalidKeyError):
        SM2PublicKey.from_bytes(off_curve(PUB.to_bytes()))
    with pytest.raises(InvalidKeyError):
        Point.from_xy(P, 1)
    with pytest.raises(InvalidKeyError):
        generator() + (-generator())  # the point at infinity
    for k in (0, N, -1, N + 1):
        with pytest.raises(InvalidKeyError):
            mul_base(k)
        with pytest.raises(InvalidKeyError):
            generator() * k
    with pytest.raises(InvalidKeyError):
        mul_base(True)  # type: ignore[arg-type]


@pytest.mark.parametrize("d", [0, N - 1, N, N + 5, 2**256 - 1])
def test_private_scalar_out_of_range(d: int) -> None:
    with pytest.raises(InvalidKeyError):
        SM2PrivateKey.from_bytes(d.to_bytes(32, "big"))
    with pytest.raises(InvalidKeyError):
        SM2PrivateKey(d)


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_private_key_wrong_length(length: int) -> None:
    with pytest.raises(InvalidKeyError):
        SM2PrivateKey.from_bytes(b"\x01" * length)


# --- SM2Cipher / raw ciphertexts -------------------------------------------------------

CT = bytes.fromhex(_ENC_V["der"])
_PARTS = decode_cipher(CT)


def _cipher(x: bytes, y: bytes, c3: bytes, c2: bytes) -> bytes:
    return seq(x, y, tlv(0x04, c3), tlv(0x04, c2))


_X, _Y = der_int(_PARTS.c1.x), der_int(_PARTS.c1.y)

CT_MALFORMED = {
    **malformed(CT),
    "non-minimal-y": _cipher(_X, der_int(_PARTS.c1.y, pad=1), _PARTS.c3, _PARTS.c2),
    "c3-31-bytes": _cipher(_X, _Y, _PARTS.c3[:31], _PARTS.c2),
    "c3-33-bytes": _cipher(_X, _Y, _PARTS.c3 + b"\x00", _PARTS.c2),
    "c2-empty": _cipher(_X, _Y, _PARTS.c3, b""),
    "c2-c3-swapped": seq(_X, _Y, tlv(0x04, _PARTS.c2), tlv(0x04, _PARTS.c3)),
    "extra-field": seq(_X, _Y, tlv(0x04, _PARTS.c3), tlv(0x04, _PARTS.c2), tlv(0x04, b"x")),
    "three-fields": seq(_X, _Y, tlv(0x04, _PARTS.c3)),
    "bit-string-c3": seq(_X, _Y, tlv(0x03, b"\x00" + _PARTS.c3), tlv(0x04, _PARTS.c2)),
    "x-negative": _cipher(der_int(-_PARTS.c1.x), _Y, _PARTS.c3, _PARTS.c2),
    "x-ge-p": _cipher(der_int(_PARTS.c1.x + P), _Y, _PARTS.c3, _PARTS.c2),
    "y-ge-p": _cipher(_X, der_int(_PARTS.c1.y + P), _PARTS.c3, _PARTS.c2),
    "c1-off-curve": _cipher(_X, der_int(_PARTS.c1.y ^ 1), _PARTS.c3, _PARTS.c2),
    "c1-zero": _cipher(der_int(0), der_int(0), _PARTS.c3, _PARTS.c2),
    "raw-c1c3c2": cipher_to_raw(CT),
}


@pytest.mark.parametrize("name", list(CT_MALFORMED))
def test_malformed_sm2cipher(name: str) -> None:
    der = CT_MALFORMED[name]
    with pytest.raises(DecodeError):
        decode_cipher(der)
    with pytest.raises(DecodeError):
        cipher_to_raw(der)
    # OpenSSL's own decoder is lenient (BER lengths, non-minimal INTEGERs, coordinates
    # reduced mod p); mstcrypt checks the DER strictly before handing it over.
    with pytest.raises(DecryptionError):
        KEY.decrypt(der)


@pytest.mark.parametrize(
    "der",
    [
        pytest.param(CT_MALFORMED["non-minimal-integer"], id="non-minimal-x"),
        pytest.param(CT_MALFORMED["non-minimal-y"], id="non-minimal-y"),
        pytest.param(
            seq(_X, _Y, tlv(0x04, _PARTS.c3), b"\x04\x81" + bytes([len(_PARTS.c2)]) + _PARTS.c2)
            if len(_PARTS.c2) < 0x80
            else b"",
            id="non-minimal-c2-length",
        ),
        pytest.param(
            _cipher(_X, tlv(0x02, _PARTS.c1.y.to_bytes(32, "big")), _PARTS.c3, _PARTS.c2)
            if _PARTS.c1.y >> 255
            else _cipher(tlv(0x02, _PARTS.c1.x.to_bytes(32, "big")), _Y, _PARTS.c3, _PARTS.c2),
            id="coordinate-as-negative-integer",
        ),
        pytest.param(CT_MALFORMED["x-ge-p"], id="x-plus-p"),
        pytest.param(CT_MALFORMED["y-ge-p"], id="y-plus-p"),
    ],
)
def test_decrypt_rejects_non_der(der: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_cipher(der)  # the strict parser refuses it ...
    with pytest.raises(DecryptionError):
        KEY.decrypt(der)  # ... and so must decryption


def test_tampered_ciphertext() -> None:
    pt = b"encryption standard"
    raw = cipher_to_raw(CT)  # 04‖x‖y ‖ C3 ‖ C2
    for index in (65, 80, 96, 97, len(raw) - 1):  # C3 first/middle/last, C2 first/last
        with pytest.raises(DecryptionError):
            KEY.decrypt(cipher_from_raw(_flip(raw, index)))
    other_c1 = mul_base(12345).to_bytes()
    with pytest.raises(DecryptionError):
        KEY.decrypt(cipher_from_raw(other_c1 + raw[65:]))
    with pytest.raises(DecryptionError):
        KEY.decrypt(cipher_from_raw(raw + b"\x00"))  # C2 one byte longer
    with pytest.raises(DecryptionError):
        OTHER.decrypt(CT)
    assert KEY.decrypt(CT) == pt


def test_raw_ciphertext_errors() -> None:
    raw = cipher_to_raw(CT)
    with pytest.raises(DecodeError):
        cipher_from_raw(off_curve(raw[:65]) + raw[65:])
    with pytest.raises(DecodeError):
        cipher_from_raw(off_curve(raw[1:65]) + raw[65:], with_04=False)
    with pytest.raises(DecodeError):
        cipher_from_raw(raw[1:])  # 04 expected
    with pytest.raises(DecodeError):
        cipher_from_raw(raw, with_04=False)  # starts with 04 ‖ x: C1 is misaligned
    with pytest.raises(DecodeError):
        cipher_from_raw(CT)  # DER is not raw
    for order in ("c1c3c2", "c1c2c3"):
        with pytest.raises(DecodeError):
            cipher_from_raw(raw[: 65 + 32], order)  # no C2
        with pytest.raises(DecodeError):
            cipher_from_raw(b"", order)
    with pytest.raises(DecodeError):
        cipher_from_raw("04" * 100)  # type: ignore[arg-type]


def test_encrypt_policy() -> None:
    with pytest.raises(PolicyError):
        PUB.encrypt(b"")


# --- PKCS#8 / SPKI / PEM ---------------------------------------------------------------

PRIV_DER = private_key_to_der(KEY)
PUB_DER = public_key_to_der(PUB)
_EC_PUBKEY_OID = tlv(0x06, bytes.fromhex("2a8648ce3d0201"))
_SM2_OID = tlv(0x06, bytes.fromhex("2a811ccf5501822d"))
_P256_OID = tlv(0x06, bytes.fromhex("2a8648ce3d030107"))
_SM2_ALG = seq(_EC_PUBKEY_OID, _SM2_OID)


def _spki(alg: bytes, point: bytes, unused_bits: int = 0) -> bytes:
    return seq(alg, tlv(0x03, bytes([unused_bits]) + point))


def _ec_private_key(d: bytes, pub: bytes | None, curve: bytes | None = None) -> bytes:
    items = [der_int(1), tlv(0x04, d)]
    if curve is not None:
        items.append(tlv(0xA0, curve))
    if pub is not None:
        items.append(tlv(0xA1, tlv(0x03, b"\x00" + pub)))
    return seq(*items)


def _pkcs8(inner: bytes, alg: bytes = _SM2_ALG, version: int = 0) -> bytes:
    return seq(der_int(version), alg, tlv(0x04, inner))


def test_der_toolkit_matches_mstcrypt_encodings() -> None:
    assert _spki(_SM2_ALG, PUB.to_bytes()) == PUB_DER
    assert _pkcs8(_ec_private_key(KEY.private_bytes(), PUB.to_bytes())) == PRIV_DER
    assert _cipher(_X, _Y, _PARTS.c3, _PARTS.c2) == CT
    assert seq(der_int(_R), der_int(_S)) == SIG


_OTHER_PUB = OTHER.public_key().to_bytes()

PKCS8_BAD: dict[str, tuple[bytes, type[MstCryptError]]] = {
    **{k: (v, DecodeError) for k, v in malformed(PRIV_DER).items()},
    "d-zero": (_pkcs8(_ec_private_key(bytes(32), None)), InvalidKeyError),
    "d-n-1": (_pkcs8(_ec_private_key((N - 1).to_bytes(32, "big"), None)), InvalidKeyError),
    "d-33-bytes": (_pkcs8(_ec_private_key(b"\x00" + KEY.private_bytes(), None)), DecodeError),
    "pub-mismatch": (_pkcs8(_ec_private_key(KEY.private_bytes(), _OTHER_PUB)), InvalidKeyError),
    "pub-off-curve": (
        _pkcs8(_ec_private_key(KEY.private_bytes(), off_curve(PUB.to_bytes()))),
        DecodeError,
    ),
    "inner-p256": (_pkcs8(_ec_private_key(KEY.private_bytes(), None, _P256_OID)), UnsupportedError),
    "alg-p256": (
        _pkcs8(_ec_private_key(KEY.private_bytes(), None), seq(_EC_PUBKEY_OID, _P256_OID)),
        UnsupportedError,
    ),
    "alg-rsa": (
        _pkcs8(
            _ec_private_key(KEY.private_bytes(), None),
            seq(tlv(0x06, bytes.fromhex("2a864886f70d010101")), b"\x05\x00"),
        ),
        UnsupportedError,
    ),
    "alg-no-params": (
        _pkcs8(_ec_private_key(KEY.private_bytes(), None), seq(_EC_PUBKEY_OID)),
        UnsupportedError,
    ),
    "version-2": (_pkcs8(_ec_private_key(KEY.private_bytes(), None), version=2), DecodeError),
    "ec-version-0": (_pkcs8(seq(der_int(0), tlv(0x04, KEY.private_bytes()))), DecodeError),
    "inner-not-der": (_pkcs8(b"\x30\x03\x02\x01"), DecodeError),
}


@pytest.mark.parametrize(("der", "exc"), [pytest.param(*v, id=k) for k, v in PKCS8_BAD.items()])
def test_malformed_pkcs8(der: bytes, exc: type[MstCryptError]) -> None:
    with pytest.raises(exc):
        private_key_from_der(der)
    with pytest.raises(exc):
        load_private_key(der)


def test_pkcs8_accepted_variants() -> None:
    d = KEY.private_bytes()
    sm2_alg_null = seq(_SM2_OID, b"\x05\x00")
    assert private_key_from_der(_pkcs8(_ec_private_key(d, None))) == KEY  # no public key
    assert private_key_from_der(_pkcs8(_ec_private_key(d, None), seq(_SM2_OID))) == KEY
    assert private_key_from_der(_pkcs8(_ec_private_key(d, None), sm2_alg_null)) == KEY
    assert private_key_from_der(_pkcs8(_ec_private_key(d, PUB.to_bytes(), _SM2_OID))) == KEY
    short = (12345).to_bytes(2, "big")
    assert private_key_from_der(_pkcs8(_ec_private_key(short, None))).private_int() == 12345


SPKI_BAD: dict[str, tuple[bytes, type[MstCryptError]]] = {
    **{k: (v, DecodeError) for k, v in malformed(PUB_DER).items()},
    "off-curve": (_spki(_SM2_ALG, off_curve(PUB.to_bytes())), InvalidKeyError),
    "xy-64-bytes": (_spki(_SM2_ALG, PUB.to_bytes("xy")), DecodeError),
    "infinity": (_spki(_SM2_ALG, b"\x00"), DecodeError),
    "unused-bits": (_spki(_SM2_ALG, PUB.to_bytes(), unused_bits=1), DecodeError),
    "p256": (_spki(seq(_EC_PUBKEY_OID, _P256_OID), PUB.to_bytes()), UnsupportedError),
    "rsa": (
        _spki(seq(tlv(0x06, bytes.fromhex("2a864886f70d010101")), b"\x05\x00"), PUB.to_bytes()),
        UnsupportedError,
    ),
    "trailing-in-alg": (
        _spki(seq(_EC_PUBKEY_OID, _SM2_OID, b"\x05\x00"), PUB.to_bytes()),
        DecodeError,
    ),
}


@pytest.mark.parametrize(("der", "exc"), [pytest.param(*v, id=k) for k, v in SPKI_BAD.items()])
def test_malformed_spki(der: bytes, exc: type[MstCryptError]) -> None:
    with pytest.raises(exc):
        public_key_from_der(der)
    with pytest.raises(exc):
        load_public_key(der)


PEM = dump_private_key(KEY)
PEM_BAD = {
    "no-end": PEM.replace(b"-----END PRIVATE KEY-----", b""),
    "bad-base64": PEM.replace(PEM.splitlines()[1][:4], b"!!!!"),
    "wrong-label": PEM.replace(b"PRIVATE KEY", b"CERTIFICATE"),
    "public-label": PEM.replace(b"PRIVATE KEY", b"PUBLIC KEY"),
    "legacy-headers": PEM.replace(b"-----\n", b"-----\nProc-Type: 4,ENCRYPTED\n\n", 1),
    "empty-body": b"-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n",
    "truncated-body": b"\n".join(PEM.splitlines()[:2] + PEM.splitlines()[-1:]),
}


@pytest.mark.parametrize("pem", params(PEM_BAD))
def test_malformed_pem(pem: bytes) -> None:
    with pytest.raises(DecodeError):
        load_private_key(pem)
    with pytest.raises(DecodeError):
        load_public_key(pem)


@pytest.mark.parametrize("scheme", ["gmssl", "openssl"])
@pytest.mark.parametrize("encoding", ["pem", "der"])
def test_encrypted_pkcs8_password_errors(scheme: str, encoding: str) -> None:
    enc = dump_private_key(KEY, encoding=encoding, password="right", scheme=scheme, iterations=1000)
    assert load_private_key(enc, password="right") == KEY
    assert load_private_key(enc, password=b"right") == KEY
    # (b"right\x00" would be accepted: HMAC zero-pads keys, a PBKDF2 property, not a bug)
    for wrong in ("wrong", "Right", "right ", "righ", ""):
        with pytest.raises(DecryptionError):
            load_private_key(enc, password=wrong)
    with pytest.raises(DecryptionError):
        load_private_key(enc)  # a password is needed
    with pytest.raises(DecodeError):
        load_private_key(dump_private_key(KEY, encoding=encoding), password="right")
    # tampering with the encrypted data or its parameters
    der = enc if encoding == "der" else _pem_body(enc)
    with pytest.raises(DecryptionError):
        load_private_key(_flip(der, len(der) - 20), password="right")
    with pytest.raises(UnsupportedError):
        dump_private_key(KEY, password="", scheme=scheme)


def _pem_body(pem: bytes) -> bytes:
    import base64

    return base64.b64decode(b"".join(pem.splitlines()[1:-1]))


def test_p256_key_is_unsupported(openssl: Callable[..., bytes]) -> None:
    key = openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")
    pub = openssl("pkey", "-pubout", input=key)
    with pytest.raises(UnsupportedError):
        load_private_key(key)
    with pytest.raises(UnsupportedError):
        load_public_key(pub)
    with pytest.raises(UnsupportedError):
        load_public_key(openssl("pkey", "-pubout", "-outform", "DER", input=key))
    enc = openssl("pkcs8", "-topk8", "-iter", "1000", "-passout", "pass:pw", input=key)
    with pytest.raises(UnsupportedError):
        load_private_key(enc, password="pw")  # decrypts fine, then the curve is refused


def test_other_key_types_are_unsupported(openssl: Callable[..., bytes]) -> None:
    key = openssl("genpkey", "-algorithm", "ED25519")
    with pytest.raises(UnsupportedError):
        load_private_key(key)
    with pytest.raises(UnsupportedError):
        load_public_key(openssl("pkey", "-pubout", input=key))


# --- SM2EnvelopedKey ------------------------------------------------------------------

ENV = build_enveloped_key(OTHER, PUB)  # delivers OTHER to the holder of KEY
_ENV_PARTS = children(ENV)
_SM4_ECB_ALG = seq(tlv(0x06, bytes.fromhex("2a811ccf55016801")), b"\x05\x00")


def _env(
    alg: bytes = _ENV_PARTS[0],
    sym: bytes = _ENV_PARTS[1],
    pub: bytes = _ENV_PARTS[2],
    enc: bytes = _ENV_PARTS[3],
) -> bytes:
    return seq(alg, sym, pub, enc)


_ENC_D = split_tlv(_ENV_PARTS[3])[1][1:]

ENV_BAD: dict[str, tuple[bytes, type[MstCryptError]]] = {
    **{k: (v, DecodeError) for k, v in malformed(ENV).items()},
    "sym-cipher-off-curve": (
        _env(sym=_cipher(der_int(_PARTS.c1.x), der_int(_PARTS.c1.y ^ 1), _PARTS.c3, _PARTS.c2)),
        DecodeError,
    ),
    "sym-cipher-c3-short": (_env(sym=_cipher(_X, _Y, _PARTS.c3[:16], _PARTS.c2)), DecodeError),
    "pub-off-curve": (_env(pub=tlv(0x03, b"\x00" + off_curve(_OTHER_PUB))), InvalidKeyError),
    "pub-compressed": (
        _env(pub=tlv(0x03, b"\x00" + OTHER.public_key().to_bytes("compressed"))),
        InvalidKeyError,
    ),
    "enc-d-16-bytes": (_env(enc=tlv(0x03, b"\x00" + _ENC_D[:16])), DecodeError),
    "enc-d-48-bytes": (_env(enc=tlv(0x03, b"\x00" + _ENC_D + _ENC_D[:16])), DecodeError),
    "alg-sm4-cbc": (_env(alg=seq(tlv(0x06, bytes.fromhex("2a811ccf55016802")))), UnsupportedError),
    "alg-params-not-null": (
        _env(alg=seq(tlv(0x06, bytes.fromhex("2a811ccf55016801")), tlv(0x04, bytes(16)))),
        DecodeError,
    ),
    "fields-missing": (seq(*_ENV_PARTS[:3]), DecodeError),
}


def test_envelope_toolkit_matches() -> None:
    assert _env() == ENV
    assert _ENV_PARTS[0] == _SM4_ECB_ALG


@pytest.mark.parametrize(("der", "exc"), [pytest.param(*v, id=k) for k, v in ENV_BAD.items()])
def test_malformed_enveloped_key(der: bytes, exc: type[MstCryptError]) -> None:
    with pytest.raises(exc):
        EnvelopedKey.from_der(der)
    with pytest.raises(exc):
        open_enveloped_key(der, KEY)


def test_enveloped_key_wrong_recipient_or_tampered() -> None:
    assert open_enveloped_key(ENV, KEY) == OTHER
    with pytest.raises(DecryptionError):
        open_enveloped_key(ENV, OTHER)  # not the recipient
    with pytest.raises(DecryptionError):
        open_enveloped_key(ENV, THIRD)
    # sm2PublicKey of another key pair
    swapped = _env(pub=tlv(0x03, b"\x00" + THIRD.public_key().to_bytes()))
    with pytest.raises(DecryptionError):
        open_enveloped_key(swapped, KEY)
    # the encrypted private key tampered
    for index in (0, 15, 16, 31):
        tampered = _env(enc=tlv(0x03, b"\x00" + _flip(_ENC_D, index)))
        with pytest.raises(DecryptionError):
            open_enveloped_key(tampered, KEY)
    # the SM2-encrypted symmetric key tampered (C3 / C2) or holding a 15-byte key
    raw = cipher_to_raw(_ENV_PARTS[1])
    for index in (70, len(raw) - 1):
        with pytest.raises(DecryptionError):
            open_enveloped_key(_env(sym=cipher_from_raw(_flip(raw, index))), KEY)
    with pytest.raises(DecryptionError):
        open_enveloped_key(_env(sym=PUB.encrypt(bytes(15))), KEY)
    # a well-formed envelope whose d is out of range (0) under a valid symmetric key
    sym = bytes(range(16))
    zero_d = _env(
        sym=PUB.encrypt(sym), enc=tlv(0x03, b"\x00" + sm4.ecb_encrypt_blocks(sym, bytes(32)))
    )
    with pytest.raises(DecryptionError):
        open_enveloped_key(zero_d, KEY)
    # 64-byte field: accepted only when left-padded with zeros
    padded = sm4.ecb_encrypt_blocks(sym, bytes(32) + OTHER.private_bytes())
    ok = _env(sym=PUB.encrypt(sym), enc=tlv(0x03, b"\x00" + padded))
    assert open_enveloped_key(ok, KEY) == OTHER
    bad = sm4.ecb_encrypt_blocks(sym, b"\x01" + bytes(31) + OTHER.private_bytes())
    with pytest.raises(DecryptionError):
        open_enveloped_key(_env(sym=PUB.encrypt(sym), enc=tlv(0x03, b"\x00" + bad)), KEY)


# --- SM4 ------------------------------------------------------------------------------

K16, IV16, N12 = bytes(range(16)), bytes(range(16, 32)), bytes(12)
K32 = bytes(range(32))


@pytest.mark.parametrize("size", [0, 8, 15, 17, 24, 32])
def test_sm4_wrong_key_size(size: int) -> None:
    key = b"k" * size
    calls: list[Callable[[], object]] = [
        lambda: sm4.cbc_encrypt(key, IV16, b"x"),
        lambda: sm4.cbc_decrypt(key, IV16, bytes(16)),
        lambda: sm4.ctr(key, IV16, b"x"),
        lambda: sm4.ofb(key, IV16, b"x"),
        lambda: sm4.cfb_encrypt(key, IV16, b"x"),
        lambda: sm4.cfb_decrypt(key, IV16, b"x"),
        lambda: sm4.gcm_encrypt(key, N12, b"x"),
        lambda: sm4.gcm_decrypt(key, N12, bytes(32)),
        lambda: sm4.ecb_encrypt_blocks(key, bytes(16)),
        lambda: sm4.ecb_decrypt_blocks(key, bytes(16)),
        *[
            (lambda m=m: sm4.encryptor(m, key, N12 if m == "gcm" else IV16))
            for m in ("cbc", "ctr", "ofb", "cfb", "gcm")
        ],
        *[
            (lambda m=m: sm4.decryptor(m, key, N12 if m == "gcm" else IV16))
            for m in ("cbc", "ctr", "ofb", "cfb", "gcm")
        ],
    ]
    if size != 32:
        calls += [lambda: sm4.etm_encrypt(key, b"x"), lambda: sm4.etm_decrypt(key, bytes(80))]
    for call in calls:
        with pytest.raises(DecodeError):
            call()


@pytest.mark.parametrize("size", [0, 8, 12, 15, 17, 32])
def test_sm4_wrong_iv_size(size: int) -> None:
    iv = b"i" * size
    calls: list[Callable[[], object]] = [
        lambda: sm4.cbc_encrypt(K16, iv, b"x"),
        lambda: sm4.cbc_decrypt(K16, iv, bytes(16)),
        lambda: sm4.ctr(K16, iv, b"x"),
        lambda: sm4.ofb(K16, iv, b"x"),
        lambda: sm4.cfb_encrypt(K16, iv, b"x"),
        lambda: sm4.cfb_decrypt(K16, iv, b"x"),
        lambda: sm4.etm_encrypt(K32, b"x", iv=iv),
        *[(lambda m=m: sm4.encryptor(m, K16, iv)) for m in ("cbc", "ctr", "ofb", "cfb")],
        *[(lambda m=m: sm4.decryptor(m, K16, iv)) for m in ("cbc", "ctr", "ofb", "cfb")],
    ]
    if size != 12:
        calls += [
            lambda: sm4.gcm_encrypt(K16, iv, b"x"),
            lambda: sm4.gcm_decrypt(K16, iv, bytes(32)),
            lambda: sm4.encryptor("gcm", K16, iv),
            lambda: sm4.decryptor("gcm", K16, iv),
        ]
    for call in calls:
        with pytest.raises(DecodeError):
            call()


def test_sm4_block_length_errors() -> None:
    with pytest.raises(DecodeError):
        sm4.cbc_encrypt(K16, IV16, b"x" * 17, padding=False)
    with pytest.raises(DecodeError):
        sm4.ecb_encrypt_blocks(K16, b"x" * 17)
    with pytest.raises(DecodeError):
        sm4.ecb_decrypt_blocks(K16, b"x" * 15)
    for bad in (b"", b"x" * 15, b"x" * 17):
        with pytest.raises(DecryptionError):
            sm4.cbc_decrypt(K16, IV16, bad)
    with pytest.raises(DecryptionError):
        sm4.cbc_decrypt(K16, IV16, b"x" * 17, padding=False)


@pytest.mark.parametrize(
    "last_block",
    [
        pytest.param(bytes(16), id="pad-00"),
        pytest.param(b"A" * 15 + b"\x11", id="pad-17"),
        pytest.param(b"A" * 14 + b"\x01\x02", id="pad-02-inconsistent"),
        pytest.param(b"A" * 13 + b"\x03\x04\x03", id="pad-03-inconsistent"),
        pytest.param(b"\x10" * 15 + b"\x0f", id="pad-0f-inconsistent"),
        pytest.param(b"\xff" * 16, id="pad-ff"),
    ],
)
def test_sm4_cbc_bad_padding(last_block: bytes) -> None:
    ct = sm4.cbc_encrypt(K16, IV16, b"B" * 16 + last_block, padding=False)
    with pytest.raises(DecryptionError):
        sm4.cbc_decrypt(K16, IV16, ct)
    d = sm4.decryptor("cbc", K16, IV16)
    with pytest.raises(DecryptionError):
        d.update(ct)
        d.finalize()
    assert sm4.cbc_decrypt(K16, IV16, ct, padding=False).endswith(last_block)


def test_sm4_cbc_streaming_length_errors() -> None:
    for bad in (b"", b"x" * 15, b"x" * 33):
        d = sm4.decryptor("cbc", K16, IV16)
        with pytest.raises(DecryptionError):
            d.update(bad)
            d.finalize()


def test_sm4_gcm_tamper() -> None:
    pt, aad = b"attack at dawn" * 3, b"header"
    ct = sm4.gcm_encrypt(K16, N12, pt, aad)
    assert sm4.gcm_decrypt(K16, N12, ct, aad) == pt
    bad_calls: list[Callable[[], object]] = [
        lambda: sm4.gcm_decrypt(K16, N12, _flip(ct, 0), aad),  # ciphertext
        lambda: sm4.gcm_decrypt(K16, N12, _flip(ct, len(ct) - 1), aad),  # tag
        lambda: sm4.gcm_decrypt(K16, N12, ct, aad + b"!"),  # aad
        lambda: sm4.gcm_decrypt(K16, N12, ct, b""),
        lambda: sm4.gcm_decrypt(K16, _flip(N12, 3), ct, aad),  # nonce
        lambda: sm4.gcm_decrypt(_flip(K16, 0), N12, ct, aad),  # key
        lambda: sm4.gcm_decrypt(K16, N12, ct[:-1], aad),  # truncated tag
        lambda: sm4.gcm_decrypt(K16, N12, ct[:15], aad),  # shorter than a tag
        lambda: sm4.gcm_decrypt(K16, N12, b"", aad),
    ]
    for call in bad_calls:
        with pytest.raises(DecryptionError):
            call()
    body, tag = ct[:-16], ct[-16:]
    d = sm4.decryptor("gcm", K16, N12, aad)
    d.update(body)
    with pytest.raises(DecryptionError):
        d.finalize(_flip(tag, 7))
    d = sm4.decryptor("gcm", K16, N12, aad)
    d.update(body)
    with pytest.raises(DecodeError):
        d.finalize(tag[:12])  # GCM tags are 16 bytes here
    d = sm4.decryptor("gcm", K16, N12, aad)
    d.update(body)
    with pytest.raises(PolicyError):
        d.finalize()


def test_sm4_etm_tamper() -> None:
    pt, aad = b"encrypt then mac", b"aad"
    blob = sm4.etm_encrypt(K32, pt, aad)
    assert len(blob) == 16 + 32 + 32
    assert sm4.etm_decrypt(K32, blob, aad) == pt
    bad: dict[str, Callable[[], object]] = {
        "iv": lambda: sm4.etm_decrypt(K32, _flip(blob, 3), aad),
        "ct": lambda: sm4.etm_decrypt(K32, _flip(blob, 20), aad),
        "ct-last": lambda: sm4.etm_decrypt(K32, _flip(blob, 47), aad),
        "tag": lambda: sm4.etm_decrypt(K32, _flip(blob, len(blob) - 1), aad),
        "aad": lambda: sm4.etm_decrypt(K32, blob, aad + b"!"),
        "no-aad": lambda: sm4.etm_decrypt(K32, blob),
        "enc-key": lambda: sm4.etm_decrypt(_flip(K32, 0), blob, aad),
        "mac-key": lambda: sm4.etm_decrypt(_flip(K32, 31), blob, aad),
        "truncated": lambda: sm4.etm_decrypt(K32, blob[:-1], aad),
        "block-dropped": lambda: sm4.etm_decrypt(K32, blob[:16] + blob[32:], aad),
        "too-short": lambda: sm4.etm_decrypt(K32, blob[:60], aad),
        "empty": lambda: sm4.etm_decrypt(K32, b"", aad),
    }
    for call in bad.values():
        with pytest.raises(DecryptionError):
            call()


def test_sm4_streaming_policy() -> None:
    with pytest.raises(PolicyError):
        sm4.encryptor("ecb", K16, IV16)  # type: ignore[arg-type]
    with pytest.raises(PolicyError):
        sm4.decryptor("ecb", K16, IV16)  # type: ignore[arg-type]
    with pytest.raises(PolicyError):
        sm4.encryptor("xts", K16, IV16)  # type: ignore[arg-type]
    with pytest.raises(PolicyError):
        sm4.encryptor("cbc", K16, IV16, aad=b"x")
    with pytest.raises(PolicyError):
        sm4.decryptor("ctr", K16, IV16, aad=b"x")
    e = sm4.encryptor("gcm", K16, N12)
    with pytest.raises(PolicyError):
        _ = e.tag  # only after finalize
    with pytest.raises(PolicyError):
        sm4.cbc_encrypt(K16, IV16, "text")  # type: ignore[arg-type]


# --- SM3 / HMAC / KDF -----------------------------------------------------------------


def test_hmac_sm3_verify_errors() -> None:
    tag = hmac_sm3(b"key", b"data")
    hmac_sm3_verify(b"key", b"data", tag)
    for args in [
        (b"key", b"data", _flip(tag, 0)),
        (b"key", b"data", tag[:16]),
        (b"key", b"data", b""),
        (b"kez", b"data", tag),
        (b"key", b"datA", tag),
    ]:
        with pytest.raises(VerificationError):
            hmac_sm3_verify(*args)
    with pytest.raises(VerificationError):
        HmacSM3(b"key", b"data").verify(_flip(tag, 31))
    with pytest.raises(PolicyError):
        pbkdf2_hmac_sm3(b"pw", b"salt", 0)
    with pytest.raises(PolicyError):
        pbkdf2_hmac_sm3(b"pw", b"salt", 1, 0)
    with pytest.raises(PolicyError):
        kdf(b"z", -1)


# --- key exchange ---------------------------------------------------------------------


def _kex(confirm: bool = True) -> tuple[KeyExchangeInitiator, KeyExchangeResponder]:
    a = KeyExchangeInitiator(KEY, OTHER.public_key(), confirm=confirm)
    b = KeyExchangeResponder(OTHER, PUB, confirm=confirm)
    return a, b


def test_kex_off_curve_or_malformed_ephemeral() -> None:
    a, b = _kex()
    for bad in (off_curve(a.ephemeral), a.ephemeral[:-1], b"\x00", b"", _flip(a.ephemeral, 0)):
        with pytest.raises(DecodeError):
            b.respond(bad)
    with pytest.raises(InvalidKeyError):
        b.respond(off_curve(a.ephemeral))
    r_b, s_b = b.respond(a.ephemeral)
    with pytest.raises(DecodeError):
        a.finish(off_curve(r_b), s_b)
    k_a, s_a = a.finish(r_b, s_b)
    assert b.confirm(s_a) == k_a


def test_kex_wrong_confirmation_values() -> None:
    wrong: list[Callable[[bytes], bytes | None]] = [
        lambda s: _flip(s, 0),
        lambda s: _flip(s, 31, 0x80),
        lambda s: s[:31],
        lambda s: s + b"\x00",
        lambda s: b"",
        lambda s: bytes(32),
        lambda s: None,  # S_B missing although confirmation is on
    ]
    for make in wrong:
        a, b = _kex()
        r_b, s_b = b.respond(a.ephemeral)
        assert s_b is not None
        with pytest.raises(VerificationError):
            a.finish(r_b, make(s_b))
    for make in wrong[:-1]:
        a, b = _kex()
        r_b, s_b = b.respond(a.ephemeral)
        _, s_a = a.finish(r_b, s_b)
        assert s_a is not None
        with pytest.raises(VerificationError):
            b.confirm(make(s_a))  # type: ignore[arg-type]
    a, b = _kex()
    r_b, s_b = b.respond(a.ephemeral)
    a.finish(r_b, s_b)
    assert s_b is not None
    with pytest.raises(VerificationError):
        b.confirm(s_b)  # S_B reflected back as S_A (0x02 vs 0x03 prefix)
    a, b = _kex()
    r_b, s_b = b.respond(a.ephemeral)
    k_a, s_a = a.finish(r_b, s_b)
    assert s_a is not None
    assert b.confirm(s_a) == k_a == b.key


def test_kex_mismatched_ids_or_keys_fail_confirmation() -> None:
    # A believes B's ID is "bob", B uses the default ID: different Z_B
    a = KeyExchangeInitiator(KEY, OTHER.public_key(), peer_id=b"bob", confirm=True)
    b = KeyExchangeResponder(OTHER, PUB, confirm=True)
    r_b, s_b = b.respond(a.ephemeral)
    with pytest.raises(VerificationError):
        a.finish(r_b, s_b)
    # A talks to THIRD's public key while OTHER answers
    a = KeyExchangeInitiator(KEY, THIRD.public_key(), confirm=True)
    b = KeyExchangeResponder(OTHER, PUB, confirm=True)
    r_b, s_b = b.respond(a.ephemeral)
    with pytest.raises(VerificationError):
        a.finish(r_b, s_b)
    # without confirmation nothing is detected: the keys just differ
    a = KeyExchangeInitiator(KEY, OTHER.public_key(), peer_id=b"bob")
    b = KeyExchangeResponder(OTHER, PUB)
    r_b, _ = b.respond(a.ephemeral)
    k_a, _ = a.finish(r_b)
    assert k_a != b.key


def test_kex_policy_errors() -> None:
    for klen in (0, -1, 65537):
        with pytest.raises(PolicyError):
            KeyExchangeInitiator(KEY, OTHER.public_key(), klen=klen)
    for eph in (0, N, -3):
        with pytest.raises(InvalidKeyError):
            KeyExchangeInitiator(KEY, OTHER.public_key(), ephemeral=eph)
    with pytest.raises(PolicyError):
        KeyExchangeInitiator(KEY, OTHER, klen=16)  # type: ignore[arg-type]
    a, b = _kex()
    with pytest.raises(PolicyError):
        b.confirm(b"\x00" * 32)  # before respond
    r_b, s_b = b.respond(a.ephemeral)
    with pytest.raises(PolicyError):
        b.respond(a.ephemeral)
    _, s_a = a.finish(r_b, s_b)
    with pytest.raises(PolicyError):
        a.finish(r_b, s_b)
    assert s_a is not None
    b.confirm(s_a)
    with pytest.raises(PolicyError):
        b.confirm(s_a)


# --- option strings (bug: ValueError leaks from enum conversion) -----------------------

_BAD_OPTIONS = {
    "sign-encoding": lambda: KEY.sign(MSG, encoding="pem"),
    "sign_digest-encoding": lambda: KEY.sign_digest(bytes(32), encoding="pem"),
    "verify-encoding": lambda: PUB.verify(SIG, MSG, encoding="pem"),
    "cipher_to_raw-order": lambda: cipher_to_raw(CT, "c2c1c3"),
    "cipher_from_raw-order": lambda: cipher_from_raw(cipher_to_raw(CT), "c2c1c3"),
    "dump_private_key-scheme": lambda: dump_private_key(KEY, password="pw", scheme="pkcs12"),
}


def test_known_option_errors_are_mstcrypt_errors() -> None:
    with pytest.raises(PolicyError):
        PUB.to_bytes("hybrid")
    with pytest.raises(UnsupportedError):
        dump_public_key(PUB, encoding="ssh")
    with pytest.raises(UnsupportedError):
        dump_private_key(KEY, encoding="jwk")


@pytest.mark.parametrize("call", params(_BAD_OPTIONS))
def test_unknown_option_strings_raise_mstcrypt_errors(call: Callable[[], object]) -> None:
    with pytest.raises(MstCryptError):
        call()


# --- fuzz: parsers only ever raise MstCryptError ----------------------------------------

_ENC_GMSSL = dump_private_key(KEY, encoding="der", password="pw", iterations=10)
_ENC_OPENSSL = dump_private_key(KEY, encoding="der", password="pw", scheme="openssl", iterations=10)

PARSERS: dict[str, tuple[Callable[[bytes], object], list[bytes]]] = {
    "load_private_key": (load_private_key, [PRIV_DER, PEM, _ENC_GMSSL, _ENC_OPENSSL]),
    "load_private_key(pw)": (
        lambda d: load_private_key(d, password="pw"),
        [_ENC_GMSSL, _ENC_OPENSSL, dump_private_key(KEY, password="pw", iterations=10)],
    ),
    "load_public_key": (load_public_key, [PUB_DER, dump_public_key(PUB)]),
    "decode_cipher": (decode_cipher, [CT]),
    "cipher_from_raw": (cipher_from_raw, [cipher_to_raw(CT)]),
    "cipher_from_raw(c1c2c3,no04)": (
        lambda d: cipher_from_raw(d, "c1c2c3", with_04=False),
        [cipher_to_raw(CT, "c1c2c3", with_04=False)],
    ),
    "signature_to_raw": (signature_to_raw, [SIG]),
    "signature_from_raw": (signature_from_raw, [signature_to_raw(SIG)]),
    "verify": (lambda d: PUB.verify(d, MSG), [SIG]),
    "EnvelopedKey.from_der": (EnvelopedKey.from_der, [ENV]),
    "open_enveloped_key": (lambda d: open_enveloped_key(d, KEY), [ENV]),
    "SM2PublicKey.from_bytes": (
        SM2PublicKey.from_bytes,
        [PUB.to_bytes(), PUB.to_bytes("compressed")],
    ),
    "SM2PrivateKey.decrypt": (KEY.decrypt, [CT]),
    "SM2PrivateKey.from_bytes": (SM2PrivateKey.from_bytes, [KEY.private_bytes()]),
    "kex.respond": (lambda d: _kex()[1].respond(d), [THIRD.public_key().to_bytes()]),
}

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _call(parser: Callable[[bytes], object], data: bytes) -> None:
    """Any outcome but an exception outside the MstCryptError hierarchy is fine."""
    with contextlib.suppress(MstCryptError):
        parser(data)


@pytest.mark.parametrize("name", list(PARSERS))
@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda tag, body: tlv(tag, body),
            st.sampled_from([0x30, 0x02, 0x04, 0x03]),
            st.binary(max_size=200),
        ),
    )
)
def test_fuzz_random_bytes(name: str, data: bytes) -> None:
    _call(PARSERS[name][0], data)


@st.composite
def _mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "dup"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0x81, 0xFF, 0x30, 0x02]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=3))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 3))]
        elif op == "truncate":
            del data[pos:]
        elif op == "dup":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 8))]
    return bytes(data)


@pytest.mark.parametrize("name", list(PARSERS))
@FUZZ
@given(data=st.data())
def test_fuzz_mutated_valid_inputs(name: str, data: st.DataObject) -> None:
    parser, seeds = PARSERS[name]
    _call(parser, data.draw(_mutated(seeds)))


@FUZZ
@given(text=st.text(max_size=200))
def test_fuzz_pem_text(text: str) -> None:
    for label in ("PRIVATE KEY", "ENCRYPTED PRIVATE KEY", "EC PRIVATE KEY", "PUBLIC KEY"):
        pem = f"-----BEGIN {label}-----\n{text}\n-----END {label}-----\n"
        _call(load_private_key, pem.encode("utf-8"))
        _call(lambda d: load_private_key(d, password="pw"), pem)  # type: ignore[arg-type]
        _call(load_public_key, pem)  # type: ignore[arg-type]


# --- round trips ----------------------------------------------------------------------

ROUND = settings(max_examples=25, deadline=None)


@ROUND
@given(d=st.integers(1, N - 2))
def test_round_trip_keys(d: int) -> None:
    key = SM2PrivateKey(d)
    pub = key.public_key()
    assert SM2PrivateKey.from_bytes(key.private_bytes()) == key
    for form in ("uncompressed", "compressed", "xy"):
        assert SM2PublicKey.from_bytes(pub.to_bytes(form)) == pub
    assert Point.from_bytes(pub.to_bytes("compressed")) == pub.point
    for encoding in ("pem", "der"):
        assert load_private_key(dump_private_key(key, encoding=encoding)) == key
        assert load_public_key(dump_public_key(pub, encoding=encoding)) == pub
    assert private_key_from_der(private_key_to_der(key)) == key
    assert public_key_from_der(public_key_to_der(pub)) == pub
    assert load_private_key(dump_private_key(key).decode()) == key  # str PEM


@pytest.mark.parametrize("scheme", ["gmssl", "openssl"])
@pytest.mark.parametrize("encoding", ["pem", "der"])
def test_round_trip_encrypted_keys(scheme: str, encoding: str) -> None:
    enc = dump_private_key(
        OTHER, encoding=encoding, password="pässwörd", scheme=scheme, iterations=1000
    )
    assert load_private_key(enc, password="pässwörd") == OTHER
    assert load_private_key(enc, password="pässwörd".encode()) == OTHER
    assert enc != dump_private_key(
        OTHER, encoding=encoding, password="pässwörd", scheme=scheme, iterations=1000
    )  # fresh salt and IV


@ROUND
@given(msg=st.binary(max_size=100), uid=st.binary(max_size=40))
def test_round_trip_signatures(msg: bytes, uid: bytes) -> None:
    der = KEY.sign(msg, signer_id=uid)
    raw = signature_to_raw(der)
    assert signature_from_raw(raw) == der
    PUB.verify(der, msg, signer_id=uid)
    PUB.verify(raw, msg, signer_id=uid, encoding="raw")
    e = PUB.message_digest(msg, uid)
    PUB.verify_digest(KEY.sign_digest(e, encoding="raw"), e, encoding="raw")


@ROUND
@given(pt=st.binary(min_size=1, max_size=300))
def test_round_trip_ciphertext_forms(pt: bytes) -> None:
    der = PUB.encrypt(pt)
    assert KEY.decrypt(der) == pt
    parts = decode_cipher(der)
    assert encode_cipher(parts) == der
    for order in ("c1c3c2", "c1c2c3"):
        for with_04 in (True, False):
            raw = cipher_to_raw(der, order, with_04=with_04)
            assert len(raw) == (65 if with_04 else 64) + 32 + len(pt)
            assert cipher_from_raw(raw, order, with_04=with_04) == der
    c1, c3, c2 = parts.c1.to_bytes(), parts.c3, parts.c2
    assert cipher_to_raw(der) == c1 + c3 + c2
    assert cipher_to_raw(der, "c1c2c3") == c1 + c2 + c3


def test_round_trip_enveloped_key() -> None:
    der = build_enveloped_key(THIRD, OTHER.public_key())
    parsed = EnvelopedKey.from_der(der)
    assert parsed.to_der() == der
    assert parsed.public_key == THIRD.public_key()
    assert parsed.open(OTHER) == THIRD
    assert open_enveloped_key(der, OTHER) == THIRD
    assert build_enveloped_key(THIRD, OTHER.public_key()) != der  # fresh SM4 key


_MODES = ["cbc", "ctr", "ofb", "cfb", "gcm"]


def _one_shot_encrypt(mode: str, key: bytes, iv: bytes, pt: bytes, aad: bytes) -> bytes:
    if mode == "cbc":
        return sm4.cbc_encrypt(key, iv, pt)
    if mode == "ctr":
        return sm4.ctr(key, iv, pt)
    if mode == "ofb":
        return sm4.ofb(key, iv, pt)
    if mode == "cfb":
        return sm4.cfb_encrypt(key, iv, pt)
    return sm4.gcm_encrypt(key, iv, pt, aad)


def _chunks(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos = [], 0
    for size in sizes:
        out.append(data[pos : pos + size])
        pos += size
    out.append(data[pos:])
    return out


@pytest.mark.parametrize("mode", _MODES)
@settings(max_examples=30, deadline=None)
@given(
    pt=st.binary(max_size=200),
    sizes=st.lists(st.integers(0, 40), max_size=8),
    key=st.binary(min_size=16, max_size=16),
    iv=st.binary(min_size=16, max_size=16),
    aad=st.binary(max_size=40),
)
def test_sm4_streaming_equals_one_shot(
    mode: str, pt: bytes, sizes: list[int], key: bytes, iv: bytes, aad: bytes
) -> None:
    if mode == "gcm":
        iv = iv[:12]
    else:
        aad = b""
    expected = _one_shot_encrypt(mode, key, iv, pt, aad)
    e = sm4.encryptor(mode, key, iv, aad)  # type: ignore[arg-type]
    ct = b"".join(e.update(c) for c in _chunks(pt, sizes)) + e.finalize()
    if mode == "gcm":
        assert ct + e.tag == expected
    else:
        assert ct == expected
    d = sm4.decryptor(mode, key, iv, aad)  # type: ignore[arg-type]
    out = b"".join(d.update(c) for c in _chunks(ct, sizes))
    out += d.finalize(e.tag) if mode == "gcm" else d.finalize()
    assert out == pt


@settings(max_examples=30, deadline=None)
@given(pt=st.binary(max_size=100), aad=st.binary(max_size=40))
def test_round_trip_one_shot_modes(pt: bytes, aad: bytes) -> None:
    assert sm4.cbc_decrypt(K16, IV16, sm4.cbc_encrypt(K16, IV16, pt)) == pt
    assert len(sm4.cbc_encrypt(K16, IV16, pt)) == (len(pt) // 16 + 1) * 16
    assert sm4.ctr(K16, IV16, sm4.ctr(K16, IV16, pt)) == pt
    assert sm4.ofb(K16, IV16, sm4.ofb(K16, IV16, pt)) == pt
    assert sm4.cfb_decrypt(K16, IV16, sm4.cfb_encrypt(K16, IV16, pt)) == pt
    assert sm4.gcm_decrypt(K16, N12, sm4.gcm_encrypt(K16, N12, pt, aad), aad) == pt
    blob = sm4.etm_encrypt(K32, pt, aad)
    assert sm4.etm_decrypt(K32, blob, aad) == pt
    fixed = sm4.etm_encrypt(K32, pt, aad, iv=IV16)
    assert fixed[:16] == IV16 and fixed[16:-32] == sm4.cbc_encrypt(K32[:16], IV16, pt)
    mac_input = len(aad).to_bytes(8, "big") + aad + fixed[:-32]
    assert fixed[-32:] == hmac.new(K32[16:], mac_input, "sm3").digest()
    blocks = pt[: len(pt) // 16 * 16]
    assert sm4.ecb_decrypt_blocks(K16, sm4.ecb_encrypt_blocks(K16, blocks)) == blocks


def test_ctr_counter_wraps_all_128_bits() -> None:
    """The counter block is incremented as one 128-bit big-endian integer."""
    ctr0 = b"\xff" * 16
    ks = sm4.ctr(K16, ctr0, bytes(32))
    assert ks[16:] == sm4.ecb_encrypt_blocks(K16, bytes(16))
    ctr1 = bytes(8) + b"\xff" * 8
    assert sm4.ctr(K16, ctr1, bytes(32))[16:] == sm4.ecb_encrypt_blocks(
        K16, bytes(7) + b"\x01" + bytes(8)
    )


@settings(max_examples=30, deadline=None)
@given(key=st.binary(max_size=100), data=st.binary(max_size=200), cut=st.integers(0, 200))
def test_hmac_sm3_matches_stdlib(key: bytes, data: bytes, cut: int) -> None:
    expected = hmac.new(key, data, "sm3").digest()
    assert hmac_sm3(key, data) == expected
    inc = HmacSM3(key, data[:cut])
    fork = inc.copy()
    assert inc.update(data[cut:]).digest() == expected
    assert fork.update(data[cut:]).digest() == expected
    hmac_sm3_verify(key, data, expected)
    HmacSM3(key).update(data).verify(expected)


def test_pbkdf2_hmac_sm3_matches_stdlib() -> None:
    for pw, salt, it, length in [
        (b"password", b"salt", 1, 32),
        (b"pw", b"NaCl", 1000, 64),
        (b"", b"s", 2, 17),
    ]:
        assert pbkdf2_hmac_sm3(pw, salt, it, length) == hashlib.pbkdf2_hmac(
            "sm3", pw, salt, it, length
        )


@ROUND
@given(a=st.integers(1, N - 1), b=st.integers(1, N - 1))
def test_point_arithmetic(a: int, b: int) -> None:
    pa, pb = mul_base(a), mul_base(b)
    if (a + b) % N:
        assert pa + pb == mul_base((a + b) % N)
    assert generator() * a == pa
    assert pa * b == pb * a == mul_base(a * b % N)
    assert -pa == mul_base(N - a)
    assert Point.from_bytes(pa.to_bytes(compressed=True)) == pa
    assert Point.from_bytes(pa.to_bytes()) == pa
    assert Point.from_xy(pa.x, pa.y) == pa
    assert hash(Point.from_bytes(pa.to_bytes())) == hash(pa)
    assert mul_base(1) == generator() == Point.from_xy(GX, GY)
