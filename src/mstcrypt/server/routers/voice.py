"""Voice call signalling (guide §7.1): terminals with a §7.3 session token register,
invite, answer, confirm and hang up; events are long-polled. The server relays the
end-to-end authenticated key-agreement messages (apps.voice.keyagree) and never holds
a media key."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request

from mstcrypt.apps.voice.service import CallSwitch
from mstcrypt.errors import AuthenticationError
from mstcrypt.server.deps import Session, session

router = APIRouter(prefix="/voice", tags=["terminal"], dependencies=[Depends(session)])


def _switch(request: Request) -> CallSwitch:
    sw = getattr(request.app.state, "voice", None)
    if sw is None:
        sw = request.app.state.voice = CallSwitch()
    return sw  # type: ignore[no-any-return]


Switch = Annotated[CallSwitch, Depends(_switch)]


def _user(claims: dict[str, Any]) -> str:
    owner = claims.get("owner")
    if not isinstance(owner, str) or not owner:
        raise AuthenticationError("this session has no platform owner")
    return owner


def _call(c: Any) -> dict[str, Any]:
    return {"call_id": c.call_id, "state": c.state, "caller": c.caller, "callee": c.callee}


@router.post("/register")
def register(
    claims: Session, sw: Switch, media: Annotated[str | None, Body(embed=True)] = None
) -> dict[str, Any]:
    """Announce this terminal as reachable (media address optional); renew every 5 min."""
    return sw.register(_user(claims), media)


@router.post("/unregister")
def unregister(claims: Session, sw: Switch) -> dict[str, Any]:
    sw.unregister(_user(claims))
    return {"ok": True}


@router.post("/calls")
def invite(
    claims: Session,
    sw: Switch,
    offer: Annotated[dict[str, Any], Body()],
    media: Annotated[str | None, Body()] = None,
) -> dict[str, Any]:
    """Place a call: relay the caller's Offer to the callee, who is told it is ringing."""
    return _call(sw.invite(_user(claims), offer, media))


@router.post("/calls/{call_id}/answer")
def answer(
    call_id: str,
    claims: Session,
    sw: Switch,
    answer: Annotated[dict[str, Any], Body()],
    media: Annotated[str | None, Body()] = None,
) -> dict[str, Any]:
    return _call(sw.answer(_user(claims), call_id, answer, media))


@router.post("/calls/{call_id}/confirm")
def confirm(
    call_id: str, claims: Session, sw: Switch, confirm: Annotated[dict[str, Any], Body(embed=True)]
) -> dict[str, Any]:
    return _call(sw.confirm(_user(claims), call_id, confirm))


@router.post("/calls/{call_id}/bye")
def bye(
    call_id: str,
    claims: Session,
    sw: Switch,
    reason: Annotated[str, Body(embed=True, max_length=64)] = "hangup",
) -> dict[str, Any]:
    return _call(sw.bye(_user(claims), call_id, reason))


@router.get("/calls/{call_id}")
def state(call_id: str, claims: Session, sw: Switch) -> dict[str, Any]:
    return _call(sw.call_state(_user(claims), call_id))


@router.get("/events")
def events(
    claims: Session, sw: Switch, timeout: Annotated[float, Query(ge=0, le=30)] = 20.0
) -> dict[str, Any]:
    """This terminal's pending events (invite, answer, confirm, bye), waiting up to
    ``timeout`` seconds for the first."""
    return {"events": sw.events(_user(claims), timeout)}
