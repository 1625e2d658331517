"""WAI packets: strict encoders and decoders (GB 15629.11-2003/XG1-2006 §8.1.4).

Every decoder consumes its whole input: a short or long field, a trailing byte, a length
that disagrees with its content or a value out of range raises :class:`WaiDecodeError`.
All integers are big-endian. Layouts (``[x]`` = present when FLAG bit 3 is set)::

    header      version(2)=1 type(1)=1 subtype(1) reserved(2)=0 length(2) seq(2)
                frag-seq(1) flag(1)            (length counts the header, 12 bytes)
    Identity    id(2) len(2) data              (id 1: subject ‖ issuer ‖ serial, DER)
    Certificate id(2) len(2) data              (id 1: X.509 v3, DER)
    ECDH param  id(1) len(2) data              (id 1: DER OID)
    Key data    len(1) data                    (04 ‖ x ‖ y, or SMS4-OFB wrapped NMK)
    Signature   type(1)=1 len(2) Identity alg sig
                alg = len(2) hash(1) sig(1) param-id(1) param-len(2) param
                sig = len(2) value             (r ‖ s)
    Cert result type(1)=2 len(2) N1(32) N2(32) result1(1) Certificate1 result2(1) Certificate2
    ASU list    type(1)=3 len(2) reserved(1) count(2) Identity*

    3  activation      flag auth-id(32) Identity(ASU) Certificate(AE) ECDH
    4  access req      flag auth-id(32) N_ASUE(32) Key(ASUE) Identity(AE) Certificate(ASUE)
                       ECDH [ASU list] Signature(ASUE)
    5  access resp     flag N_ASUE N_AE result(1) Key(ASUE) Key(AE) Identity(AE)
                       Identity(ASUE) [Cert result Signature(ASU for ASUE)
                       [Signature(ASU for AE)]] Signature(AE)
    6  cert auth req   ADDID(12) N_AE N_ASUE Certificate(ASUE) Certificate(AE) [ASU list]
    7  cert auth resp  ADDID Cert result Signature(ASU for ASUE) [Signature(ASU for AE)]
    8  unicast req     flag BKID(16) USKID(1) ADDID N_AE
    9  unicast resp    flag BKID USKID ADDID N_ASUE N_AE WAPI-IE(ASUE) MIC(20)
    10 unicast confirm flag BKID USKID ADDID N_ASUE WAPI-IE(AE) MIC(20)
    11 multicast ann.  flag MSKID(1) USKID ADDID data-PN(16) key-ann-id(16) Key data MIC(20)
    12 multicast resp  flag MSKID USKID ADDID key-ann-id(16) MIC(20)
    1  pre-auth start  flag USKID ADDID counter(16) MIC(20)
    2  STAKey request  flag STAKeyID(1) USKID ADDID counter(16) MIC(20)

The WAPI information element (ID 68) is little-endian in its counts, as 802.11 IEs are:
ID(1) len(1) version(2)=1 akm-count(2) AKM(4)* unicast-count(2) suite(4)* multicast(4)
capability(2) [bkid-count(2) BKID(16)*].
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from mstcrypt.protocols.wai.constants import (
    ADDID_SIZE,
    BKID_SIZE,
    CERT_X509,
    ECDH_PARAM_OID,
    HEADER_SIZE,
    IDENTITY_X509,
    MAX_PACKET,
    MIC_SIZE,
    MORE_FRAGMENTS,
    NONCE_SIZE,
    PN_SIZE,
    WAI_TYPE,
    WAI_VERSION,
    AccessResult,
    AttrType,
    Flag,
    Subtype,
    VerifyResult,
)
from mstcrypt.protocols.wai.errors import WaiDecodeError

__all__ = [
    "AccessAuthRequest",
    "AccessAuthResponse",
    "Activation",
    "CertAuthRequest",
    "CertAuthResponse",
    "CertVerifyResult",
    "Certificate",
    "EcdhParams",
    "Header",
    "Identity",
    "Message",
    "MulticastAnnounce",
    "MulticastAnnounceResponse",
    "PreAuthStart",
    "Reassembler",
    "SignatureAttr",
    "StaKeyRequest",
    "UnicastKeyConfirm",
    "UnicastKeyRequest",
    "UnicastKeyResponse",
    "WapiIE",
    "decode_message",
    "decode_packet",
    "encode_packet",
    "fragment",
]


# --------------------------------------------------------------------------- reader
class _Reader:
    __slots__ = ("buf", "pos", "what")

    def __init__(self, buf: bytes, what: str) -> None:
        self.buf = bytes(buf)
        self.pos = 0
        self.what = what

    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int, field_name: str) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise WaiDecodeError(
                f"{self.what}: truncated {field_name} (need {n} bytes, {self.remaining()} left)"
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, field_name: str) -> int:
        return self.take(1, field_name)[0]

    def u16(self, field_name: str) -> int:
        return int.from_bytes(self.take(2, field_name), "big")

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise WaiDecodeError(f"{self.what}: {self.remaining()} trailing bytes")


def _u16(n: int, what: str) -> bytes:
    if not 0 <= n <= 0xFFFF:
        raise WaiDecodeError(f"{what}: length {n} does not fit in 16 bits")
    return n.to_bytes(2, "big")


def _fixed(value: bytes, size: int, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != size:
        raise WaiDecodeError(f"{what}: expected {size} bytes")
    return bytes(value)


# --------------------------------------------------------------------------- elements
@dataclass(frozen=True)
class Identity:
    """id(2) len(2) data; id 1 = X.509 (subject ‖ issuer ‖ serial number, DER)."""

    data: bytes
    id: int = IDENTITY_X509

    def encode(self) -> bytes:
        return _u16(self.id, "identity id") + _u16(len(self.data), "identity") + self.data

    @classmethod
    def read(cls, r: _Reader) -> Identity:
        ident = r.u16("identity id")
        n = r.u16("identity length")
        if n == 0:
            raise WaiDecodeError(f"{r.what}: empty identity")
        return cls(r.take(n, "identity"), ident)


@dataclass(frozen=True)
class Certificate:
    """id(2) len(2) data; id 1 = X.509 v3 (DER)."""

    data: bytes
    id: int = CERT_X509

    def encode(self) -> bytes:
        return _u16(self.id, "certificate id") + _u16(len(self.data), "certificate") + self.data

    @classmethod
    def read(cls, r: _Reader) -> Certificate:
        ident = r.u16("certificate id")
        n = r.u16("certificate length")
        if n == 0:
            raise WaiDecodeError(f"{r.what}: empty certificate")
        return cls(r.take(n, "certificate"), ident)


@dataclass(frozen=True)
class EcdhParams:
    """id(1) len(2) data; id 1 = the curve OID as a DER TLV."""

    data: bytes
    id: int = ECDH_PARAM_OID

    def encode(self) -> bytes:
        return bytes([self.id]) + _u16(len(self.data), "ECDH parameter") + self.data

    @classmethod
    def read(cls, r: _Reader) -> EcdhParams:
        ident = r.u8("ECDH parameter id")
        n = r.u16("ECDH parameter length")
        if n == 0:
            raise WaiDecodeError(f"{r.what}: empty ECDH parameter")
        return cls(r.take(n, "ECDH parameter"), ident)


def _key_data(value: bytes) -> bytes:
    if len(value) > 0xFF:
        raise WaiDecodeError("key data longer than 255 bytes")
    return bytes([len(value)]) + value


def _read_key_data(r: _Reader, what: str) -> bytes:
    n = r.u8(f"{what} length")
    if n == 0:
        raise WaiDecodeError(f"{r.what}: empty {what}")
    return r.take(n, what)


@dataclass(frozen=True)
class SignatureAttr:
    """type(1)=1 len(2) Identity alg(len(2) hash(1) sig(1) param-id(1) param-len(2) param)
    value(len(2) r‖s)."""

    identity: Identity
    hash_alg: int
    sig_alg: int
    param: bytes
    value: bytes
    param_id: int = 1

    def encode(self) -> bytes:
        alg = bytes([self.hash_alg, self.sig_alg, self.param_id]) + _u16(len(self.param), "param")
        alg += self.param
        body = (
            self.identity.encode()
            + _u16(len(alg), "signature algorithm")
            + alg
            + _u16(len(self.value), "signature value")
            + self.value
        )
        return bytes([AttrType.SIGNATURE]) + _u16(len(body), "signature") + body

    @classmethod
    def read(cls, r: _Reader) -> SignatureAttr:
        t = r.u8("signature type")
        if t != AttrType.SIGNATURE:
            raise WaiDecodeError(f"{r.what}: expected a signature attribute (1), got type {t}")
        n = r.u16("signature length")
        s = _Reader(r.take(n, "signature"), r.what + " signature")
        identity = Identity.read(s)
        alg = _Reader(s.take(s.u16("algorithm length"), "signature algorithm"), s.what)
        hash_alg = alg.u8("hash algorithm")
        sig_alg = alg.u8("signature algorithm")
        param_id = alg.u8("parameter id")
        param = alg.take(alg.u16("parameter length"), "parameter")
        alg.end()
        value = s.take(s.u16("signature value length"), "signature value")
        if not value:
            raise WaiDecodeError(f"{r.what}: empty signature value")
        s.end()
        return cls(identity, hash_alg, sig_alg, param, value, param_id)


@dataclass(frozen=True)
class CertVerifyResult:
    """The ASU's multiple-certificate verification result (attribute type 2)."""

    nonce1: bytes  # the AE challenge of the certificate authentication request
    nonce2: bytes  # the ASUE challenge
    result1: VerifyResult  # of the ASUE certificate
    cert1: Certificate
    result2: VerifyResult  # of the AE certificate
    cert2: Certificate

    def encode(self) -> bytes:
        body = (
            _fixed(self.nonce1, NONCE_SIZE, "nonce 1")
            + _fixed(self.nonce2, NONCE_SIZE, "nonce 2")
            + bytes([self.result1])
            + self.cert1.encode()
            + bytes([self.result2])
            + self.cert2.encode()
        )
        return bytes([AttrType.CERT_VERIFY_RESULT]) + _u16(len(body), "certificate result") + body

    @classmethod
    def read(cls, r: _Reader) -> CertVerifyResult:
        t = r.u8("certificate result type")
        if t != AttrType.CERT_VERIFY_RESULT:
            raise WaiDecodeError(f"{r.what}: expected a certificate result (2), got type {t}")
        s = _Reader(r.take(r.u16("certificate result length"), "certificate result"), r.what)
        n1 = s.take(NONCE_SIZE, "nonce 1")
        n2 = s.take(NONCE_SIZE, "nonce 2")
        res1 = _verify_result(s.u8("result 1"), s.what)
        c1 = Certificate.read(s)
        res2 = _verify_result(s.u8("result 2"), s.what)
        c2 = Certificate.read(s)
        s.end()
        return cls(n1, n2, res1, c1, res2, c2)


