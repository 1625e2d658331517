"""The call switch (server side of signalling): who may do what, in which state, and
what it refuses — a caller spoofing another user, steps out of order or from the wrong
party, reused call ids, unreachable callees — plus expiry and long-polled events."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from mstcrypt.apps.voice import CallFormatError, CallPolicyError, CallReplayError
from mstcrypt.apps.voice.service import RING_TIMEOUT, CallSwitch, UnknownCallError
from mstcrypt.errors import AccessDeniedError

PT = "A" * 87  # base64url of 65 bytes
EPH = "BA" + "A" * 85  # 0x04 then zeros: an uncompressed point encoding (not validated here)


def offer(cid: str = "a" * 32, frm: str = "alice", to: str = "bob") -> dict[str, Any]:
    return {"v": 1, "type": "offer", "call_id": cid, "ts": int(time.time()), "from": frm,
            "to": to, "profiles": ["MST_SM4_CM_128_HMAC_SM3_80"], "ssrc": 1, "cert": "MAA",
            "eph": EPH}  # fmt: skip


def answer(cid: str = "a" * 32) -> dict[str, Any]:
    return {"v": 1, "type": "answer", "call_id": cid, "profile": "MST_SM4_CM_128_HMAC_SM3_80",
            "ssrc": 2, "cert": "MAA", "eph": EPH, "confirm": "A" * 43}  # fmt: skip


def confirm(cid: str = "a" * 32) -> dict[str, Any]:
    return {"v": 1, "type": "confirm", "call_id": cid, "confirm": "A" * 43, "mac": "A" * 43}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def sw() -> CallSwitch:
    s = CallSwitch(clock=Clock())
    for u in ("alice", "bob", "carol"):
        s.register(u, f"127.0.0.1:{4000 + len(u)}")
    return s


def test_call_flow_and_events(sw: CallSwitch) -> None:
    c = sw.invite("alice", offer(), "127.0.0.1:5000")
    assert c.state == "ringing"
    (ev,) = sw.events("bob", 0)
    assert ev["event"] == "invite" and ev["from"] == "alice" and ev["media"] == "127.0.0.1:5000"
    sw.answer("bob", c.call_id, answer(), "127.0.0.1:6000")
    (ev,) = sw.events("alice", 0)
    assert ev["event"] == "answer" and ev["media"] == "127.0.0.1:6000"
    assert sw.confirm("alice", c.call_id, confirm()).state == "active"
    assert sw.events("bob", 0)[0]["event"] == "confirm"
    sw.bye("bob", c.call_id)
    assert sw.events("alice", 0) == [{"event": "bye", "call_id": c.call_id, "reason": "hangup"}]
    assert sw.events("carol", 0) == []  # nobody else hears of the call
    with pytest.raises(UnknownCallError):
        sw.call_state("carol", c.call_id)


def test_caller_cannot_speak_for_another_user(sw: CallSwitch) -> None:
    with pytest.raises(AccessDeniedError):
        sw.invite("carol", offer(frm="alice"), None)


def test_steps_only_from_their_party_and_in_order(sw: CallSwitch) -> None:
    c = sw.invite("alice", offer(), None)
    with pytest.raises(CallReplayError):
        sw.confirm("alice", c.call_id, confirm())  # before the answer
    with pytest.raises(AccessDeniedError):
        sw.answer("alice", c.call_id, answer(), None)  # the caller answering itself
    with pytest.raises(UnknownCallError):
        sw.answer("carol", c.call_id, answer(), None)  # a third party
    sw.answer("bob", c.call_id, answer(), None)
    with pytest.raises(CallReplayError):
        sw.answer("bob", c.call_id, answer(), None)  # replayed answer
    with pytest.raises(AccessDeniedError):
        sw.confirm("bob", c.call_id, confirm())
    with pytest.raises(CallPolicyError):
        sw.confirm("alice", c.call_id, confirm("b" * 32))  # confirm of another call
    sw.confirm("alice", c.call_id, confirm())
    with pytest.raises(CallReplayError):
        sw.confirm("alice", c.call_id, confirm())


def test_reused_call_id_and_unreachable_callee(sw: CallSwitch) -> None:
    sw.invite("alice", offer(), None)
    with pytest.raises(CallReplayError):
        sw.invite("alice", offer(), None)
    with pytest.raises(UnknownCallError):
        sw.invite("alice", offer("c" * 32, to="dave"), None)
    sw.unregister("alice")
    with pytest.raises(CallPolicyError):
        sw.invite("alice", offer("d" * 32), None)


@pytest.mark.parametrize("bad", [
    {"v": 1, "type": "offer"}, "not json", {"type": "answer"}, [], offer() | {"x": 1},
])  # fmt: skip
def test_malformed_messages_refused(sw: CallSwitch, bad: Any) -> None:
    with pytest.raises((CallFormatError, CallPolicyError)):
        sw.invite("alice", bad, None)


def test_bad_media_addresses(sw: CallSwitch) -> None:
    for media in ("nohost", ":80", "h:0", "h:70000", "h:x", "a" * 200 + ":1", 5):
        with pytest.raises(CallPolicyError):
            sw.register("alice", media)  # type: ignore[arg-type]


def test_ringing_times_out(sw: CallSwitch) -> None:
    c = sw.invite("alice", offer(), None)
    sw.events("bob", 0)
    sw._clock.t += RING_TIMEOUT + 1  # type: ignore[attr-defined]
    sw.register("carol")  # any operation runs the expiry
    assert sw.events("alice", 0)[0] == {"event": "bye", "call_id": c.call_id,
                                        "reason": "timeout"}  # fmt: skip
    with pytest.raises(UnknownCallError):
        sw.call_state("alice", c.call_id)


def test_long_poll_wakes_on_event() -> None:
    sw = CallSwitch()
    sw.register("alice")
    sw.register("bob")
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.extend(sw.events("bob", 5)))
    t.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    sw.invite("alice", offer(), None)
    t.join(5)
    assert got and got[0]["event"] == "invite" and time.monotonic() - t0 < 2
    with pytest.raises(CallPolicyError):
        sw.events("nobody", 0)
