"""Two-party SM2 (mstcrypt.crypto.twoparty): honest runs, interop with the OpenSSL CLI,
and a malicious client or server at every step (wrong proofs, off-curve points, zero
values, replayed or misrouted messages) aborting with typed errors."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from mstcrypt.crypto import twoparty as tp
from mstcrypt.crypto.curve import N, P
from mstcrypt.crypto.hazmat.ec import mul_base
from mstcrypt.crypto.sm2 import SM2PrivateKey, signature_to_raw
from mstcrypt.errors import (
    DecodeError,
    DecryptionError,
    InvalidKeyError,
    PolicyError,
    TwoPartyProofError,
    TwoPartyStateError,
    VerificationError,
)
from mstcrypt.formats.keys import dump_public_key

DISTID = "distid:1234567812345678"


def keygen() -> tuple[tp.ClientShare, tp.ServerShare]:
    c, s = tp.ClientKeyGen(), tp.ServerKeyGen()
    kg2 = s.receive_commitment(c.start())
    kg4, server = s.receive_opening(c.receive_server_share(kg2))
    return c.finish(kg4), server


@pytest.fixture(scope="module")
def shares() -> tuple[tp.ClientShare, tp.ServerShare]:
    return keygen()


def cosign(cs: tp.ClientShare, ss: tp.ServerShare, message: bytes) -> bytes:
    signer = tp.ClientSigner(cs, message)
    co = tp.ServerSigner(ss)
    sig = signer.finish(co.respond(signer.start()))
    assert co.confirm(signer.confirmation()) == sig
    return sig


def _flip(msg: bytes, pos: int) -> bytes:
    b = bytearray(msg)
    b[pos] ^= 1
    return bytes(b)


def _off_curve() -> bytes:
    x, y = mul_base(7).x, mul_base(7).y
    return b"\x04" + x.to_bytes(32, "big") + ((y + 1) % P).to_bytes(32, "big")


# --- honest runs -------------------------------------------------------------------------


def test_keygen_gives_the_joint_key_of_the_textbook_relation(shares) -> None:
    cs, ss = shares
    assert cs.public_key == ss.public_key
    d = (pow(cs._d * ss._d, -1, N) - 1) % N  # only the test ever forms d
    assert SM2PrivateKey(d).public_key() == cs.public_key
    assert cs.own_point == ss.peer_point and ss.own_point == cs.peer_point


def test_cosigned_signature_verifies_with_plain_sm2(shares) -> None:
    cs, ss = shares
    for msg in (b"", b"contract", bytes(range(256)) * 40):
        sig = cosign(cs, ss, msg)
        cs.public_key.verify(sig, msg)
        with pytest.raises(VerificationError):
            cs.public_key.verify(sig, msg + b"x")


def test_signatures_use_fresh_nonces(shares) -> None:
    cs, ss = shares
    rs = {signature_to_raw(cosign(cs, ss, b"same message"))[:32] for _ in range(8)}
    assert len(rs) == 8
    # the same SG1 answered by two server objects gives two different r (fresh w2)
    signer = tp.ClientSigner(cs, b"m")
    sg1 = signer.start()
    assert tp.ServerSigner(ss).respond(sg1)[20:52] != tp.ServerSigner(ss).respond(sg1)[20:52]


def test_openssl_cli_verifies_cosigned_signature(
    shares, openssl: Callable[..., bytes], tmp_path: Path
) -> None:
    cs, ss = shares
    msg = b"GB/T 38540 TBS_Sign stand-in \x00\xff"
    sig = cosign(cs, ss, msg)
    (tmp_path / "pub.pem").write_bytes(dump_public_key(cs.public_key))
    (tmp_path / "msg").write_bytes(msg)
    (tmp_path / "sig").write_bytes(sig)
    args = ["pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "pub.pem")]
    args += ["-rawin", "-digest", "sm3", "-pkeyopt", DISTID, "-in", str(tmp_path / "msg")]
    out = openssl(*args, "-sigfile", str(tmp_path / "sig"))
    assert b"Signature Verified Successfully" in out
    (tmp_path / "msg").write_bytes(msg + b"!")
    with pytest.raises(subprocess.CalledProcessError):
        openssl(*args, "-sigfile", str(tmp_path / "sig"))


def test_codecrypt_of_openssl_ciphertext(
    shares, openssl: Callable[..., bytes], tmp_path: Path
) -> None:
    cs, ss = shares
    (tmp_path / "pub.pem").write_bytes(dump_public_key(cs.public_key))
    ct = openssl(
        "pkeyutl", "-encrypt", "-pubin", "-inkey", str(tmp_path / "pub.pem"), input=b"seal PIN"
    )
    dec = tp.ClientDecryptor(cs, ct)
    assert dec.finish(tp.ServerDecryptor(ss).respond(dec.start())) == b"seal PIN"


def test_refresh_keeps_the_key_and_separates_epochs() -> None:
    cs, ss = keygen()
    cr, sr = tp.ClientRefresh(cs), tp.ServerRefresh(ss)
    rf3, cs2 = cr.finish(sr.respond(cr.start()))
    ss2 = sr.finish(rf3)
    assert cs2.public_key == cs.public_key == ss2.public_key
    assert (cs2.version, ss2.version) == (1, 1)
    assert cs2._d != cs._d and ss2._d != ss._d
    cs.public_key.verify(cosign(cs2, ss2, b"after"), b"after")
    # a share stolen before the refresh does not combine with the other one after it
    signer = tp.ClientSigner(cs, b"mixed")
    with pytest.raises(TwoPartyStateError, match="version"):
        tp.ServerSigner(ss2).respond(signer.start())
    stale = tp.ClientShare(cs._d, cs.peer_point, cs.public_key, version=1)
    signer = tp.ClientSigner(stale, b"mixed")
    with pytest.raises(TwoPartyProofError):
        signer.finish(tp.ServerSigner(ss2).respond(signer.start()))


def test_share_serialisation_round_trip_and_tamper(shares) -> None:
    cs, ss = shares
    assert tp.ClientShare.from_bytes(cs.to_bytes()).to_bytes() == cs.to_bytes()
    assert tp.ServerShare.from_bytes(ss.to_bytes()).public_key == ss.public_key
    with pytest.raises(DecodeError):
        tp.ServerShare.from_bytes(cs.to_bytes())  # a client share is not a server share
    with pytest.raises(InvalidKeyError, match="inconsistent"):
        tp.ClientShare.from_bytes(_flip(cs.to_bytes(), 20))  # d1 altered
    secret = cs._d.to_bytes(32, "big").hex()
    assert secret not in repr(cs) and secret[:16] not in repr(cs)
    import pickle

    with pytest.raises(PolicyError):
        pickle.dumps(cs)


# --- malicious server against the client -----------------------------------------------


def test_keygen_wrong_server_proof_aborts() -> None:
    c, s = tp.ClientKeyGen(), tp.ServerKeyGen()
    kg2 = s.receive_commitment(c.start())
    with pytest.raises(TwoPartyProofError, match="proof"):
        c.receive_server_share(_flip(kg2, len(kg2) - 1))  # z altered
    with pytest.raises(TwoPartyStateError, match="aborted"):
        c.receive_server_share(kg2)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("P2", _off_curve(), InvalidKeyError),
        ("P2", b"\x00" * 65, DecodeError),  # point at infinity / not uncompressed
        ("z", b"\x00" * 32, InvalidKeyError),
        ("z", N.to_bytes(32, "big"), InvalidKeyError),
    ],
)
def test_keygen_bad_server_values_abort(field: str, value: bytes, error: type) -> None:
    c, s = tp.ClientKeyGen(), tp.ServerKeyGen()
    kg2 = s.receive_commitment(c.start())
    off = {"P2": 20, "z": 20 + 130}[field]
    bad = kg2[:off] + value + kg2[off + len(value) :]
    with pytest.raises(error):
        c.receive_server_share(bad)


def test_keygen_server_cannot_substitute_joint_key() -> None:
    c, s = tp.ClientKeyGen(), tp.ServerKeyGen()
    kg3 = c.receive_server_share(s.receive_commitment(c.start()))
    kg4, _ = s.receive_opening(kg3)
    forged = kg4[:20] + mul_base(12345).to_bytes()
    with pytest.raises(TwoPartyProofError, match="different joint"):
        c.finish(forged)


def test_wrong_partial_signature_is_caught_before_release(shares) -> None:
    cs, ss = shares
    signer = tp.ClientSigner(cs, b"pay 100")
    sg2 = tp.ServerSigner(ss).respond(signer.start())
    bad = sg2[:-1] + bytes([sg2[-1] ^ 1])
    with pytest.raises(TwoPartyProofError, match="does not verify"):
        signer.finish(bad)
    with pytest.raises(TwoPartyStateError):
        signer.confirmation()  # nothing to release


@pytest.mark.parametrize("which", ["r", "s1"])
def test_zero_or_out_of_range_server_scalars_abort(shares, which: str) -> None:
    cs, ss = shares
    for value in (0, N):
        signer = tp.ClientSigner(cs, b"m")
        sg2 = tp.ServerSigner(ss).respond(signer.start())
        off = 20 if which == "r" else 52
        bad = sg2[:off] + value.to_bytes(32, "big") + sg2[off + 32 :]
        with pytest.raises(InvalidKeyError, match=which):
            signer.finish(bad)


def test_replayed_or_misrouted_server_answers_are_refused(shares) -> None:
    cs, ss = shares
    first = tp.ClientSigner(cs, b"one")
    sg2_first = tp.ServerSigner(ss).respond(first.start())
    second = tp.ClientSigner(cs, b"one")
    second.start()
    with pytest.raises(TwoPartyStateError, match="another session"):
        second.finish(sg2_first)  # an answer from another session
    first.finish(sg2_first)
    with pytest.raises(TwoPartyStateError, match="repeated"):
        first.finish(sg2_first)  # the same answer twice
    with pytest.raises(TwoPartyStateError, match="out of order"):
        tp.ClientSigner(cs, b"x").finish(b"")  # out of order: start() not called
    c = tp.ClientKeyGen()
    c.start()
    old_kg2 = tp.ServerKeyGen().receive_commitment(tp.ClientKeyGen().start())
    with pytest.raises(TwoPartyStateError, match="another session"):
        c.receive_server_share(old_kg2)


def test_wrong_codecryption_answer_is_caught(shares) -> None:
    cs, _ss = shares
    ct = cs.public_key.encrypt(b"secret")
    dec = tp.ClientDecryptor(cs, ct)
    dc1 = dec.start()
    forged = dc1[:3] + bytes([tp.MessageType.DC2]) + dc1[4:20] + mul_base(99).to_bytes()
    with pytest.raises(DecryptionError, match="C3"):
        dec.finish(forged)
    with pytest.raises(DecryptionError):
        tp.ClientDecryptor(cs, ct[:-1])


def test_refresh_with_bad_server_tag_aborts(shares) -> None:
    cs, ss = shares
    cr = tp.ClientRefresh(cs)
    rf2 = tp.ServerRefresh(ss).respond(cr.start())
    with pytest.raises(TwoPartyProofError, match="confirmation"):
        cr.finish(_flip(rf2, len(rf2) - 1))


# --- malicious client against the server -----------------------------------------------


def test_opening_that_does_not_match_commitment_is_refused() -> None:
    """A client that changes P1 after seeing P2 (to bias the joint key) is caught."""
    c, s = tp.ClientKeyGen(), tp.ServerKeyGen()
    kg3 = c.receive_server_share(s.receive_commitment(c.start()))
    sid = kg3[4:20]
    x = 424242
    other = mul_base(x)
    forged = kg3[:20] + other.to_bytes() + tp._prove(sid, b"C", x, other) + kg3[-32:]
    with pytest.raises(TwoPartyProofError, match="commitment"):
        s.receive_opening(forged)


def test_client_without_knowledge_of_its_share_is_refused() -> None:
    """A committed P1 with a proof that does not verify (no knowledge of dlog)."""
    s = tp.ServerKeyGen()
    sid = b"\x11" * 16
    p1 = mul_base(5)
    proof = tp._prove(sid, b"C", 6, p1)  # proof for the wrong witness
    rho = b"\x22" * 32
    s.receive_commitment(tp._header(tp.MessageType.KG1, sid) + tp._commit(sid, p1, proof, rho))
    with pytest.raises(TwoPartyProofError, match="proof"):
        s.receive_opening(tp._header(tp.MessageType.KG3, sid) + p1.to_bytes() + proof + rho)


def test_reflected_server_proof_is_refused() -> None:
    """The client echoes the server's own P2 and proof (with a matching commitment):
    the proof is bound to the server's role and the share must differ."""
    s = tp.ServerKeyGen()
    sid = b"\x33" * 16
    rho = b"\x44" * 32
    # a client that has seen a P2 and proof for this sid (e.g. from a replayed run)
    probe = tp.ServerKeyGen()
    kg2 = probe.receive_commitment(tp._header(tp.MessageType.KG1, sid) + b"\x00" * 32)
    p2, proof = tp.Point.from_bytes(kg2[20:85]), kg2[85:]
    s.receive_commitment(tp._header(tp.MessageType.KG1, sid) + tp._commit(sid, p2, proof, rho))
    with pytest.raises(TwoPartyProofError):
        s.receive_opening(tp._header(tp.MessageType.KG3, sid) + p2.to_bytes() + proof + rho)


