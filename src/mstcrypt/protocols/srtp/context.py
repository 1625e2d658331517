"""Sans-IO SRTP/SRTCP crypto context (RFC 3711 §3.2–3.4): bytes in, bytes out.

One :class:`SrtpContext` holds one master key and salt. A call uses one per direction
(the sender's ``protect`` side, the receiver's ``unprotect`` side); a context may also
do both when a single master key protects both directions (RFC 3711 §9.1), and then it
refuses any SSRC seen in both directions, which would repeat the keystream and let a
packet be reflected to its sender.

Per SSRC the context keeps a stream: the highest index (ROC ‖ s_l), a replay window of
``window_size`` (≥ 64) indices, and for SRTCP the 31-bit index and its own window. A
receive stream is created only once a packet of that SSRC authenticates, so forged
packets cannot fill memory. Nothing here reads a clock or a socket, and a context is
not thread-safe: one thread (or event loop) per context. Session keys live in Python
bytes for the context's life; Python cannot wipe them, so drop the context when the call
ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from mstcrypt.errors import DecodeError, PolicyError
from mstcrypt.protocols.srtp._transforms import Transform, make_transform
from mstcrypt.protocols.srtp.errors import (
    KeyLimitError,
    ReplayError,
    SrtpAuthError,
    SrtpFormatError,
    SsrcCollisionError,
    StreamLimitError,
)
from mstcrypt.protocols.srtp.profiles import Profile
from mstcrypt.protocols.srtp.profiles import profile as _profile

__all__ = [
    "DEFAULT_MAX_PACKET",
    "DEFAULT_WINDOW",
    "ReplayWindow",
    "SrtpContext",
    "SrtpStats",
    "rtp_header_length",
]

DEFAULT_WINDOW: Final = 128
DEFAULT_MAX_PACKET: Final = 1500  # one Ethernet MTU of UDP payload is plenty for voice
MAX_UDP_PAYLOAD: Final = 65507
MAX_ROC: Final = 0xFFFFFFFF
MAX_SRTCP_INDEX: Final = 0x7FFFFFFF
_RTCP_MIN: Final = 8


def rtp_header_length(packet: bytes) -> int:
    """Length of the RTP header (fixed part, CSRCs, extension); SrtpFormatError when the
    packet is not RTP version 2 or its header runs past the end."""
    n = len(packet)
    if n < 12:
        raise SrtpFormatError(f"RTP packet of {n} bytes is shorter than the 12-byte header")
    b0 = packet[0]
    if b0 >> 6 != 2:
        raise SrtpFormatError(f"RTP version must be 2, got {b0 >> 6}")
    hlen = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if n < hlen + 4:
            raise SrtpFormatError("RTP header extension runs past the end of the packet")
        hlen += 4 + 4 * int.from_bytes(packet[hlen + 2 : hlen + 4], "big")
    if hlen > n:
        raise SrtpFormatError("RTP header runs past the end of the packet")
    return hlen


class ReplayWindow:
    """A sliding window over 48-bit (SRTP) or 31-bit (SRTCP) indices: ``check`` refuses
    a repeat or an index older than the window, ``add`` records an accepted one."""

    __slots__ = ("_bits", "_mask", "highest", "size")

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        if not isinstance(size, int) or not 64 <= size <= 1 << 15:
            raise PolicyError("replay window size must be between 64 and 32768 packets")
        self.size = size
        self._mask = (1 << size) - 1
        self._bits = 0
        self.highest = -1

    def check(self, index: int) -> None:
        if index > self.highest:
            return
        delta = self.highest - index
        if delta >= self.size:
            raise ReplayError(f"index is {delta} packets behind the newest, outside the window")
        if (self._bits >> delta) & 1:
            raise ReplayError("index already received (replay)")

    def add(self, index: int) -> None:
        if index > self.highest:
            shift = index - self.highest
            self._bits = ((self._bits << shift) | 1) & self._mask if shift < self.size else 1
            self.highest = index
        else:
            self._bits |= 1 << (self.highest - index)


def guess_index(highest: int, seq: int, initial_roc: int) -> int:
    """RFC 3711 §3.3.1 / Appendix A: the packet index for sequence number ``seq`` given the
    highest index seen (``-1``: none yet, use ``initial_roc``)."""
    if highest < 0:
        return (initial_roc << 16) | seq
    roc, s_l = highest >> 16, highest & 0xFFFF
    if s_l < 0x8000:
        v = roc - 1 if seq - s_l > 0x8000 else roc
    else:
        v = roc + 1 if s_l - 0x8000 > seq else roc
    if v < 0:
        raise ReplayError("sequence number precedes the start of the stream")
    if v > MAX_ROC:
        raise KeyLimitError("rollover counter exhausted (2^48 packets): re-key")
    return (v << 16) | seq


@dataclass
class _Stream:
    outbound: bool
    window: ReplayWindow
    initial_roc: int = 0
    rtcp_window: ReplayWindow | None = None
    rtcp_next: int = 0  # next SRTCP index to send


@dataclass
class SrtpStats:
    """Counters for monitoring; every refused packet is counted under its reason."""

    rtp_protected: int = 0
    rtp_unprotected: int = 0
    rtcp_protected: int = 0
    rtcp_unprotected: int = 0
    auth_failures: int = 0
    replays: int = 0
    malformed: int = 0
    collisions: int = 0
    refused_other: int = 0
    by_ssrc: dict[int, int] = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        return (
            self.auth_failures
            + self.replays
            + self.malformed
            + self.collisions
            + self.refused_other
        )


class SrtpContext:
    """SRTP/SRTCP processing for one master key (see the module documentation).

    ``profile``: a :class:`Profile`, its name or id. ``window_size``: replay window in
    packets (≥ 64). ``max_packet_size``: the largest protected packet accepted or
    produced (default 1500, at most 65507). ``max_streams``: SSRCs tracked per context.
    ``allow_repeat_tx``: let the sender protect the same index twice (only for exact
    retransmissions; off by default because it repeats keystream).
    """

    def __init__(
        self,
        profile: Profile | str | int,
        master_key: bytes,
        master_salt: bytes,
        *,
        window_size: int = DEFAULT_WINDOW,
        max_packet_size: int = DEFAULT_MAX_PACKET,
        max_streams: int = 16,
        allow_repeat_tx: bool = False,
    ) -> None:
        p = _profile(profile)
        if not isinstance(master_key, bytes | bytearray) or len(master_key) != p.key_len:
            raise DecodeError(f"{p.name} needs a {p.key_len}-byte master key")
        if not isinstance(master_salt, bytes | bytearray) or len(master_salt) != p.salt_len:
            raise DecodeError(f"{p.name} needs a {p.salt_len}-byte master salt")
        if not isinstance(max_packet_size, int) or not 64 <= max_packet_size <= MAX_UDP_PAYLOAD:
            raise PolicyError(f"max_packet_size must be between 64 and {MAX_UDP_PAYLOAD}")
        if not isinstance(max_streams, int) or not 1 <= max_streams <= 4096:
            raise PolicyError("max_streams must be between 1 and 4096")
        ReplayWindow(window_size)  # validates
        self.profile = p
        self.window_size = window_size
        self.max_packet_size = max_packet_size
        self.max_streams = max_streams
        self.allow_repeat_tx = allow_repeat_tx
        self._x: Transform = make_transform(p, bytes(master_key), bytes(master_salt))
        self._streams: dict[int, _Stream] = {}
        self.stats = SrtpStats()

    def __repr__(self) -> str:
        return f"<SrtpContext {self.profile.name} streams={len(self._streams)}>"

    # -- streams ---------------------------------------------------------------------
    def set_roc(self, ssrc: int, roc: int, *, outbound: bool) -> None:
        """Start a not-yet-seen stream at rollover counter ``roc`` (a late joiner learns
        it from signalling); refused once the stream has packets."""
        if not 0 <= roc <= MAX_ROC:
            raise PolicyError("rollover counter must be a 32-bit value")
        st = self._streams.get(ssrc)
        if st is not None and (st.window.highest >= 0 or st.outbound != outbound):
            raise PolicyError("the stream already carries packets; its ROC is fixed")
        st = st or self._new_stream(ssrc, outbound)
        st.initial_roc = roc

    def roc(self, ssrc: int) -> int:
        """The rollover counter of the highest index seen on ``ssrc``."""
        st = self._streams.get(ssrc)
        if st is None:
            raise PolicyError("unknown SSRC")
        return max(st.window.highest, st.initial_roc << 16) >> 16

    def _new_stream(self, ssrc: int, outbound: bool) -> _Stream:
        if len(self._streams) >= self.max_streams:
            raise StreamLimitError(f"more than {self.max_streams} SSRCs on one context")
        st = _Stream(outbound, ReplayWindow(self.window_size))
        self._streams[ssrc] = st
        return st

    def _stream(self, ssrc: int, outbound: bool, *, create: bool) -> _Stream | None:
        st = self._streams.get(ssrc)
        if st is not None:
            if st.outbound != outbound:
                raise SsrcCollisionError(
                    f"SSRC {ssrc:#010x} is already used in the other direction under this key"
                )
            return st
        return self._new_stream(ssrc, outbound) if create else None

    def _count(self, exc: Exception, ssrc: int | None) -> None:
        s = self.stats
        if isinstance(exc, SrtpAuthError):
            s.auth_failures += 1
        elif isinstance(exc, ReplayError):
            s.replays += 1
        elif isinstance(exc, SrtpFormatError):
            s.malformed += 1
        elif isinstance(exc, SsrcCollisionError):
            s.collisions += 1
        else:
            s.refused_other += 1
        if ssrc is not None:
            s.by_ssrc[ssrc] = s.by_ssrc.get(ssrc, 0) + 1

    # -- SRTP ------------------------------------------------------------------------
    def protect(self, packet: bytes) -> bytes:
        """RTP → SRTP. Raises SrtpFormatError (not RTP, oversized), SsrcCollisionError,
        KeyLimitError (index exhausted or repeated)."""
        packet = bytes(packet)
        hlen = rtp_header_length(packet)
        if len(packet) + self.profile.srtp_tag_len > self.max_packet_size:
            raise SrtpFormatError(f"protected packet would exceed {self.max_packet_size} bytes")
        ssrc = int.from_bytes(packet[8:12], "big")
        seq = int.from_bytes(packet[2:4], "big")
        st = self._stream(ssrc, True, create=True)
        assert st is not None
        index = guess_index(st.window.highest, seq, st.initial_roc)
        if not self.allow_repeat_tx:
            try:
                st.window.check(index)
            except ReplayError:
                raise KeyLimitError(
                    "this index was already protected or is too old: sending it again would"
                    " reuse keystream"
                ) from None
        out = self._x.rtp_seal(packet[:hlen], packet[hlen:], ssrc, index)
        st.window.add(index)
        self.stats.rtp_protected += 1
        return out

    def unprotect(self, packet: bytes) -> bytes:
        """SRTP → RTP. Raises SrtpFormatError, SsrcCollisionError, ReplayError,
        SrtpAuthError (each counted in :attr:`stats`); the context is unchanged then."""
        ssrc: int | None = None
        try:
            packet = bytes(packet)
            if len(packet) > self.max_packet_size:
                raise SrtpFormatError(f"packet of {len(packet)} bytes exceeds the limit")
            hlen = rtp_header_length(packet)
            if len(packet) < hlen + self.profile.srtp_tag_len:
                raise SrtpFormatError("SRTP packet shorter than its header and tag")
            ssrc = int.from_bytes(packet[8:12], "big")
            seq = int.from_bytes(packet[2:4], "big")
            st = self._stream(ssrc, False, create=False)
            if st is None:
                highest, roc0 = -1, 0
            else:
                highest, roc0 = st.window.highest, st.initial_roc
            index = guess_index(highest, seq, roc0)
            if st is not None:
                st.window.check(index)
            payload = self._x.rtp_open(packet, hlen, ssrc, index)
            if st is None:
                st = self._new_stream(ssrc, False)
            st.window.add(index)
        except (
            SrtpFormatError,
            SsrcCollisionError,
            ReplayError,
            SrtpAuthError,
            KeyLimitError,
            StreamLimitError,
        ) as exc:
            self._count(exc, ssrc)
            raise
        self.stats.rtp_unprotected += 1
        return packet[:hlen] + payload

    # -- SRTCP -----------------------------------------------------------------------
    def protect_rtcp(self, packet: bytes) -> bytes:
        """RTCP (compound) → SRTCP, always encrypted (E = 1)."""
        packet = bytes(packet)
        _check_rtcp(packet)
        if len(packet) + 4 + self.profile.srtcp_tag_len > self.max_packet_size:
            raise SrtpFormatError(f"protected packet would exceed {self.max_packet_size} bytes")
        ssrc = int.from_bytes(packet[4:8], "big")
        st = self._stream(ssrc, True, create=True)
        assert st is not None
        index = st.rtcp_next
        if index > MAX_SRTCP_INDEX:
            raise KeyLimitError("SRTCP index exhausted (2^31 packets): re-key")
        out = self._x.rtcp_seal(packet, ssrc, index)
        st.rtcp_next = index + 1
        self.stats.rtcp_protected += 1
        return out

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        """SRTCP → RTCP; raises like :meth:`unprotect`. The decrypted compound packet's
        lengths are checked too (a forged-but-authentic packet cannot reach an RTCP
        parser with lengths that run past its end)."""
        ssrc: int | None = None
        try:
            packet = bytes(packet)
            if len(packet) > self.max_packet_size:
                raise SrtpFormatError(f"packet of {len(packet)} bytes exceeds the limit")
            t = self.profile.srtcp_tag_len
            if len(packet) < _RTCP_MIN + 4 + t:
                raise SrtpFormatError("SRTCP packet shorter than header, index and tag")
            if packet[0] >> 6 != 2:
                raise SrtpFormatError(f"RTCP version must be 2, got {packet[0] >> 6}")
            if not 192 <= packet[1] <= 223:
                raise SrtpFormatError(f"RTCP packet type {packet[1]} out of range")
            trailer = packet[-4:] if self.profile.aead else packet[-t - 4 : -t]
            e_index = int.from_bytes(trailer, "big")
            encrypted = bool(e_index >> 31)
            index = e_index & MAX_SRTCP_INDEX
            ssrc = int.from_bytes(packet[4:8], "big")
            st = self._stream(ssrc, False, create=False)
            if st is not None and st.rtcp_window is not None:
                st.rtcp_window.check(index)
            plain = self._x.rtcp_open(packet, ssrc, index, encrypted)
            _check_rtcp(plain)
            if st is None:
                st = self._new_stream(ssrc, False)
            if st.rtcp_window is None:
                st.rtcp_window = ReplayWindow(self.window_size)
            st.rtcp_window.add(index)
        except (
            SrtpFormatError,
            SsrcCollisionError,
            ReplayError,
            SrtpAuthError,
            StreamLimitError,
        ) as exc:
            self._count(exc, ssrc)
            raise
        self.stats.rtcp_unprotected += 1
        return plain


def _check_rtcp(packet: bytes) -> None:
    """A compound RTCP packet: each part version 2 with a length that lands exactly on
    the end of the packet."""
    n = len(packet)
    if n < _RTCP_MIN:
        raise SrtpFormatError(f"RTCP packet of {n} bytes is shorter than 8")
    off = 0
    while off < n:
        if n - off < 4:
            raise SrtpFormatError("trailing bytes after the last RTCP packet")
        if packet[off] >> 6 != 2:
            raise SrtpFormatError("RTCP version must be 2")
        if not 192 <= packet[off + 1] <= 223:
            raise SrtpFormatError(f"RTCP packet type {packet[off + 1]} out of range")
        off += 4 + 4 * int.from_bytes(packet[off + 2 : off + 4], "big")
    if off != n:
        raise SrtpFormatError("RTCP length field runs past the end of the packet")
