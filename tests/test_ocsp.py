"""mstcrypt.pki.ocsp: OCSP requests and responses (RFC 6960) with SM2/SM3 — round trips,
strict parsing (negative vectors), and the client-side checks, each attack performed and
shown refused: forged or re-keyed signatures, responders the CA did not delegate,
replayed answers (other certificate, other nonce, stripped nonce, stale), and error
statuses."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from asn1crypto import core, ocsp, x509

from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import DecodeError, PolicyError, UnsupportedError
from mstcrypt.pki import Certificate, Issuer, Profile, name
from mstcrypt.pki import _common as c
from mstcrypt.pki.ocsp import (
    MAX_REQUESTS,
    OID_OCSP_NOCHECK,
    OID_OCSP_NONCE,
    CertId,
    OcspError,
    OcspRequest,
    OcspResponse,
    SingleStatus,
    _tlv,
    aia_extension,
    build_request,
    build_response,
    error_response,
    new_nonce,
    ocsp_urls,
    verify_response,
)

OID_NONCE = OID_OCSP_NONCE


@dataclass
class Pki:
    root: Issuer
    sub: Issuer
    sub_key: SM2PrivateKey
    leaf: Certificate
    responder: Certificate
    responder_key: SM2PrivateKey

    def cid(self, alg: str = "sm3", cert: Certificate | None = None) -> CertId:
        return CertId.for_certificate(cert or self.leaf, self.sub.certificate, alg)

    def respond(
        self,
        statuses: list[SingleStatus] | None = None,
        *,
        nonce: bytes | None = None,
        responder: Certificate | None = None,
        key: SM2PrivateKey | None = None,
        at: datetime | None = None,
    ) -> bytes:
        now = at or c.now()
        return build_response(
            statuses or [SingleStatus(self.cid(), "good", now, now + timedelta(hours=1))],
            responder=responder or self.responder,
            signer=(key or self.responder_key).sign,
            produced_at=now,
            nonce=nonce,
        )


def make_pki(cn: str = "Issuing CA") -> Pki:
    rk, sk, lk, ok = (SM2PrivateKey.generate() for _ in range(4))
    root = Issuer.self_signed(name(C="CN", CN="Root CA"), rk.public_key(), rk.sign)
    sub_cert = root.issue(subject=name(C="CN", CN=cn), public_key=sk.public_key(), profile="sub_ca")
    sub = Issuer(sub_cert, sk.sign)
    leaf = sub.issue(
        subject=name(CN="alice"),
        public_key=lk.public_key(),
        profile=Profile.DEVICE_SIGN,
        extra_extensions=[aia_extension(["http://ocsp.example/ocsp"])],
    )
    responder = sub.issue(
        subject=name(CN="OCSP"), public_key=ok.public_key(), profile=Profile.OCSP_SIGNER
    )
    return Pki(root, sub, sk, leaf, responder, ok)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


# ---------------------------------------------------------------- CertID, extensions ------
def test_cert_id_hashes(pki: Pki) -> None:
    issuer = pki.sub.certificate
    key_bits = issuer.public_key.to_bytes()
    assert pki.cid("sha1").issuer_name_hash == hashlib.sha1(issuer.subject.dump()).digest()
    assert pki.cid("sha1").issuer_key_hash == hashlib.sha1(key_bits).digest()
    assert pki.cid("sha256").issuer_key_hash == hashlib.sha256(key_bits).digest()
    assert pki.cid("sm3").issuer_key_hash == bytes.fromhex(c.sm3_hex(key_bits))
    assert pki.cid().serial == pki.leaf.serial
    assert pki.cid().matches_issuer(issuer)
    assert not pki.cid().matches_issuer(pki.root.certificate)
    with pytest.raises(PolicyError):
        CertId.for_certificate(pki.leaf, issuer, "md5")
    with pytest.raises(PolicyError):  # not issued by the root
        CertId.for_certificate(pki.leaf, pki.root.certificate)


def test_profile_and_aia(pki: Pki) -> None:
    assert ocsp_urls(pki.leaf) == ("http://ocsp.example/ocsp",)
    assert ocsp_urls(pki.responder) == ()
    assert pki.responder.extensions[OID_OCSP_NOCHECK] is False  # present, non-critical
    assert pki.responder.extension_value(OID_OCSP_NOCHECK) == b"\x05\x00"
    assert pki.responder.extended_key_usage == ("ocsp_signing",)
    assert OID_OCSP_NOCHECK not in pki.leaf.extensions
    with pytest.raises(PolicyError):
        aia_extension(["not a url"])


# ---------------------------------------------------------------- requests ----------------
@pytest.mark.parametrize("alg", ["sm3", "sha1", "sha256"])
def test_request_round_trip(pki: Pki, alg: str) -> None:
    nonce = new_nonce()
    der = build_request([pki.cid(alg)], nonce=nonce)
    req = OcspRequest.from_der(der)
    assert req.cert_ids == (pki.cid(alg),) and req.nonce == nonce and not req.signed
    assert OcspRequest.from_der(build_request([pki.cid(alg)])).nonce is None


def _request(tbs: dict[str, object], **outer: object) -> bytes:
    return ocsp.OCSPRequest({"tbs_request": tbs, **outer}).dump(force=True)


def _with_extension(cid: CertId, oid: str, value: bytes, *, critical: bool = False) -> bytes:
    """A request with one request extension whose extnValue contents are ``value``
    (written by hand: asn1crypto would parse the value)."""
    ext = core.ObjectIdentifier(oid).dump()
    if critical:
        ext += b"\x01\x01\xff"
    ext = _tlv(0x30, ext + _tlv(0x04, value))
    tbs = _tlv(0x30, _tlv(0x30, _tlv(0x30, cid.asn1().dump())) + _tlv(0xA2, _tlv(0x30, ext)))
    return _tlv(0x30, tbs)


def test_request_negative_vectors(pki: Pki) -> None:
    good = build_request([pki.cid()], nonce=b"n" * 16)
    req_cert = pki.cid().asn1()
    bad: list[tuple[bytes, type[Exception]]] = [
        (b"", DecodeError),
        (good + b"\x00", DecodeError),  # trailing byte
        (good[:-1], DecodeError),  # truncated
        (b"\x30\x81" + good[1:2] + good[2:], DecodeError),  # non-minimal length
        (_request({"request_list": []}), DecodeError),
        (
            _request({"request_list": [{"req_cert": req_cert}] * (MAX_REQUESTS + 1)}),
            DecodeError,
        ),
        # nonce of 33 octets (RFC 8954: 1..32), and of none
        (_with_extension(pki.cid(), OID_NONCE, _tlv(0x04, b"x" * 33)), DecodeError),
        (_with_extension(pki.cid(), OID_NONCE, _tlv(0x04, b"")), DecodeError),
        # nonce not wrapped in an OCTET STRING
        (_with_extension(pki.cid(), OID_NONCE, b"\x01\x02\x03"), DecodeError),
        # an unknown critical extension
        (_with_extension(pki.cid(), "1.2.3.4", b"\x05\x00", critical=True), DecodeError),
        (  # MD5 CertID
            _request(
                {
                    "request_list": [
                        {
                            "req_cert": {
                                "hash_algorithm": {"algorithm": "md5"},
                                "issuer_name_hash": b"\x00" * 16,
                                "issuer_key_hash": b"\x00" * 16,
                                "serial_number": 1,
                            }
                        }
                    ]
                }
            ),
            UnsupportedError,
        ),
        (  # SHA-1 CertID with 32-octet hashes
            _request(
                {
                    "request_list": [
                        {
                            "req_cert": {
                                "hash_algorithm": {"algorithm": "sha1"},
                                "issuer_name_hash": b"\x00" * 32,
                                "issuer_key_hash": b"\x00" * 32,
                                "serial_number": 1,
                            }
                        }
                    ]
                }
            ),
            DecodeError,
        ),
        (pki.leaf.der, DecodeError),  # not an OCSP request at all
    ]
    for der, exc in bad:
        with pytest.raises(exc):
            OcspRequest.from_der(der)


def test_build_request_arguments(pki: Pki) -> None:
    with pytest.raises(PolicyError):
        build_request([])
    with pytest.raises(PolicyError):
        build_request([pki.cid()], nonce=b"")
    with pytest.raises(PolicyError):
        build_request([pki.cid()], nonce=b"x" * 33)
    with pytest.raises(PolicyError):
        build_request([pki.cid()] * (MAX_REQUESTS + 1))


# ---------------------------------------------------------------- responses ---------------
def test_response_round_trip_and_encoding(pki: Pki) -> None:
    now = c.now()
    statuses = [
        SingleStatus(pki.cid(), "good", now, now + timedelta(hours=4)),
        SingleStatus(
            pki.cid("sha1", pki.responder),
            "revoked",
            now,
            now + timedelta(hours=4),
            now - timedelta(days=1),
            "key_compromise",
        ),
        SingleStatus(CertId("sha256", b"\x01" * 32, b"\x02" * 32, 7), "unknown", now, None),
    ]
    nonce = new_nonce()
    der = pki.respond(statuses, nonce=nonce)
    resp = OcspResponse.from_der(der)  # strict: the hand-written DER is canonical
    assert resp.status == "successful" and resp.responses == tuple(statuses)
    assert resp.nonce == nonce and resp.certificates == (pki.responder,)
    assert resp.produced_at == now
    assert resp.responder_id == (
        "by_key",
        hashlib.sha1(pki.responder_key.public_key().to_bytes()).digest(),
    )
    # the same structure through asn1crypto's encoder gives the same bytes
    parsed = ocsp.OCSPResponse.load(der)
    assert parsed.dump(force=True) == der
    basic = parsed.basic_ocsp_response
    assert basic["signature_algorithm"]["algorithm"].dotted == "1.2.156.10197.1.501"
    assert isinstance(basic["signature_algorithm"]["parameters"], core.Void)
    assert parsed.nonce_value.native == nonce
    pki.responder_key.public_key().verify(basic["signature"].native, resp.tbs_der)


@pytest.mark.parametrize(
    "status", ["malformed_request", "internal_error", "try_later", "sign_required", "unauthorized"]
)
def test_error_responses(pki: Pki, status: str) -> None:
    der = error_response(status)
    assert OcspResponse.from_der(der).status == status
    with pytest.raises(OcspError) as e:
        verify_response(der, issuer=pki.sub.certificate, cert_id=pki.cid())
    assert e.value.reason == "error_status" and e.value.response_status == status
    with pytest.raises(PolicyError):
        error_response("successful")


def test_response_negative_vectors(pki: Pki) -> None:
    der = pki.respond()
    with pytest.raises(DecodeError):
        OcspResponse.from_der(der + b"\x00")
    with pytest.raises(DecodeError):
        OcspResponse.from_der(der[:-3])
    # an error status that carries responseBytes
    outer = ocsp.OCSPResponse.load(der)
    forged = ocsp.OCSPResponse(
        {"response_status": "unauthorized", "response_bytes": outer["response_bytes"]}
    ).dump(force=True)
    with pytest.raises(DecodeError):
        OcspResponse.from_der(forged)
    # successful without responseBytes
    with pytest.raises(DecodeError):
        OcspResponse.from_der(ocsp.OCSPResponse({"response_status": "successful"}).dump())
    # a response type other than basic
    other = ocsp.OCSPResponse(
        {
            "response_status": "successful",
            "response_bytes": {"response_type": "1.2.3.4", "response": b"\x05\x00"},
        }
    ).dump(force=True)
    with pytest.raises(UnsupportedError):
        OcspResponse.from_der(other)


# ---------------------------------------------------------------- verification ------------
def test_verify_good_revoked_unknown(pki: Pki) -> None:
    now = c.now()
    for st in (
        SingleStatus(pki.cid(), "good", now, now + timedelta(hours=1)),
        SingleStatus(pki.cid(), "revoked", now, now + timedelta(hours=1), now, "superseded"),
        SingleStatus(pki.cid(), "unknown", now, now + timedelta(hours=1)),
    ):
        got = verify_response(pki.respond([st]), issuer=pki.sub.certificate, cert_id=pki.cid())
        assert got == st


def test_verify_ca_signed_response(pki: Pki) -> None:
    """RFC 6960 §4.2.2.2: the CA itself may sign (no delegation needed)."""
    der = pki.respond(responder=pki.sub.certificate, key=pki.sub_key)
    assert verify_response(der, issuer=pki.sub.certificate, cert_id=pki.cid()).status == "good"


def _reason(der: bytes, p: Pki, **kw: object) -> str:
    kw.setdefault("cert_id", p.cid())
    with pytest.raises(OcspError) as e:
        verify_response(der, issuer=p.sub.certificate, **kw)  # type: ignore[arg-type]
    return e.value.reason


def test_attack_tampered_response(pki: Pki) -> None:
    """A man in the middle turns "revoked" into "good", keeping the signature."""
    now = c.now()
    nu = now + timedelta(hours=1)
    revoked = pki.respond([SingleStatus(pki.cid(), "revoked", now, nu, now)], at=now)
    good = pki.respond([SingleStatus(pki.cid(), "good", now, nu)], at=now)
    forged = _reassemble(good, signature=OcspResponse.from_der(revoked).signature)
    assert OcspResponse.from_der(forged).responses[0].status == "good"
    assert _reason(forged, pki) == "bad_signature"


def _reassemble(
    der: bytes, *, signature: bytes | None = None, certs: list[Certificate] | None = None
) -> bytes:
    """``der`` with its signature or its certs field replaced."""
    basic = ocsp.OCSPResponse.load(der).basic_ocsp_response.copy()
    if signature is not None:
        basic["signature"] = signature
    if certs is not None:
        basic["certs"] = [x509.Certificate.load(x.der) for x in certs]
    return ocsp.OCSPResponse(
        {
            "response_status": "successful",
            "response_bytes": {"response_type": "basic_ocsp_response", "response": basic},
        }
    ).dump(force=True)


def test_attack_signed_with_empty_id(pki: Pki) -> None:
    """A signature over the right bytes but with another SM2 ID (OpenSSL 3.0's empty
    default) is not ours."""
    der = pki.respond()
    resp = OcspResponse.from_der(der)
    forged = _reassemble(der, signature=pki.responder_key.sign(resp.tbs_der, signer_id=b""))
    assert OcspResponse.from_der(forged).tbs_der == resp.tbs_der
    assert _reason(forged, pki) == "bad_signature"


def test_attack_end_entity_of_the_ca_signs(pki: Pki) -> None:
    """Any certificate holder of the CA (here a device) signing responses about others:
    no OCSPSigning EKU, no nocheck — refused."""
    key = SM2PrivateKey.generate()
    device = pki.sub.issue(
        subject=name(CN="mallory"), public_key=key.public_key(), profile=Profile.DEVICE_SIGN
    )
    assert _reason(pki.respond(responder=device, key=key), pki) == "unauthorized_responder"


def test_attack_responder_of_another_ca(pki: Pki) -> None:
    """A genuine OCSP signer, but delegated by another CA of the same name."""
    other = make_pki(cn="Issuing CA")
    assert other.sub.certificate.subject_str == pki.sub.certificate.subject_str
    der = other.respond([SingleStatus(pki.cid(), "good", c.now(), c.now() + timedelta(hours=1))])
    assert _reason(der, pki) == "unauthorized_responder"


def test_attack_responder_without_nocheck_or_expired(pki: Pki) -> None:
    key = SM2PrivateKey.generate()
    no_nocheck = pki.sub.issue(
        subject=name(CN="OCSP2"),
        public_key=key.public_key(),
        profile=Profile.APP_DEVELOPER,  # digitalSignature, but codeSigning
    )
    assert _reason(pki.respond(responder=no_nocheck, key=key), pki) == "unauthorized_responder"
    now = c.now()
    expired = pki.sub.issue(
        subject=name(CN="OCSP3"),
        public_key=key.public_key(),
        profile=Profile.OCSP_SIGNER,
        not_before=now - timedelta(days=40),
        not_after=now - timedelta(days=10),
    )
    assert _reason(pki.respond(responder=expired, key=key), pki) == "unauthorized_responder"


def test_attack_responder_id_of_another_key(pki: Pki) -> None:
    """Signed by a device key whose KeyHash is the ResponderID, with the genuine
    responder's certificate put in certs: no certificate matches the ResponderID."""
    key = SM2PrivateKey.generate()
    device = pki.sub.issue(
        subject=name(CN="x"), public_key=key.public_key(), profile=Profile.DEVICE_SIGN
    )
    forged = _reassemble(pki.respond(responder=device, key=key), certs=[pki.responder])
    assert OcspResponse.from_der(forged).certificates == (pki.responder,)
    assert _reason(forged, pki) == "unauthorized_responder"
    # and the genuine responder's KeyHash with the device's signature: bad signature
    genuine = pki.respond()
    resp = OcspResponse.from_der(genuine)
    assert _reason(_reassemble(genuine, signature=key.sign(resp.tbs_der)), pki) == "bad_signature"


