"""The full WAI flow between ASUE, AE and ASU (SM suite, platform CA certificates):
activation, access authentication via the ASU, unicast and multicast keys, WPI traffic,
rekeying; and the refusals (revoked or foreign certificates, untrusted ASU, forged ASU
verdict, replayed and reordered packets, wrong MICs, downgraded IEs, activation floods)."""

from __future__ import annotations

import pytest
import wapi_env as env

from mstcrypt.protocols.wai import messages as m
from mstcrypt.protocols.wai import wpi
from mstcrypt.protocols.wai.constants import AccessResult, Subtype, VerifyResult
from mstcrypt.protocols.wai.errors import WaiStateError, WaiVerifyError
from mstcrypt.protocols.wai.events import (
    Associated,
    AuthenticationFailed,
    MulticastKeyInstalled,
    PacketDropped,
    UnicastKeyInstalled,
)
from mstcrypt.protocols.wai.roles import State


@pytest.fixture(scope="module")
def plat() -> env.SmPlatform:
    return env.SmPlatform()


def _of(events: list[object], cls: type) -> list[object]:
    return [e for e in events if isinstance(e, cls)]


def test_full_flow_installs_matching_keys_and_carries_wpi_data(plat: env.SmPlatform) -> None:
    p, _ = env.pump(plat)
    p.run()
    assert p.asue.state is State.ESTABLISHED and p.ae.state is State.ESTABLISHED
    subtypes = [pkt[3] for _, _, pkt in p.log]
    assert subtypes == [3, 4, 6, 7, 5, 8, 9, 10, 11, 12]
    (u1,) = _of(p.asue_events, UnicastKeyInstalled)
    (u2,) = _of(p.ae_events, UnicastKeyInstalled)
    assert (u1.uek, u1.uck) == (u2.uek, u2.uck)  # type: ignore[attr-defined]
    (g1,) = _of(p.asue_events, MulticastKeyInstalled)
    (g2,) = _of(p.ae_events, MulticastKeyInstalled)
    assert (g1.mek, g1.mck, g1.data_pn) == (g2.mek, g2.mck, g2.data_pn)  # type: ignore[attr-defined]
    assert _of(p.asue_events, Associated) and _of(p.ae_events, Associated)
    assert u1.uek.hex() not in repr(u1)  # type: ignore[attr-defined]
    # WPI both ways with the negotiated key
    hdr = wpi.Dot11Header(b"\x08\x02", env.STA_MAC, env.AE_MAC, env.AE_MAC)
    tx = wpi.WpiSender(u2.uek, u2.uck, u2.uskid, unicast=True, from_ae=True)  # type: ignore[attr-defined]
    rx = wpi.WpiReceiver(u1.uek, u1.uck, u1.uskid, unicast=True, from_ae=True)  # type: ignore[attr-defined]
    assert rx.unprotect(tx.protect(hdr, b"ping"))[1] == b"ping"


def test_unicast_rekey_on_demand_and_on_timer(plat: env.SmPlatform) -> None:
    p, _ = env.pump(plat, usk_lifetime=10.0)
    p.run()
    first = _of(p.asue_events, UnicastKeyInstalled)[0]
    p.ae.rekey_unicast(1.0)
    p.run(1.0)
    second = _of(p.asue_events, UnicastKeyInstalled)[-1]
    assert second.rekey and second.uskid == first.uskid ^ 1 and second.uek != first.uek  # type: ignore[attr-defined]
    assert _of(p.ae_events, UnicastKeyInstalled)[-1].uek == second.uek  # type: ignore[attr-defined]
    t = p.ae.next_timer()
    assert t is not None and t == pytest.approx(11.0)
    p.ae.handle_timer(t)
    p.run(t)
    third = _of(p.asue_events, UnicastKeyInstalled)[-1]
    assert third.uskid == first.uskid and third.uek not in (first.uek, second.uek)  # type: ignore[attr-defined]
    assert p.asue.state is State.ESTABLISHED


