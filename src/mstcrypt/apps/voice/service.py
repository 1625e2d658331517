"""The call server's switching logic (server side), independent of HTTP: presence
registration, invite → ringing → answer → confirm → bye, and per-user event queues
that clients long-poll. It relays the key-agreement messages without being able to
read or alter them unnoticed (they are end-to-end authenticated, see keyagree); it does
check what it can: the caller named in an offer is the session's owner, each step comes
from the party it belongs to and in order, call ids are unique.

State is in this process's memory (one call server instance); calls and presence
expire on their own, and queues are bounded.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from mstcrypt.apps.voice.errors import CallPolicyError, CallReplayError
from mstcrypt.apps.voice.keyagree import Answer, Confirm, Offer, parse_message
from mstcrypt.errors import AccessDeniedError

__all__ = ["Call", "CallSwitch", "UnknownCallError"]

REGISTRATION_TTL: Final = 300.0
RING_TIMEOUT: Final = 60.0
CALL_TTL: Final = 4 * 3600.0
MAX_EVENTS: Final = 256
_MEDIA_MAX: Final = 100


class UnknownCallError(CallPolicyError):
    """No such call (or user) for this caller."""

    code = "not_found"


@dataclass
class Call:
    call_id: str
    caller: str
    callee: str
    state: str  # ringing, answered, active, ended
    created: float
    updated: float
    caller_media: str | None = None
    callee_media: str | None = None


@dataclass
class _Presence:
    media: str | None
    expires: float
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))


def _media(v: object) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not 0 < len(v) <= _MEDIA_MAX or v.count(":") < 1:
        raise CallPolicyError("media must be 'host:port'")
    host, _, port = v.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CallPolicyError("media must be 'host:port'")
    return v


class CallSwitch:
    """Thread-safe call switching for the HTTP router (``clock`` is injectable)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Condition()
        self._users: dict[str, _Presence] = {}
        self._calls: dict[str, Call] = {}

    # -- housekeeping --------------------------------------------------------------
    def _expire(self, now: float) -> None:
        for user in [u for u, p in self._users.items() if p.expires < now]:
            del self._users[user]
        for cid, c in list(self._calls.items()):
            if (
                (c.state == "ringing" and now - c.created > RING_TIMEOUT)
                or (now - c.updated > CALL_TTL)
                or (c.state == "ended" and now - c.updated > RING_TIMEOUT)
            ):
                if c.state != "ended":
                    self._push(c.caller, {"event": "bye", "call_id": cid, "reason": "timeout"})
                    self._push(c.callee, {"event": "bye", "call_id": cid, "reason": "timeout"})
                del self._calls[cid]

    def _push(self, user: str, event: dict[str, Any]) -> None:
        p = self._users.get(user)
        if p is not None:
            p.events.append(event)
            self._lock.notify_all()

    def _call(self, call_id: str, who: str) -> Call:
        c = self._calls.get(call_id)
        if c is None or who not in (c.caller, c.callee):
            raise UnknownCallError("no such call")
        return c

    # -- operations ------------------------------------------------------------------
    def register(self, user: str, media: str | None = None) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            self._expire(now)
            p = self._users.get(user)
            if p is None:
                p = self._users[user] = _Presence(_media(media), now + REGISTRATION_TTL)
            else:
                p.media, p.expires = _media(media), now + REGISTRATION_TTL
            return {"user": user, "expires_in": REGISTRATION_TTL}

    def unregister(self, user: str) -> None:
        with self._lock:
            self._users.pop(user, None)

    def invite(self, user: str, offer_json: object, media: str | None) -> Call:
        offer = parse_message(offer_json)  # type: ignore[arg-type]
        if not isinstance(offer, Offer):
            raise CallPolicyError("invite carries an offer")
        if offer.caller != user:
            raise AccessDeniedError("the offer is not from the session's user")
        with self._lock:
            now = self._clock()
            self._expire(now)
            if user not in self._users:
                raise CallPolicyError("register before calling")
            if offer.callee not in self._users:
                raise UnknownCallError(f"{offer.callee} is not reachable")
            if offer.call_id in self._calls:
                raise CallReplayError("call id already used")
            c = Call(offer.call_id, user, offer.callee, "ringing", now, now, _media(media))
            self._calls[c.call_id] = c
            event = {"event": "invite", "call_id": c.call_id, "from": user}
            event.update(offer=offer.to_json(), media=c.caller_media)
            self._push(offer.callee, event)
            return c

    def answer(self, user: str, call_id: str, answer_json: object, media: str | None) -> Call:
        ans = parse_message(answer_json)  # type: ignore[arg-type]
        if not isinstance(ans, Answer) or ans.call_id != call_id:
            raise CallPolicyError("answer for this call expected")
        with self._lock:
            c = self._call(call_id, user)
            if user != c.callee:
                raise AccessDeniedError("only the callee answers")
            if c.state != "ringing":
                raise CallReplayError(f"the call is {c.state}, not ringing")
            c.state, c.updated, c.callee_media = "answered", self._clock(), _media(media)
            self._push(c.caller, {"event": "answer", "call_id": call_id,
                                  "answer": ans.to_json(), "media": c.callee_media})  # fmt: skip
            return c

    def confirm(self, user: str, call_id: str, confirm_json: object) -> Call:
        conf = parse_message(confirm_json)  # type: ignore[arg-type]
        if not isinstance(conf, Confirm) or conf.call_id != call_id:
            raise CallPolicyError("confirm for this call expected")
        with self._lock:
            c = self._call(call_id, user)
            if user != c.caller:
                raise AccessDeniedError("only the caller confirms")
            if c.state != "answered":
                raise CallReplayError(f"the call is {c.state}, not answered")
            c.state, c.updated = "active", self._clock()
            self._push(c.callee, {"event": "confirm", "call_id": call_id,
                                  "confirm": conf.to_json()})  # fmt: skip
            return c

    def bye(self, user: str, call_id: str, reason: str = "hangup") -> Call:
        reason = reason if isinstance(reason, str) and len(reason) <= 64 else "hangup"
        with self._lock:
            c = self._call(call_id, user)
            if c.state == "ended":
                return c
            c.state, c.updated = "ended", self._clock()
            other = c.callee if user == c.caller else c.caller
            self._push(other, {"event": "bye", "call_id": call_id, "reason": reason})
            return c

    def events(self, user: str, timeout: float) -> list[dict[str, Any]]:
        """This user's queued events, waiting up to ``timeout`` seconds for one."""
        deadline = self._clock() + max(0.0, min(timeout, 30.0))
        with self._lock:
            while True:
                p = self._users.get(user)
                if p is None:
                    raise CallPolicyError("not registered")
                if p.events:
                    out = list(p.events)
                    p.events.clear()
                    return out
                left = deadline - self._clock()
                if left <= 0:
                    return []
                self._lock.wait(min(left, 1.0))

    def call_state(self, user: str, call_id: str) -> Call:
        with self._lock:
            return self._call(call_id, user)
