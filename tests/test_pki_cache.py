"""mstcrypt.pki.ValidationCache: a repeated validation is answered from memory only when
every input is the same and the answer still holds at the time asked; each attack on
the cache (another certificate with the same subject, a revocation published after the
first validation, expiry, a stale or not-yet-valid CRL, another purpose or trust set)
is refused with the reason a full validation gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import PolicyError
from mstcrypt.pki import (
    CRL,
    Certificate,
    CertificateError,
    Issuer,
    Profile,
    RevokedEntry,
    ValidationCache,
    name,
    validate_path,
)
from mstcrypt.pki._common import TbsCertificate, X509Certificate
from mstcrypt.pki.validate import CRL_CLOCK_SKEW

NB = datetime(2030, 1, 1, tzinfo=UTC)
NA = datetime(2032, 1, 1, tzinfo=UTC)
AT = datetime(2030, 6, 1, tzinfo=UTC)
ORG = "Cache Org"
SIGN = frozenset({"digital_signature"})


def make_root(cn: str = "Root CA") -> Issuer:
    key = SM2PrivateKey.generate()
    return Issuer.self_signed(
        name(C="CN", O=ORG, CN=cn), key.public_key(), key.sign, not_before=NB, not_after=NA
    )


def make_leaf(
    ca: Issuer,
    cn: str = "alice",
    *,
    profile: Profile = Profile.DEVICE_SIGN,
    not_after: datetime = NA,
    serial: int | None = None,
) -> Certificate:
    return ca.issue(
        subject=name(C="CN", O=ORG, CN=cn),
        public_key=SM2PrivateKey.generate().public_key(),
        profile=profile,
        not_before=NB,
        not_after=not_after,
        serial=serial,
    )


def crl_of(ca: Issuer, number: int, entries=(), *, this_update=None, next_update=None) -> CRL:
    tu = this_update or AT - timedelta(days=1)
    return ca.crl(
        number=number,
        entries=entries,
        this_update=tu,
        next_update=next_update or tu + timedelta(days=7),
    )


@pytest.fixture(scope="module")
def root() -> Issuer:
    return make_root()


def check(cache: ValidationCache, leaf: Certificate, root: Issuer, **kw) -> list[Certificate]:
    args = {
        "anchors": [root.certificate],
        "at": AT,
        "key_usage": SIGN,
        "require_revocation_check": False,
    }
    args.update(kw)
    return cache.validate(leaf, **args)


def test_repeated_validation_is_answered_from_the_cache(root) -> None:
    cache = ValidationCache()
    leaf = make_leaf(root)
    crls = [crl_of(root, 1)]
    first = check(cache, leaf, root, crls=crls)
    assert first == validate_path(
        leaf, anchors=[root.certificate], crls=crls, at=AT, key_usage=SIGN
    )
    assert (cache.hits, cache.misses) == (0, 1)
    assert check(cache, leaf, root, crls=crls) == first
    assert check(cache, leaf, root, crls=crls, at=AT + timedelta(minutes=10)) == first
    assert (cache.hits, cache.misses) == (2, 1)
    assert len(cache) == 1


def test_another_certificate_with_the_same_subject_is_not_served(root) -> None:
    """An impostor copies the subject, the issuer name and even the serial of a cached
    certificate, but its issuer is the attacker's own CA with the same name."""
    cache = ValidationCache()
    genuine = make_leaf(root, serial=0x1234)
    check(cache, genuine, root)
    fake_root = make_root()  # same subject name as the real root, another key
    impostor = make_leaf(fake_root, serial=0x1234)
    assert impostor.subject_str == genuine.subject_str
    assert impostor.issuer_str == genuine.issuer_str and impostor.serial == genuine.serial
    with pytest.raises(CertificateError) as full:
        validate_path(impostor, anchors=[root.certificate], at=AT, require_revocation_check=False)
    for _ in range(2):
        with pytest.raises(CertificateError) as err:
            check(cache, impostor, root)
        assert err.value.reason == full.value.reason == "unknown_issuer"
    # Closer still: the genuine certificate with only the public key replaced (issuer
    # name, key identifiers, serial and validity copied), signed with the attacker's key.
    tbs = TbsCertificate.load(genuine.tbs_der)
    tbs["subject_public_key_info"] = TbsCertificate.load(impostor.tbs_der)[
        "subject_public_key_info"
    ]
    tbs_der = tbs.dump(force=True)
    forged = Certificate.from_der(
        X509Certificate(
            {
                "tbs_certificate": TbsCertificate.load(tbs_der),
                "signature_algorithm": {"algorithm": "1.2.156.10197.1.501"},
                "signature_value": SM2PrivateKey.generate().sign(tbs_der),
            }
        ).dump(force=True)
    )
    assert forged.authority_key_id == genuine.authority_key_id
    assert forged.subject_str == genuine.subject_str and forged.serial == genuine.serial
    assert forged != genuine
    for _ in range(2):
        with pytest.raises(CertificateError) as err:
            check(cache, forged, root)
        assert err.value.reason == "bad_signature"
    assert cache.hits == 0
    check(cache, genuine, root)
    assert cache.hits == 1


