"""mstcrypt.pki: names, profiles, certificates, CSRs and CRLs — building, round trips,
the extensions each profile carries, and strict parsing."""

from __future__ import annotations

import gc
import pickle
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from asn1crypto import core, x509
from cryptography.hazmat.primitives import hashes

from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import (
    DecodeError,
    MstCryptError,
    PolicyError,
    UnsupportedError,
    VerificationError,
)
from mstcrypt.formats.keys import public_key_to_der
from mstcrypt.pki import (
    CRL,
    REASONS,
    Certificate,
    CertificateError,
    CertificationRequest,
    Issuer,
    Profile,
    RevokedEntry,
    build_certificate,
    build_crl,
    build_csr,
    key_identifier,
    load_certificates,
    name,
    name_to_str,
    random_serial,
    spec,
)
from mstcrypt.pki._common import TbsCertificate, X509Certificate

NB = datetime(2030, 1, 1, tzinfo=UTC)
NA = datetime(2031, 1, 1, tzinfo=UTC)
SM2_WITH_SM3_ALG_DER = bytes.fromhex("300a06082a811ccf55018375")  # parameters absent


def sm3(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SM3())
    h.update(data)
    return h.finalize()


@pytest.fixture(scope="module")
def root_key() -> SM2PrivateKey:
    return SM2PrivateKey.generate()


@pytest.fixture(scope="module")
def root(root_key: SM2PrivateKey) -> Certificate:
    n = name(C="CN", O="Example Org", OU="MST", CN="Example Root CA")
    return build_certificate(
        subject=n,
        public_key=root_key.public_key(),
        issuer=n,
        issuer_public_key=root_key.public_key(),
        signer=lambda tbs: root_key.sign(tbs),
        serial=1,
        not_before=NB,
        not_after=NA,
        profile=Profile.ROOT_CA,
    )


def issue(
    root: Certificate, root_key: SM2PrivateKey, profile: Profile | str, **kw: object
) -> tuple[SM2PrivateKey, Certificate]:
    key = SM2PrivateKey.generate()
    args: dict[str, object] = {
        "subject": name(C="CN", O="Example Org", CN=f"{profile}"),
        "public_key": key.public_key(),
        "issuer": root,
        "issuer_public_key": root_key.public_key(),
        "signer": lambda tbs: root_key.sign(tbs),
        "serial": 0x1234,
        "not_before": NB,
        "not_after": NA,
        "profile": profile,
    }
    args.update(kw)
    return key, build_certificate(**args)  # type: ignore[arg-type]


def resign(
    cert: Certificate, key: SM2PrivateKey, mutate: Callable[[x509.TbsCertificate], None]
) -> bytes:
    """DER of ``cert`` with its tbsCertificate changed by ``mutate`` and signed again."""
    asn1 = cert.asn1
    tbs = asn1["tbs_certificate"]
    mutate(tbs)
    tbs_der = tbs.dump(force=True)
    new = X509Certificate(
        {
            "tbs_certificate": TbsCertificate.load(tbs_der),
            "signature_algorithm": x509.Certificate.load(cert.der)["signature_algorithm"],
            "signature_value": key.sign(tbs_der),
        }
    )
    return new.dump(force=True)


# --- names ----------------------------------------------------------------------------------


def test_name_order_and_string_types() -> None:
    n = name(CN="alice", email="alice@example.com", OU="MST", O="Example Org", C="CN", L="Bj")
    types = [rdn[0]["type"].native for rdn in n.chosen]
    assert types == [
        "country_name",
        "locality_name",
        "organization_name",
        "organizational_unit_name",
        "common_name",
        "email_address",
    ]
    values = {rdn[0]["type"].native: rdn[0]["value"] for rdn in n.chosen}
    assert values["country_name"].name == "printable_string"
    assert values["common_name"].name == "utf8_string"
    assert values["organization_name"].name == "utf8_string"
    assert isinstance(values["email_address"], x509.EmailAddress)
    assert name_to_str(n) == (
        "emailAddress=alice@example.com,CN=alice,OU=MST,O=Example Org,L=Bj,C=CN"
    )


def test_name_multiple_ou_serial_and_unicode() -> None:
    n = name(C="CN", O="示例单位", OU=["A", "B"], CN="张三", serial_number="110101")
    assert name_to_str(n) == "serialNumber=110101,CN=张三,OU=B,OU=A,O=示例单位,C=CN"
    assert x509.Name.load(n.dump()) == n


def test_name_to_str_escapes() -> None:
    n = name(CN=' #a,b+c"d\\e<f>g;h= ')
    assert name_to_str(n) == 'CN=\\ #a\\,b\\+c\\"d\\\\e\\<f\\>g\\;h\\=\\ '