def _verify_result(v: int, what: str) -> VerifyResult:
    try:
        return VerifyResult(v)
    except ValueError:
        raise WaiDecodeError(f"{what}: unknown certificate verification result {v}") from None


def _encode_asu_list(ids: tuple[Identity, ...]) -> bytes:
    body = b"\x00" + _u16(len(ids), "identity count") + b"".join(i.encode() for i in ids)
    return bytes([AttrType.IDENTITY_LIST]) + _u16(len(body), "identity list") + body


def _read_asu_list(r: _Reader) -> tuple[Identity, ...]:
    t = r.u8("identity list type")
    if t != AttrType.IDENTITY_LIST:
        raise WaiDecodeError(f"{r.what}: expected an identity list (3), got type {t}")
    s = _Reader(r.take(r.u16("identity list length"), "identity list"), r.what + " ASU list")
    if s.u8("reserved") != 0:
        raise WaiDecodeError(f"{r.what}: identity list reserved octet is not zero")
    count = s.u16("identity count")
    ids = tuple(Identity.read(s) for _ in range(count))
    s.end()
    return ids


# --------------------------------------------------------------------------- WAPI IE
OUI_WAPI = b"\x00\x14\x72"
AKM_CERT = OUI_WAPI + b"\x01"
AKM_PSK = OUI_WAPI + b"\x02"
#: Our own selector (no standard exists): WAI certificate authentication with SM2/SM3.
AKM_CERT_SM = OUI_WAPI + b"\xf1"
CIPHER_SMS4 = OUI_WAPI + b"\x01"
WAPI_IE_ID = 68


