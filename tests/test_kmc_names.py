"""Host names through the platform: enrollment codes for gateways and servers carry the
DNS names and IP addresses a registration officer authorised; the KMC certifies exactly
those (or the subset a CSR asks for) in both certificates of the pair; a CSR that asks
for anything else is refused with a typed error and the code stays usable; devices
carry their e-mail address and never a host name; key updates of a gateway keep its
names; the platform's own TLCP identity gets its names in canonical form."""

from __future__ import annotations

import secrets

import pytest
from asn1crypto import x509
from sqlalchemy import select

from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import AccessDeniedError, PolicyError, VerificationError
from mstcrypt.formats._der import dump
from mstcrypt.formats.envelope import open_enveloped_key
from mstcrypt.formats.keys import SubjectPublicKeyInfo, public_key_to_der
from mstcrypt.kmc.db import Database
from mstcrypt.kmc.enrollment import UnauthorisedNameError, code_names
from mstcrypt.kmc.models import AuditRecord, IssuedCertificate
from mstcrypt.kmc.service import Kmc
from mstcrypt.module.sscc import SoftKeyStore
from mstcrypt.pki import CertificationRequest, Profile, build_csr, match_hostname, name
from mstcrypt.pki import _common as c
from mstcrypt.server.tlcp import platform_credentials

GW = {"CN": "gw.example.gov.cn", "O": "Example Unit"}


@pytest.fixture
def kmc(database_url: str) -> Kmc:
    k = Kmc(Database(database_url), SoftKeyStore(secrets.token_bytes(32)))
    k.create_schema()
    k.init_ca(actor="test")
    yield k
    k.db.dispose()


def csr(key: SM2PrivateKey, sans: list[str] | None = None) -> bytes:
    return build_csr(name(CN="gw"), key.public_key(), key.sign, subject_alt_names=sans or ()).der


def raw_csr(key: SM2PrivateKey, *entries: x509.GeneralName) -> bytes:
    """A correctly self-signed CSR whose extensionRequest holds exactly ``entries``
    (kinds build_csr would never write: directoryName, registeredID, …)."""
    san = x509.Extension(
        {"extn_id": "subject_alt_name", "critical": False, "extn_value": list(entries)}
    )
    info = c.CertificationRequestInfo(
        {
            "version": "v1",
            "subject": name(CN="gw"),
            "subject_pk_info": SubjectPublicKeyInfo.load(public_key_to_der(key.public_key())),
            "attributes": [{"type": "extension_request", "values": [[san]]}],
        }
    )
    info_der = dump(info)
    req = c.CertificationRequestAsn1(
        {
            "certification_request_info": c.CertificationRequestInfo.load(info_der),
            "signature_algorithm": c.sm2_with_sm3(),
            "signature": key.sign(info_der),
        }
    )
    der = dump(req)
    CertificationRequest.from_der(der).verify()
    return der


def gateway_code(kmc: Kmc, owner: str = "gw1", **names: list[str]) -> str:
    names = names or {"dns_names": ["GW.Example.gov.cn", "gw-backup.example.gov.cn"]}
    code, _ = kmc.create_enrollment_code(
        owner=owner, subject=GW, profile=Profile.GATEWAY_SIGN, actor="ra", **names
    )
    return code


def test_code_names_canonical_and_checked() -> None:
    assert code_names(
        Profile.GATEWAY_SIGN,
        ["GW.Example.COM.", "gw.example.com", "Bücher.example", "*.svc.example.com"],
        ["2001:DB8::1", "192.0.2.7", "[2001:db8::1]"],
    ) == [
        "gw.example.com",
        "xn--bcher-kva.example",
        "*.svc.example.com",
        "2001:db8::1",
        "192.0.2.7",
    ]
    assert code_names(Profile.LOGIN_SERVER_SIGN) == []  # host names optional there
    assert code_names(Profile.DEVICE_SIGN) == []
    for profile, dns, ip, words in (
        (Profile.GATEWAY_SIGN, [], [], "at least one DNS name"),
        (Profile.IM_SERVER_SIGN, [], [], "at least one DNS name"),
        (Profile.DEVICE_SIGN, ["phone.example.com"], [], "carries no DNS name"),
        (Profile.DEVICE_SIGN, [], ["192.0.2.1"], "carries no DNS name"),
        (Profile.GATEWAY_SIGN, ["192.0.2.1"], [], "looks like an IP address"),
        (Profile.GATEWAY_SIGN, [], ["gw.example.com"], "not an IPv4 or IPv6"),
        (Profile.GATEWAY_SIGN, ["gw.*.example.com"], [], "leftmost"),
        (Profile.GATEWAY_SIGN, ["*.com"], [], "two labels"),
        (Profile.GATEWAY_SIGN, "gw.example.com", [], "list of strings"),
        (Profile.GATEWAY_SIGN, [f"h{i}.example.com" for i in range(65)], [], "at most 64"),
    ):
        with pytest.raises(PolicyError, match=words):
            code_names(profile, dns, ip)


