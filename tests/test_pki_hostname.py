"""Names in certificates: RFC 6125 host-name matching (pki.match_hostname and the TLCP
client's check), the canonical names a CA writes, and the subjectAltName policy of each
profile as the Issuer enforces it.

The attack certificates (a CN-only server certificate, wildcards in the wrong place, an
IP address written as a dNSName, a name with an embedded NUL) are built with the raw
certificate builder: our own CA refuses to issue them, which is tested too."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest
from asn1crypto import x509

from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import DecodeError, PolicyError
from mstcrypt.pki import (
    AltNames,
    Certificate,
    Issuer,
    Profile,
    build_certificate,
    build_csr,
    check_alt_names,
    match_hostname,
    name,
    spec,
)
from mstcrypt.pki.hostname import canonical_names, dns_name, ip_address, reference_identifier
from mstcrypt.protocols.tlcp import (
    AlertDescription,
    ClientAuth,
    Credentials,
    TLCPClient,
    TLCPContext,
    TLCPError,
    TLCPServer,
)
from mstcrypt.protocols.tlcp.testing import TestPKI, pump

NOW = datetime.now(UTC).replace(microsecond=0)
ROOT_KEY = SM2PrivateKey.generate()
ROOT = Issuer.self_signed(name(CN="Hostname Test Root"), ROOT_KEY.public_key(), ROOT_KEY.sign)


def raw_san(*entries: tuple[str, str | bytes]) -> tuple[str, bool, bytes]:
    """A subjectAltName extension with exactly these GeneralNames, unchecked."""
    return (
        "2.5.29.17",
        False,
        x509.GeneralNames([x509.GeneralName(name=k, value=v) for k, v in entries]).dump(),
    )


def cert(
    cn: str | None = "gw.example.com",
    *sans: tuple[str, str | bytes],
    profile: Profile = Profile.GATEWAY_SIGN,
    key: SM2PrivateKey | None = None,
) -> Certificate:
    """A server certificate built past the CA's policy checks (the attacker's CA, or a
    legacy one): subject CN ``cn`` and exactly ``sans`` (no extension when empty)."""
    key = key or SM2PrivateKey.generate()
    return build_certificate(
        subject=name(O="Example", CN=cn) if cn else name(O="Example"),
        public_key=key.public_key(),
        issuer=ROOT.certificate,
        issuer_public_key=ROOT.public_key,
        signer=ROOT_KEY.sign,
        serial=int.from_bytes(key.public_key().to_bytes()[1:17], "big") | 1,
        not_before=NOW - timedelta(minutes=5),
        not_after=NOW + timedelta(days=30),
        profile=profile,
        extra_extensions=[raw_san(*sans)] if sans else (),
    )


# --- matching ---------------------------------------------------------------------------


def test_dns_name_exact_case_and_trailing_dot() -> None:
    c = cert("ignored", ("dns_name", "Gw.Example.com"))
    for host in ("gw.example.com", "GW.EXAMPLE.COM", "gw.example.com."):
        assert match_hostname(c, host), host
    for host in ("example.com", "x.gw.example.com", "gw.example.co", "gw.example.com..", ""):
        assert not match_hostname(c, host), host
    for host in (" gw.example.com", "gw.example.com\n", "gw.example.com:443"):
        assert not match_hostname(c, host), host


def test_idn_hosts_compare_as_a_labels() -> None:
    c = cert("x", ("dns_name", "xn--bcher-kva.example"), ("dns_name", "*.xn--fiqs8s.example"))
    for host in (
        "bücher.example",
        "BÜCHER.example",
        "xn--bcher-kva.example",
        "XN--BCHER-KVA.example",
    ):
        assert match_hostname(c, host), host
    assert match_hostname(c, "gw.中国.example")  # the wildcard covers one label
    assert not match_hostname(c, "bucher.example")
    assert c.dns_names == ("xn--bcher-kva.example", "*.xn--fiqs8s.example")  # as written
    assert not match_hostname(c, "xn--zz.example")  # not a valid A-label
    assert reference_identifier("BÜCHER.Example.") == "xn--bcher-kva.example"


def test_leftmost_wildcard_matches_exactly_one_label() -> None:
    c = cert("x", ("dns_name", "*.example.com"))
    assert match_hostname(c, "a.example.com") and match_hostname(c, "XN--BCHER-KVA.example.com")
    for host in (
        "example.com",
        "a.b.example.com",
        ".example.com",
        "*.example.com",
        "a.example.org",
    ):
        assert not match_hostname(c, host), host


@pytest.mark.parametrize(
    "presented, host",
    [
        ("a.*.example.com", "a.b.example.com"),  # wildcard in a non-leftmost label
        ("*.*.example.com", "a.b.example.com"),
        ("f*.example.com", "foo.example.com"),  # partial-label wildcards
        ("*oo.example.com", "foo.example.com"),
        ("f*o.example.com", "foo.example.com"),
        ("*.com", "example.com"),  # too broad: fewer than three labels
        ("*", "localhost"),
        ("*.", "localhost"),
    ],
)
def test_attack_misplaced_wildcards_never_match(presented: str, host: str) -> None:
    assert not match_hostname(cert("x", ("dns_name", presented)), host)
    # nor as a CN of a certificate without SANs, with the CN fallback on
    assert not match_hostname(cert(presented), host, allow_common_name=True)
    # and our CA never issues one
    with pytest.raises(PolicyError):
        check_alt_names(Profile.GATEWAY_SIGN, [presented])


def test_attack_cn_only_certificate_refused_by_default() -> None:
    legacy = cert("gw.example.com")
    assert not legacy.has_subject_alt_name
    assert not match_hostname(legacy, "gw.example.com")
    assert match_hostname(legacy, "GW.example.com", allow_common_name=True)
    assert not match_hostname(legacy, "other.example.com", allow_common_name=True)
    # the most specific (last) CN only
    rdns = [
        x509.RelativeDistinguishedName(
            [
                x509.NameTypeAndValue(
                    {
                        "type": "common_name",
                        "value": x509.DirectoryString(name="utf8_string", value=cn),
                    }
                )
            ]
        )
        for cn in ("other.example.com", "gw.example.com")
    ]
    two = build_certificate(
        subject=x509.Name(name="", value=x509.RDNSequence(rdns)),
        public_key=SM2PrivateKey.generate().public_key(),
        issuer=ROOT.certificate,
        issuer_public_key=ROOT.public_key,
        signer=ROOT_KEY.sign,
        serial=7,
        not_before=NOW,
        not_after=NOW + timedelta(days=1),
        profile=Profile.GATEWAY_SIGN,
    )
    assert two.common_names == ("other.example.com", "gw.example.com")
    assert match_hostname(two, "gw.example.com", allow_common_name=True)
    assert not match_hostname(two, "other.example.com", allow_common_name=True)


@pytest.mark.parametrize(
    "sans",
    [
        [("dns_name", "other.example.com")],
        [("ip_address", "192.0.2.1")],  # any SAN at all disables the CN
        [("rfc822_name", "ops@example.com")],
        [("uniform_resource_identifier", "https://gw.example.com/")],
    ],
)
def test_attack_cn_never_used_when_a_san_exists(sans) -> None:
    c = cert("gw.example.com", *sans)
    assert not match_hostname(c, "gw.example.com")
    assert not match_hostname(c, "gw.example.com", allow_common_name=True)


def test_ip_literals_match_ip_addresses_only() -> None:
    c = cert(
        "x",
        ("ip_address", "192.0.2.1"),
        ("ip_address", "2001:db8::1"),
        ("dns_name", "gw.example.com"),
    )
    assert c.ip_addresses == (
        ipaddress.ip_address("192.0.2.1"),
        ipaddress.ip_address("2001:db8::1"),
    )
    for host in ("192.0.2.1", "2001:db8::1", "[2001:DB8::1]", "2001:0db8:0:0:0:0:0:1"):
        assert match_hostname(c, host), host
    for host in ("192.0.2.2", "::ffff:192.0.2.1", "2001:db8::2", "192.000.002.001", "0xc0.0.2.1"):
        assert not match_hostname(c, host), host


def test_attack_ip_literal_not_matched_by_dns_name() -> None:
    c = cert("192.0.2.1", ("dns_name", "192.0.2.1"), ("dns_name", "2001:db8::1"))
    assert not match_hostname(c, "192.0.2.1")
    assert not match_hostname(c, "2001:db8::1")
    legacy = cert("192.0.2.1")  # nor by the CN, fallback on or off
    assert not match_hostname(legacy, "192.0.2.1", allow_common_name=True)


def test_attack_dns_name_not_matched_by_ip_address() -> None:
    c = cert("x", ("ip_address", "192.0.2.1"))
    assert not match_hostname(c, "gw.example.com")
    assert not match_hostname(c, "1.2.0.192.in-addr.arpa")


def test_attack_embedded_nul_and_junk() -> None:
    c = cert("x", ("dns_name", "gw.example.com\x00.evil.example"))
    assert not match_hostname(c, "gw.example.com")
    assert not match_hostname(c, "gw.example.com\x00.evil.example")
    ok = cert("x", ("dns_name", "gw.example.com"))
    for host in (
        "gw.example.com\x00",
        "gw..example.com",
        "gw.example.com/x",
        "-gw.example.com",
        "fe80::1%eth0",
    ):
        assert not match_hostname(ok, host), repr(host)


def test_match_hostname_needs_a_certificate() -> None:
    with pytest.raises(PolicyError):
        match_hostname(b"not a certificate", "gw.example.com")  # type: ignore[arg-type]


def test_typed_san_entries() -> None:
    c = cert(
        "x",
        ("dns_name", "gw.example.com"),
        ("ip_address", "2001:DB8::1"),
        ("rfc822_name", "ops@example.com"),
        ("uniform_resource_identifier", "https://gw.example.com/"),
        ("registered_id", "1.2.3.4"),
    )
    assert c.subject_alt_name_entries == (
        ("dns", "gw.example.com"),
        ("ip", "2001:db8::1"),
        ("email", "ops@example.com"),
        ("uri", "https://gw.example.com/"),
        ("registered_id", ""),
    )
    assert c.dns_names == ("gw.example.com",) and c.common_names == ("x",)


def test_ip_address_of_wrong_length_is_a_decode_error() -> None:
    """An iPAddress of 5 octets (same DER size as the dNSName it replaces) does not parse."""
    der = cert("x", ("dns_name", "abcde")).der
    bad = der.replace(b"\x82\x05abcde", b"\x87\x05\x01\x02\x03\x04\x05")
    assert bad != der
    with pytest.raises(DecodeError):
        Certificate.from_der(bad)


# --- the names a CA writes ------------------------------------------------------------------


def test_dns_name_canonical_form() -> None:
    assert dns_name("GW.Example.COM.") == "gw.example.com"
    assert dns_name("Bücher.Example") == "xn--bcher-kva.example"
    assert dns_name("*.Example.com", allow_wildcard=True) == "*.example.com"
    assert dns_name("*.bücher.example", allow_wildcard=True) == "*.xn--bcher-kva.example"
    assert dns_name("localhost") == "localhost"
    assert str(ip_address("[2001:DB8:0::1]")) == "2001:db8::1"
    assert canonical_names(["127.0.0.1", "LocalHost", "localhost", "::1"]) == [
        "127.0.0.1",
        "localhost",
        "::1",
    ]


@pytest.mark.parametrize(
    "value, words",
    [
        ("*.example.com", "not allowed"),  # wildcard without allow_wildcard
        ("a.*.example.com", "leftmost"),
        ("f*.example.com", "leftmost"),
        ("-gw.example.com", "labels"),
        ("gw-.example.com", "labels"),
        ("gw_1.example.com", "labels"),
        ("gw..example.com", "labels"),
        ("a" * 64 + ".example", "labels"),
        (".".join(["a" * 60] * 5), "253"),
        ("192.0.2.1", "IP address"),
        ("1.2.3", "IP address"),
        ("xn--zz.example", "labels"),
        ("xn--ls8h.example", "labels"),
        ("", "non-empty"),
        ("gw.exa mple.com", "labels"),
    ],
)
def test_dns_name_refusals(value: str, words: str) -> None:
    with pytest.raises(PolicyError, match=words):
        dns_name(value)


def test_wildcard_needs_two_labels_after_it() -> None:
    with pytest.raises(PolicyError, match="two labels"):
        dns_name("*.com", allow_wildcard=True)


@pytest.mark.parametrize("value", ["192.0.2.256", "gw.example.com", "fe80::1%eth0", "", "1.2.3"])
def test_ip_address_refusals(value: str) -> None:
    with pytest.raises(PolicyError):
        ip_address(value)


# --- what each profile carries (the Issuer's policy) ----------------------------------------


def issue(profile: Profile, sans: list[str], **kw) -> Certificate:
    return ROOT.issue(
        subject=name(CN="x"),
        public_key=SM2PrivateKey.generate().public_key(),
        profile=profile,
        subject_alt_names=sans,
        **kw,
    )


def test_every_profile_has_a_name_policy() -> None:
    hosts = {p for p in Profile if spec(p).alt_names is AltNames.HOST}
    assert hosts == {
        Profile.GATEWAY_SIGN,
        Profile.GATEWAY_ENC,
        Profile.IM_SERVER_SIGN,
        Profile.IM_SERVER_ENC,
        Profile.MAIL_SERVER_SIGN,
        Profile.MAIL_SERVER_ENC,
    }
    assert spec(Profile.DEVICE_SIGN).alt_names is AltNames.EMAIL
    assert spec(Profile.ROOT_CA).alt_names is AltNames.NONE


def test_gateway_needs_a_host_name_and_nothing_else() -> None:
    with pytest.raises(PolicyError, match="at least one DNS name"):
        issue(Profile.GATEWAY_SIGN, [])
    for other in (["ops@example.com"], ["https://gw.example.com/"], ["gw.example.com", "a@b.cn"]):
        with pytest.raises(PolicyError, match="cannot carry"):
            issue(Profile.GATEWAY_ENC, other)
    c = issue(Profile.GATEWAY_SIGN, ["gw.example.com", "192.0.2.1", "*.gw.example.com"])
    assert c.subject_alt_name_entries == (
        ("dns", "gw.example.com"),
        ("ip", "192.0.2.1"),
        ("dns", "*.gw.example.com"),
    )


def test_devices_keep_their_email_and_refuse_host_names() -> None:
    assert issue(Profile.DEVICE_SIGN, ["alice@example.com"]).subject_alt_names == (
        "alice@example.com",
    )
    assert issue(Profile.DEVICE_ENC, []).has_subject_alt_name is False
    for host in (["phone.example.com"], ["192.0.2.1"], ["alice@example.com", "::1"]):
        with pytest.raises(PolicyError, match="cannot carry"):
            issue(Profile.DEVICE_SIGN, host)


def test_cas_and_escrow_carry_no_names() -> None:
    for profile in (Profile.SUB_CA, Profile.KMC_ESCROW_ENC, Profile.OCSP_SIGNER):
        with pytest.raises(PolicyError, match="cannot carry"):
            issue(profile, ["ca.example.com"])
        issue(profile, [])


def test_host_optional_profiles() -> None:
    assert not issue(Profile.LOGIN_SERVER_SIGN, []).has_subject_alt_name
    assert issue(Profile.WLAN_AP_SIGN, ["ap1.example.com"]).dns_names == ("ap1.example.com",)
    with pytest.raises(PolicyError):
        issue(Profile.SEAL_SERVER_SIGN, ["seal@example.com"])


def test_attack_san_smuggled_in_extra_extensions() -> None:
    """The profile check cannot be bypassed with a hand-made subjectAltName."""
    for ext in (
        raw_san(("dns_name", "evil.example.com")),
        x509.Extension(
            {
                "extn_id": "subject_alt_name",
                "critical": False,
                "extn_value": [x509.GeneralName(name="dns_name", value="evil.example.com")],
            }
        ),
    ):
        with pytest.raises(PolicyError, match="subjectAltName"):
            issue(Profile.GATEWAY_SIGN, ["gw.example.com"], extra_extensions=[ext])
        with pytest.raises(PolicyError, match="subjectAltName"):
            issue(Profile.DEVICE_SIGN, [], extra_extensions=[ext])


def test_issue_from_csr_applies_the_policy() -> None:
    key = SM2PrivateKey.generate()
    csr = build_csr(
        name(CN="phone"), key.public_key(), key.sign, subject_alt_names=["evil.example.com"]
    )
    assert csr.subject_alt_name_entries == (("dns", "evil.example.com"),)
    with pytest.raises(PolicyError, match="cannot carry"):
        ROOT.issue_from_csr(csr, profile=Profile.DEVICE_SIGN)
    gw = ROOT.issue_from_csr(csr, profile=Profile.GATEWAY_SIGN)
    assert gw.dns_names == ("evil.example.com",)  # a CA that copies the CSR (not the KMC)


# --- the TLCP client's check -------------------------------------------------------------


@pytest.fixture(scope="module")
def tpki() -> TestPKI:
    return TestPKI("Hostname")


def _server_creds(tpki: TestPKI, sans: tuple[tuple[str, str], ...], cn: str) -> Credentials:
    """Dual certificates under the test PKI's root, with exactly ``sans`` (raw)."""

    def one(profile: Profile, key: SM2PrivateKey) -> Certificate:
        return build_certificate(
            subject=name(CN=cn),
            public_key=key.public_key(),
            issuer=tpki.root,
            issuer_public_key=tpki.root.public_key,
            signer=tpki.root_key.sign,
            serial=int.from_bytes(key.public_key().to_bytes()[1:17], "big") | 1,
            not_before=NOW - timedelta(minutes=5),
            not_after=NOW + timedelta(days=1),
            profile=profile,
            extra_extensions=[raw_san(*sans)] if sans else (),
        )

    sk, ek = SM2PrivateKey.generate(), SM2PrivateKey.generate()
    return Credentials.from_keys(
        one(Profile.GATEWAY_SIGN, sk), sk, one(Profile.GATEWAY_ENC, ek), ek
    )