def test_name_comparison_is_rfc5280() -> None:
    assert name(C="CN", CN="Root  CA") == name(C="CN", CN="root ca")
    assert name(C="CN", CN="Root") != name(C="CN", CN="Root2")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"X": "1"},
        {"CN": ""},
        {"CN": "  "},
        {"C": "CHN"},
        {"C": "中国"},
        {"CN": "x" * 65},
        {"email": "é@x"},
        {},
    ],
)
def test_name_rejects(kwargs: dict[str, str]) -> None:
    with pytest.raises(PolicyError):
        name(**kwargs)


def test_name_to_str_rejects_non_name() -> None:
    with pytest.raises(PolicyError):
        name_to_str("CN=x")  # type: ignore[arg-type]


# --- profiles --------------------------------------------------------------------------------

SIGN = {
    Profile.DEVICE_SIGN,
    Profile.GATEWAY_SIGN,
    Profile.IM_SERVER_SIGN,
    Profile.MAIL_SERVER_SIGN,
    Profile.LOGIN_SERVER_SIGN,
    Profile.SEAL_SERVER_SIGN,
    Profile.APP_DEVELOPER,
    Profile.WLAN_AP_SIGN,
    Profile.WLAN_ASU_SIGN,
    Profile.OCSP_SIGNER,
}
ENC = {
    Profile.DEVICE_ENC,
    Profile.GATEWAY_ENC,
    Profile.IM_SERVER_ENC,
    Profile.MAIL_SERVER_ENC,
    Profile.LOGIN_SERVER_ENC,
    Profile.SEAL_SERVER_ENC,
    Profile.WLAN_AP_ENC,
    Profile.WLAN_ASU_ENC,
    Profile.KMC_ESCROW_ENC,
}
CA = {Profile.ROOT_CA, Profile.SUB_CA, Profile.DISTRIBUTION_CHANNEL_CA}
SERVERS = {
    p
    for p in Profile
    if p.value.startswith(("gateway", "im_server", "mail_server", "login_server", "seal_server"))
}


def test_profiles_partition() -> None:
    assert set(Profile) == SIGN | ENC | CA
    assert not (SIGN & ENC) and not (SIGN & CA) and not (ENC & CA)


def test_spec_accepts_values_and_rejects_unknown() -> None:
    assert spec("root_ca") == spec(Profile.ROOT_CA)
    with pytest.raises(PolicyError):
        spec("nope")


@pytest.mark.parametrize("profile", list(Profile), ids=lambda p: p.value)
def test_profile_extensions(profile: Profile, root: Certificate, root_key: SM2PrivateKey) -> None:
    _, cert = issue(root, root_key, profile)
    s = spec(profile)
    assert cert.key_usage == s.key_usage
    assert cert.extensions["2.5.29.15"] is True  # keyUsage critical
    assert cert.is_ca == s.is_ca
    assert cert.path_len == s.path_len
    assert set(cert.extended_key_usage) == set(s.extended_key_usage)
    assert cert.policies == s.policies
    assert ("2.5.29.32" in cert.extensions) == bool(s.policies)
    assert s.default_days <= 3653  # GmSSL's maximum validity
    if profile in CA:
        assert cert.extensions["2.5.29.19"] is True  # basicConstraints critical
        assert cert.key_usage == {"key_cert_sign", "crl_sign"}
        assert cert.extended_key_usage == ()
        assert cert.path_len == (None if profile is Profile.ROOT_CA else 0)
    else:
        assert "2.5.29.19" not in cert.extensions  # CA:FALSE by omission (GmSSL)
        assert not cert.key_usage & {"key_cert_sign", "crl_sign"}
    if profile in SIGN:
        assert "digital_signature" in cert.key_usage
        assert not s.is_encryption
    if profile in ENC:
        assert cert.key_usage == {"key_encipherment", "data_encipherment", "key_agreement"}
        assert s.is_encryption
    if profile in SERVERS or profile.value.startswith("wlan"):
        assert "server_auth" in cert.extended_key_usage
    if profile in (Profile.DEVICE_SIGN, Profile.DEVICE_ENC):
        assert set(cert.extended_key_usage) == {"client_auth", "email_protection"}
    if profile is Profile.DEVICE_SIGN:
        assert "non_repudiation" in cert.key_usage
    if profile is Profile.APP_DEVELOPER:
        assert cert.extended_key_usage == ("code_signing",)
    if profile is Profile.OCSP_SIGNER:
        assert cert.extended_key_usage == ("ocsp_signing",)


