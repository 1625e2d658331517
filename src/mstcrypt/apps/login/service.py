"""The login service of an information system (server side of §7.3).

State lives in the database, so a replayed Token-M is refused even when it reaches
another instance: each challenge is consumed (``UPDATE … WHERE used_at IS NULL``) before
the response is verified. Every attempt is audited with its reason; failures count per
certificate serial and per source address, and lock out after a limit.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, update

from mstcrypt.apps.login import tokens
from mstcrypt.apps.login.fastpath import RawTx, append_audit
from mstcrypt.apps.login.models import LoginChallenge, LoginFailures, LoginPassword, RevokedSession
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.crypto.sm3 import pbkdf2_hmac_sm3
from mstcrypt.errors import PolicyError
from mstcrypt.kmc import audit
from mstcrypt.kmc.models import IssuedCertificate, RateLimit
from mstcrypt.kmc.service import Kmc
from mstcrypt.pki import CRL, Certificate, Profile
from mstcrypt.protocols.login import Challenge, LoginError, LoginServer, Response

__all__ = ["LoginPolicy", "LoginService"]

_LC = LoginChallenge.__table__
_LF = LoginFailures.__table__
_LP = LoginPassword.__table__
_IC = IssuedCertificate.__table__
_RL = RateLimit.__table__


@dataclass
class LoginPolicy:
    challenge_ttl: int = 60
    session_ttl: int = 3600
    max_failures: int = 5
    failure_window: int = 900
    lockout_seconds: int = 900
    require_password: bool = False
    audiences: tuple[str, ...] = ("mstcrypt",)
    challenges_per_minute: int = 600


class _WindowLimiter:
    """Per-instance fixed-window limiter for challenge requests (flood protection only:
    the security limits — lockout, single use — live in the database)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._window = -1
        self._counts: dict[str, int] = {}

    def allow(self, key: str, now: int) -> bool:
        window = now // 60
        if window != self._window:
            self._window, self._counts = window, {}
        n = self._counts.get(key, 0) + 1
        self._counts[key] = n
        return n <= self.limit