def _handshake(tpki: TestPKI, creds: Credentials, host: str, **ctx_kw) -> TLCPClient:
    sctx = TLCPContext(credentials=creds, client_auth=ClientAuth.NONE)
    cctx = TLCPContext(trust_anchors=[tpki.root], **ctx_kw)
    client = TLCPClient(cctx, server_name=host)
    pump(client, TLCPServer(sctx))
    return client


def test_tlcp_client_refuses_cn_only_server_by_default(tpki: TestPKI) -> None:
    legacy = _server_creds(tpki, (), "gw.example.com")
    with pytest.raises(TLCPError) as err:
        _handshake(tpki, legacy, "gw.example.com")
    assert err.value.alert == AlertDescription.BAD_CERTIFICATE
    assert "does not match the name" in str(err.value)
    # explicitly enabled: a legacy certificate without any SAN is matched on its CN
    assert _handshake(tpki, legacy, "gw.example.com", hostname_cn_fallback=True).handshake_complete
    # but never when the certificate has a SAN
    named = _server_creds(tpki, (("dns_name", "other.example.com"),), "gw.example.com")
    with pytest.raises(TLCPError):
        _handshake(tpki, named, "gw.example.com", hostname_cn_fallback=True)


def test_tlcp_client_ip_literal_and_wildcards(tpki: TestPKI) -> None:
    ip_only = _server_creds(tpki, (("ip_address", "127.0.0.1"),), "127.0.0.1")
    assert _handshake(tpki, ip_only, "127.0.0.1").handshake_complete
    dns_ip = _server_creds(tpki, (("dns_name", "127.0.0.1"),), "127.0.0.1")
    with pytest.raises(TLCPError):
        _handshake(tpki, dns_ip, "127.0.0.1")
    bad_wild = _server_creds(tpki, (("dns_name", "gw.*.example.com"),), "gw")
    with pytest.raises(TLCPError):
        _handshake(tpki, bad_wild, "gw.a.example.com")
    upper = _server_creds(tpki, (("dns_name", "GW.Example.COM"),), "gw")
    assert _handshake(tpki, upper, "gw.EXAMPLE.com").handshake_complete


def test_attack_wildcard_inside_an_a_label_does_not_even_parse() -> None:
    """``xn--*`` is no A-label: a peer's certificate carrying it is malformed (a typed
    DecodeError while parsing), never matched."""
    der = cert("x", ("dns_name", "abcde.example.com")).der
    bad = der.replace(b"abcde.example.com", b"xn--*.example.com")
    assert bad != der
    with pytest.raises(DecodeError):
        Certificate.from_der(bad)
