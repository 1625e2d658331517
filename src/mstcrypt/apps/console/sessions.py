"""Operator sessions of the web console, from certificate login (§7.3).

A browser cannot hold the operator's soft token, so the login happens where the token
is (``mstcrypt console open``):

1. the CLI performs the §7.3 login with the operator's token and gets an API session
   token (audience ``mstcrypt``);
2. with it, ``POST /console/code`` returns a **console code**: a token signed by the
   console key (a service key in the SS-CC), audience ``mstcrypt-console-code``, valid
   for :attr:`ConsolePolicy.code_ttl` seconds, naming the operator and the certificate
   serial of that login;
3. the browser exchanges the code once (``POST /console/login``): its ``jti`` is written
   to ``revoked_sessions`` in the transaction that also writes the audit record, so a
   second exchange anywhere fails on the primary key;
4. the answer sets the **console session** cookie: a token signed by the console key,
   audience ``mstcrypt-console``, a fresh ``jti`` (the session id), ``auth`` (login
   time), ``exp`` (idle expiry, renewed while used, never past ``auth`` +
   :attr:`ConsolePolicy.max_age`) and ``csrf`` (the session's CSRF token, a random value
   that forms carry and the cookie proves).

Every request re-checks, in one indexed read, that the session is not logged out and
its certificate not revoked, then that the operator is still active and bound to that
certificate (:meth:`OperatorService.from_session`). A terminal's session token, an
operator's API token or a console code is never a console session: another key signs
them, or another audience names them (both are checked).

State lives in the database (``revoked_sessions``, the audit log), so any instance
accepts a session another issued, and logout anywhere ends it everywhere.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import IntegrityError

from mstcrypt.apps.console.errors import (
    ConsoleAuthError,
    ConsoleLoginRequired,
    ConsolePolicyError,
    CsrfError,
)
from mstcrypt.apps.login import tokens
from mstcrypt.apps.login.fastpath import read_row
from mstcrypt.apps.login.models import RevokedSession
from mstcrypt.errors import AuthenticationError, PolicyError
from mstcrypt.kmc.identities import ServiceIdentity
from mstcrypt.kmc.models import ServiceKey
from mstcrypt.kmc.operators import OperatorIdentity
from mstcrypt.kmc.service import Kmc

__all__ = [
    "CODE_AUDIENCE",
    "CONSOLE_KEY",
    "SESSION_AUDIENCE",
    "ConsoleAuth",
    "ConsolePolicy",
    "ConsoleSession",
]

CONSOLE_KEY = "console"
CODE_AUDIENCE = "mstcrypt-console-code"
SESSION_AUDIENCE = "mstcrypt-console"
_ISSUER = "mstcrypt-console"


#: bounds of the session settings, in seconds (inclusive)
CODE_TTL_BOUNDS = (10, 300)
IDLE_BOUNDS = (60, 8 * 3600)
MAX_AGE_MAX = 24 * 3600


@dataclass(frozen=True)
class ConsolePolicy:
    """``code_ttl``: seconds a console code may wait for its exchange (10-300);
    ``idle``: seconds a session lives without a request (60 s - 8 h); ``max_age``:
    seconds after the login when a session ends however busy (at least ``idle``, at
    most 24 h). Out of bounds: :class:`ConsolePolicyError`. Configured with
    ``MSTCRYPT_CONSOLE_CODE_TTL`` / ``_IDLE`` / ``_MAX_AGE`` or ``mstcrypt serve
    --console-*`` (:class:`mstcrypt.server.config.Settings`)."""

    code_ttl: int = 60
    idle: int = 900
    max_age: int = 8 * 3600

    def __post_init__(self) -> None:
        for field_name in ("code_ttl", "idle", "max_age"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConsolePolicyError(f"console {field_name} must be whole seconds")
        lo, hi = CODE_TTL_BOUNDS
        if not lo <= self.code_ttl <= hi:
            raise ConsolePolicyError(
                f"console code lifetime {self.code_ttl} s is outside {lo}..{hi} s"
            )
        lo, hi = IDLE_BOUNDS
        if not lo <= self.idle <= hi:
            raise ConsolePolicyError(f"console idle expiry {self.idle} s is outside {lo}..{hi} s")
        if not self.idle <= self.max_age <= MAX_AGE_MAX:
            raise ConsolePolicyError(
                f"console session maximum age {self.max_age} s is outside "
                f"{self.idle} (the idle expiry)..{MAX_AGE_MAX} s"
            )


@dataclass(frozen=True)
class ConsoleSession:
    """A verified console session: its claims, the operator, and a renewed cookie value
    when the idle expiry was moved (None: keep the cookie)."""

    claims: Mapping[str, Any]
    operator: OperatorIdentity
    renewed: str | None = None

    @property
    def csrf(self) -> str:
        return str(self.claims["csrf"])

    @property
    def jti(self) -> str:
        return str(self.claims["jti"])

    @property
    def expires(self) -> int:
        return int(self.claims["exp"])

    def check_csrf(self, value: object) -> None:
        """The form's CSRF token must be this session's (constant-time comparison)."""
        if not isinstance(value, str) or not hmac.compare_digest(
            value.encode(), self.csrf.encode()
        ):
            raise CsrfError("the form's CSRF token is missing or not this session's")


class ConsoleAuth:
    """Issues and checks console codes and console sessions (see the module text)."""

    def __init__(
        self,
        kmc: Kmc,
        *,
        policy: ConsolePolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kmc = kmc
        self.policy = policy or ConsolePolicy()
        self.clock = clock
        self._key: ServiceIdentity | None = None

    # -- the console key -----------------------------------------------------------------
    def key(self) -> ServiceIdentity:
        """The console's signing key in the SS-CC, created on first use (one instance
        wins when several create it at once)."""
        if self._key is None:
            ids = self.kmc.identities
            with self.kmc.ctx.read() as s:
                exists = s.get(ServiceKey, CONSOLE_KEY) is not None
            if not exists:
                try:
                    with self.kmc.ctx.unit("system:console") as u:
                        ids.create_key(u, CONSOLE_KEY)
                        u.audit("service.key", f"service:{CONSOLE_KEY}", purpose="console sessions")
                except IntegrityError:  # another instance created it meanwhile
                    pass
            self._key = ids.key(CONSOLE_KEY)
        return self._key

    def _issue(self, claims: dict[str, Any]) -> str:
        return tokens.issue(claims, self.key().sign)

    def _verify(self, token: str, audience: str) -> dict[str, Any]:
        try:
            return tokens.verify(
                token, self.key().public_key(), audience=audience, now=int(self.clock())
            )
        except tokens.TokenError as exc:
            raise ConsoleLoginRequired(f"console credential refused: {exc}") from None

    # -- step 2: the code ----------------------------------------------------------------
    def issue_code(
        self, operator: OperatorIdentity, login_claims: Mapping[str, Any], *, source: str = "-"
    ) -> tuple[str, int]:
        """A one-time console code for ``operator``, who proved their certificate with
        the §7.3 session ``login_claims``. Returns (code, expiry in Unix seconds)."""
        if operator.via != "certificate":
            raise AuthenticationError(
                "the console is opened with a certificate login (static credentials cannot)"
            )
        now = int(self.clock())
        claims = {
            "iss": _ISSUER,
            "aud": [CODE_AUDIENCE],
            "owner": operator.name,
            "serial": str(login_claims["serial"]),
            "sub": str(login_claims.get("sub", "")),
            "amr": list(login_claims.get("amr") or []),
            "iat": now,
            "exp": now + self.policy.code_ttl,
            "jti": secrets.token_hex(16),
        }
        code = self._issue(claims)
        with self.kmc.ctx.unit(operator.name) as u:
            u.audit(
                "console.code",
                f"operator:{operator.name}",
                serial=claims["serial"],
                code_id=claims["jti"],
                source=source[:64],
            )
        return code, claims["exp"]

    # -- step 3: the exchange --------------------------------------------------------------
    def exchange(self, code: str, *, source: str = "-") -> tuple[str, ConsoleSession]:
        """Exchange a console code, once, for a new console session. Returns the cookie
        value and the session. Whatever cookie the browser sent before is irrelevant:
        the session id is always new (no session fixation)."""
        try:
            claims = self._verify(code, CODE_AUDIENCE)
            # single use is enforced by the insert below, which also reports it
            operator = self._operator(claims, ended_check=False)
        except ConsoleLoginRequired as exc:  # an answer for the login form, not a redirect
            raise ConsoleAuthError(str(exc)) from None
        now = int(self.clock())
        session = {
            "iss": _ISSUER,
            "aud": [SESSION_AUDIENCE],
            "owner": operator.name,
            "serial": claims["serial"],
            "sub": claims.get("sub", ""),
            "amr": claims.get("amr", []),
            "iat": now,
            "auth": now,
            "exp": now + min(self.policy.idle, self.policy.max_age),
            "jti": secrets.token_hex(16),
            "csrf": secrets.token_urlsafe(24),
        }
        try:
            with self.kmc.ctx.unit(operator.name) as u:
                u.s.add(
                    RevokedSession(
                        jti=str(claims["jti"]),
                        expires=int(claims["exp"]) + 60,
                        revoked_at=datetime.fromtimestamp(now, UTC),
                    )
                )
                u.s.flush()
                u.audit(
                    "console.login",
                    f"operator:{operator.name}",
                    serial=claims["serial"],
                    code_id=claims["jti"],
                    session=session["jti"],
                    source=source[:64],
                )
        except IntegrityError:
            raise ConsoleAuthError("this console code was already used") from None
        return self._issue(session), ConsoleSession(session, operator)

    # -- every request -------------------------------------------------------------------
    def session(self, cookie: str | None) -> ConsoleSession:
        """The console session a cookie carries, or :class:`ConsoleLoginRequired`."""
        if not cookie:
            raise ConsoleLoginRequired("no console session")
        claims = self._verify(cookie, SESSION_AUDIENCE)
        now = int(self.clock())
        auth = claims.get("auth")
        if (
            not isinstance(auth, int)
            or isinstance(auth, bool)
            or not isinstance(claims.get("csrf"), str)
        ):
            raise ConsoleLoginRequired("console credential refused: not a console session")
        if now >= auth + self.policy.max_age:
            raise ConsoleLoginRequired("the console session reached its maximum age")
        if now > int(claims["exp"]):  # tokens.verify allows 30 s of leeway; we do not
            raise ConsoleLoginRequired("the console session has expired")
        operator = self._operator(claims)
        renewed = None
        if int(claims["exp"]) - now < self.policy.idle // 2:
            renewed = self._issue(
                {
                    **claims,
                    "iat": now,
                    "exp": min(now + self.policy.idle, auth + self.policy.max_age),
                }
            )
        return ConsoleSession(claims, operator, renewed)

    def _operator(self, claims: Mapping[str, Any], *, ended_check: bool = True) -> OperatorIdentity:
        """Not logged out, certificate active (one indexed read), then the operator bound
        to that certificate and active."""
        serial, jti = claims.get("serial"), claims.get("jti")
        if not isinstance(serial, str) or not serial or not isinstance(jti, str):
            raise ConsoleLoginRequired("console credential refused: no certificate named")
        row = read_row(
            self.kmc.db,
            "SELECT (SELECT 1 FROM revoked_sessions WHERE jti = :j), "
            "(SELECT status FROM certificates WHERE serial = :s)",
            {"j": jti, "s": serial},
        )
        if row is None or (ended_check and row[0] is not None):
            raise ConsoleLoginRequired("the console session was ended (logged out)")
        if row[1] != "active":
            raise ConsoleLoginRequired("the operator's certificate is revoked")
        try:
            return self.kmc.operators.from_session(claims)
        except AuthenticationError as exc:
            raise ConsoleLoginRequired(str(exc)) from None

    def logout(self, session: ConsoleSession, *, source: str = "-") -> None:
        """End the session everywhere (its id joins ``revoked_sessions``)."""
        claims = session.claims
        until = int(claims["auth"]) + self.policy.max_age + 60
        try:
            with self.kmc.ctx.unit(session.operator.name) as u:
                u.s.add(
                    RevokedSession(
                        jti=session.jti,
                        expires=until,
                        revoked_at=datetime.fromtimestamp(int(self.clock()), UTC),
                    )
                )
                u.s.flush()
                u.audit(
                    "console.logout",
                    f"operator:{session.operator.name}",
                    session=session.jti,
                    source=source[:64],
                )
        except IntegrityError:  # logged out meanwhile (another tab, another instance)
            raise PolicyError("this console session was already ended") from None
