"""MST-CC soft token: a PIN-protected file keystore for the terminal.

Key hierarchy (T/ZSA 37-2020 §6.4.4, §7.6.4): the user master key
MK = PBKDF2-HMAC-SM3(PIN, per-token salt, ≥100,000 iterations) is derived when the user
logs in and never stored; a key-encryption key derived from MK wraps the token's data
key (DEK), which encrypts and authenticates the containers (d_M for signing and
encryption). MK is the only protector of the DEK: the administrator unlock code is
stored only as a *verifier* (its slot wraps a random value that protects nothing), so
the administrator can reset a locked token's PIN but cannot decrypt its keys.

An administrator unlock (only of a locked token) therefore cannot carry the keys over:
the current key material is *sealed* — kept, still encrypted under the old PIN's DEK —
and the token starts a new, empty generation under the new PIN. The user then either
proves the old PIN (:meth:`SoftToken.recover_sealed`, the keys come back and are
re-wrapped under a fresh DEK) or re-enrolls (new signing key and certificate, the
encryption key recovered from the KMC) and drops the sealed set
(:meth:`SoftToken.discard_sealed`). Until the user changes the administrator-chosen PIN
or recovers, no new private key may be stored. Every change of the PIN re-keys the DEK,
so an old copy of the file and the old PIN open nothing written afterwards.

Trust anchors (the CA root certificates, or their SM3 fingerprints until the
certificate is fetched and matched) are preset at initialisation. They live in the
header: readable without the PIN, authenticated (the header's SM3 digest is inside the
encrypted body) and changeable only with the PIN.

Wrong PINs are counted persistently in ``<token>.pin`` (written *before* each check,
so killing the process cannot hide a failed attempt). After ``max_retries`` wrong PINs
the token locks until :meth:`SoftToken.unlock`. The counter is necessarily readable
without the PIN; an attacker able to rewrite files can reset it (as they can copy the
token), so lockout protects against guessing through the API while the PBKDF2 cost
bounds offline guessing.
"""

from __future__ import annotations

import hmac
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asn1crypto import x509 as asn1_x509

from mstcrypt.crypto.random import random_bytes
from mstcrypt.crypto.sm3 import sm3
from mstcrypt.errors import KeyStoreError, PinIncorrectError, PinLockedError, PolicyError
from mstcrypt.formats._der import load_strict
from mstcrypt.module import keystore as ks
from mstcrypt.module.base import CryptoModule, KeyUsage

__all__ = [
    "SealedKeySet",
    "SoftToken",
    "TokenInfo",
    "anchor_fingerprint",
    "normalise_fingerprint",
]

FORMAT_VERSION = 2
MIN_ITERATIONS = 100_000
DEFAULT_ITERATIONS = 200_000
DEFAULT_MAX_RETRIES = 6
ADMIN_MAX_RETRIES = 10
MIN_PIN = 6
MIN_ADMIN = 8
#: Sealed key sets a token keeps (a further unlock drops the oldest).
MAX_SEALED = 4
MAX_ANCHORS = 16
MAX_ANCHOR_SIZE = 16 * 1024

_HEX64 = re.compile(r"[0-9a-f]{64}")
_USAGES = {u.value for u in KeyUsage}


@dataclass(frozen=True)
class SealedKeySet:
    """Key material sealed by an administrator unlock: still encrypted under the PIN
    that was valid before it. ``containers`` maps container names to key usages (empty
    for a token written by version 1, which kept no public manifest)."""

    generation: int
    sealed_at: str
    containers: dict[str, tuple[str, ...]]


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
    #: Container names and key usages (public, as SKF_EnumContainer shows them).
    containers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    sealed: tuple[SealedKeySet, ...] = ()
    #: Wrong old PINs given to recover_sealed (recovery locks at max_retries).
    sealed_failures: int = 0
    #: The PIN was set by an administrator; the user must change it.
    pin_change_required: bool = False
    anchor_fingerprints: tuple[str, ...] = ()
    #: SM3 fingerprints of anchors whose certificate is still to be fetched and matched.
    anchor_pins: tuple[str, ...] = ()

    @property
    def recovery_needed(self) -> bool:
        return bool(self.sealed)

    @property
    def sealed_recovery_locked(self) -> bool:
        return bool(self.sealed) and self.sealed_failures >= self.max_retries


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


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def anchor_fingerprint(cert_der: bytes) -> str:
    """SM3 of the DER certificate, lower-case hex (the form anchors are pinned by)."""
    return sm3(bytes(cert_der)).hex()


