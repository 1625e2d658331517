"""Configuration of TLCP endpoints: credentials (dual certificates and the key
operations behind them), the context, and the server's session cache.

Private keys never need to be in the protocol layer: :class:`Credentials` holds three
callables — sign with the signing key, decrypt with the encryption key, run the SM2 key
exchange with the encryption key — which :meth:`Credentials.from_keys` builds from
:class:`~mstcrypt.crypto.sm2.SM2PrivateKey` objects and :meth:`Credentials.from_module`
from a :class:`~mstcrypt.module.CryptoModule` container (MST-CC soft token or SS-CC).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from mstcrypt.crypto.sm2 import SM2PrivateKey, SM2PublicKey
from mstcrypt.crypto.sm2_kex import KeyExchangeInitiator, KeyExchangeResponder
from mstcrypt.errors import PolicyError
from mstcrypt.pki import CRL, Certificate, CrlIndex, ValidationCache
from mstcrypt.protocols.tlcp.constants import (
    DEFAULT_CIPHER_SUITES,
    CertificateVerifyForm,
    CipherSuite,
    ClientAuth,
    ECDHEParamsEncoding,
)

if TYPE_CHECKING:
    from mstcrypt.module.base import CryptoModule

__all__ = [
    "Credentials",
    "Decrypter",
    "KeyExchanger",
    "Session",
    "SessionCache",
    "Signer",
    "TLCPContext",
]

#: message → DER SM2Signature made with the signing key (SM2 with Z, default ID).
Signer = Callable[[bytes], bytes]
#: DER SM2Cipher → plaintext, decrypted with the encryption key.
Decrypter = Callable[[bytes], bytes]


class KeyExchanger(Protocol):
    """SM2 key exchange (GB/T 32918.3) with the encryption key pair.

    ``initiator`` says the role (the TLCP server is the initiator, the client the
    responder); ``peer_public`` is the peer's encryption-certificate key; ``ephemeral``
    this side's ephemeral key pair (r, and R = rG, already on the wire: pass it on as
    such to :class:`~mstcrypt.crypto.sm2_kex.KeyExchangeInitiator` and the responder, which
    then reuse R instead of computing rG again; ``ephemeral.private_int()`` is r);
    ``peer_ephemeral`` the peer's 65-byte point. Returns the klen-byte shared key. Both
    IDs are the default ID; no confirmation values are exchanged in TLCP.
    """

    def __call__(
        self,
        *,
        initiator: bool,
        peer_public: SM2PublicKey,
        ephemeral: SM2PrivateKey,
        peer_ephemeral: bytes,
        klen: int,
    ) -> bytes: ...


def _run_exchange(side: KeyExchangeInitiator | KeyExchangeResponder, peer_eph: bytes) -> bytes:
    if isinstance(side, KeyExchangeInitiator):
        return side.finish(peer_eph)[0]
    side.respond(peer_eph)
    assert side.key is not None
    return side.key


@dataclass(frozen=True, eq=False)
class Credentials:
    """One identity: the signing and encryption certificates (dual certificates, GM/T
    0015 / GM/T 0034), the CA certificates sent after them, and the key operations.

    ``key_exchange`` may be None; such credentials cannot be used with ECDHE suites.
    """

    sign_certificate: Certificate
    enc_certificate: Certificate
    sign: Signer = field(repr=False)
    decrypt: Decrypter = field(repr=False)
    key_exchange: KeyExchanger | None = field(default=None, repr=False)
    chain: tuple[Certificate, ...] = ()

    def __post_init__(self) -> None:
        for what in ("sign_certificate", "enc_certificate"):
            if not isinstance(getattr(self, what), Certificate):
                raise PolicyError(f"Credentials.{what} must be a Certificate")
        if not callable(self.sign) or not callable(self.decrypt):
            raise PolicyError("Credentials.sign and .decrypt must be callables")
        if self.key_exchange is not None and not callable(self.key_exchange):
            raise PolicyError("Credentials.key_exchange must be callable or None")
        chain = tuple(self.chain)
        if not all(isinstance(c, Certificate) for c in chain):
            raise PolicyError("Credentials.chain must hold Certificate objects")
        object.__setattr__(self, "chain", chain)

    def certificate_list(self, *, dual: bool = True) -> list[bytes]:
        """DER certificates in TLCP order: signing, encryption, then the chain (without
        the encryption certificate when ``dual`` is false)."""
        head = [self.sign_certificate.der]
        if dual:
            head.append(self.enc_certificate.der)
        return [*head, *(c.der for c in self.chain)]

    @classmethod
    def from_keys(
        cls,
        sign_certificate: Certificate,
        sign_key: SM2PrivateKey,
        enc_certificate: Certificate,
        enc_key: SM2PrivateKey,
        chain: Sequence[Certificate] = (),
    ) -> Credentials:
        """Credentials over in-memory keys. Each key must match its certificate."""
        if not isinstance(sign_key, SM2PrivateKey) or not isinstance(enc_key, SM2PrivateKey):
            raise PolicyError("from_keys needs SM2PrivateKey objects")
        if sign_key.public_key() != sign_certificate.public_key:
            raise PolicyError("the signing key does not match the signing certificate")
        if enc_key.public_key() != enc_certificate.public_key:
            raise PolicyError("the encryption key does not match the encryption certificate")

        def exchange(
            *,
            initiator: bool,
            peer_public: SM2PublicKey,
            ephemeral: SM2PrivateKey,
            peer_ephemeral: bytes,
            klen: int,
        ) -> bytes:
            kind = KeyExchangeInitiator if initiator else KeyExchangeResponder
            return _run_exchange(
                kind(enc_key, peer_public, klen=klen, ephemeral=ephemeral), peer_ephemeral
            )

        return cls(
            sign_certificate=sign_certificate,
            enc_certificate=enc_certificate,
            sign=sign_key.sign,
            decrypt=enc_key.decrypt,
            key_exchange=exchange,
            chain=tuple(chain),
        )

    @classmethod
    def from_module(
        cls,
        module: CryptoModule,
        container: str,
        *,
        chain: Sequence[Certificate] = (),
        sign_certificate: Certificate | None = None,
        enc_certificate: Certificate | None = None,
    ) -> Credentials:
        """Credentials whose private keys stay in ``module``: the container's signing
        and encryption keys, and its certificates unless given here."""
        from mstcrypt.module.base import KeyUsage

        sign_h = module.key(container, KeyUsage.SIGN)
        enc_h = module.key(container, KeyUsage.ENCRYPT)
        certs = {}
        given_certs = ((KeyUsage.SIGN, sign_certificate), (KeyUsage.ENCRYPT, enc_certificate))
        for usage, given in given_certs:
            if given is None:
                der = module.get_certificate(container, usage)
                if der is None:
                    raise PolicyError(f"container {container!r} holds no {usage.value} certificate")
                given = Certificate.from_der(der)
            certs[usage] = given
        if certs[KeyUsage.SIGN].public_key != sign_h.public_key:
            raise PolicyError("the signing key does not match the signing certificate")
        if certs[KeyUsage.ENCRYPT].public_key != enc_h.public_key:
            raise PolicyError("the encryption key does not match the encryption certificate")

        def exchange(
            *,
            initiator: bool,
            peer_public: SM2PublicKey,
            ephemeral: SM2PrivateKey,
            peer_ephemeral: bytes,
            klen: int,
        ) -> bytes:
            # The exchange runs inside the module; only public values come back.
            make = module.key_exchange_initiator if initiator else module.key_exchange_responder
            kx = make(enc_h, peer_public, klen=klen, ephemeral=ephemeral)
            if initiator:
                return kx.finish(peer_ephemeral)[0]
            kx.respond(peer_ephemeral)
            assert kx.key is not None
            return kx.key

        return cls(
            sign_certificate=certs[KeyUsage.SIGN],
            enc_certificate=certs[KeyUsage.ENCRYPT],
            sign=lambda message: module.sign(sign_h, message),
            decrypt=lambda ciphertext: module.decrypt(enc_h, ciphertext),
            key_exchange=exchange,
            chain=tuple(chain),
        )


@dataclass(frozen=True)
class Session:
    """What resumption needs: the master secret (never shown in the repr), the suite,
    the peer's certificates and the server name the session was made for."""

    session_id: bytes
    cipher_suite: CipherSuite
    master_secret: bytes = field(repr=False)
    peer_certificates: tuple[Certificate, ...] = ()
    server_name: str | None = None
    created: datetime | None = None


