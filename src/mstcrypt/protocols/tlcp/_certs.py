"""Peer certificate checks: path validation of the signing and encryption
certificates, alert mapping, host name matching."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from mstcrypt.errors import DecodeError, UnsupportedError
from mstcrypt.pki import Certificate, CertificateError, match_hostname, validate_path
from mstcrypt.protocols.tlcp.constants import AlertDescription
from mstcrypt.protocols.tlcp.context import TLCPContext
from mstcrypt.protocols.tlcp.errors import TLCPError

__all__ = ["hostname_matches", "parse_chain", "validate_peer"]

_ALERTS = {
    "expired": AlertDescription.CERTIFICATE_EXPIRED,
    "not_yet_valid": AlertDescription.CERTIFICATE_EXPIRED,
    "revoked": AlertDescription.CERTIFICATE_REVOKED,
    "unknown_issuer": AlertDescription.UNKNOWN_CA,
    "name_chain": AlertDescription.UNKNOWN_CA,
    "key_usage": AlertDescription.UNSUPPORTED_CERTIFICATE,
    "extended_key_usage": AlertDescription.UNSUPPORTED_CERTIFICATE,
    "crl_invalid": AlertDescription.CERTIFICATE_UNKNOWN,
    "crl_expired": AlertDescription.CERTIFICATE_UNKNOWN,
    "crl_missing": AlertDescription.CERTIFICATE_UNKNOWN,
}

#: Key usages acceptable for the encryption certificate (SM2 encryption in ECC
#: suites, SM2 key exchange in ECDHE suites).
ENC_USAGES = frozenset({"key_encipherment", "key_agreement"})


def parse_chain(ders: Sequence[bytes]) -> tuple[Certificate, ...]:
    """Parse the peer's certificate list. A certificate that is not an SM2 certificate
    signed with SM2-with-SM3 (an RSA or ECDSA certificate, say) is ``unsupported_certificate``;
    one that does not parse is ``bad_certificate``."""
    out = []
    for i, der in enumerate(ders):
        try:
            out.append(Certificate.from_der(der))
        except UnsupportedError as exc:
            raise TLCPError(
                AlertDescription.UNSUPPORTED_CERTIFICATE,
                f"certificate {i} is not an SM2 certificate: {exc}",
            ) from None
        except DecodeError as exc:
            raise TLCPError(
                AlertDescription.BAD_CERTIFICATE, f"certificate {i} is malformed: {exc}"
            ) from None
    return tuple(out)


def _validate(
    ctx: TLCPContext,
    leaf: Certificate,
    intermediates: Sequence[Certificate],
    at: datetime,
    key_usage: frozenset[str],
    eku: str,
    what: str,
) -> None:
    validate = validate_path if ctx.validation_cache is None else ctx.validation_cache.validate
    try:
        validate(
            leaf,
            anchors=ctx.trust_anchors,
            intermediates=(*intermediates, *ctx.intermediates),
            crls=ctx.crls,
            at=at,
            require_revocation_check=ctx.require_crl,
            key_usage=key_usage,
            extended_key_usage=eku,
        )
    except CertificateError as exc:
        alert = _ALERTS.get(exc.reason, AlertDescription.BAD_CERTIFICATE)
        raise TLCPError(alert, f"{what}: {exc}") from None


def validate_peer(
    ctx: TLCPContext,
    certs: tuple[Certificate, ...],
    *,
    at: datetime,
    eku: str,
    need_enc: bool,
    who: str,
) -> None:
    """Validate certs[0] as a signing certificate and, when ``need_enc`` (or when
    certs[1] is an end-entity certificate), certs[1] as an encryption certificate."""
    if need_enc and len(certs) < 2:
        raise TLCPError(
            AlertDescription.BAD_CERTIFICATE,
            f"{who} sent {len(certs)} certificate(s); TLCP needs the signing and the "
            "encryption certificate",
        )
    sign = certs[0]
    enc = certs[1] if len(certs) > 1 and (need_enc or not certs[1].is_ca) else None
    rest = certs[2:] if enc is not None else certs[1:]
    _validate(
        ctx, sign, rest, at, frozenset({"digital_signature"}), eku, f"{who} signing certificate"
    )
    if enc is not None:
        _validate(ctx, enc, rest, at, frozenset(), eku, f"{who} encryption certificate")
        if not enc.key_usage & ENC_USAGES:
            raise TLCPError(
                AlertDescription.UNSUPPORTED_CERTIFICATE,
                f"{who} encryption certificate has neither keyEncipherment nor keyAgreement",
            )


def hostname_matches(cert: Certificate, host: str, *, allow_common_name: bool = False) -> bool:
    """RFC 6125 (:func:`mstcrypt.pki.match_hostname`): dNSName SANs (one leftmost
    wildcard label), iPAddress SANs for an IP literal; the subject CN only with
    ``allow_common_name`` and only when the certificate has no subjectAltName."""
    return match_hostname(cert, host, allow_common_name=allow_common_name)
