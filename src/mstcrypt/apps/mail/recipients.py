"""Recipient certificates from the KMC directory, validated and cached.

An address is the directory owner name (terminals are enrolled with their e-mail
address as owner and subject email). A certificate is used only when it validates to
the client's trust anchors with the platform's CRLs (or OCSP), allows key
encipherment, and names the address in its subjectAltName. Any failure is a
:class:`RecipientError` before anything is sent.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from mstcrypt.apps.mail.errors import RecipientError
from mstcrypt.apps.mail.message import Check, Validator, certificate_addresses
from mstcrypt.apps.mail.mime import check_address
from mstcrypt.errors import PolicyError
from mstcrypt.pki import Certificate, CertificateError, validate_path

__all__ = ["Directory", "platform_validator"]


class Directory:
    """``certificates(addresses)``: each address's current encryption certificate,
    validated; results are cached for ``ttl`` seconds (a revocation is seen at most
    that late, and never later than the CRL's own freshness)."""

    def __init__(self, client: Any, *, ttl: float = 300.0) -> None:
        self._client = client
        self._ttl = ttl
        self._cache: dict[str, tuple[Certificate, float]] = {}

    def certificates(self, addresses: Sequence[str]) -> list[Certificate]:
        from mstcrypt.client import ServiceError

        wanted: list[str] = []
        for a in addresses:
            try:
                wanted.append(check_address(a).lower())
            except PolicyError:
                raise RecipientError(str(a), "not an e-mail address") from None
        now = time.monotonic()
        out: dict[str, Certificate] = {}
        for a in dict.fromkeys(wanted):
            hit = self._cache.get(a)
            if hit is not None and hit[1] > now:
                out[a] = hit[0]
                continue
            try:
                cert = self._client.encryption_certificate(a)
            except ServiceError as exc:
                if exc.status == 404:
                    raise RecipientError(
                        a, f"no encryption certificate in the directory ({exc.detail})"
                    ) from None
                raise
            try:
                self._client.validate(cert, key_usage={"key_encipherment"})
            except CertificateError as exc:
                raise RecipientError(a, f"certificate not usable: {exc}") from None
            if a not in certificate_addresses(cert):
                raise RecipientError(a, "the directory's certificate does not name this address")
            self._cache[a] = (cert, now + self._ttl)
            out[a] = cert
        return [out[a] for a in dict.fromkeys(wanted)]

    def forget(self) -> None:
        self._cache.clear()


def platform_validator(client: Any) -> Validator:
    """Signer checks against the platform: the chain to the client's anchors (through
    the published intermediates), then revocation with the platform's CRLs (or OCSP,
    as the client is configured)."""

    def validate(cert: Certificate) -> list[Check]:
        try:
            anchors = client._anchors()
            intermediates = client.chain()[:-1]
            path = validate_path(
                cert,
                anchors=anchors,
                intermediates=intermediates,
                crls=[],
                require_revocation_check=False,
                key_usage={"digital_signature"},
            )
        except CertificateError as exc:
            return [
                Check("certificate", False, str(exc)),
                Check("revocation", False, "not checked: no valid chain"),
            ]
        chain = Check("certificate", True, f"chain to {path[-1].subject_str} valid")
        try:
            client.validate(cert, key_usage={"digital_signature"})
        except CertificateError as exc:
            return [chain, Check("revocation", False, str(exc))]
        how = "OCSP" if client.revocation == "ocsp" else "the platform's CRLs"
        return [chain, Check("revocation", True, f"not revoked ({how})")]

    return validate
