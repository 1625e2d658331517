"""CRLs assembled from cached DER, for CAs with many revoked certificates.

:func:`build_crl` (asn1crypto) builds the whole structure as Python objects, then encodes
and re-parses it: about a millisecond per entry at 100,000 entries. A CA that keeps the
DER of each revoked entry (written once, at revocation, by :func:`entry_der`) can
instead frame the TBSCertList by hand around the concatenated entries —
:func:`tbs_cert_list_der` — and sign it: the cost is one ``bytes.join`` over the entries
plus one SM2 signature. The output is byte-for-byte what :func:`build_crl` writes for
the same input (entries in serial order), which the tests check.

Only our own encoder's output is framed here (lengths, times, integers and the fixed
extension layout of :func:`build_crl`); anything that reads a CRL goes through
:class:`~mstcrypt.pki.crl.CRL` or :class:`~mstcrypt.pki.crl_scan.CrlIndex`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from asn1crypto import core, crl

from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.errors import PolicyError
from mstcrypt.pki import _common as c
from mstcrypt.pki.crl import REMOVE_FROM_CRL, REVOCATION_REASONS

__all__ = [
    "certificate_list_der",
    "entry_der",
    "entry_sort_key",
    "sign_tbs_cert_list",
    "tbs_cert_list_der",
]

_REASON_CODES = {name: code for code, name in crl.CRLReason._map.items()}
_V2 = b"\x02\x01\x01"
_TRUE = b"\x01\x01\xff"


def _oid(dotted: str) -> bytes:
    return bytes(core.ObjectIdentifier(dotted).dump())


_OID_REASON = _oid(c.OID_CRL_REASON)
_OID_AKI = _oid(c.OID_AUTHORITY_KEY_ID)
_OID_NUMBER = _oid(c.OID_CRL_NUMBER)
_OID_DELTA = _oid(c.OID_DELTA_CRL)
_OID_FRESHEST = _oid(c.OID_FRESHEST_CRL)


_tlv = c.tlv


def _integer(n: int) -> bytes:
    # two's complement, minimal; our values are non-negative
    return _tlv(0x02, n.to_bytes(n.bit_length() // 8 + 1, "big"))


def _time(dt: datetime, what: str) -> bytes:
    """RFC 5280 §4.1.2.5 (as :func:`mstcrypt.pki._common.to_time`): UTCTime through 2049,
    GeneralizedTime from 2050, whole seconds, Z."""
    t = c.utc(dt, what)
    if 1950 <= t.year < 2050:
        return _tlv(0x17, t.strftime("%y%m%d%H%M%SZ").encode())
    return _tlv(0x18, f"{t.year:04d}{t.strftime('%m%d%H%M%SZ')}".encode())


def _extension(oid: bytes, value: bytes, *, critical: bool = False) -> bytes:
    return _tlv(0x30, oid + (_TRUE if critical else b"") + _tlv(0x04, value))


def entry_der(serial: int, revoked_at: datetime, reason: str | None = None) -> bytes:
    """The DER of one revokedCertificates element: userCertificate, revocationDate and,
    when ``reason`` is given (an asn1crypto CRLReason name), a non-critical reasonCode —
    exactly as :func:`~mstcrypt.pki.crl.build_crl` writes it."""
    c.check_serial(serial)
    body = _integer(serial) + _time(revoked_at, "revoked_at")
    if reason is not None:
        if reason not in REVOCATION_REASONS and reason != REMOVE_FROM_CRL:
            raise PolicyError(f"unknown revocation reason {reason!r}")
        reason_ext = _extension(_OID_REASON, _tlv(0x0A, bytes((_REASON_CODES[reason],))))
        body += _tlv(0x30, reason_ext)
    return _tlv(0x30, body)


def entry_sort_key(serial_hex: str) -> tuple[int, str]:
    """Sort key putting lower-case hex serials without leading zeros in numeric order
    (the order :func:`~mstcrypt.pki.crl.build_crl` writes entries in)."""
    return len(serial_hex), serial_hex


def _distribution_point(urls: Sequence[str]) -> bytes:
    c.distribution_points(urls, "freshest_crl_urls")  # validates
    names = b"".join(_tlv(0x86, u.encode("ascii")) for u in urls)
    # DistributionPoint { distributionPoint [0] { fullName [0] GeneralNames } }
    return _tlv(0x30, _tlv(0x30, _tlv(0xA0, _tlv(0xA0, names))))


def tbs_cert_list_der(
    *,
    issuer_der: bytes,
    authority_key_id: bytes,
    number: int,
    this_update: datetime,
    next_update: datetime,
    entries: Iterable[bytes],
    delta_base: int | None = None,
    freshest_crl_urls: Sequence[str] = (),
) -> bytes:
    """The DER TBSCertList of a v2 CRL: ``issuer_der`` is the issuer's Name (its
    certificate's subject DER), ``entries`` the DER of each revokedCertificates element
    in the order to write (:func:`entry_der`, serial order for byte equality with
    :func:`build_crl`). The extensions are those of :func:`build_crl`:
    authorityKeyIdentifier, cRLNumber, deltaCRLIndicator (critical) with ``delta_base``,
    freshestCRL with ``freshest_crl_urls``."""
    if not isinstance(number, int) or isinstance(number, bool) or number < 0:
        raise PolicyError("CRL number must be a non-negative int")
    if number.bit_length() > 159:
        raise PolicyError("CRL number must fit in 20 octets (RFC 5280 §5.2.3)")
    if delta_base is not None and not 0 <= delta_base <= number:
        raise PolicyError("delta_base must be a CRL number between 0 and number")
    tu, nu = c.utc(this_update, "this_update"), c.utc(next_update, "next_update")
    if nu <= tu:
        raise PolicyError("next_update must be later than this_update")
    exts = [
        _extension(_OID_AKI, _tlv(0x30, _tlv(0x80, authority_key_id))),
        _extension(_OID_NUMBER, _integer(number)),
    ]
    if delta_base is not None:
        exts.append(_extension(_OID_DELTA, _integer(delta_base), critical=True))
    if freshest_crl_urls:
        exts.append(_extension(_OID_FRESHEST, _distribution_point(freshest_crl_urls)))
    revoked = b"".join(entries)
    body = b"".join(
        (
            _V2,
            c.SM2_WITH_SM3_DER,
            issuer_der,
            _time(tu, "this_update"),
            _time(nu, "next_update"),
            _tlv(0x30, revoked) if revoked else b"",  # RFC 5280 §5.1.2.6: omit when empty
            _tlv(0xA0, _tlv(0x30, b"".join(exts))),
        )
    )
    return _tlv(0x30, body)


def certificate_list_der(tbs_der: bytes, signature: bytes) -> bytes:
    """CertificateList { tbsCertList, SM2-with-SM3, signatureValue BIT STRING }."""
    return c.signed_der(tbs_der, signature)


def sign_tbs_cert_list(tbs_der: bytes, signer: c.Signer, issuer_public_key: SM2PublicKey) -> bytes:
    """Sign ``tbs_der`` with ``signer`` (checked against ``issuer_public_key`` before it
    is used) and return the DER CertificateList."""
    return certificate_list_der(tbs_der, c.sign(tbs_der, signer, issuer_public_key, "CRL"))
