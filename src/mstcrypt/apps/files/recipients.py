"""Who a file is encrypted to (:class:`Recipient`) and who decrypts it (identities).

A recipient is an SM2 encryption public key P_M, named in the stanza by SM3 of the key
and, when it came from a certificate, by the certificate's SM3 fingerprint. An identity
unwraps the stanza that names its key: :class:`ModuleIdentity` asks a
:class:`~mstcrypt.module.CryptoModule` (the private key d_M never leaves it);
:class:`KeyIdentity` holds an :class:`SM2PrivateKey` and exists for services whose key
is already unwrapped inside the SS-CC (the KMC's file-recovery key).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from mstcrypt.apps.files.errors import StanzaUnwrapError
from mstcrypt.apps.files.format import FEK_SIZE, Stanza, StanzaKind
from mstcrypt.crypto.sm2 import SM2PrivateKey, SM2PublicKey
from mstcrypt.errors import DecryptionError, KeyStoreError, PolicyError
from mstcrypt.module.base import CryptoModule, KeyHandle, KeyUsage
from mstcrypt.pki import Certificate

__all__ = [
    "Identity",
    "KeyIdentity",
    "ModuleIdentity",
    "Recipient",
    "RecipientLike",
    "identities_of",
    "recipient",
]

_ENC_USAGES = frozenset({"key_encipherment", "data_encipherment"})


@dataclass(frozen=True)
class Recipient:
    """An SM2 encryption public key to encrypt a file to."""

    public_key: SM2PublicKey
    certificate_fingerprint: bytes | None = None
    kind: StanzaKind = StanzaKind.RECIPIENT

    @classmethod
    def from_certificate(
        cls,
        cert: Certificate,
        *,
        escrow: bool = False,
        at: datetime | None = None,
        check_validity: bool = True,
    ) -> Recipient:
        """A recipient from its *encryption* certificate (GM/T 0034 dual certificates:
        the key usage must allow key or data encipherment). The certificate must be
        within its validity period (``at``, default now) unless ``check_validity`` is
        false. Path validation (chain, CRL) is the caller's job, see
        :func:`mstcrypt.pki.validate_path`."""
        if not isinstance(cert, Certificate):
            raise PolicyError("from_certificate needs a Certificate")
        if cert.key_usage and not cert.key_usage & _ENC_USAGES:
            raise PolicyError(
                f"certificate {cert.subject_str!r} is not an encryption certificate "
                f"(key usage: {', '.join(sorted(cert.key_usage))})"
            )
        if check_validity and not cert.is_valid_at(at or datetime.now(UTC)):
            raise PolicyError(f"certificate {cert.subject_str!r} is not valid now")
        return cls(
            cert.public_key,
            bytes.fromhex(cert.fingerprint),
            StanzaKind.ESCROW if escrow else StanzaKind.RECIPIENT,
        )

    @classmethod
    def from_public_key(cls, key: SM2PublicKey, *, escrow: bool = False) -> Recipient:
        if not isinstance(key, SM2PublicKey):
            raise PolicyError("from_public_key needs an SM2PublicKey")
        return cls(key, None, StanzaKind.ESCROW if escrow else StanzaKind.RECIPIENT)

    @property
    def key_id(self) -> bytes:
        return self.public_key.fingerprint()

    def as_escrow(self) -> Recipient:
        return Recipient(self.public_key, self.certificate_fingerprint, StanzaKind.ESCROW)

    def wrap(self, fek: bytes) -> Stanza:
        """A stanza holding ``fek`` SM2-encrypted (DER SM2Cipher) to this key."""
        if len(fek) != FEK_SIZE:
            raise PolicyError("the file key must be 16 bytes")
        return Stanza(
            self.kind, self.key_id, self.public_key.encrypt(fek), self.certificate_fingerprint
        )

    def __repr__(self) -> str:
        return f"Recipient({self.kind.name.lower()}, key_id={self.key_id[:8].hex()}…)"


RecipientLike = Recipient | Certificate | SM2PublicKey


def recipient(value: RecipientLike, *, escrow: bool = False) -> Recipient:
    """Normalise a certificate, public key or Recipient."""
    if isinstance(value, Recipient):
        return value.as_escrow() if escrow else value
    if isinstance(value, Certificate):
        return Recipient.from_certificate(value, escrow=escrow)
    if isinstance(value, SM2PublicKey):
        return Recipient.from_public_key(value, escrow=escrow)
    raise PolicyError(
        f"a recipient must be a Certificate, SM2PublicKey or Recipient, not {type(value).__name__}"
    )


@runtime_checkable
class Identity(Protocol):
    """Something that can unwrap a stanza naming ``key_id``."""

    @property
    def key_id(self) -> bytes: ...

    def unwrap(self, wrapped: bytes) -> bytes: ...


def _unwrapped(fek: bytes) -> bytes:
    if len(fek) != FEK_SIZE:  # cannot happen: the parser checked |C2| = 16
        raise StanzaUnwrapError("stanza-decrypt-failed", "stanza does not hold a 16-byte key")
    return fek


class ModuleIdentity:
    """An encryption key inside a cryptographic module (MST-CC soft token or SS-CC)."""

    __slots__ = ("_key_id", "handle", "module")

    def __init__(self, module: CryptoModule, handle: KeyHandle) -> None:
        if not isinstance(module, CryptoModule):
            raise PolicyError("ModuleIdentity needs a CryptoModule")
        if not isinstance(handle, KeyHandle):
            raise PolicyError("ModuleIdentity needs a KeyHandle")
        if handle.usage is not KeyUsage.ENCRYPT:
            raise PolicyError(
                f"file decryption needs the container's encryption key, not its "
                f"{handle.usage.value} key"
            )
        self.module, self.handle = module, handle
        self._key_id = handle.public_key.fingerprint()

    @property
    def key_id(self) -> bytes:
        return self._key_id

    def unwrap(self, wrapped: bytes) -> bytes:
        try:
            return _unwrapped(self.module.decrypt(self.handle, wrapped))
        except DecryptionError:
            raise StanzaUnwrapError(
                "stanza-decrypt-failed",
                f"stanza for key {self._key_id[:8].hex()}… does not decrypt (SM2 C3 "
                "mismatch): the stanza was modified",
            ) from None

    def __repr__(self) -> str:
        return f"ModuleIdentity({self.handle!r})"


class KeyIdentity:
    """An SM2 private key already inside a service's security boundary (e.g. the KMC's
    file-recovery key unwrapped by the SS-CC). Terminals use :class:`ModuleIdentity`."""

    __slots__ = ("_key", "_key_id")

    def __init__(self, key: SM2PrivateKey) -> None:
        if not isinstance(key, SM2PrivateKey):
            raise PolicyError("KeyIdentity needs an SM2PrivateKey")
        self._key = key
        self._key_id = key.public_key().fingerprint()

    @property
    def key_id(self) -> bytes:
        return self._key_id

    def unwrap(self, wrapped: bytes) -> bytes:
        try:
            return _unwrapped(self._key.decrypt(wrapped))
        except DecryptionError:
            raise StanzaUnwrapError(
                "stanza-decrypt-failed",
                f"stanza for key {self._key_id[:8].hex()}… does not decrypt (SM2 C3 "
                "mismatch): the stanza was modified",
            ) from None

    def __repr__(self) -> str:
        return f"KeyIdentity(key_id={self._key_id[:8].hex()}…)"


IdentityLike = Identity | CryptoModule | Sequence[Identity]


def identities_of(who: object, handle: KeyHandle | None = None) -> list[Identity]:
    """Normalise the ``(module, handle)`` arguments of the public API: a module and a
    handle; a module alone (every container's encryption key is tried); an identity;
    or a sequence of identities."""
    if isinstance(who, CryptoModule):
        if handle is not None:
            return [ModuleIdentity(who, handle)]
        found: list[Identity] = []
        for name in who.list_containers():
            try:
                h = who.key(name, KeyUsage.ENCRYPT)
            except KeyStoreError:
                continue
            found.append(ModuleIdentity(who, h))
        if not found:
            raise KeyStoreError("the module holds no encryption key")
        return found
    if handle is not None:
        raise PolicyError("a key handle is only meaningful together with its CryptoModule")
    if isinstance(who, SM2PrivateKey):
        raise PolicyError(
            "pass a CryptoModule and handle (or KeyIdentity(key) for a service key), "
            "not a bare private key"
        )
    if isinstance(who, Identity):
        return [who]
    if isinstance(who, Iterable) and not isinstance(who, bytes | str):
        out = list(who)
        if out and all(isinstance(i, Identity) for i in out):
            return out
    raise PolicyError("decryption needs a CryptoModule (and handle) or Identity objects")
