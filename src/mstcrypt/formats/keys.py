"""SM2 keys as PKCS#8 PrivateKeyInfo, SubjectPublicKeyInfo and PEM, including
password-protected PKCS#8 (PBES2) as GmSSL writes it (PBKDF2-HMAC-SM3 + SM4-CBC) and as
the OpenSSL CLI writes it (PBKDF2-HMAC-SHA256 + AES-256-CBC).

Reading accepts both algorithm forms of SM2 keys: id-ecPublicKey with the sm2p256v1
named curve (OpenSSL, GmSSL) and the bare SM2 OID 1.2.156.10197.1.301 (seen in some
CAs), plus SEC1 ``EC PRIVATE KEY``. Writing always uses id-ecPublicKey + sm2p256v1.
"""

from __future__ import annotations

import enum

from asn1crypto.core import (
    Any,
    Integer,
    Null,
    ObjectIdentifier,
    OctetBitString,
    OctetString,
    Sequence,
)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from mstcrypt.crypto import sm4
from mstcrypt.crypto.curve import SIZE, N
from mstcrypt.crypto.random import random_bytes
from mstcrypt.crypto.sm2 import SM2PrivateKey, SM2PublicKey
from mstcrypt.errors import DecodeError, DecryptionError, InvalidKeyError, UnsupportedError
from mstcrypt.formats import oids
from mstcrypt.formats._der import dump, load_strict, pem_decode, pem_encode

__all__ = [
    "KeyEncryption",
    "dump_private_key",
    "dump_public_key",
    "load_private_key",
    "load_public_key",
    "private_key_from_der",
    "private_key_to_der",
    "public_key_from_der",
    "public_key_to_der",
]


# --- ASN.1 ------------------------------------------------------------------------


class AlgorithmIdentifier(Sequence):
    _fields = [("algorithm", ObjectIdentifier), ("parameters", Any, {"optional": True})]


class SubjectPublicKeyInfo(Sequence):
    _fields = [("algorithm", AlgorithmIdentifier), ("public_key", OctetBitString)]


class ECPrivateKey(Sequence):
    _fields = [
        ("version", Integer),
        ("private_key", OctetString),
        ("parameters", ObjectIdentifier, {"explicit": 0, "optional": True}),
        ("public_key", OctetBitString, {"explicit": 1, "optional": True}),
    ]


class PrivateKeyInfo(Sequence):
    _fields = [
        ("version", Integer),
        ("algorithm", AlgorithmIdentifier),
        ("private_key", OctetString),
        ("attributes", Any, {"implicit": 0, "optional": True}),
    ]


class PBKDF2Params(Sequence):
    _fields = [
        ("salt", OctetString),
        ("iteration_count", Integer),
        ("key_length", Integer, {"optional": True}),
        ("prf", AlgorithmIdentifier, {"optional": True}),
    ]


class PBES2Params(Sequence):
    _fields = [
        ("key_derivation_func", AlgorithmIdentifier),
        ("encryption_scheme", AlgorithmIdentifier),
    ]


class EncryptedPrivateKeyInfo(Sequence):
    _fields = [("encryption_algorithm", AlgorithmIdentifier), ("encrypted_data", OctetString)]


_SM2_CURVE_DER = dump(ObjectIdentifier(oids.SM2))
_NULL_DER = dump(Null())


def _oid(value: ObjectIdentifier) -> str:
    return str(value.dotted)


def _sm2_alg() -> AlgorithmIdentifier:
    return AlgorithmIdentifier(
        {"algorithm": oids.EC_PUBLIC_KEY, "parameters": Any.load(_SM2_CURVE_DER)}
    )


def _check_alg(alg: AlgorithmIdentifier) -> None:
    oid = _oid(alg["algorithm"])
    params = alg["parameters"]
    params_der = params.dump() if params.native is not None or params.contents else None
    if oid == oids.EC_PUBLIC_KEY:
        if params_der != _SM2_CURVE_DER:
            raise UnsupportedError(
                "EC key is not on the SM2 curve (expected namedCurve 1.2.156.10197.1.301)"
            )
        return
    if oid == oids.SM2:
        if params_der not in (None, _SM2_CURVE_DER, _NULL_DER):
            raise UnsupportedError("SM2 key with unexpected algorithm parameters")
        return
    raise UnsupportedError(f"not an SM2 key: algorithm {oid}")


# --- public keys --------------------------------------------------------------------