@dataclass(frozen=True)
class WapiIE:
    akm_suites: tuple[bytes, ...] = (AKM_CERT,)
    unicast_suites: tuple[bytes, ...] = (CIPHER_SMS4,)
    multicast_suite: bytes = CIPHER_SMS4
    capability: int = 0
    bkids: tuple[bytes, ...] = ()

    def encode(self) -> bytes:
        body = struct.pack("<HH", 1, len(self.akm_suites)) + b"".join(
            _fixed(s, 4, "AKM suite") for s in self.akm_suites
        )
        body += struct.pack("<H", len(self.unicast_suites)) + b"".join(
            _fixed(s, 4, "unicast suite") for s in self.unicast_suites
        )
        body += _fixed(self.multicast_suite, 4, "multicast suite") + struct.pack(
            "<H", self.capability
        )
        if self.bkids:
            body += struct.pack("<H", len(self.bkids)) + b"".join(
                _fixed(b, BKID_SIZE, "BKID") for b in self.bkids
            )
        if len(body) > 255:
            raise WaiDecodeError("WAPI IE longer than 255 bytes")
        return bytes([WAPI_IE_ID, len(body)]) + body

    @classmethod
    def decode(cls, data: bytes) -> WapiIE:
        r = _Reader(data, "WAPI IE")
        if r.u8("element id") != WAPI_IE_ID:
            raise WaiDecodeError("WAPI IE: element id is not 68")
        r = _Reader(r.take(r.u8("length"), "body"), "WAPI IE")
        if r.remaining() + 2 != len(data):
            raise WaiDecodeError("WAPI IE: trailing bytes after the element")

        def le16(what: str) -> int:
            return int.from_bytes(r.take(2, what), "little")

        if le16("version") != 1:
            raise WaiDecodeError("WAPI IE: version is not 1")
        akm = tuple(r.take(4, "AKM suite") for _ in range(le16("AKM count")))
        uni = tuple(r.take(4, "unicast suite") for _ in range(le16("unicast count")))
        multi = r.take(4, "multicast suite")
        cap = le16("capability")
        bkids: tuple[bytes, ...] = ()
        if r.remaining():
            bkids = tuple(r.take(BKID_SIZE, "BKID") for _ in range(le16("BKID count")))
        r.end()
        if not akm or not uni:
            raise WaiDecodeError("WAPI IE: no AKM or unicast suite")
        return cls(akm, uni, multi, cap, bkids)


