"""Operators and their roles: the separation of duties that dual control relies on.

An operator is registered by an administrator **at the console** (``mstcrypt operator
add``, which needs the server's data directory and SS-CC), never through the HTTP API,
and is bound to exactly one signing certificate: the one enrolled with the operator code
that the console printed (or an existing certificate the console binds). A session token
authenticates an operator only when its certificate serial is that binding, so a code an
operator issued for somebody else's name cannot produce an operator, and re-enrolling
moves the binding only through an operator code.

Roles (per-route in :mod:`mstcrypt.server.routers`):

* ``administrator`` — backups, audit checkpoints, archiving and destroying keys;
* ``registration_officer`` — enrollment codes, certificate revocation, key generation,
  distribution and update, groups, login passwords;
* ``key_recovery_officer`` — recovery requests and approvals (dual control: a second
  officer approves, never the requester, never for themselves);
* ``auditor`` — reads the audit log and verifies it; holds no other role.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from mstcrypt.crypto.sm3 import pbkdf2_hmac_sm3, sm3
from mstcrypt.errors import AuthenticationError, PolicyError
from mstcrypt.kmc.context import KmcContext, NotFoundError
from mstcrypt.kmc.models import IssuedCertificate, Operator
from mstcrypt.pki import Profile

if TYPE_CHECKING:
    from mstcrypt.kmc.enrollment import EnrollmentService

__all__ = ["ROLES", "OperatorIdentity", "OperatorService"]

ADMINISTRATOR = "administrator"
REGISTRATION_OFFICER = "registration_officer"
KEY_RECOVERY_OFFICER = "key_recovery_officer"
AUDITOR = "auditor"
ROLES = (ADMINISTRATOR, REGISTRATION_OFFICER, KEY_RECOVERY_OFFICER, AUDITOR)
STATIC_ITERATIONS = 50_000
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class OperatorIdentity:
    name: str
    roles: frozenset[str]
    via: str  # "certificate" | "static"

    def has(self, role: str) -> bool:
        return role in self.roles


def check_roles(roles: Iterable[str]) -> list[str]:
    out = sorted(set(roles))
    if not out:
        raise PolicyError(f"give at least one role ({', '.join(ROLES)})")
    unknown = [r for r in out if r not in ROLES]
    if unknown:
        raise PolicyError(f"unknown role(s) {', '.join(unknown)}; roles: {', '.join(ROLES)}")
    if AUDITOR in out and len(out) > 1:
        raise PolicyError("the auditor role cannot be combined with another role")
    return out


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PolicyError("operator name: 1-64 letters, digits, '.', '-' or '_'")
    return name


class OperatorService:
    def __init__(self, ctx: KmcContext, enrollment: EnrollmentService) -> None:
        self.ctx = ctx
        self.enrollment = enrollment
        self._static_cache: dict[str, tuple[str, bytes]] = {}

    # -- console -----------------------------------------------------------------------
    def add(
        self,
        name: str,
        roles: Iterable[str],
        *,
        org: str = "mstcrypt",
        actor: str = "console",
        ttl: timedelta = timedelta(days=1),
    ) -> tuple[str, datetime]:
        """Register an operator (pending) and return a one-time operator enrollment code."""
        check_name(name)
        roles = check_roles(roles)
        with self.ctx.unit(actor) as u:
            if u.s.get(Operator, name) is not None:
                raise PolicyError(f"operator {name!r} already exists")
            issued = u.s.scalar(
                select(IssuedCertificate.serial).where(IssuedCertificate.owner == name).limit(1)
            )
            if issued is not None:
                raise PolicyError(
                    f"{name!r} already holds terminal certificates (issued through codes an "
                    "operator created): an operator gets a name of their own"
                )
            u.s.add(
                Operator(
                    name=name,
                    roles=roles,
                    status="pending",
                    cert_serial=None,
                    created_by=actor[:64],
                    created_at=u.now,
                    updated_at=u.now,
                )
            )
            u.audit("operator.add", f"operator:{name}", roles=roles)
        return self.enroll_code(name, org=org, actor=actor, ttl=ttl)

    def enroll_code(
        self,
        name: str,
        *,
        org: str = "mstcrypt",
        actor: str = "console",
        ttl: timedelta = timedelta(days=1),
    ) -> tuple[str, datetime]:
        """A new operator enrollment code (a new device or an expired code)."""
        return self.enrollment.create_code(
            owner=name,
            subject={"O": org, "CN": name},
            profile=Profile.DEVICE_SIGN,
            ttl=ttl,
            actor=actor,
            purpose="operator",
        )

    def add_static(self, name: str, roles: Iterable[str], *, actor: str = "console") -> str:
        """A static bearer credential (accepted only where the server enables static
        operators, e.g. for automated tests). Returns the credential, shown once."""
        check_name(name)
        roles = check_roles(roles)
        token = "op_" + secrets.token_urlsafe(24)
        salt = secrets.token_bytes(16)
        with self.ctx.unit(actor) as u:
            row = u.s.get(Operator, name, with_for_update={"key_share": True})
            if row is None:
                row = Operator(
                    name=name,
                    roles=roles,
                    status="active",
                    cert_serial=None,
                    created_by=actor[:64],
                    created_at=u.now,
                    updated_at=u.now,
                )
                u.s.add(row)
            row.roles, row.salt, row.updated_at = roles, salt, u.now
            row.verifier = pbkdf2_hmac_sm3(token.encode(), salt, STATIC_ITERATIONS)
            if row.status == "pending":
                row.status = "active"
            u.audit("operator.static", f"operator:{name}", roles=roles)
        return token

    def bind(self, name: str, serial: str, *, actor: str = "console") -> None:
        """Bind a registered operator to an existing, active signing certificate of theirs
        (issued under the operator's own name, which only operator codes can enroll)."""
        with self.ctx.unit(actor) as u:
            row = u.s.get(Operator, name, with_for_update={"key_share": True})
            if row is None:
                raise NotFoundError(f"no operator {name!r}")
            cert = u.s.get(IssuedCertificate, serial.lower().lstrip("0") or "0")
            if (
                cert is None
                or cert.owner != name
                or cert.usage != "sign"
                or cert.status != "active"
            ):
                raise PolicyError(
                    f"certificate {serial} is not an active signing certificate of {name!r}"
                )
            row.cert_serial, row.updated_at = cert.serial, u.now
            if row.status == "pending":
                row.status = "active"
            u.audit("operator.bind", f"operator:{name}", serial=cert.serial)

    def set_roles(self, name: str, roles: Iterable[str], *, actor: str = "console") -> None:
        roles = check_roles(roles)
        with self.ctx.unit(actor) as u:
            row = u.s.get(Operator, name, with_for_update={"key_share": True})
            if row is None:
                raise NotFoundError(f"no operator {name!r}")
            row.roles, row.updated_at = roles, u.now
            u.audit("operator.roles", f"operator:{name}", roles=roles)

    def set_status(self, name: str, status: str, *, actor: str = "console") -> None:
        if status not in ("active", "disabled"):
            raise PolicyError("status is active or disabled")
        with self.ctx.unit(actor) as u:
            row = u.s.get(Operator, name, with_for_update={"key_share": True})
            if row is None:
                raise NotFoundError(f"no operator {name!r}")
            if status == "active" and row.cert_serial is None and row.verifier is None:
                raise PolicyError(f"operator {name!r} has no credential yet (enroll first)")
            row.status, row.updated_at = status, u.now
            u.audit(f"operator.{'enable' if status == 'active' else 'disable'}", f"operator:{name}")

    def list(self) -> list[dict[str, Any]]:
        with self.ctx.read() as s:
            return [
                {
                    "name": r.name,
                    "roles": list(r.roles),
                    "status": r.status,
                    "certificate": r.cert_serial,
                    "static": r.verifier is not None,
                }
                for r in s.scalars(select(Operator).order_by(Operator.name))
            ]

    def is_operator(self, owner: str) -> bool:
        with self.ctx.read() as s:
            return s.get(Operator, owner) is not None

    # -- authentication ----------------------------------------------------------------
    def from_session(self, claims: Mapping[str, Any]) -> OperatorIdentity:
        """The operator a verified session token names, if its certificate is the one
        bound to that operator."""
        owner, serial = claims.get("owner"), claims.get("serial")
        with self.ctx.read() as s:
            row = s.get(Operator, owner) if isinstance(owner, str) else None
            if row is None:
                raise AuthenticationError("this user is not an operator")
            if row.status != "active":
                raise AuthenticationError(f"operator {row.name!r} is {row.status}")
            if not row.cert_serial or not hmac.compare_digest(str(serial), row.cert_serial):
                raise AuthenticationError(
                    "this certificate is not the one bound to the operator (re-enroll with an "
                    "operator code from the console)"
                )
            return OperatorIdentity(row.name, frozenset(row.roles), "certificate")

    def from_static(self, token: str) -> OperatorIdentity:
        digest = sm3(b"op|" + token.encode()).hex()
        with self.ctx.read() as s:
            cached = self._static_cache.get(digest)
            rows = (
                [s.get(Operator, cached[0])]
                if cached
                else list(s.scalars(select(Operator).where(Operator.verifier.is_not(None))))
            )
            for row in rows:
                if row is None or row.verifier is None or row.salt is None:
                    continue
                if cached and hmac.compare_digest(cached[1], row.verifier):
                    ok = True
                else:
                    ok = token.startswith("op_") and hmac.compare_digest(
                        pbkdf2_hmac_sm3(token.encode(), row.salt, STATIC_ITERATIONS), row.verifier
                    )
                if ok:
                    if row.status != "active":
                        raise AuthenticationError(f"operator {row.name!r} is {row.status}")
                    self._static_cache[digest] = (row.name, row.verifier)
                    return OperatorIdentity(row.name, frozenset(row.roles), "static")
            self._static_cache.pop(digest, None)
        raise AuthenticationError("invalid operator credential")