def public_key_to_der(key: SM2PublicKey) -> bytes:
    """SubjectPublicKeyInfo DER (id-ecPublicKey + sm2p256v1, uncompressed point)."""
    return dump(SubjectPublicKeyInfo({"algorithm": _sm2_alg(), "public_key": key.to_bytes()}))


def public_key_from_der(der: bytes) -> SM2PublicKey:
    spki = load_strict(SubjectPublicKeyInfo, der, "SubjectPublicKeyInfo")
    _check_alg(spki["algorithm"])
    point = spki["public_key"].native
    if len(point) not in (33, 65):
        raise InvalidKeyError("SPKI SM2 point must be 65 (uncompressed) or 33 (compressed) bytes")
    return SM2PublicKey.from_bytes(point)


# --- private keys -------------------------------------------------------------------


def _ec_private_key(der: bytes, *, inner: bool) -> SM2PrivateKey:
    ec = load_strict(ECPrivateKey, der, "ECPrivateKey")
    if ec["version"].native != 1:
        raise DecodeError("ECPrivateKey version must be 1")
    raw = ec["private_key"].native
    if not 1 <= len(raw) <= SIZE:
        raise InvalidKeyError(f"ECPrivateKey scalar must be at most {SIZE} bytes")
    params = ec["parameters"]
    if params.native is not None and params.dotted != oids.SM2:
        raise UnsupportedError(f"EC private key is on curve {params.dotted}, not SM2")
    if not inner and params.native is None:
        raise DecodeError("SEC1 EC PRIVATE KEY without curve parameters")
    d = int.from_bytes(raw, "big")
    if not 1 <= d <= N - 2:
        raise InvalidKeyError("SM2 private key outside [1, n-2]")
    key = SM2PrivateKey(d)
    pub = ec["public_key"].native
    if pub is not None and SM2PublicKey.from_bytes(pub) != key.public_key():
        raise InvalidKeyError("ECPrivateKey public key does not match the private key")
    return key


def private_key_to_der(key: SM2PrivateKey) -> bytes:
    """PKCS#8 PrivateKeyInfo DER, as OpenSSL writes it (ECPrivateKey with the public key)."""
    ec = ECPrivateKey(
        {
            "version": 1,
            "private_key": key.private_bytes(),
            "public_key": key.public_key().to_bytes(),
        }
    )
    return dump(PrivateKeyInfo({"version": 0, "algorithm": _sm2_alg(), "private_key": dump(ec)}))


def private_key_from_der(der: bytes) -> SM2PrivateKey:
    info = load_strict(PrivateKeyInfo, der, "PrivateKeyInfo")
    if info["version"].native not in (0, 1):
        raise DecodeError("PrivateKeyInfo version must be 0 or 1")
    _check_alg(info["algorithm"])
    return _ec_private_key(info["private_key"].native, inner=True)


# --- password-based encryption (PBES2) ----------------------------------------------


class KeyEncryption(enum.StrEnum):
    #: PBES2 + PBKDF2-HMAC-SM3 (OID 1.2.156.10197.1.401.2) + SM4-CBC, as GmSSL writes.
    GMSSL = "gmssl"
    #: PBES2 + PBKDF2-HMAC-SHA256 + AES-256-CBC, the OpenSSL 3 CLI default.
    OPENSSL = "openssl"


_PRFS = {
    oids.HMAC_SHA1: hashes.SHA1,
    oids.HMAC_SHA224: hashes.SHA224,
    oids.HMAC_SHA256: hashes.SHA256,
    oids.HMAC_SHA384: hashes.SHA384,
    oids.HMAC_SHA512: hashes.SHA512,
    oids.HMAC_SM3: hashes.SM3,
    oids.HMAC_SM3_OPENSSL: hashes.SM3,
}
_CIPHERS = {  # oid -> (name, key length)
    oids.SM4_CBC: ("sm4", 16),
    oids.SM4: ("sm4", 16),
    oids.AES128_CBC: ("aes", 16),
    oids.AES192_CBC: ("aes", 24),
    oids.AES256_CBC: ("aes", 32),
}
MAX_ITERATIONS = 10_000_000
DEFAULT_ITERATIONS = 100_000


