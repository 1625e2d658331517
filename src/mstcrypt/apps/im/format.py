"""The signed message envelope (``docs/im-format.md``): one fresh session key (SK) per
message, wrapped under the group key (GK) of a stated version, the content under SK
with SM4-GCM, and the sender's SM2 signature over every byte before it.

:func:`seal` builds an envelope; :func:`parse` checks structure and bounds only;
:func:`open_envelope` verifies the signature with the sender's certified key, unwraps
SK, decrypts and parses the content, in the order of §6. :class:`SequenceTracker` is
the reader's replay and reorder check (per sender device).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from mstcrypt.apps.im.content import MAX_PAYLOAD, Content, ContentType, decode_content
from mstcrypt.apps.im.content import encode_content as _encode
from mstcrypt.apps.im.errors import (
    ImDecryptError,
    ImFormatError,
    ImReplayError,
    ImSenderError,
    ImSignatureError,
)
from mstcrypt.crypto import sm4
from mstcrypt.crypto.random import random_bytes
from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.crypto.sm3 import sm3
from mstcrypt.errors import DecryptionError, MstCryptError, PolicyError, VerificationError

__all__ = [
    "MAGIC",
    "MAX_ENVELOPE",
    "VERSION",
    "Envelope",
    "Opened",
    "SequenceTracker",
    "Signer",
    "key_id",
    "open_envelope",
    "parse",
    "seal",
    "verify_envelope",
]

MAGIC = b"\x89MIM"
VERSION = 1
MAX_GROUP = 64
MAX_SENDER = 128
MAX_KEY_VERSION = 2**31 - 1
MAX_SEQ = 2**63 - 1
#: timestamps are milliseconds since 1970; a year-2100 bound keeps them meaningful
MAX_TIMESTAMP = 4_102_444_800_000
KEY_SIZE = 16
NONCE_SIZE = 12
TAG_SIZE = 16
MAX_BODY = MAX_PAYLOAD + TAG_SIZE
MAX_SIGNATURE = 72
MIN_SIGNATURE = 8
#: the largest envelope a reader accepts (IMS frames are bounded by this too)
_MAX_HEADER = 4 + 4 + MAX_GROUP + 4 + 1 + MAX_SENDER + 16 + 32 + 16 + 8 + 8
MAX_ENVELOPE = _MAX_HEADER + NONCE_SIZE + KEY_SIZE + TAG_SIZE + NONCE_SIZE + 4 + MAX_BODY + 1
MAX_ENVELOPE += MAX_SIGNATURE

SIGN_LABEL = b"mstcrypt-im-v1 envelope\x00"
WRAP_LABEL = b"mstcrypt-im-v1 session key\x00"
BODY_LABEL = b"mstcrypt-im-v1 body\x00"

#: a signer: message -> DER SM2 signature (a soft-token handle, an SM2PrivateKey.sign)
Signer = Callable[[bytes], bytes]


def key_id(public_key: SM2PublicKey) -> bytes:
    """SM3 of the uncompressed public key ``04 ‖ x ‖ y``: how an envelope names the key
    that signed it."""
    return sm3(public_key.to_bytes())


def _utf8_name(raw: bytes, what: str, code: str) -> str:
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ImFormatError(code, f"the {what} is not UTF-8") from None
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in s) or s != s.strip():
        raise ImFormatError(code, f"the {what} contains control or surrounding space characters")
    return s


@dataclass(frozen=True)
class Envelope:
    """A parsed envelope: structure checked, nothing verified yet. ``header`` is the
    associated data of both GCM operations; ``signed`` every byte the signature covers."""

    content_type: ContentType
    group: str
    key_version: int
    sender: str
    device: bytes
    sender_key: bytes
    message_id: bytes
    seq: int
    timestamp_ms: int
    wrap_nonce: bytes
    wrapped_key: bytes
    body_nonce: bytes
    body: bytes
    signature: bytes
    header: bytes
    signed: bytes

    @property
    def raw(self) -> bytes:
        return self.signed + bytes([len(self.signature)]) + self.signature

    def __repr__(self) -> str:
        return (
            f"Envelope({self.content_type.name.lower()}, group={self.group!r}, "
            f"v{self.key_version}, sender={self.sender!r}, id={self.message_id.hex()}, "
            f"seq={self.seq}, {len(self.body)} body bytes)"
        )


@dataclass(frozen=True)
class Opened:
    """A verified, decrypted message."""

    envelope: Envelope
    content: Content

    @property
    def message_id(self) -> bytes:
        return self.envelope.message_id

    @property
    def sender(self) -> str:
        return self.envelope.sender


def _header(
    ctype: ContentType,
    group: bytes,
    key_version: int,
    sender: bytes,
    device: bytes,
    sender_key: bytes,
    message_id: bytes,
    seq: int,
    timestamp_ms: int,
) -> bytes:
    return b"".join(
        (
            MAGIC,
            bytes([VERSION, int(ctype), 0, len(group)]),
            group,
            struct.pack(">IB", key_version, len(sender)),
            sender,
            device,
            sender_key,
            message_id,
            struct.pack(">QQ", seq, timestamp_ms),
        )
    )


def seal(
    content: Content,
    *,
    group: str,
    key_version: int,
    group_key: bytes,
    sender: str,
    device: bytes,
    sender_public: SM2PublicKey,
    sign: Signer,
    seq: int,
    timestamp_ms: int,
    message_id: bytes | None = None,
) -> bytes:
    """A signed envelope carrying ``content`` for ``group`` under GK ``key_version``.

    A fresh 16-byte SK and fresh nonces come from the OS CSPRNG for every call;
    ``message_id`` defaults to 16 random bytes. ``sign`` must be the sender's signing
    key (the matching ``sender_public`` is named in the envelope by its SM3)."""
    g, s = group.encode(), sender.encode()
    if not 1 <= len(g) <= MAX_GROUP or not 1 <= len(s) <= MAX_SENDER:
        raise PolicyError(f"group must be 1..{MAX_GROUP} and sender 1..{MAX_SENDER} UTF-8 bytes")
    _utf8_name(g, "group", "bad-group")
    _utf8_name(s, "sender", "bad-sender")
    if not 1 <= key_version <= MAX_KEY_VERSION:
        raise PolicyError("key_version out of range")
    if not 1 <= seq <= MAX_SEQ or not 0 <= timestamp_ms <= MAX_TIMESTAMP:
        raise PolicyError("seq or timestamp out of range")
    if len(group_key) != KEY_SIZE or len(device) != 16:
        raise PolicyError("the group key is 16 bytes and the device id 16 bytes")
    mid = random_bytes(16) if message_id is None else message_id
    if len(mid) != 16:
        raise PolicyError("a message id is 16 bytes")
    payload = _encode(content)
    header = _header(
        content.TYPE, g, key_version, s, device, key_id(sender_public), mid, seq, timestamp_ms
    )
    sk = random_bytes(KEY_SIZE)
    wrap_nonce, body_nonce = random_bytes(NONCE_SIZE), random_bytes(NONCE_SIZE)
    wrapped = sm4.gcm_encrypt(group_key, wrap_nonce, sk, WRAP_LABEL + header)
    body = sm4.gcm_encrypt(sk, body_nonce, payload, BODY_LABEL + header)
    signed = b"".join((header, wrap_nonce, wrapped, body_nonce, struct.pack(">I", len(body)), body))
    sig = sign(SIGN_LABEL + signed)
    if not MIN_SIGNATURE <= len(sig) <= MAX_SIGNATURE:
        raise PolicyError("the signer must return a DER SM2 signature")
    return signed + bytes([len(sig)]) + sig


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise ImFormatError("truncated", f"the envelope ends inside the {what}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out


def parse(data: bytes) -> Envelope:
    """Check structure and bounds (§3, codes in §6); verifies nothing cryptographic."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ImFormatError("truncated", "an envelope is bytes")
    data = bytes(data)
    if len(data) > MAX_ENVELOPE:
        raise ImFormatError("too-large", f"an envelope is at most {MAX_ENVELOPE} bytes")
    r = _Reader(data)
    if r.take(4, "magic") != MAGIC:
        raise ImFormatError("bad-magic", "not an mstcrypt IM envelope")
    version, ctype, flags, glen = r.take(4, "fixed header")
    if version != VERSION:
        raise ImFormatError("unsupported-version", f"envelope version {version} is not 1")
    try:
        content_type = ContentType(ctype)
    except ValueError:
        raise ImFormatError("bad-content-type", f"unknown content type {ctype}") from None
    if flags:
        raise ImFormatError("bad-flags", "reserved flag bits are set")
    if not 1 <= glen <= MAX_GROUP:
        raise ImFormatError("bad-group", f"the group id is 1..{MAX_GROUP} bytes")
    group = _utf8_name(r.take(glen, "group"), "group", "bad-group")
    key_version, slen = struct.unpack(">IB", r.take(5, "key version"))
    if not 1 <= key_version <= MAX_KEY_VERSION:
        raise ImFormatError("bad-key-version", "the group key version is out of range")
    if not 1 <= slen <= MAX_SENDER:
        raise ImFormatError("bad-sender", f"the sender is 1..{MAX_SENDER} bytes")
    sender = _utf8_name(r.take(slen, "sender"), "sender", "bad-sender")
    device = r.take(16, "device id")
    sender_key = r.take(32, "sender key id")
    message_id = r.take(16, "message id")
    seq, ts = struct.unpack(">QQ", r.take(16, "sequence and timestamp"))
    if not 1 <= seq <= MAX_SEQ:
        raise ImFormatError("bad-sequence", "the sequence number is out of range")
    if ts > MAX_TIMESTAMP:
        raise ImFormatError("bad-timestamp", "the timestamp is out of range")
    header = data[: r.pos]
    wrap_nonce = r.take(NONCE_SIZE, "wrap nonce")
    wrapped = r.take(KEY_SIZE + TAG_SIZE, "wrapped session key")
    body_nonce = r.take(NONCE_SIZE, "body nonce")
    (blen,) = struct.unpack(">I", r.take(4, "body length"))
    if not TAG_SIZE < blen <= MAX_BODY or (blen - TAG_SIZE) % 32:
        raise ImFormatError("bad-body-length", "the body length is not a padded payload length")
    body = r.take(blen, "body")
    signed = data[: r.pos]
    (siglen,) = r.take(1, "signature length")
    if not MIN_SIGNATURE <= siglen <= MAX_SIGNATURE:
        raise ImFormatError("bad-signature-length", "the signature length is out of range")
    sig = r.take(siglen, "signature")
    if r.pos != len(data):
        raise ImFormatError("trailing-data", "bytes follow the signature")
    return Envelope(
        content_type,
        group,
        key_version,
        sender,
        device,
        sender_key,
        message_id,
        seq,
        ts,
        wrap_nonce,
        wrapped,
        body_nonce,
        body,
        sig,
        header,
        signed,
    )


