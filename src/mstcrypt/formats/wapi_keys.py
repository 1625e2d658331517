"""Private keys on the WAPI 192-bit curve (standard WAPI suite) at rest.

PKCS#8 as for SM2 keys (``mstcrypt.formats.keys``) with the curve OID
1.2.156.11235.1.1.2.1 in the algorithm parameters, always encrypted:
EncryptedPrivateKeyInfo with PBES2 = PBKDF2-HMAC-SM3 + SM4-CBC (the GmSSL scheme),
PEM label ``ENCRYPTED PRIVATE KEY``.
"""

from __future__ import annotations

from asn1crypto.core import Any, ObjectIdentifier, OctetString

from mstcrypt.crypto import sm4, wapi192
from mstcrypt.crypto.random import random_bytes
from mstcrypt.crypto.sm3 import pbkdf2_hmac_sm3
from mstcrypt.errors import DecodeError, DecryptionError, InvalidKeyError, UnsupportedError
from mstcrypt.formats import oids
from mstcrypt.formats._der import dump, load_strict, pem_decode, pem_encode
from mstcrypt.formats.keys import (
    AlgorithmIdentifier,
    ECPrivateKey,
    EncryptedPrivateKeyInfo,
    PBES2Params,
    PBKDF2Params,
    PrivateKeyInfo,
)

__all__ = ["dump_wapi_private_key", "load_wapi_private_key"]

ITERATIONS = 100_000
MAX_ITERATIONS = 10_000_000


def _alg() -> AlgorithmIdentifier:
    return AlgorithmIdentifier(
        {
            "algorithm": oids.EC_PUBLIC_KEY,
            "parameters": Any.load(dump(ObjectIdentifier(wapi192.CURVE_OID))),
        }
    )


def dump_wapi_private_key(
    key: wapi192.PrivateKey, password: bytes | str, *, iterations: int = ITERATIONS
) -> bytes:
    pw = password.encode("utf-8") if isinstance(password, str) else bytes(password)
    if not pw:
        raise UnsupportedError("an empty password is not allowed")
    ec = ECPrivateKey(
        {"version": 1, "private_key": key.to_bytes(), "public_key": key.public_key().to_bytes()}
    )
    inner = dump(PrivateKeyInfo({"version": 0, "algorithm": _alg(), "private_key": dump(ec)}))
    salt, iv = random_bytes(16), random_bytes(16)
    kek = pbkdf2_hmac_sm3(pw, salt, iterations, 16)
    prf = AlgorithmIdentifier({"algorithm": oids.HMAC_SM3})
    kdf = PBKDF2Params({"salt": salt, "iteration_count": iterations, "key_length": 16, "prf": prf})
    pbes2 = PBES2Params(
        {
            "key_derivation_func": AlgorithmIdentifier(
                {"algorithm": oids.PBKDF2, "parameters": Any.load(dump(kdf))}
            ),
            "encryption_scheme": AlgorithmIdentifier(
                {"algorithm": oids.SM4_CBC, "parameters": Any.load(dump(OctetString(iv)))}
            ),
        }
    )
    epki = EncryptedPrivateKeyInfo(
        {
            "encryption_algorithm": AlgorithmIdentifier(
                {"algorithm": oids.PBES2, "parameters": Any.load(dump(pbes2))}
            ),
            "encrypted_data": sm4.cbc_encrypt(kek, iv, inner),
        }
    )
    return pem_encode(dump(epki), "ENCRYPTED PRIVATE KEY")


def load_wapi_private_key(data: bytes, password: bytes | str) -> wapi192.PrivateKey:
    """Open a key written by :func:`dump_wapi_private_key` (PBES2, HMAC-SM3, SM4-CBC)."""
    _, der = pem_decode(data, ("ENCRYPTED PRIVATE KEY",))
    epki = load_strict(EncryptedPrivateKeyInfo, der, "EncryptedPrivateKeyInfo")
    alg = epki["encryption_algorithm"]
    if alg["algorithm"].dotted != oids.PBES2:
        raise UnsupportedError("only PBES2-encrypted WAPI keys are supported")
    pbes2 = load_strict(PBES2Params, alg["parameters"].dump(), "PBES2-params")
    kdf_alg, enc_alg = pbes2["key_derivation_func"], pbes2["encryption_scheme"]
    if kdf_alg["algorithm"].dotted != oids.PBKDF2 or enc_alg["algorithm"].dotted != oids.SM4_CBC:
        raise UnsupportedError("WAPI keys use PBKDF2 and SM4-CBC")
    kdf = load_strict(PBKDF2Params, kdf_alg["parameters"].dump(), "PBKDF2-params")
    if kdf["prf"].native is None or kdf["prf"]["algorithm"].dotted != oids.HMAC_SM3:
        raise UnsupportedError("WAPI keys use PBKDF2 with HMAC-SM3")
    iterations = kdf["iteration_count"].native
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise DecodeError("PBKDF2 iteration count out of range")
    if kdf["key_length"].native not in (None, 16):
        raise DecodeError("PBKDF2 keyLength must be 16")
    iv = load_strict(OctetString, enc_alg["parameters"].dump(), "cipher IV").native
    salt = kdf["salt"].native
    if len(iv) != 16 or not salt:
        raise DecodeError("PBES2: bad IV or empty salt")
    pw = password.encode("utf-8") if isinstance(password, str) else bytes(password)
    kek = pbkdf2_hmac_sm3(pw, salt, iterations, 16)
    try:
        inner = sm4.cbc_decrypt(kek, iv, epki["encrypted_data"].native)
        info = load_strict(PrivateKeyInfo, inner, "PrivateKeyInfo")
    except (DecryptionError, DecodeError):
        raise DecryptionError("wrong password or corrupted encrypted private key") from None
    a = info["algorithm"]
    if (
        a["algorithm"].dotted != oids.EC_PUBLIC_KEY
        or dump(a["parameters"]) != wapi192.CURVE_OID_DER
    ):
        raise UnsupportedError("not a key on the WAPI 192-bit curve")
    ec = load_strict(ECPrivateKey, info["private_key"].native, "ECPrivateKey")
    if ec["version"].native != 1 or len(ec["private_key"].native) != wapi192.SIZE:
        raise DecodeError("ECPrivateKey: version 1 and a 24-byte scalar expected")
    key = wapi192.PrivateKey.from_bytes(ec["private_key"].native)
    pub = ec["public_key"].native
    if pub is not None and pub != key.public_key().to_bytes():
        raise InvalidKeyError("ECPrivateKey public key does not match the private key")
    return key
