"""The shared ground of the KMC's services: one database, one SS-CC key store, one clock,
and the unit of work.

Every service (``ca``, ``enrollment``, ``keys``, ``recovery``, ``groups``, ``identities``,
``operators``, ``backup``) takes a :class:`KmcContext`. A mutating operation is one
:class:`Unit`: one database transaction that writes exactly one audit record for the
change (more only where one request changes several things), so a crash leaves the old
state or the new one and nothing changes without a trace::

    with ctx.unit(actor) as u:
        row = u.key(key_id, "archive")          # row lock + KEY_TRANSITIONS check
        row.state = "archived"
        u.audit("key.archive", f"key:{key_id}", owner=row.owner)

Private keys never appear here: they are blobs of the SS-CC (:mod:`mstcrypt.module.sscc`)
and every use (sign, decrypt, envelope, secret wrapping) is a call into it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from mstcrypt.errors import PolicyError
from mstcrypt.kmc import audit
from mstcrypt.kmc.db import Database
from mstcrypt.kmc.models import EncryptionKey
from mstcrypt.module.sscc import ServerKeyStore

__all__ = ["KEY_TRANSITIONS", "KmcContext", "NotFoundError", "Unit", "aware", "new_id", "utcnow"]

#: Encryption-key lifecycle: operation -> states it may start from.
KEY_TRANSITIONS: dict[str, set[str]] = {
    "distribute": {"generated"},
    "rotate": {"active"},
    "archive": {"decrypt_only", "revoked"},
    "revoke": {"generated", "active", "decrypt_only"},
    "destroy": {"archived", "revoked"},
    "recover": {"generated", "active", "decrypt_only", "archived", "revoked"},
}


class NotFoundError(PolicyError):
    """The named certificate, key, code, group, operator or request does not exist."""


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def new_id() -> str:
    return secrets.token_hex(16)


class Unit:
    """One transaction of one actor: row locks, lifecycle checks and the audit append."""

    def __init__(self, ctx: KmcContext, session: Session, actor: str) -> None:
        self.ctx = ctx
        self.s = session
        self.actor = actor
        self.now = ctx.clock()
        self.audited = 0
        self._records: list[tuple[str, str, str, dict[str, Any]]] = []
        self._after: list[Callable[[], None]] = []

    def lock(self, name: str) -> None:
        """Serialise with every other unit locking ``name`` (e.g. ``owner:alice``)."""
        self.ctx.db.lock_name(self.s, name)

    def key(self, key_id: str, op: str) -> EncryptionKey:
        """The encryption key row, locked, if ``op`` is allowed from its state."""
        row = self.s.get(EncryptionKey, key_id, with_for_update={"key_share": True})
        if row is None:
            raise NotFoundError(f"no encryption key {key_id}")
        if row.state not in KEY_TRANSITIONS[op]:
            raise PolicyError(
                f"cannot {op} a key in state {row.state!r} (allowed from: "
                f"{', '.join(sorted(KEY_TRANSITIONS[op]))})"
            )
        return row

    def audit(self, action: str, target: str, *, actor: str | None = None, **details: Any) -> None:
        """Record the audit record of this change. Its details are checked now; the
        records of a unit are appended to the chain in order at its end, inside its
        transaction (the one writer besides the login hot path, which shares
        :func:`mstcrypt.kmc.audit.append`): the chain head, which every audited change
        serialises on, is locked only for those last statements and the commit, not
        while the unit does its work (a group rekey, say)."""
        details = dict(details)
        audit.check_details(details)
        self._records.append((actor or self.actor, action, target, details))
        self.audited += 1

    def _append_records(self) -> None:
        for actor, action, target, details in self._records:
            audit.append(self.s, actor=actor, action=action, target=target, details=details)
        self._records.clear()

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the transaction has committed (e.g. WAL truncation)."""
        self._after.append(fn)


class KmcContext:
    """Database + SS-CC key store + clock, shared by the KMC's services."""

    def __init__(
        self,
        db: Database,
        keys: ServerKeyStore,
        *,
        crl_base_url: str | None = None,
        ocsp_url: str | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.keys = keys
        self.crl_base_url = crl_base_url
        #: written as the id-ad-ocsp authorityInfoAccess of end-entity certificates
        self.ocsp_url = ocsp_url
        self.clock = clock

    @contextmanager
    def unit(self, actor: str, *, audited: bool = True) -> Iterator[Unit]:
        """One transaction. With ``audited`` (the default) the unit must write an audit
        record, or it is rolled back: a change without its record is a bug."""
        with self.db.tx() as s:
            u = Unit(self, s, actor)
            yield u
            if audited and not u.audited:
                raise PolicyError("internal: a KMC change must write its audit record")
            u._append_records()
        for fn in u._after:
            fn()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction that takes no write lock (:meth:`Database.read`): on
        SQLite a deferred BEGIN, so a directory lookup or a rate-limit check no longer
        queues behind writers. Only read in it."""
        with self.db.read() as s:
            yield s
