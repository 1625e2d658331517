"""A platform CA with an ASU, an AP and terminals, and ready-made WAI role machines."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from mstcrypt.apps.wapi import PlatformValidator
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.pki import CRL, Certificate, Issuer, Profile, RevokedEntry, name
from mstcrypt.protocols.wai import SM
from mstcrypt.protocols.wai import messages as m
from mstcrypt.protocols.wai.roles import AccessPoint, AeSession, Asu, Asue, Credential
from mstcrypt.protocols.wai.suites import SoftSigner
from mstcrypt.protocols.wai.testing import Pump

AE_MAC = bytes.fromhex("020000000001")
STA_MAC = bytes.fromhex("020000000002")
AT = datetime.now(UTC)


@dataclass
class SmPlatform:
    root_key: SM2PrivateKey = field(default_factory=SM2PrivateKey.generate)
    revoked: list[RevokedEntry] = field(default_factory=list)

    def __post_init__(self) -> None:
        # every validity window is anchored at AT (the instant the tests validate at,
        # fixed when this module is imported), not at the time a test happens to build
        # its platform: in a long run that may be many minutes after AT
        self.ca = Issuer.self_signed(
            name(C="CN", O="Example Org", CN="Example Root CA"),
            self.root_key.public_key(),
            lambda tbs: self.root_key.sign(tbs),
            not_before=AT - timedelta(days=1),
            not_after=AT + timedelta(days=3650),
        )
        self.asu = self.issue("ASU", Profile.WLAN_ASU_SIGN)
        self.ap = self.issue("AP-1", Profile.WLAN_AP_SIGN)
        self.sta = self.issue("terminal-1", Profile.DEVICE_SIGN)

    def issue(self, cn: str, profile: Profile, issuer: Issuer | None = None) -> Credential:
        key = SM2PrivateKey.generate()
        cert = (issuer or self.ca).issue(
            subject=name(C="CN", O="Example Org", CN=cn),
            public_key=key.public_key(),
            profile=profile,
            not_before=AT - timedelta(days=1),
            not_after=AT + timedelta(days=365),
        )
        return Credential(cert.der, SoftSigner(key))

    def revoke(self, cred: Credential) -> None:
        serial = Certificate.from_der(cred.cert_der).serial
        self.revoked.append(RevokedEntry(serial, AT - timedelta(minutes=1)))

    def crl(self) -> CRL:
        return self.ca.crl(
            number=len(self.revoked) + 1, entries=self.revoked, this_update=AT - timedelta(hours=1)
        )

    def validator(self) -> PlatformValidator:
        return PlatformValidator([self.ca.certificate], lambda: [self.crl()])


def ie(suite: object = SM) -> m.WapiIE:
    return m.WapiIE(akm_suites=(suite.akm,))  # type: ignore[attr-defined]


def machines(
    p: SmPlatform,
    *,
    sta: Credential | None = None,
    ap: Credential | None = None,
    trusted_asus: list[bytes] | None = None,
    asu: Credential | None = None,
    **ae_kw: object,
) -> tuple[Asue, AeSession, Asu, AccessPoint]:
    suite_ie = ie()
    asue = Asue(
        sta or p.sta,
        trusted_asus=trusted_asus if trusted_asus is not None else [p.asu.cert_der],
        own_mac=STA_MAC,
        ae_mac=AE_MAC,
        ie=suite_ie,
        ae_ie=suite_ie,
    )
    point = AccessPoint(
        ap or p.ap, asu_cert=(asu or p.asu).cert_der, mac=AE_MAC, ie=suite_ie, **ae_kw
    )  # type: ignore[arg-type]
    session = point.associate(STA_MAC, suite_ie, 0.0)
    server = Asu(asu or p.asu, p.validator(), SM)
    return asue, session, server, point


def pump(p: SmPlatform, **kw: object) -> tuple[Pump, AccessPoint]:
    asue, session, server, point = machines(p, **kw)  # type: ignore[arg-type]
    return Pump(asue, session, server, at=AT), point


@dataclass
class StdPlatform:
    """The standard suite: the ASU issues AE and ASUE certificates on the 192-bit curve."""

    revoked: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        from mstcrypt.crypto import wapi192

        self._serial = 1
        self.asu_key = wapi192.PrivateKey.generate()
        self.asu = self._cred("ASU", self.asu_key)
        self.ap = self.issue("AP-1")
        self.sta = self.issue("terminal-1")

    def _cred(self, cn: str, key: object) -> Credential:
        from mstcrypt.protocols.wai import certs

        self._serial += 1
        der = certs.issue(
            subject_cn=cn,
            public_key=key.public_key(),  # type: ignore[attr-defined]
            issuer_cn="ASU",
            issuer_key=self.asu_key,
            serial=self._serial,
            not_before=AT - timedelta(days=1),
            not_after=AT + timedelta(days=365),
        )
        return Credential(der, SoftSigner(key))  # type: ignore[arg-type]

    def issue(self, cn: str) -> Credential:
        from mstcrypt.crypto import wapi192

        return self._cred(cn, wapi192.PrivateKey.generate())

    def validator(self) -> object:
        from mstcrypt.protocols.wai.certs import Wapi192Validator

        return Wapi192Validator(self.asu.cert_der, lambda: self.revoked)


def std_pump(p: StdPlatform, *, sta: Credential | None = None) -> Pump:
    from mstcrypt.protocols.wai import STANDARD

    suite_ie = ie(STANDARD)
    asue = Asue(
        sta or p.sta,
        trusted_asus=[p.asu.cert_der],
        own_mac=STA_MAC,
        ae_mac=AE_MAC,
        ie=suite_ie,
        ae_ie=suite_ie,
    )
    point = AccessPoint(p.ap, asu_cert=p.asu.cert_der, mac=AE_MAC, ie=suite_ie)
    session = point.associate(STA_MAC, suite_ie, 0.0)
    return Pump(asue, session, Asu(p.asu, p.validator(), STANDARD), at=AT)  # type: ignore[arg-type]