# --------------------------------------------------------------------------- messages
class Message:
    """Base of the WAI message bodies; ``SUBTYPE`` selects the decoder."""

    SUBTYPE: ClassVar[Subtype]

    def encode(self) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def decode(cls, data: bytes) -> Message:  # pragma: no cover - abstract
        raise NotImplementedError


def _flag(v: int) -> int:
    if not 0 <= v <= 0xFF:
        raise WaiDecodeError("flag out of range")
    return v


def _opt_flag(flag: int, present: bool, what: str) -> int:
    if bool(flag & Flag.OPTIONAL_FIELD) != present:
        raise WaiDecodeError(f"{what}: FLAG bit 3 must be set exactly when optional fields follow")
    return _flag(flag)


@dataclass(frozen=True)
class Activation(Message):
    SUBTYPE: ClassVar[Subtype] = Subtype.AUTH_ACTIVATION
    flag: int
    auth_id: bytes
    asu_identity: Identity
    ae_cert: Certificate
    ecdh: EcdhParams

    def encode(self) -> bytes:
        return (
            bytes([_flag(self.flag)])
            + _fixed(self.auth_id, NONCE_SIZE, "auth id")
            + self.asu_identity.encode()
            + self.ae_cert.encode()
            + self.ecdh.encode()
        )

    @classmethod
    def decode(cls, data: bytes) -> Activation:
        r = _Reader(data, "authentication activation")
        m = cls(
            r.u8("flag"),
            r.take(NONCE_SIZE, "auth id"),
            Identity.read(r),
            Certificate.read(r),
            EcdhParams.read(r),
        )
        r.end()
        return m


@dataclass(frozen=True)
class AccessAuthRequest(Message):
    SUBTYPE: ClassVar[Subtype] = Subtype.ACCESS_AUTH_REQUEST
    flag: int
    auth_id: bytes
    n_asue: bytes
    asue_key: bytes
    ae_identity: Identity
    asue_cert: Certificate
    ecdh: EcdhParams
    asu_list: tuple[Identity, ...] | None = None
    signature: SignatureAttr | None = None

    def signed_part(self) -> bytes:
        flag = _opt_flag(self.flag, self.asu_list is not None, "access authentication request")
        out = (
            bytes([_flag(flag)])
            + _fixed(self.auth_id, NONCE_SIZE, "auth id")
            + _fixed(self.n_asue, NONCE_SIZE, "N_ASUE")
            + _key_data(self.asue_key)
            + self.ae_identity.encode()
            + self.asue_cert.encode()
            + self.ecdh.encode()
        )
        if self.asu_list is not None:
            out += _encode_asu_list(self.asu_list)
        return out

    def encode(self) -> bytes:
        if self.signature is None:
            raise WaiDecodeError("access authentication request: not signed")
        return self.signed_part() + self.signature.encode()

    @classmethod
    def decode(cls, data: bytes) -> AccessAuthRequest:
        r = _Reader(data, "access authentication request")
        flag = r.u8("flag")
        auth_id = r.take(NONCE_SIZE, "auth id")
        n_asue = r.take(NONCE_SIZE, "N_ASUE")
        key = _read_key_data(r, "ASUE key data")
        ae_id = Identity.read(r)
        cert = Certificate.read(r)
        ecdh = EcdhParams.read(r)
        asu_list = _read_asu_list(r) if flag & Flag.OPTIONAL_FIELD else None
        sig = SignatureAttr.read(r)
        r.end()
        return cls(flag, auth_id, n_asue, key, ae_id, cert, ecdh, asu_list, sig)


