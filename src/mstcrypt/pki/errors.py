"""Errors of the PKI layer.

:class:`CertificateError` is a :class:`mstcrypt.errors.VerificationError`: a certificate,
CSR, CRL or certification path that parsed correctly but does not pass a check. Parsing
failures (malformed DER, trailing bytes, non-canonical encodings) are reported with
:class:`mstcrypt.errors.DecodeError` instead, as everywhere else in mstcrypt.
"""

from __future__ import annotations

from mstcrypt.errors import VerificationError

__all__ = ["REASONS", "CertificateError"]

#: Every value that :attr:`CertificateError.reason` can take.
REASONS: tuple[str, ...] = (
    "expired",
    "not_yet_valid",
    "bad_signature",
    "unknown_issuer",
    "not_ca",
    "path_length",
    "revoked",
    "key_usage",
    "extended_key_usage",
    "name_chain",
    "crl_invalid",
    "crl_expired",
    "crl_missing",
    "unsupported_critical_extension",
    "malformed",
)


class CertificateError(VerificationError):
    """A certificate, CSR, CRL or path failed a check.

    ``reason`` is one of :data:`REASONS` (machine-readable, stable); ``certificate`` is the
    subject (RFC 4514-like string, see :func:`mstcrypt.pki.names.name_to_str`) of the
    certificate or CSR concerned, or the issuer of the CRL concerned, or None.
    """

    def __init__(self, reason: str, message: str | None = None, *, certificate: str | None = None):
        if reason not in REASONS:
            raise ValueError(f"unknown CertificateError reason {reason!r}")  # programming error
        self.reason = reason
        self.certificate = certificate
        text = message or reason.replace("_", " ")
        if certificate is not None:
            text = f"{text} [{certificate}]"
        super().__init__(text)

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (self.reason, self.args[0], self.certificate))


def _rebuild(reason: str, text: str, certificate: str | None) -> CertificateError:
    err = CertificateError(reason)
    err.args = (text,)
    err.certificate = certificate
    return err