def verify_envelope(env: Envelope, sender_public: SM2PublicKey) -> None:
    """Steps 2–3 of §6: the key named is the sender's certified key, and it signed."""
    if env.sender_key != key_id(sender_public):
        raise ImSenderError("wrong-sender-key", "the envelope names a key other than the sender's")
    try:
        sender_public.verify(env.signature, SIGN_LABEL + env.signed)
    except VerificationError:
        raise ImSignatureError("bad-signature", "the sender's signature does not verify") from None


def open_envelope(
    data: bytes | Envelope,
    *,
    sender_public: SM2PublicKey,
    group_key: bytes,
) -> Opened:
    """Verify, unwrap and decrypt (§6 steps 1–6). ``sender_public`` is the signing key
    of ``env.sender`` from a certificate the caller validated (not from the envelope);
    ``group_key`` the GK of ``env.group`` at ``env.key_version``."""
    env = data if isinstance(data, Envelope) else parse(data)
    verify_envelope(env, sender_public)
    return decrypt_verified(env, group_key)


def decrypt_verified(env: Envelope, group_key: bytes) -> Opened:
    """§6 steps 5–6 for an envelope whose sender and signature the caller has just
    checked with :func:`verify_envelope` (the SDK, which checks the key version in
    between). Anything else should call :func:`open_envelope`."""
    try:
        sk = sm4.gcm_decrypt(group_key, env.wrap_nonce, env.wrapped_key, WRAP_LABEL + env.header)
    except (DecryptionError, MstCryptError):
        raise ImDecryptError(
            "key-unwrap-failed",
            f"the session key does not unwrap under group key version {env.key_version}",
        ) from None
    try:
        payload = sm4.gcm_decrypt(sk, env.body_nonce, env.body, BODY_LABEL + env.header)
    except (DecryptionError, MstCryptError):
        raise ImDecryptError("body-auth-failed", "the body fails its authentication tag") from None
    return Opened(env, decode_content(env.content_type, payload))


