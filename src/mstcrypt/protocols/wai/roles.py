"""The WAI roles as sans-IO state machines: ASUE (the terminal), AE (one per terminal at
the access point, grouped by :class:`AccessPoint`) and ASU (the authentication server).

Each takes whole WAI packets (``receive(packet, now)``; reassemble fragments first with
:class:`~mstcrypt.protocols.wai.messages.Reassembler`), returns events, and queues
packets to send (``data_to_send()``: :class:`Outgoing` with the destination role). Time
is passed in (``now``, seconds, any monotonic origin); ``next_timer()`` /
``handle_timer(now)`` drive retransmission (and rekeying on the AE).

Checks, in order, on every packet: decode strictly; sequence number above the last one
accepted from that peer (a verbatim repeat makes us resend our last answer); expected
state; echoed values (auth-id, challenges, keys, identities, ADDID, BKID, USKID); then
signatures and MICs. A wrong-state packet, a mismatch or a bad MIC is dropped without a
state change (:class:`PacketDropped`); a failed signature or certificate verdict ends
the session (:class:`AuthenticationFailed`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mstcrypt.crypto import sm4
from mstcrypt.protocols.wai import messages as m
from mstcrypt.protocols.wai._base import Credential, Endpoint, Link, State, random_nonce
from mstcrypt.protocols.wai.constants import AccessResult, Flag, VerifyResult
from mstcrypt.protocols.wai.errors import WaiDecodeError, WaiStateError, WaiVerifyError
from mstcrypt.protocols.wai.events import (
    Associated,
    Event,
    MulticastKeyInstalled,
    Outgoing,
    PacketDropped,
    UnicastKeyInstalled,
)
from mstcrypt.protocols.wai.suites import CertInfo, Suite, UnicastKeys, cert_info, suite_for_akm
from mstcrypt.protocols.wai.wpi import PN_START

__all__ = ["AccessPoint", "AeSession", "Asu", "Asue", "CertValidator", "Credential", "State"]

#: ASU verdict on one certificate: (der, at) -> VerifyResult.
CertValidator = Callable[[bytes, datetime], VerifyResult]


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise WaiVerifyError(what)


def _wrap_nmk(kek: bytes, announce_id: bytes, nmk: bytes) -> bytes:
    return sm4.ofb(kek, announce_id, nmk)


# =============================================================================== ASUE
class Asue(Endpoint):
    """The terminal. ``trusted_asus``: certificates of the ASUs it accepts verdicts from
    (preset, never taken from the AE); ``ae_ie``: the AE's WAPI IE seen at association;
    ``ie``: our own (its AKM selects the suite)."""

    def __init__(
        self,
        credential: Credential,
        *,
        trusted_asus: Sequence[bytes],
        own_mac: bytes,
        ae_mac: bytes,
        ie: m.WapiIE,
        ae_ie: m.WapiIE,
        timeout: float = 1.0,
        retries: int = 3,
        min_activation_interval: float = 1.0,
    ) -> None:
        super().__init__()
        self.credential = credential
        self._cred_info = credential.info
        self.suite: Suite = suite_for_akm(ie.akm_suites[0])
        self._asus = {ci.identity: ci for ci in (cert_info(c) for c in trusted_asus)}
        self.addid = bytes(ae_mac) + bytes(own_mac)
        self.ie = ie.encode()
        self.ae_ie = ae_ie.encode()
        self._links["ae"] = Link("ae", timeout=timeout, retries=retries)
        self._min_interval = min_activation_interval
        self._last_activation: float | None = None
        self._reset()

    def _reset(self) -> None:
        self._auth_id = b""
        self._ae: CertInfo | None = None
        self._n_asue = b""
        self._eph: Any = None
        self._eph_pub = b""
        self._bk = b""
        self._bkid = b""
        self._expect_n_ae = b""
        self._usk: UnicastKeys | None = None
        self._pending_usk: tuple[int, UnicastKeys, bool] | None = None
        self._uskid = -1
        self._last_announce = -1

    def __repr__(self) -> str:
        return f"Asue(state={self.state.value}, suite={self.suite.name})"

    def receive(self, packet: bytes, now: float) -> list[Event]:
        return self._receive("ae", packet, now)

    def _handlers(self) -> dict[type, Any]:
        return {
            m.Activation: self._on_activation,
            m.AccessAuthResponse: self._on_access_response,
            m.UnicastKeyRequest: self._on_usk_request,
            m.UnicastKeyConfirm: self._on_usk_confirm,
            m.MulticastAnnounce: self._on_announce,
        }

    # -- authentication ---------------------------------------------------------
    def _on_activation(self, msg: m.Activation, now: float) -> list[Event]:
        # Not once established: an unauthenticated activation must not tear down working
        # keys (re-authentication comes with a new association, hence a new Asue).
        if self.state not in (State.IDLE, State.WAIT_ACCESS_RESPONSE, State.FAILED):
            raise WaiStateError("activation refused in state " + self.state.value)
        # A flood of activations would make us sign for each: at most one per interval.
        if self._last_activation is not None and now - self._last_activation < self._min_interval:
            raise WaiStateError("activation rate limit")
        if msg.ecdh != self.suite.ecdh_params():
            raise WaiVerifyError("activation: ECDH parameters are not our suite's")
        if msg.asu_identity not in self._asus:
            self._last_activation = now
            return self._fail("activation names an ASU this terminal does not trust")
        if msg.ae_cert.id != 1:
            raise WaiDecodeError("activation: AE certificate is not X.509")
        ae = cert_info(msg.ae_cert.data)
        if ae.curve_oid_der != self.suite.curve_oid_der:
            raise WaiVerifyError("activation: AE key is not on our suite's curve")
        self._last_activation = now
        self._reset()
        self._ae = ae
        self._auth_id = msg.auth_id
        self._n_asue = random_nonce()
        self._eph, self._eph_pub = self.suite.new_ephemeral()
        req = m.AccessAuthRequest(
            msg.flag & Flag.CERT_AUTH_REQUIRED,
            msg.auth_id,
            self._n_asue,
            self._eph_pub,
            ae.identity,
            m.Certificate(self.credential.cert_der),
            self.suite.ecdh_params(),
        )
        sig = self.suite.signature_attr(
            self._cred_info.identity, self.credential.signer.sign(req.signed_part())
        )
        req = m.AccessAuthRequest(**{**req.__dict__, "signature": sig})
        self.state = State.WAIT_ACCESS_RESPONSE
        self._out.append(self._links["ae"].build(req, now, expect_answer=True))
        return []

    def _on_access_response(self, msg: m.AccessAuthResponse, now: float) -> list[Event]:
        self._expect(State.WAIT_ACCESS_RESPONSE)
        ae = self._ae
        assert ae is not None and msg.signature is not None
        _check(msg.n_asue == self._n_asue, "access response: N_ASUE is not ours")
        _check(msg.asue_key == self._eph_pub, "access response: ASUE key is not ours")
        _check(msg.ae_identity == ae.identity, "access response: AE identity differs")
        _check(
            msg.asue_identity == self._cred_info.identity, "access response: ASUE identity differs"
        )
        self.suite.check_public(msg.ae_key)
        try:
            self.suite.check_signature_attr(msg.signature, ae, msg.signed_part())
        except WaiVerifyError as e:
            return self._fail(f"AE signature: {e}")
        if msg.cert_result is None or msg.asu_sig_asue is None:
            return self._fail("access response carries no ASU certificate verdict")
        cr = msg.cert_result
        asu = self._asus.get(msg.asu_sig_asue.identity)
        if asu is None:
            return self._fail("ASU verdict signed by an ASU this terminal does not trust")
        try:
            self.suite.check_signature_attr(msg.asu_sig_asue, asu, cr.encode())
        except WaiVerifyError as e:
            return self._fail(f"ASU signature: {e}")
        if (
            cr.nonce1 != msg.n_ae
            or cr.nonce2 != self._n_asue
            or cr.cert1.data != self.credential.cert_der
            or cr.cert2.data != ae.der
        ):
            return self._fail("ASU verdict is not about this authentication")
        if msg.result != AccessResult.SUCCESS:
            return self._fail(
                "AE refused access",
                access_result=msg.result,
                asue_result=cr.result1,
                ae_result=cr.result2,
            )
        if cr.result2 != VerifyResult.VALID:
            return self._fail("ASU rejected the AE certificate", ae_result=cr.result2)
        x = self.suite.ecdh(self._eph, msg.ae_key)
        self._eph = None
        self._bk, self._expect_n_ae = self.suite.derive_bk(x, msg.n_ae, self._n_asue)
        self._bkid = self.suite.bkid(self._bk, self.addid)
        self._links["ae"].answered()
        self.state = State.WAIT_USK_REQUEST
        return []

    # -- unicast key ----------------------------------------------------------------
    def _on_usk_request(self, msg: m.UnicastKeyRequest, now: float) -> list[Event]:
        rekey = bool(msg.flag & Flag.USK_REKEYING)
        self._expect(State.ESTABLISHED if rekey else State.WAIT_USK_REQUEST)
        _check(msg.bkid == self._bkid, "unicast request: BKID differs")
        _check(msg.addid == self.addid, "unicast request: ADDID differs")
        _check(msg.n_ae == self._expect_n_ae, "unicast request: N_AE is not the expected challenge")
        if rekey:
            _check(msg.uskid == self._uskid ^ 1, "unicast rekey: USKID must toggle")
        n_asue = random_nonce()
        keys = self.suite.derive_usk(self._bk, self.addid, msg.n_ae, n_asue)
        resp = m.UnicastKeyResponse(
            msg.flag & Flag.USK_REKEYING,
            self._bkid,
            msg.uskid,
            self.addid,
            n_asue,
            msg.n_ae,
            self.ie,
        )
        resp = m.UnicastKeyResponse(
            **{**resp.__dict__, "mic": self.suite.mic(keys.mak, resp.mac_part())}
        )
        self._pending_usk = (msg.uskid, keys, rekey)
        self._n_asue = n_asue
        self.state = State.WAIT_USK_CONFIRM
        self._out.append(self._links["ae"].build(resp, now, expect_answer=True))
        return []

    def _on_usk_confirm(self, msg: m.UnicastKeyConfirm, now: float) -> list[Event]:
        self._expect(State.WAIT_USK_CONFIRM)
        assert self._pending_usk is not None
        uskid, keys, rekey = self._pending_usk
        _check(
            (msg.bkid, msg.uskid, msg.addid) == (self._bkid, uskid, self.addid),
            "unicast confirm: ids differ",
        )
        _check(msg.n_asue == self._n_asue, "unicast confirm: N_ASUE is not ours")
        self.suite.check_mic(keys.mak, msg.mac_part(), msg.mic)
        if msg.wapi_ie != self.ae_ie:
            return self._fail("AE WAPI IE differs from the one seen at association (downgrade?)")
        self._links["ae"].answered()
        self._usk, self._uskid, self._pending_usk = keys, uskid, None
        self._expect_n_ae = keys.next_n_ae
        self.state = State.ESTABLISHED if rekey else State.WAIT_MSK_ANNOUNCE
        return [UnicastKeyInstalled(uskid, keys.uek, keys.uck, rekey)]

    # -- multicast key ------------------------------------------------------------
    def _on_announce(self, msg: m.MulticastAnnounce, now: float) -> list[Event]:
        self._expect(State.WAIT_MSK_ANNOUNCE, State.ESTABLISHED)
        usk = self._usk
        assert usk is not None
        _check(
            msg.addid == self.addid and msg.uskid == self._uskid,
            "multicast announcement: ids differ",
        )
        self.suite.check_mic(usk.mak, msg.mac_part(), msg.mic)
        ann = int.from_bytes(msg.announce_id, "big")
        if ann <= self._last_announce:
            raise WaiStateError("multicast announcement ID replayed or reordered")
        if len(msg.key_data) != 16:
            raise WaiDecodeError("multicast key data must wrap a 16-byte NMK")
        self._last_announce = ann
        nmk = _wrap_nmk(usk.kek, msg.announce_id, msg.key_data)
        mek, mck = self.suite.derive_msk(nmk)
        resp = m.MulticastAnnounceResponse(
            msg.flag, msg.mskid, msg.uskid, self.addid, msg.announce_id
        )
        resp = m.MulticastAnnounceResponse(
            **{**resp.__dict__, "mic": self.suite.mic(usk.mak, resp.mac_part())}
        )
        self._out.append(self._links["ae"].build(resp, now, expect_answer=False))
        events: list[Event] = [
            MulticastKeyInstalled(msg.mskid, mek, mck, int.from_bytes(msg.data_pn, "little"))
        ]
        if self.state is State.WAIT_MSK_ANNOUNCE:
            self.state = State.ESTABLISHED
            assert self._ae is not None
            events.append(Associated(self._ae.identity.data))
        return events


# =============================================================================== AE
@dataclass
class MulticastKey:
    """The AP-wide NMK with its MSKID, announcement counter and first data PN."""

    nmk: bytes
    mskid: int
    announce_id: int
    data_pn: int = PN_START

    def __repr__(self) -> str:
        return f"MulticastKey(mskid={self.mskid}, announce_id={self.announce_id})"


class AeSession(Endpoint):
    """The access point's side for one terminal. ``asu_cert``: the ASU the AE uses
    (identity in the activation; its signature checked on verdicts)."""

    def __init__(
        self,
        credential: Credential,
        *,
        asu_cert: bytes,
        own_mac: bytes,
        asue_mac: bytes,
        ie: m.WapiIE,
        asue_ie: m.WapiIE,
        multicast: Callable[[], MulticastKey],
        timeout: float = 1.0,
        retries: int = 3,
        usk_lifetime: float | None = None,
    ) -> None:
        super().__init__()
        akm = asue_ie.akm_suites[0] if len(asue_ie.akm_suites) == 1 else b""
        if akm not in ie.akm_suites:
            raise WaiDecodeError("terminal WAPI IE must select exactly one AKM the AP offers")
        self.suite: Suite = suite_for_akm(akm)
        self.credential = credential
        self._info = credential.info
        self._asu = cert_info(asu_cert)
        self.addid = bytes(own_mac) + bytes(asue_mac)
        self.ie = ie.encode()
        self.asue_ie = asue_ie.encode()
        self._multicast = multicast
        self._links["asue"] = Link("asue", timeout=timeout, retries=retries)
        self._links["asu"] = Link("asu", timeout=timeout, retries=retries)
        self._usk_lifetime = usk_lifetime
        self._rekey_at: float | None = None
        self._auth_id = b""
        self._asue: CertInfo | None = None
        self._asue_cert = b""
        self._n_asue = b""
        self._asue_key = b""
        self._n_ae = b""
        self._bk = b""
        self._bkid = b""
        self._n_ae_usk = b""
        self._uskid = -1
        self._usk: UnicastKeys | None = None
        self._pending_uskid: int | None = None
        self._rekeying = False
        self._announced: MulticastKey | None = None
        self._ann_id = b""
        self.asue_identity: bytes | None = None

    def __repr__(self) -> str:
        return f"AeSession(state={self.state.value}, suite={self.suite.name})"

    def receive(self, packet: bytes, now: float, *, source: str = "asue") -> list[Event]:
        if source not in ("asue", "asu"):
            raise WaiDecodeError("source must be asue or asu")
        return self._receive(source, packet, now)

    def _handlers(self) -> dict[type, Any]:
        return {
            m.AccessAuthRequest: self._on_access_request,
            m.CertAuthResponse: self._on_cert_response,
            m.UnicastKeyResponse: self._on_usk_response,
            m.MulticastAnnounceResponse: self._on_announce_response,
        }

    def _receive(self, link: str, packet: bytes, now: float) -> list[Event]:
        # each message comes from one side only
        h = m.Header.decode(packet)
        from_asu = h.subtype == m.Subtype.CERT_AUTH_RESPONSE
        if from_asu != (link == "asu"):
            return [PacketDropped(f"subtype {h.subtype} not accepted from {link}")]
        return super()._receive(link, packet, now)

    def start(self, now: float) -> None:
        """Send the authentication activation."""
        if self.state not in (State.IDLE, State.FAILED, State.ESTABLISHED):
            raise WaiStateError("authentication already in progress")
        self._auth_id = random_nonce()
        act = m.Activation(
            Flag.CERT_AUTH_REQUIRED,
            self._auth_id,
            self._asu.identity,
            m.Certificate(self.credential.cert_der),
            self.suite.ecdh_params(),
        )
        self.state = State.WAIT_ACCESS_REQUEST
        self._out.append(self._links["asue"].build(act, now, expect_answer=True))

    def _on_access_request(self, msg: m.AccessAuthRequest, now: float) -> list[Event]:
        self._expect(State.WAIT_ACCESS_REQUEST)
        assert msg.signature is not None
        _check(msg.auth_id == self._auth_id, "access request: auth-id is not this activation's")
        _check(msg.ae_identity == self._info.identity, "access request: AE identity differs")
        _check(msg.ecdh == self.suite.ecdh_params(), "access request: ECDH parameters differ")
        if msg.asue_cert.id != 1:
            raise WaiDecodeError("access request: ASUE certificate is not X.509")
        asue = cert_info(msg.asue_cert.data)
        self.suite.check_public(msg.asue_key)
        try:
            self.suite.check_signature_attr(msg.signature, asue, msg.signed_part())
        except WaiVerifyError as e:
            return self._fail(f"ASUE signature: {e}")
        self._asue, self._asue_cert = asue, msg.asue_cert.data
        self._n_asue, self._asue_key = msg.n_asue, msg.asue_key
        self._n_ae = random_nonce()
        self._links["asue"].answered()
        req = m.CertAuthRequest(
            self.addid,
            self._n_ae,
            msg.n_asue,
            msg.asue_cert,
            m.Certificate(self.credential.cert_der),
            msg.asu_list,  # the ASUs the terminal trusts: the ASU checks it is one
        )
        self.state = State.WAIT_CERT_RESPONSE
        self._out.append(self._links["asu"].build(req, now, expect_answer=True))
        return []

    def _on_cert_response(self, msg: m.CertAuthResponse, now: float) -> list[Event]:
        self._expect(State.WAIT_CERT_RESPONSE)
        asue = self._asue
        assert asue is not None
        cr = msg.cert_result
        _check(msg.addid == self.addid, "certificate response: ADDID differs")
        _check(
            cr.nonce1 == self._n_ae and cr.nonce2 == self._n_asue,
            "certificate response: nonces differ",
        )
        _check(
            cr.cert1.data == self._asue_cert and cr.cert2.data == self.credential.cert_der,
            "certificate response: certificates differ",
        )
        sig = msg.asu_sig_ae or msg.asu_sig_asue
        try:
            self.suite.check_signature_attr(sig, self._asu, cr.encode())
        except WaiVerifyError as e:
            # a forged verdict: drop it and wait for the real one (retransmission)
            raise WaiVerifyError(f"ASU signature: {e}") from None
        self._links["asu"].answered()
        if cr.result1 != VerifyResult.VALID:
            result = AccessResult.CERTIFICATE_ERROR
        elif cr.result2 != VerifyResult.VALID:
            result = AccessResult.PROHIBITED_BY_AE
        else:
            result = AccessResult.SUCCESS
        eph, eph_pub = self.suite.new_ephemeral()
        resp = m.AccessAuthResponse(
            Flag.OPTIONAL_FIELD,
            self._n_asue,
            self._n_ae,
            result,
            self._asue_key,
            eph_pub,
            self._info.identity,
            asue.identity,
            cr,
            msg.asu_sig_asue,
            msg.asu_sig_ae,
        )
        sig_attr = self.suite.signature_attr(
            self._info.identity, self.credential.signer.sign(resp.signed_part())
        )
        resp = m.AccessAuthResponse(**{**resp.__dict__, "signature": sig_attr})
        asue_link = self._links["asue"]
        self._out.append(asue_link.build(resp, now, expect_answer=False))
        asue_link.answer = asue_link.last_tx  # a repeated access request gets it again
        if result != AccessResult.SUCCESS:
            return self._fail(
                "terminal certificate refused by the ASU",
                access_result=result,
                asue_result=cr.result1,
                ae_result=cr.result2,
            )
        try:
            x = self.suite.ecdh(eph, self._asue_key)
        except WaiVerifyError as e:
            return self._fail(str(e))
        self._bk, self._n_ae_usk = self.suite.derive_bk(x, self._n_ae, self._n_asue)
        self._bkid = self.suite.bkid(self._bk, self.addid)
        self.asue_identity = asue.identity.data
        self._send_usk_request(now, rekey=False)
        return []

    def _send_usk_request(self, now: float, *, rekey: bool) -> None:
        uskid = 0 if self._uskid < 0 else self._uskid ^ 1
        flag = Flag.USK_REKEYING if rekey else 0
        req = m.UnicastKeyRequest(flag, self._bkid, uskid, self.addid, self._n_ae_usk)
        self._pending_uskid = uskid
        self._rekeying = rekey
        self.state = State.WAIT_USK_RESPONSE
        self._out.append(self._links["asue"].build(req, now, expect_answer=True))

    def _on_usk_response(self, msg: m.UnicastKeyResponse, now: float) -> list[Event]:
        self._expect(State.WAIT_USK_RESPONSE)
        assert self._pending_uskid is not None
        uskid = self._pending_uskid
        _check(
            (msg.bkid, msg.uskid, msg.addid) == (self._bkid, uskid, self.addid),
            "unicast response: ids differ",
        )
        _check(msg.n_ae == self._n_ae_usk, "unicast response: N_AE is not ours")
        keys = self.suite.derive_usk(self._bk, self.addid, self._n_ae_usk, msg.n_asue)
        self.suite.check_mic(keys.mak, msg.mac_part(), msg.mic)
        if msg.wapi_ie != self.asue_ie:
            return self._fail("terminal WAPI IE differs from its association request (downgrade?)")
        conf = m.UnicastKeyConfirm(
            msg.flag & Flag.USK_REKEYING, self._bkid, uskid, self.addid, msg.n_asue, self.ie
        )
        conf = m.UnicastKeyConfirm(
            **{**conf.__dict__, "mic": self.suite.mic(keys.mak, conf.mac_part())}
        )
        self._links["asue"].answered()
        self._out.append(self._links["asue"].build(conf, now, expect_answer=False))
        self._usk, self._uskid, self._pending_uskid = keys, uskid, None
        self._n_ae_usk = keys.next_n_ae
        if self._usk_lifetime is not None:
            self._rekey_at = now + self._usk_lifetime
        events: list[Event] = [UnicastKeyInstalled(uskid, keys.uek, keys.uck, self._rekeying)]
        if self._rekeying:
            self.state = State.ESTABLISHED
        else:
            self.announce(now)
        return events

    def announce(self, now: float) -> None:
        """Announce the AP's current multicast key (first time, or after a rekey)."""
        if self.state not in (State.WAIT_USK_RESPONSE, State.ESTABLISHED):
            raise WaiStateError("no unicast key to announce the multicast key with")
        usk = self._usk
        assert usk is not None
        mk = self._multicast()
        ann = mk.announce_id.to_bytes(16, "big")
        msg = m.MulticastAnnounce(
            0,
            mk.mskid,
            self._uskid,
            self.addid,
            mk.data_pn.to_bytes(16, "little"),
            ann,
            _wrap_nmk(usk.kek, ann, mk.nmk),
        )
        msg = m.MulticastAnnounce(
            **{**msg.__dict__, "mic": self.suite.mic(usk.mak, msg.mac_part())}
        )
        self._announced, self._ann_id = mk, ann
        first = self.state is not State.ESTABLISHED
        self.state = State.WAIT_MSK_RESPONSE if first else State.ESTABLISHED
        self._out.append(self._links["asue"].build(msg, now, expect_answer=True))

    def _on_announce_response(self, msg: m.MulticastAnnounceResponse, now: float) -> list[Event]:
        self._expect(State.WAIT_MSK_RESPONSE, State.ESTABLISHED)
        usk, mk = self._usk, self._announced
        assert usk is not None and mk is not None
        _check(
            (msg.mskid, msg.uskid, msg.addid, msg.announce_id)
            == (mk.mskid, self._uskid, self.addid, self._ann_id),
            "multicast response: ids differ",
        )
        self.suite.check_mic(usk.mak, msg.mac_part(), msg.mic)
        self._links["asue"].answered()
        mek, mck = self.suite.derive_msk(mk.nmk)
        events: list[Event] = [MulticastKeyInstalled(mk.mskid, mek, mck, mk.data_pn)]
        if self.state is State.WAIT_MSK_RESPONSE:
            self.state = State.ESTABLISHED
            assert self._asue is not None
            events.append(Associated(self._asue.identity.data))
        return events

    def rekey_unicast(self, now: float) -> None:
        """Start a USK rekey (on demand; also done by ``handle_timer`` after the lifetime)."""
        self._expect(State.ESTABLISHED)
        self._send_usk_request(now, rekey=True)

    def next_timer(self) -> float | None:
        t = super().next_timer()
        if self._rekey_at is not None and self.state is State.ESTABLISHED:
            return self._rekey_at if t is None else min(t, self._rekey_at)
        return t

    def handle_timer(self, now: float) -> list[Event]:
        events = super().handle_timer(now)
        if self._rekey_at is not None and self.state is State.ESTABLISHED and now >= self._rekey_at:
            self._rekey_at = None
            self.rekey_unicast(now)
        return events


