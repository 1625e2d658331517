"""What makes TLCP handshakes cheaper must not make them weaker: the validated-chain
cache of a context (an impostor with the same names, a revocation published after the
first handshake, expiry — each refused with the alert a full validation gives), the
reuse of the ephemeral point in the SM2 key exchange (same keys as the published
vectors), the one-call P + x̄·R, and the bounded cache of parsed certificates."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import pytest

from conftest import load_vectors
from mstcrypt.crypto.curve import N
from mstcrypt.crypto.hazmat.ec import add_mul_public, generator, mul_base
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.crypto.sm2_kex import KeyExchangeInitiator, KeyExchangeResponder
from mstcrypt.errors import InvalidKeyError, PolicyError
from mstcrypt.pki import Certificate, RevokedEntry, ValidationCache
from mstcrypt.pki import cert as cert_module
from mstcrypt.protocols.tlcp import (
    AlertDescription,
    CipherSuite,
    ClientAuth,
    TLCPClient,
    TLCPContext,
    TLCPError,
    TLCPServer,
)
from mstcrypt.protocols.tlcp.testing import TestPKI, pump

HOST = "gw.example.com"
A = AlertDescription
ECC = CipherSuite.ECC_SM4_GCM_SM3
ECDHE = CipherSuite.ECDHE_SM4_GCM_SM3


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI("speed")


@pytest.fixture(scope="module")
def ids(pki):
    return {
        "server": pki.identity("gateway", names=[HOST]),
        "client": pki.identity("terminal-001", server=False),
    }


def contexts(pki, ids, suite, **kw):
    sctx = TLCPContext(
        credentials=kw.pop("server_creds", ids["server"].credentials()),
        trust_anchors=[pki.root],
        crls=kw.pop("server_crls", ()),
        cipher_suites=[suite],
        client_auth=kw.pop("auth", ClientAuth.NONE),
    )
    cctx = TLCPContext(
        credentials=ids["client"].credentials(),
        trust_anchors=[pki.root],
        crls=kw.pop("client_crls", ()),
        cipher_suites=[suite],
        validation_cache=kw.pop("client_cache", ValidationCache()),
    )
    assert not kw
    return cctx, sctx


def handshake(cctx, sctx, *, now: datetime | None = None) -> TLCPClient:
    client = TLCPClient(cctx, server_name=HOST, now=now)
    pump(client, TLCPServer(sctx, now=now))
    assert client.handshake_complete
    return client


def refused(cctx, sctx, alert, *, now: datetime | None = None, by_server: bool = False) -> None:
    client, server = TLCPClient(cctx, server_name=HOST, now=now), TLCPServer(sctx, now=now)
    with pytest.raises(TLCPError) as err:
        pump(client, server)
    assert err.value.alert is alert, str(err.value)
    assert (server if by_server else client).closed


# --- the validated-chain cache of a context ---------------------------------------------


def test_repeated_handshakes_validate_once_per_side(pki, ids) -> None:
    cctx, sctx = contexts(pki, ids, ECDHE)
    for _ in range(3):
        handshake(cctx, sctx)
    # Signing and encryption certificates: two paths per side, validated once each.
    for ctx in (cctx, sctx):
        cache = ctx.validation_cache
        assert isinstance(cache, ValidationCache)
        assert cache.misses == 2 and cache.hits == 4


def test_without_a_cache_every_handshake_validates(pki, ids) -> None:
    cctx, sctx = contexts(pki, ids, ECC, client_cache=None)
    assert cctx.validation_cache is None
    handshake(cctx, sctx)
    handshake(cctx, sctx)
    with pytest.raises(PolicyError):
        TLCPContext(trust_anchors=[pki.root], validation_cache=object())  # type: ignore[arg-type]


def test_impostor_with_the_same_names_is_refused_after_the_genuine_was_cached(pki, ids) -> None:
    """The attacker's CA has the same name as the real root and issues dual certificates
    with the gateway's subject and host name."""
    cctx, sctx = contexts(pki, ids, ECC)
    handshake(cctx, sctx)
    rogue_ca = TestPKI("speed")
    assert rogue_ca.root.subject_str == pki.root.subject_str
    impostor = rogue_ca.identity("gateway", names=[HOST])
    assert impostor.sign_certificate.subject_str == ids["server"].sign_certificate.subject_str
    _, evil = contexts(pki, ids, ECC, server_creds=impostor.credentials())
    for _ in range(2):
        refused(cctx, evil, A.UNKNOWN_CA)
    handshake(cctx, sctx)  # the genuine server still gets through


def test_server_revoked_after_caching_is_refused_once_the_crl_is_updated(pki, ids) -> None:
    crl1 = pki.issuer.crl(number=1)
    cctx, sctx = contexts(pki, ids, ECC, client_crls=[crl1])
    handshake(cctx, sctx)
    handshake(cctx, sctx)
    assert cctx.validation_cache.hits >= 2
    revoked = RevokedEntry(ids["server"].sign_certificate.serial, datetime.now(UTC))
    cctx.crls = (pki.issuer.crl(number=2, entries=[revoked]),)
    for _ in range(2):
        refused(cctx, sctx, A.CERTIFICATE_REVOKED)


