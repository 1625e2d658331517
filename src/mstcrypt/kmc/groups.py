"""Group keys for instant messaging (guide 7.5, Annex D): each member's key-protection
key (KDK) and each group's key (GK), generated and kept in the SS-CC.

* A member's KDK is delivered SM2-encrypted to the member's current *encryption* key (the
  guide says signing key; we keep key separation). It is versioned, and it rotates
  whenever the member's identity changes: a certificate or key revoked, a re-enrollment,
  a key recovered to a new device, leaving the last group. Every group the member is in
  is rekeyed at the same time, so a lost device's KDK unwraps no future group key.
* A group's GK rotates on every membership change (forward and backward secrecy); a new
  member gets no older GK than the one of its joining.
* GK deliveries are SM4-GCM under the member's current KDK, AAD = group | version | member.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select

from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.errors import PolicyError
from mstcrypt.kmc.context import KmcContext, NotFoundError, Unit
from mstcrypt.kmc.models import EncryptionKey, Group, GroupKey, GroupMember, MemberKdk

__all__ = ["MAX_VERSION", "GroupService"]

MAX_VERSION = 2**31 - 1


class GroupService:
    def __init__(self, ctx: KmcContext) -> None:
        self.ctx = ctx

    # -- KDK ---------------------------------------------------------------------------
    @staticmethod
    def _kdk_row(u: Unit, member: str) -> MemberKdk | None:
        return u.s.scalar(
            select(MemberKdk)
            .where(MemberKdk.member == member)
            .order_by(MemberKdk.version.desc())
            .limit(1)
        )

    def _new_kdk(self, u: Unit, member: str, version: int, why: str) -> MemberKdk:
        row = MemberKdk(
            member=member,
            version=version,
            created_at=u.now,
            key_blob=self.ctx.keys.generate_secret(f"kdk:{member}:{version}".encode()),
        )
        u.s.add(row)
        u.s.flush()
        u.audit("kdk.generate", f"member:{member}", version=version, why=why)
        return row

    def _kdk(self, u: Unit, member: str) -> MemberKdk:
        row = self._kdk_row(u, member)
        return row if row is not None else self._new_kdk(u, member, 1, "first use")

    def identity_changed(self, u: Unit, member: str, why: str) -> None:
        """The member's keys or certificates changed: rotate the KDK (when one exists)
        and rekey every group the member is in, inside ``u``."""
        u.lock(f"kdk:{member}")
        row = self._kdk_row(u, member)
        if row is not None:
            self._new_kdk(u, member, row.version + 1, why)
        for g in u.s.scalars(
            select(Group)
            .join(GroupMember, GroupMember.group_id == Group.id)
            .where(GroupMember.member == member)
            .order_by(Group.id)
            .with_for_update(key_share=True)
        ):
            self._new_group_key(u, g, f"member {member}: {why}")

    @staticmethod
    def _member_enc_public(u: Unit, member: str) -> SM2PublicKey:
        row = u.s.scalar(
            select(EncryptionKey)
            .where(EncryptionKey.owner == member, EncryptionKey.state == "active")
            .order_by(EncryptionKey.version.desc())
            .limit(1)
        )
        if row is None:
            raise NotFoundError(f"{member!r} has no active encryption key")
        return SM2PublicKey.from_bytes(row.public_key)

    def kdk_delivery(self, member: str, *, actor: str) -> dict[str, Any]:
        """The member's current KDK, SM2-encrypted to the member's current encryption key."""
        with self.ctx.unit(actor) as u:
            u.lock(f"kdk:{member}")
            recipient = self._member_enc_public(u, member)
            row = self._kdk(u, member)
            ct = self.ctx.keys.encrypt_secret_to(
                row.key_blob, f"kdk:{member}:{row.version}".encode(), recipient
            )
            u.audit(
                "kdk.deliver",
                f"member:{member}",
                version=row.version,
                recipient=recipient.fingerprint().hex(),
            )
        return {
            "member": member,
            "version": row.version,
            "ciphertext": base64.b64encode(ct).decode(),
        }

    # -- groups ------------------------------------------------------------------------
    def _new_group_key(self, u: Unit, group: Group, why: str) -> int:
        group.current_version += 1
        v = group.current_version
        u.s.add(
            GroupKey(
                group_id=group.id,
                version=v,
                created_at=u.now,
                key_blob=self.ctx.keys.generate_secret(f"gk:{group.id}:{v}".encode()),
            )
        )
        u.audit("group.key", f"group:{group.id}", version=v, why=why)
        return v

    def create_group(self, group_id: str, members: Sequence[str], *, actor: str) -> int:
        if not group_id or len(group_id) > 64:
            raise PolicyError("group id must be 1..64 characters")
        members = sorted(set(members))
        if len(members) < 2:
            raise PolicyError("a group has at least two members")
        with self.ctx.unit(actor) as u:
            if u.s.get(Group, group_id) is not None:
                raise PolicyError(f"group {group_id!r} already exists")
            for m in members:
                self._member_enc_public(u, m)
            g = Group(id=group_id, current_version=0, created_at=u.now)
            u.s.add(g)
            u.s.flush()
            for m in members:
                u.s.add(GroupMember(group_id=group_id, member=m, joined_version=1))
            u.audit("group.create", f"group:{group_id}", members=members)
            return self._new_group_key(u, g, "create")

    def change_group(
        self, group_id: str, *, add: Sequence[str] = (), remove: Sequence[str] = (), actor: str
    ) -> int:
        """Membership change; the group key always rotates. A member who leaves their
        last group gets a new KDK (nothing they held stays useful)."""
        add, remove = sorted(set(add)), sorted(set(remove))
        if not add and not remove:
            raise PolicyError("nothing to change (give members to add or remove)")
        with self.ctx.unit(actor) as u:
            g = u.s.get(Group, group_id, with_for_update={"key_share": True})
            if g is None:
                raise NotFoundError(f"no group {group_id!r}")
            current = {
                m.member
                for m in u.s.scalars(select(GroupMember).where(GroupMember.group_id == group_id))
            }
            for m in add:
                if m in current:
                    raise PolicyError(f"{m!r} is already a member")
                self._member_enc_public(u, m)
            for m in remove:
                if m not in current:
                    raise PolicyError(f"{m!r} is not a member")
            if len(current | set(add)) - len(remove) < 2:
                raise PolicyError("a group keeps at least two members")
            for m in add:
                u.s.add(
                    GroupMember(group_id=group_id, member=m, joined_version=g.current_version + 1)
                )
            for m in remove:
                u.s.delete(u.s.get(GroupMember, (group_id, m)))
            u.s.flush()
            u.audit("group.change", f"group:{group_id}", added=add, removed=remove)
            version = self._new_group_key(u, g, "membership")
            for m in remove:
                left = u.s.scalar(
                    select(func.count()).select_from(GroupMember).where(GroupMember.member == m)
                )
                if not left:
                    self.identity_changed(u, m, "left every group")
            return version

    def group_key_for(
        self, group_id: str, member: str, version: int | None = None, *, actor: str | None = None
    ) -> dict[str, Any]:
        """GK (current or a given version) wrapped under the member's current KDK with
        SM4-GCM, AAD = group | version | member. Only current members get keys, and none
        older than the one of their joining."""
        if version is not None and not 1 <= version <= MAX_VERSION:
            raise PolicyError(f"version must be between 1 and {MAX_VERSION}")
        with self.ctx.unit(actor or f"terminal:{member}", audited=False) as u:
            g = u.s.get(Group, group_id)
            membership = u.s.get(GroupMember, (group_id, member)) if g is not None else None
            if g is None or membership is None:
                # one answer for "no such group" and "not a member": no probing of names
                raise NotFoundError(f"{member!r} is not a member of a group {group_id!r}")
            version = g.current_version if version is None else version
            if version < membership.joined_version:
                raise PolicyError(
                    f"{member!r} joined at key version {membership.joined_version}"
                    "; earlier group keys are not released (backward secrecy)"
                )
            row = u.s.get(GroupKey, (group_id, version))
            if row is None:
                raise NotFoundError(f"group {group_id!r} has no key version {version}")
            kdk = self._kdk_row(u, member)
            if kdk is None:
                raise PolicyError(f"{member!r} has no KDK yet: fetch it first (GET /kmc/kdk)")
            nonce = secrets.token_bytes(12)
            wrapped = self.ctx.keys.wrap_secret(
                kdk.key_blob,
                f"kdk:{member}:{kdk.version}".encode(),
                row.key_blob,
                f"gk:{group_id}:{version}".encode(),
                nonce,
                f"{group_id}|{version}|{member}".encode(),
            )
            return {
                "group": group_id,
                "version": version,
                "member": member,
                "kdk_version": kdk.version,
                "nonce": nonce.hex(),
                "wrapped": wrapped.hex(),
            }

    def group_members(self, group_id: str) -> list[str]:
        with self.ctx.read() as s:
            return sorted(
                m.member
                for m in s.scalars(select(GroupMember).where(GroupMember.group_id == group_id))
            )

    def member_groups(self, member: str) -> list[str]:
        with self.ctx.read() as s:
            return sorted(
                m.group_id
                for m in s.scalars(select(GroupMember).where(GroupMember.member == member))
            )