@pytest.mark.parametrize("bad_q1", [_off_curve(), b"\x04" + b"\x00" * 64, b"\x00" * 65])
def test_bad_nonce_point_from_client_is_refused(shares, bad_q1: bytes) -> None:
    cs, ss = shares
    sg1 = tp.ClientSigner(cs, b"m").start()
    bad = sg1[:24] + bad_q1 + sg1[24 + 65 :]
    with pytest.raises((InvalidKeyError, DecodeError)):
        tp.ServerSigner(ss).respond(bad)


def test_replayed_sign_request_is_refused_by_the_session(shares) -> None:
    cs, ss = shares
    signer = tp.ClientSigner(cs, b"m")
    sg1 = signer.start()
    co = tp.ServerSigner(ss)
    co.respond(sg1)
    with pytest.raises(TwoPartyStateError):
        co.respond(sg1)


def test_server_signs_only_what_it_was_shown(shares) -> None:
    """The server computes e from M; a client cannot turn the answer into a signature
    over another message, and a final signature for another message is refused."""
    cs, ss = shares
    signer = tp.ClientSigner(cs, b"approved text")
    co = tp.ServerSigner(ss)
    sg2 = co.respond(signer.start())
    assert co.message == b"approved text"
    assert co.digest == cs.public_key.message_digest(b"approved text")
    sig = signer.finish(sg2)
    with pytest.raises(VerificationError):
        cs.public_key.verify(sig, b"another text")
    other = cosign(cs, ss, b"another text")
    sg3 = tp._header(tp.MessageType.SG3, co.session_id) + bytes([len(other)]) + other
    with pytest.raises(TwoPartyProofError, match="does not verify"):
        co.confirm(sg3)


