"""Certificates from the platform: the KMC enrolls the terminal, the AP and the ASU;
the ASU validates against the KMC's CA chain and CRLs, so revoking the terminal at the
KMC refuses its next association."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import wapi_env as env

from mstcrypt.apps.wapi import PlatformValidator
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.kmc.db import Database
from mstcrypt.kmc.publisher import CrlPolicy
from mstcrypt.kmc.service import Kmc
from mstcrypt.module.sscc import SoftKeyStore
from mstcrypt.pki import CRL, Profile, build_csr, name
from mstcrypt.protocols.wai import SM
from mstcrypt.protocols.wai.constants import VerifyResult
from mstcrypt.protocols.wai.events import Associated, AuthenticationFailed
from mstcrypt.protocols.wai.roles import AccessPoint, Asu, Asue, Credential, State
from mstcrypt.protocols.wai.suites import SoftSigner
from mstcrypt.protocols.wai.testing import Pump
from platform_helpers import master_key


@pytest.fixture
def kmc(tmp_path: Path) -> Iterator[Kmc]:
    k = Kmc(
        Database(f"sqlite:///{tmp_path / 'kmc.db'}"),
        SoftKeyStore(master_key()),
        crl_base_url="http://kmc.test",
        crl_policy=CrlPolicy(max_delay=3600),
    )
    k.create_schema()
    k.init_ca(actor="test")
    yield k
    k.db.dispose()


def _enroll(kmc: Kmc, owner: str, profile: Profile) -> tuple[Credential, str]:
    key = SM2PrivateKey.generate()
    code, _ = kmc.create_enrollment_code(
        owner=owner, subject={"CN": owner}, profile=profile, actor="op"
    )
    e = kmc.enroll(code, build_csr(name(CN=owner), key.public_key(), key.sign).der)
    return Credential(e.sign_certificate.der, SoftSigner(key)), f"{e.sign_certificate.serial:x}"


def _associate(kmc: Kmc, sta: Credential, ap: Credential, asu: Credential) -> Pump:
    chain = kmc.chain()
    anchors = [c for c in chain if c.is_self_signed]
    inter = [c for c in chain if not c.is_self_signed]
    validator = PlatformValidator(
        anchors,
        lambda: [CRL.from_der(kmc.ca.crl("issuing")), CRL.from_der(kmc.ca.crl("root"))],
        intermediates=inter,
    )
    ie = env.ie()
    asue = Asue(
        sta, trusted_asus=[asu.cert_der], own_mac=env.STA_MAC, ae_mac=env.AE_MAC, ie=ie, ae_ie=ie
    )
    point = AccessPoint(ap, asu_cert=asu.cert_der, mac=env.AE_MAC, ie=ie)
    p = Pump(asue, point.associate(env.STA_MAC, ie, 0.0), Asu(asu, validator, SM))
    p.run()
    return p


def test_revocation_at_the_kmc_stops_the_next_association(kmc: Kmc) -> None:
    sta, serial = _enroll(kmc, "terminal-7", Profile.DEVICE_SIGN)
    ap, _ = _enroll(kmc, "ap-3", Profile.WLAN_AP_SIGN)
    asu, _ = _enroll(kmc, "asu-1", Profile.WLAN_ASU_SIGN)
    p = _associate(kmc, sta, ap, asu)
    assert p.asue.state is State.ESTABLISHED
    assert any(isinstance(e, Associated) for e in p.ae_events)
    kmc.revoke_certificate(serial, reason="key_compromise", actor="op")
    kmc.publish_crls(force=True)
    p = _associate(kmc, sta, ap, asu)
    fails = [e for e in p.ae_events if isinstance(e, AuthenticationFailed)]
    assert fails and fails[0].asue_result is VerifyResult.REVOKED
    assert p.asue.state is State.FAILED