def test_gateway_enrollment_certifies_the_authorised_names(kmc: Kmc) -> None:
    code = gateway_code(kmc, dns_names=["GW.Example.gov.cn"], ip_addresses=["192.0.2.10"])
    key = SM2PrivateKey.generate()
    e = kmc.enroll(code, csr(key))
    for cert in (e.sign_certificate, e.encryption_certificate):
        assert cert.subject_alt_name_entries == (("dns", "gw.example.gov.cn"), ("ip", "192.0.2.10"))
        assert match_hostname(cert, "gw.example.gov.cn") and match_hostname(cert, "192.0.2.10")
        assert not match_hostname(cert, "example.gov.cn")
    # the key escrowed by the KMC is the one certified, and it reaches the gateway
    enc = open_enveloped_key(e.enveloped_key, key)
    assert enc.public_key() == e.encryption_certificate.public_key
    with kmc.ctx.read() as s:
        details = s.scalar(select(AuditRecord.details).where(AuditRecord.action == "enroll.code"))
    assert details["names"] == ["gw.example.gov.cn", "192.0.2.10"]


def test_csr_may_ask_for_a_subset(kmc: Kmc) -> None:
    code = gateway_code(kmc)
    e = kmc.enroll(code, csr(SM2PrivateKey.generate(), ["gw-backup.example.gov.cn"]))
    assert e.sign_certificate.dns_names == ("gw-backup.example.gov.cn",)
    assert e.encryption_certificate.dns_names == ("gw-backup.example.gov.cn",)
    # case and a trailing dot do not make a name another one
    code = gateway_code(kmc, "gw2")
    e = kmc.enroll(code, csr(SM2PrivateKey.generate(), ["GW.EXAMPLE.GOV.CN"]))
    assert e.sign_certificate.dns_names == ("gw.example.gov.cn",)


@pytest.mark.parametrize(
    "asked",
    [
        [x509.GeneralName(name="dns_name", value="evil.example.com")],
        [
            x509.GeneralName(name="dns_name", value="gw.example.gov.cn"),
            x509.GeneralName(name="dns_name", value="evil.example.com"),
        ],
        [x509.GeneralName(name="dns_name", value="*.example.gov.cn")],  # covers the name
        [x509.GeneralName(name="dns_name", value="192.0.2.10")],  # an IP as a DNS name
        [x509.GeneralName(name="ip_address", value="192.0.2.10")],
        [x509.GeneralName(name="rfc822_name", value="ops@example.gov.cn")],
        [x509.GeneralName(name="uniform_resource_identifier", value="https://gw.example.gov.cn/")],
        [x509.GeneralName(name="directory_name", value=name(CN="gw.example.gov.cn"))],
        [x509.GeneralName(name="registered_id", value="1.2.3.4")],
    ],
    ids=["other", "extra", "wildcard", "ip-as-dns", "ip", "email", "uri", "dirname", "regid"],
)
def test_attack_csr_asking_for_unauthorised_names(kmc: Kmc, asked) -> None:
    code = gateway_code(kmc)
    key = SM2PrivateKey.generate()
    with pytest.raises(UnauthorisedNameError, match="does not authorise") as err:
        kmc.enroll(code, raw_csr(key, *asked))
    assert isinstance(err.value, AccessDeniedError)
    with kmc.ctx.read() as s:
        assert not s.scalars(
            select(IssuedCertificate).where(IssuedCertificate.owner == "gw1")
        ).all()
    # the refused request did not consume the code: the gateway retries with a fair CSR
    e = kmc.enroll(code, csr(key))
    assert e.sign_certificate.dns_names == ("gw.example.gov.cn", "gw-backup.example.gov.cn")
    with pytest.raises(VerificationError, match="already used"):
        kmc.enroll(code, csr(key))


