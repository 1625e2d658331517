"""Reading a package's layers and the terminal's double verification (guide 6.2.2).

:func:`inspect` parses a package (layout, manifest, both layers) and computes its content
digest in one streaming pass. :func:`check_developer` is what the channel (at review) and
the terminal (at install and launch) both check about the developer layer;
:func:`verify_package` adds, for the terminal, the channel layer and the
:class:`Policy`. The checks run in the order of docs/app-signing.md §5 and each failure
raises :class:`AppVerificationError` or :class:`AppPolicyError` with its code (or
:class:`~mstcrypt.pki.CertificateError`'s reason inside the message).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mstcrypt.apps.appsign.errors import AppPolicyError, AppVerificationError
from mstcrypt.apps.appsign.format import (
    CHANNEL_PAIR_ID,
    DEVELOPER_PAIR_ID,
    ChannelLayer,
    DeveloperLayer,
    sm3,
)
from mstcrypt.apps.appsign.manifest import Manifest, read_manifest
from mstcrypt.apps.appsign.package import (
    APK_SIGNATURE_IDS,
    ApkLayout,
    content_digest,
    pair_digest,
    read_layout,
    read_pair_value,
)
from mstcrypt.errors import DecodeError, PolicyError, VerificationError
from mstcrypt.pki import CRL, Certificate, CertificateError, load_certificates, validate_path

__all__ = [
    "Channel",
    "PackageInfo",
    "Policy",
    "Verdict",
    "check_channel",
    "check_developer",
    "inspect",
    "key_fingerprint",
    "verify_package",
]

#: what a code-signing certificate must assert (pki.profiles APP_DEVELOPER)
CODE_SIGNING_KU = frozenset({"digital_signature"})
CODE_SIGNING_EKU = "code_signing"


def key_fingerprint(cert: Certificate) -> str:
    """SM3 of the certificate's uncompressed public key point, hex: how a policy names
    a channel's signing key or a developer (stable across certificate renewals)."""
    return cert.public_key.fingerprint().hex()


@dataclass(frozen=True)
class PackageInfo:
    """A parsed package: its layout, manifest, content digest and our layers."""

    path: str
    layout: ApkLayout
    manifest: Manifest
    content_digest: bytes
    developer: DeveloperLayer | None
    developer_value: bytes | None
    channel: ChannelLayer | None
    #: (pair ID, SM3 of its value) of the v2/v3/v3.1 pairs, in block order
    apk_signatures: tuple[tuple[int, bytes], ...]


def inspect(path: str | os.PathLike[str]) -> PackageInfo:
    """Parse the package at ``path`` (streaming; PackageFormatError / NotSignedError)."""
    with open(path, "rb") as f:
        layout = read_layout(f)
        manifest = read_manifest(f, layout)
        dev_pair, ch_pair = layout.pair(DEVELOPER_PAIR_ID), layout.pair(CHANNEL_PAIR_ID)
        dev_value = read_pair_value(f, dev_pair) if dev_pair else None
        ch_value = read_pair_value(f, ch_pair) if ch_pair else None
        digest = content_digest(f, layout)
        apk_sigs = tuple(
            (p.id, pair_digest(f, p)) for p in layout.pairs if p.id in APK_SIGNATURE_IDS
        )
    return PackageInfo(
        path=os.fspath(path),
        layout=layout,
        manifest=manifest,
        content_digest=digest,
        developer=DeveloperLayer.decode(dev_value) if dev_value is not None else None,
        developer_value=dev_value,
        channel=ChannelLayer.decode(ch_value) if ch_value is not None else None,
        apk_signatures=apk_sigs,
    )


def _chain(
    leaf: Certificate,
    certs: Sequence[Certificate],
    anchors: Sequence[Certificate],
    crls: Sequence[CRL],
    at: datetime,
    require_crl: bool,
) -> list[Certificate]:
    return validate_path(
        leaf,
        anchors=anchors,
        intermediates=certs,
        crls=crls,
        at=at,
        require_revocation_check=require_crl,
        key_usage=CODE_SIGNING_KU,
        extended_key_usage=CODE_SIGNING_EKU,
    )