class AccessPoint:
    """The AE for many terminals: one :class:`AeSession` per terminal MAC, the AP-wide
    multicast key, and a cap on half-open sessions and on new associations per second so
    that a flood cannot grow state without bound."""

    def __init__(
        self,
        credential: Credential,
        *,
        asu_cert: bytes,
        mac: bytes,
        ie: m.WapiIE,
        max_pending: int = 64,
        max_sessions: int = 4096,
        associations_per_second: float = 50.0,
        timeout: float = 1.0,
        retries: int = 3,
        usk_lifetime: float | None = None,
        msk_lifetime: float | None = None,
    ) -> None:
        self.credential = credential
        self.asu_cert = asu_cert
        self.msk_lifetime = msk_lifetime
        self._msk_due: float | None = None
        self.mac = bytes(mac)
        self.ie = ie
        self.max_pending = max_pending
        self.max_sessions = max_sessions
        self.rate = associations_per_second
        self._tokens = float(max_pending)
        self._last: float | None = None
        self._timeout, self._retries, self._lifetime = timeout, retries, usk_lifetime
        self.sessions: dict[bytes, AeSession] = {}
        self._mk = MulticastKey(secrets.token_bytes(16), 0, 1)

    def __repr__(self) -> str:
        return f"AccessPoint(sessions={len(self.sessions)})"

    def multicast_key(self) -> MulticastKey:
        return self._mk

    def rekey_multicast(self, now: float) -> list[Outgoing]:
        """A new NMK (MSKID toggles, announcement ID increases), announced to every
        established terminal. Returns (terminal MAC-tagged) packets via the sessions."""
        self._mk = MulticastKey(
            secrets.token_bytes(16), self._mk.mskid ^ 1, self._mk.announce_id + 1
        )
        out: list[Outgoing] = []
        for mac, s in self.sessions.items():
            if s.state is State.ESTABLISHED:
                s.announce(now)
                out += [Outgoing(mac.hex(), o.packet) for o in s.data_to_send()]
        return out

    def next_timer(self) -> float | None:
        """When the multicast key is due for renewal (``msk_lifetime`` after the first
        association or the last renewal)."""
        return self._msk_due

    def handle_timer(self, now: float) -> list[Outgoing]:
        """Renew the multicast key when due; the announcements to send, tagged by the
        terminal's MAC in hex."""
        if self._msk_due is None or now < self._msk_due:
            return []
        assert self.msk_lifetime is not None
        self._msk_due = now + self.msk_lifetime
        return self.rekey_multicast(now)

    def _pending(self) -> int:
        return sum(
            1 for s in self.sessions.values() if s.state not in (State.ESTABLISHED, State.FAILED)
        )

    def associate(self, sta_mac: bytes, sta_ie: m.WapiIE, now: float) -> AeSession:
        """A terminal associated: start (or restart) its authentication. Raises
        RateLimitError-like :class:`WaiStateError` when over the limits."""
        if self._last is not None:
            self._tokens = min(
                float(self.max_pending), self._tokens + (now - self._last) * self.rate
            )
        self._last = now
        for mac in [k for k, s in self.sessions.items() if s.state is State.FAILED]:
            del self.sessions[mac]
        if self._tokens < 1:
            raise WaiStateError("association rate limit")
        if sta_mac not in self.sessions and (
            self._pending() >= self.max_pending or len(self.sessions) >= self.max_sessions
        ):
            raise WaiStateError("too many terminals authenticating")
        self._tokens -= 1
        s = AeSession(
            self.credential,
            asu_cert=self.asu_cert,
            own_mac=self.mac,
            asue_mac=sta_mac,
            ie=self.ie,
            asue_ie=sta_ie,
            multicast=self.multicast_key,
            timeout=self._timeout,
            retries=self._retries,
            usk_lifetime=self._lifetime,
        )
        self.sessions[bytes(sta_mac)] = s
        s.start(now)
        if self.msk_lifetime is not None and self._msk_due is None:
            self._msk_due = now + self.msk_lifetime
        return s

    def disassociate(self, sta_mac: bytes) -> None:
        self.sessions.pop(bytes(sta_mac), None)