@dataclass(frozen=True)
class AccessAuthResponse(Message):
    SUBTYPE: ClassVar[Subtype] = Subtype.ACCESS_AUTH_RESPONSE
    flag: int
    n_asue: bytes
    n_ae: bytes
    result: AccessResult
    asue_key: bytes
    ae_key: bytes
    ae_identity: Identity
    asue_identity: Identity
    cert_result: CertVerifyResult | None = None
    asu_sig_asue: SignatureAttr | None = None
    asu_sig_ae: SignatureAttr | None = None
    signature: SignatureAttr | None = None

    def signed_part(self) -> bytes:
        has_opt = self.cert_result is not None
        if has_opt != (self.asu_sig_asue is not None):
            raise WaiDecodeError(
                "access authentication response: certificate result without ASU signature"
            )
        flag = _opt_flag(self.flag, has_opt, "access authentication response")
        out = (
            bytes([_flag(flag)])
            + _fixed(self.n_asue, NONCE_SIZE, "N_ASUE")
            + _fixed(self.n_ae, NONCE_SIZE, "N_AE")
            + bytes([self.result])
            + _key_data(self.asue_key)
            + _key_data(self.ae_key)
            + self.ae_identity.encode()
            + self.asue_identity.encode()
        )
        if has_opt:
            assert self.cert_result is not None and self.asu_sig_asue is not None
            out += self.cert_result.encode() + self.asu_sig_asue.encode()
            if self.asu_sig_ae is not None:
                out += self.asu_sig_ae.encode()
        return out

    def encode(self) -> bytes:
        if self.signature is None:
            raise WaiDecodeError("access authentication response: not signed")
        return self.signed_part() + self.signature.encode()

    @classmethod
    def decode(cls, data: bytes) -> AccessAuthResponse:
        r = _Reader(data, "access authentication response")
        flag = r.u8("flag")
        n_asue = r.take(NONCE_SIZE, "N_ASUE")
        n_ae = r.take(NONCE_SIZE, "N_AE")
        res = r.u8("access result")
        try:
            result = AccessResult(res)
        except ValueError:
            raise WaiDecodeError(f"{r.what}: unknown access result {res}") from None
        asue_key = _read_key_data(r, "ASUE key data")
        ae_key = _read_key_data(r, "AE key data")
        ae_id = Identity.read(r)
        asue_id = Identity.read(r)
        cr = s1 = s2 = None
        if flag & Flag.OPTIONAL_FIELD:
            cr = CertVerifyResult.read(r)
            s1 = SignatureAttr.read(r)
            # Two signatures left: the ASU's for the AE, then the AE's own.
            save = r.pos
            SignatureAttr.read(r)
            if r.remaining():
                r.pos = save
                s2 = SignatureAttr.read(r)
            else:
                r.pos = save
        sig = SignatureAttr.read(r)
        r.end()
        return cls(flag, n_asue, n_ae, result, asue_key, ae_key, ae_id, asue_id, cr, s1, s2, sig)


@dataclass(frozen=True)
class CertAuthRequest(Message):
    SUBTYPE: ClassVar[Subtype] = Subtype.CERT_AUTH_REQUEST
    addid: bytes
    n_ae: bytes
    n_asue: bytes
    asue_cert: Certificate
    ae_cert: Certificate
    asu_list: tuple[Identity, ...] | None = None

    def encode(self) -> bytes:
        out = (
            _fixed(self.addid, ADDID_SIZE, "ADDID")
            + _fixed(self.n_ae, NONCE_SIZE, "N_AE")
            + _fixed(self.n_asue, NONCE_SIZE, "N_ASUE")
            + self.asue_cert.encode()
            + self.ae_cert.encode()
        )
        if self.asu_list is not None:
            out += _encode_asu_list(self.asu_list)
        return out

    @classmethod
    def decode(cls, data: bytes) -> CertAuthRequest:
        r = _Reader(data, "certificate authentication request")
        m = cls(
            r.take(ADDID_SIZE, "ADDID"),
            r.take(NONCE_SIZE, "N_AE"),
            r.take(NONCE_SIZE, "N_ASUE"),
            Certificate.read(r),
            Certificate.read(r),
            _read_asu_list(r) if r.remaining() else None,
        )
        r.end()
        return m


@dataclass(frozen=True)
class CertAuthResponse(Message):
    SUBTYPE: ClassVar[Subtype] = Subtype.CERT_AUTH_RESPONSE
    addid: bytes
    cert_result: CertVerifyResult
    asu_sig_asue: SignatureAttr
    asu_sig_ae: SignatureAttr | None = None

    def encode(self) -> bytes:
        out = (
            _fixed(self.addid, ADDID_SIZE, "ADDID")
            + self.cert_result.encode()
            + self.asu_sig_asue.encode()
        )
        if self.asu_sig_ae is not None:
            out += self.asu_sig_ae.encode()
        return out

    @classmethod
    def decode(cls, data: bytes) -> CertAuthResponse:
        r = _Reader(data, "certificate authentication response")
        addid = r.take(ADDID_SIZE, "ADDID")
        cr = CertVerifyResult.read(r)
        s1 = SignatureAttr.read(r)
        s2 = SignatureAttr.read(r) if r.remaining() else None
        r.end()
        return cls(addid, cr, s1, s2)


def _mic_tail(r: _Reader, fixed_after: int) -> tuple[bytes, bytes]:
    """Split the rest into a variable WAPI IE and the 20-byte MIC."""
    n = r.remaining() - MIC_SIZE
    if n < fixed_after:
        raise WaiDecodeError(f"{r.what}: truncated (no room for the WAPI IE and MIC)")
    ie = r.take(n, "WAPI IE")
    return ie, r.take(MIC_SIZE, "MIC")


