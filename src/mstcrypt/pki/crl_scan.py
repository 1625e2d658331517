"""Revocation status from a CRL without the full strict parse.

A relying party that only asks "is serial S revoked?" — the login server on every login,
a gateway on every handshake — needs the CRL's signature checked once and its serials in
a set, not an asn1crypto object per entry (the strict :class:`~mstcrypt.pki.crl.CRL`
parse takes over a second at 100,000 entries). :class:`CrlIndex` walks the DER framing
of the CertificateList by hand: the outer structure and the TBSCertList fields are
checked (version 2, SM2-with-SM3 inside and outside, times, no trailing bytes), the
small header fields (issuer, extensions) are parsed strictly with asn1crypto, and each
revokedCertificates element is framed (SEQUENCE of INTEGER, Time and optional
extensions) and indexed by serial; an entry is fully parsed only when it is looked up.
Entry extensions other than our reasonCode layout are parsed at scan time, so an
unsupported critical entry extension is reported as the strict parser would.

It offers the interface :func:`~mstcrypt.pki.validate.validate_path` uses, so it can be
given as one of its ``crls``; :meth:`CrlIndex.verify_signature` remembers the keys that
verified, so a cached index costs one signature check per CRL number. Keep the strict
parser for validating what is stored or relayed.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from asn1crypto import crl, x509

from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.errors import DecodeError, PolicyError, VerificationError
from mstcrypt.pki import _common as c
from mstcrypt.pki.crl import RevokedEntry
from mstcrypt.pki.errors import CertificateError
from mstcrypt.pki.names import name_to_str, names_equal

__all__ = ["CrlIndex"]

_SIG_ALG = bytes(c.sm2_with_sm3().dump())
_SIG_ALG_NULL = b"\x30" + bytes((_SIG_ALG[1] + 2,)) + _SIG_ALG[2:] + b"\x05\x00"
#: the one entry-extension layout our CAs write: Extensions { reasonCode ENUMERATED }
_REASON_PREFIX = bytes(
    crl.CRLEntryExtensions(
        [{"extn_id": "crl_reason", "critical": False, "extn_value": "unspecified"}]
    ).dump()
)[:-1]


def _tlv(d: bytes, pos: int, end: int, what: str) -> tuple[int, int, int]:
    """(tag, content start, content end) of the definite-length TLV at ``pos``."""
    if pos + 2 > end:
        raise DecodeError(f"CRL: {what} truncated")
    tag = d[pos]
    first = d[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > end:
            raise DecodeError(f"CRL: {what} has a bad length")
        length = int.from_bytes(d[pos : pos + n], "big")
        if length < 0x80 or d[pos] == 0:
            raise DecodeError(f"CRL: {what} length is not minimally encoded")
        pos += n
    if pos + length > end:
        raise DecodeError(f"CRL: {what} truncated")
    return tag, pos, pos + length


def _time(d: bytes, pos: int, end: int, what: str) -> tuple[datetime, int]:
    tag, _s, e = _tlv(d, pos, end, what)
    if tag not in (0x17, 0x18):
        raise DecodeError(f"CRL: {what} is not a time")
    try:
        t = x509.Time.load(d[pos:e], strict=True)
        return c.from_time(t), e
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"CRL: malformed {what} ({type(exc).__name__})") from None


class CrlIndex:
    """A CRL's header and an index of its serials, for status lookups (see the module
    documentation). Immutable; build with :meth:`from_der`."""

    __slots__ = (
        "_aki",
        "_delta_base",
        "_der",
        "_entries",
        "_exts",
        "_issuer",
        "_issuer_der",
        "_next_update",
        "_number",
        "_signature",
        "_tbs",
        "_this_update",
        "_unsupported",
        "_verified",
    )

    def __init__(self, *_: object, **__: object) -> None:
        raise TypeError("use CrlIndex.from_der()")

    @classmethod
    def from_der(cls, der: bytes) -> CrlIndex:
        """Scan one DER CRL (DecodeError when the framing is malformed, a serial is
        listed twice or there are trailing bytes; UnsupportedError when not signed with
        SM2-with-SM3). The signature is not checked here: call :meth:`verify_signature`."""
        if not isinstance(der, bytes | bytearray | memoryview):
            raise DecodeError("CRL must be bytes")
        d = bytes(der)
        n = len(d)
        tag, s, e = _tlv(d, 0, n, "CertificateList")
        if tag != 0x30 or e != n:
            raise DecodeError("CRL: not one CertificateList SEQUENCE (or trailing bytes)")
        tag, ts, te = _tlv(d, s, e, "tbsCertList")
        if tag != 0x30:
            raise DecodeError("CRL: tbsCertList is not a SEQUENCE")
        tbs_start = s
        tag, _a_s, a_e = _tlv(d, te, e, "signatureAlgorithm")
        outer_alg = d[te:a_e]
        if tag != 0x30:
            raise DecodeError("CRL: signatureAlgorithm is not a SEQUENCE")
        if outer_alg not in (_SIG_ALG, _SIG_ALG_NULL):
            c.check_signature_algorithm(_load_alg(outer_alg), "CRL")  # raises
            raise DecodeError("CRL: malformed SM2-with-SM3 AlgorithmIdentifier")
        tag, b_s, b_e = _tlv(d, a_e, e, "signatureValue")
        if tag != 0x03 or b_e != e or b_e - b_s < 2 or d[b_s] != 0:
            raise DecodeError("CRL: signatureValue is not a BIT STRING of whole octets")
        signature = d[b_s + 1 : b_e]

        # TBSCertList
        pos = ts
        tag, vs, ve = _tlv(d, pos, te, "version")
        if tag == 0x02:
            if d[vs:ve] != b"\x01":
                raise DecodeError("CRL: only version 2 CRLs are indexed")
            pos = ve
        else:
            raise DecodeError("CRL: only version 2 CRLs are indexed")
        tag, _, ae = _tlv(d, pos, te, "signature")
        if d[pos:ae] != outer_alg:
            raise DecodeError("CRL: signature algorithm differs inside and outside tbs")
        pos = ae
        tag, _, ie = _tlv(d, pos, te, "issuer")
        if tag != 0x30:
            raise DecodeError("CRL: issuer is not a Name")
        issuer_der = d[pos:ie]
        try:
            issuer = x509.Name.load(issuer_der, strict=True)
            issuer.native  # noqa: B018 - force the lazy parse
        except Exception as exc:
            raise DecodeError(f"CRL: malformed issuer ({type(exc).__name__})") from None
        this_update, pos = _time(d, ie, te, "thisUpdate")
        next_update = None
        if pos < te and d[pos] in (0x17, 0x18):
            next_update, pos = _time(d, pos, te, "nextUpdate")
        entries: dict[int, tuple[int, int]] = {}
        unsupported: list[str] = []
        if pos < te and d[pos] == 0x30:
            _, rs, re_ = _tlv(d, pos, te, "revokedCertificates")
            _scan_entries(d, rs, re_, entries, unsupported)
            pos = re_
        exts: dict[str, tuple[bool, Any]] = {}
        if pos < te and d[pos] == 0xA0:
            _, xs, xe = _tlv(d, pos, te, "crlExtensions")
            try:
                parsed = crl.TBSCertListExtensions.load(d[xs:xe], strict=True)
            except Exception as exc:
                raise DecodeError(f"CRL: malformed extensions ({type(exc).__name__})") from None
            exts = c.extension_map(parsed, "CRL")
            pos = xe
        if pos != te:
            raise DecodeError("CRL: unexpected fields in tbsCertList")
        try:
            num = exts.get(c.OID_CRL_NUMBER)
            number = int(num[1].native) if num else None
            aki = exts.get(c.OID_AUTHORITY_KEY_ID)
            aki_id = aki[1]["key_identifier"].native if aki else None
            delta = exts.get(c.OID_DELTA_CRL)
            delta_base = int(delta[1].native) if delta else None
        except Exception as exc:
            raise DecodeError(f"CRL: malformed extension ({type(exc).__name__})") from None
        if number is not None and number < 0:
            raise DecodeError("CRL: negative cRLNumber")
        if delta_base is not None and (delta_base < 0 or not delta[0] or number is None):  # type: ignore[index]
            raise DecodeError("CRL: malformed deltaCRLIndicator")
        for oid, (crit, _) in exts.items():
            if crit and oid not in c.UNDERSTOOD_CRL_EXTENSIONS:
                unsupported.append(oid)

        self = object.__new__(cls)
        set_ = object.__setattr__
        set_(self, "_der", d)
        set_(self, "_tbs", (tbs_start, te))
        set_(self, "_signature", signature)
        set_(self, "_issuer_der", issuer_der)
        set_(self, "_issuer", issuer)
        set_(self, "_this_update", this_update)
        set_(self, "_next_update", next_update)
        set_(self, "_exts", exts)
        set_(self, "_number", number)
        set_(self, "_aki", bytes(aki_id) if aki_id is not None else None)
        set_(self, "_delta_base", delta_base)
        set_(self, "_entries", entries)
        set_(self, "_unsupported", tuple(unsupported))
        set_(self, "_verified", set())
        return self

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("CrlIndex is immutable")

    # -- the interface validate_path uses (as CRL) -----------------------------------
    @property
    def der(self) -> bytes:
        return self._der

    @property
    def tbs_der(self) -> bytes:
        a, b = self._tbs
        return self._der[a:b]

    @property
    def signature(self) -> bytes:
        return self._signature

    @property
    def issuer(self) -> x509.Name:
        return x509.Name.load(self._issuer_der)

    @property
    def issuer_der(self) -> bytes:
        return self._issuer_der

    def issued_by_name(self, name: x509.Name) -> bool:
        return names_equal(self._issuer, name)

    @property
    def issuer_str(self) -> str:
        return name_to_str(self._issuer)

    @property
    def this_update(self) -> datetime:
        return self._this_update

    @property
    def next_update(self) -> datetime | None:
        return self._next_update

    @property
    def number(self) -> int | None:
        return self._number

    @property
    def authority_key_id(self) -> bytes | None:
        return self._aki

    @property
    def is_delta(self) -> bool:
        return self._delta_base is not None

    @property
    def delta_base(self) -> int | None:
        return self._delta_base

    @property
    def unsupported_critical_extensions(self) -> tuple[str, ...]:
        return self._unsupported

    def verify_signature(self, issuer_public_key: SM2PublicKey) -> None:
        """Check the signature once per key (remembered); CertificateError("crl_invalid")
        when it does not verify."""
        if not isinstance(issuer_public_key, SM2PublicKey):
            raise PolicyError("issuer_public_key must be an SM2PublicKey")
        key = issuer_public_key.to_bytes()
        if key in self._verified:
            return
        try:
            issuer_public_key.verify(self._signature, self.tbs_der)
        except VerificationError:
            raise CertificateError(
                "crl_invalid",
                "CRL signature does not verify with the issuer key",
                certificate=self.issuer_str,
            ) from None
        self._verified.add(key)

    def is_revoked(self, serial: int) -> RevokedEntry | None:
        """The entry for ``serial`` (parsed now), or None."""
        span = self._entries.get(serial)
        if span is None:
            return None
        try:
            rc = crl.RevokedCertificate.load(self._der[span[0] : span[1]], strict=True)
            exts = c.extension_map(rc["crl_entry_extensions"], "CRL entry")
            reason = exts.get(c.OID_CRL_REASON)
            return RevokedEntry(
                serial,
                c.from_time(rc["revocation_date"]),
                str(reason[1].native) if reason else None,
            )
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"CRL: malformed entry ({type(exc).__name__})") from None

    # -- the index -----------------------------------------------------------------------
    def __contains__(self, serial: object) -> bool:
        return serial in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def serials(self) -> Iterator[int]:
        return iter(self._entries)

    def __repr__(self) -> str:
        kind = f"delta on {self._delta_base}" if self._delta_base is not None else "complete"
        return f"CrlIndex(number={self._number}, {kind}, entries={len(self._entries)})"


def _load_alg(der: bytes) -> Any:
    from asn1crypto import algos

    try:
        return algos.SignedDigestAlgorithm.load(der, strict=True)
    except Exception as exc:
        raise DecodeError(f"CRL: malformed signatureAlgorithm ({type(exc).__name__})") from None


def _scan_entries(
    d: bytes,
    pos: int,
    end: int,
    entries: dict[int, tuple[int, int]],
    unsupported: list[str],
) -> None:
    """Index each revokedCertificates element by serial (framing checked)."""
    prefix = _REASON_PREFIX
    plen = len(prefix)
    while pos < end:
        start = pos
        tag, s, e = _tlv(d, pos, end, "revoked entry")
        if tag != 0x30:
            raise DecodeError("CRL: revoked entry is not a SEQUENCE")
        tag, is_, ie = _tlv(d, s, e, "userCertificate")
        if tag != 0x02 or ie == is_:
            raise DecodeError("CRL: userCertificate is not an INTEGER")
        serial = int.from_bytes(d[is_:ie], "big", signed=True)
        tag, _, te = _tlv(d, ie, e, "revocationDate")
        if tag not in (0x17, 0x18):
            raise DecodeError("CRL: revocationDate is not a time")
        if te != e:
            # entry extensions: our reasonCode layout, or parsed to check criticality
            rest = d[te:e]
            if not (len(rest) == plen + 1 and rest[:plen] == prefix):
                tag, _xs, xe = _tlv(d, te, e, "crlEntryExtensions")
                if tag != 0x30 or xe != e:
                    raise DecodeError("CRL: unexpected fields in a revoked entry")
                _check_entry_extensions(d[te:e], unsupported)
            elif rest[-1] not in _REASON_VALUES:
                raise DecodeError("CRL: unknown reasonCode")
        if serial in entries:
            raise DecodeError(f"CRL lists serial {serial:#x} twice")
        entries[serial] = (start, e)
        pos = e
    if pos != end:
        raise DecodeError("CRL: revokedCertificates truncated")


_REASON_VALUES = frozenset(crl.CRLReason._map)


def _check_entry_extensions(der: bytes, unsupported: list[str]) -> None:
    try:
        parsed = crl.CRLEntryExtensions.load(der, strict=True)
        exts = c.extension_map(parsed, "CRL entry")
        for oid, (crit, value) in exts.items():
            if crit and oid not in c.UNDERSTOOD_CRL_ENTRY_EXTENSIONS and oid not in unsupported:
                unsupported.append(oid)
            if oid == c.OID_CRL_REASON:
                str(value.native)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"CRL: malformed entry extensions ({type(exc).__name__})") from None