# --- certificates: building and round trips ---------------------------------------------------


def test_root_certificate_fields(root: Certificate, root_key: SM2PrivateKey) -> None:
    pub = root_key.public_key()
    assert root.version == 3
    assert root.serial == 1
    assert root.subject == root.issuer
    assert root.subject_str == "CN=Example Root CA,OU=MST,O=Example Org,C=CN"
    assert root.issuer_str == root.subject_str
    assert root.not_before == NB and root.not_after == NA
    assert root.not_before.tzinfo is not None
    assert root.public_key == pub
    assert root.subject_key_id == sm3(pub.to_bytes()) == key_identifier(pub)
    assert root.authority_key_id == root.subject_key_id
    assert root.signature_algorithm == "1.2.156.10197.1.501"
    assert root.fingerprint == sm3(root.der).hex()
    assert root.is_self_issued() and root.is_self_signed()
    assert root.crl_urls == () and root.subject_alt_names == ()
    root.verify_signature(pub)
    # AlgorithmIdentifier with parameters absent, inside and outside tbsCertificate
    assert root.der.count(SM2_WITH_SM3_ALG_DER) == 2
    assert public_key_to_der(pub) in root.tbs_der
    pub.verify(root.signature, root.tbs_der)


def test_round_trips(root: Certificate) -> None:
    assert Certificate.from_der(root.der) == root
    assert Certificate.from_pem(root.pem) == root
    assert Certificate.from_pem(root.pem.decode()) == root
    assert Certificate.load(root.der) == Certificate.load(root.pem) == root
    assert root.pem.startswith(b"-----BEGIN CERTIFICATE-----\n")
    assert hash(Certificate.from_der(root.der)) == hash(root)
    assert pickle.loads(pickle.dumps(root)) == root
    assert "Example Root CA" in repr(root)


def test_leaf_fields(root: Certificate, root_key: SM2PrivateKey) -> None:
    key, leaf = issue(
        root,
        root_key,
        Profile.GATEWAY_SIGN,
        serial=(1 << 159) - 1,  # the largest 20-octet positive serial
        subject_alt_names=["gw.example.com", "ops@example.com", "https://gw.example.com/", "::1"],
        crl_urls=["http://crl.example.com/root.crl", "ldap://ldap.example.com/cn=root"],
    )
    assert leaf.serial == (1 << 159) - 1
    assert leaf.public_key == key.public_key()
    assert leaf.issuer == root.subject and leaf.issued_by_name(root)
    assert leaf.authority_key_id == root.subject_key_id
    assert leaf.subject_alt_names == (
        "gw.example.com",
        "ops@example.com",
        "https://gw.example.com/",
        "::1",
    )
    assert leaf.crl_urls == ("http://crl.example.com/root.crl", "ldap://ldap.example.com/cn=root")
    assert not leaf.is_self_issued() and not leaf.is_self_signed()
    leaf.verify_signature(root_key.public_key())
    with pytest.raises(CertificateError) as ei:
        leaf.verify_signature(key.public_key())
    assert ei.value.reason == "bad_signature"
    assert ei.value.certificate == leaf.subject_str


def test_sha1_key_identifiers_and_issuer_certificate_ski(
    root: Certificate, root_key: SM2PrivateKey
) -> None:
    import hashlib

    _, sub = issue(root, root_key, Profile.SUB_CA, key_id_method="sha1")
    assert sub.subject_key_id == hashlib.sha1(sub.public_key.to_bytes()).digest()
    # AKI is taken from the issuer certificate's SKI (SM3 here), not recomputed
    assert sub.authority_key_id == root.subject_key_id
    # given only a name, the AKI is computed with the same method
    _, other = issue(root, root_key, Profile.SUB_CA, issuer=root.subject, key_id_method="sha1")
    assert other.authority_key_id == key_identifier(root.public_key, "sha1")
    with pytest.raises(PolicyError):
        key_identifier(root.public_key, "md5")


def test_time_encodings(root: Certificate, root_key: SM2PrivateKey) -> None:
    nb = datetime(2049, 12, 31, 23, 59, 59, 999, tzinfo=UTC)
    na = datetime(2050, 1, 1, 8, 0, tzinfo=UTC)  # GeneralizedTime from 2050 on
    _, cert = issue(root, root_key, Profile.DEVICE_SIGN, not_before=nb, not_after=na)
    validity = cert.asn1["tbs_certificate"]["validity"]
    assert validity["not_before"].name == "utc_time"
    assert validity["not_after"].name == "general_time"
    assert cert.not_before == nb.replace(microsecond=0)
    assert cert.not_after == na
    tz8 = datetime(2030, 1, 1, 8, tzinfo=UTC).astimezone(
        __import__("datetime").timezone(timedelta(hours=8))
    )
    _, c8 = issue(root, root_key, Profile.DEVICE_SIGN, not_before=tz8)
    assert c8.not_before == datetime(2030, 1, 1, 8, tzinfo=UTC)