def _anchor_der(cert_der: object) -> bytes:
    """A trust anchor must be one DER X.509 certificate (parsing its content is the
    PKI layer's job)."""
    if not isinstance(cert_der, bytes | bytearray):
        raise PolicyError("a trust anchor must be DER certificate bytes")
    der = bytes(cert_der)
    if len(der) > MAX_ANCHOR_SIZE:
        raise PolicyError("trust anchor certificate is too large")
    load_strict(asn1_x509.Certificate, der, "trust anchor certificate")
    return der


def normalise_fingerprint(value: object) -> str:
    """An SM3 fingerprint as 64 lower-case hex digits (colons and spaces ignored)."""
    if not isinstance(value, str):
        raise PolicyError("an anchor fingerprint must be a hex string")
    fp = re.sub(r"[\s:]", "", value).lower()
    if not _HEX64.fullmatch(fp):
        raise PolicyError("an anchor fingerprint is the SM3 of the DER certificate: 64 hex digits")
    return fp


def _is_slot(v: Any) -> bool:
    return (
        isinstance(v, dict) and isinstance(v.get("salt"), str) and isinstance(v.get("wrapped"), str)
    )


def _is_manifest(v: Any) -> bool:
    return isinstance(v, dict) and all(
        isinstance(n, str) and isinstance(us, list) and all(u in _USAGES for u in us)
        for n, us in v.items()
    )


def _is_sealed(e: Any) -> bool:
    return (
        isinstance(e, dict)
        and set(e)
        <= {"generation", "sealed_at", "iterations", "slot", "nonce", "body", "containers", "aad"}
        and type(e.get("generation")) is int
        and e["generation"] >= 0
        and isinstance(e.get("sealed_at"), str)
        and type(e.get("iterations")) is int
        and e["iterations"] >= MIN_ITERATIONS
        and _is_slot(e.get("slot"))
        and isinstance(e.get("nonce"), str)
        and isinstance(e.get("body"), str)
        and _is_manifest(e.get("containers"))
        and isinstance(e.get("aad", ""), str)
    )


def _validate_header(h: dict[str, Any]) -> None:
    """Shape of a soft-token header; anything else is a corrupted/tampered token.
    Version 1 (no anchors, no sealed sets, admin slot wrapping the DEK) still loads and
    is upgraded at the first login."""
    try:
        ok = (
            h["format"] == "mstcrypt-softtoken"
            and h["version"] in (1, FORMAT_VERSION)
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
            and all(_is_slot(h["slots"][n]) for n in ("user", "admin"))
        )
        if ok and h["version"] == FORMAT_VERSION:
            ok = (
                type(h["generation"]) is int
                and h["generation"] >= 0
                and type(h["pin_change_required"]) is bool
                and isinstance(h["anchors"], list)
                and len(h["anchors"]) <= MAX_ANCHORS
                and all(isinstance(a, str) for a in h["anchors"])
                and isinstance(h["anchor_pins"], list)
                and all(isinstance(f, str) and _HEX64.fullmatch(f) for f in h["anchor_pins"])
                and _is_manifest(h["manifest"])
                and isinstance(h["sealed"], list)
                and len(h["sealed"]) <= MAX_SEALED
                and all(_is_sealed(e) for e in h["sealed"])
            )
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise KeyStoreError("not an mstcrypt soft token, or its header is damaged")


