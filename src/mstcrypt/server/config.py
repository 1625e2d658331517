"""Platform configuration from the environment and the data directory.

* ``MSTCRYPT_DATA_DIR`` (default ``./mstcrypt-data``): SQLite database, generated master
  key (when none is configured) and operator credentials.
* ``MSTCRYPT_DATABASE_URL``: use this database (e.g. ``postgresql+psycopg://...``)
  instead of the embedded SQLite file.
* ``MSTCRYPT_MASTER_KEY`` (64 hex) or ``MSTCRYPT_MASTER_KEY_FILE``: the SS-CC master key.
  Without either, a random key is created once in ``<data>/master.key`` (mode 0600).
* ``MSTCRYPT_PUBLIC_URL``: base URL written into certificates' CRL distribution points.
* ``MSTCRYPT_ENROLL_RATE`` (default 60 per minute per source address),
  ``MSTCRYPT_CHECKPOINT_SECONDS`` (default 60).
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from mstcrypt.crypto.sm3 import pbkdf2_hmac_sm3
from mstcrypt.errors import KeyStoreError, PolicyError
from mstcrypt.kmc.db import Database
from mstcrypt.module import keystore
from mstcrypt.module.server import KeyWrapper, load_master_key

OPERATOR_ITERATIONS = 50_000
_AUTH_CACHE: dict[str, tuple[str, str, str]] = {}


@dataclass
class Settings:
    data_dir: Path
    database_url: str | None = None
    public_url: str = "http://127.0.0.1:8600"
    enroll_rate: int = 60
    checkpoint_seconds: float = 60.0
    master_key_file: Path | None = None
    extra_operators: dict[str, str] = field(default_factory=dict)
    #: Accept the static operator credentials of `operator add --static`. Off by default:
    #: operators log in with their certificates and use the session token.
    static_operators: bool = False
    login_server_name: str = "mstcrypt-login"
    session_ttl: int = 3600

    @classmethod
    def from_env(cls, data_dir: str | Path | None = None, **overrides: object) -> Settings:
        env = os.environ
        s = cls(
            data_dir=Path(data_dir or env.get("MSTCRYPT_DATA_DIR", "mstcrypt-data")),
            database_url=env.get("MSTCRYPT_DATABASE_URL") or None,
            public_url=env.get("MSTCRYPT_PUBLIC_URL", "http://127.0.0.1:8600"),
            enroll_rate=int(env.get("MSTCRYPT_ENROLL_RATE", "60")),
            checkpoint_seconds=float(env.get("MSTCRYPT_CHECKPOINT_SECONDS", "60")),
            static_operators=env.get("MSTCRYPT_STATIC_OPERATORS", "0") == "1",
            login_server_name=env.get("MSTCRYPT_LOGIN_SERVER_NAME", "mstcrypt-login"),
            session_ttl=int(env.get("MSTCRYPT_SESSION_TTL", "3600")),
        )
        for k, v in overrides.items():
            if v is not None:
                setattr(s, k, v)
        return s

    # -- storage ---------------------------------------------------------------------
    def database(self) -> Database:
        if self.database_url:
            return Database(self.database_url)
        return Database.for_data_dir(self.data_dir)

    # -- SS-CC master key ----------------------------------------------------------------
    def master_key(self) -> bytes:
        if os.environ.get("MSTCRYPT_MASTER_KEY") or os.environ.get("MSTCRYPT_MASTER_KEY_FILE"):
            return load_master_key()
        path = self.master_key_file or self.data_dir / "master.key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            keystore.atomic_write(path, secrets.token_bytes(32))
        return load_master_key(key_file=path)

    def wrapper(self) -> KeyWrapper:
        return KeyWrapper(self.master_key())

    # -- operators ---------------------------------------------------------------------------
    @property
    def operators_file(self) -> Path:
        return self.data_dir / "operators.json"

    def _operators(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.operators_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            raise KeyStoreError("operators.json is unreadable") from None
        return data if isinstance(data, dict) else {}

    def add_certificate_operator(self, name: str) -> None:
        """Register ``name`` (a KMC owner) as an operator who logs in with a certificate."""
        if (
            not name
            or not name.replace("-", "").replace("_", "").replace(".", "").isalnum()
            or len(name) > 64
        ):
            raise PolicyError("operator name: 1-64 letters, digits, '.', - or _")
        ops = self._operators()
        ops[name] = {"certificate": "1"}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        keystore.atomic_write(self.operators_file, json.dumps(ops, indent=2).encode())

    def is_certificate_operator(self, owner: str | None) -> bool:
        return bool(owner) and self._operators().get(owner or "", {}).get("certificate") == "1"

    def add_operator(self, name: str) -> str:
        """Create (or replace) an operator credential; returns the token, shown once."""
        if not name or not name.replace("-", "").replace("_", "").isalnum() or len(name) > 64:
            raise PolicyError("operator name: 1-64 letters, digits, - or _")
        token = "op_" + secrets.token_urlsafe(24)
        salt = secrets.token_bytes(16)
        ops = self._operators()
        ops[name] = {
            "salt": salt.hex(),
            "verifier": pbkdf2_hmac_sm3(token.encode(), salt, OPERATOR_ITERATIONS).hex(),
        }
        self.data_dir.mkdir(parents=True, exist_ok=True)
        keystore.atomic_write(self.operators_file, json.dumps(ops, indent=2).encode())
        return token

    def authenticate_operator(self, token: str) -> str | None:
        """The operator's name for a valid credential, else None (constant-time compare).
        Successful checks are cached per process by SM3(token)."""
        from mstcrypt.crypto.sm3 import sm3

        digest = sm3(b"op|" + token.encode()).hex()
        cached = _AUTH_CACHE.get(digest)
        if cached is not None:
            path, name, verifier = cached
            entry = self._operators().get(name, {}) if path == str(self.operators_file) else {}
            if entry.get("verifier") == verifier:  # still the credential that was checked
                return name
            _AUTH_CACHE.pop(digest, None)
        found = self._authenticate(token)
        if found is not None:
            verifier = self._operators().get(found, {}).get("verifier", "")
            _AUTH_CACHE[digest] = (str(self.operators_file), found, verifier)
        return found

    def _authenticate(self, token: str) -> str | None:
        for name, expected in self.extra_operators.items():
            if hmac.compare_digest(expected.encode(), token.encode()):
                return name
        prefix_ok = token.startswith("op_")
        for name, entry in self._operators().items():
            if "verifier" not in entry:
                continue
            try:
                salt = bytes.fromhex(entry["salt"])
                verifier = bytes.fromhex(entry["verifier"])
            except (KeyError, ValueError, TypeError):
                continue
            if prefix_ok and hmac.compare_digest(
                pbkdf2_hmac_sm3(token.encode(), salt, OPERATOR_ITERATIONS), verifier
            ):
                return name
        return None
