"""mstcrypt.pki.validate_path: a corpus of good and bad certification paths, each bad
one asserting the exact CertificateError reason (and which certificate it names)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from asn1crypto import x509

from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import PolicyError, VerificationError
from mstcrypt.pki import (
    CRL,
    Certificate,
    CertificateError,
    Issuer,
    Profile,
    RevokedEntry,
    build_certificate,
    build_crl,
    name,
    validate_path,
)
from mstcrypt.pki._common import TbsCertificate, X509Certificate
from mstcrypt.pki.validate import MAX_PATH_LENGTH

NB = datetime(2030, 1, 1, tzinfo=UTC)
NA = datetime(2032, 1, 1, tzinfo=UTC)
AT = datetime(2030, 6, 1, tzinfo=UTC)
ORG = "Example Org"


@dataclass
class CA:
    key: SM2PrivateKey
    issuer: Issuer

    @property
    def cert(self) -> Certificate:
        return self.issuer.certificate

    def crl(self, entries: Sequence[RevokedEntry] = (), **kw: object) -> CRL:
        args: dict[str, object] = {
            "number": 1,
            "entries": entries,
            "this_update": AT - timedelta(days=1),
            "next_update": AT + timedelta(days=6),
        }
        args.update(kw)
        return self.issuer.crl(**args)  # type: ignore[arg-type]


def make_root(cn: str = "Root CA", path_len: int | None = None, **kw: object) -> CA:
    key = SM2PrivateKey.generate()
    args: dict[str, object] = {"not_before": NB, "not_after": NA, "path_len": path_len}
    args.update(kw)
    return CA(
        key,
        Issuer.self_signed(name(C="CN", O=ORG, CN=cn), key.public_key(), key.sign, **args),  # type: ignore[arg-type]
    )


def make_sub(parent: CA, cn: str, profile: Profile = Profile.SUB_CA, **kw: object) -> CA:
    key = SM2PrivateKey.generate()
    args: dict[str, object] = {"not_before": NB, "not_after": NA}
    args.update(kw)
    cert = parent.issuer.issue(
        subject=name(C="CN", O=ORG, CN=cn),
        public_key=key.public_key(),
        profile=profile,
        **args,  # type: ignore[arg-type]
    )
    return CA(key, Issuer(cert, key.sign))


def make_leaf(
    parent: CA, cn: str = "alice", profile: Profile = Profile.DEVICE_SIGN, **kw: object
) -> Certificate:
    return make_sub(parent, cn, profile, **kw).cert


def resign(
    cert: Certificate, key: SM2PrivateKey, mutate: Callable[[x509.TbsCertificate], None]
) -> Certificate:
    asn1 = cert.asn1
    tbs = asn1["tbs_certificate"]
    mutate(tbs)
    tbs_der = tbs.dump(force=True)
    der = X509Certificate(
        {
            "tbs_certificate": TbsCertificate.load(tbs_der),
            "signature_algorithm": {"algorithm": "1.2.156.10197.1.501"},
            "signature_value": key.sign(tbs_der),
        }
    ).dump(force=True)
    return Certificate.from_der(der)


def edit_extensions(
    drop: Sequence[str] = (), add: Sequence[x509.Extension] = ()
) -> Callable[[x509.TbsCertificate], None]:
    def mutate(tbs: x509.TbsCertificate) -> None:
        exts = [e for e in tbs["extensions"] if e["extn_id"].dotted not in drop]
        tbs["extensions"] = x509.Extensions([*exts, *add])

    return mutate


def key_usage_ext(*bits: str) -> x509.Extension:
    return x509.Extension({"extn_id": "key_usage", "critical": True, "extn_value": set(bits)})


@dataclass
class World:
    root: CA
    sub: CA
    leaf: Certificate
    root_crl: CRL
    sub_crl: CRL

    def check(self, leaf: Certificate | None = None, **kw: object) -> list[Certificate]:
        args: dict[str, object] = {
            "anchors": [self.root.cert],
            "intermediates": [self.sub.cert],
            "crls": [self.root_crl, self.sub_crl],
            "at": AT,
        }
        args.update(kw)
        return validate_path(leaf or self.leaf, **args)  # type: ignore[arg-type]

    def reason(self, leaf: Certificate | None = None, **kw: object) -> CertificateError:
        with pytest.raises(CertificateError) as ei:
            self.check(leaf, **kw)
        return ei.value


@pytest.fixture(scope="module")
def w() -> World:
    root = make_root()
    sub = make_sub(root, "Sub CA")
    leaf = make_leaf(sub)
    return World(root, sub, leaf, root.crl(), sub.crl())


# --- good paths ------------------------------------------------------------------------------


def test_valid_three_level_path(w: World) -> None:
    path = w.check(
        key_usage={"digital_signature", "non_repudiation"}, extended_key_usage="client_auth"
    )
    assert path == [w.leaf, w.sub.cert, w.root.cert]
    assert w.check(extended_key_usage="1.3.6.1.5.5.7.3.4") == path  # dotted emailProtection


def test_valid_at_defaults_to_now() -> None:
    root = Issuer.self_signed(name(CN="Now Root"), *_kp())
    key = SM2PrivateKey.generate()
    leaf = root.issue(subject=name(CN="now"), public_key=key.public_key(), profile="device_sign")
    assert validate_path(leaf, anchors=[root.certificate], crls=[root.crl(number=1)]) == [
        leaf,
        root.certificate,
    ]


def _kp() -> tuple[object, object]:
    key = SM2PrivateKey.generate()
    return key.public_key(), key.sign


def test_leaf_signed_directly_by_root(w: World) -> None:
    leaf = make_leaf(w.root, "direct")
    assert w.check(leaf) == [leaf, w.root.cert]


def test_revocation_check_can_be_relaxed(w: World) -> None:
    assert w.check(crls=[], require_revocation_check=False)[0] == w.leaf
    # a CRL that is supplied is still used
    revoked = w.sub.crl([RevokedEntry(w.leaf.serial, AT - timedelta(days=3))])
    err = w.reason(crls=[revoked], require_revocation_check=False)
    assert err.reason == "revoked"


def test_anchor_as_leaf(w: World) -> None:
    assert validate_path(w.root.cert, anchors=[w.root.cert], at=AT) == [w.root.cert]


def test_extra_anchors_and_intermediates_are_ignored(w: World) -> None:
    other = make_root("Other Root")
    other_sub = make_sub(other, "Other Sub")
    path = w.check(
        anchors=[other.cert, w.root.cert],
        intermediates=[other_sub.cert, make_sub(w.root, "Sibling").cert, w.sub.cert],
        crls=[other.crl(), w.root_crl, w.sub_crl],
    )
    assert path == [w.leaf, w.sub.cert, w.root.cert]


def test_four_level_path_within_path_lengths() -> None:
    root = make_root("PL Root")
    a = make_sub(root, "PL A", path_len=1)
    b = make_sub(a, "PL B")  # path_len 0
    leaf = make_leaf(b)
    path = validate_path(
        leaf,
        anchors=[root.cert],
        intermediates=[b.cert, a.cert],
        crls=[root.crl(), a.crl(), b.crl()],
        at=AT,
    )
    assert path == [leaf, b.cert, a.cert, root.cert]


def test_same_name_ca_chosen_by_key_identifier(w: World) -> None:
    twin = make_sub(w.root, "Sub CA")  # same name as w.sub, other key
    assert twin.cert.subject == w.sub.cert.subject
    assert w.check(intermediates=[twin.cert, w.sub.cert])[1] == w.sub.cert


def test_same_name_ca_without_key_identifiers_backtracks(w: World) -> None:
    twin = make_sub(w.root, "Sub CA")
    leaf = resign(w.leaf, w.sub.key, edit_extensions(drop=["2.5.29.35"]))
    assert leaf.authority_key_id is None
    path = w.check(
        leaf, intermediates=[twin.cert, w.sub.cert], crls=[w.root_crl, w.sub_crl, twin.crl()]
    )
    assert path[1] == w.sub.cert
    # and with only the wrong twin the signature check says so
    err = w.reason(leaf, intermediates=[twin.cert], crls=[w.root_crl, twin.crl()])
    assert err.reason == "bad_signature"


def test_any_extended_key_usage_and_absent_eku(w: World) -> None:
    any_eku = x509.Extension(
        {
            "extn_id": "extended_key_usage",
            "critical": False,
            "extn_value": ["any_extended_key_usage"],
        }
    )
    leaf = resign(w.leaf, w.sub.key, edit_extensions(drop=["2.5.29.37"], add=[any_eku]))
    assert w.check(leaf, extended_key_usage="code_signing")[0] == leaf
    no_eku = resign(w.leaf, w.sub.key, edit_extensions(drop=["2.5.29.37"]))
    assert w.check(no_eku, extended_key_usage="server_auth")[0] == no_eku


def test_non_critical_unknown_extension_is_fine(w: World) -> None:
    leaf = make_leaf(w.sub, extra_extensions=[("1.2.3.4", False, b"\x05\x00")])
    assert w.check(leaf)[0] == leaf


def test_fresh_crl_wins_over_expired_one(w: World) -> None:
    stale = w.sub.crl(number=1, this_update=NB, next_update=NB + timedelta(days=7))
    fresh = w.sub.crl(number=2)
    assert w.check(crls=[w.root_crl, stale, fresh])[0] == w.leaf
    revoking = w.sub.crl([RevokedEntry(w.leaf.serial, AT - timedelta(days=1))], number=3)
    assert w.reason(crls=[w.root_crl, fresh, revoking]).reason == "revoked"


def test_openssl_style_crl_without_next_update_is_accepted(w: World) -> None:
    # RFC 5280 requires nextUpdate, but GmSSL's crlgen omits it unless asked
    tbs = w.sub_crl._asn1["tbs_cert_list"]
    assert w.sub_crl.next_update is not None
    from asn1crypto import crl as acrl

    t = acrl.TbsCertList.load(tbs.dump())
    del t["next_update"]
    tbs_der = t.dump(force=True)
    der = acrl.CertificateList(
        {
            "tbs_cert_list": acrl.TbsCertList.load(tbs_der),
            "signature_algorithm": {"algorithm": "1.2.156.10197.1.501"},
            "signature": w.sub.key.sign(tbs_der),
        }
    ).dump(force=True)
    no_next = CRL.from_der(der)
    assert no_next.next_update is None
    assert w.check(crls=[w.root_crl, no_next])[0] == w.leaf


# --- bad paths -------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["leaf", "sub", "root"])
def test_expired(which: str) -> None:
    late = {"not_before": NB, "not_after": AT - timedelta(seconds=1)}
    root = make_root(**(late if which == "root" else {}))
    sub = make_sub(root, "Sub CA", **(late if which == "sub" else {}))
    leaf = make_leaf(sub, **(late if which == "leaf" else {}))
    with pytest.raises(CertificateError) as ei:
        validate_path(
            leaf, anchors=[root.cert], intermediates=[sub.cert], crls=[root.crl(), sub.crl()], at=AT
        )
    assert ei.value.reason == "expired"
    assert (
        ei.value.certificate
        == {"leaf": leaf, "sub": sub.cert, "root": root.cert}[which].subject_str
    )


def test_not_yet_valid(w: World) -> None:
    leaf = make_leaf(w.sub, not_before=AT + timedelta(seconds=1))
    err = w.reason(leaf)
    assert (err.reason, err.certificate) == ("not_yet_valid", leaf.subject_str)
    assert w.reason(at=NB - timedelta(days=1)).reason == "not_yet_valid"  # the anchor


def test_issuer_name_mismatch_is_name_chain(w: World) -> None:
    """Signed by the Sub CA key (AKI says so) but naming another issuer."""
    leaf = build_certificate(
        subject=name(C="CN", O=ORG, CN="misnamed"),
        public_key=SM2PrivateKey.generate().public_key(),
        issuer=name(C="CN", O=ORG, CN="Sub CA 2"),
        issuer_public_key=w.sub.key.public_key(),
        signer=w.sub.key.sign,
        serial=99,
        not_before=NB,
        not_after=NA,
        profile=Profile.DEVICE_SIGN,
    )
    assert leaf.authority_key_id == w.sub.cert.subject_key_id
    err = w.reason(leaf)
    assert (err.reason, err.certificate) == ("name_chain", leaf.subject_str)


def test_certificate_from_another_ca(w: World) -> None:
    other = make_root("Other Root")
    leaf = make_leaf(other)
    err = w.reason(leaf)
    assert (err.reason, err.certificate) == ("unknown_issuer", leaf.subject_str)
    # same issuer name as our root, different key: AKI rules it out
    impostor = make_root("Root CA")
    assert w.reason(make_leaf(impostor)).reason == "unknown_issuer"


def test_missing_intermediate_is_unknown_issuer(w: World) -> None:
    err = w.reason(intermediates=[])
    assert (err.reason, err.certificate) == ("unknown_issuer", w.leaf.subject_str)


def test_bad_signature_bit_flip_in_signature(w: World) -> None:
    der = bytearray(w.leaf.der)
    der[-1] ^= 0x01  # last byte of s
    leaf = Certificate.from_der(bytes(der))
    err = w.reason(leaf)
    assert (err.reason, err.certificate) == ("bad_signature", leaf.subject_str)


def test_bad_signature_bit_flip_in_tbs(w: World) -> None:
    der = w.leaf.der
    i = der.index(b"alice")
    tampered = der[:i] + b"alicf" + der[i + 5 :]  # one bit of the subject CN
    leaf = Certificate.from_der(tampered)
    assert leaf.subject_str.startswith("CN=alicf")
    err = w.reason(leaf)
    assert (err.reason, err.certificate) == ("bad_signature", leaf.subject_str)


def test_bad_signature_on_intermediate(w: World) -> None:
    der = bytearray(w.sub.cert.der)
    der[-1] ^= 0x80
    sub = Certificate.from_der(bytes(der))
    err = w.reason(intermediates=[sub])
    assert (err.reason, err.certificate) == ("bad_signature", sub.subject_str)


def test_intermediate_without_ca_flag(w: World) -> None:
    sub = resign(w.sub.cert, w.root.key, edit_extensions(drop=["2.5.29.19"]))
    assert not sub.is_ca and "key_cert_sign" in sub.key_usage
    err = w.reason(intermediates=[sub])
    assert (err.reason, err.certificate) == ("not_ca", sub.subject_str)


def test_end_entity_used_as_ca(w: World) -> None:
    fake_ca = make_sub(w.sub, "Sub CA 9", Profile.DEVICE_SIGN)
    leaf = make_leaf(fake_ca)
    err = w.reason(
        leaf, intermediates=[w.sub.cert, fake_ca.cert], crls=[w.root_crl, w.sub_crl, fake_ca.crl()]
    )
    assert (err.reason, err.certificate) == ("not_ca", fake_ca.cert.subject_str)


def test_intermediate_without_key_cert_sign(w: World) -> None:
    sub = resign(
        w.sub.cert, w.root.key, edit_extensions(["2.5.29.15"], [key_usage_ext("crl_sign")])
    )
    err = w.reason(intermediates=[sub])
    assert (err.reason, err.certificate) == ("key_usage", sub.subject_str)


def test_path_length_exceeded_under_root() -> None:
    root = make_root("PL0 Root", path_len=0)
    a = make_sub(root, "PL0 A", path_len=5)
    b = make_sub(a, "PL0 B")
    leaf = make_leaf(b)
    with pytest.raises(CertificateError) as ei:
        validate_path(
            leaf,
            anchors=[root.cert],
            intermediates=[a.cert, b.cert],
            crls=[root.crl(), a.crl(), b.crl()],
            at=AT,
        )
    assert (ei.value.reason, ei.value.certificate) == ("path_length", root.cert.subject_str)
    # one intermediate is within pathLen 0 of nothing: root pathLen 0 forbids even that
    leaf_a = make_leaf(a)
    with pytest.raises(CertificateError) as ei:
        validate_path(
            leaf_a, anchors=[root.cert], intermediates=[a.cert], crls=[root.crl(), a.crl()], at=AT
        )
    assert ei.value.reason == "path_length"
    # a leaf directly under the root is fine
    direct = make_leaf(root)
    assert validate_path(direct, anchors=[root.cert], crls=[root.crl()], at=AT)[0] == direct


def test_path_length_of_sub_ca(w: World) -> None:
    below = make_sub(w.sub, "Sub Sub CA")  # w.sub has pathLen 0
    leaf = make_leaf(below)
    err = w.reason(
        leaf,
        intermediates=[w.sub.cert, below.cert],
        crls=[w.root_crl, w.sub_crl, below.crl()],
    )
    assert (err.reason, err.certificate) == ("path_length", w.sub.cert.subject_str)


def test_revoked_leaf(w: World) -> None:
    crl = w.sub.crl([RevokedEntry(w.leaf.serial, AT - timedelta(days=2), "key_compromise")])
    err = w.reason(crls=[w.root_crl, crl])
    assert (err.reason, err.certificate) == ("revoked", w.leaf.subject_str)
    assert "key_compromise" in str(err)


def test_revoked_intermediate(w: World) -> None:
    crl = w.root.crl([RevokedEntry(w.sub.cert.serial, AT - timedelta(days=2), "ca_compromise")])
    err = w.reason(crls=[crl, w.sub_crl])
    assert (err.reason, err.certificate) == ("revoked", w.sub.cert.subject_str)


def test_encryption_certificate_where_signing_is_required(w: World) -> None:
    enc = make_leaf(w.sub, "alice", Profile.DEVICE_ENC)
    err = w.reason(enc, key_usage={"digital_signature"})
    assert (err.reason, err.certificate) == ("key_usage", enc.subject_str)
    assert w.check(enc, key_usage={"key_encipherment"})[0] == enc
    assert w.reason(key_usage={"key_encipherment"}).reason == "key_usage"


def test_leaf_without_key_usage_extension(w: World) -> None:
    leaf = resign(w.leaf, w.sub.key, edit_extensions(drop=["2.5.29.15"]))
    assert w.check(leaf)[0] == leaf  # nothing required
    assert w.reason(leaf, key_usage={"digital_signature"}).reason == "key_usage"


def test_wrong_extended_key_usage(w: World) -> None:
    err = w.reason(extended_key_usage="server_auth")
    assert (err.reason, err.certificate) == ("extended_key_usage", w.leaf.subject_str)
    gw = make_leaf(w.sub, "gw", Profile.GATEWAY_SIGN, subject_alt_names=["gw.example.com"])
    assert w.check(gw, extended_key_usage="server_auth")[0] == gw
    assert w.reason(gw, extended_key_usage="client_auth").reason == "extended_key_usage"


def test_crl_missing(w: World) -> None:
    err = w.reason(crls=[w.root_crl])
    assert (err.reason, err.certificate) == ("crl_missing", w.leaf.subject_str)
    err = w.reason(crls=[w.sub_crl])  # the root's CRL, for the intermediate, is missing
    assert (err.reason, err.certificate) == ("crl_missing", w.sub.cert.subject_str)


def test_crl_expired(w: World) -> None:
    stale = w.sub.crl(this_update=NB, next_update=AT - timedelta(seconds=1))
    err = w.reason(crls=[w.root_crl, stale])
    assert (err.reason, err.certificate) == ("crl_expired", w.sub.cert.subject_str)


def test_crl_from_the_future(w: World) -> None:
    future = w.sub.crl(this_update=AT + timedelta(hours=1), next_update=AT + timedelta(days=2))
    assert w.reason(crls=[w.root_crl, future]).reason == "crl_invalid"


def test_crl_signed_by_another_key(w: World) -> None:
    rogue = SM2PrivateKey.generate()
    common: dict[str, object] = {
        "issuer": w.sub.cert.subject,
        "signer": rogue.sign,
        "issuer_public_key": rogue.public_key(),
        "number": 5,
        "this_update": AT - timedelta(days=1),
        "next_update": AT + timedelta(days=1),
        "entries": [],
    }
    own_aki = build_crl(**common)  # type: ignore[arg-type]
    err = w.reason(crls=[w.root_crl, own_aki])
    assert (err.reason, err.certificate) == ("crl_invalid", w.sub.cert.subject_str)
    forged_aki = build_crl(**common, authority_key_id=w.sub.cert.subject_key_id)  # type: ignore[arg-type]
    assert forged_aki.authority_key_id == w.sub.cert.subject_key_id
    err = w.reason(crls=[w.root_crl, forged_aki])
    assert (err.reason, err.certificate) == ("crl_invalid", w.sub.cert.subject_str)
    assert "signature" in str(err)


def test_crl_issuer_without_crl_sign(w: World) -> None:
    sub_cert = resign(
        w.sub.cert, w.root.key, edit_extensions(["2.5.29.15"], [key_usage_ext("key_cert_sign")])
    )
    leaf = make_leaf(CA(w.sub.key, Issuer(sub_cert, w.sub.key.sign)))
    crl = build_crl(
        issuer=sub_cert,
        issuer_public_key=w.sub.key.public_key(),
        signer=w.sub.key.sign,
        number=1,
        this_update=AT - timedelta(days=1),
        next_update=AT + timedelta(days=1),
        entries=[],
    )
    err = w.reason(leaf, intermediates=[sub_cert], crls=[w.root_crl, crl])
    assert err.reason == "crl_invalid"
    assert "cRLSign" in str(err)


def test_unsupported_critical_extension(w: World) -> None:
    leaf = make_leaf(w.sub, extra_extensions=[("1.2.3.4", True, b"\x05\x00")])
    err = w.reason(leaf)
    assert (err.reason, err.certificate) == ("unsupported_critical_extension", leaf.subject_str)
    name_constraints = x509.Extension(
        {
            "extn_id": "name_constraints",
            "critical": True,
            "extn_value": {
                "permitted_subtrees": [
                    {"base": x509.GeneralName(name="dns_name", value="example.com")}
                ]
            },
        }
    )
    sub = resign(w.sub.cert, w.root.key, edit_extensions(add=[name_constraints]))
    err = w.reason(intermediates=[sub])
    assert (err.reason, err.certificate) == ("unsupported_critical_extension", sub.subject_str)


def test_anchor_that_says_it_is_not_a_ca(w: World) -> None:
    bc_false = x509.Extension(
        {"extn_id": "basic_constraints", "critical": True, "extn_value": {"ca": False}}
    )
    root = resign(w.root.cert, w.root.key, edit_extensions(["2.5.29.19"], [bc_false]))
    err = w.reason(anchors=[root])
    assert (err.reason, err.certificate) == ("not_ca", root.subject_str)


def test_malformed_serial(w: World) -> None:
    def negative(tbs: x509.TbsCertificate) -> None:
        tbs["serial_number"] = -5

    leaf = resign(w.leaf, w.sub.key, negative)
    assert leaf.serial == -5
    assert w.reason(leaf).reason == "malformed"


def test_path_too_long() -> None:
    cas = [make_root("Deep 0")]
    for i in range(1, MAX_PATH_LENGTH):
        cas.append(make_sub(cas[-1], f"Deep {i}", path_len=MAX_PATH_LENGTH))
    leaf = make_leaf(cas[-1])
    with pytest.raises(CertificateError) as ei:
        validate_path(
            leaf,
            anchors=[cas[0].cert],
            intermediates=[c.cert for c in cas[1:]],
            at=AT,
            require_revocation_check=False,
        )
    assert ei.value.reason == "path_length"


def test_reasons_are_verification_errors(w: World) -> None:
    assert isinstance(w.reason(crls=[]), VerificationError)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"at": datetime(2030, 6, 1)},
        {"anchors": []},
        {"anchors": ["root"]},
        {"crls": ["crl"]},
        {"key_usage": {"signing"}},
        {"key_usage": "digital_signature"},
        {"extended_key_usage": "bogus_usage"},
    ],
)
def test_invalid_arguments(w: World, kwargs: dict[str, object]) -> None:
    with pytest.raises(PolicyError):
        w.check(**kwargs)
    with pytest.raises(PolicyError):
        validate_path("leaf", anchors=[w.root.cert])  # type: ignore[arg-type]


def test_candidate_paths_are_bounded(w: World) -> None:
    from mstcrypt.pki.validate import MAX_CANDIDATE_PATHS

    twins = [make_sub(w.root, "Sub CA").cert for _ in range(MAX_CANDIDATE_PATHS + 4)]
    leaf = resign(w.leaf, w.sub.key, edit_extensions(drop=["2.5.29.35"]))
    crls = [w.root_crl, w.sub_crl]
    assert w.check(leaf, intermediates=[w.sub.cert, *twins], crls=crls)[1] == w.sub.cert
    # the right CA beyond the bound is not tried: the first candidate's error is reported
    err = w.reason(leaf, intermediates=[*twins, w.sub.cert], crls=crls)
    assert err.reason == "bad_signature"


def test_validity_boundaries_are_exact(w: World) -> None:
    leaf = make_leaf(w.sub, not_after=AT)
    assert w.check(leaf, at=AT)[0] == leaf
    assert w.reason(leaf, at=AT + timedelta(microseconds=1)).reason == "expired"
    early = make_leaf(w.sub, not_before=AT)
    assert w.check(early, at=AT)[0] == early
    assert w.reason(early, at=AT - timedelta(microseconds=1)).reason == "not_yet_valid"