class SessionCache:
    """A bounded in-memory session cache for a server (LRU, ``lifetime`` per entry).

    Any object with the same ``get`` / ``put`` / ``remove`` methods can replace it (for
    example one backed by a shared store when a gateway scales out). Thread-safe.
    """

    def __init__(self, *, max_size: int = 10_000, lifetime: timedelta = timedelta(hours=2)):
        if not isinstance(max_size, int) or max_size < 1:
            raise PolicyError("SessionCache max_size must be a positive int")
        self.max_size = max_size
        self.lifetime = lifetime
        self._items: OrderedDict[bytes, Session] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session_id: bytes, now: datetime) -> Session | None:
        with self._lock:
            s = self._items.get(session_id)
            if s is None:
                return None
            if s.created is not None and now - s.created > self.lifetime:
                del self._items[session_id]
                return None
            self._items.move_to_end(session_id)
            return s

    def put(self, session: Session) -> None:
        if not session.session_id:
            return
        with self._lock:
            self._items[session.session_id] = session
            self._items.move_to_end(session.session_id)
            while len(self._items) > self.max_size:
                self._items.popitem(last=False)

    def remove(self, session_id: bytes) -> None:
        with self._lock:
            self._items.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._items)


#: server_name (None when the client sent none) → the credentials to use, or None for
#: the context's default credentials.
SNICallback = Callable[[str | None], Credentials | None]