def test_extra_extensions(root: Certificate, root_key: SM2PrivateKey) -> None:
    ident = core.UTF8String("110101199001011234").dump()
    policies = x509.Extension(
        {
            "extn_id": "certificate_policies",
            "critical": False,
            "extn_value": [{"policy_identifier": "1.2.156.112562.2.1.1.1"}],
        }
    )
    _, cert = issue(
        root,
        root_key,
        Profile.DEVICE_SIGN,
        extra_extensions=[("1.2.156.10260.4.1.1", False, ident), policies],
    )
    assert cert.extensions["1.2.156.10260.4.1.1"] is False
    assert cert.extension_value("1.2.156.10260.4.1.1") == ident
    assert "2.5.29.32" in cert.extensions
    assert cert.policies == ("1.2.156.112562.2.1.1.1",)
    assert cert.unsupported_critical_extensions == ()
    _, crit = issue(
        root, root_key, Profile.DEVICE_SIGN, extra_extensions=[("1.2.3.4", True, b"\x05\x00")]
    )
    assert crit.unsupported_critical_extensions == ("1.2.3.4",)
    for bad in (
        [("2.5.29.15", True, b"\x03\x01\x00")],  # already set by the profile
        [("1.2.3.4", False, b"\x05\x00"), ("1.2.3.4", False, b"\x05\x00")],
        [("not-an-oid", False, b"\x05\x00")],
        [("1.2.3.4", False, b"\x05\x00\x00")],  # not one DER value
        ["bogus"],
    ):
        with pytest.raises((PolicyError, ValueError)):
            issue(root, root_key, Profile.DEVICE_SIGN, extra_extensions=bad)


def test_path_len_override(root: Certificate, root_key: SM2PrivateKey) -> None:
    _, sub = issue(root, root_key, Profile.SUB_CA, path_len=3)
    assert sub.path_len == 3 and sub.is_ca
    with pytest.raises(PolicyError):
        issue(root, root_key, Profile.DEVICE_SIGN, path_len=1)
    with pytest.raises(PolicyError):
        issue(root, root_key, Profile.SUB_CA, path_len=-1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"serial": 0},
        {"serial": -5},
        {"serial": 1 << 159},  # 21 DER content octets
        {"serial": True},
        {"serial": "1"},
        {"not_before": datetime(2030, 1, 1)},  # naive
        {"not_after": NB},
        {"not_after": NB - timedelta(days=1)},
        {"profile": "nope"},
        {"subject": "CN=x"},
        {"subject_alt_names": "gw.example.com"},
        {"subject_alt_names": ["bad name!"]},
        {"subject_alt_names": ["bücher.example"]},
        {"crl_urls": ["no-scheme"]},
        {"crl_urls": "http://x/y"},
        {"signer": lambda tbs: SM2PrivateKey.generate().sign(tbs)},  # wrong key
        {"signer": lambda tbs: b"\x30\x00"},
        {"signer": lambda tbs: "sig"},
        {"signer": None},
        {"issuer_public_key": SM2PrivateKey.generate().public_key()},  # != issuer cert key
        {"issuer": "CN=root"},
        {"public_key": b"\x04" * 65},
    ],
)
def test_build_certificate_rejects(
    kwargs: dict[str, object], root: Certificate, root_key: SM2PrivateKey
) -> None:
    kwargs = dict(kwargs)
    profile = kwargs.pop("profile", Profile.DEVICE_SIGN)
    with pytest.raises(PolicyError):
        issue(root, root_key, profile, **kwargs)  # type: ignore[arg-type]


def test_signer_with_other_id_is_refused(root: Certificate, root_key: SM2PrivateKey) -> None:
    with pytest.raises(PolicyError, match="default ID"):
        issue(
            root,
            root_key,
            Profile.DEVICE_SIGN,
            signer=lambda tbs: root_key.sign(tbs, signer_id=b""),
        )


def test_certificate_is_immutable(root: Certificate) -> None:
    with pytest.raises(AttributeError):
        root.serial = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        root._der = b""  # type: ignore[misc]
    with pytest.raises(TypeError):
        Certificate()
    assert root.subject is not root.subject  # asn1crypto objects are handed out as copies


