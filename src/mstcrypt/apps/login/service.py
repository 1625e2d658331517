"""The login service of an information system (server side of §7.3).

State lives in the database, so a replayed Token-M is refused even when it reaches
another instance: each challenge is consumed (``UPDATE … WHERE used_at IS NULL``) in the
transaction that accepts the response. The verification itself (signature, certificate
path, password) is done before that transaction, so no write lock waits for it.

Lockout cannot be used against someone else: every failed attempt counts against its
source address (a rate limit: ``source_max_failures`` within ``failure_window`` lock
the address), but a certificate's own counter only counts a wrong password after a valid
Token-M by that certificate's key with a valid chain — presenting someone's certificate
with a junk signature costs that person nothing. An active lock is never extended by
attempts made during it, and attempts from a locked address are neither counted nor
audited (the lock itself is audited once), so a locked attacker cannot grow the log.

Session tokens die with their certificate: :meth:`LoginService.verify_session` reads the
certificate's status with the logout list in one indexed query, so a revocation made
through any instance is effective at the next call everywhere.

Expired challenges, finished failure counters and logout records past their token's
expiry are purged in bounded batches every ``purge_every`` challenges, and drained by
the server's housekeeping (:func:`purge_expired`, one short transaction per batch).
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import ipaddress
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select, tuple_
from sqlalchemy.exc import SQLAlchemyError

from mstcrypt.apps.login import tokens
from mstcrypt.apps.login.fastpath import RawTx, append_audit, read_row, write_row
from mstcrypt.apps.login.models import LoginChallenge, LoginFailures, LoginPassword, RevokedSession
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.crypto.sm3 import pbkdf2_hmac_sm3
from mstcrypt.errors import PolicyError, RateLimitError
from mstcrypt.kmc import audit
from mstcrypt.kmc.db import Database
from mstcrypt.kmc.models import IssuedCertificate, RateLimit
from mstcrypt.kmc.service import Kmc
from mstcrypt.pki import Certificate, CrlIndex, Profile
from mstcrypt.protocols.login import (
    Challenge,
    LoginError,
    LoginServer,
    Response,
    check_login_server_certificate,
)

__all__ = ["PURGED_TABLES", "LoginPolicy", "LoginService", "purge_expired", "source_bucket"]

_LC = LoginChallenge.__table__
_LF = LoginFailures.__table__
_LP = LoginPassword.__table__
_IC = IssuedCertificate.__table__
_RL = RateLimit.__table__

log = logging.getLogger(__name__)

#: Failures that count against the certificate itself: only a wrong knowledge factor,
#: which is reachable only after a valid Token-M and chain (see ``respond``).
_CERT_FACTOR_FAILURES = frozenset({"bad_password"})


@dataclass
class LoginPolicy:
    """``max_failures``: wrong passwords (after a valid Token-M) that lock a
    certificate; ``source_max_failures``: failed attempts of any kind that lock a source
    address; both within ``failure_window`` seconds, locked for ``lockout_seconds``.
    ``challenges_per_minute``: challenges one source address may request per minute,
    counted in the database across every instance. ``purge_every``: challenges issued by
    one instance between two automatic purges of at most ``purge_batch`` rows per
    table. ``crl_check_seconds``: how often the published CRL numbers are checked."""

    challenge_ttl: int = 60
    session_ttl: int = 3600
    max_failures: int = 5
    failure_window: int = 900
    lockout_seconds: int = 900
    source_max_failures: int = 20
    require_password: bool = False
    audiences: tuple[str, ...] = ("mstcrypt",)
    challenges_per_minute: int = 600
    purge_every: int = 256
    purge_batch: int = 1000
    #: seconds between two checks of the published CRL numbers (a changed number
    #: loads and scans the new CRL once)
    crl_check_seconds: float = 1.0


# The login's statements share their columns (see :class:`_Read`): both lock ends,
# the certificate's row and its owner's password verifier.
_SHARED_COLUMNS = (
    "(SELECT locked_until FROM login_failures WHERE key = :k1), "
    "(SELECT locked_until FROM login_failures WHERE key = :k2), "
    "c.der, c.status, c.usage, c.owner, p.salt, p.verifier, p.iterations"
)
_SHARED_JOINS = (
    "FROM (SELECT 1 AS one) AS one "
    "LEFT JOIN certificates c ON c.serial = :s "
    "LEFT JOIN login_passwords p ON p.owner = COALESCE(c.owner, '')"
)
#: What a response needs from the store, in one statement (one snapshot, one round
#: trip), read outside any transaction: the columns above and the challenge.
_READ_SQL = (
    f"SELECT {_SHARED_COLUMNS}, ch.r_s, ch.expires, ch.used_at "
    f"{_SHARED_JOINS} "
    "LEFT JOIN login_challenges ch ON ch.id = :cid AND ch.server_name = :srv"
)
#: The write transaction's re-read (SQLite): the columns above, then
#: :data:`_CONSUME_SQL` consumes the challenge.
_RECHECK_SQL = f"SELECT {_SHARED_COLUMNS} {_SHARED_JOINS}"
_CONSUME_SQL = (
    "UPDATE login_challenges SET used_at = :at WHERE id = :cid AND server_name = :srv "
    "AND used_at IS NULL RETURNING r_s"
)
#: The write transaction's re-read on PostgreSQL, after :data:`_CONSUME_SQL`: the
#: columns above, with both failure counters row-locked in the order of their keys.
#: Every login transaction takes its row locks in one order: the challenge, the
#: counters by key (:meth:`LoginService._fail` too), the audit log's head last
#: (``append_audit``). One statement that locked several of them would lock them in
#: an order of the planner's choosing, and deadlock with a concurrent failure.
# built from the module's constant fragments only
_LOCKED_COLUMNS = _SHARED_COLUMNS.replace("FROM login_failures", "FROM lk")
_RECHECK_PG_SQL = (
    "WITH lk AS (SELECT key, locked_until FROM login_failures "  # noqa: S608
    "WHERE key IN (:k1, :k2) ORDER BY key FOR NO KEY UPDATE) "
    f"SELECT {_LOCKED_COLUMNS} {_SHARED_JOINS}"
)
#: The challenge's three steps in one statement (PostgreSQL): the source's lock end, the
#: request counted against the source's budget only when not locked and under budget
#: (an over-budget count is left as it is), the challenge stored only when counted.
_CHALLENGE_PG_SQL = (
    # the statement's own transaction commits without waiting for the WAL flush, as
    # the SQLite challenge does (``RawTx(durable=False)``): a crash can lose a
    # challenge (the terminal asks again) but never reorders or corrupts anything, and
    # the setting ends with the transaction (set_config(..., true))
    "WITH lazy AS (SELECT set_config('synchronous_commit', 'off', true) AS sync), "
    "lk AS (SELECT COALESCE("
    "(SELECT locked_until FROM login_failures WHERE key = :k), 0) AS until), "
    'rl AS (INSERT INTO rate_limits (key, "window", count) '
    "SELECT :rk, :w, 1 FROM lk WHERE lk.until <= :now AND :lim > 0 "
    'ON CONFLICT (key, "window") DO UPDATE SET count = rate_limits.count + 1 '
    "WHERE rate_limits.count < :lim RETURNING count), "
    "ch AS (INSERT INTO login_challenges (id, server_name, r_s, expires, source, used_at) "
    "SELECT :id, :srv, :rs, :exp, :src, NULL FROM rl RETURNING 1) "
    "SELECT (SELECT until FROM lk), (SELECT count FROM rl), (SELECT count(*) FROM ch), "
    "sync FROM lazy"
)


class _Read:
    """A row of the statements above: lock ends (0–1), the certificate's row (2–5), the
    password verifier (6–8), the challenge as read (9–11) and the challenge as consumed
    (12)."""

    def __init__(self, row: Any) -> None:
        self.row = tuple(row) + (None,) * (13 - len(row))
        self.r_s, self.expires, self.used_at, self.consumed = self.row[9:13]

    def locks(self, keys: dict[str, str]) -> dict[str, int]:
        """Lock end per counter key, for the counters that exist."""
        k1, k2 = self.row[0:2]
        found = {keys["k1"]: k1, keys["k2"]: k2}
        return {k: int(v) for k, v in found.items() if v is not None}

    @property
    def password(self) -> tuple[bytes, bytes, int] | None:
        salt, verifier, iterations = self.row[6:9]
        if salt is None:
            return None
        return bytes(salt), bytes(verifier), int(iterations)

    def known_certificate(self, cert: Certificate) -> str | None:
        """The owner of ``cert`` if it is this platform's active signing certificate."""
        der, status, usage, owner = self.row[2:6]
        if der is None or bytes(der) != cert.der:
            raise LoginError(
                "user_certificate_unknown_issuer",
                "the user certificate was not issued by this platform",
            )
        if status != "active":
            raise LoginError("user_certificate_revoked", "the user certificate is revoked")
        if usage != "sign":
            raise LoginError(
                "user_certificate_key_usage",
                "the user certificate is not a signing certificate",
            )
        return None if owner is None else str(owner)