@dataclass
class TLCPContext:
    """Everything an endpoint needs; one context may serve many connections.

    - ``credentials``: this side's dual certificates and key operations (a server needs
      them, or an ``sni_callback``; a client needs them for client authentication and
      for ECDHE suites).
    - ``trust_anchors``, ``intermediates``, ``crls``: to validate the peer's
      certificates (:func:`mstcrypt.pki.validate_path`). CRLs given are always checked;
      ``require_crl`` also fails a certificate whose issuer has no CRL here.
    - ``validation_cache``: successful validations of peer certificates are remembered
      here (keyed by the exact certificates, anchors, intermediates, CRLs and purpose;
      re-checked against the time on every use; see :class:`mstcrypt.pki.ValidationCache`).
      Each context gets its own unless one is given; None validates every time.
    - ``cipher_suites``: in preference order. A client offers ECDHE suites only when its
      credentials can do key exchange; a server selects them only when it can verify
      client certificates (it has trust anchors).
    - ``client_auth`` (server): ask for client certificates (always asked and required
      with ECDHE).
    - ``check_hostname`` (client): the server's signing certificate must match the
      ``server_name`` given to the client under RFC 6125 (:func:`mstcrypt.pki.match_hostname`:
      dNSName SANs, iPAddress SANs for an IP literal, never the CN by default).
    - ``hostname_cn_fallback`` (client): also accept the subject CN, only for a legacy
      certificate without any subjectAltName (off by default).
    - ``sni_callback`` (server): choose credentials from the client's server_name.
    - ``session_cache`` (server): enables resumption by session ID.
    - ``ecdhe_params_encoding`` (client): ClientECDHEParams framing sent; a server
      accepts both.
    - ``ecc_client_dual_certificates`` (client): with ECC suites, send the encryption
      certificate after the signing certificate (as Tongsuo does; ECDHE always does).
      False sends the signing certificate and its chain only, which GmSSL's server
      requires (it validates the list as one ordinary chain). A server accepts both.
    - ``certificate_verify_form`` / ``certificate_verify_accept``: the CertificateVerify
      input sent, and the forms accepted (tried in this order) when verifying one. Both
      forms are accepted by default: each is a signature by the client's signing key
      over the same handshake messages, and neither can be taken for the other (the
      SM3 form signs 32 bytes, the transcript form the whole transcript, which is always
      longer).

    - ``honor_client_order`` (server): choose the first suite of the client's list that
      this server allows, instead of the first of ``cipher_suites`` that the client
      offers (Tongsuo's server does so, and Tongsuo's client lists ECC before ECDHE: a
      Tongsuo client without certificates then gets an ECC suite).

    :meth:`for_peer` builds a context with a peer profile's fields
    (:class:`~mstcrypt.protocols.tlcp.profiles.PeerProfile`: ``standard``, ``gmssl``,
    ``tongsuo``).
    """

    credentials: Credentials | None = None
    trust_anchors: Sequence[Certificate] = ()
    intermediates: Sequence[Certificate] = ()
    crls: Sequence[CRL | CrlIndex] = ()
    require_crl: bool = False
    cipher_suites: Sequence[CipherSuite | int] = DEFAULT_CIPHER_SUITES
    client_auth: ClientAuth | str = ClientAuth.NONE
    check_hostname: bool = True
    hostname_cn_fallback: bool = False
    sni_callback: SNICallback | None = None
    session_cache: SessionCache | Any | None = None
    ecdhe_params_encoding: ECDHEParamsEncoding | str = ECDHEParamsEncoding.VECTOR
    ecc_client_dual_certificates: bool = True
    certificate_verify_form: CertificateVerifyForm | str = CertificateVerifyForm.SM3
    certificate_verify_accept: Sequence[CertificateVerifyForm | str] = (
        CertificateVerifyForm.SM3,
        CertificateVerifyForm.TRANSCRIPT,
    )
    max_handshake_message: int = 1 << 17
    honor_client_order: bool = False
    validation_cache: ValidationCache | None = field(default_factory=ValidationCache)

    @classmethod
    def for_peer(cls, profile: Any, **fields: Any) -> TLCPContext:
        """A context with the fields of ``profile`` (a
        :class:`~mstcrypt.protocols.tlcp.profiles.PeerProfile` or its name: ``standard``,
        ``gmssl``, ``tongsuo``), then ``fields`` (which may override them)."""
        from mstcrypt.protocols.tlcp.profiles import PeerProfile

        return cls(**{**PeerProfile.named(profile).fields(), **fields})

    def __post_init__(self) -> None:
        if self.credentials is not None and not isinstance(self.credentials, Credentials):
            raise PolicyError("TLCPContext.credentials must be Credentials")
        self.trust_anchors = tuple(self.trust_anchors)
        self.intermediates = tuple(self.intermediates)
        self.crls = tuple(self.crls)
        for c in (*self.trust_anchors, *self.intermediates):
            if not isinstance(c, Certificate):
                raise PolicyError("trust anchors and intermediates must be Certificate objects")
        for crl in self.crls:
            if not isinstance(crl, CRL | CrlIndex):
                raise PolicyError("crls must be CRL or CrlIndex objects")
        suites = []
        for s in self.cipher_suites:
            try:
                suites.append(CipherSuite(s))
            except ValueError:
                raise PolicyError(
                    f"unsupported cipher suite {s!r}; expected one of "
                    + ", ".join(f"{x.name} (0x{x.value:04X})" for x in CipherSuite)
                ) from None
        if not suites or len(set(suites)) != len(suites):
            raise PolicyError("cipher_suites must be a non-empty list without repeats")
        self.cipher_suites = tuple(suites)
        self.client_auth = _enum(ClientAuth, self.client_auth, "client_auth")
        self.ecdhe_params_encoding = _enum(
            ECDHEParamsEncoding, self.ecdhe_params_encoding, "ecdhe_params_encoding"
        )
        self.certificate_verify_form = _enum(
            CertificateVerifyForm, self.certificate_verify_form, "certificate_verify_form"
        )
        accept = tuple(
            _enum(CertificateVerifyForm, f, "certificate_verify_accept")
            for f in self.certificate_verify_accept
        )
        if not accept:
            raise PolicyError("certificate_verify_accept needs at least one form")
        self.certificate_verify_accept = accept
        if self.sni_callback is not None and not callable(self.sni_callback):
            raise PolicyError("sni_callback must be callable")
        if self.session_cache is not None and not all(
            callable(getattr(self.session_cache, m, None)) for m in ("get", "put", "remove")
        ):
            raise PolicyError("session_cache needs get, put and remove methods")
        if not isinstance(self.honor_client_order, bool):
            raise PolicyError("honor_client_order must be true or false")
        if not isinstance(self.max_handshake_message, int) or self.max_handshake_message < 1024:
            raise PolicyError("max_handshake_message must be at least 1024 bytes")
        if self.validation_cache is not None and not callable(
            getattr(self.validation_cache, "validate", None)
        ):
            raise PolicyError("validation_cache needs a validate method (or None)")


def _enum(kind: Any, value: object, what: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise PolicyError(f"unknown {what} {value!r}; expected one of: {choices}") from None
