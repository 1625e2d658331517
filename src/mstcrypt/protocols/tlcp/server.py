"""The TLCP server state machine (sans-IO).

The server sends its signing certificate, its encryption certificate and its chain;
signs the ServerKeyExchange with the signing key; decrypts the ECC pre-master secret or
runs the SM2 key exchange (as initiator) with the encryption key. With an ECDHE suite it
always sends CertificateRequest and requires the client's signing and encryption
certificates. Session IDs are issued, and resumed, only when the context has a
session cache.
"""

from __future__ import annotations

from datetime import datetime

from mstcrypt.crypto.random import random_bytes
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import (
    DecryptionError,
    InvalidKeyError,
    PolicyError,
    SignatureFormatError,
    VerificationError,
)
from mstcrypt.protocols.tlcp import prf
from mstcrypt.protocols.tlcp._base import Connection, fail, make_random
from mstcrypt.protocols.tlcp._certs import parse_chain, validate_peer
from mstcrypt.protocols.tlcp.constants import (
    CERT_TYPE_ECDSA_SIGN,
    EXT_SERVER_NAME,
    TLCP_VERSION,
    AlertDescription,
    CipherSuite,
    ClientAuth,
    HandshakeType,
)
from mstcrypt.protocols.tlcp.context import Credentials, Session, TLCPContext
from mstcrypt.protocols.tlcp.messages import (
    ClientHello,
    Reader,
    ServerHello,
    decode_certificate_list,
    decode_client_ecdhe_params,
    encode_certificate_list,
    encode_certificate_request,
    encode_ecdh_params,
    parse_server_name,
    vec,
)

__all__ = ["TLCPServer"]

SESSION_ID_SIZE = 32
PRE_MASTER_SIZE = 48