def _cbc(name: str, key: bytes, iv: bytes, data: bytes, encrypt: bool) -> bytes:
    if name == "sm4":
        if encrypt:
            return sm4.cbc_encrypt(key, iv, data)
        return sm4.cbc_decrypt(key, iv, data)
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    cipher = Cipher(algorithms.AES(key), modes.CBC(iv))
    if encrypt:
        p = padding.PKCS7(128).padder()
        e = cipher.encryptor()
        return e.update(p.update(data) + p.finalize()) + e.finalize()
    if not data or len(data) % 16:
        raise DecryptionError("encrypted key length is not a multiple of the block size")
    d = cipher.decryptor()
    pt = d.update(data) + d.finalize()
    u = padding.PKCS7(128).unpadder()
    try:
        return u.update(pt) + u.finalize()
    except ValueError:
        raise DecryptionError("AES-CBC: invalid padding") from None


def _password(password: bytes | str) -> bytes:
    return password.encode("utf-8") if isinstance(password, str) else bytes(password)


def encrypt_private_key(
    key: SM2PrivateKey,
    password: bytes | str,
    scheme: KeyEncryption | str = KeyEncryption.GMSSL,
    *,
    iterations: int = DEFAULT_ITERATIONS,
) -> bytes:
    """EncryptedPrivateKeyInfo DER protecting ``key`` with ``password``."""
    try:
        scheme = KeyEncryption(scheme)
    except ValueError:
        raise UnsupportedError(
            f"unknown key encryption scheme {scheme!r}; expected gmssl or openssl"
        ) from None
    pw = _password(password)
    if not pw:
        raise UnsupportedError("an empty password is not allowed")
    salt = random_bytes(16)
    iv = random_bytes(16)
    if scheme is KeyEncryption.GMSSL:
        prf_oid, hash_cls, cipher_oid, name, klen = (
            oids.HMAC_SM3,
            hashes.SM3,
            oids.SM4_CBC,
            "sm4",
            16,
        )
    else:
        prf_oid, hash_cls, cipher_oid, name, klen = (
            oids.HMAC_SHA256,
            hashes.SHA256,
            oids.AES256_CBC,
            "aes",
            32,
        )
    kek = PBKDF2HMAC(hash_cls(), klen, salt, iterations).derive(pw)
    enc = _cbc(name, kek, iv, private_key_to_der(key), True)
    if scheme is KeyEncryption.GMSSL:
        # GmSSL >= 3.1 writes keyLength and an HMAC-SM3 PRF without parameters, and
        # rejects a NULL there.
        prf = AlgorithmIdentifier({"algorithm": prf_oid})
        kdf_params = PBKDF2Params(
            {"salt": salt, "iteration_count": iterations, "key_length": klen, "prf": prf}
        )
    else:
        prf = AlgorithmIdentifier({"algorithm": prf_oid, "parameters": Any.load(_NULL_DER)})
        kdf_params = PBKDF2Params({"salt": salt, "iteration_count": iterations, "prf": prf})
    pbes2 = PBES2Params(
        {
            "key_derivation_func": AlgorithmIdentifier(
                {"algorithm": oids.PBKDF2, "parameters": Any.load(dump(kdf_params))}
            ),
            "encryption_scheme": AlgorithmIdentifier(
                {"algorithm": cipher_oid, "parameters": Any.load(dump(OctetString(iv)))}
            ),
        }
    )
    return dump(
        EncryptedPrivateKeyInfo(
            {
                "encryption_algorithm": AlgorithmIdentifier(
                    {"algorithm": oids.PBES2, "parameters": Any.load(dump(pbes2))}
                ),
                "encrypted_data": enc,
            }
        )
    )