def test_attack_replay_other_certificate(pki: Pki) -> None:
    other = pki.cid(cert=pki.responder)
    now = c.now()
    der = pki.respond([SingleStatus(other, "good", now, now + timedelta(hours=1))])
    assert _reason(der, pki) == "no_matching_response"
    # same serial, other hash algorithm: not the CertID asked
    der = pki.respond([SingleStatus(pki.cid("sha1"), "good", now, now + timedelta(hours=1))])
    assert _reason(der, pki) == "no_matching_response"


def test_attack_nonce_replay_and_strip(pki: Pki) -> None:
    mine, old = new_nonce(), new_nonce()
    assert _reason(pki.respond(nonce=old), pki, nonce=mine) == "nonce_mismatch"
    assert _reason(pki.respond(), pki, nonce=mine) == "nonce_mismatch"  # stripped
    assert _reason(pki.respond(nonce=old), pki) == "nonce_mismatch"  # not asked for
    ok = verify_response(
        pki.respond(nonce=mine), issuer=pki.sub.certificate, cert_id=pki.cid(), nonce=mine
    )
    assert ok.status == "good"


def test_attack_stale_and_future_responses(pki: Pki) -> None:
    now = c.now()
    old = now - timedelta(hours=3)
    key = SM2PrivateKey.generate()
    responder = pki.sub.issue(
        subject=name(CN="OCSP"),
        public_key=key.public_key(),
        profile=Profile.OCSP_SIGNER,
        not_before=now - timedelta(days=1),
    )
    stale = pki.respond(
        [SingleStatus(pki.cid(), "good", old, old + timedelta(hours=1))],
        at=old,
        responder=responder,
        key=key,
    )
    assert _reason(stale, pki) == "expired"
    future = now + timedelta(hours=1)
    ahead = pki.respond(
        [SingleStatus(pki.cid(), "good", future, future + timedelta(hours=1))],
        at=now,
        responder=responder,
        key=key,
    )
    assert _reason(ahead, pki) == "not_yet_valid"
    no_next = pki.respond(
        [SingleStatus(pki.cid(), "good", now, None)], responder=responder, key=key
    )
    assert _reason(no_next, pki) == "no_next_update"
    # at an explicit time inside the window it verifies
    assert (
        verify_response(
            stale, issuer=pki.sub.certificate, cert_id=pki.cid(), at=old + timedelta(minutes=30)
        ).status
        == "good"
    )


def test_build_response_checks_the_signer(pki: Pki) -> None:
    """A signer that does not match the responder certificate is caught before the
    response leaves the responder."""
    with pytest.raises(PolicyError):
        pki.respond(key=SM2PrivateKey.generate())
    now = c.now()
    with pytest.raises(PolicyError):
        SingleStatus(pki.cid(), "revoked", now, now)  # no revocation time
    with pytest.raises(PolicyError):
        SingleStatus(pki.cid(), "good", now, now, reason="key_compromise")
    with pytest.raises(PolicyError):
        pki.respond([SingleStatus(pki.cid(), "good", now, now)])  # nextUpdate == thisUpdate
