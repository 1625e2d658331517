"""The two WAI algorithm suites and the key hierarchy they share.

* ``STANDARD`` (GB 15629.11): ECDSA/ECDH on the WAPI 192-bit curve
  (OID 1.2.156.11235.1.1.2.1), SHA-256, HMAC-SHA256, KD-HMAC-SHA256; hash id 1,
  signature id 1 ("ECDSA-192") in the signature algorithm block.
* ``SM`` (our mapping, no standard exists; docs/wapi.md): SM2 signatures with Z over the
  default ID, ECDH on the SM2 curve, SM3, HMAC-SM3, KD-HMAC-SM3; hash id 2, signature
  id 2, curve OID 1.2.156.10197.1.301; AKM selector 00-14-72-F1 in the WAPI IE.

KD-HMAC-H(key, text, L): out_1 = HMAC-H(key, text), out_{i+1} = HMAC-H(key, out_i);
concatenated and truncated to L bytes (not HKDF, not a counter-mode KDF).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from mstcrypt.crypto import _der, wapi192
from mstcrypt.crypto.hazmat import ec as sm2_ec
from mstcrypt.crypto.sm2 import SM2PrivateKey, SM2PublicKey
from mstcrypt.crypto.sm3 import hmac_sm3, sm3
from mstcrypt.errors import DecodeError, MstCryptError, VerificationError
from mstcrypt.protocols.wai import messages as m
from mstcrypt.protocols.wai.errors import WaiDecodeError, WaiVerifyError

__all__ = [
    "BK_LABEL",
    "MSK_LABEL",
    "PSK_LABEL",
    "SM",
    "STANDARD",
    "USK_LABEL",
    "CertInfo",
    "Signer",
    "Suite",
    "UnicastKeys",
    "cert_info",
    "suite_for_akm",
]

BK_LABEL = b"base key expansion for key and additional nonce"
USK_LABEL = b"pairwise key expansion for unicast and additional keys and nonce"
MSK_LABEL = b"multicast or station key expansion for station unicast and multicast and broadcast"
PSK_LABEL = b"preshared key expansion for authentication and key negotiation"

SM2_CURVE_OID_DER = bytes.fromhex("06082a811ccf5501822d")
_EC_PUBLIC_KEY_OID = bytes.fromhex("2a8648ce3d0201")


class Signer(Protocol):
    """Whatever holds the private key (memory, soft token, HSM): returns the WAI
    signature value (r‖s) over ``data`` for its suite."""

    def sign(self, data: bytes) -> bytes: ...


@dataclass(frozen=True)
class CertInfo:
    """What WAI needs from an X.509 certificate: its identity and its public point."""

    der: bytes
    identity: m.Identity
    curve_oid_der: bytes
    public_point: bytes
    tbs: bytes
    signature_alg: bytes
    signature: bytes


def cert_info(der: bytes) -> CertInfo:
    """Strict DER walk of an X.509 certificate: subject, issuer, serial (the WAI identity,
    subject ‖ issuer ‖ serial, each a whole DER TLV) and the EC public key."""
    try:
        cert, end = _der.read_tlv(der, 0, 0x30, "certificate")
        if end != len(der):
            raise DecodeError("certificate: trailing bytes")
        tbs, p = _der.read_tlv(cert, 0, 0x30, "tbsCertificate")
        tbs_tlv = cert[:p]
        alg, p = _der.read_tlv(cert, p, 0x30, "signatureAlgorithm")
        sig, p = _der.read_tlv(cert, p, 0x03, "signature")
        if p != len(cert):
            raise DecodeError("certificate: trailing fields")
        q = 0
        if tbs and tbs[0] == 0xA0:
            _, q = _der.read_tlv(tbs, 0, 0xA0, "version")
        start = q
        _, q = _der.read_tlv(tbs, q, 0x02, "serialNumber")
        serial = tbs[start:q]
        _, q = _der.read_tlv(tbs, q, 0x30, "signature")
        start = q
        _, q = _der.read_tlv(tbs, q, 0x30, "issuer")
        issuer = tbs[start:q]
        _, q = _der.read_tlv(tbs, q, 0x30, "validity")
        start = q
        _, q = _der.read_tlv(tbs, q, 0x30, "subject")
        subject = tbs[start:q]
        spki, q = _der.read_tlv(tbs, q, 0x30, "subjectPublicKeyInfo")
        algid, r = _der.read_tlv(spki, 0, 0x30, "algorithm")
        bits, r = _der.read_tlv(spki, r, 0x03, "subjectPublicKey")
        oid, s = _der.read_tlv(algid, 0, 0x06, "algorithm OID")
        if oid != _EC_PUBLIC_KEY_OID:
            raise DecodeError("certificate: public key is not an EC key")
        curve = algid[s:]
        _der.read_tlv(curve, 0, 0x06, "namedCurve")
        if not bits or bits[0] != 0:
            raise DecodeError("certificate: public key BIT STRING has unused bits")
    except DecodeError as e:
        raise WaiDecodeError(f"WAI certificate: {e}") from None
    return CertInfo(der, m.Identity(subject + issuer + serial), curve, bits[1:], tbs_tlv, alg, sig)


@dataclass(frozen=True)
class UnicastKeys:
    uek: bytes
    uck: bytes
    mak: bytes
    kek: bytes
    next_n_ae: bytes

    def __repr__(self) -> str:
        return "UnicastKeys(<secret>)"


class Suite:
    """An algorithm suite: hash, HMAC, KD, signatures and ECDH with their wire numbers."""

    def __init__(
        self,
        name: str,
        akm: bytes,
        curve_oid_der: bytes,
        hash_alg: int,
        sig_alg: int,
        hash_fn: Callable[[bytes], bytes],
        hmac_fn: Callable[[bytes, bytes], bytes],
    ) -> None:
        self.name = name
        self.akm = akm
        self.curve_oid_der = curve_oid_der
        self.hash_alg = hash_alg
        self.sig_alg = sig_alg
        self._hash = hash_fn
        self._hmac = hmac_fn

    def __repr__(self) -> str:
        return f"wai.Suite({self.name})"

    # -- symmetric --------------------------------------------------------------
    def hash(self, data: bytes) -> bytes:
        return self._hash(data)

    def hmac(self, key: bytes, data: bytes) -> bytes:
        return self._hmac(key, data)

    def kd(self, key: bytes, text: bytes, length: int) -> bytes:
        out = b""
        block = text
        while len(out) < length:
            block = self._hmac(key, block)
            out += block
        return out[:length]

    def mic(self, mak: bytes, data: bytes) -> bytes:
        return self._hmac(mak, data)[: m.MIC_SIZE]

    def check_mic(self, mak: bytes, data: bytes, mic: bytes) -> None:
        if not hmac.compare_digest(self.mic(mak, data), mic):
            raise WaiVerifyError("WAI message MIC does not verify")

    # -- key hierarchy ----------------------------------------------------------
    def derive_bk(self, shared_x: bytes, n_ae: bytes, n_asue: bytes) -> tuple[bytes, bytes]:
        """BK(16), and the first AE challenge = H(seed) where BK ‖ seed = KD(x, N_AE ‖
        N_ASUE ‖ label, 48)."""
        out = self.kd(shared_x, n_ae + n_asue + BK_LABEL, 48)
        return out[:16], self.hash(out[16:])

    def bkid(self, bk: bytes, addid: bytes) -> bytes:
        return self.kd(bk, addid, 16)

    def derive_usk(self, bk: bytes, addid: bytes, n_ae: bytes, n_asue: bytes) -> UnicastKeys:
        out = self.kd(bk, addid + n_ae + n_asue + USK_LABEL, 96)
        return UnicastKeys(out[:16], out[16:32], out[32:48], out[48:64], self.hash(out[64:]))

    def derive_msk(self, nmk: bytes) -> tuple[bytes, bytes]:
        """MEK(16), MCK(16) = KD(NMK, label, 32)."""
        out = self.kd(nmk, MSK_LABEL, 32)
        return out[:16], out[16:]

    # -- asymmetric ------------------------------------------------------------
    def ecdh_params(self) -> m.EcdhParams:
        return m.EcdhParams(self.curve_oid_der)

    def new_ephemeral(self) -> tuple[Any, bytes]:
        raise NotImplementedError

    def ecdh(self, private: Any, peer_public: bytes) -> bytes:
        raise NotImplementedError

    def check_public(self, public: bytes) -> None:
        """Raise WaiVerifyError unless ``public`` is an uncompressed point of the curve."""
        raise NotImplementedError

    def verify(self, info: CertInfo, data: bytes, value: bytes) -> None:
        raise NotImplementedError

    def signature_attr(self, identity: m.Identity, value: bytes) -> m.SignatureAttr:
        return m.SignatureAttr(identity, self.hash_alg, self.sig_alg, self.curve_oid_der, value)

    def check_signature_attr(self, attr: m.SignatureAttr, info: CertInfo, data: bytes) -> None:
        """The signature block names this suite's algorithms and the signer ``info``,
        and its value verifies over ``data`` with the certificate's key."""
        if (attr.hash_alg, attr.sig_alg, attr.param_id, attr.param) != (
            self.hash_alg,
            self.sig_alg,
            1,
            self.curve_oid_der,
        ):
            raise WaiVerifyError(f"signature algorithm is not the {self.name} suite's")
        if attr.identity != info.identity:
            raise WaiVerifyError("signature identity does not match the signer's certificate")
        if info.curve_oid_der != self.curve_oid_der:
            raise WaiVerifyError(f"certificate key is not on the {self.name} suite's curve")
        try:
            self.verify(info, data, attr.value)
        except (VerificationError, DecodeError) as e:
            raise WaiVerifyError(f"signature does not verify: {e}") from None


