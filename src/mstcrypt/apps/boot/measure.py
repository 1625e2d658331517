"""Measured boot (``docs/trusted-boot.md`` §6): a PCR-like SM3 register and its event log.

log = EventLog()
log.extend("bootloader", "manifest", manifest.digest)
log.pcr == replay(log.events)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from mstcrypt.apps.boot.format import check_name
from mstcrypt.crypto.sm3 import sm3
from mstcrypt.errors import DecodeError

__all__ = ["MAX_EVENTS", "PCR_RESET", "Event", "EventLog", "extend", "replay"]

PCR_RESET = bytes(32)
MAX_EVENTS = 64
KINDS = frozenset({"manifest"})


def extend(pcr: bytes, digest: bytes) -> bytes:
    """pcr ← SM3(pcr ‖ digest)."""
    if len(pcr) != 32 or len(digest) != 32:
        raise DecodeError("PCR and measurement must be 32-byte SM3 values")
    return sm3(pcr + digest)


@dataclass(frozen=True)
class Event:
    stage: str
    kind: str
    digest: bytes

    def to_json(self) -> dict[str, str]:
        return {"stage": self.stage, "kind": self.kind, "digest": self.digest.hex()}

    @classmethod
    def from_json(cls, obj: object) -> Event:
        if not isinstance(obj, dict) or set(obj) != {"stage", "kind", "digest"}:
            raise DecodeError("event must be an object with stage, kind, digest")
        stage, kind, digest = obj["stage"], obj["kind"], obj["digest"]
        if not all(isinstance(v, str) for v in (stage, kind, digest)):
            raise DecodeError("event fields must be strings")
        try:
            check_name(stage, "event stage")
        except DecodeError:
            raise DecodeError("event stage is not a valid stage name") from None
        if kind not in KINDS:
            raise DecodeError(f"unknown event kind {kind[:32]!r}")
        try:
            raw = bytes.fromhex(digest)
        except ValueError:
            raise DecodeError("event digest must be hex") from None
        if len(raw) != 32:
            raise DecodeError("event digest must be 32 bytes")
        return cls(stage, kind, raw)


def replay(events: list[Event] | tuple[Event, ...]) -> bytes:
    """The PCR value an event log leads to."""
    pcr = PCR_RESET
    for e in events:
        pcr = extend(pcr, e.digest)
    return pcr


@dataclass
class EventLog:
    events: list[Event] = field(default_factory=list)
    pcr: bytes = PCR_RESET

    def extend(self, stage: str, kind: str, digest: bytes) -> None:
        if len(self.events) >= MAX_EVENTS:
            raise DecodeError(f"event log longer than {MAX_EVENTS} events")
        self.events.append(Event(stage, kind, digest))
        self.pcr = extend(self.pcr, digest)

    def to_json(self) -> str:
        return json.dumps([e.to_json() for e in self.events])

    @classmethod
    def from_json(cls, text: str | bytes) -> EventLog:
        try:
            items = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            raise DecodeError("event log is not JSON") from None
        if not isinstance(items, list) or len(items) > MAX_EVENTS:
            raise DecodeError(f"event log must be a list of at most {MAX_EVENTS} events")
        log = cls()
        for it in items:
            e = Event.from_json(it)
            log.extend(e.stage, e.kind, e.digest)
        return log