def test_disabled_server_share_refuses(shares) -> None:
    cs, ss = shares
    signer = tp.ClientSigner(cs, b"m")
    with pytest.raises(TwoPartyStateError, match="disabled"):
        tp.ServerSigner(ss, enabled=False).respond(signer.start())
    dec = tp.ClientDecryptor(cs, cs.public_key.encrypt(b"x"))
    with pytest.raises(TwoPartyStateError, match="disabled"):
        tp.ServerDecryptor(ss, enabled=False).respond(dec.start())


def test_refresh_with_bad_client_tag_or_point_aborts(shares) -> None:
    cs, ss = shares
    cr, sr = tp.ClientRefresh(cs), tp.ServerRefresh(ss)
    rf3, _ = cr.finish(sr.respond(cr.start()))
    with pytest.raises(TwoPartyProofError, match="confirmation"):
        sr.finish(_flip(rf3, len(rf3) - 1))
    rf1 = tp.ClientRefresh(cs).start()
    with pytest.raises(InvalidKeyError):
        tp.ServerRefresh(ss).respond(rf1[:24] + _off_curve())


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m + b"\x00",  # trailing byte
        lambda m: m[:-1],  # truncated
        lambda m: b"XX" + m[2:],  # bad magic
        lambda m: m[:2] + b"\x09" + m[3:],  # unknown version
        lambda m: m[:3] + b"\x12" + m[4:],  # wrong type
    ],
)
def test_malformed_messages_are_typed_errors(shares, mutate) -> None:
    cs, ss = shares
    sg1 = tp.ClientSigner(cs, b"m").start()
    with pytest.raises((DecodeError, TwoPartyStateError)):
        tp.ServerSigner(ss).respond(mutate(sg1))