@dataclass(frozen=True)
class UnicastKeyRequest(Message):
    SUBTYPE: ClassVar[Subtype] = Subtype.UNICAST_KEY_REQUEST
    flag: int
    bkid: bytes
    uskid: int
    addid: bytes
    n_ae: bytes

    def encode(self) -> bytes:
        return (
            bytes([_flag(self.flag)])
            + _fixed(self.bkid, BKID_SIZE, "BKID")
            + bytes([self.uskid & 0xFF])
            + _fixed(self.addid, ADDID_SIZE, "ADDID")
            + _fixed(self.n_ae, NONCE_SIZE, "N_AE")
        )

    @classmethod
    def decode(cls, data: bytes) -> UnicastKeyRequest:
        r = _Reader(data, "unicast key negotiation request")
        m = cls(
            r.u8("flag"),
            r.take(BKID_SIZE, "BKID"),
            r.u8("USKID"),
            r.take(ADDID_SIZE, "ADDID"),
            r.take(NONCE_SIZE, "N_AE"),
        )
        r.end()
        return m


@dataclass(frozen=True)
class UnicastKeyResponse(Message):
    SUBTYPE: ClassVar[Subtype] = Subtype.UNICAST_KEY_RESPONSE
    flag: int
    bkid: bytes
    uskid: int
    addid: bytes
    n_asue: bytes
    n_ae: bytes
    wapi_ie: bytes
    mic: bytes = b""

    def mac_part(self) -> bytes:
        return (
            bytes([_flag(self.flag)])
            + _fixed(self.bkid, BKID_SIZE, "BKID")
            + bytes([self.uskid & 0xFF])
            + _fixed(self.addid, ADDID_SIZE, "ADDID")
            + _fixed(self.n_asue, NONCE_SIZE, "N_ASUE")
            + _fixed(self.n_ae, NONCE_SIZE, "N_AE")
            + self.wapi_ie
        )

    def encode(self) -> bytes:
        return self.mac_part() + _fixed(self.mic, MIC_SIZE, "MIC")

    @classmethod
    def decode(cls, data: bytes) -> UnicastKeyResponse:
        r = _Reader(data, "unicast key negotiation response")
        head = (r.u8("flag"), r.take(BKID_SIZE, "BKID"), r.u8("USKID"), r.take(ADDID_SIZE, "ADDID"))
        n_asue, n_ae = r.take(NONCE_SIZE, "N_ASUE"), r.take(NONCE_SIZE, "N_AE")
        ie, mic = _mic_tail(r, 2)
        WapiIE.decode(ie)
        r.end()
        return cls(*head, n_asue, n_ae, ie, mic)


@dataclass(frozen=True)
class UnicastKeyConfirm(Message):
    SUBTYPE: ClassVar[Subtype] = Subtype.UNICAST_KEY_CONFIRM
    flag: int
    bkid: bytes
    uskid: int
    addid: bytes
    n_asue: bytes
    wapi_ie: bytes
    mic: bytes = b""

    def mac_part(self) -> bytes:
        return (
            bytes([_flag(self.flag)])
            + _fixed(self.bkid, BKID_SIZE, "BKID")
            + bytes([self.uskid & 0xFF])
            + _fixed(self.addid, ADDID_SIZE, "ADDID")
            + _fixed(self.n_asue, NONCE_SIZE, "N_ASUE")
            + self.wapi_ie
        )

    def encode(self) -> bytes:
        return self.mac_part() + _fixed(self.mic, MIC_SIZE, "MIC")

    @classmethod
    def decode(cls, data: bytes) -> UnicastKeyConfirm:
        r = _Reader(data, "unicast key negotiation confirmation")
        head = (r.u8("flag"), r.take(BKID_SIZE, "BKID"), r.u8("USKID"), r.take(ADDID_SIZE, "ADDID"))
        n_asue = r.take(NONCE_SIZE, "N_ASUE")
        ie, mic = _mic_tail(r, 2)
        WapiIE.decode(ie)
        r.end()
        return cls(*head, n_asue, ie, mic)


@dataclass(frozen=True)
class MulticastAnnounce(Message):
    SUBTYPE: ClassVar[Subtype] = Subtype.MULTICAST_ANNOUNCE
    flag: int
    mskid: int
    uskid: int
    addid: bytes
    data_pn: bytes
    announce_id: bytes
    key_data: bytes
    mic: bytes = b""

    def mac_part(self) -> bytes:
        return (
            bytes([_flag(self.flag), self.mskid & 0xFF, self.uskid & 0xFF])
            + _fixed(self.addid, ADDID_SIZE, "ADDID")
            + _fixed(self.data_pn, PN_SIZE, "data PN")
            + _fixed(self.announce_id, PN_SIZE, "key announcement id")
            + _key_data(self.key_data)
        )

    def encode(self) -> bytes:
        return self.mac_part() + _fixed(self.mic, MIC_SIZE, "MIC")

    @classmethod
    def decode(cls, data: bytes) -> MulticastAnnounce:
        r = _Reader(data, "multicast key announcement")
        m = cls(
            r.u8("flag"),
            r.u8("MSKID"),
            r.u8("USKID"),
            r.take(ADDID_SIZE, "ADDID"),
            r.take(PN_SIZE, "data PN"),
            r.take(PN_SIZE, "key announcement id"),
            _read_key_data(r, "key data"),
            r.take(MIC_SIZE, "MIC"),
        )
        r.end()
        return m