def decrypt_private_key(der: bytes, password: bytes | str) -> SM2PrivateKey:
    """Open an EncryptedPrivateKeyInfo (PBES2 with PBKDF2; SM4-CBC or AES-CBC)."""
    epki = load_strict(EncryptedPrivateKeyInfo, der, "EncryptedPrivateKeyInfo")
    alg = epki["encryption_algorithm"]
    if _oid(alg["algorithm"]) != oids.PBES2:
        raise UnsupportedError(
            f"encrypted key uses {_oid(alg['algorithm'])}; only PBES2 is supported"
        )
    pbes2 = load_strict(PBES2Params, alg["parameters"].dump(), "PBES2-params")
    kdf_alg = pbes2["key_derivation_func"]
    if _oid(kdf_alg["algorithm"]) != oids.PBKDF2:
        raise UnsupportedError(f"PBES2 key derivation {_oid(kdf_alg['algorithm'])} unsupported")
    kdf = load_strict(PBKDF2Params, kdf_alg["parameters"].dump(), "PBKDF2-params")
    prf_oid = oids.HMAC_SHA1 if kdf["prf"].native is None else _oid(kdf["prf"]["algorithm"])
    if prf_oid not in _PRFS:
        raise UnsupportedError(f"PBKDF2 PRF {prf_oid} unsupported")
    iterations = kdf["iteration_count"].native
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise DecodeError(f"PBKDF2 iteration count {iterations} outside [1, {MAX_ITERATIONS}]")
    salt = kdf["salt"].native
    if not salt:
        raise DecodeError("PBKDF2 salt is empty")
    enc_alg = pbes2["encryption_scheme"]
    cipher_oid = _oid(enc_alg["algorithm"])
    if cipher_oid not in _CIPHERS:
        raise UnsupportedError(f"PBES2 cipher {cipher_oid} unsupported")
    name, klen = _CIPHERS[cipher_oid]
    if kdf["key_length"].native not in (None, klen):
        raise DecodeError("PBKDF2 keyLength does not match the cipher")
    iv = load_strict(OctetString, enc_alg["parameters"].dump(), "cipher IV").native
    if len(iv) != 16:
        raise DecodeError("PBES2 cipher IV must be 16 bytes")
    kek = PBKDF2HMAC(_PRFS[prf_oid](), klen, salt, iterations).derive(_password(password))
    try:
        inner = _cbc(name, kek, iv, epki["encrypted_data"].native, False)
        return private_key_from_der(inner)
    except (DecryptionError, DecodeError):
        raise DecryptionError("wrong password or corrupted encrypted private key") from None


# --- PEM / auto-detecting loaders ---------------------------------------------------


def load_private_key(data: bytes, password: bytes | str | None = None) -> SM2PrivateKey:
    """Load a private key from PEM (PRIVATE KEY, ENCRYPTED PRIVATE KEY, EC PRIVATE KEY) or
    DER (PKCS#8, encrypted PKCS#8)."""
    if not isinstance(data, bytes | bytearray | memoryview | str):
        raise DecodeError("key data must be bytes")
    raw = data.encode("ascii", "replace") if isinstance(data, str) else bytes(data)
    if raw.lstrip().startswith(b"-----BEGIN"):
        label, der = pem_decode(
            raw, ("ENCRYPTED PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "SM2 PRIVATE KEY")
        )
        if label in ("EC PRIVATE KEY", "SM2 PRIVATE KEY"):  # SEC1 (`openssl ec` says SM2)
            return _ec_private_key(der, inner=False)
        encrypted = label == "ENCRYPTED PRIVATE KEY"
    else:
        der = raw
        try:
            load_strict(EncryptedPrivateKeyInfo, der, "EncryptedPrivateKeyInfo")
            encrypted = True
        except DecodeError:
            encrypted = False
    if encrypted:
        if password is None:
            raise DecryptionError("the private key is encrypted: a password is needed")
        return decrypt_private_key(der, password)
    if password is not None:
        raise DecodeError("a password was given but the private key is not encrypted")
    return private_key_from_der(der)


def dump_private_key(
    key: SM2PrivateKey,
    *,
    encoding: str = "pem",
    password: bytes | str | None = None,
    scheme: KeyEncryption | str = KeyEncryption.GMSSL,
    iterations: int = DEFAULT_ITERATIONS,
) -> bytes:
    """PKCS#8, encrypted with PBES2 when ``password`` is given, as PEM or DER."""
    if password is None:
        der, label = private_key_to_der(key), "PRIVATE KEY"
    else:
        der = encrypt_private_key(key, password, scheme, iterations=iterations)
        label = "ENCRYPTED PRIVATE KEY"
    return _encode(der, label, encoding)


def load_public_key(data: bytes) -> SM2PublicKey:
    """Load a SubjectPublicKeyInfo from PEM (PUBLIC KEY) or DER."""
    if not isinstance(data, bytes | bytearray | memoryview | str):
        raise DecodeError("key data must be bytes")
    raw = data.encode("ascii", "replace") if isinstance(data, str) else bytes(data)
    if raw.lstrip().startswith(b"-----BEGIN"):
        _, raw = pem_decode(raw, ("PUBLIC KEY",))
    return public_key_from_der(raw)


def dump_public_key(key: SM2PublicKey, *, encoding: str = "pem") -> bytes:
    return _encode(public_key_to_der(key), "PUBLIC KEY", encoding)


def _encode(der: bytes, label: str, encoding: str) -> bytes:
    if encoding == "der":
        return der
    if encoding == "pem":
        return pem_encode(der, label)
    raise UnsupportedError(f"unknown key encoding {encoding!r}; expected pem or der")