def test_load_certificates_bundle(root: Certificate, root_key: SM2PrivateKey) -> None:
    _, a = issue(root, root_key, Profile.SUB_CA)
    bundle = b"junk\n" + a.pem + b"\n" + root.pem
    assert load_certificates(bundle) == [a, root]
    assert load_certificates(root.der) == [root]
    with pytest.raises(DecodeError):
        load_certificates(b"-----BEGIN X509 CRL-----\n-----END X509 CRL-----\n")


# --- certificates: strict parsing ------------------------------------------------------------


def _long_form_length(der: bytes) -> bytes:
    """Same value with the outer length in a non-minimal long form (BER, not DER)."""
    assert der[1] in (0x81, 0x82)
    return der[:1] + bytes([der[1] + 1, 0]) + der[2:]


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda d: d + b"\x00", id="trailing-zero"),
        pytest.param(lambda d: d + d, id="two-certificates"),
        pytest.param(lambda d: d[:-1], id="truncated"),
        pytest.param(lambda d: b"", id="empty"),
        pytest.param(lambda d: b"\x30\x03\x02\x01\x01", id="not-a-certificate"),
        pytest.param(lambda d: bytes(range(200)), id="garbage"),
        pytest.param(_long_form_length, id="non-minimal-length"),
    ],
)
def test_strict_parsing_rejects(mutate: Callable[[bytes], bytes], root: Certificate) -> None:
    with pytest.raises(DecodeError):
        Certificate.from_der(mutate(root.der))


