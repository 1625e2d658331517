"""The TLCP client state machine (sans-IO).

Full handshake::

    ClientHello            →
                           ←  ServerHello, Certificate, ServerKeyExchange,
                              [CertificateRequest], ServerHelloDone
    [Certificate], ClientKeyExchange, [CertificateVerify], CCS, Finished  →
                           ←  CCS, Finished

Resumption (the server accepted the offered session ID)::

    ClientHello(session_id) →
                            ←  ServerHello(session_id), CCS, Finished
    CCS, Finished           →
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime

from mstcrypt.crypto.random import random_bytes
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import DecryptionError, InvalidKeyError, PolicyError, VerificationError
from mstcrypt.protocols.tlcp import prf
from mstcrypt.protocols.tlcp._base import Connection, fail, make_random
from mstcrypt.protocols.tlcp._certs import hostname_matches, parse_chain, validate_peer
from mstcrypt.protocols.tlcp.constants import (
    EXT_SERVER_NAME,
    TLCP_VERSION,
    AlertDescription,
    CertificateVerifyForm,
    CipherSuite,
    ECDHEParamsEncoding,
    HandshakeType,
)
from mstcrypt.protocols.tlcp.context import Credentials, Session, TLCPContext
from mstcrypt.protocols.tlcp.messages import (
    ClientHello,
    Reader,
    ServerHello,
    decode_certificate_list,
    decode_certificate_request,
    decode_ecdh_params,
    encode_certificate_list,
    encode_ecdh_params,
    server_name_extension,
    vec,
)

__all__ = ["ClientFlight", "TLCPClient"]

PRE_MASTER_SIZE = 48


@dataclass(frozen=True)
class ClientFlight:
    """What the client's second flight (after ServerHelloDone) carried, in the forms
    that differ between implementations: the number of certificates sent (None when the
    server asked for none), whether the encryption certificate was among them, the
    CertificateVerify form (None when none was sent) and the ClientECDHEParams framing
    (None with ECC suites). It is sent only after the server's certificates, host name
    and ServerKeyExchange signature have been verified."""

    cipher_suite: CipherSuite
    certificates: int | None
    dual_certificates: bool
    certificate_verify_form: CertificateVerifyForm | None
    ecdhe_params_encoding: ECDHEParamsEncoding | None


class TLCPClient(Connection):
    """A TLCP client. The ClientHello is queued at construction: call
    :meth:`data_to_send` first.

    ``server_name`` is sent as SNI (unless it is an IP literal) and, with
    ``context.check_hostname``, must match the server's signing certificate.
    ``session`` (from an earlier :class:`HandshakeComplete`) is offered for resumption.
    """

    is_client = True

    def __init__(
        self,
        context: TLCPContext,
        *,
        server_name: str | None = None,
        session: Session | None = None,
        now: datetime | None = None,
    ) -> None:
        super().__init__(context, now=now)
        ctx = self._ctx
        if not ctx.trust_anchors:
            raise PolicyError("a TLCP client needs trust_anchors to verify the server")
        if server_name is not None and (not isinstance(server_name, str) or not server_name):
            raise PolicyError("server_name must be a non-empty string")
        if ctx.check_hostname and server_name is None:
            raise PolicyError("check_hostname needs a server_name (or set check_hostname=False)")
        creds = ctx.credentials
        can_exchange = creds is not None and creds.key_exchange is not None
        self._offered = tuple(s for s in ctx.cipher_suites if can_exchange or not s.is_ecdhe)
        if not self._offered:
            raise PolicyError(
                "no cipher suite to offer: ECDHE suites need client credentials with a "
                "key_exchange operation"
            )
        self._server_name = server_name.rstrip(".").lower() if server_name else None
        self._offer = session if isinstance(session, Session) else None
        if self._offer is not None and (
            self._offer.cipher_suite not in self._offered
            or self._offer.server_name != self._server_name
        ):
            self._offer = None
        self._sent_sni = False
        self._cert_requested = False
        self._server_point = b""
        self._flight: ClientFlight | None = None
        self._send_client_hello()

    @property
    def sent_flight(self) -> ClientFlight | None:
        """The client's second flight once sent (see :class:`ClientFlight`), else None."""
        return self._flight

    # --- ClientHello ---------------------------------------------------------------------
    def _send_client_hello(self) -> None:
        self.client_random = make_random(self._now)
        extensions = []
        if self._server_name is not None and not _is_ip(self._server_name):
            try:
                extensions.append(server_name_extension(self._server_name))
                self._sent_sni = True
            except UnicodeEncodeError:
                raise PolicyError("server_name must be ASCII (IDNA-encode it)") from None
        hello = ClientHello(
            random=self.client_random,
            session_id=self._offer.session_id if self._offer else b"",
            cipher_suites=tuple(int(s) for s in self._offered),
            extensions=tuple(extensions),
        )
        self._send_handshake(HandshakeType.CLIENT_HELLO, hello.encode())
        self._expect = {HandshakeType.SERVER_HELLO: self._on_server_hello}

    # --- ServerHello ------------------------------------------------------------------
    def _on_server_hello(self, body: bytes, upto: int) -> None:
        sh = ServerHello.decode(body)
        if sh.version != TLCP_VERSION:
            raise fail(
                AlertDescription.PROTOCOL_VERSION,
                f"server chose version 0x{sh.version:04x}, expected 0x0101",
            )
        if sh.cipher_suite not in self._offered:
            raise fail(
                AlertDescription.ILLEGAL_PARAMETER,
                f"server chose cipher suite 0x{sh.cipher_suite:04X}, which was not offered",
            )
        if sh.compression_method != 0:
            raise fail(AlertDescription.ILLEGAL_PARAMETER, "server chose a compression method")
        for etype, ebody in sh.extensions:
            if etype == EXT_SERVER_NAME and self._sent_sni and not ebody:
                continue
            raise fail(
                AlertDescription.UNSUPPORTED_EXTENSION,
                f"server sent extension {etype}, which the client did not offer",
            )
        self.server_random = sh.random
        self._suite = CipherSuite(sh.cipher_suite)
        self._session_id = sh.session_id
        offer = self._offer
        if offer is not None and sh.session_id == offer.session_id:
            if self._suite is not offer.cipher_suite:
                raise fail(
                    AlertDescription.ILLEGAL_PARAMETER,
                    "server resumed the session with another cipher suite",
                )
            self._resumed = True
            self._master = offer.master_secret
            self._peer_certs = offer.peer_certificates
            self._derive_keys()
            self._expect_change_cipher_spec(self._expect_server_finished)
            return
        self._expect = {HandshakeType.CERTIFICATE: self._on_certificate}

    # --- server Certificate ----------------------------------------------------------
    def _on_certificate(self, body: bytes, upto: int) -> None:
        certs = parse_chain(decode_certificate_list(body))
        validate_peer(
            self._ctx, certs, at=self._now, eku="server_auth", need_enc=True, who="server"
        )
        if (
            self._ctx.check_hostname
            and self._server_name is not None
            and not hostname_matches(
                certs[0], self._server_name, allow_common_name=self._ctx.hostname_cn_fallback
            )
        ):
            raise fail(
                AlertDescription.BAD_CERTIFICATE,
                f"server certificate does not match the name {self._server_name!r}",
            )
        self._peer_certs = certs
        self._expect = {HandshakeType.SERVER_KEY_EXCHANGE: self._on_server_key_exchange}

    # --- ServerKeyExchange ----------------------------------------------------------------
    def _on_server_key_exchange(self, body: bytes, upto: int) -> None:
        assert self._suite is not None
        sign_cert, enc_cert = self._peer_certs[0], self._peer_certs[1]
        r = Reader(body, "ServerKeyExchange")
        randoms = self.client_random + self.server_random
        if self._suite.is_ecdhe:
            point = decode_ecdh_params(r)
            params = body[: len(body) - r.remaining()]
            tbs = randoms + params
            self._server_point = point
        else:
            enc_der = enc_cert.der
            tbs = randoms + len(enc_der).to_bytes(3, "big") + enc_der
        sig = r.vector(2, 1)
        r.end()
        try:
            sign_cert.public_key.verify(sig, tbs)
        except VerificationError:
            raise fail(
                AlertDescription.DECRYPT_ERROR, "ServerKeyExchange signature does not verify"
            ) from None
        self._expect = {
            HandshakeType.CERTIFICATE_REQUEST: self._on_certificate_request,
            HandshakeType.SERVER_HELLO_DONE: self._on_server_hello_done,
        }

    def _on_certificate_request(self, body: bytes, upto: int) -> None:
        # Parsed strictly, but any certificate_types list is accepted: SM2 certificates
        # are ecdsa_sign (64) in TLCP, and peers differ in what else they list.
        decode_certificate_request(body)
        self._cert_requested = True
        self._expect = {HandshakeType.SERVER_HELLO_DONE: self._on_server_hello_done}

    # --- ServerHelloDone and the client's flight -----------------------------------------
    def _on_server_hello_done(self, body: bytes, upto: int) -> None:
        assert self._suite is not None
        if body:
            raise fail(AlertDescription.DECODE_ERROR, "ServerHelloDone must be empty")
        creds = self._ctx.credentials
        if self._suite.is_ecdhe and not self._cert_requested:
            raise fail(
                AlertDescription.HANDSHAKE_FAILURE,
                "ECDHE suite without CertificateRequest: the client's encryption key must "
                "take part in the key exchange",
            )
        send_certs: Credentials | None = None
        dual = self._suite.is_ecdhe or self._ctx.ecc_client_dual_certificates
        sent: list[bytes] | None = None
        if self._cert_requested:
            send_certs = creds
            sent = send_certs.certificate_list(dual=dual) if send_certs else []
            self._send_handshake(HandshakeType.CERTIFICATE, encode_certificate_list(sent))
        pms = self._send_client_key_exchange(creds)
        form: CertificateVerifyForm | None = None
        if send_certs is not None:
            form = self._ctx.certificate_verify_form  # type: ignore[assignment]
            data = self._certificate_verify_input(form, len(self._transcript))  # type: ignore[arg-type]
            sig = send_certs.sign(data)
            self._send_handshake(HandshakeType.CERTIFICATE_VERIFY, vec(sig, 2))
        self._flight = ClientFlight(
            cipher_suite=self._suite,
            certificates=None if sent is None else len(sent),
            dual_certificates=bool(sent) and dual,
            certificate_verify_form=form,
            ecdhe_params_encoding=(
                self._ctx.ecdhe_params_encoding if self._suite.is_ecdhe else None  # type: ignore[arg-type]
            ),
        )
        self._master = prf.master_secret(pms, self.client_random, self.server_random)
        self._derive_keys()
        self._send_ccs_and_finished()
        self._expect_change_cipher_spec(self._expect_server_finished)

    def _send_client_key_exchange(self, creds: Credentials | None) -> bytes:
        assert self._suite is not None
        enc_pub = self._peer_certs[1].public_key
        if self._suite.is_ecdhe:
            assert creds is not None and creds.key_exchange is not None
            eph = SM2PrivateKey.generate()
            try:
                pms = creds.key_exchange(
                    initiator=False,
                    peer_public=enc_pub,
                    ephemeral=eph,
                    peer_ephemeral=self._server_point,
                    klen=PRE_MASTER_SIZE,
                )
            except InvalidKeyError as exc:
                raise fail(
                    AlertDescription.ILLEGAL_PARAMETER, f"server ECDH point rejected: {exc}"
                ) from None
            params = encode_ecdh_params(eph.public_key().to_bytes())
            if self._ctx.ecdhe_params_encoding is ECDHEParamsEncoding.VECTOR:
                params = vec(params, 2)
            self._send_handshake(HandshakeType.CLIENT_KEY_EXCHANGE, params)
            return pms
        pms = TLCP_VERSION.to_bytes(2, "big") + random_bytes(PRE_MASTER_SIZE - 2)
        try:
            ct = enc_pub.encrypt(pms)
        except DecryptionError:  # pragma: no cover - encryption does not fail
            raise fail(AlertDescription.INTERNAL_ERROR, "SM2 encryption failed") from None
        self._send_handshake(HandshakeType.CLIENT_KEY_EXCHANGE, vec(ct, 2))
        return pms

    # --- server Finished ------------------------------------------------------------------
    def _expect_server_finished(self) -> None:
        self._expect = {HandshakeType.FINISHED: self._on_finished}

    def _on_finished(self, body: bytes, upto: int) -> None:
        self._check_finished(body, upto)
        if self._resumed:
            self._send_ccs_and_finished()
        self._complete()


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
