"""X.509 certificates of the standard WAPI suite: keys on the WAPI 192-bit curve, signed
with ECDSA-192 over SHA-256 (OID 1.2.156.11235.1.1.1), the profile WAPI equipment uses.
In a standard-suite deployment the ASU is the issuer of AE and ASUE certificates.

* :func:`issue` builds one (subject CN, serial, validity, issuer key);
* :class:`Wapi192Validator` is the ASU's verdict for such certificates: issuer name and
  signature, validity period, revocation by serial number (a callable, re-read at every
  verdict).

The SM suite uses the platform CA (mstcrypt.pki) instead.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from mstcrypt.crypto import _der, wapi192
from mstcrypt.errors import DecodeError, VerificationError
from mstcrypt.protocols.wai.constants import VerifyResult
from mstcrypt.protocols.wai.errors import WaiDecodeError
from mstcrypt.protocols.wai.suites import cert_info

__all__ = ["SIG_OID", "Wapi192Validator", "issue", "serial_of", "signature_of", "subject_cn"]

#: ECDSA-192 with SHA-256 (WAPI).
SIG_OID = "1.2.156.11235.1.1.1"
_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
_CN = "2.5.4.3"


def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _len(len(body)) + body


def _oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        body += bytes(reversed(chunk))
    return _tlv(0x06, bytes(body))


def _int(v: int) -> bytes:
    return _tlv(0x02, v.to_bytes(v.bit_length() // 8 + 1, "big"))


def _name(cn: str) -> bytes:
    atv = _tlv(0x30, _oid(_CN) + _tlv(0x0C, cn.encode("utf-8")))
    return _tlv(0x30, _tlv(0x31, atv))


def _time(t: datetime) -> bytes:
    t = t.astimezone(UTC)
    if 1950 <= t.year < 2050:
        return _tlv(0x17, t.strftime("%y%m%d%H%M%SZ").encode())
    return _tlv(0x18, t.strftime("%Y%m%d%H%M%SZ").encode())


def _ecdsa_der(raw: bytes) -> bytes:
    return _tlv(0x30, _int(int.from_bytes(raw[:24], "big")) + _int(int.from_bytes(raw[24:], "big")))


def issue(
    *,
    subject_cn: str,
    public_key: wapi192.PublicKey,
    issuer_cn: str,
    issuer_key: wapi192.PrivateKey,
    serial: int,
    not_before: datetime,
    not_after: datetime,
) -> bytes:
    """A v3 X.509 certificate (DER) for ``public_key``, signed by ``issuer_key``."""
    alg = _tlv(0x30, _oid(SIG_OID))
    spki = _tlv(
        0x30,
        _tlv(0x30, _oid(_EC_PUBLIC_KEY) + wapi192.CURVE_OID_DER)
        + _tlv(0x03, b"\x00" + public_key.to_bytes()),
    )
    tbs = _tlv(
        0x30,
        _tlv(0xA0, _int(2))
        + _int(serial)
        + alg
        + _name(issuer_cn)
        + _tlv(0x30, _time(not_before) + _time(not_after))
        + _name(subject_cn)
        + spki,
    )
    sig = _ecdsa_der(issuer_key.sign(tbs))
    return _tlv(0x30, tbs + alg + _tlv(0x03, b"\x00" + sig))


def signature_of(der: bytes) -> bytes:
    """The certificate's signature as r‖s (48 bytes)."""
    info = cert_info(der)
    if not info.signature or info.signature[0] != 0:
        raise WaiDecodeError("certificate signature BIT STRING has unused bits")
    try:
        seq, end = _der.read_tlv(info.signature, 1, 0x30, "ECDSA signature")
        if end != len(info.signature):
            raise DecodeError("ECDSA signature: trailing bytes")
        r_c, p = _der.read_tlv(seq, 0, 0x02, "r")
        s_c, p = _der.read_tlv(seq, p, 0x02, "s")
        if p != len(seq):
            raise DecodeError("ECDSA signature: trailing fields")
        r, s = _der.positive_integer(r_c, "r"), _der.positive_integer(s_c, "s")
    except DecodeError as e:
        raise WaiDecodeError(f"certificate: {e}") from None
    if r >= 1 << 192 or s >= 1 << 192:
        raise WaiDecodeError("certificate: ECDSA-192 r or s too large")
    return r.to_bytes(24, "big") + s.to_bytes(24, "big")