# =============================================================================== ASU
class Asu:
    """The authentication server: checks both certificates with ``validator`` (CA, CRL,
    usage) and signs the verdict. Stateless; each request gets one response."""

    def __init__(self, credential: Credential, validator: CertValidator, suite: Suite) -> None:
        self.credential = credential
        self._info = credential.info
        self.validator = validator
        self.suite = suite
        self._seq = 0

    def __repr__(self) -> str:
        return f"Asu(suite={self.suite.name})"

    def _verdict(self, cert: m.Certificate, at: datetime) -> VerifyResult:
        if cert.id != 1:
            return VerifyResult.UNKNOWN_ERROR
        try:
            info = cert_info(cert.data)
        except WaiDecodeError:
            return VerifyResult.UNKNOWN_ERROR
        if info.curve_oid_der != self.suite.curve_oid_der:
            return VerifyResult.BAD_USAGE
        return self.validator(cert.data, at)

    def handle(self, packet: bytes, at: datetime) -> bytes:
        """One certificate authentication request in, its signed response out."""
        h, msg = m.decode_packet(packet)
        if not isinstance(msg, m.CertAuthRequest):
            raise WaiStateError("the ASU only answers certificate authentication requests")
        if msg.asu_list is not None and self._info.identity not in msg.asu_list:
            raise WaiVerifyError("the terminal does not trust this ASU")
        cr = m.CertVerifyResult(
            msg.n_ae,
            msg.n_asue,
            self._verdict(msg.asue_cert, at),
            msg.asue_cert,
            self._verdict(msg.ae_cert, at),
            msg.ae_cert,
        )
        sig = self.suite.signature_attr(
            self._info.identity, self.credential.signer.sign(cr.encode())
        )
        return m.encode_packet(m.CertAuthResponse(msg.addid, cr, sig), h.seq)
