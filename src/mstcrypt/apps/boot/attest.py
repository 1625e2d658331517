"""Remote attestation (``docs/trusted-boot.md`` §7): a quote of the boot PCR signed by the
terminal's SM2 signing key over a platform nonce, and the platform's appraisal of the
event log against golden values.

    quote = Quote.create(nonce, log.pcr, serial, sign=lambda tbs: token.sign(h, tbs))
    verdict = appraise(quote, log.events, public_key=cert_key, nonce=nonce, serial=serial,
                       golden={"bootloader": {d1}, "kernel": {d2, d2_old}, "system": {d3}})
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mstcrypt.apps.boot.measure import Event, replay
from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.errors import DecodeError, MstCryptError, VerificationError

__all__ = ["QUOTE_MAGIC", "Quote", "QuoteError", "Verdict", "appraise"]

QUOTE_MAGIC = b"\x89MSTQUOT"
_SERIAL = re.compile(rb"[0-9a-f]{1,40}")
MAX_QUOTE = 8 + 1 + 32 + 32 + 1 + 40 + 2 + 72


class QuoteError(VerificationError):
    """The quote cannot be accepted (malformed, wrong nonce, another device's, bad
    signature, or its PCR does not match the event log); ``reason`` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Quote:
    """``tbs = magic ‖ 0x01 ‖ nonce (32) ‖ pcr (32) ‖ len ‖ serial``; then
    ``sig_len (2) ‖ DER SM2Signature`` over ``tbs`` by the terminal's signing key."""

    nonce: bytes
    pcr: bytes
    serial: str
    signature: bytes
    tbs: bytes
    raw: bytes

    @staticmethod
    def encode_tbs(nonce: bytes, pcr: bytes, serial: str) -> bytes:
        s = serial.encode("ascii", "replace")
        if len(nonce) != 32 or len(pcr) != 32 or not _SERIAL.fullmatch(s):
            raise DecodeError("quote: nonce and PCR are 32 bytes, serial 1-40 lowercase hex")
        return QUOTE_MAGIC + b"\x01" + nonce + pcr + bytes([len(s)]) + s

    @classmethod
    def create(
        cls, nonce: bytes, pcr: bytes, serial: str, *, sign: Callable[[bytes], bytes]
    ) -> Quote:
        tbs = cls.encode_tbs(nonce, pcr, serial)
        sig = sign(tbs)
        return cls.parse(tbs + struct.pack(">H", len(sig)) + sig)

    @classmethod
    def parse(cls, data: bytes) -> Quote:
        if not isinstance(data, bytes) or not 8 + 1 + 64 + 2 + 2 + 8 <= len(data) <= MAX_QUOTE:
            raise QuoteError("malformed", "quote has an impossible length")
        if data[:8] != QUOTE_MAGIC or data[8] != 1:
            raise QuoteError("malformed", "not a version-1 boot quote")
        nonce, pcr, n = data[9:41], data[41:73], data[73]
        end = 74 + n
        serial = data[74:end]
        if not _SERIAL.fullmatch(serial) or len(data) < end + 2:
            raise QuoteError("malformed", "quote serial must be 1-40 lowercase hex")
        sig_len = int.from_bytes(data[end : end + 2], "big")
        if not 8 <= sig_len <= 72 or len(data) != end + 2 + sig_len:
            raise QuoteError("malformed", "quote signature length is wrong")
        return cls(nonce, pcr, serial.decode(), data[end + 2 :], data[:end], data)

    def verify(self, public_key: SM2PublicKey) -> None:
        try:
            public_key.verify(self.signature, self.tbs)
        except MstCryptError:
            raise QuoteError("bad-signature", "quote signature does not verify") from None


@dataclass(frozen=True)
class Verdict:
    """``trusted`` when every measured stage is a golden value of the device's model
    and every stage the model defines was measured once; ``reasons`` say what differed."""

    trusted: bool
    reasons: tuple[str, ...]
    pcr: bytes

    @property
    def status(self) -> str:
        return "trusted" if self.trusted else "modified"


def appraise(
    quote: Quote,
    events: list[Event] | tuple[Event, ...],
    *,
    public_key: SM2PublicKey,
    nonce: bytes,
    serial: str,
    golden: Mapping[str, set[bytes] | frozenset[bytes]],
) -> Verdict:
    """Check the quote (raising :class:`QuoteError`), then judge the log."""
    import hmac

    if not hmac.compare_digest(quote.nonce, nonce):
        raise QuoteError("nonce", "quote is not for the nonce this platform issued (replay?)")
    if quote.serial != serial:
        raise QuoteError("device", "quote names another device's certificate")
    quote.verify(public_key)
    if not hmac.compare_digest(replay(events), quote.pcr):
        raise QuoteError("log", "the event log does not replay to the quoted PCR")
    reasons: list[str] = []
    if not golden:
        reasons.append("no golden values are registered for this device's model")
    seen: set[str] = set()
    for e in events:
        if e.stage in seen:
            reasons.append(f"stage {e.stage} measured twice")
        seen.add(e.stage)
        allowed = golden.get(e.stage)
        if allowed is None:
            reasons.append(f"stage {e.stage} is not part of this model's boot chain")
        elif e.digest not in allowed:
            reasons.append(
                f"stage {e.stage} booted unapproved code (manifest SM3 {e.digest.hex()})"
            )
    for stage in sorted(set(golden) - seen):
        reasons.append(f"stage {stage} was not measured")
    return Verdict(not reasons, tuple(reasons), quote.pcr)
