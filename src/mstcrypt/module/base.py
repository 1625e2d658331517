"""The module interface shared by MST-CC and SS-CC (after GM/T 0018 SDF / GM/T 0016 SKF).

A module holds *containers*; each container has up to one signing key pair and one
encryption key pair, plus the matching certificates. Callers use handles; the private
keys stay inside the module object and in its wrapped storage. Operations that need a
private scalar (signing, decryption, the SM2 key exchange) run inside the module; what
they hand back holds public values and derived keys only.

Key policy (T/ZSA 37-2020 §6.4.4, §7.6.4; GM/T 0034 dual certificates): signing keys
are made inside the module and never leave it; encryption keys are made by the KMC,
which keeps an escrow copy, and arrive as a GB/T 35276 SM2EnvelopedKey. Generating an
encryption key locally (not escrowed) or importing a plaintext key needs an explicit
acknowledgement, and the container records where each key came from.
"""

from __future__ import annotations

import enum
import re
import secrets
import threading
import weakref
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from mstcrypt.crypto import sm4
from mstcrypt.crypto.random import random_bytes
from mstcrypt.crypto.sm2 import DEFAULT_ID, SignatureEncoding, SM2PrivateKey, SM2PublicKey
from mstcrypt.crypto.sm2_kex import KeyExchangeInitiator, KeyExchangeResponder, Role
from mstcrypt.errors import KeyStoreError, MstCryptError, PolicyError, VerificationError
from mstcrypt.formats.envelope import EnvelopedKey

__all__ = [
    "CryptoModule",
    "KeyExchange",
    "KeyHandle",
    "KeyOrigin",
    "KeyProvenance",
    "KeyUsage",
    "SessionKeyHandle",
]

#: Key exchanges started but not finished that a module keeps (oldest dropped first).
MAX_PENDING_EXCHANGES = 256

Transport = Callable[[bytes], bytes]


def _twoparty() -> Any:
    from mstcrypt.crypto import twoparty

    return twoparty


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


class KeyOrigin(enum.StrEnum):
    """Where a key pair in a container came from."""

    GENERATED = "generated"  # made inside this module
    KMC = "kmc"  # made by the KMC, imported as an SM2EnvelopedKey (escrowed there)
    IMPORTED = "imported"  # a plaintext key imported with allow_plaintext_import
    UNKNOWN = "unknown"  # written by a version that did not record it


@dataclass(frozen=True)
class KeyProvenance:
    """Origin of a key and whether the KMC holds an escrow copy (None: unknown)."""

    origin: KeyOrigin
    escrowed: bool | None


_UNKNOWN = KeyProvenance(KeyOrigin.UNKNOWN, None)


@dataclass
class _Container:
    keys: dict[KeyUsage, SM2PrivateKey] = field(default_factory=dict)
    certs: dict[KeyUsage, bytes] = field(default_factory=dict)
    meta: dict[KeyUsage, KeyProvenance] = field(default_factory=dict)
    #: a two-party SM2 signing key's share: "current" and, during a refresh whose
    #: outcome the server has not acknowledged, "pending" (serialised ClientShare)
    twoparty: dict[str, bytes] = field(default_factory=dict)


# Modules by id, so that a KeyExchange (which holds no reference to its module, and so
# nothing through which a private key could be reached) can call back into it.
_MODULES: weakref.WeakValueDictionary[str, CryptoModule] = weakref.WeakValueDictionary()


