"""A minimal issuing authority: a CA certificate plus the signer of its key.

:class:`Issuer` is the convenience layer over :func:`~mstcrypt.pki.cert.build_certificate`
and :func:`~mstcrypt.pki.crl.build_crl` that a CA service, a KMC or a test uses: random
serial numbers, validity from the profile's default lifetime, AKI from the CA
certificate, certificates from verified CSRs. It keeps no state besides the certificate
and the signer (serials are random, CRL numbers are the caller's), so several instances
may run side by side.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from asn1crypto import x509

from mstcrypt.crypto.random import random_bytes
from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.errors import PolicyError
from mstcrypt.pki import _common as c
from mstcrypt.pki.cert import Certificate, ExtraExtension, build_certificate
from mstcrypt.pki.crl import CRL, RevokedEntry, build_crl
from mstcrypt.pki.csr import CertificationRequest
from mstcrypt.pki.profiles import Profile, check_alt_names, spec

__all__ = ["Issuer", "random_serial"]

#: Backdating of notBefore, to tolerate relying parties whose clocks are a little slow.
BACKDATE = timedelta(minutes=5)


def random_serial() -> int:
    """A positive random serial of 127 bits (16 DER octets): unpredictable, as
    CA/Browser Forum practice recommends, and well inside RFC 5280's 20 octets."""
    return (int.from_bytes(random_bytes(16), "big") >> 1) or 1


def _window(
    not_before: datetime | None, not_after: datetime | None, days: int
) -> tuple[datetime, datetime]:
    nb = c.utc(not_before, "not_before") if not_before is not None else c.now() - BACKDATE
    na = c.utc(not_after, "not_after") if not_after is not None else nb + timedelta(days=days)
    return nb, na


@dataclass(frozen=True)
class Issuer:
    """A CA certificate and the :data:`~mstcrypt.pki.Signer` of its private key."""

    certificate: Certificate
    signer: c.Signer

    def __post_init__(self) -> None:
        if not isinstance(self.certificate, Certificate):
            raise PolicyError("Issuer.certificate must be a Certificate")
        if not callable(self.signer):
            raise PolicyError("Issuer.signer must be callable")

    @property
    def public_key(self) -> SM2PublicKey:
        return self.certificate.public_key

    @classmethod
    def self_signed(
        cls,
        subject: x509.Name,
        public_key: SM2PublicKey,
        signer: c.Signer,
        *,
        profile: Profile | str = Profile.ROOT_CA,
        serial: int | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        path_len: int | None = None,
    ) -> Issuer:
        """A self-signed root (ROOT_CA profile by default)."""
        nb, na = _window(not_before, not_after, spec(profile).default_days)
        cert = build_certificate(
            subject=subject,
            public_key=public_key,
            issuer=subject,
            issuer_public_key=public_key,
            signer=signer,
            serial=serial if serial is not None else random_serial(),
            not_before=nb,
            not_after=na,
            profile=profile,
            path_len=path_len,
        )
        return cls(cert, signer)

    def issue(
        self,
        *,
        subject: x509.Name,
        public_key: SM2PublicKey,
        profile: Profile | str,
        serial: int | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        subject_alt_names: Sequence[str] = (),
        crl_urls: Sequence[str] = (),
        extra_extensions: Iterable[ExtraExtension] = (),
        path_len: int | None = None,
        freshest_crl_urls: Sequence[str] = (),
    ) -> Certificate:
        """Issue a certificate under this CA. Validity defaults to now − 5 minutes for
        the profile's default lifetime, clipped to this CA's own notAfter.
        ``subject_alt_names`` must fit the profile (:func:`~mstcrypt.pki.profiles.check_alt_names`:
        a gateway or server certificate needs a DNS name or IP address, a device
        certificate carries none); a subjectAltName cannot come in ``extra_extensions``.
        PolicyError otherwise."""
        check_alt_names(profile, subject_alt_names)
        extra_extensions = tuple(extra_extensions)
        for ext in extra_extensions:
            if isinstance(ext, x509.Extension):
                oid = ext["extn_id"].dotted
            else:
                oid = ext[0] if isinstance(ext, tuple) and ext else None
            if oid == c.OID_SUBJECT_ALT_NAME:
                raise PolicyError(
                    "a subjectAltName is set with subject_alt_names, where the profile checks it"
                )
        nb, na = _window(not_before, not_after, spec(profile).default_days)
        if not_after is None:
            na = min(na, self.certificate.not_after)
        return build_certificate(
            subject=subject,
            public_key=public_key,
            issuer=self.certificate,
            issuer_public_key=self.certificate.public_key,
            signer=self.signer,
            serial=serial if serial is not None else random_serial(),
            not_before=nb,
            not_after=na,
            profile=profile,
            subject_alt_names=subject_alt_names,
            crl_urls=crl_urls,
            extra_extensions=extra_extensions,
            path_len=path_len,
            freshest_crl_urls=freshest_crl_urls,
        )

    def issue_from_csr(
        self,
        csr: CertificationRequest,
        *,
        profile: Profile | str,
        subject: x509.Name | None = None,
        subject_alt_names: Sequence[str] | None = None,
        serial: int | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        crl_urls: Sequence[str] = (),
        extra_extensions: Iterable[ExtraExtension] = (),
        path_len: int | None = None,
    ) -> Certificate:
        """Verify ``csr``'s self-signature (CertificateError("bad_signature")) and issue
        a certificate for its key; subject and SANs come from the request unless given
        (a CA normally decides them itself). Other arguments as in :meth:`issue`."""
        csr.verify()
        return self.issue(
            subject=subject if subject is not None else csr.subject,
            public_key=csr.public_key,
            profile=profile,
            serial=serial,
            not_before=not_before,
            not_after=not_after,
            subject_alt_names=(
                subject_alt_names if subject_alt_names is not None else csr.subject_alt_names
            ),
            crl_urls=crl_urls,
            extra_extensions=extra_extensions,
            path_len=path_len,
        )

    def crl(
        self,
        *,
        number: int,
        entries: Sequence[RevokedEntry] = (),
        this_update: datetime | None = None,
        next_update: datetime | None = None,
        days: int = 7,
        delta_base: int | None = None,
        freshest_crl_urls: Sequence[str] = (),
    ) -> CRL:
        """A CRL of this CA, valid ``days`` days from ``this_update`` (default now); a
        delta CRL on the complete CRL number ``delta_base`` when given."""
        tu = c.utc(this_update, "this_update") if this_update is not None else c.now()
        nu = next_update if next_update is not None else tu + timedelta(days=days)
        return build_crl(
            issuer=self.certificate,
            issuer_public_key=self.certificate.public_key,
            signer=self.signer,
            number=number,
            this_update=tu,
            next_update=nu,
            entries=entries,
            delta_base=delta_base,
            freshest_crl_urls=freshest_crl_urls,
        )
