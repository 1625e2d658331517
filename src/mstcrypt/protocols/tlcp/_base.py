"""The part of a TLCP endpoint shared by client and server: record and handshake
framing, the transcript, alerts, ChangeCipherSpec, Finished and application data."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from datetime import UTC, datetime

from mstcrypt.crypto.random import random_bytes
from mstcrypt.crypto.sm3 import SM3, sm3
from mstcrypt.errors import MstCryptError, PolicyError
from mstcrypt.pki import Certificate
from mstcrypt.protocols.tlcp import prf
from mstcrypt.protocols.tlcp.constants import (
    AlertDescription,
    AlertLevel,
    CertificateVerifyForm,
    CipherSuite,
    ContentType,
    HandshakeType,
)
from mstcrypt.protocols.tlcp.context import Session, TLCPContext
from mstcrypt.protocols.tlcp.errors import TLCPError
from mstcrypt.protocols.tlcp.events import (
    AlertReceived,
    ApplicationData,
    ConnectionClosed,
    Event,
    HandshakeComplete,
)
from mstcrypt.protocols.tlcp.messages import Reader, handshake
from mstcrypt.protocols.tlcp.record import (
    CBCProtection,
    GCMProtection,
    RecordLayer,
    key_block_size,
    protections_for,
)

Handler = Callable[[bytes, int], None]

CLIENT_FINISHED = b"client finished"
SERVER_FINISHED = b"server finished"


def make_random(now: datetime) -> bytes:
    """gmt_unix_time(4) ‖ 28 random bytes."""
    return (int(now.timestamp()) & 0xFFFFFFFF).to_bytes(4, "big") + random_bytes(28)


def fail(alert: AlertDescription, message: str) -> TLCPError:
    return TLCPError(alert, message)


class Connection:
    """Base class of :class:`TLCPClient` and :class:`TLCPServer` (sans-IO)."""

    is_client = False

    def __init__(self, context: TLCPContext, *, now: datetime | None = None) -> None:
        if not isinstance(context, TLCPContext):
            raise PolicyError("a TLCP endpoint needs a TLCPContext")
        if now is None:
            now = datetime.now(UTC)
        elif now.tzinfo is None:
            raise PolicyError("now must be an aware datetime")
        self._ctx = context
        self._now = now
        self._rl = RecordLayer()
        self._out = bytearray()
        self._hs_buf = bytearray()
        self._transcript = bytearray()
        self._th = SM3()  # running SM3 of self._transcript[: self._th_len]
        self._th_len = 0
        self._expect: dict[HandshakeType, Handler] = {}
        self._expect_ccs: Callable[[], None] | None = None
        self._pending_read: CBCProtection | GCMProtection | None = None
        self._pending_write: CBCProtection | GCMProtection | None = None
        self._events: list[Event] = []
        self._established = False
        self._failed = False
        self._close_sent = False
        self._close_received = False
        self.client_random = b""
        self.server_random = b""
        self._master = b""
        self._suite: CipherSuite | None = None
        self._session_id = b""
        self._peer_certs: tuple[Certificate, ...] = ()
        self._server_name: str | None = None
        self._resumed = False
        self._session: Session | None = None
        self._alert_sent: AlertDescription | None = None
        self._alert_received: AlertDescription | int | None = None

    # --- public API -------------------------------------------------------------------
    @property
    def handshake_complete(self) -> bool:
        return self._established

    @property
    def cipher_suite(self) -> CipherSuite | None:
        return self._suite

    @property
    def peer_certificates(self) -> tuple[Certificate, ...]:
        return self._peer_certs

    @property
    def session(self) -> Session | None:
        """The session (after the handshake) to pass to a later client for resumption."""
        return self._session

    @property
    def server_name(self) -> str | None:
        return self._server_name

    @property
    def alert_sent(self) -> AlertDescription | None:
        """The fatal alert this side sent (it detected a failure), else None."""
        return self._alert_sent

    @property
    def alert_received(self) -> AlertDescription | int | None:
        """The fatal alert the peer sent, else None."""
        return self._alert_received

    @property
    def closed(self) -> bool:
        """True once nothing more will be received (close_notify or fatal alert)."""
        return self._failed or self._close_received

    def data_to_send(self) -> bytes:
        """Bytes to write to the transport (and clear them)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> list[Event]:
        """Process bytes from the transport; return the events they produced.

        On a protocol failure the fatal alert is queued in :meth:`data_to_send` and
        :class:`TLCPError` is raised; the connection is then unusable.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise PolicyError("receive_data needs bytes")
        if self.closed:
            return []
        self._rl.feed(bytes(data))
        self._events = events = []
        try:
            while not self.closed:
                rec = self._rl.next_record()
                if rec is None:
                    break
                self._on_record(*rec)
        except TLCPError as exc:
            self._abort(exc.alert)
            raise
        except Exception as exc:
            # A key operation or callback failed (a locked token, a module error, a bug in
            # an sni_callback): the peer gets internal_error, the caller the cause.
            self._abort(AlertDescription.INTERNAL_ERROR)
            detail = f": {exc}" if isinstance(exc, MstCryptError) else ""
            raise TLCPError(
                AlertDescription.INTERNAL_ERROR, f"internal error ({type(exc).__name__}{detail})"
            ) from exc
        return events

    def send_application_data(self, data: bytes) -> None:
        """Queue ``data`` for sending (split into records of at most 2^14 bytes)."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise PolicyError("send_application_data needs bytes")
        if not self._established:
            raise PolicyError("the TLCP handshake is not complete")
        if self._close_sent or self._failed:
            raise PolicyError("the TLCP connection is closed for sending")
        if data:
            self._out += self._rl.seal(ContentType.APPLICATION_DATA, bytes(data))

    def close(self) -> None:
        """Queue close_notify. Receiving may continue until the peer's close_notify."""
        if self._close_sent or self._failed:
            return
        self._close_sent = True
        self._send_alert(AlertLevel.WARNING, AlertDescription.CLOSE_NOTIFY)

    # --- sending --------------------------------------------------------------------
    def _send_alert(self, level: AlertLevel, desc: AlertDescription) -> None:
        self._out += self._rl.seal(ContentType.ALERT, bytes([level, desc]))

    def _send_handshake(self, msg_type: HandshakeType, body: bytes) -> None:
        raw = handshake(msg_type, body)
        self._transcript += raw
        self._out += self._rl.seal(ContentType.HANDSHAKE, raw)

    def _send_ccs_and_finished(self) -> None:
        assert self._pending_write is not None
        self._out += self._rl.seal(ContentType.CHANGE_CIPHER_SPEC, b"\x01")
        self._rl.write = self._pending_write
        self._pending_write = None
        label = CLIENT_FINISHED if self.is_client else SERVER_FINISHED
        verify = self._verify_data(label, len(self._transcript))
        self._send_handshake(HandshakeType.FINISHED, verify)

    def _abort(self, alert: AlertDescription) -> None:
        if not self._failed:
            self._failed = True
            self._alert_sent = alert
            self._send_alert(AlertLevel.FATAL, alert)
            self._forget_session()

    def _forget_session(self) -> None:
        """A session that ended with a fatal alert must not be resumed (server)."""

    # --- key schedule ---------------------------------------------------------------
    def _derive_keys(self) -> None:
        assert self._suite is not None
        block = prf.key_block(
            self._master, self.client_random, self.server_random, key_block_size(self._suite)
        )
        cw, sw = protections_for(self._suite, block)
        self._pending_write, self._pending_read = (cw, sw) if self.is_client else (sw, cw)

    def _transcript_hash(self, upto: int) -> bytes:
        """SM3 of the first ``upto`` transcript bytes, from a running hash (the
        transcript is hashed once, not once per Finished and CertificateVerify)."""
        if upto < self._th_len:
            return sm3(bytes(self._transcript[:upto]))
        if upto > self._th_len:
            self._th.update(bytes(self._transcript[self._th_len : upto]))
            self._th_len = upto
        return self._th.digest()

    def _verify_data(self, label: bytes, upto: int) -> bytes:
        return prf.verify_data(self._master, label, self._transcript_hash(upto))

    def _check_finished(self, body: bytes, upto: int) -> None:
        if len(body) != prf.VERIFY_DATA_SIZE:
            raise fail(AlertDescription.DECODE_ERROR, "Finished must carry 12 bytes")
        label = SERVER_FINISHED if self.is_client else CLIENT_FINISHED
        if not hmac.compare_digest(self._verify_data(label, upto), body):
            raise fail(AlertDescription.DECRYPT_ERROR, "Finished verify_data does not match")

    def _certificate_verify_input(self, form: CertificateVerifyForm, upto: int) -> bytes:
        if form is CertificateVerifyForm.SM3:
            return self._transcript_hash(upto)
        return bytes(self._transcript[:upto])

    def _expect_change_cipher_spec(self, then: Callable[[], None]) -> None:
        self._expect = {}
        self._expect_ccs = then

    def _complete(self) -> None:
        assert self._suite is not None
        self._established = True
        self._expect = {}
        self._transcript = bytearray()  # no longer needed
        self._session = (
            Session(
                session_id=self._session_id,
                cipher_suite=self._suite,
                master_secret=self._master,
                peer_certificates=self._peer_certs,
                server_name=self._server_name,
                created=self._now,
            )
            if self._session_id
            else None
        )
        self._events.append(
            HandshakeComplete(
                peer_certificates=self._peer_certs,
                cipher_suite=self._suite,
                session_id=self._session_id,
                resumed=self._resumed,
                server_name=self._server_name,
                session=self._session,
            )
        )

    # --- receiving ------------------------------------------------------------------
    def _on_record(self, ctype: ContentType, payload: bytes) -> None:
        if ctype is ContentType.HANDSHAKE:
            self._hs_buf += payload
            self._drain_handshake()
        elif ctype is ContentType.CHANGE_CIPHER_SPEC:
            self._on_ccs(payload)
        elif ctype is ContentType.ALERT:
            self._on_alert(payload)
        else:
            if not self._established or self._hs_buf:
                raise fail(
                    AlertDescription.UNEXPECTED_MESSAGE,
                    "application data before the handshake completed",
                )
            if payload:
                self._events.append(ApplicationData(payload))

    def _drain_handshake(self) -> None:
        buf = self._hs_buf
        while len(buf) >= 4:
            length = int.from_bytes(buf[1:4], "big")
            if length > self._ctx.max_handshake_message:
                raise fail(
                    AlertDescription.DECODE_ERROR,
                    f"handshake message of {length} bytes exceeds the limit",
                )
            if len(buf) < 4 + length:
                return
            raw = bytes(buf[: 4 + length])
            del buf[: 4 + length]
            self._on_handshake(raw)
            if self.closed:
                return

    def _on_handshake(self, raw: bytes) -> None:
        try:
            mtype = HandshakeType(raw[0])
        except ValueError:
            raise fail(
                AlertDescription.UNEXPECTED_MESSAGE, f"unknown handshake message type {raw[0]}"
            ) from None
        if self._established:
            self._after_handshake(mtype)
            return
        if mtype is HandshakeType.HELLO_REQUEST and self.is_client:
            return  # ignored during a handshake (RFC 5246 §7.4.1.1)
        handler = self._expect.get(mtype)
        if handler is None:
            raise fail(
                AlertDescription.UNEXPECTED_MESSAGE,
                f"unexpected {mtype.name} in this state of the handshake",
            )
        upto = len(self._transcript)
        self._transcript += raw
        handler(raw[4:], upto)

    def _after_handshake(self, mtype: HandshakeType) -> None:
        hello = HandshakeType.HELLO_REQUEST if self.is_client else HandshakeType.CLIENT_HELLO
        if mtype is hello:
            self._send_alert(AlertLevel.WARNING, AlertDescription.NO_RENEGOTIATION)
            return
        raise fail(AlertDescription.UNEXPECTED_MESSAGE, f"unexpected {mtype.name} after handshake")

    def _on_ccs(self, payload: bytes) -> None:
        if payload != b"\x01":
            raise fail(AlertDescription.DECODE_ERROR, "malformed ChangeCipherSpec")
        if self._expect_ccs is None or self._hs_buf:
            raise fail(AlertDescription.UNEXPECTED_MESSAGE, "unexpected ChangeCipherSpec")
        assert self._pending_read is not None
        self._rl.read = self._pending_read
        self._pending_read = None
        then, self._expect_ccs = self._expect_ccs, None
        then()

    def _on_alert(self, payload: bytes) -> None:
        if len(payload) != 2:
            raise fail(AlertDescription.DECODE_ERROR, "alert record must be 2 bytes")
        level_v, desc_v = payload[0], payload[1]
        try:
            level = AlertLevel(level_v)
        except ValueError:
            raise fail(AlertDescription.ILLEGAL_PARAMETER, f"alert level {level_v}") from None
        try:
            desc: AlertDescription | int = AlertDescription(desc_v)
        except ValueError:
            desc = desc_v
        if desc == AlertDescription.CLOSE_NOTIFY:
            self._close_received = True
            self._events.append(ConnectionClosed(AlertDescription.CLOSE_NOTIFY, by_peer=True))
            if not self._close_sent and not self._failed:
                self._close_sent = True
                self._send_alert(AlertLevel.WARNING, AlertDescription.CLOSE_NOTIFY)
            return
        self._events.append(AlertReceived(level, desc))
        if level is AlertLevel.FATAL:
            self._failed = True
            self._alert_received = desc
            self._forget_session()
            self._events.append(ConnectionClosed(desc, by_peer=True))

    # --- helpers for subclasses --------------------------------------------------------
    @staticmethod
    def _signature(body: bytes, what: str) -> bytes:
        r = Reader(body, what)
        sig = r.vector(2, 1)
        r.end()
        return sig