def test_multicast_rekey_reaches_the_terminal(plat: env.SmPlatform) -> None:
    p, point = env.pump(plat)
    p.run()
    old = _of(p.asue_events, MulticastKeyInstalled)[-1]
    out = point.rekey_multicast(2.0)
    assert len(out) == 1
    p.asue_events += p.asue.receive(out[0].packet, 2.0)
    p.run(2.0)
    new = _of(p.asue_events, MulticastKeyInstalled)[-1]
    assert new.mskid == old.mskid ^ 1 and new.mek != old.mek  # type: ignore[attr-defined]
    # the old announcement replayed is refused
    ann = next(pkt for src, _, pkt in p.log if pkt[3] == Subtype.MULTICAST_ANNOUNCE)
    assert _of(p.asue.receive(ann, 3.0), PacketDropped)


def test_revoked_terminal_is_refused(plat: env.SmPlatform) -> None:
    sta = plat.issue("terminal-revoked", env.Profile.DEVICE_SIGN)
    plat.revoke(sta)
    p, _ = env.pump(plat, sta=sta)
    p.run()
    (fail,) = _of(p.ae_events, AuthenticationFailed)
    assert fail.asue_result is VerifyResult.REVOKED  # type: ignore[attr-defined]
    (fail2,) = _of(p.asue_events, AuthenticationFailed)
    assert fail2.access_result is AccessResult.CERTIFICATE_ERROR  # type: ignore[attr-defined]
    assert not _of(p.asue_events, UnicastKeyInstalled)
    assert p.ae.state is State.FAILED and p.asue.state is State.FAILED


def test_revoked_ap_is_refused_by_the_terminal(plat: env.SmPlatform) -> None:
    ap = plat.issue("AP-revoked", env.Profile.WLAN_AP_SIGN)
    plat.revoke(ap)
    p, _ = env.pump(plat, ap=ap)
    p.run()
    assert _of(p.asue_events, AuthenticationFailed)
    assert p.asue.state is State.FAILED and not _of(p.asue_events, UnicastKeyInstalled)


def test_foreign_certificates_are_refused(plat: env.SmPlatform) -> None:
    other = env.SmPlatform()
    p, _ = env.pump(plat, sta=other.sta)
    p.run()
    (fail,) = _of(p.ae_events, AuthenticationFailed)
    assert fail.asue_result is VerifyResult.ISSUER_UNKNOWN  # type: ignore[attr-defined]
    # an AE from another organisation (the terminal trusts our ASU, which does not know it)
    p, _ = env.pump(plat, ap=other.ap)
    p.run()
    assert _of(p.asue_events, AuthenticationFailed) and p.asue.state is State.FAILED


def test_ae_naming_an_untrusted_asu_is_refused(plat: env.SmPlatform) -> None:
    other = env.SmPlatform()
    p, _ = env.pump(plat, trusted_asus=[other.asu.cert_der])
    p.run()
    (fail,) = _of(p.asue_events, AuthenticationFailed)
    assert "does not trust" in fail.reason  # type: ignore[attr-defined]
    assert [pkt[3] for _, _, pkt in p.log] == [3]