@functools.lru_cache(maxsize=4096)
def source_bucket(source: str) -> str:
    """The rate-limit bucket of a client address: an IPv4 address as it is, an IPv6
    address by its /64 (one subscriber holds a whole /64 and could otherwise rotate
    through it), an IPv4-mapped IPv6 address as its IPv4 address; anything else (a
    name, "-") as given, truncated. Memoised (a login asks three times)."""
    try:
        ip = ipaddress.ip_address(source.split("%", 1)[0])
    except ValueError:
        return source[:120]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


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
        key, cert = self._identity(kmc, server_name)
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
        #: CA name -> the newest CRL as a status index (one scan and one signature
        #: check per CRL number); refreshed when the published number changes
        self._crl_cache: dict[str, CrlIndex] = {}
        self._crl_checked = float("-inf")
        #: held by the one refresh under way (released by the thread that ran it)
        self._crl_refresh = threading.Lock()
        self._issued = 0

    @staticmethod
    def _identity(kmc: Kmc, server_name: str) -> tuple[SM2PrivateKey, Certificate]:
        """The login server's key and certificate. A certificate that terminals would now
        refuse (issued before the login-server policy existed, or to another server
        name) is superseded: revoked, and a new one issued."""
        key, cert = kmc.service_identity("login", Profile.LOGIN_SERVER_SIGN, server_name)
        try:
            check_login_server_certificate(cert, server_name=server_name)
        except LoginError as exc:
            log.warning("login server certificate superseded: %s", exc)
            with contextlib.suppress(PolicyError):  # another instance revoked it first
                kmc.revoke_certificate(
                    f"{cert.serial:x}", reason="superseded", actor="system:login"
                )
            key, cert = kmc.service_identity("login", Profile.LOGIN_SERVER_SIGN, server_name)
            check_login_server_certificate(cert, server_name=server_name)
        return key, cert

    @property
    def public_key(self) -> Any:
        return self.certificate.public_key

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    _CAS = ("issuing", "root")

    def _crls(self) -> list[CrlIndex]:
        """The CRLs of both CAs for the path check: the login only needs the status of
        one serial, so each CRL is held as a :class:`CrlIndex` (a scan of its serials;
        validate_path checks its signature once per CRL number).

        The first call loads them (logins arriving meanwhile wait for that load rather
        than each loading them again). After that a login takes the cached indices as they
        are, and every ``crl_check_seconds`` one login starts :meth:`refresh_crls` in a
        background thread: loading and scanning a changed CRL costs milliseconds to tens
        of milliseconds of CPU at 100k certificates, which no login should wait for.
        The revocation itself is checked in the database on every login, so an index a
        second old lets no revoked certificate in."""
        cache = self._crl_cache
        if not all(ca in cache for ca in self._CAS):
            with self._crl_refresh:  # the first logins of a cold service load them once
                if not all(ca in cache for ca in self._CAS):
                    self._load_crls()
        elif time.monotonic() - self._crl_checked >= self.policy.crl_check_seconds:
            self._crl_checked = time.monotonic()
            self._refresh_crls_in_background()
        return [cache[ca] for ca in self._CAS]

    def refresh_crls(self) -> None:
        """Reload the CRL of each CA whose published number changed (one at a time)."""
        with self._crl_refresh:
            self._load_crls()

    def _load_crls(self) -> None:
        for ca in self._CAS:
            # the newest published: a login never waits for a publication
            pub = self.kmc.ca.current_crl(ca, publish=False)
            cached = self._crl_cache.get(ca)
            if cached is None or cached.number != pub.number:
                self._crl_cache[ca] = CrlIndex.from_der(pub.der)
        self._crl_checked = time.monotonic()

    def _refresh_crls_in_background(self) -> None:
        if not self._crl_refresh.acquire(blocking=False):
            return  # a refresh is under way

        def job() -> None:
            try:
                self._load_crls()
            except Exception as exc:  # the indices in hand stay; the next check retries
                log.warning("login CRL refresh failed: %s", type(exc).__name__)
            finally:
                self._crl_refresh.release()

        try:
            threading.Thread(target=job, name="login-crl-refresh", daemon=True).start()
        except BaseException:
            self._crl_refresh.release()
            raise

    # -- step b ------------------------------------------------------------------------
    def challenge(self, *, source: str = "-") -> Challenge:
        """A fresh challenge, recorded in the database (single use, expiring)."""
        now = int(self.clock())
        ch = self.protocol.challenge(self._now())
        if not self.kmc.db.is_sqlite:
            self._record_challenge_pg(ch, source, now)
        else:
            self._record_challenge(ch, source, now)
        self._issued += 1
        if self.policy.purge_every > 0 and self._issued % self.policy.purge_every == 0:
            try:
                self.purge()
            except SQLAlchemyError as exc:  # the challenge stands; the next trigger retries
                log.warning("login purge failed: %s", type(exc).__name__)
        return ch

    def _record_challenge(self, ch: Challenge, source: str, now: int) -> None:
        """Refuse a locked source or one over its budget, else count the request and
        store the challenge: one transaction (a refused request writes nothing). Not
        synced to disk at commit (a power cut can lose it: the terminal asks again),
        so it holds SQLite's write lock for less; the response's transaction is."""
        with RawTx(self.kmc.db, durable=False) as tx:
            locked = tx.q(
                "SELECT locked_until FROM login_failures WHERE key = :k",
                {"k": self._source_key(source)},
            ).fetchone()
            if locked is not None and int(locked[0]) > now:
                raise RateLimitError("too many failed logins from this address; try again later")
            # counted in the shared table, so N instances allow the limit, not N times it;
            # a refused request rolls its increment back (it writes nothing)
            count = tx.q(
                'INSERT INTO rate_limits (key, "window", count) VALUES (:k, :w, 1) '
                'ON CONFLICT (key, "window") DO UPDATE SET count = rate_limits.count + 1 '
                "RETURNING count",
                {"k": f"login:{source_bucket(source)}"[:128], "w": now // 60},
            ).fetchone()[0]
            if int(count) > self.policy.challenges_per_minute:
                raise RateLimitError("too many login requests from this address; retry later")
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

    def _record_challenge_pg(self, ch: Challenge, source: str, now: int) -> None:
        """:meth:`_record_challenge` as one statement (PostgreSQL): the request is
        counted only when the source is not locked and still has budget, and the
        challenge is stored only when it was counted. Its commit does not wait for the
        WAL flush (``synchronous_commit`` off for that transaction only)."""
        until, counted, stored, _sync = write_row(
            self.kmc.db,
            _CHALLENGE_PG_SQL,
            {
                "k": self._source_key(source),
                "now": now,
                "rk": f"login:{source_bucket(source)}"[:128],
                "w": now // 60,
                "lim": self.policy.challenges_per_minute,
                "id": ch.challenge_id,
                "srv": self.server_name,
                "rs": ch.r_s,
                "exp": ch.expires,
                "src": source[:64],
            },
        )
        if int(until) > now:
            raise RateLimitError("too many failed logins from this address; try again later")
        if counted is None:
            raise RateLimitError("too many login requests from this address; retry later")
        if int(stored) != 1:  # pragma: no cover - the insert follows the count
            raise RateLimitError("the login challenge was not stored; retry")

    @staticmethod
    def _source_key(source: str) -> str:
        return f"src:{source_bucket(source)}"

    # -- step e/f ------------------------------------------------------------------------
    def respond(
        self, response_json: Any, *, source: str = "-", password: str | None = None
    ) -> dict[str, Any]:
        """Verify the terminal's response; returns the session token and its claims.

        Everything that costs CPU happens before the write transaction, on what a
        read-only snapshot shows: the source and certificate locks, the challenge (known,
        unused), the Token-M signature and the certificate path, the certificate's row
        and the password. The write transaction then only re-checks what may have
        changed meanwhile — the locks, the certificate's status row, the password
        verifier — consumes the challenge (``UPDATE … WHERE used_at IS NULL``: of two
        concurrent responses to one challenge exactly one gets it), clears the
        certificate's password count and writes the audit record. On failure a second
        transaction consumes the challenge anyway, counts the failure (against the
        source; against the certificate only for a wrong password after a valid
        Token-M) and audits it."""
        now = int(self.clock())
        serial: str | None = None
        challenge_id: str | None = None
        source_locked = False
        try:
            response = Response.from_json(response_json)
            serial, challenge_id = f"{response.cert_m.serial:x}", response.challenge_id
            keys = {"k1": f"cert:{serial}", "k2": self._source_key(source)}
            crls = self._crls()
            # -- before the write transaction: one read, then verification -------------
            read = _Read(
                read_row(
                    self.kmc.db,
                    _READ_SQL,
                    {**keys, "cid": challenge_id, "srv": self.server_name, "s": serial},
                )
            )
            locks = read.locks(keys)
            if int(locks.get(keys["k2"], 0)) > now:
                source_locked = True
                raise LoginError(
                    "locked_out", "too many failed logins from this address; try again later"
                )
            if read.r_s is None:
                raise LoginError("unknown_challenge", "unknown or expired login challenge")
            if read.used_at is not None:
                raise LoginError("replayed", "this login challenge was already used")
            r_s = bytes(read.r_s)
            issued = Challenge(
                self.server_name, challenge_id, r_s, int(read.expires), b"", self.certificate
            )
            cert = self.protocol.verify(response, issued, now=self._now(), crls=crls)
            # From here on the holder of the certificate's key signed this attempt.
            owner = read.known_certificate(cert)
            pw_row = read.password
            if int(locks.get(keys["k1"], 0)) > now:
                raise LoginError(
                    "locked_out", "too many failed logins for this certificate; try again later"
                )
            amr = ["cert", "pin"]
            use_password = self.policy.require_password or password is not None
            if use_password:
                self._check_password(pw_row, password)
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
            # -- the write transaction: re-check, consume, record ------------------------
            with RawTx(self.kmc.db) as tx:
                # re-read what may have changed (both lock ends, row-locked on PostgreSQL;
                # the certificate's row; the password verifier) and consume the challenge
                # (UPDATE … WHERE used_at IS NULL); the audit record below locks the
                # log's head last; a refusal below rolls it all back
                params = {**keys, "s": serial, "cid": challenge_id, "srv": self.server_name}
                params["at"] = tx.ts(self._now())
                if tx.sqlite:  # (one writer at a time: no lock order to keep)
                    row = tx.q(_RECHECK_SQL, params).fetchone()
                    done = tx.q(_CONSUME_SQL, params).fetchone()
                else:  # the lock order of _RECHECK_PG_SQL's comment, in one round trip
                    done, row = tx.rows((_CONSUME_SQL, params), (_RECHECK_PG_SQL, params))
                again = _Read((*row, None, None, None, done[0] if done else None))
                locks = again.locks(keys)
                if int(locks.get(keys["k2"], 0)) > now:
                    source_locked = True
                    raise LoginError(
                        "locked_out", "too many failed logins from this address; try again later"
                    )
                if again.consumed is None:  # another response to this challenge got there first
                    raise LoginError("replayed", "this login challenge was already used")
                if not hmac.compare_digest(bytes(again.consumed), r_s):  # pragma: no cover
                    raise LoginError("unknown_challenge", "unknown or expired login challenge")
                if again.known_certificate(cert) != owner:  # pragma: no cover
                    raise LoginError(
                        "user_certificate_unknown_issuer",
                        "the user certificate was not issued by this platform",
                    )
                if int(locks.get(keys["k1"], 0)) > now:
                    raise LoginError(
                        "locked_out",
                        "too many failed logins for this certificate; try again later",
                    )
                if use_password and again.password != pw_row:
                    # changed since it was checked: check the new one (rare, so in here)
                    self._check_password(again.password, password)
                if keys["k1"] in locks:  # a success clears the certificate's password count
                    tx.q("DELETE FROM login_failures WHERE key = :k1", {"k1": keys["k1"]})
                append_audit(
                    tx,
                    actor=f"user:{owner or cert.subject_str}",
                    action="login.success",
                    target=f"cert:{serial}",
                    details={"source": source, "jti": claims["jti"], "amr": amr},
                )
        except LoginError as exc:
            if not source_locked:  # a locked source costs no write and grows no log
                self._fail(
                    serial if exc.reason in _CERT_FACTOR_FAILURES else None,
                    source,
                    exc.reason,
                    challenge_id,
                    claimed=serial,
                )
            raise
        return {"session_token": tokens.issue(claims, self._key.sign), "claims": claims}

    @staticmethod
    def _check_password(row: tuple[bytes, bytes, int] | None, password: str | None) -> None:
        if password is None:
            raise LoginError("password_required", "a password is required by policy")
        if row is None:
            raise LoginError("password_not_set", "no password is set for this user")
        salt, verifier, iterations = row
        got = pbkdf2_hmac_sm3(password.encode(), salt, iterations)
        if not hmac.compare_digest(got, verifier):
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
        self,
        cert_serial: str | None,
        source: str,
        reason: str,
        challenge_id: str | None = None,
        *,
        claimed: str | None = None,
    ) -> None:
        """Record a failed attempt: consume its challenge, count it against the source
        and, when ``cert_serial`` is given (a wrong password after a valid Token-M),
        against that certificate; audit it. ``claimed`` is the serial of the certificate
        the request presented (audited, never counted)."""
        now = int(self.clock())
        p = self.policy
        with RawTx(self.kmc.db) as tx:
            if challenge_id is not None:  # a failed attempt still uses up its challenge
                tx.q(
                    "UPDATE login_challenges SET used_at = :at WHERE id = :cid AND used_at IS NULL",
                    {"at": tx.ts(self._now()), "cid": challenge_id},
                )
            counters = [(self._source_key(source), p.source_max_failures)]
            if cert_serial is not None:
                counters.append((f"cert:{cert_serial}", p.max_failures))
            # row locks in the order every login transaction takes them (the challenge,
            # the counters by key, the audit log's head last): see _RECHECK_PG_SQL
            for key, limit in sorted(counters):
                until = self._count(tx, key, limit, now)
                if until is not None:
                    append_audit(
                        tx,
                        actor=f"source:{source}",
                        action="login.lockout",
                        target=key.replace("src:", "source:", 1),
                        details={"until": until, "failures": limit},
                    )
            append_audit(
                tx,
                actor=f"source:{source}",
                action="login.failure",
                target=f"cert:{claimed or '-'}",
                details={"reason": reason, "counted_for_certificate": cert_serial is not None},
            )

    def _count(self, tx: RawTx, key: str, limit: int, now: int) -> int | None:
        """Add one failure to ``key``'s counter; returns the lock end when this failure
        sets a lock. An active lock is left as it is; a finished lock or window starts a
        new window."""
        p = self.policy
        tx.q(
            "INSERT INTO login_failures (key, failures, window_start, locked_until) "
            "VALUES (:k, 0, :now, 0) ON CONFLICT (key) DO NOTHING",
            {"k": key, "now": now},
        )
        failures, window_start, locked_until = tx.q(
            "SELECT failures, window_start, locked_until FROM login_failures WHERE key = :k{lock}",
            {"k": key},
        ).fetchone()
        if int(locked_until) > now:
            return None
        if int(locked_until) or now - int(window_start) > p.failure_window:
            failures, window_start = 0, now
        failures = int(failures) + 1
        until = now + p.lockout_seconds if failures >= limit else 0
        tx.q(
            "UPDATE login_failures SET failures = :f, window_start = :w, locked_until = :u "
            "WHERE key = :k",
            {"f": failures, "w": int(window_start), "u": until, "k": key},
        )
        return until or None

    # -- sessions ----------------------------------------------------------------------
    def verify_session(self, token: str, *, audience: str | None = "mstcrypt") -> dict[str, Any]:
        """The claims of a valid session token: signature, expiry and audience, then one
        indexed read of the shared database — not logged out, and its certificate not
        revoked (so a revocation through any instance ends the session at once)."""
        claims = tokens.verify(token, self.public_key, audience=audience, now=int(self.clock()))
        serial = claims.get("serial")
        if not isinstance(serial, str) or not serial:
            raise tokens.TokenError("session token names no certificate")
        row = read_row(
            self.kmc.db,
            "SELECT (SELECT 1 FROM revoked_sessions WHERE jti = :j), "
            "(SELECT status FROM certificates WHERE serial = :s)",
            {"j": claims["jti"], "s": serial},
        )
        if row is None or row[0] is not None:
            raise tokens.TokenError("session token was revoked (logged out)")
        if row[1] != "active":
            raise tokens.TokenError("the session's certificate is revoked")
        return claims

    def logout(self, token: str) -> None:
        claims = self.verify_session(token, audience=None)
        with self.kmc.db.tx() as s:
            s.add(RevokedSession(jti=claims["jti"], expires=claims["exp"], revoked_at=self._now()))
            audit.append(
                s,
                actor=f"user:{claims.get('owner') or claims['sub']}",
                action="login.logout",
                target=f"cert:{claims['serial']}",
                details={"jti": claims["jti"]},
            )

    def purge(self, *, batch: int | None = None, max_batches: int = 1) -> dict[str, int]:
        """Delete, in batches of at most ``batch`` rows (default ``policy.purge_batch``),
        each batch its own short transaction, up to ``max_batches`` batches per table:
        challenges expired for longer than their lifetime, failure counters whose window
        and lock are over, and logout records of tokens that can no longer verify.
        Returns the rows deleted per table. One batch runs every ``policy.purge_every``
        challenges; the server's housekeeping drains the rest from a timer."""
        p = self.policy
        return purge_expired(
            self.kmc.db,
            now=int(self.clock()),
            challenge_ttl=p.challenge_ttl,
            failure_window=p.failure_window,
            batch=p.purge_batch if batch is None else batch,
            max_batches=max_batches,
        )


