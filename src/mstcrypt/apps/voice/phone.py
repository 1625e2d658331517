"""A terminal placing or answering one call end to end: signalling through the call
server, the per-call key agreement, and SRTP media over UDP. The blocking signalling
calls run in a worker thread so the media loop keeps its pace."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mstcrypt.apps.voice.errors import CallError, CallPolicyError
from mstcrypt.apps.voice.keyagree import (
    Answer,
    CalleeHandshake,
    CallerHandshake,
    CallParty,
    Confirm,
    Offer,
    OfferGuard,
    parse_message,
)
from mstcrypt.apps.voice.signalling import SignallingClient
from mstcrypt.apps.voice.transport import MediaEndpoint
from mstcrypt.protocols.srtp import SrtpStats

__all__ = ["CallResult", "Phone"]


@dataclass
class CallResult:
    call_id: str
    peer: str
    profile: str
    sent_packets: int
    received_pcm: bytes = field(repr=False)
    rx_stats: SrtpStats
    ended_by: str
    #: packets the peer said (RTCP SR) it sent; None without a report
    remote_sent: int | None = None


def _sent(ep: MediaEndpoint) -> int | None:
    return ep.remote_report.packets if ep.remote_report is not None else None


def _addr(media: object) -> tuple[str, int]:
    if not isinstance(media, str) or ":" not in media:
        raise CallPolicyError("the peer sent no media address")
    host, _, port = media.rpartition(":")
    return host, int(port)


class Phone:
    """``party``: the terminal's identity and keys; ``sig``: its signalling client;
    ``media_host``/``media_port``: where to bind UDP (port 0: any); ``advertise``: the
    media address to give the peer (default the bound one; a NAT's or a relay's)."""

    def __init__(
        self,
        party: CallParty,
        sig: SignallingClient,
        *,
        media_host: str = "127.0.0.1",
        media_port: int = 0,
        advertise: str | None = None,
    ) -> None:
        self.party = party
        self.sig = sig
        self.media_host, self.media_port = media_host, media_port
        self.advertise = advertise
        self.guard = OfferGuard()

    async def _io(self, fn: Any, *args: Any, **kw: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kw)

    async def _bind(self) -> tuple[MediaEndpoint, str]:
        ep = MediaEndpoint(host=self.media_host, port=self.media_port)
        host, port = await ep.start()
        return ep, self.advertise or f"{host}:{port}"

    async def _wait(self, call_id: str | None, kinds: set[str], timeout: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise CallPolicyError(f"timed out waiting for {sorted(kinds)}")
            for ev in await self._io(self.sig.events, min(left, 20.0)):
                if call_id is not None and ev.get("call_id") != call_id:
                    continue
                if ev.get("event") in kinds:
                    return ev  # type: ignore[no-any-return]

    async def call(
        self, callee: str, pcm: bytes, *, pace: float = 1.0, answer_timeout: float = 60.0,
        drain: float = 0.5,
    ) -> CallResult:  # fmt: skip
        """Call ``callee``, send ``pcm`` once the call is up, hang up; returns what the
        callee sent meanwhile."""
        ep, media = await self._bind()
        try:
            await self._io(self.sig.register, media)
            cert = await self._io(self.sig.encryption_certificate, callee)
            hs = CallerHandshake(self.party, callee, cert, now=datetime.now(UTC))
            await self._io(self.sig.invite, hs.offer().to_json(), media)
            try:
                ev = await self._wait(hs.call_id, {"answer", "bye"}, answer_timeout)
            except CallPolicyError:
                await self._io(self.sig.bye, hs.call_id, "no answer")
                raise
            if ev["event"] == "bye":
                raise CallPolicyError(f"the call was refused: {ev.get('reason')}")
            try:
                ans = parse_message(ev["answer"])
                if not isinstance(ans, Answer):
                    raise CallPolicyError("expected an answer")
                confirm = hs.receive_answer(ans)
            except CallError as exc:
                await self._io(self.sig.bye, hs.call_id, getattr(exc, "code", "error"))
                raise
            await self._io(self.sig.confirm, hs.call_id, confirm.to_json())
            assert hs.keys is not None
            ep.set_keys(hs.keys)
            peer = _addr(ev.get("media"))
            sent = await ep.send(pcm, peer, pace=pace)
            ep.send_bye(peer)
            await asyncio.sleep(drain)
            await self._io(self.sig.bye, hs.call_id, "hangup")
            return CallResult(hs.call_id, callee, hs.keys.profile.name, sent,
                              ep.received.pcm(), ep.rx.stats, "caller", _sent(ep))  # fmt: skip
        finally:
            ep.close()

    async def answer(
        self, pcm: bytes = b"", *, pace: float = 1.0, timeout: float = 120.0,
        call_timeout: float = 3600.0,
    ) -> CallResult:  # fmt: skip
        """Wait for a call, accept it (refusing invalid ones: they are answered with a
        bye naming the check that failed), optionally send ``pcm``, and return the audio
        received once the caller hangs up."""
        ep, media = await self._bind()
        try:
            await self._io(self.sig.register, media)
            while True:
                ev = await self._wait(None, {"invite"}, timeout)
                try:
                    offer = parse_message(ev["offer"])
                    if not isinstance(offer, Offer):
                        raise CallPolicyError("expected an offer")
                    hs = CalleeHandshake(self.party, offer, guard=self.guard,
                                         now=datetime.now(UTC))  # fmt: skip
                    caller_media = ev.get("media")
                    answer = hs.accept()
                except CallError as exc:
                    cid = ev.get("call_id")
                    if isinstance(cid, str):
                        await self._io(self.sig.bye, cid, getattr(exc, "code", "error"))
                    continue
                break
            await self._io(self.sig.answer, hs.call_id, answer.to_json(), media)
            ev = await self._wait(hs.call_id, {"confirm", "bye"}, timeout)
            if ev["event"] == "bye":
                raise CallPolicyError(f"the caller hung up: {ev.get('reason')}")
            try:
                conf = parse_message(ev["confirm"])
                if not isinstance(conf, Confirm):
                    raise CallPolicyError("expected a confirm")
                keys = hs.receive_confirm(conf)
            except CallError as exc:
                await self._io(self.sig.bye, hs.call_id, getattr(exc, "code", "error"))
                raise
            ep.set_keys(keys)
            sent = 0
            sender = None
            if pcm:
                sender = asyncio.create_task(ep.send(pcm, _addr(caller_media), pace=pace))
            await self._wait(hs.call_id, {"bye"}, call_timeout)
            if sender is not None:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
                sent = ep.tx.stats.rtp_protected
            return CallResult(hs.call_id, offer.caller, keys.profile.name, sent,
                              ep.received.pcm(), ep.rx.stats, "caller", _sent(ep))  # fmt: skip
        finally:
            ep.close()