def test_forged_asu_verdict_is_dropped(plat: env.SmPlatform) -> None:
    # An attacker between AE and ASU answers "valid" for a revoked terminal, signed with
    # a key of its own under the real ASU's identity.
    sta = plat.issue("terminal-forged", env.Profile.DEVICE_SIGN)
    plat.revoke(sta)
    p, _ = env.pump(plat, sta=sta)
    forger = env.SmPlatform()

    def tap(src: str, dst: str, pkt: bytes) -> bytes | None:
        if src != "asu":
            return pkt
        h, msg = m.decode_packet(pkt)
        assert isinstance(msg, m.CertAuthResponse)
        cr = m.CertVerifyResult(**{**msg.cert_result.__dict__, "result1": VerifyResult.VALID})
        sig = m.SignatureAttr(
            msg.asu_sig_asue.identity,
            2,
            2,
            msg.asu_sig_asue.param,
            forger.asu.signer.sign(cr.encode()),
        )
        return m.encode_packet(m.CertAuthResponse(msg.addid, cr, sig), h.seq)

    p.tap = tap
    p.run()
    assert _of(p.ae_events, PacketDropped) and not _of(p.asue_events, UnicastKeyInstalled)
    assert p.ae.state is State.WAIT_CERT_RESPONSE
    # the AE retransmits to the ASU and finally gives up
    events = []
    for t in (1.5, 3.0, 4.5, 6.0):
        events += p.ae.handle_timer(t)
        p.run(t)
    assert _of(events, AuthenticationFailed) and p.ae.state is State.FAILED


def test_replayed_and_reordered_packets_are_refused(plat: env.SmPlatform) -> None:
    p, _ = env.pump(plat)
    p.run()
    log = list(p.log)
    usk_req = next(pkt for s, _, pkt in log if pkt[3] == Subtype.UNICAST_KEY_REQUEST)
    act = next(pkt for s, _, pkt in log if pkt[3] == Subtype.AUTH_ACTIVATION)
    # replays of old ASUE-bound packets: dropped, state unchanged
    for pkt in (usk_req, act):
        ev = p.asue.receive(pkt, 10.0)
        assert _of(ev, PacketDropped) and p.asue.state is State.ESTABLISHED
    # an old packet re-sent under a fresh sequence number: refused (state, old challenge)
    _, msg = m.decode_packet(usk_req)
    ev = p.asue.receive(m.encode_packet(msg, 500), 10.0)
    assert _of(ev, PacketDropped) and p.asue.state is State.ESTABLISHED
    # AE side: the access request replayed
    req = next(pkt for s, _, pkt in log if pkt[3] == Subtype.ACCESS_AUTH_REQUEST)
    assert _of(p.ae.receive(req, 10.0), PacketDropped)


def test_wrong_mic_is_dropped_then_the_genuine_packet_accepted(plat: env.SmPlatform) -> None:
    p, _ = env.pump(plat)
    seen = {"done": False}

    def tap(src: str, dst: str, pkt: bytes) -> bytes | None:
        if pkt[3] == Subtype.UNICAST_KEY_CONFIRM and not seen["done"]:
            seen["done"] = True
            bad = bytearray(pkt)
            bad[-1] ^= 1
            ev = p.asue.receive(bytes(bad), 0.0)
            assert _of(ev, PacketDropped) and p.asue.state is State.WAIT_USK_CONFIRM
        return pkt

    p.tap = tap
    p.run()
    assert seen["done"] and p.asue.state is State.ESTABLISHED


def test_downgraded_ie_is_refused(plat: env.SmPlatform) -> None:
    # the terminal's IE in the unicast response differs from the association's
    asue, session, server, _ = env.machines(plat)
    session.asue_ie = m.WapiIE(akm_suites=(m.AKM_CERT_SM, m.AKM_CERT)).encode()
    p = env.Pump(asue, session, server, at=env.AT)
    p.run()
    assert _of(p.ae_events, AuthenticationFailed) and session.state is State.FAILED


def test_tampered_signatures_end_the_session(plat: env.SmPlatform) -> None:
    p, _ = env.pump(plat)

    def tap(src: str, dst: str, pkt: bytes) -> bytes | None:
        if pkt[3] == Subtype.ACCESS_AUTH_RESPONSE:
            bad = bytearray(pkt)
            bad[-5] ^= 1  # inside the AE signature value
            return bytes(bad)
        return pkt

    p.tap = tap
    p.run()
    (fail,) = _of(p.asue_events, AuthenticationFailed)
    assert "AE signature" in fail.reason  # type: ignore[attr-defined]


