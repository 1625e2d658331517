"""Certificate revocation lists (RFC 5280 §5), v2, signed with SM2-with-SM3.

:func:`build_crl` writes a complete CRL — or, with ``delta_base``, a delta CRL (RFC 5280
§5.2.4: a critical deltaCRLIndicator naming the complete CRL it updates) — for one
issuer with the cRLNumber and authorityKeyIdentifier extensions, optionally a
freshestCRL extension (where the delta CRLs are) and, per entry, a reasonCode when a
reason is given. It is the reference builder; :mod:`mstcrypt.pki.crl_der` writes the
same bytes from cached entries for CAs with many revocations. :class:`CRL` parses
strictly; indirect CRLs and issuingDistributionPoint scoping are not supported for
validation (see ``unsupported_critical_extensions``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

from asn1crypto import core, crl, x509

from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.errors import DecodeError, PolicyError, VerificationError
from mstcrypt.formats._der import dump, load_strict, pem_decode, pem_encode
from mstcrypt.pki import _common as c
from mstcrypt.pki.errors import CertificateError
from mstcrypt.pki.names import name_to_str, names_equal

__all__ = ["CRL", "REMOVE_FROM_CRL", "REVOCATION_REASONS", "RevokedEntry", "build_crl"]

#: asn1crypto CRLReason names (RFC 5280 §5.3.1) allowed in a RevokedEntry
#: (removeFromCRL only in a delta CRL).
REVOCATION_REASONS: frozenset[str] = frozenset(
    v for k, v in crl.CRLReason._map.items() if v != "remove_from_crl"
)
REMOVE_FROM_CRL = "remove_from_crl"


@dataclass(frozen=True)
class RevokedEntry:
    """One revoked certificate: its serial, when it was revoked and why (an asn1crypto
    CRLReason name such as key_compromise, ca_compromise, superseded,
    cessation_of_operation, or None when the CRL gives no reason)."""

    serial: int
    revoked_at: datetime
    reason: str | None = None


class CRL:
    """An immutable, strictly parsed CRL. The signature is not checked on parsing; call
    :meth:`verify_signature` (validate_path does)."""

    __slots__ = (
        "_aki",
        "_asn1",
        "_delta_base",
        "_der",
        "_entries",
        "_exts",
        "_freshest",
        "_issuer_str",
        "_next_update",
        "_number",
        "_this_update",
        "_unsupported",
    )

    def __init__(self, *_: object, **__: object) -> None:
        raise TypeError("use CRL.from_der() / from_pem() or build_crl()")

    @classmethod
    def from_der(cls, der: bytes) -> CRL:
        """Parse one DER CRL (DecodeError when malformed, not canonical DER, or with a
        serial listed twice; UnsupportedError when not signed with SM2-with-SM3)."""
        asn1 = load_strict(crl.CertificateList, der, "CRL")
        c.check_signature_algorithm(asn1["signature_algorithm"], "CRL")
        tbs = asn1["tbs_cert_list"]
        if tbs["signature"].dump() != asn1["signature_algorithm"].dump():
            raise DecodeError("CRL: signature algorithm differs inside and outside tbs")
        version = tbs["version"].native
        self = object.__new__(cls)
        set_ = object.__setattr__
        set_(self, "_der", bytes(der))
        set_(self, "_asn1", asn1)
        set_(self, "_issuer_str", name_to_str(tbs["issuer"]))
        set_(self, "_this_update", c.from_time(tbs["this_update"]))
        nu = tbs["next_update"]
        set_(self, "_next_update", None if isinstance(nu, core.Void) else c.from_time(nu))
        ext_asn1 = tbs["crl_extensions"]
        has_exts = not isinstance(ext_asn1, core.Void) and len(ext_asn1) > 0
        unsupported: list[str] = []
        exts = c.extension_map(ext_asn1 if has_exts else None, "CRL")
        entries: dict[int, RevokedEntry] = {}
        revoked = tbs["revoked_certificates"]
        any_entry_exts = False
        try:
            for rc in () if isinstance(revoked, core.Void) else revoked:
                serial = int(rc["user_certificate"].native)
                if serial in entries:
                    raise DecodeError(f"CRL lists serial {serial:#x} twice")
                eexts_asn1 = rc["crl_entry_extensions"]
                eexts = c.extension_map(
                    None if isinstance(eexts_asn1, core.Void) else eexts_asn1, "CRL entry"
                )
                any_entry_exts = any_entry_exts or bool(eexts)
                reason = eexts.get(c.OID_CRL_REASON)
                for oid, (crit, _) in eexts.items():
                    if (
                        crit
                        and oid not in c.UNDERSTOOD_CRL_ENTRY_EXTENSIONS
                        and oid not in unsupported
                    ):
                        unsupported.append(oid)
                entries[serial] = RevokedEntry(
                    serial=serial,
                    revoked_at=c.from_time(rc["revocation_date"]),
                    reason=str(reason[1].native) if reason else None,
                )
            if (has_exts or any_entry_exts) and version != "v2":
                raise DecodeError("CRL: extensions are only allowed in version 2")
            num = exts.get(c.OID_CRL_NUMBER)
            number = int(num[1].native) if num else None
            if number is not None and number < 0:
                raise DecodeError("CRL: negative cRLNumber")
            aki = exts.get(c.OID_AUTHORITY_KEY_ID)
            aki_id = aki[1]["key_identifier"].native if aki else None
            delta = exts.get(c.OID_DELTA_CRL)
            delta_base = int(delta[1].native) if delta else None
            if delta_base is not None and (delta_base < 0 or not delta[0]):
                raise DecodeError("CRL: deltaCRLIndicator must be critical and non-negative")
            if delta_base is not None and number is None:
                raise DecodeError("CRL: a delta CRL must carry a cRLNumber")
            fresh = exts.get(c.OID_FRESHEST_CRL)
            freshest = c.distribution_point_urls(fresh[1]) if fresh else ()
            if delta_base is None and any(e.reason == REMOVE_FROM_CRL for e in entries.values()):
                raise DecodeError("CRL: removeFromCRL is only allowed in a delta CRL")
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"CRL: malformed field ({type(exc).__name__})") from None
        for oid, (crit, _) in exts.items():
            if crit and oid not in c.UNDERSTOOD_CRL_EXTENSIONS:
                unsupported.append(oid)
        set_(self, "_exts", exts)
        set_(self, "_entries", entries)
        set_(self, "_number", number)
        set_(self, "_aki", bytes(aki_id) if aki_id is not None else None)
        set_(self, "_delta_base", delta_base)
        set_(self, "_freshest", freshest)
        set_(self, "_unsupported", tuple(unsupported))
        return self

    @classmethod
    def from_pem(cls, pem: bytes | str) -> CRL:
        """Parse the first ``X509 CRL`` PEM block."""
        _, der = pem_decode(pem, ("X509 CRL",))
        return cls.from_der(der)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("CRL is immutable")

    @property
    def der(self) -> bytes:
        return self._der

    @property
    def pem(self) -> bytes:
        return pem_encode(self._der, "X509 CRL")

    @property
    def tbs_der(self) -> bytes:
        return bytes(self._asn1["tbs_cert_list"].dump())

    @property
    def signature(self) -> bytes:
        return bytes(self._asn1["signature"].native)

    @property
    def signature_algorithm(self) -> str:
        return str(self._asn1["signature_algorithm"]["algorithm"].dotted)

    @property
    def fingerprint(self) -> str:
        return c.sm3_hex(self._der)

    @property
    def issuer(self) -> x509.Name:
        return x509.Name.load(self._asn1["tbs_cert_list"]["issuer"].dump())

    def issued_by_name(self, name: x509.Name) -> bool:
        """The CRL issuer equals ``name`` (RFC 5280 §7.1 comparison)."""
        return names_equal(self._asn1["tbs_cert_list"]["issuer"], name)

    @property
    def issuer_str(self) -> str:
        return self._issuer_str

    @property
    def this_update(self) -> datetime:
        return self._this_update

    @property
    def next_update(self) -> datetime | None:
        return self._next_update

    @property
    def number(self) -> int | None:
        """The cRLNumber, or None when absent."""
        return self._number

    @property
    def authority_key_id(self) -> bytes | None:
        return self._aki

    @property
    def entries(self) -> Mapping[int, RevokedEntry]:
        """serial → RevokedEntry (a read-only view)."""
        return MappingProxyType(self._entries)

    @property
    def is_delta(self) -> bool:
        return self._delta_base is not None

    @property
    def delta_base(self) -> int | None:
        """The BaseCRLNumber of a delta CRL (the complete CRL it updates), else None."""
        return self._delta_base

    @property
    def freshest_crl_urls(self) -> tuple[str, ...]:
        """Where the issuer's delta CRLs are published (freshestCRL), if stated."""
        return self._freshest

    @property
    def unsupported_critical_extensions(self) -> tuple[str, ...]:
        """Critical CRL or entry extensions that validation does not understand."""
        return self._unsupported

    def is_revoked(self, serial: int) -> RevokedEntry | None:
        """The entry for ``serial``, or None. A certificateHold entry counts as revoked;
        in a delta CRL an entry may be removeFromCRL (the hold was released)."""
        return self._entries.get(serial)

    def verify_signature(self, issuer_public_key: SM2PublicKey) -> None:
        """Check the SM2-with-SM3 signature (default ID, Z from ``issuer_public_key``).
        Raises CertificateError("crl_invalid")."""
        if not isinstance(issuer_public_key, SM2PublicKey):
            raise PolicyError("issuer_public_key must be an SM2PublicKey")
        try:
            issuer_public_key.verify(self.signature, self.tbs_der)
        except VerificationError:
            raise CertificateError(
                "crl_invalid",
                "CRL signature does not verify with the issuer key",
                certificate=self._issuer_str,
            ) from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CRL):
            return NotImplemented
        return self._der == other._der

    def __hash__(self) -> int:
        return hash(self._der)

    def __repr__(self) -> str:
        return (
            f"CRL(issuer={self._issuer_str!r}, number={self._number}, entries={len(self._entries)})"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (CRL.from_der, (self._der,))


def build_crl(
    *,
    issuer: x509.Name,
    issuer_public_key: SM2PublicKey,
    signer: c.Signer,
    number: int,
    this_update: datetime,
    next_update: datetime,
    entries: Sequence[RevokedEntry],
    authority_key_id: bytes | None = None,
    key_id_method: str = "sm3",
    delta_base: int | None = None,
    freshest_crl_urls: Sequence[str] = (),
) -> CRL:
    """A v2 CRL signed by ``signer`` (the issuer's key, SM2 default ID).

    With ``delta_base`` it is a delta CRL updating the complete CRL of that number
    (which must not exceed ``number``); its entries may then also carry the reason
    ``remove_from_crl``. ``freshest_crl_urls`` adds a freshestCRL extension (where the
    delta CRLs are).

    ``issuer`` may also be the issuer's :class:`~mstcrypt.pki.cert.Certificate` (its
    subject is used, and its SKI as the AKI). ``authority_key_id`` overrides the AKI;
    by default it is computed from ``issuer_public_key`` with ``key_id_method``, as
    :func:`~mstcrypt.pki.cert.build_certificate` does. Entries are written in serial
    order. Raises PolicyError on invalid arguments.
    """
    from mstcrypt.pki.cert import Certificate

    if not isinstance(issuer_public_key, SM2PublicKey):
        raise PolicyError("issuer_public_key must be an SM2PublicKey")
    if isinstance(issuer, Certificate):
        if issuer.public_key != issuer_public_key:
            raise PolicyError("issuer_public_key is not the key of the issuer certificate")
        if authority_key_id is None:
            authority_key_id = issuer.subject_key_id
        issuer = issuer.subject
    if not isinstance(issuer, x509.Name):
        raise PolicyError("issuer must be an asn1crypto.x509.Name or a Certificate")
    if authority_key_id is None:
        authority_key_id = c.key_identifier(issuer_public_key, key_id_method)
    if not isinstance(number, int) or isinstance(number, bool) or number < 0:
        raise PolicyError("CRL number must be a non-negative int")
    if len(core.Integer(number).contents) > 20:
        raise PolicyError("CRL number must fit in 20 octets (RFC 5280 §5.2.3)")
    if delta_base is not None and (
        not isinstance(delta_base, int)
        or isinstance(delta_base, bool)
        or not 0 <= delta_base <= number
    ):
        raise PolicyError("delta_base must be a CRL number between 0 and number")
    allowed = REVOCATION_REASONS | ({REMOVE_FROM_CRL} if delta_base is not None else set())
    tu = c.utc(this_update, "this_update")
    nu = c.utc(next_update, "next_update")
    if nu <= tu:
        raise PolicyError("next_update must be later than this_update")
    revoked = []
    seen: set[int] = set()
    for entry in sorted(entries, key=lambda e: e.serial if isinstance(e, RevokedEntry) else 0):
        if not isinstance(entry, RevokedEntry):
            raise PolicyError("entries must be RevokedEntry values")
        c.check_serial(entry.serial)
        if entry.serial in seen:
            raise PolicyError(f"serial {entry.serial:#x} is listed twice")
        seen.add(entry.serial)
        item: dict[str, object] = {
            "user_certificate": entry.serial,
            "revocation_date": c.to_time(entry.revoked_at, "revoked_at"),
        }
        if entry.reason is not None:
            if entry.reason not in allowed:
                raise PolicyError(
                    f"unknown revocation reason {entry.reason!r}; expected one of "
                    + ", ".join(sorted(allowed))
                )
            item["crl_entry_extensions"] = [
                {"extn_id": "crl_reason", "critical": False, "extn_value": entry.reason}
            ]
        revoked.append(item)
    tbs_fields: dict[str, object] = {
        "version": "v2",
        "signature": c.sm2_with_sm3(),
        "issuer": x509.Name.load(issuer.dump()),
        "this_update": c.to_time(tu, "this_update"),
        "next_update": c.to_time(nu, "next_update"),
        "crl_extensions": [
            {
                "extn_id": "authority_key_identifier",
                "critical": False,
                "extn_value": {"key_identifier": authority_key_id},
            },
            {"extn_id": "crl_number", "critical": False, "extn_value": number},
        ],
    }
    exts: list[dict[str, object]] = tbs_fields["crl_extensions"]  # type: ignore[assignment]
    if delta_base is not None:
        exts.append({"extn_id": "delta_crl_indicator", "critical": True, "extn_value": delta_base})
    if freshest_crl_urls:
        exts.append(
            {
                "extn_id": "freshest_crl",
                "critical": False,
                "extn_value": c.distribution_points(freshest_crl_urls, "freshest_crl_urls"),
            }
        )
    if revoked:  # RFC 5280 §5.1.2.6: omit the list when empty
        tbs_fields["revoked_certificates"] = revoked
    tbs_der = dump(crl.TbsCertList(tbs_fields))
    sig = c.sign(tbs_der, signer, issuer_public_key, "CRL")
    cl = crl.CertificateList(
        {
            "tbs_cert_list": crl.TbsCertList.load(tbs_der),
            "signature_algorithm": c.sm2_with_sm3(),
            "signature": sig,
        }
    )
    return CRL.from_der(dump(cl))
