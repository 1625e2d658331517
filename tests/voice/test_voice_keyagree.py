"""Per-call SM2 key agreement between two enrolled terminals: the happy path gives both
sides the same per-direction SRTP keys, and every attack on the signalling is refused:
forged or altered messages, replayed offers, a certificate of another user, a revoked
certificate, wrong keys, SSRC collision, profile downgrade."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mstcrypt.apps import voice
from mstcrypt.apps.voice import keyagree
from mstcrypt.protocols import srtp

from .voice_helpers import Platform, Terminal


@pytest.fixture(scope="module")
def plat(tmp_path_factory: pytest.TempPathFactory) -> Platform:
    return Platform(tmp_path_factory.mktemp("voice-kmc"))


@pytest.fixture(scope="module")
def alice(plat: Platform) -> Terminal:
    return plat.enroll("alice")


@pytest.fixture(scope="module")
def bob(plat: Platform) -> Terminal:
    return plat.enroll("bob")


def wire(msg: object) -> object:
    """Through the signalling as JSON text, like the call server carries it."""
    return voice.parse_message(json.dumps(msg.to_json()))  # type: ignore[attr-defined]


def call(plat: Platform, a: Terminal, b: Terminal, **kw: object) -> tuple[voice.CallKeys, ...]:
    ca = voice.CallerHandshake(plat.party(a), b.owner, b.enc_cert.der)
    cb = voice.CalleeHandshake(plat.party(b), wire(ca.offer()), **kw)  # type: ignore[arg-type]
    confirm = ca.receive_answer(wire(cb.accept()))  # type: ignore[arg-type]
    kb = cb.receive_confirm(wire(confirm))  # type: ignore[arg-type]
    assert ca.keys is not None
    return ca.keys, kb


def test_both_sides_get_the_same_per_direction_keys(plat: Platform, alice: Terminal,
                                                    bob: Terminal) -> None:  # fmt: skip
    ka, kb = call(plat, alice, bob)
    assert ka.profile is kb.profile is srtp.SM4_CM_128_HMAC_SM3_80
    assert (ka.tx_key, ka.tx_salt) == (kb.rx_key, kb.rx_salt)
    assert (ka.rx_key, ka.rx_salt) == (kb.tx_key, kb.tx_salt)
    assert ka.tx_key != ka.rx_key  # one key per direction
    assert ka.local_ssrc == kb.remote_ssrc != ka.remote_ssrc == kb.local_ssrc
    # media flows both ways
    a_tx, a_rx = ka.contexts()
    b_tx, b_rx = kb.contexts()
    pkt = bytes([0x80, 0, 0, 1]) + bytes(4) + ka.local_ssrc.to_bytes(4, "big") + b"hello"
    assert b_rx.unprotect(a_tx.protect(pkt)) == pkt
    back = bytes([0x80, 0, 0, 1]) + bytes(4) + kb.local_ssrc.to_bytes(4, "big") + b"hi"
    assert a_rx.unprotect(b_tx.protect(back)) == back
    # keys never show in reprs
    assert ka.tx_key.hex() not in repr(ka)


def test_fresh_keys_every_call(plat: Platform, alice: Terminal, bob: Terminal) -> None:
    k1, _ = call(plat, alice, bob)
    k2, _ = call(plat, alice, bob)
    assert k1.call_id != k2.call_id and k1.tx_key != k2.tx_key


@pytest.mark.parametrize("prefs", [
    (srtp.AEAD_SM4_128_GCM.name,), (srtp.ZUC_128_EEA3_EIA3_32.name,),
    (srtp.AES_CM_128_HMAC_SHA1_80.name,),
])  # fmt: skip
def test_callee_chooses_by_its_preference(plat: Platform, alice: Terminal, bob: Terminal,
                                          prefs: tuple[str, ...]) -> None:  # fmt: skip
    ca = voice.CallerHandshake(plat.party(alice, profiles=list(srtp.PROFILES)), "bob",
                               bob.enc_cert.der)  # fmt: skip
    cb = voice.CalleeHandshake(plat.party(bob, profiles=prefs), ca.offer())
    kb = cb.receive_confirm(ca.receive_answer(cb.accept()))
    assert kb.profile.name == prefs[0] == ca.keys.profile.name  # type: ignore[union-attr]


def test_no_common_profile(plat: Platform, alice: Terminal, bob: Terminal) -> None:
    ca = voice.CallerHandshake(plat.party(alice, profiles=["AES_CM_128_HMAC_SHA1_80"]), "bob",
                               bob.enc_cert.der)  # fmt: skip
    with pytest.raises(voice.CallPolicyError):
        voice.CalleeHandshake(plat.party(bob), ca.offer())


# --- attacks ---------------------------------------------------------------------------


def test_replayed_offer_refused(plat: Platform, alice: Terminal, bob: Terminal) -> None:
    guard = voice.OfferGuard()
    ca = voice.CallerHandshake(plat.party(alice), "bob", bob.enc_cert.der)
    offer = ca.offer()
    voice.CalleeHandshake(plat.party(bob), offer, guard=guard)
    with pytest.raises(voice.CallReplayError):
        voice.CalleeHandshake(plat.party(bob), offer, guard=guard)
    old = dataclasses.replace(offer, call_id="0" * 32)
    with pytest.raises(voice.CallReplayError):  # a recorded offer from long ago
        voice.CalleeHandshake(plat.party(bob), old, guard=guard,
                              now=datetime.now(UTC) + timedelta(minutes=10))  # fmt: skip


def test_replayed_offer_without_guard_still_cannot_complete(
    plat: Platform, alice: Terminal, bob: Terminal
) -> None:
    # an attacker replays an old offer and an old confirm to a callee without state:
    # the callee's fresh ephemeral makes the old confirmation worthless
    ca = voice.CallerHandshake(plat.party(alice), "bob", bob.enc_cert.der)
    cb = voice.CalleeHandshake(plat.party(bob), ca.offer())
    old_confirm = ca.receive_answer(cb.accept())
    cb.receive_confirm(old_confirm)
    replay = voice.CalleeHandshake(plat.party(bob), ca.offer())
    replay.accept()
    with pytest.raises(voice.CallAuthError):
        replay.receive_confirm(old_confirm)


def test_forged_answer_from_someone_without_bobs_key(
    plat: Platform, alice: Terminal, bob: Terminal, tmp_path: Path
) -> None:
    # mallory (the signalling server, say) answers in bob's name with her own key but
    # bob's certificate: S_B cannot match
    mallory = plat.enroll("mallory")
    ca = voice.CallerHandshake(plat.party(alice), "bob", bob.enc_cert.der)
    offer = ca.offer()
    fake_bob = dataclasses.replace(plat.party(mallory), identity="bob")
    fake_bob.certificate = mallory.enc_cert
    cm = voice.CalleeHandshake(fake_bob, dataclasses.replace(offer, callee="bob"))
    ans = dataclasses.replace(cm.accept(), cert=bob.enc_cert.der)
    with pytest.raises(voice.CallAuthError):
        ca.receive_answer(ans)
    # and with her own certificate: not the one alice called
    ca2 = voice.CallerHandshake(plat.party(alice), "bob", bob.enc_cert.der)
    cm2 = voice.CalleeHandshake(fake_bob, ca2.offer())
    with pytest.raises(voice.CallAuthError):
        ca2.receive_answer(cm2.accept())


def test_certificate_of_another_user_refused(plat: Platform, alice: Terminal,
                                             bob: Terminal) -> None:  # fmt: skip
    mallory = plat.enroll("mallory2")
    # the directory (or server) hands alice mallory's certificate for "bob"
    with pytest.raises(voice.CallAuthError, match="not the caller"):
        voice.CallerHandshake(plat.party(alice), "bob", mallory.enc_cert.der)
    # mallory calls bob claiming to be alice, with her own (valid) certificate
    cm = voice.CallerHandshake(
        dataclasses.replace(plat.party(mallory), identity="alice"), "bob", bob.enc_cert.der
    )
    with pytest.raises(voice.CallAuthError):
        voice.CalleeHandshake(plat.party(bob), cm.offer())
    # or with alice's certificate but her own key: the exchange fails at confirmation
    cm2 = voice.CallerHandshake(
        dataclasses.replace(plat.party(mallory), identity="alice"), "bob", bob.enc_cert.der
    )
    offer = dataclasses.replace(cm2.offer(), cert=alice.enc_cert.der)
    cb = voice.CalleeHandshake(plat.party(bob), offer)
    ans = cb.accept()
    with pytest.raises(voice.CallAuthError):
        cm2.receive_answer(ans)


def test_signing_certificate_is_not_a_key_agreement_certificate(
    plat: Platform, alice: Terminal, bob: Terminal
) -> None:
    with pytest.raises(voice.CallAuthError, match="usage"):
        voice.CallerHandshake(plat.party(alice), "bob", bob.sign_cert.der)


def test_revoked_certificate_refused(plat: Platform, alice: Terminal) -> None:
    carol = plat.enroll("carol")
    call(plat, alice, carol)  # works before revocation
    plat.revoke(carol)
    with pytest.raises(voice.CallAuthError, match="revoked"):
        voice.CallerHandshake(plat.party(alice), "carol", carol.enc_cert.der)
    ca = voice.CallerHandshake(plat.party(carol), "alice", alice.enc_cert.der)
    with pytest.raises(voice.CallAuthError, match="revoked"):
        voice.CalleeHandshake(plat.party(alice), ca.offer())


def test_certificate_from_another_ca_refused(plat: Platform, alice: Terminal,
                                             tmp_path: Path) -> None:  # fmt: skip
    other = Platform(tmp_path)
    bob2 = other.enroll("bob")
    with pytest.raises(voice.CallAuthError):
        voice.CallerHandshake(plat.party(alice), "bob", bob2.enc_cert.der)


@pytest.mark.parametrize("field", ["profiles", "ssrc", "to_profile", "ts"])
def test_altered_offer_makes_the_callee_refuse(plat: Platform, alice: Terminal, bob: Terminal,
                                               field: str) -> None:  # fmt: skip
    ca = voice.CallerHandshake(plat.party(alice, profiles=list(voice.DEFAULT_PROFILES)),
                               "bob", bob.enc_cert.der)  # fmt: skip
    offer = ca.offer()
    changes = {
        "profiles": {"profiles": offer.profiles[1:]},  # downgrade: strip SM4-CM
        "ssrc": {"ssrc": offer.ssrc ^ 1},
        "to_profile": {"profiles": (*offer.profiles, "AES_CM_128_HMAC_SHA1_80")},
        "ts": {"ts": offer.ts + 1},
    }[field]
    cb = voice.CalleeHandshake(plat.party(bob), dataclasses.replace(offer, **changes))
    confirm = ca.receive_answer(cb.accept())
    with pytest.raises(voice.CallAuthError, match="transcript"):
        cb.receive_confirm(confirm)
    assert cb.keys is None


@pytest.mark.parametrize("field", ["profile", "ssrc", "eph", "confirm"])
def test_altered_answer_refused(plat: Platform, alice: Terminal, bob: Terminal,
                                field: str) -> None:  # fmt: skip
    ca = voice.CallerHandshake(plat.party(alice), "bob", bob.enc_cert.der)
    cb = voice.CalleeHandshake(plat.party(bob), ca.offer())
    ans = cb.accept()
    if field == "profile":
        bad = dataclasses.replace(ans, profile=voice.DEFAULT_PROFILES[2])
    elif field == "ssrc":
        bad = dataclasses.replace(ans, ssrc=ans.ssrc ^ 1)
    elif field == "eph":
        other = voice.CallerHandshake(plat.party(alice), "bob", bob.enc_cert.der)
        bad = dataclasses.replace(ans, eph=other.offer().eph)
    else:
        bad = dataclasses.replace(ans, confirm=bytes(32))
    try:
        confirm = ca.receive_answer(bad)
    except voice.CallAuthError:
        return  # refused at the caller
    with pytest.raises(voice.CallAuthError):  # else the callee refuses the confirm
        cb.receive_confirm(confirm)


def test_forged_confirm_refused(plat: Platform, alice: Terminal, bob: Terminal) -> None:
    ca = voice.CallerHandshake(plat.party(alice), "bob", bob.enc_cert.der)
    cb = voice.CalleeHandshake(plat.party(bob), ca.offer())
    good = ca.receive_answer(cb.accept())
    for bad in (dataclasses.replace(good, confirm=bytes(32)),
                dataclasses.replace(good, mac=bytes(32))):  # fmt: skip
        probe = voice.CalleeHandshake(plat.party(bob), ca.offer())
        probe.accept()
        with pytest.raises(voice.CallAuthError):
            probe.receive_confirm(bad)
    with pytest.raises(voice.CallReplayError):
        cb.receive_confirm(dataclasses.replace(good, call_id="f" * 32))


def test_ssrc_collision(plat: Platform, alice: Terminal, bob: Terminal) -> None:
    ca = voice.CallerHandshake(plat.party(alice), "bob", bob.enc_cert.der, ssrc=1234)
    cb = voice.CalleeHandshake(plat.party(bob), ca.offer(), ssrc=1234)
    assert cb.local_ssrc != 1234  # the callee never takes the caller's SSRC
    ans = dataclasses.replace(cb.accept(), ssrc=1234)  # a relay forces a collision
    with pytest.raises(voice.CallPolicyError, match="SSRC"):
        ca.receive_answer(ans)


def test_wrong_key_in_module(plat: Platform, alice: Terminal, bob: Terminal) -> None:
    p = plat.party(alice)
    with pytest.raises(voice.CallPolicyError):
        dataclasses.replace(p, certificate=bob.enc_cert)


def test_offer_to_someone_else_and_self_call(plat: Platform, alice: Terminal,
                                             bob: Terminal) -> None:  # fmt: skip
    ca = voice.CallerHandshake(plat.party(alice), "bob", bob.enc_cert.der)
    with pytest.raises(voice.CallPolicyError):
        voice.CalleeHandshake(plat.party(alice), ca.offer())
    with pytest.raises(voice.CallPolicyError):
        voice.CallerHandshake(plat.party(alice), "alice", alice.enc_cert.der)


@pytest.mark.parametrize("mutate", [
    lambda o: o.pop("eph"),
    lambda o: o.update(extra=1),
    lambda o: o.update(v=2),
    lambda o: o.update(ssrc=-1),
    lambda o: o.update(ssrc=True),
    lambda o: o.update(call_id="X" * 32),
    lambda o: o.update(**{"from": "a b"}),
    lambda o: o.update(eph=o["eph"][:-2]),
    lambda o: o.update(eph=o["eph"] + "="),
    lambda o: o.update(profiles=[]),
    lambda o: o.update(profiles=["A", "A"]),
    lambda o: o.update(cert="A" * 6000),
    lambda o: o.update(type="bye"),
])  # fmt: skip
def test_malformed_signalling(plat: Platform, alice: Terminal, bob: Terminal,
                              mutate: object) -> None:  # fmt: skip
    o = voice.CallerHandshake(plat.party(alice), "bob", bob.enc_cert.der).offer().to_json()
    mutate(o)  # type: ignore[operator]
    with pytest.raises(voice.CallFormatError):
        voice.parse_message(json.dumps(o))
    for junk in (b"", b"[]", b"{", b"\xff", b"{}" * 10000, '{"type": "offer"}'):
        with pytest.raises(voice.CallFormatError):
            voice.parse_message(junk)


def test_reprs_hold_no_secrets(plat: Platform, alice: Terminal, bob: Terminal) -> None:
    ka, _ = call(plat, alice, bob)
    text = repr(ka) + repr(keyagree.Offer) + str(ka)
    for secret in (ka.tx_key, ka.tx_salt, ka.rx_key, ka.rx_salt):
        assert secret.hex() not in text
