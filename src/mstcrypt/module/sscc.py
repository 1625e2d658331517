"""SS-CC: the server-side key store behind every server private key and secret.

Server code (CA, KMC, login, audit, escrow) never holds a key at rest: it stores an opaque
*blob* (for example in a database column) and hands it back to a
:class:`ServerKeyStore` with the *context* the blob was made for (for example
``b"enc:42"`` or ``b"ca:root"``). The context is authenticated into the blob, so a blob
copied to another row or purpose does not open. Every failure of the store (wrong master
key or token, moved or edited blob, token unavailable) raises
:class:`~mstcrypt.errors.KeyStoreError`; no message or repr carries key material.

Backends
--------
``soft`` (:class:`SoftKeyStore`)
    Blobs are ``nonce(12) ‖ SM4-GCM(KEK, nonce, payload, AAD = label "|" context)`` with
    ``KEK = SM3-KDF(master_key ‖ b"mstcrypt-kmc-wrap", 16)``, byte-compatible with the
    former ``KeyWrapper``: existing databases keep working.
``pkcs11`` (:class:`Pkcs11KeyStore`)
    A non-extractable, sensitive AES-256 key generated inside the token (the *KEK*,
    label ``mstcrypt-sscc-kek`` by default) seals every blob with ``CKM_AES_GCM`` run by
    the token: ``blob = 0x01 ‖ nonce(12) ‖ ciphertext ‖ tag(16)``, same AAD. A copy of the
    database without the token opens nothing. SoftHSM2 and most generic HSMs implement
    no SM2/SM3/SM4 mechanism, so SM2 private keys (scalars drawn from the OS CSPRNG) and
    symmetric secrets are unwrapped into process memory only for the operation (sign,
    decrypt, envelope, secret wrapping). A token that implements SM2 (vendor-defined
    ``CKM_*`` values, GM/T 0016-style) can keep private keys on the token: subclass
    :class:`Pkcs11KeyStore` and override the *SM2 seam* (:meth:`ServerKeyStore._new_sm2`,
    ``_import_sm2``, ``_load_sm2``, ``_envelope``) to return blobs
    that reference token objects (blob kind ``0x02`` is reserved for that) and operators
    whose ``sign_digest``/``decrypt`` call ``C_Sign``/``C_Decrypt``.

Both backends keep a bounded in-process cache of unwrapped SM2 keys, keyed by
``SM3(blob) ‖ context`` (``cache_size=0`` disables it), for the hot paths (a login signs
per request).

Configuration (:meth:`SsccConfig.from_env`, :func:`open_keystore`)
------------------------------------------------------------------
* ``MSTCRYPT_SSCC``: ``soft`` (default) or ``pkcs11``.
* soft: ``MSTCRYPT_MASTER_KEY`` (64 hex characters) or ``MSTCRYPT_MASTER_KEY_FILE``
  (32 raw bytes or 64 hex characters). Without either, the key lives in
  ``$MSTCRYPT_SSCC_DIR/master.key`` or, by default, in ``<data_dir>.sscc/master.key``: a
  sibling of the data directory, never inside it, so a copy or backup of the data does
  not carry its key (directory mode 0700, file 0600, created on first start). An
  existing ``<data_dir>/master.key`` (the former layout) is still used, with a warning
  recommending to move it.
* pkcs11: ``MSTCRYPT_PKCS11_MODULE`` (path of the PKCS#11 library, for example
  ``/usr/lib/softhsm/libsofthsm2.so``), ``MSTCRYPT_PKCS11_TOKEN`` (token label),
  ``MSTCRYPT_PKCS11_PIN`` or ``MSTCRYPT_PKCS11_PIN_FILE`` (user PIN), optional
  ``MSTCRYPT_PKCS11_KEY_LABEL`` (KEK label, default ``mstcrypt-sscc-kek``).
* ``MSTCRYPT_SSCC_CACHE``: number of cached SM2 keys (default 256, 0 disables).

The KEK is created on first use if the token has none with that label; every later
process (and every other server instance on the same token) finds it by label. The
processes of one machine create it, load the library and log in under a shared lock file
in the temporary directory (see :class:`Pkcs11KeyStore`). Open the store after forking
worker processes, not before: a PKCS#11 session does not survive ``fork``.

Trust boundary: the store protects keys at rest and keeps the KEK out of the process;
its callers (the KMC services) are trusted to ask only for legitimate operations.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from mstcrypt.crypto import sm4
from mstcrypt.crypto.random import random_bytes
from mstcrypt.crypto.sm2 import DEFAULT_ID, SM2PrivateKey, SM2PublicKey
from mstcrypt.crypto.sm3 import kdf, sm3
from mstcrypt.errors import (
    DecryptionError,
    InvalidKeyError,
    KeyStoreError,
    PolicyError,
    UnsupportedError,
)
from mstcrypt.formats.envelope import build_enveloped_key

__all__ = [
    "BACKENDS",
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_KEK_LABEL",
    "MASTER_KEY_SIZE",
    "Pkcs11KeyStore",
    "SM2Operator",
    "ServerKeyStore",
    "SoftKeyStore",
    "SsccConfig",
    "find_softhsm2_module",
    "load_master_key",
    "open_keystore",
]

log = logging.getLogger("mstcrypt.sscc")

MASTER_KEY_SIZE = 32
BACKENDS = ("soft", "pkcs11")
DEFAULT_CACHE_SIZE = 256
DEFAULT_KEK_LABEL = "mstcrypt-sscc-kek"
#: AAD label of SM2 keys and symmetric secrets (the former KeyWrapper's label).
WRAP_LABEL = b"mstcrypt-kmc-wrap"
#: AAD label of caller values (:meth:`ServerKeyStore.wrap_value`): a value blob never
#: opens as a key or secret and the other way round.
VALUE_LABEL = b"mstcrypt-sscc-value"
SECRET_SIZES = range(16, 65)
_NONCE = 12
_TAG = 16
_SCALAR = 32


def load_master_key(
    *, key_file: str | os.PathLike[str] | None = None, env: str = "MSTCRYPT_MASTER_KEY"
) -> bytes:
    """Read the server master key from a file (raw 32 bytes or 64 hex characters) or from
    the environment variable ``env`` (64 hex characters)."""
    if key_file is None:
        key_file = os.environ.get(env + "_FILE")
    if key_file is not None:
        try:
            raw = Path(key_file).read_bytes()
        except OSError as exc:
            raise KeyStoreError(f"cannot read master key file: {exc.strerror}") from None
        text = raw.strip()
        if len(raw) == MASTER_KEY_SIZE:
            if all(c in b"0123456789abcdefABCDEF" for c in raw):
                raise KeyStoreError(
                    "master key file holds 32 hex characters (a 16-byte key); a 32-byte key "
                    "is needed (32 raw bytes or 64 hex characters)"
                )
            return raw
    else:
        value = os.environ.get(env)
        if value is None:
            raise KeyStoreError(f"no server master key: set {env} or {env}_FILE")
        text = value.strip().encode()
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise KeyStoreError("master key must be 32 raw bytes or 64 hex characters") from None
    if len(key) != MASTER_KEY_SIZE:
        raise KeyStoreError("master key must be 32 bytes")
    return key


class SM2Operator(Protocol):
    """What the store needs from an SM2 private key: an in-memory
    :class:`~mstcrypt.crypto.sm2.SM2PrivateKey`, or a handle to a key kept on a token."""

    def public_key(self) -> SM2PublicKey: ...

    def sign_digest(self, digest: bytes) -> bytes: ...

    def decrypt(self, ciphertext: bytes) -> bytes: ...


def _context(context: object) -> bytes:
    if not isinstance(context, bytes) or not context:
        raise PolicyError("SS-CC context must be non-empty bytes (for example b'enc:42')")
    return context


def _blob(blob: object) -> bytes:
    if not isinstance(blob, bytes):
        raise KeyStoreError("SS-CC blob must be bytes")
    return blob


class ServerKeyStore(ABC):
    """SS-CC: server keys referenced by opaque blobs the caller stores (e.g. a DB column),
    each bound to a context label (bytes) so a blob moved to another row/purpose does not
    open.

    Subclasses implement :meth:`_seal` and :meth:`_open` (authenticated encryption of a
    payload under the backend's KEK, ``aad`` bound in). The *SM2 seam* —
    :meth:`_new_sm2`, :meth:`_import_sm2`, :meth:`_load_sm2` and :meth:`_envelope` —
    defaults to keys sealed as 32-byte scalars and used in process memory; a backend
    whose device computes SM2 overrides these four so that scalars never leave it.
    """

    backend: ClassVar[str]
    _wrap_label: bytes = WRAP_LABEL

    def __init__(self, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        if not isinstance(cache_size, int) or cache_size < 0:
            raise PolicyError("SS-CC cache_size must be a non-negative int")
        self._cache_size = cache_size
        self._cache: OrderedDict[bytes, SM2Operator] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._closed = False

    # -- backend primitives ------------------------------------------------------------
    @abstractmethod
    def _seal(self, payload: bytes, aad: bytes) -> bytes:
        """Encrypt and authenticate ``payload`` with ``aad`` under the KEK."""

    @abstractmethod
    def _open(self, blob: bytes, aad: bytes) -> bytes:
        """Inverse of :meth:`_seal`; raises KeyStoreError when the blob does not open."""

    def _close_backend(self) -> None:
        """Release backend resources (sessions); called once by :meth:`close`."""

    # -- SM2 seam (override to keep SM2 keys on a device) ------------------------------
    def _new_sm2(self, context: bytes) -> tuple[SM2PublicKey, bytes]:
        key = SM2PrivateKey.generate()
        return key.public_key(), self._import_sm2(key, context)

    def _import_sm2(self, key: SM2PrivateKey, context: bytes) -> bytes:
        return self._seal(key.private_bytes(), self._wrap_label + b"|" + context)

    def _load_sm2(self, blob: bytes, context: bytes) -> SM2Operator:
        raw = self._open(blob, self._wrap_label + b"|" + context)
        if len(raw) != _SCALAR:
            raise KeyStoreError("blob does not hold an SM2 private key (wrong context?)")
        try:
            return SM2PrivateKey.from_bytes(raw)
        except InvalidKeyError:
            raise KeyStoreError("blob does not hold a valid SM2 private key") from None

    def _envelope(self, key: SM2Operator, recipient: SM2PublicKey) -> bytes:
        if not isinstance(key, SM2PrivateKey):
            raise UnsupportedError(
                f"the {self.backend} backend cannot export this key as an SM2EnvelopedKey"
            )
        return build_enveloped_key(key, recipient)

    # -- helpers ---------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise KeyStoreError(f"the SS-CC {self.backend} key store is closed")

    def _key(self, blob: bytes, context: bytes) -> SM2Operator:
        self._check_open()
        blob, context = _blob(blob), _context(context)
        if not self._cache_size:
            return self._load_sm2(blob, context)
        slot = sm3(blob) + context
        with self._cache_lock:
            op = self._cache.get(slot)
            if op is not None:
                self._cache.move_to_end(slot)
                return op
        op = self._load_sm2(blob, context)
        with self._cache_lock:
            self._cache[slot] = op
            self._cache.move_to_end(slot)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return op

    def _secret(self, blob: bytes, context: bytes) -> bytes:
        self._check_open()
        return self._open(_blob(blob), self._wrap_label + b"|" + _context(context))

    # -- SM2 keys ---------------------------------------------------------------------------
    def generate_sm2(self, context: bytes) -> tuple[SM2PublicKey, bytes]:
        """A new SM2 key pair: its public key and the blob to store."""
        self._check_open()
        return self._new_sm2(_context(context))

    def import_sm2(self, key: SM2PrivateKey, context: bytes) -> bytes:
        """Seal an existing key (migration of keys made before the SS-CC only)."""
        self._check_open()
        if not isinstance(key, SM2PrivateKey):
            raise PolicyError("import_sm2 takes an SM2PrivateKey")
        return self._import_sm2(key, _context(context))

    def public_key(self, blob: bytes, context: bytes) -> SM2PublicKey:
        """The public key of the key in ``blob``."""
        return self._key(blob, context).public_key()

    def sign(
        self, blob: bytes, context: bytes, data: bytes, *, signer_id: bytes = DEFAULT_ID
    ) -> bytes:
        """DER SM2 signature of ``data`` as signer ``signer_id`` (e = SM3(Z ‖ data))."""
        key = self._key(blob, context)
        return key.sign_digest(key.public_key().message_digest(data, signer_id))

    def signer(self, blob: bytes, context: bytes) -> Callable[[bytes], bytes]:
        """``data -> DER signature`` with the default ID, for the PKI builders. The blob
        is checked now; each call goes through the store (and its cache)."""
        self._key(blob, context)

        def sign(data: bytes) -> bytes:
            return self.sign(blob, context, data)

        return sign

    def decrypt(self, blob: bytes, context: bytes, ciphertext: bytes) -> bytes:
        """Decrypt a GM/T 0009 DER SM2Cipher. A ciphertext that does not decrypt raises
        :class:`~mstcrypt.errors.DecryptionError` (the key itself was fine)."""
        return self._key(blob, context).decrypt(ciphertext)

    def export_enveloped(self, blob: bytes, context: bytes, recipient: SM2PublicKey) -> bytes:
        """The key as a GB/T 35276 SM2EnvelopedKey for ``recipient`` (key escrow delivery)."""
        if not isinstance(recipient, SM2PublicKey):
            raise PolicyError("export_enveloped needs the recipient's SM2PublicKey")
        return self._envelope(self._key(blob, context), recipient)

    # -- symmetric secrets ----------------------------------------------------------------
    def generate_secret(self, context: bytes, size: int = 16) -> bytes:
        """The blob of a fresh random secret of ``size`` bytes (16..64), e.g. a KDK or GK."""
        self._check_open()
        if not isinstance(size, int) or size not in SECRET_SIZES:
            raise PolicyError("secret size must be 16..64 bytes")
        return self._seal(random_bytes(size), self._wrap_label + b"|" + _context(context))

    def encrypt_secret_to(self, blob: bytes, context: bytes, recipient: SM2PublicKey) -> bytes:
        """The secret SM2-encrypted to ``recipient`` (DER SM2Cipher)."""
        if not isinstance(recipient, SM2PublicKey):
            raise PolicyError("encrypt_secret_to needs the recipient's SM2PublicKey")
        return recipient.encrypt(self._secret(blob, context))

    def wrap_secret(
        self,
        kek_blob: bytes,
        kek_context: bytes,
        blob: bytes,
        context: bytes,
        nonce: bytes,
        aad: bytes,
    ) -> bytes:
        """``SM4-GCM(secret(kek_blob), nonce, secret(blob), aad)`` as ciphertext ‖ tag: one
        secret (e.g. a group key) wrapped under another (e.g. a member's KDK)."""
        kek = self._secret(kek_blob, kek_context)
        if len(kek) != 16:
            raise KeyStoreError("the wrapping secret is not a 16-byte SM4 key")
        return sm4.gcm_encrypt(kek, nonce, self._secret(blob, context), aad)

    # -- caller values ---------------------------------------------------------------------
    def wrap_value(self, value: bytes, context: bytes) -> bytes:
        """Seal caller data (for example a backup field) under the store's KEK."""
        self._check_open()
        if not isinstance(value, bytes):
            raise PolicyError("wrap_value takes bytes")
        return self._seal(value, VALUE_LABEL + b"|" + _context(context))

    def unwrap_value(self, blob: bytes, context: bytes) -> bytes:
        self._check_open()
        return self._open(_blob(blob), VALUE_LABEL + b"|" + _context(context))

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def cached_keys(self) -> int:
        """How many unwrapped SM2 keys the cache holds now."""
        return len(self._cache)

    def clear_cache(self) -> None:
        """Forget every cached SM2 key (after a restore, a rotation...)."""
        with self._cache_lock:
            self._cache.clear()

    def close(self) -> None:
        """Forget cached keys and release the backend; later calls raise KeyStoreError."""
        if self._closed:
            return
        self._closed = True
        self.clear_cache()
        self._close_backend()

    def __enter__(self) -> ServerKeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SoftKeyStore(ServerKeyStore):
    """The soft SS-CC: blobs sealed with SM4-GCM under a KEK derived (SM3-KDF) from a
    32-byte master key. Blob layout ``nonce(12) ‖ ciphertext ‖ tag(16)``, byte-compatible
    with the former ``KeyWrapper``."""

    backend = "soft"

    def __init__(
        self,
        master_key: bytes,
        *,
        label: bytes = WRAP_LABEL,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        super().__init__(cache_size=cache_size)
        if not isinstance(master_key, bytes) or len(master_key) != MASTER_KEY_SIZE:
            raise PolicyError("server master key must be 32 bytes")
        if not isinstance(label, bytes) or not label:
            raise PolicyError("SS-CC label must be non-empty bytes")
        self._kek = kdf(master_key + label, 16)
        self._wrap_label = label

    def _seal(self, payload: bytes, aad: bytes) -> bytes:
        nonce = random_bytes(_NONCE)
        return nonce + sm4.gcm_encrypt(self._kek, nonce, payload, aad)

    def _open(self, blob: bytes, aad: bytes) -> bytes:
        if len(blob) < _NONCE + _TAG:
            raise KeyStoreError("wrapped key blob is malformed")
        try:
            return sm4.gcm_decrypt(self._kek, blob[:_NONCE], blob[_NONCE:], aad)
        except DecryptionError:
            raise KeyStoreError(
                "wrapped key does not unwrap (wrong master key, or the blob was moved or edited)"
            ) from None

    def _close_backend(self) -> None:
        self._kek = b""

    def __repr__(self) -> str:
        return f"SoftKeyStore(<master key hidden>, cached={len(self._cache)})"


# ------------------------------------------------------------------------------- PKCS#11 --

#: Errors after which the session is reopened once before giving up.
_RECONNECT_ERRORS = (
    "SessionHandleInvalid",
    "SessionClosed",
    "UserNotLoggedIn",
    "DeviceRemoved",
    "TokenNotPresent",
    "ObjectHandleInvalid",
    "KeyHandleInvalid",
)


def _pkcs11() -> Any:
    try:
        import pkcs11
    except ImportError:
        raise KeyStoreError(
            "the pkcs11 SS-CC backend needs python-pkcs11: pip install 'mstcrypt[pkcs11]'"
        ) from None
    return pkcs11


def _err(exc: BaseException) -> str:
    return type(exc).__name__


class _MachineLock:
    """A lock shared by the processes of this machine (``flock`` on a file in the
    temporary directory named by a hash of the PKCS#11 module path), re-entrant inside a
    process. It serialises what changes a token's state: loading the library
    (``C_Initialize``), logging in and out, and creating the KEK. SoftHSM2's file object
    store rewrites the token file on login/logout and fails with ``CKR_GENERAL_ERROR`` in
    a process reading it meanwhile; a hardware HSM does not need the lock and does not
    mind it. Creating the KEK under it also makes concurrent first starts on one machine
    agree on one key. If the lock cannot be had within 30 s (for example a file owned by
    another user), work goes on without it, with a warning."""

    _locks: ClassVar[dict[str, _MachineLock]] = {}
    _registry = threading.Lock()
    TIMEOUT = 30.0

    def __init__(self, module_path: str) -> None:
        name = hashlib.sha256(module_path.encode()).hexdigest()[:24]
        self.path = Path(tempfile.gettempdir()) / f"mstcrypt-sscc-{name}.lock"
        self._rlock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        self._held = False

    @classmethod
    def for_module(cls, module_path: str) -> _MachineLock:
        with cls._registry:
            lock = cls._locks.get(module_path)
            if lock is None:
                lock = cls._locks[module_path] = cls(module_path)
            return lock

    def _flock(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not a POSIX system
            return
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:
                log.warning("cannot open the PKCS#11 lock file %s; going on without it", self.path)
                return
        deadline = time.monotonic() + self.TIMEOUT
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._held = True
                return
            except OSError:
                if time.monotonic() > deadline:
                    log.warning("PKCS#11 lock file %s is held too long; going on", self.path)
                    return
                time.sleep(0.005)

    def __enter__(self) -> None:
        self._rlock.acquire()
        self._depth += 1
        if self._depth == 1:
            self._flock()

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0 and self._held:
            import fcntl

            assert self._fd is not None
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._held = False
        self._rlock.release()


class _TokenLink:
    """One logged-in session per (library, token) in this process, shared by every store
    on that token: PKCS#11 login state belongs to the application, not to a session, so
    a second ``C_Login`` fails and a ``C_Logout`` would log out every session. Calls into
    one library are serialised (python-pkcs11 initialises it without OS locking)."""

    _links: ClassVar[dict[tuple[str, str], _TokenLink]] = {}
    _lib_locks: ClassVar[dict[str, threading.RLock]] = {}
    _registry = threading.Lock()

    def __init__(self, module_path: str, token_label: str, pin: str) -> None:
        self.module_path = module_path
        self.token_label = token_label
        self._pin = pin
        self._pin_tag = hmac.new(_PIN_KEY, pin.encode(), hashlib.sha256).digest()
        self.lock = self._lib_locks.setdefault(module_path, threading.RLock())
        self.machine_lock = _MachineLock.for_module(module_path)
        self.refs = 0
        self.generation = 0
        self.session: Any = None
        self._connect()

    @classmethod
    def acquire(cls, module_path: str, token_label: str, pin: str) -> _TokenLink:
        with cls._registry:
            link = cls._links.get((module_path, token_label))
            if link is None:
                link = cls(module_path, token_label, pin)
                cls._links[(module_path, token_label)] = link
            elif not hmac.compare_digest(
                link._pin_tag, hmac.new(_PIN_KEY, pin.encode(), hashlib.sha256).digest()
            ):
                raise KeyStoreError(
                    f"PKCS#11 token {token_label!r} is already open in this process with "
                    "another PIN"
                )
            link.refs += 1
            return link

    def release(self) -> None:
        with self._registry:
            self.refs -= 1
            if self.refs > 0:
                return
            self._links.pop((self.module_path, self.token_label), None)
            with self.lock, self.machine_lock:
                session, self.session = self.session, None
                if session is not None:
                    with contextlib.suppress(Exception):
                        session.close()

    def _connect(self) -> None:
        p11 = _pkcs11()
        with self.lock, self.machine_lock:
            if not Path(self.module_path).is_file():
                raise KeyStoreError(f"PKCS#11 module not found: {self.module_path}")
            try:
                lib = p11.lib(self.module_path)
            except p11.PKCS11Error as exc:
                raise KeyStoreError(
                    f"cannot load PKCS#11 module {self.module_path} ({_err(exc)})"
                ) from None
            try:
                token = lib.get_token(token_label=self.token_label)
            except p11.NoSuchToken:
                raise KeyStoreError(
                    f"PKCS#11 token {self.token_label!r} not found (token missing or not "
                    "initialised)"
                ) from None
            except p11.PKCS11Error as exc:
                raise KeyStoreError(
                    f"PKCS#11 token {self.token_label!r} unavailable ({_err(exc)})"
                ) from None
            old, self.session = self.session, None
            if old is not None:
                # a dead session (or one whose objects vanished): drop it, and with it the
                # login, before logging in again
                with contextlib.suppress(Exception):
                    old.close()
            try:
                session = token.open(rw=True, user_pin=self._pin)
            except p11.UserAlreadyLoggedIn:
                # logged in by other code of this process: share that login
                session = token.open(rw=True)
            except (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange):
                raise KeyStoreError(f"wrong PIN for PKCS#11 token {self.token_label!r}") from None
            except p11.PinLocked:
                raise KeyStoreError(f"PKCS#11 token {self.token_label!r}: PIN locked") from None
            except p11.PKCS11Error as exc:
                raise KeyStoreError(
                    f"cannot log in to PKCS#11 token {self.token_label!r} ({_err(exc)})"
                ) from None
            self.session = session
            self.generation += 1

    def reconnect(self) -> None:
        with self.lock:
            self._connect()


_PIN_KEY = secrets.token_bytes(32)


class Pkcs11KeyStore(ServerKeyStore):
    """The PKCS#11 SS-CC: blobs sealed by an AES-256 KEK that never leaves the token.

    ``Pkcs11KeyStore(module_path, token_label, pin, key_label="mstcrypt-sscc-kek")``
    opens (logs in to) the token and finds the KEK by label, creating it on first use
    (``CKM_AES_KEY_GEN``: ``CKA_TOKEN``, ``CKA_PRIVATE``, ``CKA_SENSITIVE`` true,
    ``CKA_EXTRACTABLE``, ``CKA_WRAP``, ``CKA_UNWRAP``, ``CKA_SIGN`` false). A KEK found
    with that label that is extractable or not sensitive is refused, and so are several
    keys with the label (never guess which one the blobs need; no key is ever destroyed).
    Processes on one machine create the KEK under an exclusive file lock, so concurrent
    first starts agree on one key; server instances on *different* machines sharing a
    network HSM should be started once before scaling out, or opened with
    ``create=False`` (the PKCS#11 API offers no atomic create-if-absent).

    The token seals (``CKM_AES_GCM``, 12-byte nonce from the OS CSPRNG, 128-bit tag,
    AAD = label ``|`` context). SM2 work happens in process memory (see the module
    docstring for the seam that moves it onto a token with SM2 mechanisms).
    """

    backend = "pkcs11"
    #: First byte of a blob sealed by the token KEK. 0x02 is reserved for blobs that
    #: reference a key object on the token (a subclass with vendor SM2 mechanisms).
    KIND_SEALED = 0x01
    KIND_TOKEN_OBJECT = 0x02

    def __init__(
        self,
        module_path: str | os.PathLike[str],
        token_label: str,
        pin: str,
        key_label: str = DEFAULT_KEK_LABEL,
        *,
        create: bool = True,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        super().__init__(cache_size=cache_size)
        for what, v in (("token label", token_label), ("PIN", pin), ("key label", key_label)):
            if not isinstance(v, str) or not v:
                raise PolicyError(f"PKCS#11 {what} must be a non-empty string")
        self.module_path = str(module_path)
        self.token_label = token_label
        self.key_label = key_label
        self._create = create
        self._kek: Any = None
        self._kek_generation = -1
        self._link: _TokenLink | None = _TokenLink.acquire(self.module_path, token_label, pin)
        try:
            with self._link.lock:
                self._find_kek(create=create)
        except BaseException:
            self._link.release()
            self._link = None
            raise

    # -- the KEK ---------------------------------------------------------------------------
    def _kek_objects(self) -> list[Any]:
        p11 = _pkcs11()
        assert self._link is not None
        return list(
            self._link.session.get_objects(
                {
                    p11.Attribute.CLASS: p11.ObjectClass.SECRET_KEY,
                    p11.Attribute.KEY_TYPE: p11.KeyType.AES,
                    p11.Attribute.LABEL: self.key_label,
                }
            )
        )

    def _generate_kek(self) -> Any:
        p11 = _pkcs11()
        assert self._link is not None
        a = p11.Attribute
        return self._link.session.generate_key(
            p11.KeyType.AES,
            256,
            label=self.key_label,
            id=random_bytes(16),
            store=True,
            capabilities=p11.MechanismFlag.ENCRYPT | p11.MechanismFlag.DECRYPT,
            template={
                a.TOKEN: True,
                a.PRIVATE: True,
                a.SENSITIVE: True,
                a.EXTRACTABLE: False,
                a.ENCRYPT: True,
                a.DECRYPT: True,
                a.WRAP: False,
                a.UNWRAP: False,
                a.SIGN: False,
                a.VERIFY: False,
                a.DERIVE: False,
            },
        )

    def _check_kek(self, key: Any) -> Any:
        p11 = _pkcs11()
        try:
            sensitive = key[p11.Attribute.SENSITIVE]
            extractable = key[p11.Attribute.EXTRACTABLE]
            length = key[p11.Attribute.VALUE_LEN]
        except p11.PKCS11Error as exc:
            raise KeyStoreError(f"cannot read the KEK's attributes ({_err(exc)})") from None
        if not sensitive or extractable:
            raise KeyStoreError(
                f"KEK {self.key_label!r} on token {self.token_label!r} is extractable or not "
                "sensitive; refusing to use it (create a non-extractable, sensitive AES key)"
            )
        if length != 32:
            raise KeyStoreError(f"KEK {self.key_label!r} is not an AES-256 key")
        return key

    def _use_kek(self, found: list[Any]) -> bool:
        assert self._link is not None
        if len(found) > 1:
            raise KeyStoreError(
                f"{len(found)} keys labelled {self.key_label!r} on token {self.token_label!r}: "
                "the KEK is ambiguous (were two server instances first started at the same "
                "time on different machines? keep the one your blobs open with)"
            )
        if not found:
            return False
        self._kek = self._check_kek(found[0])
        self._kek_generation = self._link.generation
        return True

    def _find_kek(self, *, create: bool) -> None:
        p11 = _pkcs11()
        try:
            if self._use_kek(self._kek_objects()):
                return
            if not create:
                raise KeyStoreError(
                    f"no KEK labelled {self.key_label!r} on token {self.token_label!r}"
                )
            with _MachineLock.for_module(self.module_path):
                # look again: another process may have created it while we waited
                if self._use_kek(self._kek_objects()):
                    return
                self._generate_kek()
                if not self._use_kek(self._kek_objects()):
                    raise KeyStoreError("the KEK just created on the token cannot be found")
                log.info(
                    "created the SS-CC KEK %r on PKCS#11 token %r", self.key_label, self.token_label
                )
        except p11.PKCS11Error as exc:
            raise KeyStoreError(
                f"PKCS#11 token {self.token_label!r}: cannot find or create the KEK ({_err(exc)})"
            ) from None

    def _token_call(self, fn: Callable[[Any], bytes]) -> bytes:
        """Run ``fn(kek)`` under the library lock, reconnecting once if the session died."""
        self._check_open()
        p11 = _pkcs11()
        link = self._link
        if link is None:
            raise KeyStoreError("the SS-CC pkcs11 key store is closed")
        with link.lock:
            for attempt in (0, 1):
                try:
                    if self._kek_generation != link.generation:
                        self._find_kek(create=False)
                    return fn(self._kek)
                except p11.PKCS11Error as exc:
                    if attempt == 0 and _err(exc) in _RECONNECT_ERRORS:
                        log.warning(
                            "PKCS#11 token %r: %s; reopening the session",
                            self.token_label,
                            _err(exc),
                        )
                        link.reconnect()
                        continue
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    # -- sealing ---------------------------------------------------------------------------
    def _seal(self, payload: bytes, aad: bytes) -> bytes:
        p11 = _pkcs11()
        nonce = random_bytes(_NONCE)
        param = p11.GCMParams(nonce, aad, _TAG * 8)
        try:
            ct = self._token_call(
                lambda kek: kek.encrypt(
                    payload, mechanism=p11.Mechanism.AES_GCM, mechanism_param=param
                )
            )
        except p11.PKCS11Error as exc:
            raise KeyStoreError(
                f"PKCS#11 token {self.token_label!r}: sealing failed ({_err(exc)})"
            ) from None
        return bytes([self.KIND_SEALED]) + nonce + bytes(ct)

    def _open(self, blob: bytes, aad: bytes) -> bytes:
        p11 = _pkcs11()
        if len(blob) < 1 + _NONCE + _TAG:
            raise KeyStoreError("wrapped key blob is malformed")
        if blob[0] == self.KIND_TOKEN_OBJECT:
            raise KeyStoreError("blob references a token-resident key; this backend has none")
        if blob[0] != self.KIND_SEALED:
            raise KeyStoreError("not a PKCS#11 SS-CC blob (made by another backend, or edited)")
        param = p11.GCMParams(blob[1 : 1 + _NONCE], aad, _TAG * 8)
        body = blob[1 + _NONCE :]
        try:
            return bytes(
                self._token_call(
                    lambda kek: kek.decrypt(
                        body, mechanism=p11.Mechanism.AES_GCM, mechanism_param=param
                    )
                )
            )
        except p11.PKCS11Error as exc:
            if _err(exc) in _RECONNECT_ERRORS:
                raise KeyStoreError(
                    f"PKCS#11 token {self.token_label!r} unavailable ({_err(exc)})"
                ) from None
            raise KeyStoreError(
                "wrapped key does not unwrap (another token or KEK, or the blob was moved "
                "or edited)"
            ) from None

    # -- introspection ------------------------------------------------------------------------
    def token_mechanisms(self) -> set[int]:
        """The CKM_* values the token's slot advertises (to look for vendor SM2/SM4)."""
        p11 = _pkcs11()
        assert self._link is not None
        with self._link.lock:
            try:
                return {int(m) for m in self._link.session.token.slot.get_mechanisms()}
            except p11.PKCS11Error as exc:
                raise KeyStoreError(f"cannot list mechanisms ({_err(exc)})") from None

    def _close_backend(self) -> None:
        link, self._link = self._link, None
        self._kek = None
        if link is not None:
            link.release()

    def __repr__(self) -> str:
        return (
            f"Pkcs11KeyStore(module={self.module_path!r}, token={self.token_label!r}, "
            f"key_label={self.key_label!r}, cached={len(self._cache)})"
        )


def find_softhsm2_module() -> str | None:
    """The path of SoftHSM2's PKCS#11 library if installed (Debian puts it in
    ``/usr/lib/softhsm/`` and ``/usr/lib/<triplet>/softhsm/``)."""
    candidates = [Path("/usr/lib/softhsm/libsofthsm2.so")]
    candidates += sorted(Path("/usr/lib").glob("*/softhsm/libsofthsm2.so"))
    candidates += [Path("/usr/local/lib/softhsm/libsofthsm2.so")]
    for c in candidates:
        if c.is_file():
            return str(c)
    return None


# ------------------------------------------------------------------------- configuration --


@dataclass(frozen=True)
class SsccConfig:
    """How to open the SS-CC (see the module docstring for the environment variables)."""

    backend: str = "soft"
    #: soft: the master key file. ``None`` with ``master_key`` set uses that value.
    master_key_file: Path | None = None
    #: soft: the master key itself (from ``MSTCRYPT_MASTER_KEY``).
    master_key: bytes | None = field(default=None, repr=False)
    #: soft: create ``master_key_file`` (mode 0600, in a 0700 directory) if absent.
    create_master_key: bool = False
    #: soft: a ``<data_dir>/master.key`` of the former layout, if one exists: read when
    #: it is ``master_key_file``, reported either way (a warning is logged).
    legacy_master_key_file: Path | None = None
    #: soft: where the master key belongs by default (named in that warning).
    recommended_master_key_file: Path | None = None
    pkcs11_module: str | None = None
    pkcs11_token: str | None = None
    pkcs11_pin: str | None = field(default=None, repr=False)
    pkcs11_pin_file: Path | None = None
    pkcs11_key_label: str = DEFAULT_KEK_LABEL
    cache_size: int = DEFAULT_CACHE_SIZE

    @classmethod
    def from_env(
        cls, data_dir: str | os.PathLike[str], environ: Mapping[str, str] | None = None
    ) -> SsccConfig:
        """Read ``MSTCRYPT_SSCC`` and the backend's variables; nothing is created here."""
        env = os.environ if environ is None else environ
        backend = (env.get("MSTCRYPT_SSCC") or "soft").strip().lower()
        if backend not in BACKENDS:
            raise PolicyError(f"unknown MSTCRYPT_SSCC {backend!r}; expected one of: soft, pkcs11")
        try:
            cache_size = int(env.get("MSTCRYPT_SSCC_CACHE") or DEFAULT_CACHE_SIZE)
        except ValueError:
            raise PolicyError("MSTCRYPT_SSCC_CACHE must be an integer") from None
        if not 0 <= cache_size <= 1_000_000:
            raise PolicyError("MSTCRYPT_SSCC_CACHE must be 0..1000000")
        if backend == "pkcs11":
            pin_file = env.get("MSTCRYPT_PKCS11_PIN_FILE")
            return cls(
                backend=backend,
                pkcs11_module=env.get("MSTCRYPT_PKCS11_MODULE") or None,
                pkcs11_token=env.get("MSTCRYPT_PKCS11_TOKEN") or None,
                pkcs11_pin=env.get("MSTCRYPT_PKCS11_PIN") or None,
                pkcs11_pin_file=Path(pin_file) if pin_file else None,
                pkcs11_key_label=env.get("MSTCRYPT_PKCS11_KEY_LABEL") or DEFAULT_KEK_LABEL,
                cache_size=cache_size,
            )
        if env.get("MSTCRYPT_MASTER_KEY"):
            return cls(
                master_key=_hex_master_key(env["MSTCRYPT_MASTER_KEY"]), cache_size=cache_size
            )
        if env.get("MSTCRYPT_MASTER_KEY_FILE"):
            return cls(master_key_file=Path(env["MSTCRYPT_MASTER_KEY_FILE"]), cache_size=cache_size)
        data = Path(data_dir).resolve()
        home = Path(env["MSTCRYPT_SSCC_DIR"]) if env.get("MSTCRYPT_SSCC_DIR") else None
        default = (home or data.with_name(data.name + ".sscc")) / "master.key"
        legacy = data / "master.key"
        old = legacy if legacy.is_file() else None
        if not default.exists() and old is not None:
            return cls(
                master_key_file=legacy,
                legacy_master_key_file=old,
                recommended_master_key_file=default,
                cache_size=cache_size,
            )
        return cls(
            master_key_file=default,
            create_master_key=True,
            legacy_master_key_file=old,
            recommended_master_key_file=default,
            cache_size=cache_size,
        )


def _hex_master_key(value: str) -> bytes:
    try:
        key = bytes.fromhex(value.strip())
    except ValueError:
        raise KeyStoreError("MSTCRYPT_MASTER_KEY must be 64 hex characters") from None
    if len(key) != MASTER_KEY_SIZE:
        raise KeyStoreError("MSTCRYPT_MASTER_KEY must be 64 hex characters (32 bytes)")
    return key


def _ensure_master_key(path: Path) -> None:
    """Create ``path`` (32 random bytes, 0600) in a 0700 directory if it is absent."""
    from mstcrypt.module.keystore import atomic_write

    directory = path.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = directory.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning(
                "SS-CC directory %s is accessible to other users (mode %o); use 0700",
                directory,
                mode,
            )
        if not path.exists():
            atomic_write(path, secrets.token_bytes(MASTER_KEY_SIZE))
            log.info("created the SS-CC master key %s", path)
        elif (mode := path.stat().st_mode & 0o777) & 0o077:
            log.warning(
                "SS-CC master key %s is readable by other users (mode %o); use 0600", path, mode
            )
    except OSError as exc:
        raise KeyStoreError(
            f"cannot create the master key in {directory}: {exc.strerror}"
        ) from None


def open_keystore(config: SsccConfig) -> ServerKeyStore:
    """Open the configured SS-CC backend."""
    if config.backend == "soft":
        if config.master_key is not None:
            return SoftKeyStore(config.master_key, cache_size=config.cache_size)
        if config.master_key_file is None:
            raise KeyStoreError("no server master key configured")
        path = Path(config.master_key_file)
        if config.create_master_key:
            _ensure_master_key(path)
        old = config.legacy_master_key_file
        if old is not None and Path(old) == path:
            log.warning(
                "the SS-CC master key is read from %s, inside the data directory: a copy of "
                "the data carries its key. Move it to %s (mode 0600 in a 0700 directory), "
                "or set MSTCRYPT_SSCC_DIR / MSTCRYPT_MASTER_KEY_FILE",
                path,
                config.recommended_master_key_file or "a directory outside the data",
            )
        elif old is not None:
            log.warning(
                "an old master key remains at %s, inside the data directory, while %s is "
                "used: delete the old copy once the server runs with the new one",
                old,
                path,
            )
        return SoftKeyStore(load_master_key(key_file=path), cache_size=config.cache_size)
    if config.backend == "pkcs11":
        if not config.pkcs11_module:
            raise KeyStoreError("MSTCRYPT_PKCS11_MODULE (the PKCS#11 library path) is not set")
        if not config.pkcs11_token:
            raise KeyStoreError("MSTCRYPT_PKCS11_TOKEN (the token label) is not set")
        pin = config.pkcs11_pin
        if pin is None and config.pkcs11_pin_file is not None:
            try:
                pin = config.pkcs11_pin_file.read_text().strip()
            except (OSError, UnicodeDecodeError):
                raise KeyStoreError("cannot read MSTCRYPT_PKCS11_PIN_FILE") from None
        if not pin:
            raise KeyStoreError("no PKCS#11 PIN: set MSTCRYPT_PKCS11_PIN or _PIN_FILE")
        return Pkcs11KeyStore(
            config.pkcs11_module,
            config.pkcs11_token,
            pin,
            config.pkcs11_key_label,
            cache_size=config.cache_size,
        )
    raise PolicyError(f"unknown SS-CC backend {config.backend!r}; expected one of: soft, pkcs11")