PURGED_TABLES = ("login_challenges", "login_failures", "revoked_sessions", "rate_limits")


def purge_expired(
    db: Database,
    *,
    now: int,
    challenge_ttl: int,
    failure_window: int,
    batch: int,
    max_batches: int = 1,
) -> dict[str, int]:
    """The purge of :meth:`LoginService.purge`, usable without a login service (the
    server's housekeeping): every batch deletes at most ``batch`` rows found through an
    index on their expiry (``ix_login_challenges_expires``, ``ix_login_failures_expiry``,
    ``ix_revoked_sessions_expires``) in its own transaction, so writers wait at most one
    short batch; a table stops when a batch comes back short or after ``max_batches``."""
    out = dict.fromkeys(PURGED_TABLES, 0)
    if batch <= 0 or max_batches <= 0:
        return out
    statements = {
        "login_challenges": delete(LoginChallenge).where(
            LoginChallenge.id.in_(
                select(LoginChallenge.id)
                .where(LoginChallenge.expires < now - challenge_ttl)
                .limit(batch)
            )
        ),
        "login_failures": delete(LoginFailures).where(
            LoginFailures.key.in_(
                select(LoginFailures.key)
                .where(
                    LoginFailures.window_start < now - failure_window,
                    LoginFailures.locked_until <= now,
                )
                .limit(batch)
            )
        ),
        # tokens.verify accepts 30 s of leeway after exp: keep the record a bit longer
        "revoked_sessions": delete(RevokedSession).where(
            RevokedSession.jti.in_(
                select(RevokedSession.jti).where(RevokedSession.expires < now - 60).limit(batch)
            )
        ),
        # the challenge counters of finished windows (the enrollment limiter clears
        # its own when a window starts)
        "rate_limits": delete(RateLimit).where(
            tuple_(RateLimit.key, RateLimit.window).in_(
                select(RateLimit.key, RateLimit.window)
                .where(RateLimit.key.like("login:%"), RateLimit.window < now // 60 - 1)
                .limit(batch)
            )
        ),
    }
    for table, stmt in statements.items():
        for _ in range(max_batches):
            with db.tx() as s:
                n = int(s.execute(stmt).rowcount or 0)
            out[table] += n
            if n < batch:
                break
    return out
