"""An in-memory pump that carries packets between an ASUE, an :class:`AccessPoint` and
an ASU, for tests and benchmarks (no sockets; time advances only when asked)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from mstcrypt.protocols.wai.events import Event, Outgoing
from mstcrypt.protocols.wai.roles import AeSession, Asu, Asue

__all__ = ["Pump"]

Tap = Callable[[str, str, bytes], bytes | None]


class Pump:
    """Moves packets until nobody has anything to send. ``tap(src, dst, packet)`` may
    observe, alter (return new bytes) or drop (return None) each packet in flight."""

    def __init__(self, asue: Asue, ae: AeSession, asu: Asu, *, at: datetime | None = None) -> None:
        self.asue, self.ae, self.asu = asue, ae, asu
        self.at = at or datetime.now(UTC)
        self.log: list[tuple[str, str, bytes]] = []
        self.asue_events: list[Event] = []
        self.ae_events: list[Event] = []
        self.tap: Tap | None = None

    def _send(self, src: str, out: Outgoing, now: float) -> None:
        pkt: bytes | None = out.packet
        if self.tap is not None:
            pkt = self.tap(src, out.to, out.packet)
        if pkt is None:
            return
        self.log.append((src, out.to, pkt))
        if out.to == "asue":
            self.asue_events += self.asue.receive(pkt, now)
        elif out.to == "ae":
            self.ae_events += self.ae.receive(pkt, now, source="asue")
        elif out.to == "asu":
            reply = self.asu.handle(pkt, self.at)
            self._send("asu", Outgoing("ae_from_asu", reply), now)
        elif out.to == "ae_from_asu":
            self.ae_events += self.ae.receive(pkt, now, source="asu")
        else:  # pragma: no cover
            raise AssertionError(out.to)

    def run(self, now: float = 0.0, *, limit: int = 100) -> None:
        for _ in range(limit):
            moved = False
            for o in self.ae.data_to_send():
                moved = True
                self._send("ae", o, now)
            for o in self.asue.data_to_send():
                moved = True
                self._send("asue", o, now)
            if not moved:
                return
        raise AssertionError("pump did not settle")