def test_revocation_published_after_caching_is_refused(root) -> None:
    cache = ValidationCache()
    leaf = make_leaf(root)
    old = [crl_of(root, 1)]
    check(cache, leaf, root, crls=old)
    check(cache, leaf, root, crls=old)
    assert cache.hits == 1
    new = [crl_of(root, 2, [RevokedEntry(leaf.serial, AT - timedelta(hours=1))])]
    with pytest.raises(CertificateError) as err:
        check(cache, leaf, root, crls=new)
    assert err.value.reason == "revoked"
    # Entries made under the old CRL set are gone, not just bypassed.
    assert len(cache) == 0
    with pytest.raises(CertificateError):
        check(cache, leaf, root, crls=new)


def test_crl_added_to_a_list_in_place_is_seen(root) -> None:
    cache = ValidationCache()
    leaf = make_leaf(root)
    crls: list[CRL] = []
    check(cache, leaf, root, crls=crls)
    crls.append(crl_of(root, 1, [RevokedEntry(leaf.serial, AT - timedelta(hours=1))]))
    with pytest.raises(CertificateError) as err:
        check(cache, leaf, root, crls=crls)
    assert err.value.reason == "revoked"


def test_expired_certificate_is_refused_even_when_cached(root) -> None:
    cache = ValidationCache(ttl=timedelta(days=3650))
    leaf = make_leaf(root, not_after=AT + timedelta(hours=1))
    check(cache, leaf, root)
    check(cache, leaf, root, at=AT + timedelta(minutes=59))
    assert cache.hits == 1
    with pytest.raises(CertificateError) as err:
        check(cache, leaf, root, at=AT + timedelta(hours=1, microseconds=1))
    assert err.value.reason == "expired"
    with pytest.raises(CertificateError) as err:
        check(cache, leaf, root, at=NB - timedelta(seconds=1))
    assert err.value.reason == "not_yet_valid"


def test_stale_crl_is_refused_even_when_cached(root) -> None:
    cache = ValidationCache(ttl=timedelta(days=3650))
    leaf = make_leaf(root)
    crl = crl_of(root, 1)
    assert crl.next_update is not None
    check(cache, leaf, root, crls=[crl])
    with pytest.raises(CertificateError) as err:
        check(cache, leaf, root, crls=[crl], at=crl.next_update + timedelta(seconds=1))
    assert err.value.reason == "crl_expired"


def test_crl_not_yet_issued_at_an_earlier_time_is_refused(root) -> None:
    """The clock goes back (or a caller asks about an earlier time): a CRL that was
    current is then "issued in the future", which a full validation refuses."""
    cache = ValidationCache(ttl=timedelta(days=3650))
    leaf = make_leaf(root)
    crl = crl_of(root, 1, this_update=AT)
    check(cache, leaf, root, crls=[crl])
    earlier = AT - CRL_CLOCK_SKEW - timedelta(seconds=1)
    with pytest.raises(CertificateError) as err:
        check(cache, leaf, root, crls=[crl], at=earlier)
    assert err.value.reason == "crl_invalid"