def test_devices_get_their_email_and_never_a_host_name(kmc: Kmc) -> None:
    subject = {"CN": "alice", "email": "Alice@example.gov.cn"}
    code, _ = kmc.create_enrollment_code(owner="alice", subject=subject, actor="ra")
    key = SM2PrivateKey.generate()
    for asked in (["phone.example.gov.cn"], ["192.0.2.1"], ["mallory@example.gov.cn"]):
        with pytest.raises(UnauthorisedNameError):
            kmc.enroll(code, csr(key, asked))
    e = kmc.enroll(code, csr(key, ["alice@example.gov.cn"]))  # the subject's own address
    for cert in (e.sign_certificate, e.encryption_certificate):
        assert cert.subject_alt_name_entries == (("email", "Alice@example.gov.cn"),)
    with pytest.raises(PolicyError, match="carries no DNS name"):
        kmc.create_enrollment_code(
            owner="bob", subject={"CN": "bob"}, actor="ra", dns_names=["bob.example.gov.cn"]
        )


def test_gateway_code_never_copies_an_email(kmc: Kmc) -> None:
    """A gateway subject may hold an e-mail attribute; its certificates carry host
    names only, and a CSR asking for that address is refused."""
    subject = {**GW, "email": "ops@example.gov.cn"}
    code, _ = kmc.create_enrollment_code(
        owner="gw9",
        subject=subject,
        profile=Profile.GATEWAY_SIGN,
        actor="ra",
        dns_names=["gw9.example"],
    )
    key = SM2PrivateKey.generate()
    with pytest.raises(UnauthorisedNameError):
        kmc.enroll(code, csr(key, ["ops@example.gov.cn"]))
    e = kmc.enroll(code, csr(key))
    assert e.sign_certificate.subject_alt_name_entries == (("dns", "gw9.example"),)


def test_gateway_key_update_keeps_its_names(kmc: Kmc) -> None:
    code = gateway_code(kmc, dns_names=["gw.example.gov.cn"], ip_addresses=["192.0.2.10"])
    key = SM2PrivateKey.generate()
    kmc.enroll(code, csr(key))
    _, _, cert = kmc.rotate_key(
        "gw1", key.public_key(), subject=GW, profile=Profile.GATEWAY_ENC, actor="ra"
    )
    assert cert.subject_alt_name_entries == (("dns", "gw.example.gov.cn"), ("ip", "192.0.2.10"))
    key_id = kmc.generate_key("gw1", actor="ra")
    _, cert = kmc.distribute_key(
        key_id, key.public_key(), subject=GW, profile=Profile.GATEWAY_ENC, actor="ra"
    )
    assert cert.dns_names == ("gw.example.gov.cn",)
    # an owner without a signing certificate has no names to give a gateway certificate
    other = kmc.generate_key("nobody", actor="ra")
    with pytest.raises(PolicyError, match="at least one DNS name"):
        kmc.distribute_key(
            other, key.public_key(), subject=GW, profile=Profile.GATEWAY_ENC, actor="ra"
        )


def test_platform_endpoint_names(kmc: Kmc) -> None:
    creds = platform_credentials(
        kmc, ["Platform.Example.gov.cn.", "127.0.0.1", "platform.example.gov.cn"]
    )
    for cert in (creds.sign_certificate, creds.enc_certificate):
        assert cert.subject_alt_name_entries == (
            ("dns", "platform.example.gov.cn"),
            ("ip", "127.0.0.1"),
        )
        assert cert.common_names == ("platform.example.gov.cn",)
    again = platform_credentials(kmc, ["platform.example.gov.cn", "127.0.0.1"])
    assert again.sign_certificate == creds.sign_certificate  # same names: reused
    renamed = platform_credentials(kmc, ["::1"])
    assert renamed.sign_certificate.subject_alt_name_entries == (("ip", "::1"),)
    for bad in ([], ["bad_name.example"], ["gw.*.example"]):
        with pytest.raises(PolicyError):
            platform_credentials(kmc, bad)