@dataclass(frozen=True)
class MulticastAnnounceResponse(Message):
    SUBTYPE: ClassVar[Subtype] = Subtype.MULTICAST_ANNOUNCE_RESPONSE
    flag: int
    mskid: int
    uskid: int
    addid: bytes
    announce_id: bytes
    mic: bytes = b""

    def mac_part(self) -> bytes:
        return (
            bytes([_flag(self.flag), self.mskid & 0xFF, self.uskid & 0xFF])
            + _fixed(self.addid, ADDID_SIZE, "ADDID")
            + _fixed(self.announce_id, PN_SIZE, "key announcement id")
        )

    def encode(self) -> bytes:
        return self.mac_part() + _fixed(self.mic, MIC_SIZE, "MIC")

    @classmethod
    def decode(cls, data: bytes) -> MulticastAnnounceResponse:
        r = _Reader(data, "multicast key announcement response")
        m = cls(
            r.u8("flag"),
            r.u8("MSKID"),
            r.u8("USKID"),
            r.take(ADDID_SIZE, "ADDID"),
            r.take(PN_SIZE, "key announcement id"),
            r.take(MIC_SIZE, "MIC"),
        )
        r.end()
        return m


@dataclass(frozen=True)
class PreAuthStart(Message):
    SUBTYPE: ClassVar[Subtype] = Subtype.PRE_AUTH_START
    flag: int
    uskid: int
    addid: bytes
    counter: bytes
    mic: bytes = b""

    def mac_part(self) -> bytes:
        return (
            bytes([_flag(self.flag), self.uskid & 0xFF])
            + _fixed(self.addid, ADDID_SIZE, "ADDID")
            + _fixed(self.counter, PN_SIZE, "counter")
        )

    def encode(self) -> bytes:
        return self.mac_part() + _fixed(self.mic, MIC_SIZE, "MIC")

    @classmethod
    def decode(cls, data: bytes) -> PreAuthStart:
        r = _Reader(data, "pre-authentication start")
        m = cls(
            r.u8("flag"),
            r.u8("USKID"),
            r.take(ADDID_SIZE, "ADDID"),
            r.take(PN_SIZE, "counter"),
            r.take(MIC_SIZE, "MIC"),
        )
        r.end()
        return m


@dataclass(frozen=True)
class StaKeyRequest(Message):
    SUBTYPE: ClassVar[Subtype] = Subtype.STAKEY_REQUEST
    flag: int
    stakey_id: int
    uskid: int
    addid: bytes
    counter: bytes
    mic: bytes = b""

    def mac_part(self) -> bytes:
        return (
            bytes([_flag(self.flag), self.stakey_id & 0xFF, self.uskid & 0xFF])
            + _fixed(self.addid, ADDID_SIZE, "ADDID")
            + _fixed(self.counter, PN_SIZE, "counter")
        )

    def encode(self) -> bytes:
        return self.mac_part() + _fixed(self.mic, MIC_SIZE, "MIC")

    @classmethod
    def decode(cls, data: bytes) -> StaKeyRequest:
        r = _Reader(data, "STAKey request")
        m = cls(
            r.u8("flag"),
            r.u8("STAKeyID"),
            r.u8("USKID"),
            r.take(ADDID_SIZE, "ADDID"),
            r.take(PN_SIZE, "counter"),
            r.take(MIC_SIZE, "MIC"),
        )
        r.end()
        return m


_BY_SUBTYPE: dict[int, type[Message]] = {
    c.SUBTYPE: c
    for c in (
        PreAuthStart,
        StaKeyRequest,
        Activation,
        AccessAuthRequest,
        AccessAuthResponse,
        CertAuthRequest,
        CertAuthResponse,
        UnicastKeyRequest,
        UnicastKeyResponse,
        UnicastKeyConfirm,
        MulticastAnnounce,
        MulticastAnnounceResponse,
    )
}


def decode_message(subtype: int, data: bytes) -> Message:
    cls = _BY_SUBTYPE.get(subtype)
    if cls is None:
        raise WaiDecodeError(f"unknown WAI subtype {subtype}")
    return cls.decode(data)