# --- server state kept between requests, and the soft token's share -------------------


def test_server_state_survives_between_requests() -> None:
    """Another server instance finishes key generation and refresh from saved state."""
    c, s = tp.ClientKeyGen(), tp.ServerKeyGen()
    kg2 = s.receive_commitment(c.start())
    saved = s.to_bytes()
    kg4, ss = tp.ServerKeyGen.from_bytes(saved).receive_opening(c.receive_server_share(kg2))
    cs = c.finish(kg4)
    cr, sr = tp.ClientRefresh(cs), tp.ServerRefresh(ss)
    rf2 = sr.respond(cr.start())
    rf3, cs2 = cr.finish(rf2)
    ss2 = tp.ServerRefresh.from_bytes(sr.to_bytes()).finish(rf3)
    cs.public_key.verify(cosign(cs2, ss2, b"m"), b"m")
    with pytest.raises(TwoPartyStateError):
        tp.ServerKeyGen().to_bytes()  # nothing to save before KG1
    with pytest.raises(DecodeError):
        tp.ServerKeyGen.from_bytes(saved[:-1])


class _Server:
    """The server side of a soft token's two-party key, in process."""

    def __init__(self) -> None:
        self.keygen = tp.ServerKeyGen()
        self.share: tp.ServerShare | None = None
        self.refresh: tp.ServerRefresh | None = None
        self.signer: tp.ServerSigner | None = None
        self.lose_ack = False

    def __call__(self, msg: bytes) -> bytes:
        kind = tp.message_type(msg)
        if kind == tp.MessageType.KG1:
            return self.keygen.receive_commitment(msg)
        if kind == tp.MessageType.KG3:
            kg4, self.share = self.keygen.receive_opening(msg)
            return kg4
        assert self.share is not None
        if kind == tp.MessageType.SG1:
            self.signer = tp.ServerSigner(self.share)
            return self.signer.respond(msg)
        if kind == tp.MessageType.SG3:
            assert self.signer is not None
            self.signer.confirm(msg)
            return b""
        if kind == tp.MessageType.DC1:
            return tp.ServerDecryptor(self.share).respond(msg)
        if kind == tp.MessageType.RF1:
            self.refresh = tp.ServerRefresh(self.share)
            return self.refresh.respond(msg)
        if kind == tp.MessageType.RF3:
            assert self.refresh is not None
            self.share = self.refresh.finish(msg)
            if self.lose_ack:
                raise ConnectionError("the acknowledgement was lost")
            return b""
        raise AssertionError(kind)


