"""The distribution channel hosted on the platform (server side): the platform's issuing
CA acts as the channel CA, issuing APP_DEVELOPER certificates (digitalSignature,
codeSigning) from developers' CSRs; the channel's directory is the platform's
certificate table (profile ``app_developer``); revocation and CRLs are the platform's;
every registration and review is one KMC unit with its record in the audit chain.

    channel = PlatformChannel(kmc, name="gov-store")
    cert = channel.register_developer(csr, owner="notes-ltd", actor="officer-alice")
    rev, layer = channel.countersign("dev.apk", "pub.apk", signer=..., certificates=[...],
                                     actor="officer-alice")

The channel's own App-signing key is registered the same way (owner ``channel:<name>``,
:meth:`PlatformChannel.register_signer`) and kept wherever the operator keeps signing keys
(a token, the SS-CC); its key fingerprint is what terminals' policies designate.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from mstcrypt.apps.appsign.format import ChannelLayer
from mstcrypt.apps.appsign.signer import Review, countersign, review
from mstcrypt.apps.appsign.verify import key_fingerprint
from mstcrypt.errors import MstCryptError, PolicyError
from mstcrypt.kmc.models import IssuedCertificate
from mstcrypt.kmc.service import Kmc
from mstcrypt.pki import CRL, Certificate, CertificationRequest, Profile, Signer

__all__ = ["PlatformChannel"]

_OWNER_MAX = 100


class PlatformChannel:
    """A channel whose CA is the platform's issuing CA."""

    def __init__(self, kmc: Kmc, *, name: str | None = None) -> None:
        """``name`` defaults to the organisation of the platform's issuing CA."""
        if name is None:
            org = kmc.chain()[0].subject.native.get("organization_name")
            name = org if isinstance(org, str) else "platform"
        if not name or len(name) > 64:
            raise PolicyError("channel name: 1 to 64 characters")
        self.kmc = kmc
        self.name = name

    @property
    def ca_certificate(self) -> Certificate:
        """The channel CA: the platform's issuing CA (the policy's ``ca_file``)."""
        return self.kmc.chain()[0]

    def crl(self) -> CRL:
        return CRL.from_der(self.kmc.crl("issuing"))

    def _register(
        self, csr: CertificationRequest, *, owner: str, actor: str, action: str
    ) -> Certificate:
        if not isinstance(csr, CertificationRequest):
            raise PolicyError("csr must be a CertificationRequest")
        if not owner or len(owner) > _OWNER_MAX:
            raise PolicyError(f"owner: 1 to {_OWNER_MAX} characters")
        csr.verify()
        cn = csr.subject.native.get("common_name")
        if not isinstance(cn, str) or not cn:
            raise PolicyError("the request's subject must hold exactly one CN")
        subject = {"CN": cn, "O": self.name}
        with self.kmc.ctx.unit(actor) as u:
            cert = self.kmc.ca.issue(
                u,
                public_key=csr.public_key,
                subject=subject,
                profile=Profile.APP_DEVELOPER,
                owner=owner,
                usage="sign",
                key_id=None,
            )
            u.audit(
                action,
                f"cert:{cert.serial:x}",
                channel=self.name,
                subject=cert.subject_str,
                key_fingerprint=key_fingerprint(cert),
            )
        return cert

    def register_developer(
        self, csr: CertificationRequest, *, owner: str, actor: str
    ) -> Certificate:
        """Issue a developer's code-signing certificate (its CSR's signature checked)."""
        if owner.startswith("channel:"):
            raise PolicyError("developer owners may not start with 'channel:'")
        return self._register(csr, owner=owner, actor=actor, action="appsign.developer.register")

    def register_signer(self, csr: CertificationRequest, *, actor: str) -> Certificate:
        """Issue the channel's own App-signing certificate."""
        return self._register(
            csr, owner=f"channel:{self.name}", actor=actor, action="appsign.channel.signer"
        )

    def developers(self) -> list[dict[str, Any]]:
        """The channel's directory: every developer certificate, newest first."""
        with self.kmc.ctx.read() as s:
            rows = s.scalars(
                select(IssuedCertificate)
                .where(IssuedCertificate.profile == Profile.APP_DEVELOPER.value)
                .order_by(IssuedCertificate.issued_at.desc())
            ).all()
            return [
                {
                    "serial": r.serial,
                    "subject": r.subject,
                    "owner": r.owner,
                    "status": r.status,
                    "not_after": r.not_after.isoformat(),
                }
                for r in rows
                if not (r.owner or "").startswith("channel:")
            ]

    def _audit(self, actor: str, action: str, target: str, **details: Any) -> None:
        with self.kmc.ctx.unit(actor) as u:
            u.audit(action, target, channel=self.name, **details)

    def review(self, apk: str | os.PathLike[str], *, actor: str) -> Review:
        """Review a developer-signed package against the platform CA and its current
        CRL; the outcome (passed, or the refusal's code) is an audit record."""
        try:
            rev = review(apk, channel_ca=self.ca_certificate, crls=[self.crl()])
        except MstCryptError as exc:
            self._audit(
                actor, "appsign.review", "app:-", result="refused", reason=getattr(exc, "code", "")
            )
            raise
        self._audit(actor, "appsign.review", _target(rev), result="passed", **_details(rev))
        return rev

    def countersign(
        self,
        src: str | os.PathLike[str],
        dst: str | os.PathLike[str],
        *,
        signer: Signer,
        certificates: Sequence[Certificate],
        actor: str,
    ) -> tuple[Review, ChannelLayer]:
        """Review and countersign ``src`` into ``dst`` (audited)."""
        try:
            rev, layer = countersign(
                src,
                dst,
                signer=signer,
                certificates=certificates,
                channel_name=self.name,
                channel_ca=self.ca_certificate,
                crls=[self.crl()],
            )
        except MstCryptError as exc:
            self._audit(
                actor, "appsign.review", "app:-", result="refused", reason=getattr(exc, "code", "")
            )
            raise
        self._audit(
            actor,
            "appsign.countersign",
            _target(rev),
            signer_key=key_fingerprint(layer.certificate),
            **_details(rev),
        )
        return rev, layer


def _target(rev: Review) -> str:
    return f"app:{rev.info.manifest.package}"


def _details(rev: Review) -> dict[str, Any]:
    """The review's summary for the audit record (the audit log refuses field names
    that look like secrets, "code" among them: the version is "version")."""
    s = rev.summary()
    s["version"] = s.pop("version_code")
    return s