class TLCPServer(Connection):
    """A TLCP server for one connection. Feed it the client's bytes."""

    is_client = False

    def __init__(self, context: TLCPContext, *, now: datetime | None = None) -> None:
        super().__init__(context, now=now)
        ctx = self._ctx
        if ctx.credentials is None and ctx.sni_callback is None:
            raise PolicyError("a TLCP server needs credentials or an sni_callback")
        if ctx.client_auth is not ClientAuth.NONE and not ctx.trust_anchors:
            raise PolicyError("client authentication needs trust_anchors")
        self._creds: Credentials | None = None
        self._eph: SM2PrivateKey | None = None
        self._request_certs = False
        self._client_certs_sent = False
        self._expect = {HandshakeType.CLIENT_HELLO: self._on_client_hello}

    def _forget_session(self) -> None:
        cache = self._ctx.session_cache
        if cache is not None and self._session_id:
            cache.remove(self._session_id)

    # --- ClientHello ----------------------------------------------------------------
    def _on_client_hello(self, body: bytes, upto: int) -> None:
        ctx = self._ctx
        ch = ClientHello.decode(body)
        if ch.version != TLCP_VERSION:
            raise fail(
                AlertDescription.PROTOCOL_VERSION,
                f"client offered version 0x{ch.version:04x}; this server speaks TLCP 0x0101",
            )
        if 0 not in ch.compression_methods:
            raise fail(AlertDescription.ILLEGAL_PARAMETER, "client did not offer null compression")
        host: str | None = None
        for etype, ebody in ch.extensions:
            if etype == EXT_SERVER_NAME:
                host = parse_server_name(ebody)
            # Other extensions are ignored, as TLS requires of a server.
        self.client_random = ch.random
        self._server_name = host
        self._creds = self._choose_credentials(host)

        offered = set(ch.cipher_suites)
        if ch.session_id and ctx.session_cache is not None:
            cached = ctx.session_cache.get(ch.session_id, self._now)
            if (
                isinstance(cached, Session)
                and cached.cipher_suite in offered
                and cached.cipher_suite in ctx.cipher_suites
                and cached.server_name == host
            ):
                self._resume(cached)
                return

        self._suite = self._select_suite(ch.cipher_suites)
        self._session_id = random_bytes(SESSION_ID_SIZE) if ctx.session_cache is not None else b""
        self._send_server_hello()
        creds = self._creds
        self._send_handshake(
            HandshakeType.CERTIFICATE, encode_certificate_list(creds.certificate_list())
        )
        self._send_server_key_exchange()
        self._request_certs = self._suite.is_ecdhe or ctx.client_auth is not ClientAuth.NONE
        if self._request_certs:
            names = [c.subject.dump() for c in (*ctx.trust_anchors, *ctx.intermediates)]
            self._send_handshake(
                HandshakeType.CERTIFICATE_REQUEST,
                encode_certificate_request(bytes([CERT_TYPE_ECDSA_SIGN]), names),
            )
            self._expect = {HandshakeType.CERTIFICATE: self._on_client_certificate}
        else:
            self._expect = {HandshakeType.CLIENT_KEY_EXCHANGE: self._on_client_key_exchange}
        self._send_handshake(HandshakeType.SERVER_HELLO_DONE, b"")

    def _choose_credentials(self, host: str | None) -> Credentials:
        ctx = self._ctx
        creds: Credentials | None = None
        if ctx.sni_callback is not None:
            creds = ctx.sni_callback(host)
            if creds is not None and not isinstance(creds, Credentials):
                raise fail(AlertDescription.INTERNAL_ERROR, "sni_callback returned no Credentials")
        if creds is None:
            creds = ctx.credentials
        if creds is None:
            raise fail(
                AlertDescription.UNRECOGNIZED_NAME,
                f"no certificate for server name {host!r}",
            )
        return creds

    def _select_suite(self, offered: tuple[int, ...]) -> CipherSuite:
        """The first usable suite in the server's order, or in the client's with
        ``honor_client_order`` (as Tongsuo's server does)."""
        ctx = self._ctx
        assert self._creds is not None
        ours = tuple(ctx.cipher_suites)
        order = [CipherSuite(s) for s in offered if s in ours] if ctx.honor_client_order else ours
        for suite in order:
            if suite not in offered:
                continue
            if suite.is_ecdhe and (self._creds.key_exchange is None or not ctx.trust_anchors):
                continue
            return suite
        raise fail(
            AlertDescription.HANDSHAKE_FAILURE,
            "no cipher suite in common (offered: "
            + ", ".join(f"0x{s:04X}" for s in sorted(offered))
            + ")",
        )

    def _send_server_hello(self) -> None:
        assert self._suite is not None
        self.server_random = make_random(self._now)
        extensions = []
        sni_used = self._server_name is not None and self._ctx.sni_callback is not None
        if sni_used and not self._resumed:
            extensions.append((EXT_SERVER_NAME, b""))
        sh = ServerHello(
            random=self.server_random,
            session_id=self._session_id,
            cipher_suite=int(self._suite),
            extensions=tuple(extensions),
        )
        self._send_handshake(HandshakeType.SERVER_HELLO, sh.encode())

    def _resume(self, session: Session) -> None:
        self._resumed = True
        self._suite = session.cipher_suite
        self._session_id = session.session_id
        self._master = session.master_secret
        self._peer_certs = session.peer_certificates
        self._send_server_hello()
        self._derive_keys()
        self._send_ccs_and_finished()
        self._expect_change_cipher_spec(self._expect_client_finished)

    # --- ServerKeyExchange ---------------------------------------------------------------
    def _send_server_key_exchange(self) -> None:
        assert self._suite is not None and self._creds is not None
        randoms = self.client_random + self.server_random
        if self._suite.is_ecdhe:
            self._eph = SM2PrivateKey.generate()
            params = encode_ecdh_params(self._eph.public_key().to_bytes())
            sig = self._creds.sign(randoms + params)
            body = params + vec(sig, 2)
        else:
            enc_der = self._creds.enc_certificate.der
            sig = self._creds.sign(randoms + len(enc_der).to_bytes(3, "big") + enc_der)
            body = vec(sig, 2)
        self._send_handshake(HandshakeType.SERVER_KEY_EXCHANGE, body)

    # --- client Certificate ----------------------------------------------------------
    def _on_client_certificate(self, body: bytes, upto: int) -> None:
        assert self._suite is not None
        ders = decode_certificate_list(body)
        required = self._suite.is_ecdhe or self._ctx.client_auth is ClientAuth.REQUIRED
        if not ders:
            if required:
                raise fail(
                    AlertDescription.HANDSHAKE_FAILURE,
                    "client sent no certificate"
                    + (
                        " (ECDHE needs the client's dual certificates)"
                        if self._suite.is_ecdhe
                        else ""
                    ),
                )
        else:
            certs = parse_chain(ders)
            validate_peer(
                self._ctx,
                certs,
                at=self._now,
                eku="client_auth",
                need_enc=self._suite.is_ecdhe,
                who="client",
            )
            self._peer_certs = certs
            self._client_certs_sent = True
        self._expect = {HandshakeType.CLIENT_KEY_EXCHANGE: self._on_client_key_exchange}

    # --- ClientKeyExchange ------------------------------------------------------------------
    def _on_client_key_exchange(self, body: bytes, upto: int) -> None:
        assert self._suite is not None and self._creds is not None
        ecdhe = self._suite.is_ecdhe
        pms = self._ecdhe_pre_master(body) if ecdhe else self._ecc_pre_master(body)
        self._master = prf.master_secret(pms, self.client_random, self.server_random)
        self._derive_keys()
        if self._client_certs_sent:
            self._expect = {HandshakeType.CERTIFICATE_VERIFY: self._on_certificate_verify}
        else:
            self._expect_change_cipher_spec(self._expect_client_finished)

    def _ecc_pre_master(self, body: bytes) -> bytes:
        assert self._creds is not None
        r = Reader(body, "ClientKeyExchange")
        ct = r.vector(2, 1)
        r.end()
        try:
            pms = self._creds.decrypt(ct)
        except DecryptionError:
            raise fail(
                AlertDescription.DECRYPT_ERROR, "the encrypted pre-master secret does not decrypt"
            ) from None
        if len(pms) != PRE_MASTER_SIZE or pms[:2] != TLCP_VERSION.to_bytes(2, "big"):
            raise fail(
                AlertDescription.ILLEGAL_PARAMETER,
                "pre-master secret must be 48 bytes starting with version 0x0101",
            )
        return pms

    def _ecdhe_pre_master(self, body: bytes) -> bytes:
        assert self._creds is not None and self._creds.key_exchange is not None
        assert self._eph is not None
        point, _ = decode_client_ecdhe_params(body)
        try:
            pms = self._creds.key_exchange(
                initiator=True,
                peer_public=self._peer_certs[1].public_key,
                ephemeral=self._eph,
                peer_ephemeral=point,
                klen=PRE_MASTER_SIZE,
            )
        except InvalidKeyError as exc:
            raise fail(
                AlertDescription.ILLEGAL_PARAMETER, f"client ECDH point rejected: {exc}"
            ) from None
        self._eph = None
        return pms

    # --- CertificateVerify ------------------------------------------------------------
    def _on_certificate_verify(self, body: bytes, upto: int) -> None:
        sig = self._signature(body, "CertificateVerify")
        key = self._peer_certs[0].public_key
        for form in self._ctx.certificate_verify_accept:
            try:
                key.verify(sig, self._certificate_verify_input(form, upto))  # type: ignore[arg-type]
            except SignatureFormatError:
                raise fail(
                    AlertDescription.DECRYPT_ERROR, "CertificateVerify signature is malformed"
                ) from None
            except VerificationError:
                continue
            break
        else:
            raise fail(
                AlertDescription.DECRYPT_ERROR, "CertificateVerify signature does not verify"
            )
        self._expect_change_cipher_spec(self._expect_client_finished)

    # --- client Finished --------------------------------------------------------------
    def _expect_client_finished(self) -> None:
        self._expect = {HandshakeType.FINISHED: self._on_finished}

    def _on_finished(self, body: bytes, upto: int) -> None:
        self._check_finished(body, upto)
        if not self._resumed:
            self._send_ccs_and_finished()
        self._complete()
        cache = self._ctx.session_cache
        if cache is not None and self._session is not None and not self._resumed:
            cache.put(self._session)