class KeyExchange:
    """One SM2 key exchange (GB/T 32918.3) run inside a module with one of its keys.

    Holds public values only — the role, this side's ephemeral point R, Z_A and Z_B, and
    once agreed the shared key K — never the private key or the ephemeral scalar r, which
    stay in the module. Initiator: send :attr:`ephemeral`, call :meth:`finish` with the
    responder's reply. Responder: :meth:`respond` to R_A, then :meth:`confirm` with S_A
    when confirmation is on. Each step runs once; the module forgets the exchange's
    private state when it ends (agreed or failed).
    """

    __slots__ = (
        "_handle_id",
        "_module_id",
        "ephemeral",
        "key",
        "role",
        "z_initiator",
        "z_responder",
    )

    def __init__(
        self, module_id: str, handle_id: str, role: Role, ephemeral: bytes, za: bytes, zb: bytes
    ) -> None:
        self._module_id = module_id
        self._handle_id = handle_id
        self.role = role
        self.ephemeral = ephemeral
        self.z_initiator = za
        self.z_responder = zb
        self.key: bytes | None = None

    def _module(self) -> CryptoModule:
        mod = _MODULES.get(self._module_id)
        if mod is None:
            raise KeyStoreError("the module that ran this key exchange is gone")
        return mod

    def _need(self, role: Role) -> None:
        if self.role is not role:
            raise PolicyError(
                f"this step belongs to the {role.value}; this side is the {self.role.value}"
            )

    def finish(
        self, peer_ephemeral: bytes, peer_confirm: bytes | None = None
    ) -> tuple[bytes, bytes | None]:
        """Initiator: process R_B (and S_B). Returns (K, S_A); S_A is None without
        confirmation. Raises VerificationError if S_B does not match."""
        self._need(Role.INITIATOR)
        key, s_a = self._module()._kex_finish(self._handle_id, peer_ephemeral, peer_confirm)
        self.key = key
        return key, s_a

    def respond(self, peer_ephemeral: bytes) -> tuple[bytes, bytes | None]:
        """Responder: process R_A; returns (R_B, S_B). Without confirmation :attr:`key`
        is set at once."""
        self._need(Role.RESPONDER)
        r_b, s_b, key = self._module()._kex_respond(self._handle_id, peer_ephemeral)
        self.key = key
        return r_b, s_b

    def confirm(self, peer_confirm: bytes) -> bytes:
        """Responder with confirmation: check S_A; returns K."""
        self._need(Role.RESPONDER)
        key = self._module()._kex_confirm(self._handle_id, peer_confirm)
        self.key = key
        return key

    def session_key(self) -> SessionKeyHandle:
        """The agreed 16-byte key as a module session key (for encrypt/decrypt_symmetric)."""
        if self.key is None:
            raise PolicyError("the key exchange has not produced a key yet")
        return self._module()._kex_session(self.key)

    def __repr__(self) -> str:
        state = "agreed" if self.key is not None else "pending"
        return f"KeyExchange({self.role.value}, {state})"