def test_truncated_and_oversized_packets_are_dropped(plat: env.SmPlatform) -> None:
    p, _ = env.pump(plat)
    act = p.ae.data_to_send()[0].packet
    for bad in (act[:-1], act + b"\x00", act[:11], act[:12] + bytes(70000)):
        assert _of(p.asue.receive(bad, 0.0), PacketDropped)
    assert p.asue.state is State.IDLE


def test_activation_flood_is_rate_limited(plat: env.SmPlatform) -> None:
    # A rogue AE floods the terminal: it signs at most one access request per interval.
    p, _ = env.pump(plat)
    act = p.ae.data_to_send()[0].packet
    _, msg = m.decode_packet(act)
    signed = 0
    for i in range(200):
        p.asue.receive(m.encode_packet(msg, i + 1), 0.001 * i)
        signed += sum(
            1 for o in p.asue.data_to_send() if o.packet[3] == Subtype.ACCESS_AUTH_REQUEST
        )
    assert signed == 1


def test_association_flood_keeps_ap_state_bounded(plat: env.SmPlatform) -> None:
    _, _, _, point = env.machines(plat, max_pending=8, associations_per_second=100.0)
    refused = 0
    for i in range(2000):
        mac = (0x020000100000 + i).to_bytes(6, "big")
        try:
            point.associate(mac, env.ie(), 0.001 * i)
        except WaiStateError:
            refused += 1
    assert len(point.sessions) <= 8 and refused >= 1990


def test_retransmission_recovers_a_lost_packet(plat: env.SmPlatform) -> None:
    p, _ = env.pump(plat)
    dropped = {"n": 0}

    def tap(src: str, dst: str, pkt: bytes) -> bytes | None:
        if pkt[3] == Subtype.UNICAST_KEY_RESPONSE and dropped["n"] == 0:
            dropped["n"] = 1
            return None
        return pkt

    p.tap = tap
    p.run()
    assert p.asue.state is State.WAIT_USK_CONFIRM
    p.asue.handle_timer(2.0)
    p.run(2.0)
    assert p.asue.state is State.ESTABLISHED and p.ae.state is State.ESTABLISHED


def test_rogue_ae_forging_the_asu_verdict_is_refused_by_the_terminal(plat: env.SmPlatform) -> None:
    # An AP from another organisation rewrites the ASU's verdict on its own certificate to
    # "valid", signs it with a key of its own under the ASU's identity, and signs the
    # access response properly with its own key.
    other = env.SmPlatform()
    rogue = other.ap
    p, _ = env.pump(plat, ap=rogue)

    def tap(src: str, dst: str, pkt: bytes) -> bytes | None:
        if pkt[3] != Subtype.ACCESS_AUTH_RESPONSE:
            return pkt
        h, msg = m.decode_packet(pkt)
        assert isinstance(msg, m.AccessAuthResponse) and msg.cert_result and msg.asu_sig_asue
        cr = m.CertVerifyResult(**{**msg.cert_result.__dict__, "result2": VerifyResult.VALID})
        asu_sig = m.SignatureAttr(
            msg.asu_sig_asue.identity,
            2,
            2,
            msg.asu_sig_asue.param,
            other.asu.signer.sign(cr.encode()),
        )
        fields = {**msg.__dict__, "cert_result": cr, "asu_sig_asue": asu_sig, "signature": None}
        fields["result"] = AccessResult.SUCCESS
        forged = m.AccessAuthResponse(**fields)
        ae_sig = m.SignatureAttr(
            msg.signature.identity,
            2,
            2,
            msg.signature.param,
            rogue.signer.sign(forged.signed_part()),  # type: ignore[union-attr]
        )
        return m.encode_packet(m.AccessAuthResponse(**{**fields, "signature": ae_sig}), h.seq)

    p.tap = tap
    p.run()
    (fail,) = _of(p.asue_events, AuthenticationFailed)
    assert "ASU signature" in fail.reason  # type: ignore[attr-defined]
    assert not _of(p.asue_events, UnicastKeyInstalled)