class _StandardSuite(Suite):
    def new_ephemeral(self) -> tuple[Any, bytes]:
        k = wapi192.PrivateKey.generate()
        return k, k.public_key().to_bytes()

    def ecdh(self, private: Any, peer_public: bytes) -> bytes:
        try:
            return private.exchange(wapi192.PublicKey.from_bytes(peer_public))  # type: ignore[no-any-return]
        except DecodeError as e:
            raise WaiVerifyError(f"peer ECDH key: {e}") from None

    def verify(self, info: CertInfo, data: bytes, value: bytes) -> None:
        wapi192.PublicKey.from_bytes(info.public_point).verify(value, data)

    def check_public(self, public: bytes) -> None:
        try:
            wapi192.PublicKey.from_bytes(public)
        except DecodeError as e:
            raise WaiVerifyError(f"ECDH key: {e}") from None


class _SmSuite(Suite):
    def new_ephemeral(self) -> tuple[Any, bytes]:
        k = SM2PrivateKey.generate()
        return k, k.public_key().to_bytes()

    def ecdh(self, private: Any, peer_public: bytes) -> bytes:
        try:
            pt = sm2_ec.Point.from_bytes(peer_public)
        except DecodeError as e:
            raise WaiVerifyError(f"peer ECDH key: {e}") from None
        if len(peer_public) != 65:
            raise WaiVerifyError("peer ECDH key: expected the 65-byte uncompressed form")
        return (pt * private.private_int()).x.to_bytes(32, "big")

    def verify(self, info: CertInfo, data: bytes, value: bytes) -> None:
        SM2PublicKey.from_bytes(info.public_point).verify(value, data, encoding="raw")

    def check_public(self, public: bytes) -> None:
        if len(public) != 65 or public[0] != 4:
            raise WaiVerifyError("ECDH key: expected the 65-byte uncompressed form")
        try:
            sm2_ec.Point.from_bytes(public)
        except DecodeError as e:
            raise WaiVerifyError(f"ECDH key: {e}") from None


