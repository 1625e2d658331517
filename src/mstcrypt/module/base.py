"""The module interface shared by MST-CC and SS-CC (after GM/T 0018 SDF / GM/T 0016 SKF).

A module holds *containers*; each container has up to one signing key pair and one
encryption key pair, plus the matching certificates. Callers use handles; the private
keys stay inside the module object and in its wrapped storage.
"""

from __future__ import annotations

import enum
import re
import secrets
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from mstcrypt.crypto import sm4
from mstcrypt.crypto.random import random_bytes
from mstcrypt.crypto.sm2 import DEFAULT_ID, SignatureEncoding, SM2PrivateKey, SM2PublicKey
from mstcrypt.crypto.sm2_kex import KeyExchangeInitiator, KeyExchangeResponder
from mstcrypt.errors import KeyStoreError, MstCryptError, PolicyError
from mstcrypt.formats.envelope import EnvelopedKey

__all__ = ["CryptoModule", "KeyHandle", "KeyUsage", "SessionKeyHandle"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


class KeyUsage(enum.StrEnum):
    SIGN = "sign"
    ENCRYPT = "enc"


def _usage(value: object) -> KeyUsage:
    try:
        return KeyUsage(value)
    except ValueError:
        raise PolicyError(f"unknown key usage {value!r}; expected 'sign' or 'enc'") from None


@dataclass(frozen=True)
class KeyHandle:
    """A reference to a private key held by a module. Shows no secret."""

    module_id: str
    container: str
    usage: KeyUsage
    public_key: SM2PublicKey

    def __repr__(self) -> str:
        return f"KeyHandle({self.container!r}, {self.usage.value}, {self.public_key!r})"


@dataclass(frozen=True)
class SessionKeyHandle:
    """A reference to a symmetric (SM4) session key held by a module."""

    module_id: str
    handle_id: str

    def __repr__(self) -> str:
        return f"SessionKeyHandle({self.handle_id})"


@dataclass
class _Container:
    keys: dict[KeyUsage, SM2PrivateKey] = field(default_factory=dict)
    certs: dict[KeyUsage, bytes] = field(default_factory=dict)


class CryptoModule(ABC):
    """Common behaviour. Subclasses provide persistence (:meth:`_persist`) and access
    control (:meth:`_require_open`)."""

    def __init__(self) -> None:
        self._id = secrets.token_hex(8)
        self._containers: dict[str, _Container] = {}
        self._sessions: dict[str, bytes] = {}
        self._lock = threading.RLock()

    # -- hooks -----------------------------------------------------------------------
    @abstractmethod
    def _persist(self) -> None:
        """Write the containers to wrapped storage atomically."""

    def _require_open(self) -> None:
        """Raise if the module is not usable (e.g. a token not logged in)."""

    # -- (de)serialisation of containers, used by subclasses ----------------------------
    def _payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, c in self._containers.items():
            out[name] = {
                "keys": {u.value: k.private_bytes().hex() for u, k in c.keys.items()},
                "certs": {u.value: v.hex() for u, v in c.certs.items()},
            }
        return {"containers": out}

    def _load_payload(self, payload: dict[str, Any]) -> None:
        containers: dict[str, _Container] = {}
        try:
            for name, c in payload["containers"].items():
                cont = _Container()
                for u, d in c["keys"].items():
                    cont.keys[KeyUsage(u)] = SM2PrivateKey.from_bytes(bytes.fromhex(d))
                for u, v in c["certs"].items():
                    cont.certs[KeyUsage(u)] = bytes.fromhex(v)
                containers[name] = cont
        except (KeyError, TypeError, ValueError, AttributeError, MstCryptError):
            raise KeyStoreError("keystore payload has the wrong shape") from None
        self._containers = containers

    def _clear(self) -> None:
        self._containers = {}
        self._sessions = {}

    # -- transactions --------------------------------------------------------------------
    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """Mutate the containers inside the block; on exit persist them. If the block or
        the write fails, the in-memory state returns to what it was before the block."""
        with self._lock:
            snapshot = self._payload()
            try:
                yield
                self._persist()
            except BaseException:
                self._load_payload(snapshot)
                raise

    # -- containers --------------------------------------------------------------------
    def list_containers(self) -> list[str]:
        self._require_open()
        return sorted(self._containers)

    def create_container(self, name: str) -> None:
        self._require_open()
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise PolicyError("container name: 1-64 characters of A-Z a-z 0-9 . _ @ -")
        with self._transaction():
            if name in self._containers:
                raise PolicyError(f"container {name!r} already exists")
            self._containers[name] = _Container()

    def delete_container(self, name: str) -> None:
        self._require_open()
        with self._transaction():
            self._get(name)
            del self._containers[name]

    def rename_container(self, old: str, new: str, *, replace: bool = False) -> None:
        """Rename a container (with ``replace``, an existing ``new`` is dropped), as one
        persisted change."""
        self._require_open()
        if not isinstance(new, str) or not _NAME.fullmatch(new):
            raise PolicyError("container name: 1-64 characters of A-Z a-z 0-9 . _ @ -")
        with self._transaction():
            c = self._get(old)
            if new in self._containers and not replace:
                raise PolicyError(f"container {new!r} already exists")
            self._containers.pop(new, None)
            del self._containers[old]
            self._containers[new] = c

    def _get(self, name: str) -> _Container:
        c = self._containers.get(name) if isinstance(name, str) else None
        if c is None:
            raise KeyStoreError(f"no container named {name!r}")
        return c

    # -- key pairs -----------------------------------------------------------------------
    def generate_key_pair(
        self, container: str, usage: KeyUsage | str = KeyUsage.SIGN, *, replace: bool = False
    ) -> KeyHandle:
        """Generate an SM2 key pair inside the module (signing keys are made here).
        Replacing a key drops the certificate of the old key."""
        self._require_open()
        usage = _usage(usage)
        with self._transaction():
            c = self._get(container)
            if usage in c.keys and not replace:
                raise PolicyError(f"container {container!r} already has a {usage.value} key")
            c.keys[usage] = SM2PrivateKey.generate()
            c.certs.pop(usage, None)
        return self.key(container, usage)

    def import_enveloped_key(
        self,
        container: str,
        enveloped_der: bytes,
        *,
        usage: KeyUsage | str = KeyUsage.ENCRYPT,
        unwrap_with: KeyUsage | str = KeyUsage.SIGN,
        replace: bool = False,
    ) -> KeyHandle:
        """Import a key pair delivered by a KMC as a GB/T 35276 SM2EnvelopedKey,
        decrypting its SM4 key with this container's ``unwrap_with`` key (the signing
        key, as SKF_ImportECCKeyPair does). The plaintext key exists only inside."""
        self._require_open()
        usage, unwrap_with = _usage(usage), _usage(unwrap_with)
        env = EnvelopedKey.from_der(enveloped_der)
        with self._transaction():
            c = self._get(container)
            if usage in c.keys and not replace:
                raise PolicyError(f"container {container!r} already has a {usage.value} key")
            unwrapper = c.keys.get(unwrap_with)
            if unwrapper is None:
                raise KeyStoreError(
                    f"container {container!r} has no {unwrap_with.value} key to unwrap the "
                    "enveloped key"
                )
            c.keys[usage] = env.open(unwrapper)
            c.certs.pop(usage, None)
        return self.key(container, usage)

    def import_key_pair(
        self,
        container: str,
        key: SM2PrivateKey,
        usage: KeyUsage | str = KeyUsage.SIGN,
        *,
        replace: bool = False,
    ) -> KeyHandle:
        """Import a plaintext key (migration from PEM files; prefer enveloped import)."""
        self._require_open()
        if not isinstance(key, SM2PrivateKey):
            raise PolicyError("import_key_pair needs an SM2PrivateKey")
        usage = _usage(usage)
        with self._transaction():
            c = self._get(container)
            if usage in c.keys and not replace:
                raise PolicyError(f"container {container!r} already has a {usage.value} key")
            c.keys[usage] = key
            c.certs.pop(usage, None)
        return self.key(container, usage)

    def key(self, container: str, usage: KeyUsage | str = KeyUsage.SIGN) -> KeyHandle:
        self._require_open()
        usage = _usage(usage)
        c = self._get(container)
        k = c.keys.get(usage)
        if k is None:
            raise KeyStoreError(f"container {container!r} has no {usage.value} key")
        return KeyHandle(self._id, container, usage, k.public_key())

    def export_public_key(self, container: str, usage: KeyUsage = KeyUsage.SIGN) -> SM2PublicKey:
        return self.key(container, usage).public_key

    # -- certificates ---------------------------------------------------------------------
    def put_certificate(self, container: str, usage: KeyUsage | str, cert_der: bytes) -> None:
        self._require_open()
        usage = _usage(usage)
        if not isinstance(cert_der, bytes | bytearray) or not cert_der:
            raise PolicyError("certificate must be non-empty DER bytes")
        with self._transaction():
            c = self._get(container)
            if usage not in c.keys:
                raise KeyStoreError(f"container {container!r} has no {usage.value} key")
            c.certs[usage] = bytes(cert_der)

    def get_certificate(self, container: str, usage: KeyUsage) -> bytes | None:
        self._require_open()
        return self._get(container).certs.get(_usage(usage))

    # -- private-key operations ---------------------------------------------------------------
    def _private(self, handle: KeyHandle, usage: KeyUsage | None = None) -> SM2PrivateKey:
        self._require_open()
        if not isinstance(handle, KeyHandle) or handle.module_id != self._id:
            raise PolicyError("the key handle does not belong to this module")
        if usage is not None and handle.usage is not usage:
            raise PolicyError(
                f"key usage is {handle.usage.value}; this operation needs {usage.value}"
            )
        k = self._get(handle.container).keys.get(handle.usage)
        if k is None or k.public_key() != handle.public_key:
            raise KeyStoreError("the key behind this handle no longer exists")
        return k

    def sign(
        self,
        handle: KeyHandle,
        message: bytes,
        *,
        signer_id: bytes = DEFAULT_ID,
        encoding: SignatureEncoding | str = SignatureEncoding.DER,
    ) -> bytes:
        return self._private(handle, KeyUsage.SIGN).sign(
            message, signer_id=signer_id, encoding=encoding
        )

    def sign_digest(
        self,
        handle: KeyHandle,
        digest: bytes,
        *,
        encoding: SignatureEncoding | str = SignatureEncoding.DER,
    ) -> bytes:
        return self._private(handle, KeyUsage.SIGN).sign_digest(digest, encoding=encoding)

    @staticmethod
    def verify(
        public_key: SM2PublicKey,
        signature: bytes,
        message: bytes,
        *,
        signer_id: bytes = DEFAULT_ID,
        encoding: SignatureEncoding | str = SignatureEncoding.DER,
    ) -> None:
        public_key.verify(signature, message, signer_id=signer_id, encoding=encoding)

    def decrypt(self, handle: KeyHandle, ciphertext: bytes) -> bytes:
        """SM2-decrypt with the container's encryption key (DER SM2Cipher)."""
        return self._private(handle, KeyUsage.ENCRYPT).decrypt(ciphertext)

    def key_exchange_initiator(
        self, handle: KeyHandle, peer_public: SM2PublicKey, **kw: Any
    ) -> KeyExchangeInitiator:
        """SM2 key exchange as initiator with this key (see :mod:`sm2_kex`)."""
        return KeyExchangeInitiator(self._private(handle), peer_public, **kw)

    def key_exchange_responder(
        self, handle: KeyHandle, peer_public: SM2PublicKey, **kw: Any
    ) -> KeyExchangeResponder:
        return KeyExchangeResponder(self._private(handle), peer_public, **kw)

    # -- session keys ----------------------------------------------------------------------
    def _session(self, h: SessionKeyHandle) -> bytes:
        self._require_open()
        if not isinstance(h, SessionKeyHandle) or h.module_id != self._id:
            raise PolicyError("the session key handle does not belong to this module")
        k = self._sessions.get(h.handle_id)
        if k is None:
            raise KeyStoreError("session key was destroyed or never existed")
        return k

    def _new_session(self, key: bytes) -> SessionKeyHandle:
        if len(key) != 16:
            raise PolicyError("SM4 session keys are 16 bytes")
        hid = secrets.token_hex(8)
        self._sessions[hid] = key
        return SessionKeyHandle(self._id, hid)

    def generate_session_key(self) -> SessionKeyHandle:
        self._require_open()
        return self._new_session(random_bytes(16))

    def export_session_key(self, session: SessionKeyHandle, recipient: SM2PublicKey) -> bytes:
        """The session key SM2-encrypted to ``recipient`` (SDF GenerateKeyWithEPK)."""
        return recipient.encrypt(self._session(session))

    def import_session_key(self, handle: KeyHandle, ciphertext: bytes) -> SessionKeyHandle:
        """Decrypt an SM2-encrypted session key with an encryption key (ImportKeyWithISK)."""
        return self._new_session(self.decrypt(handle, ciphertext))

    def destroy_session_key(self, session: SessionKeyHandle) -> None:
        self._session(session)
        self._sessions.pop(session.handle_id, None)

    def encrypt(
        self,
        session: SessionKeyHandle,
        plaintext: bytes,
        *,
        mode: str = "gcm",
        iv: bytes | None = None,
        aad: bytes = b"",
    ) -> tuple[bytes, bytes]:
        """Encrypt under a session key; returns (iv_or_nonce, ciphertext). GCM (default)
        appends the tag; CBC uses PKCS#7; CTR is unauthenticated."""
        key = self._session(session)
        if mode == "gcm":
            nonce = iv if iv is not None else random_bytes(12)
            return nonce, sm4.gcm_encrypt(key, nonce, plaintext, aad)
        if aad:
            raise PolicyError("associated data needs GCM")
        iv = iv if iv is not None else random_bytes(16)
        if mode == "cbc":
            return iv, sm4.cbc_encrypt(key, iv, plaintext)
        if mode == "ctr":
            return iv, sm4.ctr(key, iv, plaintext)
        raise PolicyError(f"unknown mode {mode!r}; expected gcm, cbc or ctr")

    def decrypt_symmetric(
        self,
        session: SessionKeyHandle,
        iv: bytes,
        ciphertext: bytes,
        *,
        mode: str = "gcm",
        aad: bytes = b"",
    ) -> bytes:
        key = self._session(session)
        if mode == "gcm":
            return sm4.gcm_decrypt(key, iv, ciphertext, aad)
        if aad:
            raise PolicyError("associated data needs GCM")
        if mode == "cbc":
            return sm4.cbc_decrypt(key, iv, ciphertext)
        if mode == "ctr":
            return sm4.ctr(key, iv, ciphertext)
        raise PolicyError(f"unknown mode {mode!r}; expected gcm, cbc or ctr")

    # -- misc -------------------------------------------------------------------------
    @staticmethod
    def random(n: int) -> bytes:
        return random_bytes(n)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(containers={len(self._containers)})"