def test_a_crl_that_was_stale_does_not_hide_a_revocation_at_an_earlier_time(root) -> None:
    """Two CRLs from the root: a stale one listing the certificate and a current one
    that does not (say, after an un-hold). At AT the stale one is ignored; asked about
    a time when the stale CRL was current, the certificate is revoked."""
    cache = ValidationCache(ttl=timedelta(days=3650))
    leaf = make_leaf(root)
    stale = crl_of(
        root,
        1,
        [RevokedEntry(leaf.serial, AT - timedelta(days=20), "certificate_hold")],
        this_update=AT - timedelta(days=15),
        next_update=AT - timedelta(days=8),
    )
    current = crl_of(root, 2)
    check(cache, leaf, root, crls=[stale, current])
    with pytest.raises(CertificateError) as err:
        check(cache, leaf, root, crls=[stale, current], at=AT - timedelta(days=9))
    assert err.value.reason == "revoked"


def test_failures_are_never_cached(root) -> None:
    cache = ValidationCache()
    leaf = make_leaf(make_root("Unknown CA"))
    for _ in range(3):
        with pytest.raises(CertificateError) as err:
            check(cache, leaf, root)
        assert err.value.reason == "unknown_issuer"
    assert len(cache) == 0 and cache.hits == 0 and cache.misses == 3


def test_another_purpose_is_another_question(root) -> None:
    cache = ValidationCache()
    device = make_leaf(root, profile=Profile.DEVICE_SIGN)  # EKU clientAuth only
    check(cache, device, root, extended_key_usage="client_auth")
    with pytest.raises(CertificateError) as err:
        check(cache, device, root, extended_key_usage="server_auth")
    assert err.value.reason == "extended_key_usage"
    enc = make_leaf(root, profile=Profile.DEVICE_ENC)
    check(cache, enc, root, key_usage=())
    with pytest.raises(CertificateError) as err:
        check(cache, enc, root, key_usage=SIGN)
    assert err.value.reason == "key_usage"


def test_other_anchors_or_revocation_policy_are_other_questions(root) -> None:
    cache = ValidationCache()
    leaf = make_leaf(root)
    check(cache, leaf, root)
    other = make_root("Other Root")
    with pytest.raises(CertificateError) as err:
        check(cache, leaf, root, anchors=[other.certificate])
    assert err.value.reason == "unknown_issuer"
    # The same anchors in a list changed in place.
    anchors = [root.certificate]
    check(cache, leaf, root, anchors=anchors)
    anchors[0] = other.certificate
    with pytest.raises(CertificateError):
        check(cache, leaf, root, anchors=anchors)
    # A CRL now required but none supplied.
    with pytest.raises(CertificateError) as err:
        check(cache, leaf, root, require_revocation_check=True)
    assert err.value.reason == "crl_missing"
    check(cache, leaf, root, require_revocation_check=False)


def test_bounded_lru_and_ttl(root) -> None:
    cache = ValidationCache(max_size=2, ttl=timedelta(minutes=10))
    a, b, c = (make_leaf(root, cn) for cn in "abc")
    for leaf in (a, b, a, c):  # c evicts b, the least recently used
        check(cache, leaf, root)
    assert len(cache) == 2
    hits = cache.hits
    check(cache, a, root)
    check(cache, c, root)
    assert cache.hits == hits + 2
    check(cache, b, root)
    assert cache.hits == hits + 2
    # Past the TTL the path is validated again.
    misses = cache.misses
    check(cache, c, root, at=AT + timedelta(minutes=11))
    assert cache.misses == misses + 1
    cache.clear()
    assert len(cache) == 0


def test_arguments_are_checked(root) -> None:
    with pytest.raises(PolicyError):
        ValidationCache(max_size=0)
    with pytest.raises(PolicyError):
        ValidationCache(ttl=timedelta(0))
    cache = ValidationCache()
    leaf = make_leaf(root)
    with pytest.raises(PolicyError):
        cache.validate(leaf.der, anchors=[root.certificate])  # type: ignore[arg-type]
    with pytest.raises(PolicyError):
        check(cache, leaf, root, key_usage="digital_signature")
    with pytest.raises(PolicyError):
        check(cache, leaf, root, at=datetime(2030, 6, 1))  # naive
    with pytest.raises(PolicyError):
        check(cache, leaf, root, crls=[leaf])
    assert "hits=" in repr(cache)