def check_developer(
    info: PackageInfo,
    *,
    anchors: Sequence[Certificate],
    crls: Sequence[CRL] = (),
    at: datetime | None = None,
    require_crl: bool = True,
) -> list[Certificate]:
    """The developer layer: present, signed by its certificate over this package's
    content digest, package and version equal to the manifest's, certificate chaining
    (codeSigning, CRLs) to one of ``anchors``. Returns the certification path."""
    when = at or datetime.now(UTC)
    dev = info.developer
    if dev is None:
        raise AppVerificationError("developer-missing", "the package has no developer signature")
    leaf = dev.certificate
    if dev.signed.certificate_sm3 != sm3(leaf.der):
        raise AppVerificationError(
            "developer-signature", "the developer signed data names another certificate"
        )
    try:
        leaf.public_key.verify(dev.signature, dev.signed_bytes)
    except VerificationError:
        raise AppVerificationError(
            "developer-signature", "the developer's SM2 signature does not verify"
        ) from None
    if dev.signed.content_digest != info.content_digest:
        raise AppVerificationError(
            "digest-mismatch",
            "the package content differs from what the developer signed "
            "(an entry, the central directory or the end record was changed)",
        )
    if dev.signed.apk_signatures != info.apk_signatures:
        raise AppVerificationError(
            "apk-signature-mismatch",
            "the package's Android signature blocks (v2/v3) differ from those the "
            "developer signed over (changed, removed or added)",
        )
    m = info.manifest
    if (m.package, m.version_code) != (dev.signed.package, dev.signed.version_code):
        raise AppVerificationError(
            "package-mismatch",
            f"the manifest says {m.package} {m.version_code}, the developer signed "
            f"{dev.signed.package} {dev.signed.version_code}",
        )
    try:
        return _chain(leaf, dev.certificates[1:], anchors, crls, when, require_crl)
    except CertificateError as exc:
        raise AppVerificationError(
            "developer-certificate", f"developer certificate refused ({exc.reason}): {exc}"
        ) from None


def check_channel(info: PackageInfo) -> ChannelLayer:
    """The channel layer's own consistency: present, its SM2 signature valid under its
    certificate, covering this content digest, this very developer pair and the same
    package and version. Who the channel is is the policy's business."""
    ch, dev = info.channel, info.developer
    if ch is None:
        raise AppVerificationError(
            "channel-missing", "the package is not countersigned by a distribution channel"
        )
    if dev is None or info.developer_value is None:
        raise AppVerificationError("developer-missing", "the package has no developer signature")
    if ch.signed.certificate_sm3 != sm3(ch.certificate.der):
        raise AppVerificationError(
            "channel-signature", "the channel signed data names another certificate"
        )
    try:
        ch.certificate.public_key.verify(ch.signature, ch.signed_bytes)
    except VerificationError:
        raise AppVerificationError(
            "channel-signature", "the channel's SM2 signature does not verify"
        ) from None
    if ch.signed.developer_layer_sm3 != sm3(info.developer_value):
        raise AppVerificationError(
            "channel-covers-other-developer",
            "the channel signature covers another developer signature "
            "(the developer layer was removed, replaced or changed)",
        )
    if ch.signed.content_digest != info.content_digest:
        raise AppVerificationError(
            "digest-mismatch", "the package content differs from what the channel signed"
        )
    if (ch.signed.package, ch.signed.version_code) != (dev.signed.package, dev.signed.version_code):
        raise AppVerificationError(
            "package-mismatch", "the channel and the developer signed different versions"
        )
    return ch


@dataclass(frozen=True)
class Channel:
    """A designated distribution channel: its CA (which issues developer certificates
    and the channel's own signing certificate) and the key fingerprints
    (:func:`key_fingerprint`) of the channel's App-signing keys."""

    name: str
    ca: Certificate
    signer_keys: frozenset[str]


@dataclass(frozen=True)
class Policy:
    """What a terminal accepts: apps published by one of ``channels``, optionally only
    from ``developers`` (key fingerprints), each package at least at its minimum
    version; ``require_crl`` demands a CRL of the channel CA."""

    channels: tuple[Channel, ...]
    developers: frozenset[str] | None = None
    min_versions: Mapping[str, int] = field(default_factory=dict)
    require_crl: bool = True

    def __post_init__(self) -> None:
        if not self.channels:
            raise PolicyError("a policy designates at least one channel")

    @property
    def fingerprint(self) -> str:
        """SM3 of the policy's canonical content (the install agent's cache key)."""
        doc = {
            "channels": [[c.name, c.ca.fingerprint, sorted(c.signer_keys)] for c in self.channels],
            "developers": sorted(self.developers) if self.developers is not None else None,
            "min_versions": dict(sorted(self.min_versions.items())),
            "require_crl": self.require_crl,
        }
        return sm3(json.dumps(doc, sort_keys=True).encode()).hex()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Policy:
        """Load a JSON policy (docs/app-signing.md §4); ``ca_file`` paths are relative to
        the policy file."""
        p = Path(path)
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PolicyError(f"cannot read the policy {p.name}: {exc}") from None
        return cls.from_dict(doc, base=p.parent)

    @classmethod
    def from_dict(cls, doc: Any, *, base: Path = Path(".")) -> Policy:
        if not isinstance(doc, dict) or not isinstance(doc.get("channels"), list):
            raise PolicyError("a policy is a JSON object with a list 'channels'")
        unknown = set(doc) - {"channels", "developers", "min_versions", "require_crl"}
        if unknown:
            raise PolicyError(f"unknown policy keys: {sorted(unknown)}")
        channels = []
        for i, ch in enumerate(doc["channels"]):
            if not isinstance(ch, dict) or set(ch) != {"name", "ca_file", "signer_keys"}:
                raise PolicyError(f"channel {i} needs exactly name, ca_file, signer_keys")
            try:
                certs = load_certificates((base / str(ch["ca_file"])).read_bytes())
            except OSError as exc:
                raise PolicyError(f"channel {i}: cannot read ca_file: {exc.strerror}") from None
            except DecodeError as exc:
                raise PolicyError(f"channel {i}: ca_file: {exc}") from None
            if len(certs) != 1:
                raise PolicyError(f"channel {i}: ca_file must hold exactly one certificate")
            channels.append(Channel(str(ch["name"]), certs[0], _fingerprints(ch["signer_keys"])))
        devs = doc.get("developers")
        mins = doc.get("min_versions", {})
        if not isinstance(mins, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in mins.items()
        ):
            raise PolicyError("min_versions maps package names to non-negative integers")
        require_crl = doc.get("require_crl", True)
        if not isinstance(require_crl, bool):
            raise PolicyError("require_crl is true or false")
        return cls(
            tuple(channels),
            _fingerprints(devs) if devs is not None else None,
            dict(mins),
            require_crl,
        )