def test_client_revoked_after_caching_is_refused_by_the_server(pki, ids) -> None:
    cctx, sctx = contexts(pki, ids, ECDHE, server_crls=[pki.issuer.crl(number=1)])
    handshake(cctx, sctx)
    assert sctx.validation_cache.misses == 2
    revoked = RevokedEntry(ids["client"].enc_certificate.serial, datetime.now(UTC))
    sctx.crls = (pki.issuer.crl(number=2, entries=[revoked]),)
    refused(cctx, sctx, A.CERTIFICATE_REVOKED, by_server=True)


def test_expired_server_certificate_is_refused_even_when_cached(pki, ids) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    short = pki.identity(
        "gateway",
        names=[HOST],
        not_before=now - timedelta(hours=1),
        not_after=now + timedelta(hours=1),
    )
    cctx, sctx = contexts(
        pki,
        ids,
        ECC,
        server_creds=short.credentials(),
        client_cache=ValidationCache(ttl=timedelta(days=1)),
    )
    handshake(cctx, sctx, now=now)
    handshake(cctx, sctx, now=now + timedelta(minutes=30))
    assert cctx.validation_cache.hits == 2
    refused(cctx, sctx, A.CERTIFICATE_EXPIRED, now=now + timedelta(hours=1, seconds=1))


# --- the SM2 key exchange with a precomputed ephemeral point ---------------------------


@pytest.mark.parametrize("v", load_vectors("sm2_kex")["vectors"][:1], ids=lambda v: v["name"])
def test_key_exchange_with_ephemeral_key_objects_matches_the_vector(v) -> None:
    a_key = SM2PrivateKey.from_bytes(bytes.fromhex(v["dA"]))
    b_key = SM2PrivateKey.from_bytes(bytes.fromhex(v["dB"]))
    assert a_key.public_key().to_bytes() == bytes.fromhex(v["PA"])
    id_a, id_b = v["idA_ascii"].encode(), v["idB_ascii"].encode()
    klen = v["klen_bits"] // 8
    r_a, r_b = SM2PrivateKey(int(v["rA"], 16)), SM2PrivateKey(int(v["rB"], 16))
    a = KeyExchangeInitiator(
        a_key, b_key.public_key(), own_id=id_a, peer_id=id_b, klen=klen, confirm=True, ephemeral=r_a
    )
    b = KeyExchangeResponder(
        b_key, a_key.public_key(), own_id=id_b, peer_id=id_a, klen=klen, confirm=True, ephemeral=r_b
    )
    assert a.ephemeral == r_a.public_key().to_bytes() == bytes.fromhex(v["RA"])
    rb, sb = b.respond(a.ephemeral)
    assert rb == bytes.fromhex(v["RB"])
    k, sa = a.finish(rb, sb)
    assert k == b.confirm(sa) == bytes.fromhex(v["K"])


def test_key_exchange_ephemeral_forms_agree_and_bad_ones_are_refused() -> None:
    a_key, b_key = SM2PrivateKey.generate(), SM2PrivateKey.generate()
    r = SM2PrivateKey.generate()
    as_int = KeyExchangeInitiator(a_key, b_key.public_key(), ephemeral=r.private_int())
    as_key = KeyExchangeInitiator(a_key, b_key.public_key(), ephemeral=r)
    assert as_int.ephemeral == as_key.ephemeral
    b = KeyExchangeResponder(b_key, a_key.public_key())
    rb, _ = b.respond(as_key.ephemeral)
    assert as_int.finish(rb)[0] == as_key.finish(rb)[0] == b.key
    for bad in ("1", 1.0, True):
        with pytest.raises(PolicyError):
            KeyExchangeInitiator(a_key, b_key.public_key(), ephemeral=bad)  # type: ignore[arg-type]
    for bad_int in (0, N):
        with pytest.raises(InvalidKeyError):
            KeyExchangeInitiator(a_key, b_key.public_key(), ephemeral=bad_int)


def test_add_mul_public() -> None:
    for _ in range(8):
        p, q = mul_base(secrets.randbelow(N - 1) + 1), mul_base(secrets.randbelow(N - 1) + 1)
        k = secrets.randbelow(N - 1) + 1
        assert add_mul_public(p, q, k) == p + q * k
    g = generator()
    assert add_mul_public(g, g, 1) == mul_base(2)
    with pytest.raises(InvalidKeyError):
        add_mul_public(-(g * 5), g, 5)  # the point at infinity
    for bad in (0, N, -1):
        with pytest.raises(InvalidKeyError):
            add_mul_public(g, g, bad)


# --- parsed certificates -------------------------------------------------------------


def test_parsed_certificates_are_memoised_least_recently_used(pki, ids, monkeypatch) -> None:
    monkeypatch.setattr(cert_module, "_PARSED_MAX", 3)
    cert_module._PARSED.clear()
    a = ids["server"].sign_certificate
    others = [pki.identity(f"t{i}", server=False).sign_certificate for i in range(3)]
    first = Certificate.from_der(a.der)
    assert Certificate.from_der(bytes(a.der)) is first
    Certificate.from_der(others[0].der)
    Certificate.from_der(others[1].der)
    assert Certificate.from_der(a.der) is first  # used again: now the most recent
    Certificate.from_der(others[2].der)  # evicts others[0], not a
    assert len(cert_module._PARSED) == 3
    assert Certificate.from_der(a.der) is first
    assert bytes(others[0].der) not in cert_module._PARSED
