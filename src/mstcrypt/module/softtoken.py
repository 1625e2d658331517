"""MST-CC soft token: a PIN-protected file keystore for the terminal.

Key hierarchy (T/ZSA 37-2020 §6.4.4, §7.x "密钥管理"): the user master key
MK = PBKDF2-HMAC-SM3(PIN, per-token salt, ≥100,000 iterations) is derived when the user
logs in and never stored; a key-encryption key derived from MK wraps the token's data
key (DEK), which encrypts and authenticates the containers (d_M for signing and
encryption). A second slot wraps the DEK under the administrator unlock code, so the
administrator can reset a locked token's PIN; the code is stored only as that slot
(a verifier), never in clear.

Wrong PINs are counted persistently in ``<token>.pin`` (written *before* each check,
so killing the process cannot hide a failed attempt). After ``max_retries`` wrong PINs
the token locks until :meth:`SoftToken.unlock`. The counter is necessarily readable
without the PIN; an attacker able to rewrite files can reset it (as they can copy the
token), so lockout protects against guessing through the API while the PBKDF2 cost
bounds offline guessing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mstcrypt.crypto.random import random_bytes
from mstcrypt.errors import KeyStoreError, PinIncorrectError, PinLockedError, PolicyError
from mstcrypt.module import keystore as ks
from mstcrypt.module.base import CryptoModule

__all__ = ["SoftToken", "TokenInfo"]

MIN_ITERATIONS = 100_000
DEFAULT_ITERATIONS = 200_000
DEFAULT_MAX_RETRIES = 6
ADMIN_MAX_RETRIES = 10
MIN_PIN = 6
MIN_ADMIN = 8


@dataclass(frozen=True)
class TokenInfo:
    path: str
    serial: str
    label: str
    created: str
    iterations: int
    max_retries: int
    pin_failures: int
    admin_failures: int
    locked: bool


def _raw(value: str | bytes) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    raise PolicyError("a PIN or code must be str or bytes")


def _secret(value: str | bytes, what: str, minimum: int) -> bytes:
    """Check a new PIN/code: at least ``minimum`` characters (code points for str)."""
    raw = _raw(value)
    length = len(value) if isinstance(value, str) else len(raw)
    if length < minimum:
        raise PolicyError(f"{what} must be at least {minimum} characters")
    if len(raw) > 256:
        raise PolicyError(f"{what} is too long")
    return raw


def _validate_header(h: dict[str, Any]) -> None:
    """Shape of a soft-token header; anything else is a corrupted/tampered token."""
    try:
        ok = (
            h["format"] == "mstcrypt-softtoken"
            and h["version"] == 1
            and isinstance(h["serial"], str)
            and len(h["serial"]) == 16
            and isinstance(h["label"], str)
            and isinstance(h["created"], str)
            and type(h["max_retries"]) is int
            and 1 <= h["max_retries"] <= 100
            and type(h["epoch"]) is int
            and h["epoch"] >= 0
            and h["kdf"]["alg"] == "pbkdf2-hmac-sm3"
            and type(h["kdf"]["iterations"]) is int
            and all(
                isinstance(h["slots"][n]["salt"], str) and isinstance(h["slots"][n]["wrapped"], str)
                for n in ("user", "admin")
            )
        )
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise KeyStoreError("not an mstcrypt soft token, or its header is damaged")


class SoftToken(CryptoModule):
    """A file keystore. Create with :meth:`init`, open with :meth:`open` + :meth:`login`."""

    def __init__(self, path: Path, image: ks.KeyStoreImage) -> None:
        super().__init__()
        self._path = Path(path)
        self._image = image
        self._dek: bytes | None = None
        self.crash_hook: Any = None  # test hook for kill -9 simulations

    # -- creation / opening ------------------------------------------------------------
    @classmethod
    def init(
        cls,
        path: str | os.PathLike[str],
        pin: str | bytes,
        admin_code: str | bytes,
        *,
        label: str = "mstcrypt",
        max_retries: int = DEFAULT_MAX_RETRIES,
        iterations: int = DEFAULT_ITERATIONS,
        overwrite: bool = False,
    ) -> SoftToken:
        """Create a new, empty token and return it logged in."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise KeyStoreError(f"a token already exists at {path}")
        if iterations < MIN_ITERATIONS:
            raise PolicyError(f"iterations must be at least {MIN_ITERATIONS}")
        if not 1 <= max_retries <= 100:
            raise PolicyError("max_retries must be between 1 and 100")
        pin_b = _secret(pin, "PIN", MIN_PIN)
        admin_b = _secret(admin_code, "administrator code", MIN_ADMIN)
        if pin_b == admin_b:
            raise PolicyError("the administrator code must differ from the PIN")
        serial = random_bytes(8).hex()
        dek = random_bytes(16)
        header = {
            "format": "mstcrypt-softtoken",
            "version": 1,
            "serial": serial,
            "label": str(label)[:64],
            "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "max_retries": max_retries,
            "epoch": 0,
            "kdf": {"alg": "pbkdf2-hmac-sm3", "iterations": iterations},
        }
        cls._set_slot(header, "user", pin_b, dek)
        cls._set_slot(header, "admin", admin_b, dek)
        data = ks.build(header, {"containers": {}}, dek)
        path.parent.mkdir(parents=True, exist_ok=True)
        ks.atomic_write(path, data)
        cls._write_counter(path, serial, 0, 0, 0)
        tok = cls(path, ks.parse(data))
        tok._dek = dek
        tok._load_payload({"containers": {}})
        return tok

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> SoftToken:
        """Open (not yet logged in). Checks the file's integrity checksum."""
        path = Path(path)
        image = ks.parse(ks.read_file(path))
        _validate_header(image.header)
        return cls(path, image)

    @staticmethod
    def _set_slot(header: dict[str, Any], name: str, secret: bytes, dek: bytes) -> None:
        salt = random_bytes(16)
        iterations = header["kdf"]["iterations"]
        kek = ks.derive_kek(secret, salt, iterations, name.encode())
        aad = f"{header['serial']}:{name}".encode()
        header.setdefault("slots", {})[name] = {
            "salt": ks.b64e(salt),
            "wrapped": ks.wrap(kek, dek, aad),
        }

    def _try_slot(self, name: str, secret: bytes) -> bytes | None:
        h = self._image.header
        try:
            slot = h["slots"][name]
            iterations = int(h["kdf"]["iterations"])
        except (KeyError, TypeError, ValueError):
            raise KeyStoreError("token header is malformed") from None
        if iterations < MIN_ITERATIONS:
            raise KeyStoreError("token header has too few KDF iterations")
        salt = ks.b64d(slot.get("salt"), "salt")
        kek = ks.derive_kek(secret, salt, iterations, name.encode())
        return ks.unwrap(kek, slot.get("wrapped"), f"{h['serial']}:{name}".encode())

    # -- retry counter ----------------------------------------------------------------------
    @property
    def _counter_path(self) -> Path:
        return self._path.with_name(self._path.name + ".pin")

    @staticmethod
    def _write_counter(path: Path, serial: str, epoch: int, user: int, admin: int) -> None:
        data = json.dumps(
            {"serial": serial, "epoch": epoch, "user_failures": user, "admin_failures": admin}
        )
        ks.atomic_write(path.with_name(path.name + ".pin"), data.encode())

    def _read_counter(self) -> tuple[int, int]:
        """(user failures, admin failures). Counts recorded before the token's current
        epoch (an administrator unlock that finished writing the token but was
        interrupted before resetting the counter) no longer apply to user PINs."""
        h = self._image.header
        try:
            raw = json.loads(self._counter_path.read_bytes())
            if not isinstance(raw, dict):
                raise TypeError
            if raw["serial"] != h["serial"]:
                raise KeyStoreError("PIN counter file belongs to another token")
            epoch, user, admin = raw["epoch"], raw["user_failures"], raw["admin_failures"]
            if not all(type(v) is int and v >= 0 for v in (epoch, user, admin)):
                raise TypeError
        except FileNotFoundError:
            raise KeyStoreError(
                "PIN counter file is missing; refusing to open (fail closed)"
            ) from None
        except OSError as exc:
            raise KeyStoreError(f"cannot read the PIN counter file: {exc.strerror}") from None
        except (ValueError, KeyError, TypeError):
            raise KeyStoreError("PIN counter file is corrupted") from None
        if epoch > h["epoch"]:
            raise KeyStoreError("PIN counter file is newer than the token (rolled back token?)")
        if epoch < h["epoch"]:
            user = 0
        return user, admin

    def _count(self, user: int, admin: int) -> None:
        h = self._image.header
        self._write_counter(self._path, h["serial"], h["epoch"], user, admin)

    @property
    def max_retries(self) -> int:
        return int(self._image.header["max_retries"])

    def info(self) -> TokenInfo:
        h = self._image.header
        user, admin = self._read_counter()
        return TokenInfo(
            str(self._path),
            h["serial"],
            h["label"],
            h["created"],
            int(h["kdf"]["iterations"]),
            self.max_retries,
            user,
            admin,
            user >= self.max_retries,
        )

    # -- login / logout ----------------------------------------------------------------------
    def login(self, pin: str | bytes) -> None:
        """Derive MK from the PIN and open the token. Each wrong PIN is counted."""
        pin_b = _raw(pin)
        user, admin = self._read_counter()
        if user >= self.max_retries:
            raise PinLockedError(
                "token is locked after too many wrong PINs; an administrator must unlock it"
            )
        # Count the attempt first: a crash or kill during the check cannot hide it.
        self._count(user + 1, admin)
        dek = self._try_slot("user", pin_b) if pin_b else None
        if dek is None:
            left = self.max_retries - (user + 1)
            if left <= 0:
                raise PinLockedError("wrong PIN; the token is now locked")
            raise PinIncorrectError(f"wrong PIN ({left} attempts left)", left)
        payload = ks.open_body(self._image, dek)
        self._count(0, admin)
        self._dek = dek
        self._load_payload(payload)

    def logout(self) -> None:
        self._dek = None
        self._clear()

    @property
    def logged_in(self) -> bool:
        return self._dek is not None

    def _require_open(self) -> None:
        if self._dek is None:
            raise KeyStoreError("token is not logged in")

    def __enter__(self) -> SoftToken:
        return self

    def __exit__(self, *exc: object) -> None:
        self.logout()

    # -- persistence -----------------------------------------------------------------------
    def _persist(self) -> None:
        assert self._dek is not None
        data = ks.build(self._image.header, self._payload(), self._dek)
        ks.atomic_write(self._path, data, crash_hook=self.crash_hook)
        self._image = ks.parse(data)

    # -- PIN management ------------------------------------------------------------------------
    def change_pin(self, old_pin: str | bytes, new_pin: str | bytes) -> None:
        """Re-wrap the token for a new PIN, atomically: after a crash at any moment the
        token opens with the old PIN or the new one."""
        new_b = _secret(new_pin, "PIN", MIN_PIN)
        self.login(old_pin)
        assert self._dek is not None
        if self._try_slot("admin", new_b) is not None:
            raise PolicyError("the PIN must differ from the administrator code")
        header = json.loads(ks.canonical_json(self._image.header))
        self._set_slot(header, "user", new_b, self._dek)
        data = ks.build(header, self._payload(), self._dek)
        ks.atomic_write(self._path, data, crash_hook=self.crash_hook)
        self._image = ks.parse(data)

    def unlock(self, admin_code: str | bytes, new_pin: str | bytes) -> None:
        """Administrator reset: with the unlock code, set a new PIN and clear the counter.

        The token is rewritten with a new *epoch* before the counter file is reset, so an
        interruption between the two writes still leaves the new PIN usable."""
        admin_b = _raw(admin_code)
        new_b = _secret(new_pin, "PIN", MIN_PIN)
        if new_b == admin_b:
            raise PolicyError("the PIN must differ from the administrator code")
        user, admin = self._read_counter()
        if admin >= ADMIN_MAX_RETRIES:
            raise PinLockedError(
                "administrator code blocked after too many failures; the token must be "
                "re-initialised"
            )
        self._count(user, admin + 1)
        dek = self._try_slot("admin", admin_b)
        if dek is None:
            left = ADMIN_MAX_RETRIES - admin - 1
            if left <= 0:
                raise PinLockedError("wrong administrator code; the code is now blocked")
            raise PinIncorrectError(f"wrong administrator code ({left} attempts left)", left)
        payload = ks.open_body(self._image, dek)
        header = json.loads(ks.canonical_json(self._image.header))
        header["epoch"] += 1
        self._set_slot(header, "user", new_b, dek)
        data = ks.build(header, payload, dek)
        ks.atomic_write(self._path, data, crash_hook=self.crash_hook)
        self._image = ks.parse(data)
        self._count(0, 0)
        self._dek = dek
        self._load_payload(payload)

    def __repr__(self) -> str:
        state = "logged in" if self._dek is not None else "locked/closed"
        return f"SoftToken({str(self._path)!r}, {state})"
