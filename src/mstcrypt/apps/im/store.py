"""The terminal's sealed local store: an append-only log of encrypted, authenticated
records (``docs/im.md``, "The local store").

File layout (text, one item per line)::

    {"format": "mstcrypt-im-store-2", "id": <32 hex>, "key": <base64 SM2 ciphertext>}
    base64(nonce(12) || SM4-GCM(store key, record JSON, aad_i))      # record 0
    base64(...)                                                      # record 1 ...

* The store key (16 random bytes) is SM2-encrypted to the token's *encryption* key, so
  the file opens only with the token and its PIN (MK hierarchy).
* ``aad_i = label || member || 0x00 || i (8 bytes, big-endian) || h_(i-1)`` where
  ``h_(-1) = SM3(label || header line)`` and ``h_i = SM3(h_(i-1) || line_i)``: a record
  moved, removed, duplicated or spliced in from another store does not authenticate.
* A record is ``{"ops": [...]}`` (what one :meth:`SealedStore.save` changed) or
  ``{"snap": state}`` (a compaction); ``{"ops": [{"o": "close"}]}`` marks a clean close.
  A send therefore costs one record of the size of the message, not a rewrite.
* A record cut off by a crash (the last line without its newline, or not authenticating)
  is dropped and reported in :attr:`SealedStore.tail` (``"torn"``); a log whose last
  record is not a close marker is reported as ``"unclosed"`` (a crash, or records cut
  off the end). Rolling the whole file back to an earlier state cannot be told from the
  file alone.
* The store is compacted (rewritten as one snapshot) when it is opened with more than
  ``compact_after`` records, and on request; the old one-object format
  (``mstcrypt-im-store-1``) is migrated on open.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mstcrypt.crypto import sm4
from mstcrypt.crypto.random import random_bytes
from mstcrypt.crypto.sm3 import sm3
from mstcrypt.errors import DecryptionError, KeyStoreError, MstCryptError

if TYPE_CHECKING:
    from mstcrypt.apps.im.terminal import Identity

__all__ = ["MAX_STORED_MESSAGES", "STORE_FORMAT", "SealedStore"]

STORE_LABEL = b"mstcrypt-im-v1 local store\x00"
STORE_FORMAT = "mstcrypt-im-store-2"
OLD_FORMAT = "mstcrypt-im-store-1"
MAX_STORED_MESSAGES = 2000
#: the largest record line accepted (a snapshot of 2000 messages per group is far less)
MAX_LINE = 256 * 1024 * 1024

Leaf = tuple[str, ...]


def _leaves(state: dict[str, Any]) -> dict[Leaf, Any]:
    """Every non-dict value of ``state`` by its path, except the message lists."""
    out: dict[Leaf, Any] = {}

    def walk(prefix: Leaf, d: dict[str, Any]) -> None:
        for k, v in d.items():
            p = (*prefix, str(k))
            if isinstance(v, dict) and v:
                walk(p, v)
            else:
                out[p] = copy.deepcopy(v)

    walk((), {k: v for k, v in state.items() if k != "messages"})
    return out


def _put(state: dict[str, Any], path: list[str], value: Any) -> None:
    d = state
    for k in path[:-1]:
        nxt = d.get(k)
        if not isinstance(nxt, dict):
            nxt = d[k] = {}
        d = nxt
    d[path[-1]] = value


def _delete(state: dict[str, Any], path: list[str]) -> None:
    d = state
    for k in path[:-1]:
        d = d.get(k)  # type: ignore[assignment]
        if not isinstance(d, dict):
            return
    d.pop(path[-1], None)


class SealedStore:
    """A JSON-like state kept as a sealed append-only log at ``path`` (module docstring).

    :meth:`load` returns the state; :meth:`save` appends what changed since the last
    load or save; :meth:`compact` rewrites the log as one snapshot; :meth:`close` marks
    a clean close."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        identity: Identity,
        *,
        compact_after: int = 512,
    ) -> None:
        self.path = Path(path)
        self._identity = identity
        self.compact_after = compact_after
        self._key: bytes | None = None
        self._wrapped: bytes | None = None
        self._header: bytes | None = None
        self._index = 0  # the next record's index
        self._chain = b""  # h_(index-1)
        self._end = 0  # file size after the last record this object knows
        self._leaves: dict[Leaf, Any] = {}
        self._tails: dict[str, tuple[int, str | None]] = {}  # group -> (count, last id)
        #: "clean", "unclosed" (no close marker: crash or cut off), "torn" (a partial
        #: last record was dropped), "new" or "migrated"
        self.tail = "new"
        self.records = 0

    def __repr__(self) -> str:
        return f"SealedStore({str(self.path)!r})"

    # -- framing ---------------------------------------------------------------------
    def _aad(self, index: int, chain: bytes) -> bytes:
        return (
            STORE_LABEL
            + self._identity.member.encode()
            + b"\x00"
            + index.to_bytes(8, "big")
            + chain
        )

    def _seal(self, record: dict[str, Any]) -> bytes:
        assert self._key is not None
        nonce = random_bytes(12)
        body = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()
        ct = sm4.gcm_encrypt(self._key, nonce, body, self._aad(self._index, self._chain))
        line = base64.b64encode(nonce + ct) + b"\n"
        self._chain = sm3(self._chain + line)
        self._index += 1
        return line

    def _open_record(self, line: bytes, index: int, chain: bytes) -> dict[str, Any]:
        assert self._key is not None
        try:
            raw = base64.b64decode(line.rstrip(b"\n"), validate=True)
            if len(raw) < 12 + 16:
                raise ValueError
            body = sm4.gcm_decrypt(self._key, raw[:12], raw[12:], self._aad(index, chain))
            rec = json.loads(body)
            if not isinstance(rec, dict):
                raise ValueError
            return rec
        except (ValueError, DecryptionError, MstCryptError):
            raise KeyStoreError(
                f"the local IM store's record {index} does not authenticate "
                "(altered, reordered, removed or foreign records)"
            ) from None

    def _new_header(self) -> bytes:
        assert self._wrapped is not None
        head = {
            "format": STORE_FORMAT,
            "id": random_bytes(16).hex(),
            "key": base64.b64encode(self._wrapped).decode(),
        }
        return json.dumps(head, separators=(",", ":")).encode() + b"\n"

    def _start_chain(self, header: bytes) -> None:
        self._header = header
        self._index = 0
        self._chain = sm3(STORE_LABEL + header)

    def _unwrap(self, wrapped: bytes) -> None:
        try:
            self._key = self._identity.decrypt(wrapped)
        except (DecryptionError, MstCryptError):
            raise KeyStoreError(
                "the local IM store does not open with this token (another user's, or altered)"
            ) from None
        if len(self._key) != 16:
            raise KeyStoreError("the local IM store's key is not an SM4 key")
        self._wrapped = wrapped

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Writers of one store (a chat and a one-shot command) take turns."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- reading ---------------------------------------------------------------------
    def load(self) -> dict[str, Any]:
        """Open (migrating the old format, compacting a long log) and return the state."""
        with self._locked():
            if not self.path.exists():
                self._key = random_bytes(16)
                self._wrapped = self._identity.enc_public.encrypt(self._key)
                self._header = None
                self.tail, self.records = "new", 0
                self._remember({})
                return {}
            data = self.path.read_bytes()
            header, _, _rest = data.partition(b"\n")
            try:
                head = json.loads(header)
            except ValueError:
                head = None
            fmt = head.get("format") if isinstance(head, dict) else None
            if fmt == OLD_FORMAT or (isinstance(head, dict) and fmt is None and "data" in head):
                state = self._load_old(head)
                self._write_snapshot(state)
                self.tail = "migrated"
                return state
            if fmt != STORE_FORMAT:
                raise KeyStoreError("the local IM store is damaged (unknown format)")
            try:
                wrapped = base64.b64decode(head["key"], validate=True)
            except (KeyError, TypeError, ValueError):
                raise KeyStoreError("the local IM store is damaged") from None
            self._unwrap(wrapped)
            state, end, tail = self._replay(data)
            if tail == "torn":  # drop the partial record so that appends follow a good one
                os.truncate(self.path, end)
            self._end, self.tail = end, tail
            if self.records > self.compact_after:
                self._write_snapshot(state)
            self._remember(state)
            return state

    def _replay(self, data: bytes) -> tuple[dict[str, Any], int, str]:
        """Verify every record from the start; (state, end of the last good record, tail)."""
        header, _, _ = data.partition(b"\n")
        self._start_chain(header + b"\n")
        state: dict[str, Any] = {}
        pos = len(header) + 1
        tail = "clean"
        closed = False
        self.records = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            if nl < 0:  # the last line has no newline: a write cut short
                tail = "torn"
                break
            line = data[pos : nl + 1]
            try:
                rec = self._open_record(line, self._index, self._chain)
            except KeyStoreError:
                if nl + 1 == len(data):  # the last record: a torn write
                    tail = "torn"
                    break
                raise
            self._chain = sm3(self._chain + line)
            self._index += 1
            self.records += 1
            closed = self._apply(state, rec)
            pos = nl + 1
        if tail == "clean" and not closed and self.records:
            tail = "unclosed"
        return state, pos, tail

    def _apply(self, state: dict[str, Any], rec: dict[str, Any]) -> bool:
        """Apply one record; True if it is a close marker."""
        if "snap" in rec:
            state.clear()
            state.update(copy.deepcopy(rec["snap"]))
            return False
        closed = False
        for op in rec.get("ops", ()):
            o = op.get("o")
            if o == "set":
                _put(state, op["p"], op["v"])
            elif o == "del":
                _delete(state, op["p"])
            elif o == "msg":
                msgs = state.setdefault("messages", {}).setdefault(op["g"], [])
                msgs.extend(op["m"])
                del msgs[:-MAX_STORED_MESSAGES]
            elif o == "mset":
                state.setdefault("messages", {})[op["g"]] = list(op["m"])
            elif o == "close":
                closed = True
            else:
                raise KeyStoreError(f"the local IM store has an unknown record {o!r}")
            if o != "close":
                closed = False
        return closed

    def _load_old(self, outer: dict[str, Any]) -> dict[str, Any]:
        try:
            wrapped = base64.b64decode(outer["key"])
            nonce, ct = bytes.fromhex(outer["nonce"]), base64.b64decode(outer["data"])
        except (ValueError, KeyError, TypeError):
            raise KeyStoreError("the local IM store is damaged") from None
        self._unwrap(wrapped)
        assert self._key is not None
        try:
            data = sm4.gcm_decrypt(
                self._key, nonce, ct, STORE_LABEL + self._identity.member.encode()
            )
        except (DecryptionError, MstCryptError):
            raise KeyStoreError(
                "the local IM store does not open with this token (another user's, or altered)"
            ) from None
        return dict(json.loads(data))

    # -- writing ---------------------------------------------------------------------
    def _remember(self, state: dict[str, Any]) -> None:
        """What is on disk now, to write only differences later."""
        self._leaves = _leaves(state)
        self._tails = {
            g: (len(ms), ms[-1]["id"] if ms else None)
            for g, ms in state.get("messages", {}).items()
        }

    def _diff(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        ops: list[dict[str, Any]] = []
        leaves = _leaves(state)
        for p, v in leaves.items():
            if p not in self._leaves or self._leaves[p] != v:
                ops.append({"o": "set", "p": list(p), "v": v})
        for p in self._leaves.keys() - leaves.keys():
            ops.append({"o": "del", "p": list(p)})
        for g, msgs in state.get("messages", {}).items():
            _n, last = self._tails.get(g, (0, None))
            if last is None:
                new = msgs
            else:
                i = next((j for j in range(len(msgs) - 1, -1, -1) if msgs[j]["id"] == last), -1)
                if i < 0:  # what was written is gone (trimmed or replaced): write them all
                    ops.append({"o": "mset", "g": g, "m": msgs})
                    continue
                new = msgs[i + 1 :]
            if new:
                ops.append({"o": "msg", "g": g, "m": new})
        return ops

    def save(self, state: dict[str, Any]) -> None:
        """Append one record with what changed (nothing if nothing did)."""
        if self._key is None:
            self.load()
        ops = self._diff(state)
        if not ops:
            return
        self._append({"ops": ops})
        self._remember(state)
        if self.records > 8 * self.compact_after:
            self.compact(state)

    def close(self, state: dict[str, Any]) -> None:
        """Save and mark a clean close."""
        if self._key is None:
            return
        ops = self._diff(state)
        self._append({"ops": [*ops, {"o": "close"}]})
        self._remember(state)

    def _append(self, record: dict[str, Any]) -> None:
        with self._locked():
            if self._header is None or not self.path.exists():
                self._write_snapshot({})  # a new store: header and an empty snapshot
            self._catch_up()
            line = self._seal(record)
            with self.path.open("ab") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self._end += len(line)
            self.records += 1
            self.tail = "unclosed"

    def _catch_up(self) -> None:
        """Another process appended or compacted since: verify what it wrote and continue
        the chain after it (its changes show on the next load)."""
        size = self.path.stat().st_size
        with self.path.open("rb") as f:
            header = f.readline()
            if header != self._header:
                _state, end, tail = self._replay(self.path.read_bytes())
                if tail == "torn":  # we hold the lock: its writer died mid-append
                    os.truncate(self.path, end)
                self._end = end
                return
            if size == self._end:
                return
            f.seek(self._end)
            rest = f.read()
        pos = 0
        while pos < len(rest):
            nl = rest.find(b"\n", pos)
            if nl < 0:  # we hold the lock: another writer died mid-append
                os.truncate(self.path, self._end + pos)
                size = self._end + pos
                break
            line = rest[pos : nl + 1]
            self._open_record(line, self._index, self._chain)
            self._chain = sm3(self._chain + line)
            self._index += 1
            self.records += 1
            pos = nl + 1
        self._end = size

    def _write_snapshot(self, state: dict[str, Any]) -> None:
        """Rewrite the store as a header and one snapshot record (atomically)."""
        if self._key is None or self._wrapped is None:
            raise KeyStoreError("the store is not open")
        header = self._new_header()
        self._start_chain(header)
        line = self._seal({"snap": state})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(header + line)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._end = len(header) + len(line)
        self.records = 1
        self._remember(state)

    def compact(self, state: dict[str, Any]) -> None:
        """Rewrite the log as one snapshot of ``state``."""
        if self._key is None:
            self.load()
        with self._locked():
            self._write_snapshot(state)
