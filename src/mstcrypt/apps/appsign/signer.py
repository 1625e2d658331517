"""Adding the two layers: the developer's signature and the channel's countersignature.

A signer is any :data:`mstcrypt.pki.Signer` (bytes -> DER SM2Signature with the default
ID), so the key may live in a soft token, the SS-CC or an HSM; every signature is
verified with the certificate's key before anything is written (a wrong key or a faulty
module never produces a package). Outputs are written to a temporary file beside the
destination and renamed into place, so a failure leaves no half-written package, and the
input may be the output.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mstcrypt.apps.appsign.errors import AppSignError, AppVerificationError
from mstcrypt.apps.appsign.format import (
    CHANNEL_PAIR_ID,
    DEVELOPER_PAIR_ID,
    ChannelLayer,
    ChannelSignedData,
    DeveloperLayer,
    DeveloperSignedData,
    sm3,
)
from mstcrypt.apps.appsign.package import read_layout, write_with_pairs
from mstcrypt.apps.appsign.verify import PackageInfo, check_developer, inspect
from mstcrypt.errors import PolicyError, VerificationError
from mstcrypt.pki import CRL, Certificate, Signer

__all__ = ["Review", "countersign", "review", "sign_developer"]


def _sign(signer: Signer, data: bytes, cert: Certificate, who: str) -> bytes:
    if not callable(signer):
        raise PolicyError("signer must be a callable taking the bytes to sign")
    sig = signer(data)
    if not isinstance(sig, bytes | bytearray):
        raise PolicyError("signer must return a DER SM2Signature")
    try:
        cert.public_key.verify(bytes(sig), data)
    except VerificationError:
        raise PolicyError(
            f"the {who} signature does not verify with the certificate's key "
            "(wrong key or certificate, or not SM2 with the default ID)"
        ) from None
    return bytes(sig)


def _certs(certificates: Sequence[Certificate]) -> tuple[Certificate, ...]:
    certs = tuple(certificates)
    if not certs or not all(isinstance(c, Certificate) for c in certs):
        raise PolicyError("certificates: the signer's certificate first, then its chain")
    return certs


def _write(src: Path, dst: Path, info: PackageInfo, put: dict[int, bytes]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".appsign-", dir=dst.parent or Path("."))
    try:
        with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            layout = read_layout(fin)
            if layout != info.layout:
                raise AppSignError("bad-layer", "the input changed while being signed")
            write_with_pairs(fin, layout, fout, put)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sign_developer(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    signer: Signer,
    certificates: Sequence[Certificate],
    now: datetime | None = None,
) -> DeveloperLayer:
    """Add (or replace) the developer layer of the apksigner-signed package ``src``,
    writing ``dst``. Refused when the package is already countersigned (re-signing
    would silently void the channel's signature: publish a new version instead)."""
    certs = _certs(certificates)
    info = inspect(src)
    if info.channel is not None:
        raise PolicyError(
            "the package is already countersigned by a channel; re-signing it as the "
            "developer would void that signature"
        )
    signed = DeveloperSignedData(
        content_digest=info.content_digest,
        package=info.manifest.package,
        version_code=info.manifest.version_code,
        signed_at=(now or datetime.now(UTC)).replace(microsecond=0),
        certificate_sm3=sm3(certs[0].der),
        apk_signatures=info.apk_signatures,
    )
    data = signed.encode()
    layer = DeveloperLayer(signed, data, _sign(signer, data, certs[0], "developer"), certs)
    _write(Path(src), Path(dst), info, {DEVELOPER_PAIR_ID: layer.encode()})
    return layer


@dataclass(frozen=True)
class Review:
    """A developer layer that the channel checked: what it may now countersign."""

    info: PackageInfo
    path: list[Certificate]

    def summary(self) -> dict[str, object]:
        dev = self.info.developer
        assert dev is not None
        return {
            "package": self.info.manifest.package,
            "version_code": self.info.manifest.version_code,
            "content_digest": self.info.content_digest.hex(),
            "developer": dev.certificate.subject_str,
            "developer_certificate": dev.certificate.fingerprint,
            "developer_signed_at": dev.signed.signed_at.isoformat(),
        }


def review(
    src: str | os.PathLike[str],
    *,
    channel_ca: Certificate,
    crls: Sequence[CRL] = (),
    at: datetime | None = None,
    require_crl: bool = True,
) -> Review:
    """The channel's check (guide 6.2.2): the developer signature verifies over this
    package, and the developer certificate was issued by this channel's CA
    (codeSigning, not revoked). Raises AppVerificationError otherwise."""
    info = inspect(src)
    path = check_developer(info, anchors=[channel_ca], crls=crls, at=at, require_crl=require_crl)
    return Review(info, path)


def countersign(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    signer: Signer,
    certificates: Sequence[Certificate],
    channel_name: str,
    channel_ca: Certificate,
    crls: Sequence[CRL] = (),
    require_crl: bool = True,
    now: datetime | None = None,
) -> tuple[Review, ChannelLayer]:
    """Review ``src`` (:func:`review`) and add the channel layer over it, writing
    ``dst``. The channel signature covers the content digest and the exact bytes of the
    developer pair, so removing or swapping the developer layer is detected."""
    certs = _certs(certificates)
    if (
        not isinstance(channel_name, str)
        or not channel_name
        or len(channel_name.encode()) > 1024
        or any(ord(ch) < 0x20 for ch in channel_name)
    ):
        raise PolicyError("channel_name: 1 to 1024 bytes of UTF-8 without control characters")
    when = (now or datetime.now(UTC)).replace(microsecond=0)
    rev = review(src, channel_ca=channel_ca, crls=crls, at=when, require_crl=require_crl)
    info = rev.info
    dev = info.developer
    if dev is None or info.developer_value is None:  # check_developer guarantees it
        raise AppVerificationError("developer-missing", "the package has no developer signature")
    signed = ChannelSignedData(
        content_digest=info.content_digest,
        developer_layer_sm3=sm3(info.developer_value),
        package=dev.signed.package,
        version_code=dev.signed.version_code,
        signed_at=when,
        certificate_sm3=sm3(certs[0].der),
        channel=channel_name,
    )
    data = signed.encode()
    layer = ChannelLayer(signed, data, _sign(signer, data, certs[0], "channel"), certs)
    _write(Path(src), Path(dst), info, {CHANNEL_PAIR_ID: layer.encode()})
    return rev, layer
