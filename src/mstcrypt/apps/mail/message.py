"""Sign-then-envelope mail (docs/mail.md): compose and open, in constant memory.

Wire form (RFC 8551 S/MIME with GM/T 0010 CMS)::

    From/To/Cc/Date/Message-ID       outer header fields, as the SMTP server needs them
    Subject: ...                     placeholder: the real one is protected (RFC 7508)
    Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"
    Content-Transfer-Encoding: base64

    base64( EnvelopedData[ KTRI per recipient and the sender, SM4-CBC ](
              SignedData[ SM2 signature by the sender, attached ](
                 the protected message: its own From/To/Cc/Subject/Date/Message-ID,
                 multipart/mixed: text/plain, attachments (base64) )))

Composing reads the attachments twice (SM3 first, then SM4 into the output), never
whole; opening streams base64 → SM4 → SM3 → MIME → attachment files, and keeps the
attachment files only when every check has passed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from mstcrypt.apps.mail.errors import MailFormatError, MailVerificationError
from mstcrypt.apps.mail.mime import (
    Base64Reader,
    Base64Writer,
    InnerMessage,
    ParsedPart,
    check_address,
    header_value,
    parse_headers,
    parse_inner,
)
from mstcrypt.crypto.sm3 import SM3
from mstcrypt.errors import DecodeError, DecryptionError, PolicyError, VerificationError
from mstcrypt.formats import cms
from mstcrypt.module import KeyUsage
from mstcrypt.pki import CRL, Certificate, CertificateError, validate_path

__all__ = [
    "SUBJECT_PLACEHOLDER",
    "Check",
    "MailIdentity",
    "OpenedMail",
    "certificate_addresses",
    "compose",
    "open_message",
    "trust_validator",
]

SUBJECT_PLACEHOLDER = "..."  # RFC 7508 §3.1 / RFC 8551 §3.1: the real Subject is inside
SMIME_TYPE = "application/pkcs7-mime"


def certificate_addresses(cert: Certificate) -> list[str]:
    """The e-mail addresses a certificate is issued for (subjectAltName rfc822Name)."""
    out = []
    for kind, value in cert.subject_alt_name_entries:
        if kind == "email":
            with contextlib.suppress(PolicyError):
                out.append(check_address(value).lower())
    return out


@dataclass(frozen=True)
class MailIdentity:
    """A user's mail keys: signing certificate and ``sign_digest`` (e → DER), own
    encryption certificate and ``decrypt`` (DER SM2Cipher → bytes). The address is
    the one the signing certificate names."""

    address: str
    sign_certificate: Certificate
    sign_digest: Callable[[bytes], bytes] = field(repr=False)
    encryption_certificate: Certificate
    decrypt: Callable[[bytes], bytes] = field(repr=False)

    @classmethod
    def from_token(cls, token: Any, container: str = "main") -> MailIdentity:
        """The identity of a logged-in soft token's container (enrolled: both
        certificates stored)."""
        sign_h = token.key(container, KeyUsage.SIGN)
        enc_h = token.key(container, KeyUsage.ENCRYPT)
        sign_der = token.get_certificate(container, KeyUsage.SIGN)
        enc_der = token.get_certificate(container, KeyUsage.ENCRYPT)
        if sign_der is None or enc_der is None:
            raise PolicyError(f"container {container!r} has no certificates: enroll it first")
        sign_cert, enc_cert = Certificate.from_der(sign_der), Certificate.from_der(enc_der)
        addresses = certificate_addresses(sign_cert)
        if not addresses:
            raise PolicyError(
                "the signing certificate names no e-mail address (enroll with a subject "
                "email so that recipients can check the sender)"
            )
        return cls(
            addresses[0],
            sign_cert,
            lambda e: token.sign_digest(sign_h, e),
            enc_cert,
            lambda c: token.decrypt(enc_h, c),
        )


@dataclass(frozen=True)
class ComposedMail:
    message_id: str
    recipients: tuple[str, ...]
    size: int


def _outer_header(inner: InnerMessage) -> bytes:
    fields = [
        ("From", inner.sender),
        ("To", ", ".join(inner.to)),
        *([("Cc", ", ".join(inner.cc))] if inner.cc else []),
        ("Subject", SUBJECT_PLACEHOLDER),
        ("Date", header_value(inner.date)),
        ("Message-ID", header_value(inner.message_id)),
        ("MIME-Version", "1.0"),
        ("Content-Type", f'{SMIME_TYPE}; smime-type=enveloped-data; name="smime.p7m"'),
        ("Content-Transfer-Encoding", "base64"),
        ("Content-Disposition", 'attachment; filename="smime.p7m"'),
    ]
    return ("".join(f"{k}: {v}\r\n" for k, v in fields) + "\r\n").encode("ascii")


class _Counting:
    def __init__(self, out: BinaryIO) -> None:
        self.out, self.n = out, 0

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self.n += len(data)


def compose(
    out: BinaryIO,
    identity: MailIdentity,
    inner: InnerMessage,
    recipients: Sequence[Certificate],
) -> ComposedMail:
    """Write the S/MIME message for ``inner`` to ``out``: signed by ``identity``, then
    enveloped for every certificate in ``recipients`` (validated by the caller, e.g.
    :class:`~mstcrypt.apps.mail.recipients.Directory`) and for the sender's own
    encryption certificate, so that the sent copy stays readable."""
    if inner.sender != identity.address:
        raise PolicyError(
            f"From {inner.sender} is not the address of the signing certificate "
            f"({identity.address})"
        )
    if not recipients:
        raise PolicyError("no recipient certificates")
    length = inner.length()
    h = SM3()
    for chunk in inner.chunks():
        h.update(chunk)
    digest = h.digest()
    prefix, suffix = cms.signed_stream_parts(
        digest, length, identity.sign_certificate, identity.sign_digest
    )
    everyone = [*recipients, identity.encryption_certificate]
    header, enc = cms.envelope_header(everyone, len(prefix) + length + len(suffix))
    counting = _Counting(out)
    counting.write(_outer_header(inner))
    b64 = Base64Writer(counting)  # type: ignore[arg-type]
    b64.write(header)
    b64.write(enc.update(prefix))
    again = SM3()
    for chunk in inner.chunks():
        again.update(chunk)
        b64.write(enc.update(chunk))
    if again.digest() != digest:
        raise PolicyError("an attachment changed while the message was built; nothing sent")
    b64.write(enc.update(suffix))
    b64.write(enc.finalize())
    b64.close()
    return ComposedMail(inner.message_id, (*inner.to, *inner.cc), counting.n)


# --- opening ------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str  # envelope, signature, certificate, revocation, sender
    ok: bool
    detail: str


@dataclass
class OpenedMail:
    """What opening a message found. ``headers`` are the protected (inner) header
    fields; ``outer`` those the server saw. ``trusted`` only when every check passed."""

    outer: dict[str, str]
    headers: dict[str, str] = field(default_factory=dict)
    text: str = field(default="", repr=False)
    attachments: list[ParsedPart] = field(default_factory=list)
    saved: list[Path] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    signer: Certificate | None = None
    signing_time: datetime | None = None

    @property
    def trusted(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


Validator = Callable[[Certificate], list[Check]]
"""Checks a signer certificate: returns the ``certificate`` (chain to a trust anchor)
and ``revocation`` (CRL) checks."""


def trust_validator(
    anchors: Sequence[Certificate],
    *,
    intermediates: Sequence[Certificate] = (),
    crls: Sequence[CRL] = (),
) -> Validator:
    """A validator over given anchors, intermediates and CRLs (all verified as part of
    the path). Without CRLs the revocation check fails (it cannot be made)."""

    def validate(cert: Certificate) -> list[Check]:
        now = datetime.now(UTC)
        try:
            path = validate_path(
                cert,
                anchors=anchors,
                intermediates=intermediates,
                crls=[],
                at=now,
                require_revocation_check=False,
                key_usage={"digital_signature"},
            )
            chain = Check("certificate", True, f"chain to {path[-1].subject_str} valid")
        except CertificateError as exc:
            return [
                Check("certificate", False, str(exc)),
                Check("revocation", False, "not checked: no valid chain"),
            ]
        if not crls:
            return [chain, Check("revocation", False, "no CRL available")]
        try:
            validate_path(
                cert,
                anchors=anchors,
                intermediates=intermediates,
                crls=crls,
                at=now,
                key_usage={"digital_signature"},
            )
        except CertificateError as exc:
            return [chain, Check("revocation", False, str(exc))]
        numbers = ", ".join(f"#{c.number}" for c in crls if c.number is not None)
        return [chain, Check("revocation", True, f"not revoked (CRL {numbers})")]

    return validate


def _headers_of(msg: Any) -> dict[str, str]:
    return {
        k: str(msg[k])
        for k in ("From", "To", "Cc", "Subject", "Date", "Message-ID")
        if msg[k] is not None
    }


def _address_of(value: str | None) -> str | None:
    import email.utils

    if not value:
        return None
    addresses = email.utils.getaddresses([value])
    if len(addresses) != 1:
        return None
    try:
        return check_address(addresses[0][1]).lower()
    except PolicyError:
        return None


class _PartialFiles:
    """Attachment files written as hidden partial files, kept only on success."""

    def __init__(self, directory: Path | None) -> None:
        self.dir = directory
        self.partial: list[tuple[Path, str, Any]] = []

    def open(self, name: str) -> Any:
        if self.dir is None:
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{secrets.token_hex(8)}.partial"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        f = os.fdopen(fd, "wb")
        self.partial.append((tmp, name, f))
        return f

    def commit(self) -> list[Path]:
        assert self.dir is not None or not self.partial
        out = []
        for tmp, name, f in self.partial:
            f.close()
            assert self.dir is not None
            target = self.dir / name
            stem, dot, ext = name.partition(".")
            i = 1
            while target.exists():
                target = self.dir / f"{stem} ({i}){dot}{ext}"
                i += 1
            os.replace(tmp, target)
            out.append(target)
        self.partial.clear()
        return out

    def discard(self) -> None:
        for tmp, _, f in self.partial:
            f.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
        self.partial.clear()


def read_outer(src: BinaryIO) -> Any:
    """The outer header block of a message (the stream is left at the body)."""
    outer = parse_headers(lambda: src.readline(8 * 1024 + 2), "the message")
    if outer.get_content_type() != SMIME_TYPE or outer.get_param("smime-type") != (
        "enveloped-data"
    ):
        raise MailFormatError(
            f"not an encrypted message (Content-Type {outer.get_content_type()}); "
            "expected application/pkcs7-mime; smime-type=enveloped-data"
        )
    if str(outer.get("Content-Transfer-Encoding", "")).strip().lower() != "base64":
        raise MailFormatError("the S/MIME body must be base64")
    return outer


def open_message(
    src: BinaryIO,
    identity: MailIdentity,
    *,
    validator: Validator,
    save_dir: Path | None = None,
    strict: bool = True,
    headers_only: bool = False,
) -> OpenedMail:
    """Open a message read from ``src``: decrypt for ``identity``, verify the
    signature, validate the signer (``validator``), check that the signer is the From
    address (inner and outer). Attachments go to ``save_dir`` only when every check
    passed. With ``strict`` (default) a failed check raises MailVerificationError
    carrying the report; otherwise the report says which checks failed.
    ``headers_only`` stops after the protected header fields (for listing: nothing
    verified, ``trusted`` is False)."""
    outer = read_outer(src)
    report = OpenedMail(_headers_of(outer))
    try:
        es = cms.EnvelopeStream(Base64Reader(src).read)
    except DecodeError as exc:
        raise MailFormatError(f"the envelope is malformed: {exc}") from None
    if cms.RecipientRef.of(identity.encryption_certificate) not in es.recipient_refs:
        raise DecryptionError(f"{identity.address} is not a recipient of this message")
    plain = es.open(identity.encryption_certificate, identity.decrypt)
    report.checks.append(
        Check("envelope", True, f"opened for {identity.encryption_certificate.subject_str}")
    )
    ss = cms.SignedStream(plain.read)
    if headers_only:
        from mstcrypt.apps.mail.mime import _Lines

        top = parse_headers(_Lines(ss.read).line, "the protected message")
        report.headers = _headers_of(top)
        report.checks.append(Check("signature", False, "not verified (headers only)"))
        return report
    files = _PartialFiles(save_dir)
    try:
        parsed = parse_inner(ss.read, files.open if save_dir is not None else None)
        report.headers, report.text, report.attachments = (
            parsed.headers,
            parsed.text,
            parsed.attachments,
        )
        sd = ss.finish()
        try:
            signer = sd.verify(content_digest=ss.content_digest)[0]
            report.signer = Certificate.from_der(signer.certificate_der)
            report.signing_time = signer.signing_time
            report.checks.append(
                Check("signature", True, f"SM2 signature by {report.signer.subject_str}")
            )
        except VerificationError as exc:
            report.checks.append(Check("signature", False, str(exc)))
        if report.signer is not None:
            report.checks.extend(validator(report.signer))
            report.checks.append(_sender_check(report))
            report.checks.append(_addressed_check(report, identity.address))
        if report.trusted and save_dir is not None:
            report.saved = files.commit()
    except MailFormatError:
        raise
    except (DecryptionError, DecodeError) as exc:
        raise MailFormatError(f"the message content is damaged: {exc}") from None
    finally:
        files.discard()
    if strict and not report.trusted:
        first = report.failed()[0]
        raise MailVerificationError(f"{first.name} check failed: {first.detail}", report)
    return report


def _sender_check(report: OpenedMail) -> Check:
    assert report.signer is not None
    names = certificate_addresses(report.signer)
    inner_from = _address_of(report.headers.get("From"))
    outer_from = _address_of(report.outer.get("From"))
    if inner_from is None:
        return Check("sender", False, "the protected From is not one address")
    if inner_from not in names:
        shown = ", ".join(names) or "no address"
        return Check("sender", False, f"From {inner_from} but the signer certificate names {shown}")
    if outer_from != inner_from:
        return Check(
            "sender", False, f"outer From {outer_from} differs from the signed From {inner_from}"
        )
    return Check("sender", True, f"signer is {inner_from}, the From address")


def _addressed_check(report: OpenedMail, me: str) -> Check:
    """The reader is among the protected To/Cc (or is the sender): a signed message
    re-enveloped by one of its recipients for someone else (surreptitious forwarding)
    is flagged."""
    import email.utils

    me = me.lower()
    fields = [report.headers.get("To", ""), report.headers.get("Cc", "")]
    listed = {a.lower() for _, a in email.utils.getaddresses([f for f in fields if f])}
    if me in listed:
        return Check("addressed", True, f"{me} is a protected To/Cc recipient")
    if _address_of(report.headers.get("From")) == me:
        return Check("addressed", True, f"{me} sent it (sent copy)")
    return Check(
        "addressed",
        False,
        f"{me} is not among the signed To/Cc: a copy re-encrypted by someone else",
    )
