"""Platform configuration from the environment and the data directory.

* ``MSTCRYPT_DATA_DIR`` (default ``./mstcrypt-data``): the embedded SQLite database.
* ``MSTCRYPT_DATABASE_URL``: use this database (e.g. ``postgresql+psycopg://...``)
  instead of the embedded SQLite file.
* The SS-CC (server key store): see :mod:`mstcrypt.module.sscc` (``MSTCRYPT_SSCC``,
  ``MSTCRYPT_MASTER_KEY`` / ``MSTCRYPT_MASTER_KEY_FILE``, ``MSTCRYPT_PKCS11_*``).
* ``MSTCRYPT_PUBLIC_URL``: base URL written into certificates' CRL distribution points.
* ``MSTCRYPT_OCSP_URL`` (default ``$MSTCRYPT_PUBLIC_URL/ocsp``; empty: none): the OCSP
  responder URL written into end-entity certificates (authorityInfoAccess);
  ``MSTCRYPT_OCSP_VALIDITY`` (seconds, default 14400): nextUpdate − thisUpdate of OCSP
  responses (re-signed after half of it); ``MSTCRYPT_OCSP_RATE`` (default 1200 per
  minute per source address, per instance).
* ``MSTCRYPT_TRUSTED_PROXIES``: comma-separated addresses or networks of reverse proxies
  whose ``X-Forwarded-For`` is believed (default: none — the peer address counts).
* ``MSTCRYPT_ENROLL_RATE`` (default 60 per minute per source address),
  ``MSTCRYPT_RECOVERY_APPROVALS`` (officers besides the requester, default 1).
* Housekeeping (every ``MSTCRYPT_HOUSEKEEPING_SECONDS``, default 5, or more often when a
  period below is shorter): a signed audit checkpoint once the log has grown by
  ``MSTCRYPT_CHECKPOINT_RECORDS`` records (default 10000) or
  ``MSTCRYPT_CHECKPOINT_SECONDS`` have passed since the last one (default 60); the purge
  of expired login rows every ``MSTCRYPT_PURGE_SECONDS`` (default 60).
  ``MSTCRYPT_AUDIT_VERIFY_LIMIT`` (default 100000): the most records the HTTP audit
  verification recomputes after the newest checkpoint.
* ``MSTCRYPT_STATIC_OPERATORS=1`` accepts static operator credentials (automation and
  tests); operators otherwise log in with their certificates.
* CRL publication (:class:`mstcrypt.kmc.publisher.CrlPolicy`):
  ``MSTCRYPT_CRL_PUBLISHER`` (``1``: ``serve`` runs the background publisher; ``0``: an
  instance that only serves), ``MSTCRYPT_CRL_INTERVAL`` (s between runs, default 5),
  ``MSTCRYPT_CRL_MAX_DELAY`` (s a revocation may wait for its CRL, default 60; key and
  CA compromise are published at once), ``MSTCRYPT_CRL_LIFETIME`` (s, default 86400),
  ``MSTCRYPT_CRL_KEEP`` (newest CRLs kept, default 10), ``MSTCRYPT_CRL_KEEP_SECONDS``
  (and all younger than this, default 0), ``MSTCRYPT_CRL_DELTA`` (``1``: publish
  delta CRLs), ``MSTCRYPT_CRL_DELTA_REBASE`` (s before the deltas move to a newer base,
  default 86400), ``MSTCRYPT_CRL_LEASE_SECONDS`` (publisher lease, default 30).
* Console sessions (:class:`mstcrypt.apps.console.sessions.ConsolePolicy`):
  ``MSTCRYPT_CONSOLE_CODE_TTL`` (s a console code may wait, 10-300, default 60),
  ``MSTCRYPT_CONSOLE_IDLE`` (idle expiry, 60-28800, default 900),
  ``MSTCRYPT_CONSOLE_MAX_AGE`` (s after the login, idle-86400, default 28800); a value
  out of bounds is refused when the settings are read.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from mstcrypt.errors import PolicyError
from mstcrypt.kmc.db import Database

if TYPE_CHECKING:
    from mstcrypt.apps.console.sessions import ConsolePolicy
    from mstcrypt.kmc.publisher import CrlPolicy
    from mstcrypt.kmc.service import Kmc
    from mstcrypt.module.sscc import ServerKeyStore
    from mstcrypt.server.caworkers import CaWorkers, InProcessCa


def _proxies(value: str) -> list[str]:
    out = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise PolicyError(f"MSTCRYPT_TRUSTED_PROXIES: {item!r} is not an address") from None
    return out


def _seconds(env: os._Environ[str], key: str, default: int) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise PolicyError(f"{key}: {raw!r} is not a whole number of seconds") from None


MAX_CA_WORKERS = 64


def default_ca_workers() -> int:
    """What ``serve`` uses unless told: one CA worker when the machine has a second CPU
    for it, none (everything in the API process) on one CPU."""
    return 1 if (os.cpu_count() or 1) >= 2 else 0


def _workers(raw: str) -> int:
    """MSTCRYPT_CA_WORKERS: a whole number from 0 to :data:`MAX_CA_WORKERS`, or "auto"
    (:func:`default_ca_workers`)."""
    if raw in ("", "auto"):
        return default_ca_workers()
    try:
        n = int(raw)
    except ValueError:
        raise PolicyError(f"MSTCRYPT_CA_WORKERS: {raw!r} is not a whole number") from None
    check_ca_workers(n)
    return n


def check_ca_workers(n: int) -> None:
    if not 0 <= n <= MAX_CA_WORKERS:
        raise PolicyError(f"CA workers: {n} is not between 0 and {MAX_CA_WORKERS}")


def _number(env: os._Environ[str], key: str, default: float) -> float:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise PolicyError(f"{key}: {raw!r} is not a number") from None
    if value < 0 or value != value or value in (float("inf"),):
        raise PolicyError(f"{key}: {raw!r} must be a finite non-negative number")
    return value


@dataclass
class Settings:
    data_dir: Path
    database_url: str | None = None
    public_url: str = "https://127.0.0.1:8600"
    enroll_rate: int = 60
    checkpoint_seconds: float = 60.0
    checkpoint_records: int = 10_000
    housekeeping_seconds: float = 5.0
    purge_seconds: float = 60.0
    audit_verify_limit: int = 100_000
    #: accept static operator credentials (automation, tests); off by default
    static_operators: bool = False
    login_server_name: str = "mstcrypt-login"
    session_ttl: int = 3600
    trusted_proxies: list[str] = field(default_factory=list)
    recovery_approvals: int = 1
    #: the OCSP URL written into certificates (None: ``public_url`` + ``/ocsp``; "": none)
    ocsp_url: str | None = None
    ocsp_validity: int = 14400
    ocsp_rate: int = 1200
    #: CRL publication (see the module documentation)
    crl_publisher: bool = True
    crl_interval: float = 5.0
    crl_max_delay: float = 60.0
    crl_lifetime: float = 86400.0
    crl_keep: int = 10
    crl_keep_seconds: float = 0.0
    crl_delta: bool = True
    crl_delta_rebase: float = 86400.0
    crl_lease_seconds: float = 30.0
    #: console sessions (see the module documentation): code lifetime, idle expiry,
    #: maximum age, in seconds
    console_code_ttl: int = 60
    console_idle: int = 900
    console_max_age: int = 8 * 3600
    #: worker processes for enrollments and revocations (0: in the API process); see
    #: :mod:`mstcrypt.server.caworkers`. 0 when the app is embedded (``create_app``);
    #: ``from_env`` (``mstcrypt serve``) defaults to :func:`default_ca_workers`
    ca_workers: int = 0
    #: a key store to use instead of the one configured in the environment (tests)
    keystore_override: ServerKeyStore | None = None

    def __post_init__(self) -> None:
        self.console_policy()  # refuse bad console session settings at once
        check_ca_workers(self.ca_workers)

    @classmethod
    def from_env(cls, data_dir: str | Path | None = None, **overrides: object) -> Settings:
        env = os.environ
        s = cls(
            data_dir=Path(data_dir or env.get("MSTCRYPT_DATA_DIR", "mstcrypt-data")),
            database_url=env.get("MSTCRYPT_DATABASE_URL") or None,
            public_url=env.get("MSTCRYPT_PUBLIC_URL", "https://127.0.0.1:8600"),
            enroll_rate=int(env.get("MSTCRYPT_ENROLL_RATE", "60")),
            checkpoint_seconds=float(env.get("MSTCRYPT_CHECKPOINT_SECONDS", "60")),
            checkpoint_records=int(env.get("MSTCRYPT_CHECKPOINT_RECORDS", "10000")),
            housekeeping_seconds=float(env.get("MSTCRYPT_HOUSEKEEPING_SECONDS", "5")),
            purge_seconds=float(env.get("MSTCRYPT_PURGE_SECONDS", "60")),
            audit_verify_limit=int(env.get("MSTCRYPT_AUDIT_VERIFY_LIMIT", "100000")),
            static_operators=env.get("MSTCRYPT_STATIC_OPERATORS", "0") == "1",
            login_server_name=env.get("MSTCRYPT_LOGIN_SERVER_NAME", "mstcrypt-login"),
            session_ttl=int(env.get("MSTCRYPT_SESSION_TTL", "3600")),
            trusted_proxies=_proxies(env.get("MSTCRYPT_TRUSTED_PROXIES", "")),
            recovery_approvals=int(env.get("MSTCRYPT_RECOVERY_APPROVALS", "1")),
            ocsp_url=env.get("MSTCRYPT_OCSP_URL"),
            ocsp_validity=int(env.get("MSTCRYPT_OCSP_VALIDITY", "14400")),
            ocsp_rate=int(env.get("MSTCRYPT_OCSP_RATE", "1200")),
            crl_publisher=env.get("MSTCRYPT_CRL_PUBLISHER", "1") != "0",
            crl_interval=_number(env, "MSTCRYPT_CRL_INTERVAL", 5.0),
            crl_max_delay=_number(env, "MSTCRYPT_CRL_MAX_DELAY", 60.0),
            crl_lifetime=_number(env, "MSTCRYPT_CRL_LIFETIME", 86400.0),
            crl_keep=int(_number(env, "MSTCRYPT_CRL_KEEP", 10)),
            crl_keep_seconds=_number(env, "MSTCRYPT_CRL_KEEP_SECONDS", 0.0),
            crl_delta=env.get("MSTCRYPT_CRL_DELTA", "1") != "0",
            crl_delta_rebase=_number(env, "MSTCRYPT_CRL_DELTA_REBASE", 86400.0),
            crl_lease_seconds=_number(env, "MSTCRYPT_CRL_LEASE_SECONDS", 30.0),
            console_code_ttl=_seconds(env, "MSTCRYPT_CONSOLE_CODE_TTL", 60),
            console_idle=_seconds(env, "MSTCRYPT_CONSOLE_IDLE", 900),
            console_max_age=_seconds(env, "MSTCRYPT_CONSOLE_MAX_AGE", 8 * 3600),
            ca_workers=_workers(env.get("MSTCRYPT_CA_WORKERS", "auto")),
        )
        for k, v in overrides.items():
            if v is not None:
                setattr(s, k, v)
        s.console_policy()  # refuse bad console session settings now
        check_ca_workers(s.ca_workers)
        return s

    def console_policy(self) -> ConsolePolicy:
        """The console session policy; :class:`ConsolePolicyError` when out of bounds."""
        from mstcrypt.apps.console.sessions import ConsolePolicy

        return ConsolePolicy(
            code_ttl=self.console_code_ttl,
            idle=self.console_idle,
            max_age=self.console_max_age,
        )

    def ocsp_responder_url(self) -> str | None:
        """The OCSP URL for certificates: MSTCRYPT_OCSP_URL, else the public URL's /ocsp."""
        if self.ocsp_url is not None:
            return self.ocsp_url or None
        return f"{self.public_url.rstrip('/')}/ocsp"

    def crl_policy(self) -> CrlPolicy:
        from mstcrypt.kmc.publisher import CrlPolicy

        return CrlPolicy(
            interval=self.crl_interval,
            max_delay=self.crl_max_delay,
            lifetime=timedelta(seconds=self.crl_lifetime),
            keep=self.crl_keep,
            keep_for=timedelta(seconds=self.crl_keep_seconds),
            delta=self.crl_delta,
            delta_rebase=timedelta(seconds=self.crl_delta_rebase),
            lease_ttl=self.crl_lease_seconds,
        )

    # -- storage ---------------------------------------------------------------------
    def database(self) -> Database:
        if self.database_url:
            return Database(self.database_url)
        return Database.for_data_dir(self.data_dir)

    # -- SS-CC -------------------------------------------------------------------------
    def keystore(self) -> ServerKeyStore:
        if self.keystore_override is not None:
            return self.keystore_override
        from mstcrypt.module.sscc import SsccConfig, open_keystore

        return open_keystore(SsccConfig.from_env(self.data_dir))

    def ca_operations(self, kmc: Kmc) -> InProcessCa | CaWorkers:
        """Where enrollments and revocations run: in ``kmc`` (``ca_workers`` = 0) or in
        worker processes that open the platform from these settings (not started: the
        server starts them). A key store given as an object cannot be reopened there."""
        from mstcrypt.server.caworkers import CaWorkers, InProcessCa

        check_ca_workers(self.ca_workers)
        if self.ca_workers == 0:
            return InProcessCa(kmc)
        if self.keystore_override is not None:
            raise PolicyError(
                "CA workers open the SS-CC from the environment; "
                "a key store given as an object cannot be used with them"
            )
        return CaWorkers(self.kmc, self.ca_workers, after_job=kmc.crl_publisher.wake)

    def kmc(self) -> Kmc:
        from mstcrypt.kmc.service import Kmc

        return Kmc(
            self.database(),
            self.keystore(),
            crl_base_url=self.public_url,
            ocsp_url=self.ocsp_responder_url(),
            recovery_approvals=self.recovery_approvals,
            crl_policy=self.crl_policy(),
        )