def test_soft_token_keeps_the_share_and_settles_an_unacknowledged_refresh(tmp_path) -> None:
    from mstcrypt.module import SoftToken

    tok = SoftToken.init(tmp_path / "t.tok", "123456", "admin-code-1")
    server = _Server()
    pub = tok.twoparty_generate("seal", server)
    assert tok.twoparty_public_key("seal") == pub and "seal" in tok.list_containers()
    pub.verify(tok.twoparty_sign("seal", b"one", server), b"one")
    assert tok.twoparty_decrypt("seal", pub.encrypt(b"k"), server) == b"k"
    assert tok.twoparty_refresh("seal", server) == 1
    # the server commits RF3 but its answer is lost: the token keeps the new share as
    # pending; the next signature uses it (the server has it) and promotes it
    server.lose_ack = True
    with pytest.raises(ConnectionError):
        tok.twoparty_refresh("seal", server)
    assert "pending" in tok._get("seal").twoparty
    server.lose_ack = False
    reopened = SoftToken.open(tmp_path / "t.tok")
    reopened.login("123456")
    pub.verify(reopened.twoparty_sign("seal", b"two", server), b"two")
    assert "pending" not in reopened._get("seal").twoparty
    assert tp.ClientShare.from_bytes(reopened._get("seal").twoparty["current"]).version == 2


def test_soft_token_drops_a_refresh_the_server_never_committed(tmp_path) -> None:
    from mstcrypt.module import SoftToken

    tok = SoftToken.init(tmp_path / "t.tok", "123456", "admin-code-1")
    server = _Server()
    pub = tok.twoparty_generate("seal", server)

    def failing(msg: bytes) -> bytes:
        if tp.message_type(msg) == tp.MessageType.RF3:
            raise ConnectionError("the server went away before RF3")
        return server(msg)

    with pytest.raises(ConnectionError):
        tok.twoparty_refresh("seal", failing)
    # the server never saw RF3: the token's pending share is refused (version), dropped
    pub.verify(tok.twoparty_sign("seal", b"m", server), b"m")
    assert "pending" not in tok._get("seal").twoparty