class LoginService:
    def __init__(
        self,
        kmc: Kmc,
        *,
        server_name: str,
        policy: LoginPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kmc = kmc
        self.server_name = server_name
        self.policy = policy or LoginPolicy()
        self.clock = clock
        key, cert = kmc.service_identity("login", Profile.LOGIN_SERVER_SIGN, server_name)
        self._key: SM2PrivateKey = key
        self.certificate: Certificate = cert
        chain = kmc.chain()
        self.protocol = LoginServer(
            server_name=server_name,
            certificate=cert,
            signer=key.sign,
            chain=chain[:-1],
            anchors=chain[-1:],
            ttl_seconds=self.policy.challenge_ttl,
        )
        self._crl_cache: dict[str, tuple[float, CRL]] = {}
        self._challenge_limiter = _WindowLimiter(self.policy.challenges_per_minute)

    @property
    def public_key(self) -> Any:
        return self.certificate.public_key

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def _crls(self) -> list[CRL]:
        out = []
        for ca in ("issuing", "root"):
            cached = self._crl_cache.get(ca)
            if cached is None or self.clock() - cached[0] > 30:
                cached = (self.clock(), CRL.from_der(self.kmc.crl(ca)))
                self._crl_cache[ca] = cached
            out.append(cached[1])
        return out

    # -- step b ------------------------------------------------------------------------
    def challenge(self, *, source: str = "-") -> Challenge:
        """A fresh challenge, recorded in the database (single use, expiring)."""
        if not self._challenge_limiter.allow(source, int(self.clock())):
            raise PolicyError("too many login requests from this address; retry later")
        ch = self.protocol.challenge(self._now())
        with RawTx(self.kmc.db) as tx:
            tx.q(
                "INSERT INTO login_challenges (id, server_name, r_s, expires, source, used_at) "
                "VALUES (:id, :srv, :rs, :exp, :src, NULL)",
                {
                    "id": ch.challenge_id,
                    "srv": self.server_name,
                    "rs": ch.r_s,
                    "exp": ch.expires,
                    "src": source[:64],
                },
            )
        return ch

    # -- step e/f ------------------------------------------------------------------------
    def respond(
        self, response_json: Any, *, source: str = "-", password: str | None = None
    ) -> dict[str, Any]:
        """Verify the terminal's response; returns the session token and its claims.

        One transaction on success: lockout check, challenge consumption, verification,
        counter reset and the audit record. On failure the transaction rolls back and a
        second one consumes the challenge anyway, counts the failure and audits it."""
        now = int(self.clock())
        serial: str | None = None
        challenge_id: str | None = None
        try:
            response = Response.from_json(response_json)
            serial, challenge_id = f"{response.cert_m.serial:x}", response.challenge_id
            keys = {"k1": f"cert:{serial}", "k2": f"src:{source}"}
            crls = self._crls()
            with RawTx(self.kmc.db) as tx:
                failures = tx.q(
                    "SELECT key, locked_until FROM login_failures WHERE key IN (:k1, :k2)", keys
                ).fetchall()
                if any(int(locked) > now for _, locked in failures):
                    raise LoginError("locked_out", "too many failed logins; try again later")
                row = tx.q(
                    "UPDATE login_challenges SET used_at = :at WHERE id = :cid AND "
                    "server_name = :srv AND used_at IS NULL RETURNING r_s, expires",
                    {"at": tx.ts(self._now()), "cid": challenge_id, "srv": self.server_name},
                ).fetchone()
                if row is None:
                    known = tx.q(
                        "SELECT 1 FROM login_challenges WHERE id = :cid AND server_name = :srv",
                        {"cid": challenge_id, "srv": self.server_name},
                    ).fetchone()
                    if known is None:
                        raise LoginError("unknown_challenge", "unknown or expired login challenge")
                    raise LoginError("replayed", "this login challenge was already used")
                issued = Challenge(
                    self.server_name,
                    challenge_id,
                    bytes(row[0]),
                    int(row[1]),
                    b"",
                    self.certificate,
                )
                cert = self.protocol.verify(response, issued, now=self._now(), crls=crls)
                owner = self._known_certificate(tx, cert)
                amr = ["cert", "pin"]
                if self.policy.require_password or password is not None:
                    self._check_password(tx, owner, password)
                    amr.append("pwd")
                claims = {
                    "iss": self.server_name,
                    "aud": list(self.policy.audiences),
                    "sub": cert.subject_str,
                    "serial": serial,
                    "owner": owner,
                    "iat": now,
                    "exp": now + self.policy.session_ttl,
                    "jti": secrets.token_hex(16),
                    "amr": amr,
                }
                if failures:
                    tx.q("DELETE FROM login_failures WHERE key IN (:k1, :k2)", keys)
                append_audit(
                    tx,
                    actor=f"user:{owner or cert.subject_str}",
                    action="login.success",
                    target=f"cert:{serial}",
                    details={"source": source, "jti": claims["jti"], "amr": amr},
                )
        except LoginError as exc:
            self._fail(serial, source, exc.reason, challenge_id)
            raise
        return {"session_token": tokens.issue(claims, self._key.sign), "claims": claims}

    @staticmethod
    def _known_certificate(tx: RawTx, cert: Certificate) -> str | None:
        row = tx.q(
            "SELECT der, status, usage, owner FROM certificates WHERE serial = :s",
            {"s": f"{cert.serial:x}"},
        ).fetchone()
        if row is None or bytes(row[0]) != cert.der:
            raise LoginError(
                "user_certificate_unknown_issuer",
                "the user certificate was not issued by this platform",
            )
        if row[1] != "active":
            raise LoginError("user_certificate_revoked", "the user certificate is revoked")
        if row[2] != "sign":
            raise LoginError(
                "user_certificate_key_usage",
                "the user certificate is not a signing certificate",
            )
        return None if row[3] is None else str(row[3])

    @staticmethod
    def _check_password(tx: RawTx, owner: str | None, password: str | None) -> None:
        if password is None:
            raise LoginError("password_required", "a password is required by policy")
        row = tx.q(
            "SELECT salt, verifier, iterations FROM login_passwords WHERE owner = :o",
            {"o": owner or ""},
        ).fetchone()
        if row is None:
            raise LoginError("password_not_set", "no password is set for this user")
        got = pbkdf2_hmac_sm3(password.encode(), bytes(row[0]), int(row[2]))
        if not hmac.compare_digest(got, bytes(row[1])):
            raise LoginError("bad_password", "the password is not correct")

    def set_password(self, owner: str, password: str, *, actor: str) -> None:
        if len(password) < 8:
            raise PolicyError("passwords need at least 8 characters")
        salt = secrets.token_bytes(16)
        with self.kmc.db.tx() as s:
            row = s.get(LoginPassword, owner)
            verifier = pbkdf2_hmac_sm3(password.encode(), salt, 100_000)
            if row is None:
                s.add(LoginPassword(owner=owner, salt=salt, verifier=verifier, iterations=100_000))
            else:
                row.salt, row.verifier, row.iterations = salt, verifier, 100_000
            audit.append(
                s, actor=actor, action="login.set_password", target=f"owner:{owner}", details={}
            )

    # -- lockout and audit ----------------------------------------------------------------
    def _fail(
        self, serial: str | None, source: str, reason: str, challenge_id: str | None = None
    ) -> None:
        now = int(self.clock())
        p = self.policy
        with self.kmc.db.tx() as s:
            if challenge_id is not None:  # a failed attempt still uses up its challenge
                s.execute(
                    update(LoginChallenge)
                    .where(LoginChallenge.id == challenge_id, LoginChallenge.used_at.is_(None))
                    .values(used_at=self._now())
                )
            for key in ([f"cert:{serial}"] if serial else []) + [f"src:{source}"]:
                row = s.get(LoginFailures, key, with_for_update=True)
                if row is None or now - row.window_start > p.failure_window:
                    if row is not None:
                        s.delete(row)
                        s.flush()
                    row = LoginFailures(key=key, failures=0, window_start=now, locked_until=0)
                    s.add(row)
                row.failures += 1
                if row.failures >= p.max_failures:
                    row.locked_until = now + p.lockout_seconds
            audit.append(
                s,
                actor=f"source:{source}",
                action="login.failure",
                target=f"cert:{serial or '-'}",
                details={"reason": reason},
            )

    def _audit_attempt(self, serial: str, source: str, ok: bool, reason: str) -> None:
        with self.kmc.db.tx() as s:
            audit.append(
                s,
                actor=f"source:{source}",
                action="login.success" if ok else "login.failure",
                target=f"cert:{serial}",
                details={"reason": reason},
            )

    # -- sessions ----------------------------------------------------------------------
    def verify_session(self, token: str, *, audience: str | None = "mstcrypt") -> dict[str, Any]:
        claims = tokens.verify(token, self.public_key, audience=audience, now=int(self.clock()))
        with self.kmc.db.tx() as s:
            if s.get(RevokedSession, claims["jti"]) is not None:
                raise tokens.TokenError("session token was revoked (logged out)")
        return claims

    def logout(self, token: str) -> None:
        claims = self.verify_session(token, audience=None)
        with self.kmc.db.tx() as s:
            s.add(RevokedSession(jti=claims["jti"], expires=claims["exp"], revoked_at=self._now()))
            s.execute(delete(RevokedSession).where(RevokedSession.expires < int(self.clock())))
            audit.append(
                s,
                actor=f"user:{claims.get('owner') or claims['sub']}",
                action="login.logout",
                target=f"cert:{claims['serial']}",
                details={"jti": claims["jti"]},
            )

    def purge(self) -> int:
        """Drop challenges that expired more than an hour ago."""
        with self.kmc.db.tx() as s:
            r = s.execute(
                delete(LoginChallenge).where(LoginChallenge.expires < int(self.clock()) - 3600)
            )
            return int(r.rowcount or 0)