class SequenceTracker:
    """The reader's replay and reorder check (§6 step 7), per (sender, device, group).

    ``check`` refuses a message id already seen and a sequence number not above the
    last one accepted from that device, and returns how many sequence numbers were
    skipped (a gap: messages the server dropped or withheld). It is a value that can be
    saved (:meth:`state`) with the local store."""

    MAX_IDS = 100_000

    def __init__(self, state: dict[str, int] | None = None) -> None:
        self._last: dict[str, int] = dict(state or {})
        self._ids: dict[bytes, None] = {}

    @staticmethod
    def _who(env: Envelope) -> str:
        return f"{env.sender}/{env.device.hex()}/{env.group}"

    def check(self, env: Envelope) -> int:
        if env.message_id in self._ids:
            raise ImReplayError("replayed", f"message {env.message_id.hex()} was already received")
        last = self._last.get(self._who(env), 0)
        if env.seq <= last:
            raise ImReplayError(
                "out-of-order",
                f"sequence {env.seq} from {env.sender!r} is not above {last} (replay or reorder)",
            )
        return env.seq - last - 1

    def accept(self, env: Envelope) -> int:
        """:meth:`check`, then record the message as received."""
        gap = self.check(env)
        self._last[self._who(env)] = env.seq
        self._ids[env.message_id] = None
        if len(self._ids) > self.MAX_IDS:
            self._ids.pop(next(iter(self._ids)))
        return gap

    def state(self) -> dict[str, int]:
        return dict(self._last)