def _validity(tbs: bytes) -> tuple[datetime, datetime]:
    body, _ = _der.read_tlv(tbs, 0, 0x30, "tbs")
    q = 0
    if body[0] == 0xA0:
        _, q = _der.read_tlv(body, 0, 0xA0, "version")
    for tag, what in ((0x02, "serial"), (0x30, "signature"), (0x30, "issuer")):
        _, q = _der.read_tlv(body, q, tag, what)
    val, _ = _der.read_tlv(body, q, 0x30, "validity")
    out = []
    p = 0
    for _i in range(2):
        tag = val[p]
        t, p = _der.read_tlv(val, p, tag, "time")
        fmt = "%y%m%d%H%M%SZ" if tag == 0x17 else "%Y%m%d%H%M%SZ"
        try:
            out.append(datetime.strptime(t.decode("ascii"), fmt).replace(tzinfo=UTC))
        except (ValueError, UnicodeDecodeError):
            raise DecodeError("certificate: bad time") from None
    return out[0], out[1]


def _serial_and_issuer(der: bytes) -> tuple[int, bytes]:
    ident = cert_info(der).identity.data
    # identity = subject ‖ issuer ‖ serial (whole TLVs)
    _, p = _der.read_tlv(ident, 0, 0x30, "subject")
    start = p
    _, p = _der.read_tlv(ident, p, 0x30, "issuer")
    issuer = ident[start:p]
    serial, _ = _der.read_tlv(ident, p, 0x02, "serial")
    return int.from_bytes(serial, "big", signed=True), issuer


def serial_of(der: bytes) -> int:
    return _serial_and_issuer(der)[0]


def subject_cn(der: bytes) -> str:
    """The (first) common name of the subject."""
    subject, _ = _der.read_tlv(cert_info(der).identity.data, 0, 0x30, "subject")
    cn = _oid(_CN)
    p = 0
    while p < len(subject):
        rdn, p = _der.read_tlv(subject, p, 0x31, "RDN")
        q = 0
        while q < len(rdn):
            atv, q = _der.read_tlv(rdn, q, 0x30, "attribute")
            if atv.startswith(cn) and len(atv) > len(cn):
                value, _ = _der.read_tlv(atv, len(cn), atv[len(cn)], "common name")
                return value.decode("utf-8", "replace")
    raise WaiDecodeError("certificate subject has no common name")


class Wapi192Validator:
    """Verdicts for standard-suite certificates issued by ``issuer_der``."""

    def __init__(self, issuer_der: bytes, revoked: Callable[[], set[int]] = set) -> None:
        self._issuer = cert_info(issuer_der)
        self._issuer_key = wapi192.PublicKey.from_bytes(self._issuer.public_point)
        self.revoked = revoked

    def __call__(self, der: bytes, at: datetime) -> VerifyResult:
        try:
            info = cert_info(der)
            serial, issuer = _serial_and_issuer(der)
            subject_of_issuer = _der.read_tlv(self._issuer.identity.data, 0, 0x30, "subject")
            if issuer != self._issuer.identity.data[: subject_of_issuer[1]]:
                return VerifyResult.ISSUER_UNKNOWN
            alg, _ = _der.read_tlv(info.signature_alg, 0, 0x06, "signature algorithm")
            if _tlv(0x06, alg) != _oid(SIG_OID):
                return VerifyResult.SIGNATURE_INVALID
            try:
                self._issuer_key.verify(signature_of(der), info.tbs)
            except VerificationError:
                return VerifyResult.SIGNATURE_INVALID
            nb, na = _validity(info.tbs)
            if not nb <= at <= na:
                return VerifyResult.TIME_INVALID
            if serial in self.revoked():
                return VerifyResult.REVOKED
        except (DecodeError, WaiDecodeError):
            return VerifyResult.UNKNOWN_ERROR
        return VerifyResult.VALID