# --------------------------------------------------------------------------- packets
@dataclass(frozen=True)
class Header:
    subtype: int
    length: int
    seq: int
    frag_seq: int = 0
    flag: int = 0
    version: int = WAI_VERSION
    type: int = WAI_TYPE
    reserved: int = 0

    def encode(self) -> bytes:
        return struct.pack(
            ">HBBHHHBB",
            self.version,
            self.type,
            self.subtype,
            self.reserved,
            self.length,
            self.seq,
            self.frag_seq,
            self.flag,
        )

    @classmethod
    def decode(cls, data: bytes) -> Header:
        if len(data) < HEADER_SIZE:
            raise WaiDecodeError(f"WAI packet: truncated header ({len(data)} bytes)")
        ver, typ, sub, res, length, seq, frag, flag = struct.unpack(">HBBHHHBB", data[:HEADER_SIZE])
        if ver != WAI_VERSION:
            raise WaiDecodeError(f"WAI packet: version {ver}, expected 1")
        if typ != WAI_TYPE:
            raise WaiDecodeError(f"WAI packet: type {typ}, expected 1")
        if res != 0:
            raise WaiDecodeError("WAI packet: reserved field is not zero")
        if flag & ~MORE_FRAGMENTS:
            raise WaiDecodeError(f"WAI packet: unknown header flag bits {flag:#x}")
        if sub not in _BY_SUBTYPE:
            raise WaiDecodeError(f"WAI packet: unknown subtype {sub}")
        if length != len(data):
            raise WaiDecodeError(
                f"WAI packet: length field {length} but {len(data)} bytes received"
            )
        return cls(sub, length, seq, frag, flag, ver, typ, res)


def encode_packet(msg: Message, seq: int) -> bytes:
    """One unfragmented WAI packet (header + body)."""
    body = msg.encode()
    if HEADER_SIZE + len(body) > MAX_PACKET:
        raise WaiDecodeError("WAI packet longer than 65535 bytes")
    if not 0 <= seq <= 0xFFFF:
        raise WaiDecodeError("WAI sequence number out of range")
    return Header(msg.SUBTYPE, HEADER_SIZE + len(body), seq).encode() + body


def fragment(packet: bytes, mtu: int) -> list[bytes]:
    """Split one WAI packet into fragments of at most ``mtu`` bytes (header included)."""
    if len(packet) <= mtu:
        return [packet]
    h = Header.decode(packet)
    room = mtu - HEADER_SIZE
    if room <= 0:
        raise WaiDecodeError("MTU too small for a WAI fragment")
    body = packet[HEADER_SIZE:]
    chunks = [body[i : i + room] for i in range(0, len(body), room)]
    if len(chunks) > 0xFF:
        raise WaiDecodeError("WAI packet needs more than 255 fragments")
    out = []
    for i, c in enumerate(chunks):
        more = MORE_FRAGMENTS if i < len(chunks) - 1 else 0
        out.append(Header(h.subtype, HEADER_SIZE + len(c), h.seq, i, more).encode() + c)
    return out


def decode_packet(packet: bytes) -> tuple[Header, Message]:
    h = Header.decode(packet)
    if h.flag or h.frag_seq:
        raise WaiDecodeError("WAI packet is a fragment; reassemble first")
    return h, decode_message(h.subtype, packet[HEADER_SIZE:])


class Reassembler:
    """Collect the fragments of one packet at a time (per peer). A fragment out of order,
    a different subtype/sequence mid-packet or a total beyond ``limit`` bytes drops the
    partial packet and raises; a fresh fragment 0 restarts."""

    def __init__(self, limit: int = 16384) -> None:
        self.limit = limit
        self._head: Header | None = None
        self._parts: list[bytes] = []
        self._size = 0

    def reset(self) -> None:
        self._head, self._parts, self._size = None, [], 0

    def feed(self, frame: bytes) -> bytes | None:
        """Return the whole reassembled packet when complete, else None."""
        h = Header.decode(frame)
        body = frame[HEADER_SIZE:]
        if h.frag_seq == 0:
            self.reset()
            if not h.flag:
                return frame
            self._head = h
        elif self._head is None or h.seq != self._head.seq or h.subtype != self._head.subtype:
            self.reset()
            raise WaiDecodeError("WAI fragment without its first fragment")
        elif h.frag_seq != len(self._parts):
            self.reset()
            raise WaiDecodeError("WAI fragment out of order")
        self._parts.append(body)
        self._size += len(body)
        if self._size + HEADER_SIZE > min(self.limit, MAX_PACKET):
            self.reset()
            raise WaiDecodeError("reassembled WAI packet too large")
        if h.flag:
            return None
        head = self._head
        assert head is not None
        data = b"".join(self._parts)
        self.reset()
        return Header(head.subtype, HEADER_SIZE + len(data), head.seq).encode() + data


def iter_fields(msg: Message) -> Iterator[tuple[str, object]]:
    """(name, value) of a message's fields, for inspection output."""
    for f in dataclasses.fields(msg):  # type: ignore[arg-type]
        yield f.name, getattr(msg, f.name)