def test_from_pem_rejects() -> None:
    with pytest.raises(DecodeError):
        Certificate.from_pem(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n")
    with pytest.raises(DecodeError):
        Certificate.from_pem(b"no pem here")
    with pytest.raises(DecodeError):
        Certificate.from_der("text")  # type: ignore[arg-type]


def test_parse_rejects_inconsistent_certificates(
    root: Certificate, root_key: SM2PrivateKey
) -> None:
    def dup_ext(tbs: x509.TbsCertificate) -> None:
        exts = list(tbs["extensions"])
        tbs["extensions"] = x509.Extensions([*exts, exts[0]])

    def v1_with_exts(tbs: x509.TbsCertificate) -> None:
        tbs["version"] = "v1"

    def inner_alg(tbs: x509.TbsCertificate) -> None:
        tbs["signature"] = {"algorithm": "1.2.156.10197.1.501", "parameters": core.Null()}

    for mutate in (dup_ext, v1_with_exts, inner_alg):
        with pytest.raises(DecodeError):
            Certificate.from_der(resign(root, root_key, mutate))


def test_signature_algorithm_parameters() -> None:
    """NULL parameters are tolerated when parsing (both places); others rejected."""
    key = SM2PrivateKey.generate()
    n = name(CN="null-params")
    cert = build_certificate(
        subject=n,
        public_key=key.public_key(),
        issuer=n,
        issuer_public_key=key.public_key(),
        signer=key.sign,
        serial=7,
        not_before=NB,
        not_after=NA,
        profile=Profile.ROOT_CA,
    )
    for params, ok in ((core.Null(), True), (core.Integer(1), False)):
        asn1 = cert.asn1
        tbs = asn1["tbs_certificate"]
        alg = {"algorithm": "1.2.156.10197.1.501", "parameters": params}
        tbs["signature"] = alg
        tbs_der = tbs.dump(force=True)
        der = X509Certificate(
            {
                "tbs_certificate": TbsCertificate.load(tbs_der),
                "signature_algorithm": alg,
                "signature_value": key.sign(tbs_der),
            }
        ).dump(force=True)
        if ok:
            again = Certificate.from_der(der)
            again.verify_signature(key.public_key())
        else:
            with pytest.raises(DecodeError):
                Certificate.from_der(der)


def test_bare_sm2_oid_public_key_form(root: Certificate, root_key: SM2PrivateKey) -> None:
    """SubjectPublicKeyInfo with algorithm 1.2.156.10197.1.301 (seen in some CAs)."""
    from mstcrypt.formats.keys import AlgorithmIdentifier, SubjectPublicKeyInfo

    key = SM2PrivateKey.generate()

    def bare(tbs: x509.TbsCertificate) -> None:
        tbs["subject_public_key_info"] = SubjectPublicKeyInfo(
            {
                "algorithm": AlgorithmIdentifier(
                    {
                        "algorithm": "1.2.156.10197.1.301",
                        "parameters": core.ObjectIdentifier("1.2.156.10197.1.301"),
                    }
                ),
                "public_key": key.public_key().to_bytes(),
            }
        )

    _, leaf = issue(root, root_key, Profile.DEVICE_SIGN)
    cert = Certificate.from_der(resign(leaf, root_key, bare))
    assert cert.public_key == key.public_key()
    assert b"\x06\x08\x2a\x81\x1c\xcf\x55\x01\x82\x2d\x06" in cert.public_key_der
    cert.verify_signature(root_key.public_key())


def test_non_sm2_certificate_is_unsupported() -> None:
    from cryptography import x509 as cx509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    n = cx509.Name([cx509.NameAttribute(NameOID.COMMON_NAME, "p256")])
    cert = (
        cx509.CertificateBuilder()
        .subject_name(n)
        .issuer_name(n)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NB)
        .not_valid_after(NA)
        .sign(key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    with pytest.raises(UnsupportedError):
        Certificate.from_der(cert.public_bytes(Encoding.DER))


# --- errors ----------------------------------------------------------------------------------


def test_certificate_error() -> None:
    err = CertificateError("revoked", "gone", certificate="CN=x")
    assert isinstance(err, VerificationError) and isinstance(err, MstCryptError)
    assert err.reason == "revoked" and err.certificate == "CN=x"
    assert "gone" in str(err) and "CN=x" in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert (again.reason, again.certificate, str(again)) == ("revoked", "CN=x", str(err))
    assert len(set(REASONS)) == 15
    with pytest.raises(ValueError):
        CertificateError("nope")


# --- CSRs ------------------------------------------------------------------------------------


def test_csr_round_trip_and_verify() -> None:
    key = SM2PrivateKey.generate()
    subject = name(C="CN", O="Example Org", CN="alice", email="alice@example.com")
    csr = build_csr(subject, key.public_key(), lambda tbs: key.sign(tbs))
    csr.verify()
    assert csr.subject == subject
    assert csr.subject_str == "emailAddress=alice@example.com,CN=alice,O=Example Org,C=CN"
    assert csr.public_key == key.public_key()
    assert csr.signature_algorithm == "1.2.156.10197.1.501"
    assert csr.attribute_types == () and csr.requested_extensions == {}
    assert CertificationRequest.from_der(csr.der) == csr
    assert CertificationRequest.from_pem(csr.pem) == csr
    assert csr.pem.startswith(b"-----BEGIN CERTIFICATE REQUEST-----")
    assert SM2_WITH_SM3_ALG_DER in csr.der
    key.public_key().verify(csr.signature, csr.tbs_der)
    with pytest.raises(AttributeError):
        csr.x = 1  # type: ignore[attr-defined]


def test_csr_with_subject_alt_names() -> None:
    key = SM2PrivateKey.generate()
    csr = build_csr(
        name(CN="gw"), key.public_key(), key.sign, subject_alt_names=["gw.example.com", "1.2.3.4"]
    )
    csr.verify()
    assert csr.attribute_types == ("1.2.840.113549.1.9.14",)
    assert csr.requested_extensions == {"2.5.29.17": False}
    assert csr.subject_alt_names == ("gw.example.com", "1.2.3.4")


def test_csr_tampered_and_strict() -> None:
    key = SM2PrivateKey.generate()
    csr = build_csr(name(CN="alice"), key.public_key(), key.sign)
    tampered = csr.der.replace(b"alice", b"alicf")
    bad = CertificationRequest.from_der(tampered)
    with pytest.raises(CertificateError) as ei:
        bad.verify()
    assert ei.value.reason == "bad_signature"
    for der in (csr.der + b"\x00", csr.der[:-2], b"\x30\x00", _long_form_length(csr.der)):
        with pytest.raises(DecodeError):
            CertificationRequest.from_der(der)
    with pytest.raises(PolicyError):
        build_csr(name(CN="alice"), key.public_key(), SM2PrivateKey.generate().sign)
    with pytest.raises(PolicyError):
        build_csr("CN=alice", key.public_key(), key.sign)  # type: ignore[arg-type]


# --- CRLs ------------------------------------------------------------------------------------


def test_crl_round_trip(root: Certificate, root_key: SM2PrivateKey) -> None:
    t = datetime(2030, 3, 1, tzinfo=UTC)
    entries = [
        RevokedEntry(0x1234, t - timedelta(days=2), "key_compromise"),
        RevokedEntry(7, t - timedelta(days=1), None),
        RevokedEntry((1 << 159) - 1, t, "cessation_of_operation"),
    ]
    crl = build_crl(
        issuer=root.subject,
        issuer_public_key=root_key.public_key(),
        signer=lambda tbs: root_key.sign(tbs),
        number=42,
        this_update=t,
        next_update=t + timedelta(days=7),
        entries=entries,
    )
    assert crl.issuer == root.subject and crl.issuer_str == root.subject_str
    assert crl.this_update == t and crl.next_update == t + timedelta(days=7)
    assert crl.number == 42
    assert crl.authority_key_id == root.subject_key_id
    assert dict(crl.entries) == {e.serial: e for e in entries}
    assert crl.is_revoked(7) == entries[1]
    assert crl.is_revoked(8) is None
    assert not crl.is_delta and crl.unsupported_critical_extensions == ()
    assert crl.signature_algorithm == "1.2.156.10197.1.501"
    assert crl.der.count(SM2_WITH_SM3_ALG_DER) == 2
    asn1 = crl._asn1
    assert asn1["tbs_cert_list"]["version"].native == "v2"
    serials = [
        rc["user_certificate"].native for rc in asn1["tbs_cert_list"]["revoked_certificates"]
    ]
    assert serials == sorted(serials)
    crl.verify_signature(root_key.public_key())
    with pytest.raises(CertificateError) as ei:
        crl.verify_signature(SM2PrivateKey.generate().public_key())
    assert ei.value.reason == "crl_invalid"
    assert CRL.from_der(crl.der) == crl
    assert CRL.from_pem(crl.pem) == crl
    assert crl.pem.startswith(b"-----BEGIN X509 CRL-----")
    assert pickle.loads(pickle.dumps(crl)) == crl
    with pytest.raises(TypeError):
        crl.entries[1] = entries[0]  # type: ignore[index]


def test_empty_crl_omits_the_list(root: Certificate, root_key: SM2PrivateKey) -> None:
    crl = build_crl(
        issuer=root,
        issuer_public_key=root_key.public_key(),
        signer=root_key.sign,
        number=0,
        this_update=NB,
        next_update=datetime(2051, 1, 1, tzinfo=UTC),
        entries=[],
    )
    tbs = crl._asn1["tbs_cert_list"]
    assert isinstance(tbs["revoked_certificates"], core.Void)
    assert tbs["next_update"].name == "general_time"
    assert crl.entries == {} and crl.number == 0
    assert crl.authority_key_id == root.subject_key_id


@pytest.mark.parametrize(
    "kwargs",
    [
        {"number": -1},
        {"number": 1 << 160},
        {"next_update": NB},
        {"this_update": datetime(2030, 1, 1)},
        {"entries": [RevokedEntry(1, NB), RevokedEntry(1, NB)]},
        {"entries": [RevokedEntry(0, NB)]},
        {"entries": [RevokedEntry(1, NB, "remove_from_crl")]},
        {"entries": [RevokedEntry(1, NB, "stolen")]},
        {"entries": [(1, NB)]},
        {"signer": lambda tbs: SM2PrivateKey.generate().sign(tbs)},
        {"issuer": "CN=x"},
    ],
)
def test_build_crl_rejects(
    kwargs: dict[str, object], root: Certificate, root_key: SM2PrivateKey
) -> None:
    args: dict[str, object] = {
        "issuer": root.subject,
        "issuer_public_key": root_key.public_key(),
        "signer": root_key.sign,
        "number": 1,
        "this_update": NB,
        "next_update": NA,
        "entries": [],
    }
    args.update(kwargs)
    with pytest.raises(PolicyError):
        build_crl(**args)  # type: ignore[arg-type]


def test_crl_strict_parsing(root: Certificate, root_key: SM2PrivateKey) -> None:
    crl = build_crl(
        issuer=root.subject,
        issuer_public_key=root_key.public_key(),
        signer=root_key.sign,
        number=1,
        this_update=NB,
        next_update=NA,
        entries=[RevokedEntry(5, NB, "superseded")],
    )
    for der in (crl.der + b"\x00", crl.der[:-1], b"", b"\x30\x00", bytes(100)):
        with pytest.raises(DecodeError):
            CRL.from_der(der)
    with pytest.raises(DecodeError):
        CRL.from_pem(root.pem)  # a certificate, not a CRL


# --- Issuer ----------------------------------------------------------------------------------


def test_issuer_convenience() -> None:
    key = SM2PrivateKey.generate()
    ca = Issuer.self_signed(name(C="CN", CN="Conv Root"), key.public_key(), key.sign)
    assert ca.certificate.is_self_signed() and ca.certificate.is_ca
    assert ca.certificate.not_after - ca.certificate.not_before == timedelta(days=3650)
    assert 0 < ca.certificate.serial < 1 << 127
    dev_key = SM2PrivateKey.generate()
    csr = build_csr(
        name(C="CN", CN="dev"), dev_key.public_key(), dev_key.sign, subject_alt_names=["d@x.cn"]
    )
    cert = ca.issue_from_csr(csr, profile=Profile.DEVICE_SIGN)
    assert cert.subject == csr.subject and cert.public_key == dev_key.public_key()
    assert cert.subject_alt_names == ("d@x.cn",)
    assert cert.not_after - cert.not_before == timedelta(days=730)
    assert cert.authority_key_id == ca.certificate.subject_key_id
    cert.verify_signature(ca.public_key)
    # validity is clipped to the CA's own
    late = ca.issue(
        subject=name(CN="late"),
        public_key=dev_key.public_key(),
        profile=Profile.SUB_CA,
        not_before=ca.certificate.not_after - timedelta(days=10),
    )
    assert late.not_after == ca.certificate.not_after
    tampered = CertificationRequest.from_der(csr.der.replace(b"dev", b"deX"))
    with pytest.raises(CertificateError):
        ca.issue_from_csr(tampered, profile=Profile.DEVICE_SIGN)
    crl = ca.crl(number=3, entries=[RevokedEntry(cert.serial, cert.not_before, "superseded")])
    crl.verify_signature(ca.public_key)
    assert crl.is_revoked(cert.serial) is not None
    assert crl.next_update - crl.this_update == timedelta(days=7)
    serials = {random_serial() for _ in range(50)}
    assert len(serials) == 50 and all(0 < s < 1 << 127 for s in serials)
    with pytest.raises(PolicyError):
        Issuer("not a cert", key.sign)  # type: ignore[arg-type]


# --- the memo ---------------------------------------------------------------------------


def _reachable(obj: object, limit: int = 10_000) -> list[object]:
    """Every object reachable from ``obj`` through the garbage collector's referents."""
    seen, todo, out = {id(obj)}, [obj], []
    while todo and len(out) < limit:
        for ref in gc.get_referents(todo.pop()):
            if id(ref) not in seen and not isinstance(ref, type):
                seen.add(id(ref))
                out.append(ref)
                todo.append(ref)
    return out


def test_a_parsed_certificate_keeps_no_asn1_tree(
    root: Certificate, root_key: SM2PrivateKey
) -> None:
    """Up to 2,048 parsed certificates stay memoised for the life of a server. Each
    holds plain values (and its public key), not its asn1crypto tree: a hundred objects
    per certificate made every full pass of the cyclic collector walk some 250k objects
    (60–120 ms with every thread paused). The accessors still answer from the DER."""
    _, cert = issue(
        root,
        root_key,
        Profile.GATEWAY_SIGN,
        subject=name(C="CN", O="Example Org", CN="gw.example", serial_number="7"),
        subject_alt_names=["gw.example", "10.0.0.1"],
        crl_urls=["http://crl.example/issuing.crl"],
    )
    cert = Certificate.from_der(bytes(bytearray(cert.der)))
    held = _reachable(cert)
    assert not [o for o in held if isinstance(o, core.Asn1Value)]
    assert sum(gc.is_tracked(o) for o in held) < 40, sorted({type(o).__name__ for o in held})
    fresh = x509.Certificate.load(cert.der)
    tbs = fresh["tbs_certificate"]
    assert cert.tbs_der == tbs.dump()
    assert cert.signature == fresh["signature_value"].native
    assert cert.signature_algorithm == fresh["signature_algorithm"]["algorithm"].dotted
    assert cert.version == 3
    assert cert.public_key_der == tbs["subject_public_key_info"].dump()
    assert cert.common_names == ("gw.example",)
    by_oid = {e["extn_id"].dotted: e for e in tbs["extensions"]}
    assert dict(cert.extensions) == {o: bool(e["critical"].native) for o, e in by_oid.items()}
    for oid, ext in by_oid.items():
        assert cert.extension_value(oid) == ext["extn_value"].contents
    assert cert.extension_value("1.2.3.4") is None
    assert cert.issued_by_name(root) and cert.has_subject_alt_name


def test_issuer_names_equal_under_rfc5280_but_not_bytewise(
    root: Certificate, root_key: SM2PrivateKey
) -> None:
    """issued_by_name compares the encodings first, then by RFC 5280 §7.1 (case and
    inner spaces folded) when they differ."""
    same = name(C="CN", O="EXAMPLE   org", OU="mst", CN="example root ca")
    other = name(C="CN", O="Example Org", OU="MST", CN="Another Root CA")
    for issuer, expected in ((same, True), (other, False)):
        _, cert = issue(root, root_key, Profile.DEVICE_SIGN, issuer=issuer)
        assert (cert.issuer.dump() == root.subject.dump()) is False
        assert cert.issued_by_name(root) is expected