def test_invalid_ephemeral_key_is_refused_before_the_asu_is_asked(plat: env.SmPlatform) -> None:
    p, _ = env.pump(plat)

    def tap(src: str, dst: str, pkt: bytes) -> bytes | None:
        if pkt[3] != Subtype.ACCESS_AUTH_REQUEST:
            return pkt
        h, msg = m.decode_packet(pkt)
        assert isinstance(msg, m.AccessAuthRequest) and msg.signature
        key = msg.asue_key[:-1] + bytes([msg.asue_key[-1] ^ 1])  # off the curve
        req = m.AccessAuthRequest(**{**msg.__dict__, "asue_key": key, "signature": None})
        value = plat.sta.signer.sign(req.signed_part())
        sig = m.SignatureAttr(msg.signature.identity, 2, 2, msg.signature.param, value)
        return m.encode_packet(m.AccessAuthRequest(**{**req.__dict__, "signature": sig}), h.seq)

    p.tap = tap
    p.run()
    assert _of(p.ae_events, PacketDropped)
    assert [pkt[3] for _, _, pkt in p.log] == [3, 4]  # nothing went to the ASU


def test_asu_refuses_a_request_naming_other_asus(plat: env.SmPlatform) -> None:
    _, _, server, _ = env.machines(plat)
    other = env.SmPlatform()
    ident = lambda c: m.Certificate(c.cert_der)  # noqa: E731
    from mstcrypt.protocols.wai.suites import cert_info

    for asus, ok in (
        ([cert_info(other.asu.cert_der).identity], False),
        ([cert_info(plat.asu.cert_der).identity], True),
    ):
        req = m.CertAuthRequest(
            env.AE_MAC + env.STA_MAC,
            bytes(32),
            bytes(32),
            ident(plat.sta),
            ident(plat.ap),
            tuple(asus),
        )
        if ok:
            _, resp = m.decode_packet(server.handle(m.encode_packet(req, 1), env.AT))
            assert isinstance(resp, m.CertAuthResponse)
            assert resp.cert_result.result1 is VerifyResult.VALID
        else:
            with pytest.raises(WaiVerifyError):
                server.handle(m.encode_packet(req, 1), env.AT)
    act = m.Activation(
        0, bytes(32), m.Identity(b"x"), ident(plat.ap), m.EcdhParams(b"\x06\x01\x00")
    )
    with pytest.raises(WaiStateError):
        server.handle(m.encode_packet(act, 1), env.AT)


def test_a_repeated_request_gets_the_same_answer_and_only_that(plat: env.SmPlatform) -> None:
    asue, ae, asu, _ = env.machines(plat)
    act = ae.data_to_send()[0].packet
    asue.receive(act, 0.0)
    req = asue.data_to_send()[0].packet
    ae.receive(req, 0.0)
    (to_asu,) = ae.data_to_send()
    assert to_asu.to == "asu"
    # the terminal repeats its request while the AE waits for the ASU: nothing is resent
    assert _of(ae.receive(req, 0.5), PacketDropped) and ae.data_to_send() == []
    # the AE repeats its activation: the terminal resends the same request
    asue.receive(act, 0.6)
    assert [o.packet for o in asue.data_to_send()] == [req]
    ae.receive(asu.handle(to_asu.packet, env.AT), 0.7, source="asu")
    first = ae.data_to_send()
    resp = next(o.packet for o in first if o.packet[3] == Subtype.ACCESS_AUTH_RESPONSE)
    # now a repeated request gets the access response again
    ae.receive(req, 0.8)
    assert [o.packet for o in ae.data_to_send()] == [resp]