def _body_aad(serial: str, generation: int) -> bytes:
    return f"mstcrypt-softtoken|{serial}|body|{generation}".encode()


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
        anchors: Sequence[bytes] = (),
        anchor_fingerprints: Sequence[str] = (),
    ) -> SoftToken:
        """Create a new, empty token and return it logged in.

        ``anchors`` are the trust anchors preset in the MST-CC (DER CA root
        certificates); ``anchor_fingerprints`` pin roots by the SM3 of their DER, to be
        filled in by :meth:`pin_anchor` when the certificate is fetched."""
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
        anchor_list, pins = cls._anchor_set(anchors, anchor_fingerprints)
        serial = random_bytes(8).hex()
        dek = random_bytes(16)
        header = {
            "format": "mstcrypt-softtoken",
            "version": FORMAT_VERSION,
            "serial": serial,
            "label": str(label)[:64],
            "created": _now(),
            "max_retries": max_retries,
            "epoch": 0,
            "generation": 0,
            "kdf": {"alg": "pbkdf2-hmac-sm3", "iterations": iterations},
            "anchors": [ks.b64e(a) for a in anchor_list],
            "anchor_pins": pins,
            "manifest": {},
            "sealed": [],
            "pin_change_required": False,
        }
        cls._set_slot(header, "user", pin_b, dek)
        # The administrator slot is a verifier: it wraps a random value, never the DEK.
        cls._set_slot(header, "admin", admin_b, random_bytes(16))
        data = cls._build(header, {"containers": {}}, dek)
        path.parent.mkdir(parents=True, exist_ok=True)
        ks.atomic_write(path, data)
        cls._write_counter(path, serial, 0, 0, 0, 0)
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
    def _set_slot(header: dict[str, Any], name: str, secret: bytes, value: bytes) -> None:
        salt = random_bytes(16)
        iterations = header["kdf"]["iterations"]
        kek = ks.derive_kek(secret, salt, iterations, name.encode())
        aad = f"{header['serial']}:{name}".encode()
        header.setdefault("slots", {})[name] = {
            "salt": ks.b64e(salt),
            "wrapped": ks.wrap(kek, value, aad),
        }

    def _try_slot(self, name: str, secret: bytes) -> bytes | None:
        h = self._image.header
        try:
            slot = h["slots"][name]
            iterations = int(h["kdf"]["iterations"])
        except (KeyError, TypeError, ValueError):
            raise KeyStoreError("token header is malformed") from None
        return self._open_slot(slot, iterations, name, secret)

    def _open_slot(
        self, slot: dict[str, Any], iterations: int, name: str, secret: bytes
    ) -> bytes | None:
        if iterations < MIN_ITERATIONS:
            raise KeyStoreError("token header has too few KDF iterations")
        salt = ks.b64d(slot.get("salt"), "salt")
        kek = ks.derive_kek(secret, salt, iterations, name.encode())
        return ks.unwrap(
            kek, slot.get("wrapped"), f"{self._image.header['serial']}:{name}".encode()
        )

    # -- file (de)serialisation -------------------------------------------------------------
    @property
    def _header(self) -> dict[str, Any]:
        return self._image.header

    def _header_copy(self) -> dict[str, Any]:
        return json.loads(ks.canonical_json(self._image.header))

    @staticmethod
    def _build(header: dict[str, Any], payload: dict[str, Any], dek: bytes) -> bytes:
        """The token file: the body is bound to the token and its generation, and carries
        the SM3 of the header, so the header is authenticated under the DEK while a
        sealed body stays valid after the header around it changed."""
        digest = sm3(ks.canonical_json(header)).hex()
        body = {**payload, "header_sm3": digest}
        return ks.build(header, body, dek, _body_aad(header["serial"], header["generation"]))

    def _open_current(self, dek: bytes) -> dict[str, Any]:
        h = self._image.header
        if h["version"] == 1:
            return ks.open_body(self._image, dek)
        payload = ks.open_body(self._image, dek, _body_aad(h["serial"], h["generation"]))
        expected = sm3(self._image.header_bytes).hex()
        if not hmac.compare_digest(str(payload.get("header_sm3")), expected):
            raise KeyStoreError(
                "token header was modified (does not match its authenticated digest)"
            )
        return payload

    def _write(self, header: dict[str, Any], payload: dict[str, Any], dek: bytes) -> None:
        data = self._build(header, payload, dek)
        ks.atomic_write(self._path, data, crash_hook=self.crash_hook)
        self._image = ks.parse(data)

    def _manifest(self) -> dict[str, list[str]]:
        return {n: sorted(u.value for u in c.keys) for n, c in self._containers.items()}

    # -- retry counter ----------------------------------------------------------------------
    @property
    def _counter_path(self) -> Path:
        return self._path.with_name(self._path.name + ".pin")

    @staticmethod
    def _write_counter(
        path: Path, serial: str, epoch: int, user: int, admin: int, sealed: int
    ) -> None:
        data = json.dumps(
            {
                "serial": serial,
                "epoch": epoch,
                "user_failures": user,
                "admin_failures": admin,
                "sealed_failures": sealed,
            }
        )
        ks.atomic_write(path.with_name(path.name + ".pin"), data.encode())

    def _read_counter(self) -> tuple[int, int, int]:
        """(user failures, admin failures, wrong old PINs for sealed keys). Counts
        recorded before the token's current epoch (an administrator unlock that finished
        writing the token but was interrupted before resetting the counter) no longer
        apply to user PINs."""
        h = self._image.header
        try:
            raw = json.loads(self._counter_path.read_bytes())
            if not isinstance(raw, dict):
                raise TypeError
            if raw["serial"] != h["serial"]:
                raise KeyStoreError("PIN counter file belongs to another token")
            epoch, user, admin = raw["epoch"], raw["user_failures"], raw["admin_failures"]
            sealed = raw.get("sealed_failures", 0)
            if not all(type(v) is int and v >= 0 for v in (epoch, user, admin, sealed)):
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
        return user, admin, sealed

    def _count(self, user: int, admin: int, sealed: int) -> None:
        h = self._image.header
        self._write_counter(self._path, h["serial"], h["epoch"], user, admin, sealed)

    @property
    def max_retries(self) -> int:
        return int(self._image.header["max_retries"])

    def info(self) -> TokenInfo:
        """The token's state; needs no PIN (nothing in it is secret)."""
        h = self._image.header
        user, admin, sealed_failures = self._read_counter()
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
            containers={n: tuple(us) for n, us in h.get("manifest", {}).items()},
            sealed=tuple(
                SealedKeySet(
                    e["generation"],
                    e["sealed_at"],
                    {n: tuple(us) for n, us in e["containers"].items()},
                )
                for e in h.get("sealed", [])
            ),
            sealed_failures=sealed_failures,
            pin_change_required=bool(h.get("pin_change_required", False)),
            anchor_fingerprints=tuple(anchor_fingerprint(a) for a in self.anchors()),
            anchor_pins=tuple(self.anchor_pins()),
        )

    # -- login / logout ----------------------------------------------------------------------
    def login(self, pin: str | bytes) -> None:
        """Derive MK from the PIN and open the token. Each wrong PIN is counted."""
        pin_b = _raw(pin)
        user, admin, sealed = self._read_counter()
        if user >= self.max_retries:
            raise PinLockedError(
                "token is locked after too many wrong PINs; an administrator must unlock it"
            )
        # Count the attempt first: a crash or kill during the check cannot hide it.
        self._count(user + 1, admin, sealed)
        dek = self._try_slot("user", pin_b) if pin_b else None
        if dek is None:
            left = self.max_retries - (user + 1)
            if left <= 0:
                raise PinLockedError("wrong PIN; the token is now locked")
            raise PinIncorrectError(f"wrong PIN ({left} attempts left)", left)
        payload = self._open_current(dek)
        containers = self._parse_containers(payload)
        self._count(0, admin, sealed)
        if self._image.header["version"] == 1:
            dek = self._upgrade(payload, pin_b)
        self._dek = dek
        self._containers = containers

    def _upgrade(self, payload: dict[str, Any], pin_b: bytes) -> bytes:
        """Rewrite a version-1 token (whose administrator slot wraps the DEK) under a
        fresh DEK: the administrator slot keeps verifying the code but now wraps a key
        that opens nothing."""
        h = self._header_copy()
        h.update(
            version=FORMAT_VERSION,
            generation=1,
            anchors=[],
            anchor_pins=[],
            manifest={n: sorted(c["keys"]) for n, c in payload["containers"].items()},
            sealed=[],
            pin_change_required=False,
        )
        dek = random_bytes(16)
        self._set_slot(h, "user", pin_b, dek)
        self._write(h, {"containers": payload["containers"]}, dek)
        return dek

    def logout(self) -> None:
        self._dek = None
        self._clear()

    @property
    def logged_in(self) -> bool:
        return self._dek is not None

    def _require_open(self) -> None:
        if self._dek is None:
            raise KeyStoreError("token is not logged in")

    def _require_may_add_keys(self) -> None:
        if self._image.header.get("pin_change_required"):
            raise PolicyError(
                "the PIN was set by an administrator: change it (change_pin) or recover "
                "the sealed keys with the old PIN before storing new keys"
            )

    def __enter__(self) -> SoftToken:
        return self

    def __exit__(self, *exc: object) -> None:
        self.logout()

    # -- persistence -----------------------------------------------------------------------
    def _persist(self) -> None:
        assert self._dek is not None
        h = self._header_copy()
        h["manifest"] = self._manifest()
        self._write(h, self._payload(), self._dek)

    def _rekey(self, header: dict[str, Any], pin_b: bytes) -> None:
        """Write ``header`` with a new DEK wrapped under ``pin_b`` and the current
        containers re-encrypted under it, as one atomic write."""
        dek = random_bytes(16)
        header["generation"] += 1
        header["manifest"] = self._manifest()
        self._set_slot(header, "user", pin_b, dek)
        self._write(header, self._payload(), dek)
        self._dek = dek

    # -- PIN management ------------------------------------------------------------------------
    def change_pin(self, old_pin: str | bytes, new_pin: str | bytes) -> None:
        """Set a new PIN and re-key: a new DEK encrypts the whole body, so an old copy
        of the file opened with the old PIN shows nothing written after the change.
        Atomic: after a crash at any moment the token opens with the old PIN or the new."""
        new_b = _secret(new_pin, "PIN", MIN_PIN)
        self.login(old_pin)
        if self._try_slot("admin", new_b) is not None:
            raise PolicyError("the PIN must differ from the administrator code")
        h = self._header_copy()
        h["pin_change_required"] = False
        self._rekey(h, new_b)

    def unlock(self, admin_code: str | bytes, new_pin: str | bytes) -> None:
        """Administrator reset of a *locked* token: with the unlock code, set a new PIN
        and clear the counter.

        The administrator code opens no key. The token's key material is sealed — kept
        encrypted under the PIN that locked — and the token restarts empty under a new
        DEK: the user recovers the keys by proving the old PIN
        (:meth:`recover_sealed`), or re-enrolls and :meth:`discard_sealed`. Until then
        (or a PIN change) no new key may be stored, since the administrator knows the
        new PIN.

        The token is rewritten with a new *epoch* before the counter file is reset, so an
        interruption between the two writes still leaves the new PIN usable."""
        admin_b = _raw(admin_code)
        new_b = _secret(new_pin, "PIN", MIN_PIN)
        if new_b == admin_b:
            raise PolicyError("the PIN must differ from the administrator code")
        user, admin, sealed_failures = self._read_counter()
        if user < self.max_retries:
            raise PolicyError(
                "the token is not locked: the administrator code only unlocks a locked "
                "token (the user changes the PIN with the current one)"
            )
        if admin >= ADMIN_MAX_RETRIES:
            raise PinLockedError(
                "administrator code blocked after too many failures; the token must be "
                "re-initialised"
            )
        self._count(user, admin + 1, sealed_failures)
        if self._try_slot("admin", admin_b) is None:
            left = ADMIN_MAX_RETRIES - admin - 1
            if left <= 0:
                raise PinLockedError("wrong administrator code; the code is now blocked")
            raise PinIncorrectError(f"wrong administrator code ({left} attempts left)", left)
        old = self._image
        h = self._header_copy()
        version = h["version"]
        entry: dict[str, Any] = {
            "generation": h.get("generation", 0),
            "sealed_at": _now(),
            "iterations": int(h["kdf"]["iterations"]),
            "slot": h["slots"]["user"],
            "nonce": ks.b64e(old.body_nonce),
            "body": ks.b64e(old.body),
            "containers": h.get("manifest", {}),
        }
        if version == 1:  # its body is bound to the whole old file prefix
            entry["aad"] = ks.b64e(old.prefix)
        sealed = [*h.get("sealed", []), entry][-MAX_SEALED:]
        h.update(
            version=FORMAT_VERSION,
            epoch=h["epoch"] + 1,
            generation=h.get("generation", 0) + 1,
            anchors=h.get("anchors", []),
            anchor_pins=h.get("anchor_pins", []),
            manifest={},
            sealed=sealed,
            pin_change_required=True,
        )
        dek = random_bytes(16)
        self._set_slot(h, "user", new_b, dek)
        # A fresh verifier: a version-1 administrator slot wrapped the DEK that the
        # sealed body is encrypted under.
        self._set_slot(h, "admin", admin_b, random_bytes(16))
        self._write(h, {"containers": {}}, dek)
        self._count(0, 0, sealed_failures)
        self._dek = dek
        self._containers = {}

    # -- sealed key sets ---------------------------------------------------------------------
    def _open_sealed(self, entry: dict[str, Any], secret: bytes) -> dict[str, Any] | None:
        dek = self._open_slot(entry["slot"], entry["iterations"], "user", secret)
        if dek is None:
            return None
        nonce = ks.b64d(entry["nonce"], "sealed nonce")
        if len(nonce) != 12:
            raise KeyStoreError("sealed key set is malformed")
        if "aad" in entry:
            aad = ks.b64d(entry["aad"], "sealed aad")
        else:
            aad = _body_aad(self._image.header["serial"], entry["generation"])
        return ks.open_blob(dek, nonce, ks.b64d(entry["body"], "sealed body"), aad)

    def recover_sealed(
        self, old_pin: str | bytes, *, new_pin: str | bytes | None = None
    ) -> list[str]:
        """After an administrator unlock: prove the PIN that was valid before it and get
        the sealed keys back. The token is re-keyed under that PIN (or ``new_pin``),
        which the administrator does not know. Containers whose names are taken now by a
        container holding keys or certificates are restored as ``<name>.gen<N>``.
        Returns the restored container names.

        Wrong old PINs are counted (before the check) and never reset by an unlock; after
        ``max_retries`` of them recovery is refused for good (:meth:`discard_sealed`)."""
        self._require_open()
        entries = list(self._image.header.get("sealed", []))
        if not entries:
            raise PolicyError("the token holds no sealed keys")
        old_b = _raw(old_pin)
        # (the old PIN passed the "differs from the administrator code" check when it was
        # set; a new one is checked once the old PIN is proven, so that this call is no
        # uncounted oracle for the administrator code)
        target = _secret(new_pin, "PIN", MIN_PIN) if new_pin is not None else old_b
        user, admin, failures = self._read_counter()
        if failures >= self.max_retries:
            raise PinLockedError(
                "too many wrong old PINs: the sealed keys can no longer be recovered; "
                "re-enroll and discard them"
            )
        self._count(user, admin, failures + 1)
        opened: list[tuple[dict[str, Any], dict[str, Any]]] = []
        kept = []
        for e in entries:
            payload = self._open_sealed(e, old_b) if old_b else None
            if payload is None:
                kept.append(e)
            else:
                opened.append((e, payload))
        if not opened:
            left = self.max_retries - (failures + 1)
            if left <= 0:
                raise PinLockedError("wrong old PIN; recovery of the sealed keys is now locked")
            raise PinIncorrectError(f"wrong old PIN ({left} attempts left)", left)
        if new_pin is not None and self._try_slot("admin", target) is not None:
            raise PolicyError("the PIN must differ from the administrator code")
        parsed = [(e["generation"], self._parse_containers(p)) for e, p in opened]
        snapshot = self._payload()
        restored = []
        try:
            for gen, conts in parsed:
                for name, c in conts.items():
                    new = self._free_name(name, gen)
                    self._containers[new] = c
                    restored.append(new)
            h = self._header_copy()
            h["sealed"] = kept
            h["pin_change_required"] = False
            self._rekey(h, target)
        except BaseException:
            self._load_payload(snapshot)
            raise
        self._count(user, admin, 0)
        return sorted(restored)

    def _free_name(self, name: str, gen: int) -> str:
        current = self._containers.get(name)
        if current is None or not (current.keys or current.certs):
            return name  # free, or an empty container a recovery may fill
        base = f"{name[:50]}.gen{gen}"
        candidate, i = base, 1
        while candidate in self._containers:
            candidate, i = f"{base}-{i}", i + 1
        return candidate

    def discard_sealed(self) -> int:
        """Destroy the sealed key sets (after re-enrollment, or when the old PIN is
        lost). Returns how many were dropped."""
        self._require_open()
        assert self._dek is not None
        h = self._header_copy()
        n = len(h.get("sealed", []))
        if n:
            h["sealed"] = []
            h["manifest"] = self._manifest()
            self._write(h, self._payload(), self._dek)
        user, admin, _ = self._read_counter()
        self._count(user, admin, 0)
        return n

    # -- trust anchors ---------------------------------------------------------------------
    @staticmethod
    def _anchor_set(
        certificates: Sequence[bytes], fingerprints: Sequence[str]
    ) -> tuple[list[bytes], list[str]]:
        if isinstance(certificates, bytes | bytearray) or isinstance(fingerprints, str):
            raise PolicyError("anchors and fingerprints are given as sequences")
        ders: list[bytes] = []
        for c in certificates:
            der = _anchor_der(c)
            if der not in ders:
                ders.append(der)
        have = {anchor_fingerprint(d) for d in ders}
        pins: list[str] = []
        for f in fingerprints:
            fp = normalise_fingerprint(f)
            if fp not in have and fp not in pins:
                pins.append(fp)
        if len(ders) + len(pins) > MAX_ANCHORS:
            raise PolicyError(f"at most {MAX_ANCHORS} trust anchors")
        return ders, pins

    def anchors(self) -> list[bytes]:
        """The trust anchors (DER certificates). Needs no PIN: they are public. Read
        before login they are as trustworthy as the file system; a login checks them
        (an edited anchor list makes it fail)."""
        return [ks.b64d(a, "anchor") for a in self._image.header.get("anchors", [])]

    def anchor_pins(self) -> list[str]:
        """SM3 fingerprints pinned at initialisation whose certificate is not yet in
        the token (see :meth:`pin_anchor`)."""
        return list(self._image.header.get("anchor_pins", []))

    def set_anchors(
        self,
        certificates: Sequence[bytes] = (),
        *,
        fingerprints: Sequence[str] = (),
        replace: bool = False,
    ) -> None:
        """Set the trust anchors (needs the PIN). When the token already has anchors or
        pinned fingerprints, changing the trust set needs ``replace=True``, and the
        given set replaces the old one."""
        self._require_open()
        assert self._dek is not None
        ders, pins = self._anchor_set(certificates, fingerprints)
        if not ders and not pins:
            raise PolicyError("no trust anchor given")
        if (self.anchors() or self.anchor_pins()) and not replace:
            raise PolicyError(
                "the token already has trust anchors; changing them needs an explicit replace"
            )
        h = self._header_copy()
        h["anchors"] = [ks.b64e(d) for d in ders]
        h["anchor_pins"] = pins
        h["manifest"] = self._manifest()
        self._write(h, self._payload(), self._dek)

    def add_anchor(self, cert_der: bytes, *, replace: bool = False) -> None:
        """Store one trust anchor (needs the PIN); see :meth:`set_anchors`."""
        self.set_anchors([cert_der], replace=replace)

    def pin_anchor(self, cert_der: bytes) -> None:
        """Fill in a pinned anchor with its certificate, fetched later: accepted only if
        the SM3 of its DER is one of the pinned fingerprints (needs the PIN)."""
        self._require_open()
        assert self._dek is not None
        der = _anchor_der(cert_der)
        fp = anchor_fingerprint(der)
        if der in self.anchors():
            return
        pins = self.anchor_pins()
        if not pins:
            raise PolicyError("the token has no pinned anchor fingerprint to fill in")
        if fp not in pins:
            raise PolicyError(
                "the certificate does not match any pinned anchor fingerprint (SM3 of its DER)"
            )
        h = self._header_copy()
        h["anchors"] = [*h["anchors"], ks.b64e(der)]
        h["anchor_pins"] = [p for p in pins if p != fp]
        h["manifest"] = self._manifest()
        self._write(h, self._payload(), self._dek)

    def __repr__(self) -> str:
        state = "logged in" if self._dek is not None else "locked/closed"
        return f"SoftToken({str(self._path)!r}, {state})"
