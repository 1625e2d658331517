"""The IMS server's domain logic (synchronous, over the platform database): what it
accepts, stores, queues and serves. The ASGI app (:mod:`mstcrypt.server.ims`) only adds
connections and fan-out.

The server stores ciphertext and metadata only. It checks what it can without keys —
the envelope's structure, that the sender is the session's owner on the session's
device, that the sender is a current member of the group, that the group key version is
the current one (otherwise the terminal must fetch the new version first), the sender's
signature with the certificate of the session, and the device's sequence — so that a
removed member, a replayed message or a forged sender is refused at the door as well as
by every reader.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from mstcrypt.apps.im.errors import ImError, ImKeyVersionError, ImReplayError, ImSenderError
from mstcrypt.apps.im.format import Envelope, parse, verify_envelope
from mstcrypt.apps.im.models import ImBlob, ImCursor, ImDevice, ImMessage
from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.errors import AccessDeniedError, MstCryptError, PolicyError
from mstcrypt.kmc.context import NotFoundError
from mstcrypt.kmc.models import Group, GroupMember, IssuedCertificate
from mstcrypt.pki import Certificate

__all__ = ["MAX_BLOB", "MAX_HISTORY", "ImsService", "Stored"]

MAX_HISTORY = 500
MAX_BLOB = 2 * 1024**3
_DEVICE = re.compile(r"[0-9a-f]{32}")
_BLOB = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Stored:
    """A stored envelope and the metadata fan-out needs."""

    pos: int
    group: str
    key_version: int
    sender: str
    envelope: bytes
    #: the position of the group's previous message (0: none), for in-order fan-out
    prev: int = -1

    def frame(self) -> dict[str, Any]:
        import base64

        return {
            "op": "msg",
            "group": self.group,
            "pos": self.pos,
            "envelope": base64.b64encode(self.envelope).decode(),
        }


def check_device(device: str) -> str:
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise PolicyError("a device id is 32 lowercase hex digits (X-MST-Device)")
    return device


class ImsService:
    def __init__(
        self,
        kmc: Any,
        blob_dir: str | os.PathLike[str],
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.kmc = kmc
        self.db = kmc.db
        self.blob_dir = Path(blob_dir)
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.clock = clock or (lambda: datetime.now(UTC))
        self._keys: dict[str, SM2PublicKey] = {}

    # -- membership (the KMC's tables) -----------------------------------------------
    def group_state(self, group: str) -> tuple[int, dict[str, int]]:
        """(current key version, {member: joined version}); NotFoundError if no group."""
        with self.db.read() as s:
            g = s.get(Group, group)
            if g is None:
                raise NotFoundError(f"no group {group!r}")
            rows = s.scalars(select(GroupMember).where(GroupMember.group_id == group))
            return g.current_version, {m.member: m.joined_version for m in rows}

    def _membership(self, group: str, member: str) -> tuple[int, int]:
        """(current key version, the member's joining version): one indexed read."""
        with self.db.read() as s:
            row = s.execute(
                select(Group.current_version, GroupMember.joined_version)
                .join(GroupMember, GroupMember.group_id == Group.id)
                .where(Group.id == group, GroupMember.member == member)
            ).first()
        if row is None:
            # one answer for "no such group" and "not a member", as the KMC
            raise NotFoundError(f"{member!r} is not a member of a group {group!r}")
        return int(row[0]), int(row[1])

    def groups_of(self, member: str, device: str | None = None) -> list[dict[str, Any]]:
        with self.db.read() as s:
            rows = s.execute(
                select(Group.id, Group.current_version, GroupMember.joined_version)
                .join(GroupMember, GroupMember.group_id == Group.id)
                .where(GroupMember.member == member)
                .order_by(Group.id)
            ).all()
            out = []
            for gid, version, joined in rows:
                members = sorted(
                    s.scalars(select(GroupMember.member).where(GroupMember.group_id == gid))
                )
                item: dict[str, Any] = {
                    "group": gid,
                    "version": version,
                    "joined_version": joined,
                    "members": members,
                }
                if device is not None:
                    dev = s.get(ImDevice, (member, device, gid))
                    item["last_seq"] = dev.last_seq if dev else 0
                out.append(item)
            return out

    def signing_key(self, serial: str) -> SM2PublicKey:
        """The public key of the session's (signing) certificate."""
        key = self._keys.get(serial)
        if key is None:
            with self.db.read() as s:
                row = s.get(IssuedCertificate, serial)
                if row is None or row.usage != "sign":
                    raise AccessDeniedError(
                        "the session's certificate is not a signing certificate"
                    )
                key = Certificate.from_der(row.der).public_key
            self._keys[serial] = key
        return key

    # -- messages --------------------------------------------------------------------
    def check(
        self, member: str, device: str, raw: bytes, signer: SM2PublicKey | None = None
    ) -> Envelope:
        """Everything about one envelope from ``member``'s ``device`` that needs no write:
        structure, session owner and device, the session certificate's signature (when
        ``signer`` is given), membership and the current key version."""
        env = parse(raw)
        check_device(device)
        if env.sender != member:
            raise ImSenderError(
                "not-the-session-owner", "the envelope's sender is not the session's owner"
            )
        if env.device.hex() != device:
            raise ImSenderError(
                "wrong-device", "the envelope names another device than the session's"
            )
        if signer is not None:
            verify_envelope(env, signer)
        version, _joined = self._membership(env.group, member)
        if env.key_version != version:
            raise ImKeyVersionError(
                "rekey",
                f"group {env.group!r} is at key version {version}, not {env.key_version}: "
                "fetch the current group key and seal again",
            )
        return env

    def accept(
        self, member: str, device: str, raw: bytes, signer: SM2PublicKey | None = None
    ) -> Stored:
        """:meth:`check`, then store the envelope; returns it with its position."""
        env = self.check(member, device, raw, signer)
        result = self.store_batch([(env, member, device)])[0]
        if isinstance(result, Stored):
            return result
        raise result

    def store_batch(
        self, items: Sequence[tuple[Envelope, str, str]]
    ) -> list[Stored | MstCryptError]:
        """Store checked envelopes (``(env, member, device)``) in one transaction — a
        group commit: one durable write for many messages. Each item gets its
        :class:`Stored` or the error that refused it (a key version changed meanwhile, no
        longer a member, a sequence not above the device's, a message id seen before);
        a refused item does not affect the others."""
        now = self.clock()
        try:
            with self.db.tx() as s:
                return self._store_all(s, items, now)
        except IntegrityError:
            if len(items) == 1:
                return [ImReplayError("replayed", "this message id was already received")]
            # a duplicate raced in from another instance: store one by one
            return [self.store_batch([it])[0] for it in items]

    def _store_all(
        self, s: Any, items: Sequence[tuple[Envelope, str, str]], now: datetime
    ) -> list[Stored | MstCryptError]:
        groups: dict[str, tuple[Group | None, int]] = {}
        devices: dict[tuple[str, str, str], ImDevice | None] = {}
        ids: set[bytes] = set()
        out: list[Stored | MstCryptError] = []
        for env, member, device in items:
            try:
                if env.group not in groups:
                    # the group row is locked: stores into one group are serialised, so
                    # ``prev`` is exact (fan-out delivers in order without reading back)
                    g = s.get(Group, env.group, with_for_update=True)
                    last = s.scalar(
                        select(func.max(ImMessage.pos)).where(ImMessage.group_id == env.group)
                    )
                    groups[env.group] = (g, last or 0)
                g, prev = groups[env.group]
                # re-read inside the write transaction: a change since check() is caught
                if g is None or g.current_version != env.key_version:
                    raise ImKeyVersionError("rekey", f"group {env.group!r} was rekeyed: seal again")
                if s.get(GroupMember, (env.group, member)) is None:
                    raise NotFoundError(f"{member!r} is not a member of a group {env.group!r}")
                key = (member, device, env.group)
                if key not in devices:
                    devices[key] = s.get(ImDevice, key)
                dev = devices[key]
                last_seq = dev.last_seq if dev else 0
                if env.seq <= last_seq:
                    raise ImReplayError(
                        "out-of-order",
                        f"sequence {env.seq} is not above {last_seq} for this device and group",
                    )
                if env.message_id in ids or s.scalar(
                    select(ImMessage.pos).where(ImMessage.message_id == env.message_id)
                ):
                    raise ImReplayError("replayed", "this message id was already received")
                if dev is None:
                    dev = ImDevice(
                        member=member,
                        device=device,
                        group_id=env.group,
                        last_seq=env.seq,
                        last_seen=now,
                    )
                    s.add(dev)
                    devices[key] = dev
                else:
                    dev.last_seq, dev.last_seen = env.seq, now
                row = ImMessage(
                    group_id=env.group,
                    message_id=env.message_id,
                    sender=member,
                    device=device,
                    seq=env.seq,
                    key_version=env.key_version,
                    content_type=int(env.content_type),
                    size=len(env.raw),
                    created_at=now,
                    envelope=env.raw,
                )
                s.add(row)
                s.flush()
                ids.add(env.message_id)
                groups[env.group] = (g, row.pos)
                out.append(Stored(row.pos, env.group, env.key_version, member, env.raw, prev))
            except (ImError, NotFoundError) as exc:
                out.append(exc)
        return out

    def history(self, member: str, group: str, *, after: int = 0, limit: int = 100) -> list[Stored]:
        """Stored envelopes of ``group`` after position ``after`` (at most ``limit``),
        only those under key versions since the member's joining."""
        if not 1 <= limit <= MAX_HISTORY or after < 0:
            raise PolicyError(f"limit is 1..{MAX_HISTORY} and after is not negative")
        _version, joined = self._membership(group, member)
        with self.db.read() as s:
            rows = s.scalars(
                select(ImMessage)
                .where(
                    ImMessage.group_id == group,
                    ImMessage.pos > after,
                    ImMessage.key_version >= joined,
                )
                .order_by(ImMessage.pos)
                .limit(limit)
            )
            return [Stored(r.pos, r.group_id, r.key_version, r.sender, r.envelope) for r in rows]

    def pending(self, member: str, device: str, *, limit: int = 100) -> list[Stored]:
        """The device's offline queue: for every group of the member, what it has not
        acknowledged (oldest first, at most ``limit`` per group)."""
        check_device(device)
        out: list[Stored] = []
        for g in self.groups_of(member):
            with self.db.read() as s:
                cur = s.get(ImCursor, (member, device, g["group"]))
            after = cur.acked if cur else 0
            out.extend(self.history(member, g["group"], after=after, limit=limit))
        return out

    def ack(self, member: str, device: str, group: str, pos: int) -> int:
        """Acknowledge everything of ``group`` up to ``pos`` for this device; positions
        never move backwards. Returns the acknowledged position."""
        result = self.ack_batch([(member, device, group, pos)])[0]
        if isinstance(result, MstCryptError):
            raise result
        return result

    def ack_batch(self, items: Sequence[tuple[str, str, str, int]]) -> list[int | MstCryptError]:
        """Acknowledgements ``(member, device, group, pos)`` in one transaction; each item
        gets its acknowledged position or the error that refused it."""
        with self.db.tx() as s:
            return self._ack_all(s, items)

    def commit_batch(
        self,
        stores: Sequence[tuple[Envelope, str, str]],
        acks: Sequence[tuple[str, str, str, int]],
    ) -> tuple[list[Stored | MstCryptError], list[int | MstCryptError]]:
        """:meth:`store_batch` and :meth:`ack_batch` in one transaction (one durable
        commit for everything a busy server has to write at a time)."""
        now = self.clock()
        try:
            with self.db.tx() as s:
                acked = self._ack_all(s, acks)
                return self._store_all(s, stores, now), acked
        except IntegrityError:  # a duplicate message raced in: see store_batch
            return self.store_batch(stores), self.ack_batch(acks)

    @staticmethod
    def _ack_all(s: Any, items: Sequence[tuple[str, str, str, int]]) -> list[int | MstCryptError]:
        out: list[int | MstCryptError] = []
        cursors: dict[tuple[str, str, str], ImCursor] = {}
        for member, device, group, pos in items:
            try:
                check_device(device)
                if type(pos) is not int or pos < 0:
                    raise PolicyError("pos is a non-negative integer")
                if s.get(GroupMember, (group, member)) is None:
                    # one answer for "no such group" and "not a member", as the KMC
                    raise NotFoundError(f"{member!r} is not a member of a group {group!r}")
                key = (member, device, group)
                cur = cursors.get(key) or s.get(ImCursor, key)
                if cur is None:
                    cur = ImCursor(member=member, device=device, group_id=group, acked=pos)
                    s.add(cur)
                else:
                    cur.acked = max(cur.acked, pos)
                cursors[key] = cur
                out.append(cur.acked)
            except MstCryptError as exc:
                out.append(exc)
        return out

    # -- blobs -----------------------------------------------------------------------
    def _blob_path(self, blob_id: str, *, part: bool) -> Path:
        if not _BLOB.fullmatch(blob_id):
            raise PolicyError("a blob id is 32 lowercase hex digits")
        return self.blob_dir / (blob_id + (".part" if part else ".blob"))

    def blob_status(self, member: str, blob_id: str) -> dict[str, Any]:
        with self.db.read() as s:
            row = s.get(ImBlob, blob_id)
        if row is None:
            raise NotFoundError(f"no blob {blob_id}")
        self._membership(row.group_id, member)
        if not row.complete:
            size = self._blob_path(blob_id, part=True).stat().st_size
            return {"blob": blob_id, "group": row.group_id, "size": size, "complete": False}
        return {"blob": blob_id, "group": row.group_id, "size": row.size, "complete": True}

    def blob_begin(self, member: str, group: str, blob_id: str, offset: int) -> Path:
        """Start or resume an upload at ``offset`` (which must equal what is stored):
        returns the partial file to append to."""
        self._membership(group, member)
        part = self._blob_path(blob_id, part=True)
        with self.db.tx() as s:
            row = s.get(ImBlob, blob_id)
            if row is None:
                if offset != 0:
                    raise PolicyError("a new upload starts at offset 0")
                s.add(
                    ImBlob(
                        blob_id=blob_id,
                        group_id=group,
                        uploader=member,
                        size=0,
                        complete=False,
                        created_at=self.clock(),
                    )
                )
                part.write_bytes(b"")
                return part
            if row.uploader != member or row.group_id != group:
                raise AccessDeniedError("this blob belongs to another upload")
            if row.complete:
                raise PolicyError("this blob is complete")
        have = part.stat().st_size if part.exists() else 0
        if offset != have:
            raise PolicyError(f"resume at offset {have}, not {offset}")
        return part

    def blob_finish(self, member: str, blob_id: str) -> int:
        part, final = self._blob_path(blob_id, part=True), self._blob_path(blob_id, part=False)
        size = part.stat().st_size
        with self.db.tx() as s:
            row = s.get(ImBlob, blob_id)
            if row is None or row.uploader != member:
                raise NotFoundError(f"no upload {blob_id} of {member!r}")
            os.replace(part, final)
            row.size, row.complete = size, True
        return size

    def blob_open(self, member: str, blob_id: str) -> tuple[Path, int]:
        st = self.blob_status(member, blob_id)
        if not st["complete"]:
            raise NotFoundError(f"blob {blob_id} is not complete")
        return self._blob_path(blob_id, part=False), st["size"]
