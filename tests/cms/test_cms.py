"""mstcrypt.formats.cms: round trips, both OID profiles, the GmSSL form as an option,
streaming envelopes, and the attacks of issue 13 (tampering, swapped signer
certificate, recipient not in the envelope)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cmskit import kit

from mstcrypt.crypto.sm3 import sm3
from mstcrypt.errors import DecodeError, DecryptionError, PolicyError, VerificationError
from mstcrypt.formats import cms
from mstcrypt.formats._der import dump

MSG = b"Subject: quarterly figures\r\n\r\nThe numbers are attached.\r\n"


@pytest.mark.parametrize("profile", list(cms.Profile))
@pytest.mark.parametrize("detached", [False, True])
def test_sign_verify_round_trip(profile: cms.Profile, detached: bool) -> None:
    k = kit()
    before = datetime.now(UTC).replace(microsecond=0)
    der = cms.sign(MSG, k.alice.cert, k.alice.key, detached=detached, profile=profile)
    sd = cms.load(der)
    assert isinstance(sd, cms.SignedData)
    assert sd.profile is profile
    assert sd.detached is detached
    assert sd.certificates == (k.alice.cert.der,)
    signers = sd.verify(MSG) if detached else sd.verify()
    assert len(signers) == 1
    assert signers[0].certificate_der == k.alice.cert.der
    assert signers[0].form is cms.SignatureForm.STANDARD
    assert signers[0].signing_time is not None
    assert before <= signers[0].signing_time <= datetime.now(UTC)
    view = sd.signers[0]
    assert view.message_digest == sm3(MSG)
    assert view.content_type == cms._TYPES[profile]["data"]
    if not detached:
        assert sd.content == MSG
    # the outer content type is the profile's
    assert cms._outer(der)[0] == cms._TYPES[profile]["signed"]


def test_signature_is_over_signed_attributes_with_z() -> None:
    """GM/T 0010: the SM2 signature (with Z, default ID) covers DER(SET OF attributes)."""
    k = kit()
    sd = cms.SignedData.from_der(cms.sign(MSG, k.alice.cert, k.alice.key))
    view = sd.signers[0]
    assert view.signed_attrs_der is not None and view.signed_attrs_der[0] == 0x31
    k.alice.cert.public_key.verify(view.signature, view.signed_attrs_der)


def test_pem_and_callable_signer() -> None:
    k = kit()
    der = cms.sign(MSG, k.alice.cert.der, lambda e: k.alice.key.sign_digest(e))
    pem = cms.pem(der)
    assert pem.startswith(b"-----BEGIN CMS-----")
    sd, signers = cms.verify(pem)
    assert sd.der == der and signers[0].certificate_der == k.alice.cert.der


def test_signing_time_and_digest_signing() -> None:
    k = kit()
    t = datetime(2060, 1, 2, 3, 4, 5, tzinfo=UTC)  # GeneralizedTime after 2049
    der = cms.sign_digest(sm3(MSG), k.alice.cert, k.alice.key, signing_time=t)
    sd = cms.SignedData.from_der(der)
    assert sd.detached
    assert sd.verify(content_digest=sm3(MSG))[0].signing_time == t
    assert sd.verify(MSG)[0].signing_time == t


def test_extra_certificates_are_carried() -> None:
    k = kit()
    der = cms.sign(MSG, k.alice.cert, k.alice.key, extra_certs=[k.root.certificate])
    sd = cms.SignedData.from_der(der)
    assert set(sd.certificates) == {k.alice.cert.der, k.root.certificate.der}
    assert sd.verify()[0].certificate_der == k.alice.cert.der


# --- attacks on SignedData --------------------------------------------------------


def _resign_outer(der: bytes, mutate) -> bytes:  # type: ignore[no-untyped-def]
    oid, inner = cms._outer(der)
    sd = cms.SignedDataAsn1.load(inner)
    mutate(sd)
    return cms._outer_der(oid, dump(sd))


def test_tampered_attached_content_is_refused() -> None:
    k = kit()
    der = cms.sign(MSG, k.alice.cert, k.alice.key)
    forged = _resign_outer(
        der,
        lambda sd: sd["content_info"].__setitem__("content", MSG.replace(b"attached", b"deleted!")),
    )
    with pytest.raises(VerificationError, match=r"^messageDigest does not match the content$"):
        cms.SignedData.from_der(forged).verify()


def test_wrong_detached_content_is_refused() -> None:
    k = kit()
    sd = cms.SignedData.from_der(cms.sign(MSG, k.alice.cert, k.alice.key, detached=True))
    with pytest.raises(VerificationError, match=r"^messageDigest does not match the content$"):
        sd.verify(MSG + b"x")
    with pytest.raises(PolicyError, match="content"):
        sd.verify()


def test_tampered_signature_is_refused() -> None:
    k = kit()
    der = cms.sign(MSG, k.alice.cert, k.alice.key)
    sd = cms.SignedData.from_der(der)
    sig = sd.signers[0].signature
    # r's last byte changes: still well-formed DER, no longer a valid signature
    bad = sig[:-40] + bytes([sig[-40] ^ 1]) + sig[-39:]

    def mutate(a: cms.SignedDataAsn1) -> None:
        a["signer_infos"][0]["signature"] = bad

    with pytest.raises(
        VerificationError, match=r"^SM2 signature over the signed attributes does not verify$"
    ):
        cms.SignedData.from_der(_resign_outer(der, mutate)).verify()


def test_tampered_signed_attribute_is_refused() -> None:
    """Changing the signing time (a signed attribute) breaks the signature."""
    k = kit()
    t = datetime(2030, 1, 1, tzinfo=UTC)
    der = cms.sign(MSG, k.alice.cert, k.alice.key, signing_time=t)
    good = cms.SignedData.from_der(der).signers[0].signed_attrs_der
    assert good is not None
    forged_der = der.replace(b"300101000000Z", b"290101000000Z")
    assert forged_der != der
    with pytest.raises(VerificationError, match="signed attributes does not verify"):
        cms.SignedData.from_der(forged_der).verify()


def test_swapped_signer_certificate_is_refused() -> None:
    """Mallory replaces alice's certificate by his own (same CA): the SignerInfo no
    longer finds its certificate; pointing the sid at his certificate makes the
    signature check fail under his key."""
    k = kit()
    der = cms.sign(MSG, k.alice.cert, k.alice.key)
    from asn1crypto import x509

    mallory = x509.Certificate.load(k.mallory.cert.der)

    def swap_cert(a: cms.SignedDataAsn1) -> None:
        a["certificates"] = [mallory]

    with pytest.raises(VerificationError, match=r"^the signer certificate is not in the message$"):
        cms.SignedData.from_der(_resign_outer(der, swap_cert)).verify()

    def swap_both(a: cms.SignedDataAsn1) -> None:
        a["certificates"] = [mallory]
        a["signer_infos"][0]["sid"] = cms.SignerIdentifier(
            name="issuer_and_serial_number", value=cms._ias(mallory)
        )

    with pytest.raises(VerificationError, match="signed attributes does not verify"):
        cms.SignedData.from_der(_resign_outer(der, swap_both)).verify()


def test_gmssl_form_only_when_asked() -> None:
    k = kit()
    der = cms.sign(MSG, k.alice.cert, k.alice.key, form="gmssl")
    sd = cms.SignedData.from_der(der)
    assert sd.signers[0].signed_attrs_der is None
    with pytest.raises(
        VerificationError, match=r"^SM2 signature over the content does not verify$"
    ):
        sd.verify()
    assert sd.verify(forms=["gmssl"])[0].form is cms.SignatureForm.GMSSL
    with pytest.raises(PolicyError, match="cannot be detached"):
        cms.sign(MSG, k.alice.cert, k.alice.key, form="gmssl", detached=True)


def test_plain_standard_signature_without_attributes_verifies() -> None:
    """A SignerInfo without signed attributes (SM2 with Z directly over the content)
    is valid GM/T 0010; the GmSSL form does not accept it and vice versa."""
    k = kit()
    der = cms.sign(MSG, k.alice.cert, k.alice.key, form="gmssl")
    sig = k.alice.key.sign(MSG)

    def mutate(a: cms.SignedDataAsn1) -> None:
        a["signer_infos"][0]["signature"] = sig

    sd = cms.SignedData.from_der(_resign_outer(der, mutate))
    assert sd.verify()[0].form is cms.SignatureForm.STANDARD
    with pytest.raises(VerificationError):
        sd.verify(forms=["gmssl"])


# --- EnvelopedData ----------------------------------------------------------------


@pytest.mark.parametrize("profile", list(cms.Profile))
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 200, 70_000])
def test_envelope_round_trip(profile: cms.Profile, size: int) -> None:
    k = kit()
    content = bytes(range(256)) * (size // 256) + bytes(size % 256)
    der = cms.encrypt(content, [k.bob.cert, k.carol.cert], profile=profile)
    ed = cms.load(der)
    assert isinstance(ed, cms.EnvelopedData)
    assert ed.profile is profile
    assert len(ed.recipients) == 2
    assert len(ed.ciphertext) == (size // 16 + 1) * 16
    assert ed.decrypt(k.bob.cert, k.bob.key) == content
    assert ed.decrypt(k.carol.cert, k.carol.key) == content
    assert all(r.algorithm == "1.2.156.10197.1.301.3" for r in ed.recipients)


def test_streamed_envelope_equals_one_shot_layout() -> None:
    k = kit()
    content = b"0123456789" * 30_000
    header, enc = cms.envelope_header([k.bob.cert], len(content))
    parts = [header]
    for i in range(0, len(content), 4096):
        parts.append(enc.update(content[i : i + 4096]))
    parts.append(enc.finalize())
    der = b"".join(parts)
    assert cms.decrypt(der, k.bob.cert, k.bob.key) == content
    _, enc2 = cms.envelope_header([k.bob.cert], 5)
    enc2.update(b"1234")
    with pytest.raises(PolicyError, match="1 bytes of announced plaintext are missing"):
        enc2.finalize()
    with pytest.raises(PolicyError, match="more plaintext than announced"):
        enc2.update(b"12")


def test_same_recipient_twice_is_one_recipient_info() -> None:
    k = kit()
    ed = cms.EnvelopedData.from_der(cms.encrypt(MSG, [k.bob.cert, k.bob.cert]))
    assert len(ed.recipients) == 1


def test_recipient_not_in_envelope_is_refused() -> None:
    k = kit()
    der = cms.encrypt(MSG, [k.bob.cert])
    with pytest.raises(
        DecryptionError, match=r"^this certificate is not a recipient of the message$"
    ):
        cms.decrypt(der, k.carol.cert, k.carol.key)


def test_wrong_private_key_is_refused() -> None:
    k = kit()
    der = cms.encrypt(MSG, [k.bob.cert])
    with pytest.raises(DecryptionError, match="SM2 decryption failed"):
        cms.decrypt(der, k.bob.cert, k.carol.key)


def test_tampered_encrypted_key_is_refused() -> None:
    k = kit()
    der = cms.encrypt(MSG, [k.bob.cert])
    ek = cms.EnvelopedData.from_der(der).recipients[0].encrypted_key
    forged = der.replace(ek, ek[:-1] + bytes([ek[-1] ^ 0x55]))
    with pytest.raises(DecryptionError, match="SM2 decryption failed"):
        cms.decrypt(forged, k.bob.cert, k.bob.key)


def test_tampered_ciphertext_padding_is_refused() -> None:
    k = kit()
    content = b"A" * 32  # a whole padding block: flipping its last byte is always invalid
    der = cms.encrypt(content, [k.bob.cert])
    pos = len(der) - 17  # last byte of the penultimate block
    forged = der[:pos] + bytes([der[pos] ^ 1]) + der[pos + 1 :]
    with pytest.raises(DecryptionError, match=r"^SM4-CBC: invalid PKCS#7 padding$"):
        cms.decrypt(forged, k.bob.cert, k.bob.key)


def test_sign_then_envelope_detects_tampering_inside_ciphertext() -> None:
    """CBC alone does not detect a flipped middle block; the signature inside does."""
    k = kit()
    signed = cms.sign(MSG * 20, k.alice.cert, k.alice.key)
    der = cms.encrypt(signed, [k.bob.cert])
    pos = len(der) - 200
    forged = der[:pos] + bytes([der[pos] ^ 0x20]) + der[pos + 1 :]
    inner = cms.decrypt(forged, k.bob.cert, k.bob.key)
    assert inner != signed
    with pytest.raises((VerificationError, DecodeError)):
        cms.SignedData.from_der(inner).verify()


def test_gmssl_key_encryption_oid_is_read() -> None:
    k = kit()
    der = cms.encrypt(MSG, [k.bob.cert], form="gmssl")
    ed = cms.EnvelopedData.from_der(der)
    assert ed.recipients[0].algorithm == "1.2.156.10197.1.301.2"
    assert ed.decrypt(k.bob.cert, k.bob.key) == MSG


def test_no_recipients_is_refused() -> None:
    with pytest.raises(PolicyError, match="at least one recipient"):
        cms.encrypt(MSG, [])


def test_reprs_hold_no_content() -> None:
    k = kit()
    secret = b"TOP-SECRET-MARKER"
    ed = cms.EnvelopedData.from_der(cms.encrypt(secret, [k.bob.cert]))
    sd = cms.SignedData.from_der(cms.sign(secret, k.alice.cert, k.alice.key))
    for text in (repr(ed), repr(sd), repr(sd.verify()[0])):
        assert "TOP-SECRET" not in text


# --- streaming ----------------------------------------------------------------------


def _drain(read, size: int = 1000) -> bytes:  # type: ignore[no-untyped-def]
    out = bytearray()
    while chunk := read(size):
        out += chunk
    return bytes(out)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 70_000])
def test_streamed_sign_and_envelope_round_trip(size: int) -> None:
    import io

    k = kit()
    content = bytes(i % 251 for i in range(size))
    prefix, suffix = cms.signed_stream_parts(sm3(content), size, k.alice.cert, k.alice.key)
    signed = prefix + content + suffix
    # the one-shot parser reads the streamed form
    assert cms.SignedData.from_der(signed).verify()[0].certificate_der == k.alice.cert.der
    env = cms.encrypt(signed, [k.bob.cert, k.carol.cert])
    es = cms.EnvelopeStream(io.BytesIO(env).read)
    assert set(es.recipient_refs) == {
        cms.RecipientRef.of(k.bob.cert),
        cms.RecipientRef.of(k.carol.cert),
    }
    s = cms.SignedStream(es.open(k.carol.cert, k.carol.key).read)
    assert s.content_length == size
    assert _drain(s.read, 999) == content
    sd = s.finish()
    assert sd.verify(content_digest=s.content_digest)[0].certificate_der == k.alice.cert.der


def test_stream_refuses_truncation_trailing_bytes_and_tampering() -> None:
    import io

    k = kit()
    content = b"streamed content " * 100
    prefix, suffix = cms.signed_stream_parts(sm3(content), len(content), k.alice.cert, k.alice.key)
    signed = prefix + content + suffix
    s = cms.SignedStream(io.BytesIO(signed[:-1]).read)
    _drain(s.read)
    with pytest.raises(DecodeError, match="SignedData stream is truncated"):
        s.finish()
    s = cms.SignedStream(io.BytesIO(signed + b"\x00").read)
    _drain(s.read)
    with pytest.raises(DecodeError, match="trailing bytes after SignedData stream"):
        s.finish()
    tampered = signed.replace(b"streamed content", b"streamed CONTENT", 1)
    s = cms.SignedStream(io.BytesIO(tampered).read)
    _drain(s.read)
    with pytest.raises(VerificationError, match="messageDigest does not match"):
        s.finish().verify(content_digest=s.content_digest)
    env = cms.encrypt(signed, [k.bob.cert])
    es = cms.EnvelopeStream(io.BytesIO(env + b"\x00").read)
    with pytest.raises(DecodeError, match="trailing bytes after EnvelopedData stream"):
        _drain(es.open(k.bob.cert, k.bob.key).read)
    with pytest.raises(DecodeError, match="EnvelopedData stream is truncated"):
        _drain(cms.EnvelopeStream(io.BytesIO(env[:-5]).read).open(k.bob.cert, k.bob.key).read)
    with pytest.raises(DecryptionError, match="not a recipient"):
        cms.EnvelopeStream(io.BytesIO(env).read).open(k.carol.cert, k.carol.key)
    # a detached signature has nothing to stream
    detached = cms.sign(content, k.alice.cert, k.alice.key, detached=True)
    with pytest.raises(cms.UnsupportedError, match="detached SignedData has no content"):
        cms.SignedStream(io.BytesIO(detached).read)