def _fingerprints(values: Any) -> frozenset[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise PolicyError("key fingerprints are a list of hex strings")
    out = set()
    for v in values:
        v = v.lower().replace(":", "")
        if len(v) != 64 or any(ch not in "0123456789abcdef" for ch in v):
            raise PolicyError(f"{v!r} is not a 32-byte SM3 key fingerprint in hex")
        out.add(v)
    return frozenset(out)


@dataclass(frozen=True)
class Verdict:
    """An accepted package."""

    package: str
    version_code: int
    version_name: str | None
    content_digest: bytes
    developer: Certificate
    channel: str
    channel_certificate: Certificate
    not_after: datetime

    def summary(self) -> dict[str, Any]:
        return {
            "package": self.package,
            "version_code": self.version_code,
            "version_name": self.version_name,
            "content_digest": self.content_digest.hex(),
            "developer": self.developer.subject_str,
            "developer_key": key_fingerprint(self.developer),
            "channel": self.channel,
            "channel_signer": self.channel_certificate.subject_str,
        }


def verify_package(
    source: str | os.PathLike[str] | PackageInfo,
    policy: Policy,
    *,
    crls: Sequence[CRL] = (),
    at: datetime | None = None,
) -> Verdict:
    """The terminal's double verification of the package at ``source``: the developer
    signature and certificate (chaining to a designated channel's CA), the channel
    signature (covering the developer's) by that channel's designated key, CRLs, and the
    policy's developers and minimum versions. Returns the :class:`Verdict` or raises."""
    info = source if isinstance(source, PackageInfo) else inspect(source)
    when = at or datetime.now(UTC)
    dev = info.developer
    if dev is None:
        raise AppVerificationError("developer-missing", "the package has no developer signature")
    ch = check_channel(info)
    fp = key_fingerprint(ch.certificate)
    designated = [c for c in policy.channels if fp in c.signer_keys]
    if not designated:
        raise AppPolicyError(
            "channel-not-designated",
            f"the package was published by {ch.signed.channel!r} "
            f"({ch.certificate.subject_str}), which is not a designated channel",
        )
    # the developer must hold a certificate of the channel that published the package
    # (several policy entries may share a signing key: the first that validates wins)
    first: AppVerificationError | None = None
    for channel in designated:
        try:
            dev_path = check_developer(
                info, anchors=[channel.ca], crls=crls, at=when, require_crl=policy.require_crl
            )
            ch_path = _chain(
                ch.certificate, ch.certificates[1:], [channel.ca], crls, when, policy.require_crl
            )
        except AppVerificationError as exc:
            first = first or exc
            continue
        except CertificateError as exc:
            first = first or AppVerificationError(
                "channel-signature", f"channel certificate refused ({exc.reason}): {exc}"
            )
            continue
        break
    else:
        raise first or AppPolicyError("channel-not-designated", "no designated channel")
    if policy.developers is not None and key_fingerprint(dev.certificate) not in policy.developers:
        raise AppPolicyError(
            "developer-not-allowed",
            f"developer {dev.certificate.subject_str} is not allowed by the policy",
        )
    minimum = policy.min_versions.get(info.manifest.package)
    if minimum is not None and info.manifest.version_code < minimum:
        raise AppPolicyError(
            "downgrade",
            f"{info.manifest.package} version {info.manifest.version_code} is below the "
            f"policy's minimum {minimum}",
        )
    not_after = min(c.not_after for c in (*dev_path, *ch_path))
    crl_next = [c.next_update for c in crls if c.next_update is not None]
    if crl_next:
        not_after = min(not_after, *crl_next)
    return Verdict(
        package=info.manifest.package,
        version_code=info.manifest.version_code,
        version_name=info.manifest.version_name,
        content_digest=info.content_digest,
        developer=dev.certificate,
        channel=channel.name,
        channel_certificate=ch.certificate,
        not_after=not_after,
    )
