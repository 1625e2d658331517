"""The ASU's certificate verdicts for the SM suite: path validation against the
platform CA and its CRL (mstcrypt.pki), mapped onto WAI verification results."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from mstcrypt.errors import DecodeError
from mstcrypt.pki import CRL, Certificate, CertificateError, validate_path
from mstcrypt.protocols.wai.constants import VerifyResult

__all__ = ["PlatformValidator", "verify_result_for"]

_RESULTS = {
    "unknown_issuer": VerifyResult.ISSUER_UNKNOWN,
    "name_chain": VerifyResult.ISSUER_UNKNOWN,
    "bad_signature": VerifyResult.SIGNATURE_INVALID,
    "expired": VerifyResult.TIME_INVALID,
    "not_yet_valid": VerifyResult.TIME_INVALID,
    "revoked": VerifyResult.REVOKED,
    "key_usage": VerifyResult.BAD_USAGE,
    "extended_key_usage": VerifyResult.BAD_USAGE,
    "crl_invalid": VerifyResult.REVOCATION_UNKNOWN,
    "crl_expired": VerifyResult.REVOCATION_UNKNOWN,
    "crl_missing": VerifyResult.REVOCATION_UNKNOWN,
}


def verify_result_for(reason: str) -> VerifyResult:
    """The WAI result code for a :class:`CertificateError` reason."""
    return _RESULTS.get(reason, VerifyResult.UNKNOWN_ERROR)


class PlatformValidator:
    """``anchors``: the platform root(s); ``crls``: called at each verdict for the
    current CRLs (so a revocation at the KMC applies to the next association)."""

    def __init__(
        self,
        anchors: Sequence[Certificate],
        crls: Callable[[], Sequence[CRL]],
        *,
        intermediates: Sequence[Certificate] = (),
    ) -> None:
        self.anchors = list(anchors)
        self.intermediates = list(intermediates)
        self.crls = crls

    def __call__(self, der: bytes, at: datetime) -> VerifyResult:
        try:
            cert = Certificate.from_der(der)
            validate_path(
                cert,
                anchors=self.anchors,
                intermediates=self.intermediates,
                crls=list(self.crls()),
                at=at,
                key_usage={"digital_signature"},
            )
        except CertificateError as e:
            return verify_result_for(e.reason)
        except DecodeError:
            return VerifyResult.UNKNOWN_ERROR
        return VerifyResult.VALID
