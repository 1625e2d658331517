"""App signing and verification (T/ZSA 37-2020 §6.2): developer and channel SM2
signatures ("double signature") inside the APK Signing Block, and the terminal's
"double verification" at install and launch.

    from mstcrypt.apps import appsign

    appsign.sign_developer("app.apk", "dev.apk", signer=dev_key.sign, certificates=[dev_cert])
    appsign.countersign("dev.apk", "pub.apk", signer=ch_key.sign, certificates=[ch_cert],
                        channel_name="gov-store", channel_ca=channel_ca, crls=[crl])
    verdict = appsign.verify_package("pub.apk", appsign.Policy.from_file("policy.json"),
                                     crls=[crl])

The input must already carry an ordinary v2/v3 signature (apksigner): our layers are
extra ID-value pairs that stock Android tooling skips, so ``apksigner verify`` still
passes. Formats, checks and error codes: docs/app-signing.md.
"""

from __future__ import annotations

from mstcrypt.apps.appsign.agent import InstallAgent, InstalledApp
from mstcrypt.apps.appsign.errors import (
    AppPolicyError,
    AppSignError,
    AppVerificationError,
    LayerFormatError,
    NotSignedError,
    PackageFormatError,
)
from mstcrypt.apps.appsign.format import (
    CHANNEL_PAIR_ID,
    DEVELOPER_PAIR_ID,
    ChannelLayer,
    DeveloperLayer,
)
from mstcrypt.apps.appsign.manifest import Manifest
from mstcrypt.apps.appsign.signer import Review, countersign, review, sign_developer
from mstcrypt.apps.appsign.verify import (
    Channel,
    PackageInfo,
    Policy,
    Verdict,
    inspect,
    key_fingerprint,
    verify_package,
)

__all__ = [
    "CHANNEL_PAIR_ID",
    "DEVELOPER_PAIR_ID",
    "AppPolicyError",
    "AppSignError",
    "AppVerificationError",
    "Channel",
    "ChannelLayer",
    "DeveloperLayer",
    "InstallAgent",
    "InstalledApp",
    "LayerFormatError",
    "Manifest",
    "NotSignedError",
    "PackageFormatError",
    "PackageInfo",
    "Policy",
    "Review",
    "Verdict",
    "countersign",
    "inspect",
    "key_fingerprint",
    "review",
    "sign_developer",
    "verify_package",
]
