"""Verification of one SES_Signature, in the order of the GB/T 38540 verifier flow
(FACTS.md §6 "Verifier checks"), independent of the document container.

Each check yields a :class:`Check` (code, ok, message); the container (PDF, OFD) adds
its own (byte range, document digest, changes after stamping). Codes, in order:

``ses_format`` → ``signature`` → ``stamper_listed`` → ``seal_signature`` →
``maker_certificate`` → ``seal_validity`` → ``stamper_certificate`` → ``data_hash``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mstcrypt.errors import MstCryptError, VerificationError
from mstcrypt.formats import ses
from mstcrypt.pki import Certificate
from mstcrypt.pki.validate import AnyCrl, validate_path

__all__ = ["Check", "SealReport", "Trust", "verify_ses_signature"]


@dataclass(frozen=True)
class Check:
    code: str
    ok: bool
    message: str


@dataclass
class Trust:
    """What a verifier trusts: root anchors, intermediates and CRLs (all optional but
    ``anchors``). ``require_revocation_check``: a missing CRL fails the chain check."""

    anchors: Sequence[Certificate]
    intermediates: Sequence[Certificate] = ()
    crls: Sequence[AnyCrl] = ()
    require_revocation_check: bool = True


@dataclass
class SealReport:
    """The result for one seal on a document."""

    location: str  #: field name (PDF) or Signature.xml path (OFD)
    checks: list[Check] = field(default_factory=list)
    es_id: str | None = None
    seal_name: str | None = None
    stamper: str | None = None
    signed_at: datetime | None = None
    data_hash: str | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def add(self, code: str, ok: bool, message: str) -> bool:
        self.checks.append(Check(code, ok, message))
        return ok

    def to_json(self) -> dict[str, object]:
        return {
            "location": self.location,
            "valid": self.ok,
            "es_id": self.es_id,
            "seal_name": self.seal_name,
            "stamper": self.stamper,
            "signed_at": self.signed_at.isoformat() if self.signed_at else None,
            "data_hash": self.data_hash,
            "checks": [{"code": c.code, "ok": c.ok, "message": c.message} for c in self.checks],
            **self.extra,
        }


def _chain(
    report: SealReport, code: str, cert: Certificate, trust: Trust, at: datetime, what: str
) -> None:
    try:
        validate_path(
            cert,
            anchors=trust.anchors,
            intermediates=trust.intermediates,
            crls=trust.crls,
            at=at,
            require_revocation_check=trust.require_revocation_check,
            key_usage={"digital_signature"},
        )
    except MstCryptError as exc:
        reason = getattr(exc, "reason", None)
        report.add(code, False, f"{what} certificate: {reason + ': ' if reason else ''}{exc}")
        return
    report.add(code, True, f"{what} certificate chains to a trusted root, not revoked")


def verify_ses_signature(
    der: bytes,
    report: SealReport,
    *,
    data_hash: bytes,
    trust: Trust,
    now: datetime | None = None,
    tolerant: bool = False,
) -> ses.SealSignature | None:
    """Run the SES checks on ``der`` into ``report``; ``data_hash`` is the digest the
    container computed over what the seal protects. Returns the parsed signature (None
    when it could not be parsed)."""
    now = now or datetime.now(UTC)
    try:
        sig = ses.parse_signature(der)
        signer = Certificate.from_der(sig.signer_cert)
        maker = Certificate.from_der(sig.seal.maker_cert)
    except MstCryptError as exc:
        report.add("ses_format", False, f"not a valid GB/T 38540 SES_Signature: {exc}")
        return None
    info = sig.seal.info
    report.es_id, report.seal_name = info.es_id, info.name
    report.stamper = signer.subject_str
    report.signed_at = sig.time_info
    report.data_hash = sig.data_hash.hex()
    report.add("ses_format", True, f"SES_Signature v{sig.version}, seal v{sig.seal.version}")
    at = sig.time_info or now
    # 1. the stamper's signature over TBS_Sign
    try:
        sig.verify(signer.public_key, tolerant=tolerant)
        report.add("signature", True, "stamper's signature over TBS_Sign verifies")
    except VerificationError as exc:
        report.add("signature", False, str(exc))
    # 2. the stamper is listed in the seal
    try:
        listed = info.lists_certificate(sig.signer_cert)
    except MstCryptError as exc:
        listed = False
        report.add("stamper_listed", False, str(exc))
    else:
        report.add(
            "stamper_listed",
            listed,
            "stamper certificate is in the seal's certList"
            if listed
            else "stamper is not authorised for this seal (certificate not in certList)",
        )
    # 3. the seal maker's signature
    try:
        sig.seal.verify(maker.public_key, tolerant=tolerant)
        report.add("seal_signature", True, "seal maker's signature over SES_SealInfo verifies")
    except VerificationError as exc:
        report.add("seal_signature", False, f"seal is corrupted or forged: {exc}")
    # 4. the maker's certificate
    _chain(report, "maker_certificate", maker, trust, at, "seal maker")
    # 5. the seal's validity at the time of stamping
    in_validity = sig.seal.valid_at(at)
    report.add(
        "seal_validity",
        in_validity,
        f"seal valid {info.valid_start:%Y-%m-%d} .. {info.valid_end:%Y-%m-%d}"
        + ("" if in_validity else f"; stamped at {at:%Y-%m-%d %H:%M}Z outside it (expired seal)"),
    )
    # 6. the stamper's certificate at the time of stamping
    _chain(report, "stamper_certificate", signer, trust, at, "stamper")
    # 9. a timestamp over the signature value is carried but not checked here: say so
    if sig.time_stamp is not None:
        report.extra["time_stamp"] = "present, not verified (RFC 3161 not supported yet)"
    # 7. the document digest
    match = data_hash == sig.data_hash
    report.add(
        "data_hash",
        match,
        "document digest matches dataHash"
        if match
        else "the document was changed after stamping (digest differs from dataHash)",
    )
    return sig