STANDARD: Suite = _StandardSuite(
    "standard",
    m.AKM_CERT,
    wapi192.CURVE_OID_DER,
    1,
    1,
    lambda d: hashlib.sha256(d).digest(),
    lambda k, d: hmac.new(k, d, hashlib.sha256).digest(),
)
SM: Suite = _SmSuite("sm", m.AKM_CERT_SM, SM2_CURVE_OID_DER, 2, 2, sm3, hmac_sm3)

_BY_AKM = {STANDARD.akm: STANDARD, SM.akm: SM}


def suite_for_akm(akm: bytes) -> Suite:
    try:
        return _BY_AKM[akm]
    except KeyError:
        raise WaiDecodeError(f"unsupported WAPI AKM suite {akm.hex()}") from None


class SoftSigner:
    """A signer over an in-memory private key of either suite (tests, CLI key files)."""

    def __init__(self, key: wapi192.PrivateKey | SM2PrivateKey) -> None:
        if not isinstance(key, wapi192.PrivateKey | SM2PrivateKey):
            raise MstCryptError("SoftSigner needs a wapi192 or SM2 private key")
        self._key = key

    def sign(self, data: bytes) -> bytes:
        if isinstance(self._key, SM2PrivateKey):
            return self._key.sign(data, encoding="raw")
        return self._key.sign(data)

    def __repr__(self) -> str:
        return "SoftSigner(<secret>)"