def test_a_lost_confirm_is_recovered_by_the_terminals_retransmission(plat: env.SmPlatform) -> None:
    p, _ = env.pump(plat)
    lost = {"n": 0}

    def tap(src: str, dst: str, pkt: bytes) -> bytes | None:
        if pkt[3] in (Subtype.UNICAST_KEY_CONFIRM, Subtype.MULTICAST_ANNOUNCE) and lost["n"] < 2:
            lost["n"] += 1
            return None
        return pkt

    p.tap = tap
    p.run()
    assert p.asue.state is State.WAIT_USK_CONFIRM and lost["n"] == 2
    p.asue.handle_timer(2.0)  # the terminal repeats its unicast response
    p.run(2.0)
    resent = [pkt[3] for src, _, pkt in p.log if src == "ae"][-1]
    assert (
        resent == Subtype.UNICAST_KEY_CONFIRM
    )  # the answer to that response, not the announcement
    assert p.asue.state is State.WAIT_MSK_ANNOUNCE
    p.ae.handle_timer(2.0)  # the AE repeats the announcement
    p.run(2.0)
    assert p.asue.state is State.ESTABLISHED and p.ae.state is State.ESTABLISHED


def test_a_spoofed_activation_does_not_tear_down_an_established_terminal(
    plat: env.SmPlatform,
) -> None:
    p, _ = env.pump(plat)
    p.run()
    act = next(pkt for _, _, pkt in p.log if pkt[3] == Subtype.AUTH_ACTIVATION)
    _, msg = m.decode_packet(act)
    ev = p.asue.receive(m.encode_packet(msg, 0xFFF0), 100.0)  # fresh sequence number
    assert _of(ev, PacketDropped) and p.asue.state is State.ESTABLISHED
    assert p.asue.data_to_send() == []


def test_multicast_rekey_on_the_timer(plat: env.SmPlatform) -> None:
    p, point = env.pump(plat, msk_lifetime=30.0)
    p.run()
    assert point.next_timer() == pytest.approx(30.0)
    assert point.handle_timer(29.0) == []
    old = _of(p.asue_events, MulticastKeyInstalled)[-1]
    out = point.handle_timer(30.0)
    assert [o.to for o in out] == [env.STA_MAC.hex()]
    p.asue_events += p.asue.receive(out[0].packet, 30.0)
    p.run(30.0)
    new = _of(p.asue_events, MulticastKeyInstalled)[-1]
    assert new.mskid == old.mskid ^ 1 and new.mek != old.mek  # type: ignore[attr-defined]
    assert _of(p.ae_events, MulticastKeyInstalled)[-1].mek == new.mek  # type: ignore[attr-defined]
    assert point.next_timer() == pytest.approx(60.0)


def test_an_old_asu_verdict_replayed_into_a_new_authentication_is_refused(
    plat: env.SmPlatform,
) -> None:
    first, _ = env.pump(plat)
    first.run()
    old_resp = next(pkt for _, _, pkt in first.log if pkt[3] == Subtype.ACCESS_AUTH_RESPONSE)
    _, old = m.decode_packet(old_resp)
    assert isinstance(old, m.AccessAuthResponse)
    p, _ = env.pump(plat)

    def tap(src: str, dst: str, pkt: bytes) -> bytes | None:
        if pkt[3] != Subtype.ACCESS_AUTH_RESPONSE:
            return pkt
        h, msg = m.decode_packet(pkt)
        assert isinstance(msg, m.AccessAuthResponse) and msg.signature
        fields = {**msg.__dict__, "cert_result": old.cert_result, "asu_sig_asue": old.asu_sig_asue}
        fields["signature"] = None
        unsigned = m.AccessAuthResponse(**fields)
        value = plat.ap.signer.sign(unsigned.signed_part())  # the AE itself cheats
        sig = m.SignatureAttr(msg.signature.identity, 2, 2, msg.signature.param, value)
        return m.encode_packet(m.AccessAuthResponse(**{**fields, "signature": sig}), h.seq)

    p.tap = tap
    p.run()
    (fail,) = _of(p.asue_events, AuthenticationFailed)
    assert "not about this authentication" in fail.reason  # type: ignore[attr-defined]