class CryptoModule(ABC):
    """Common behaviour. Subclasses provide persistence (:meth:`_persist`) and access
    control (:meth:`_require_open`)."""

    def __init__(self) -> None:
        self._id = secrets.token_hex(8)
        self._containers: dict[str, _Container] = {}
        self._sessions: dict[str, bytes] = {}
        self._exchanges: OrderedDict[str, KeyExchangeInitiator | KeyExchangeResponder] = (
            OrderedDict()
        )
        self._lock = threading.RLock()
        _MODULES[self._id] = self

    # -- hooks -----------------------------------------------------------------------
    @abstractmethod
    def _persist(self) -> None:
        """Write the containers to wrapped storage atomically."""

    def _require_open(self) -> None:
        """Raise if the module is not usable (e.g. a token not logged in)."""

    def _require_may_add_keys(self) -> None:
        """Raise if new private keys may not be stored now (a soft token whose PIN was
        set by an administrator)."""

    # -- (de)serialisation of containers, used by subclasses ----------------------------
    def _payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, c in self._containers.items():
            out[name] = {
                "keys": {u.value: k.private_bytes().hex() for u, k in c.keys.items()},
                "certs": {u.value: v.hex() for u, v in c.certs.items()},
                "meta": {
                    u.value: {"origin": m.origin.value, "escrowed": m.escrowed}
                    for u, m in c.meta.items()
                    if u in c.keys and m.origin is not KeyOrigin.UNKNOWN
                },
            }
            if c.twoparty:
                out[name]["twoparty"] = {k: v.hex() for k, v in c.twoparty.items()}
        return {"containers": out}

    @staticmethod
    def _parse_containers(payload: dict[str, Any]) -> dict[str, _Container]:
        containers: dict[str, _Container] = {}
        try:
            for name, c in payload["containers"].items():
                if not isinstance(name, str) or not _NAME.fullmatch(name):
                    raise TypeError
                cont = _Container()
                for u, d in c["keys"].items():
                    cont.keys[KeyUsage(u)] = SM2PrivateKey.from_bytes(bytes.fromhex(d))
                for u, v in c["certs"].items():
                    cont.certs[KeyUsage(u)] = bytes.fromhex(v)
                for u, m in c.get("meta", {}).items():
                    escrowed = m["escrowed"]
                    if escrowed not in (True, False, None) or KeyUsage(u) not in cont.keys:
                        raise TypeError
                    cont.meta[KeyUsage(u)] = KeyProvenance(KeyOrigin(m["origin"]), escrowed)
                for slot, v in c.get("twoparty", {}).items():
                    if slot not in ("current", "pending"):
                        raise TypeError
                    raw = bytes.fromhex(v)
                    _twoparty().ClientShare.from_bytes(raw)  # validates the share
                    cont.twoparty[slot] = raw
                containers[name] = cont
        except (KeyError, TypeError, ValueError, AttributeError, MstCryptError):
            raise KeyStoreError("keystore payload has the wrong shape") from None
        return containers

    def _load_payload(self, payload: dict[str, Any]) -> None:
        self._containers = self._parse_containers(payload)

    def _clear(self) -> None:
        self._containers = {}
        self._sessions = {}
        self._exchanges.clear()

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
        self,
        container: str,
        usage: KeyUsage | str = KeyUsage.SIGN,
        *,
        replace: bool = False,
        escrowed: bool | None = None,
    ) -> KeyHandle:
        """Generate an SM2 key pair inside the module (signing keys are made here).
        Replacing a key drops the certificate of the old key.

        Encryption keys come from the KMC, which escrows them (:meth:`import_enveloped_key`).
        A locally generated encryption key has no escrow copy: losing the token loses
        every file encrypted to it, and the organisation cannot recover them. It is
        refused unless the caller acknowledges that with ``escrowed=False``; the
        container records the key as not escrowed."""
        self._require_open()
        usage = _usage(usage)
        if usage is KeyUsage.ENCRYPT and escrowed is not False:
            raise PolicyError(
                "encryption keys come from the KMC, which escrows them (enrollment or key "
                "distribution, imported with import_enveloped_key); a key generated here "
                "is not escrowed: pass escrowed=False to acknowledge that"
            )
        if usage is KeyUsage.SIGN and escrowed:
            raise PolicyError("signing keys are never escrowed")
        self._require_may_add_keys()
        with self._transaction():
            c = self._get(container)
            if usage in c.keys and not replace:
                raise PolicyError(f"container {container!r} already has a {usage.value} key")
            c.keys[usage] = SM2PrivateKey.generate()
            c.meta[usage] = KeyProvenance(KeyOrigin.GENERATED, False)
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
        self._require_may_add_keys()
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
            c.meta[usage] = KeyProvenance(KeyOrigin.KMC, usage is KeyUsage.ENCRYPT)
            c.certs.pop(usage, None)
        return self.key(container, usage)

    def install_rotated_key(
        self,
        container: str,
        enveloped_der: bytes,
        cert_der: bytes,
        *,
        keep_previous_as: str,
    ) -> KeyHandle:
        """Install an encryption key the KMC rotated for this terminal, atomically: unwrap
        the SM2EnvelopedKey with the container's signing key (as at enrollment), check
        that the certificate ``cert_der`` is for the unwrapped key, move the previous
        encryption key with its certificate and provenance into a new container
        ``keep_previous_as`` (decrypt-only: it holds no signing key, so files encrypted to
        the old key keep opening), and install the new key and certificate. One persisted
        change: any failure leaves the module (and its file) as it was.

        The caller validates the certificate's path to its trust anchors first
        (:meth:`mstcrypt.client.Client.collect_keys`); this checks the key binding."""
        from asn1crypto import x509 as asn1_x509

        from mstcrypt.formats._der import load_strict
        from mstcrypt.formats.keys import public_key_from_der

        self._require_open()
        if not isinstance(keep_previous_as, str) or not _NAME.fullmatch(keep_previous_as):
            raise PolicyError("container name: 1-64 characters of A-Z a-z 0-9 . _ @ -")
        if keep_previous_as == container:
            raise PolicyError("the previous key goes to another container than the new one")
        if not isinstance(cert_der, bytes | bytearray) or not cert_der:
            raise PolicyError("certificate must be non-empty DER bytes")
        cert = load_strict(asn1_x509.Certificate, bytes(cert_der), "certificate")
        cert_key = public_key_from_der(cert["tbs_certificate"]["subject_public_key_info"].dump())
        env = EnvelopedKey.from_der(enveloped_der)
        self._require_may_add_keys()
        with self._transaction():
            c = self._get(container)
            if keep_previous_as in self._containers:
                raise PolicyError(f"container {keep_previous_as!r} already exists")
            unwrapper = c.keys.get(KeyUsage.SIGN)
            if unwrapper is None:
                raise KeyStoreError(
                    f"container {container!r} has no sign key to unwrap the enveloped key"
                )
            new = env.open(unwrapper)
            if new.public_key() != cert_key:
                raise VerificationError("the certificate is not for the delivered key")
            old = c.keys.get(KeyUsage.ENCRYPT)
            if old is not None and old.public_key() == cert_key:
                raise PolicyError(f"container {container!r} already holds this key")
            if old is not None:
                kept = _Container(keys={KeyUsage.ENCRYPT: old})
                if KeyUsage.ENCRYPT in c.certs:
                    kept.certs[KeyUsage.ENCRYPT] = c.certs[KeyUsage.ENCRYPT]
                if KeyUsage.ENCRYPT in c.meta:
                    kept.meta[KeyUsage.ENCRYPT] = c.meta[KeyUsage.ENCRYPT]
                self._containers[keep_previous_as] = kept
            c.keys[KeyUsage.ENCRYPT] = new
            c.meta[KeyUsage.ENCRYPT] = KeyProvenance(KeyOrigin.KMC, True)
            c.certs[KeyUsage.ENCRYPT] = bytes(cert_der)
        return self.key(container, KeyUsage.ENCRYPT)

    def import_key_pair(
        self,
        container: str,
        key: SM2PrivateKey,
        usage: KeyUsage | str = KeyUsage.SIGN,
        *,
        replace: bool = False,
        allow_plaintext_import: bool = False,
    ) -> KeyHandle:
        """Import a plaintext key (migration from PEM files). A key that existed outside
        a module may have copies anywhere, so this is refused unless the caller passes
        ``allow_plaintext_import=True``; keys from the KMC arrive enveloped
        (:meth:`import_enveloped_key`). The container records the key as imported."""
        self._require_open()
        if allow_plaintext_import is not True:
            raise PolicyError(
                "plaintext private-key import is refused by policy: keys from the KMC are "
                "imported enveloped (import_enveloped_key); pass allow_plaintext_import=True "
                "to migrate a key that existed outside a module"
            )
        if not isinstance(key, SM2PrivateKey):
            raise PolicyError("import_key_pair needs an SM2PrivateKey")
        usage = _usage(usage)
        self._require_may_add_keys()
        with self._transaction():
            c = self._get(container)
            if usage in c.keys and not replace:
                raise PolicyError(f"container {container!r} already has a {usage.value} key")
            c.keys[usage] = SM2PrivateKey.from_bytes(key.private_bytes())  # a copy of our own
            c.meta[usage] = KeyProvenance(KeyOrigin.IMPORTED, None)
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

    def key_provenance(
        self, container: str, usage: KeyUsage | str = KeyUsage.SIGN
    ) -> KeyProvenance:
        """Where the container's key came from and whether the KMC escrows it."""
        self.key(container, usage)
        return self._get(container).meta.get(_usage(usage), _UNKNOWN)

    # -- certificates ---------------------------------------------------------------------
    def put_certificate(self, container: str, usage: KeyUsage | str, cert_der: bytes) -> None:
        self._require_open()
        usage = _usage(usage)
        if not isinstance(cert_der, bytes | bytearray) or not cert_der:
            raise PolicyError("certificate must be non-empty DER bytes")
        with self._transaction():
            c = self._get(container)
            if usage not in c.keys and not (usage is KeyUsage.SIGN and c.twoparty):
                raise KeyStoreError(f"container {container!r} has no {usage.value} key")
            c.certs[usage] = bytes(cert_der)

    def get_certificate(self, container: str, usage: KeyUsage) -> bytes | None:
        self._require_open()
        return self._get(container).certs.get(_usage(usage))

    # -- two-party SM2 (docs/two-party-sm2.md): this module holds the terminal's share ----
    # ``transport(message) -> reply`` carries one protocol message to the server and
    # returns its answer (b"" where none is expected). The share and the nonces never
    # leave the module.
    def twoparty_generate(self, container: str, transport: Transport) -> SM2PublicKey:
        """Run key generation with the server; store the share in a new container."""
        self._require_open()
        self._require_may_add_keys()
        tp = _twoparty()
        with self._lock:
            if container in self._containers:
                raise PolicyError(f"container {container!r} already exists")
        if not isinstance(container, str) or not _NAME.fullmatch(container):
            raise PolicyError("container name: 1-64 characters of A-Z a-z 0-9 . _ @ -")
        kg = tp.ClientKeyGen()
        kg3 = kg.receive_server_share(transport(kg.start()))
        share = kg.finish(transport(kg3))
        with self._transaction():  # the container and its share, in one write
            if container in self._containers:
                raise PolicyError(f"container {container!r} already exists")
            self._containers[container] = _Container(twoparty={"current": share.to_bytes()})
        return share.public_key

    def _shares(self, container: str) -> tuple[Any, Any]:
        self._require_open()
        tp = _twoparty()
        c = self._get(container)
        if "current" not in c.twoparty:
            raise KeyStoreError(f"container {container!r} has no two-party key")
        pending = c.twoparty.get("pending")
        return (
            tp.ClientShare.from_bytes(c.twoparty["current"]),
            tp.ClientShare.from_bytes(pending) if pending else None,
        )

    def twoparty_public_key(self, container: str) -> SM2PublicKey:
        return self._shares(container)[0].public_key

    def _with_share(self, container: str, run: Any) -> Any:
        """Run with the pending share first (a refresh the server may have committed),
        then settle: promote it if the server knew it, drop it if not."""
        tp = _twoparty()
        current, pending = self._shares(container)
        if pending is not None:
            try:
                out = run(pending)
            except tp.TwoPartyVersionError:
                with self._transaction():
                    self._get(container).twoparty.pop("pending", None)
            else:
                with self._transaction():
                    c = self._get(container)
                    c.twoparty["current"] = c.twoparty.pop("pending")
                return out
        return run(current)

    def twoparty_sign(
        self,
        container: str,
        message: bytes,
        transport: Transport,
        *,
        signer_id: bytes = DEFAULT_ID,
    ) -> bytes:
        """A DER signature over ``message`` made with the server; verified against the
        joint key before it is returned, and confirmed to the server (SG3)."""
        tp = _twoparty()

        def run(share: Any) -> bytes:
            signer = tp.ClientSigner(share, message, signer_id=signer_id)
            sig = signer.finish(transport(signer.start()))
            transport(signer.confirmation())
            return bytes(sig)

        return bytes(self._with_share(container, run))

    def twoparty_decrypt(self, container: str, ciphertext: bytes, transport: Transport) -> bytes:
        tp = _twoparty()

        def run(share: Any) -> bytes:
            dec = tp.ClientDecryptor(share, ciphertext)
            return bytes(dec.finish(transport(dec.start())))

        return bytes(self._with_share(container, run))

    def twoparty_refresh(self, container: str, transport: Transport) -> int:
        """Re-randomise both shares (same public key). The new share is kept as pending
        until the server acknowledges RF3; returns the new share version."""
        tp = _twoparty()
        current, pending = self._shares(container)
        if pending is not None:
            raise PolicyError("a refresh is unsettled; sign once first")
        ref = tp.ClientRefresh(current)
        rf3, new = ref.finish(transport(ref.start()))
        with self._transaction():
            self._get(container).twoparty["pending"] = new.to_bytes()
        transport(rf3)
        with self._transaction():
            c = self._get(container)
            c.twoparty["current"] = c.twoparty.pop("pending")
        return int(new.version)

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
    ) -> KeyExchange:
        """Start an SM2 key exchange as initiator with this key. Keywords as
        :class:`~mstcrypt.crypto.sm2_kex.KeyExchangeInitiator` (own_id, peer_id, klen,
        confirm, ephemeral). The private state stays in the module."""
        return self._start_exchange(KeyExchangeInitiator(self._private(handle), peer_public, **kw))

    def key_exchange_responder(
        self, handle: KeyHandle, peer_public: SM2PublicKey, **kw: Any
    ) -> KeyExchange:
        """Start an SM2 key exchange as responder with this key (see the initiator)."""
        return self._start_exchange(KeyExchangeResponder(self._private(handle), peer_public, **kw))

    def _start_exchange(self, side: KeyExchangeInitiator | KeyExchangeResponder) -> KeyExchange:
        hid = secrets.token_hex(8)
        with self._lock:
            self._exchanges[hid] = side
            while len(self._exchanges) > MAX_PENDING_EXCHANGES:
                self._exchanges.popitem(last=False)
        role = Role.INITIATOR if isinstance(side, KeyExchangeInitiator) else Role.RESPONDER
        return KeyExchange(self._id, hid, role, side.ephemeral, side.z_initiator, side.z_responder)

    def _exchange(self, hid: str, *, keep: bool) -> KeyExchangeInitiator | KeyExchangeResponder:
        self._require_open()
        with self._lock:
            side = self._exchanges.get(hid) if keep else self._exchanges.pop(hid, None)
        if side is None:
            raise KeyStoreError("the key exchange already ended or was dropped")
        return side

    def _kex_finish(
        self, hid: str, peer_ephemeral: bytes, peer_confirm: bytes | None
    ) -> tuple[bytes, bytes | None]:
        side = self._exchange(hid, keep=False)
        assert isinstance(side, KeyExchangeInitiator)
        return side.finish(peer_ephemeral, peer_confirm)

    def _kex_respond(
        self, hid: str, peer_ephemeral: bytes
    ) -> tuple[bytes, bytes | None, bytes | None]:
        side = self._exchange(hid, keep=True)
        assert isinstance(side, KeyExchangeResponder)
        try:
            r_b, s_b = side.respond(peer_ephemeral)
        except BaseException:
            self._drop_exchange(hid)
            raise
        if side.key is not None:  # no confirmation: done
            self._drop_exchange(hid)
        return r_b, s_b, side.key

    def _kex_confirm(self, hid: str, peer_confirm: bytes) -> bytes:
        side = self._exchange(hid, keep=False)
        assert isinstance(side, KeyExchangeResponder)
        return side.confirm(peer_confirm)

    def _drop_exchange(self, hid: str) -> None:
        with self._lock:
            self._exchanges.pop(hid, None)

    def _kex_session(self, key: bytes) -> SessionKeyHandle:
        self._require_open()
        return self._new_session(key)

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
