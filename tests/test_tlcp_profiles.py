"""Peer profiles and liberal acceptance: a server accepts every CertificateVerify and
ClientECDHEParams form by default while still refusing forged signatures; the
``standard``/``gmssl``/``tongsuo`` profiles; the ``auto`` policy's single retry, which
happens only after the server was authenticated and never on a failure to authenticate
it."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import PolicyError
from mstcrypt.protocols.tlcp import (
    AlertDescription,
    CertificateVerifyForm,
    CipherSuite,
    ClientAuth,
    Credentials,
    ECDHEParamsEncoding,
    HandshakeComplete,
    PeerProfile,
    TLCPClient,
    TLCPContext,
    TLCPError,
    TLCPServer,
    aio,
)
from mstcrypt.protocols.tlcp.constants import HandshakeType
from mstcrypt.protocols.tlcp.profiles import (
    COMPAT_CHOICES,
    GMSSL,
    STANDARD,
    TONGSUO,
    FormRetry,
    retry_for,
)
from mstcrypt.protocols.tlcp.sync import TLCPSocket
from mstcrypt.protocols.tlcp.testing import TestPKI, join_records, pump, split_records

HOST = "gw.example.com"
SUITES = list(CipherSuite)
ECC = [s for s in SUITES if not s.is_ecdhe]


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI("Profiles")


@pytest.fixture(scope="module")
def server_id(pki):
    return pki.identity("gateway", names=[HOST])


@pytest.fixture(scope="module")
def client_id(pki):
    return pki.identity("terminal-001", server=False)


def server_ctx(pki, server_id, **kw) -> TLCPContext:
    kw.setdefault("client_auth", ClientAuth.REQUIRED)
    return TLCPContext(credentials=server_id.credentials(), trust_anchors=[pki.root], **kw)


def client_ctx(pki, client_id, **kw) -> TLCPContext:
    return TLCPContext(credentials=client_id.credentials(), trust_anchors=[pki.root], **kw)


def handshake(cctx, sctx, **pump_kw):
    client = TLCPClient(cctx, server_name=HOST)
    server = TLCPServer(sctx)
    cev, sev = pump(client, server, **pump_kw)
    return client, server, cev, sev


def complete(events) -> HandshakeComplete:
    done = [e for e in events if isinstance(e, HandshakeComplete)]
    assert len(done) == 1, events
    return done[0]


def fail_then_deliver_alert(cctx, sctx, **pump_kw) -> tuple[TLCPClient, TLCPError]:
    """Run a handshake the server refuses; hand its fatal alert to the client (as the
    socket adapters do) and return the client and the server's error."""
    client = TLCPClient(cctx, server_name=HOST)
    server = TLCPServer(sctx)
    with pytest.raises(TLCPError) as ei:
        pump(client, server, **pump_kw)
    assert client.alert_sent is None, "the client itself must not have failed"
    client.receive_data(server.data_to_send())
    return client, ei.value


# --- liberal acceptance, strict signatures ------------------------------------------


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_gmssl_style_certificate_verify_accepted_by_default(
    pki, server_id, client_id, suite
) -> None:
    """A GmSSL 3.2+ client signs the raw handshake messages; a server with no
    configuration accepts it (as it accepts the standard SM3 form)."""
    sctx = server_ctx(pki, server_id)
    for form in CertificateVerifyForm:
        cctx = client_ctx(pki, client_id, cipher_suites=[suite], certificate_verify_form=form)
        _, _, _, sev = handshake(cctx, sctx)
        assert complete(sev).peer_certificates[0] == client_id.sign_certificate


@pytest.mark.parametrize("encoding", list(ECDHEParamsEncoding))
def test_both_ecdhe_params_encodings_accepted_by_default(
    pki, server_id, client_id, encoding
) -> None:
    sctx = server_ctx(pki, server_id)
    cctx = client_ctx(
        pki,
        client_id,
        cipher_suites=[CipherSuite.ECDHE_SM4_GCM_SM3],
        ecdhe_params_encoding=encoding,
    )
    _, _, cev, _ = handshake(cctx, sctx)
    assert complete(cev).cipher_suite is CipherSuite.ECDHE_SM4_GCM_SM3


def _forging_credentials(client_id, sign) -> Credentials:
    """The client's certificates (public) with a signer that is not the client's key."""
    return Credentials(
        sign_certificate=client_id.sign_certificate,
        enc_certificate=client_id.enc_certificate,
        sign=sign,
        decrypt=client_id.enc_key.decrypt,
    )


@pytest.mark.parametrize("form", list(CertificateVerifyForm))
def test_forged_certificate_verify_is_refused_in_either_form(
    pki, server_id, client_id, form
) -> None:
    """An attacker holding the terminal's certificates but not its key: a signature by
    another key, a signature replayed from an earlier handshake (in the same form and
    in the other form) and a malformed signature are all refused by the default (liberal)
    server with decrypt_error."""
    suite = CipherSuite.ECC_SM4_GCM_SM3
    sctx = server_ctx(pki, server_id)
    recorded: dict[CertificateVerifyForm, bytes] = {}
    for f in CertificateVerifyForm:
        signed = []

        def record(message: bytes, signed=signed) -> bytes:
            sig = client_id.sign_key.sign(message)
            signed.append(sig)
            return sig

        genuine = dataclasses.replace(client_id.credentials(), sign=record)
        cctx = client_ctx(pki, client_id, cipher_suites=[suite], certificate_verify_form=f)
        cctx.credentials = genuine
        _, _, _, sev = handshake(cctx, sctx)
        complete(sev)
        recorded[f] = signed[-1]

    other_key = SM2PrivateKey.generate()
    forgeries = {
        "another key": other_key.sign,
        "replayed, same form": lambda m: recorded[form],
        "replayed, other form": lambda m: recorded[
            next(f for f in CertificateVerifyForm if f is not form)
        ],
        "malformed": lambda m: b"\x30\x03\x02\x01\x01",
    }
    for what, sign in forgeries.items():
        cctx = client_ctx(pki, client_id, cipher_suites=[suite], certificate_verify_form=form)
        cctx.credentials = _forging_credentials(client_id, sign)
        client = TLCPClient(cctx, server_name=HOST)
        server = TLCPServer(sctx)
        with pytest.raises(TLCPError) as ei:
            pump(client, server)
        assert ei.value.alert is AlertDescription.DECRYPT_ERROR, what
        assert not server.handshake_complete, what


# --- profiles ---------------------------------------------------------------------


def test_profiles_set_the_documented_fields(pki) -> None:
    assert COMPAT_CHOICES == ("standard", "gmssl", "tongsuo", "auto")
    g = TLCPContext.for_peer("gmssl", trust_anchors=[pki.root])
    assert g.certificate_verify_form is CertificateVerifyForm.TRANSCRIPT
    assert g.ecdhe_params_encoding is ECDHEParamsEncoding.VECTOR
    assert g.ecc_client_dual_certificates is False
    assert g.certificate_verify_accept[0] is CertificateVerifyForm.TRANSCRIPT
    t = TLCPContext.for_peer(TONGSUO, ecc_client_dual_certificates=False)
    assert t.ecdhe_params_encoding is ECDHEParamsEncoding.STRUCT
    assert t.certificate_verify_form is CertificateVerifyForm.SM3
    assert t.ecc_client_dual_certificates is False  # explicit fields win
    s = STANDARD.apply(g)
    assert (s.certificate_verify_form, s.ecdhe_params_encoding) == (
        CertificateVerifyForm.SM3,
        ECDHEParamsEncoding.VECTOR,
    )
    assert s.ecc_client_dual_certificates and s.trust_anchors == (pki.root,)
    for p in (STANDARD, GMSSL, TONGSUO):
        assert set(p.certificate_verify_accept) == set(CertificateVerifyForm)
        assert PeerProfile.named(p.name.upper()) is p
    with pytest.raises(PolicyError, match="auto is a connection policy"):
        PeerProfile.named("auto")
    with pytest.raises(PolicyError, match="unknown peer profile"):
        PeerProfile.named("openssl")


@pytest.mark.parametrize("profile", [STANDARD, GMSSL, TONGSUO], ids=lambda p: p.name)
@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_every_profile_reaches_a_default_server(pki, server_id, client_id, profile, suite):
    for auth in (ClientAuth.NONE, ClientAuth.REQUIRED):
        sctx = profile.apply(server_ctx(pki, server_id, client_auth=auth))
        cctx = TLCPContext.for_peer(
            profile,
            credentials=client_id.credentials(),
            trust_anchors=[pki.root],
            cipher_suites=[suite],
        )
        _, _, cev, sev = handshake(cctx, server_ctx(pki, server_id, client_auth=auth))
        assert complete(cev).cipher_suite is suite
        _, _, cev, sev = handshake(cctx, sctx)
        assert complete(sev).cipher_suite is suite
        if suite.is_ecdhe or auth is ClientAuth.REQUIRED:
            n = 1 if not suite.is_ecdhe and not profile.ecc_client_dual_certificates else 2
            assert (
                complete(sev).peer_certificates[:2]
                == (
                    client_id.sign_certificate,
                    client_id.enc_certificate,
                )[:n]
            )


def test_tongsuo_profile_server_follows_the_client_order(pki, server_id, client_id) -> None:
    """Like Tongsuo's server; Tongsuo's client lists ECC first, so a Tongsuo client
    without certificates that offers ECDHE too still gets an ECC suite."""
    offer = [CipherSuite.ECC_SM4_GCM_SM3, CipherSuite.ECDHE_SM4_GCM_SM3]
    cctx = client_ctx(pki, client_id, cipher_suites=offer)
    chosen = {}
    for profile in (STANDARD, GMSSL, TONGSUO):
        sctx = profile.apply(server_ctx(pki, server_id, client_auth=ClientAuth.NONE))
        assert sctx.honor_client_order is (profile is TONGSUO)
        _, _, cev, _ = handshake(cctx, sctx)
        chosen[profile.name] = complete(cev).cipher_suite
    assert chosen == {
        "standard": CipherSuite.ECDHE_SM4_GCM_SM3,
        "gmssl": CipherSuite.ECDHE_SM4_GCM_SM3,
        "tongsuo": CipherSuite.ECC_SM4_GCM_SM3,
    }
    # Only suites the server allows, and ECDHE only when it can verify the client.
    sctx = server_ctx(
        pki,
        server_id,
        client_auth=ClientAuth.NONE,
        cipher_suites=[CipherSuite.ECDHE_SM4_GCM_SM3, CipherSuite.ECC_SM4_CBC_SM3],
        honor_client_order=True,
    )
    cctx = client_ctx(pki, client_id, cipher_suites=[*offer, CipherSuite.ECC_SM4_CBC_SM3])
    _, _, cev, _ = handshake(cctx, sctx)
    assert complete(cev).cipher_suite is CipherSuite.ECDHE_SM4_GCM_SM3
    with pytest.raises(PolicyError, match="honor_client_order"):
        TLCPContext(honor_client_order="yes")


# --- auto: what a refusal reveals -------------------------------------------------


def _gmssl_like(pki, server_id) -> TLCPContext:
    """A server that, like GmSSL's, verifies only the transcript form."""
    return server_ctx(pki, server_id, certificate_verify_accept=[CertificateVerifyForm.TRANSCRIPT])


def _refuse_vector_cke(data: bytes) -> bytes:
    """Make a vector-framed ClientKeyExchange unreadable (a server that reads only the
    bare structure), leaving the bare structure alone."""
    out = []
    for t, v, frag in split_records(data):
        if t == 22 and frag[0] == HandshakeType.CLIENT_KEY_EXCHANGE and frag[4] == 0:
            body = frag[4:] + b"\x00"
            frag = frag[:1] + len(body).to_bytes(3, "big") + body
        out.append((t, v, frag))
    return join_records(out)


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_retry_after_certificate_verify_refused(pki, server_id, client_id, suite) -> None:
    sctx = _gmssl_like(pki, server_id)
    cctx = client_ctx(pki, client_id, cipher_suites=[suite])
    client, err = fail_then_deliver_alert(cctx, sctx)
    assert err.alert is AlertDescription.DECRYPT_ERROR
    again = retry_for(client, cctx)
    assert isinstance(again, FormRetry)
    assert again.changes["certificate_verify_form"] == "transcript"
    assert ("ecc_client_dual_certificates" in again.changes) is (not suite.is_ecdhe)
    assert "decrypt_error" in str(again) and "retrying once" in str(again)
    _, _, cev, _ = handshake(again.context, sctx)
    assert complete(cev).cipher_suite is suite


def test_retry_when_the_server_closes_after_certificate_verify(pki, server_id, client_id):
    """GmSSL's server closes without an alert on a CertificateVerify it refuses."""
    cctx = client_ctx(pki, client_id, cipher_suites=[CipherSuite.ECDHE_SM4_CBC_SM3])
    client = TLCPClient(cctx, server_name=HOST)
    server = TLCPServer(server_ctx(pki, server_id))
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    assert client.sent_flight is not None and client.sent_flight.certificates == 2
    # ... and the connection ends here without an alert.
    again = retry_for(client, cctx)
    assert again is not None and "without an alert" in again.reason
    assert again.context.certificate_verify_form is CertificateVerifyForm.TRANSCRIPT


@pytest.mark.parametrize("suite", [CipherSuite.ECDHE_SM4_CBC_SM3, CipherSuite.ECDHE_SM4_GCM_SM3])
def test_retry_after_decode_error_on_client_key_exchange(pki, server_id, client_id, suite):
    sctx = server_ctx(pki, server_id)
    cctx = client_ctx(pki, client_id, cipher_suites=[suite])
    client, err = fail_then_deliver_alert(cctx, sctx, to_server=_refuse_vector_cke)
    assert err.alert is AlertDescription.DECODE_ERROR
    again = retry_for(client, cctx)
    assert again is not None and again.changes == {"ecdhe_params_encoding": "struct"}
    _, _, cev, _ = handshake(again.context, sctx, to_server=_refuse_vector_cke)
    assert complete(cev).cipher_suite is suite


def test_retry_after_handshake_failure_on_a_single_ecc_chain(pki, server_id, client_id):
    """Tongsuo's server answers the signing chain alone with handshake_failure."""
    sctx = server_ctx(pki, server_id)
    cctx = TLCPContext.for_peer(
        GMSSL,
        credentials=client_id.credentials(),
        trust_anchors=[pki.root],
        cipher_suites=[CipherSuite.ECC_SM4_CBC_SM3],
    )
    client = TLCPClient(cctx, server_name=HOST)
    server = TLCPServer(sctx)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    assert client.sent_flight.certificates == 1 and not client.sent_flight.dual_certificates
    client.receive_data(b"\x15\x01\x01\x00\x02\x02\x28")  # fatal handshake_failure
    again = retry_for(client, cctx)
    assert again is not None and again.changes == {
        "certificate_verify_form": "sm3",
        "ecc_client_dual_certificates": "true",
    }
    # ... but not after the dual list, nor with ECDHE.
    dual = TLCPClient(
        client_ctx(pki, client_id, cipher_suites=[CipherSuite.ECC_SM4_CBC_SM3]), server_name=HOST
    )
    server = TLCPServer(sctx)
    server.receive_data(dual.data_to_send())
    dual.receive_data(server.data_to_send())
    dual.receive_data(b"\x15\x01\x01\x00\x02\x02\x28")
    assert retry_for(dual, cctx) is None


def test_no_retry_without_a_revealing_failure(pki, server_id, client_id) -> None:
    # The client's certificate is refused for a real reason (unknown CA): not retried.
    other = TestPKI("Other")
    sctx = TLCPContext(
        credentials=server_id.credentials(),
        trust_anchors=[other.root],
        client_auth=ClientAuth.REQUIRED,
    )
    cctx = client_ctx(pki, client_id, cipher_suites=[CipherSuite.ECC_SM4_GCM_SM3])
    client, err = fail_then_deliver_alert(cctx, sctx)
    assert err.alert is AlertDescription.UNKNOWN_CA
    assert retry_for(client, cctx) is None
    # decode_error with an ECC suite: no ClientECDHEParams to change.
    client = TLCPClient(cctx, server_name=HOST)
    server = TLCPServer(server_ctx(pki, server_id))
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    client.receive_data(b"\x15\x01\x01\x00\x02\x02\x32")  # fatal decode_error
    assert client.alert_received == AlertDescription.DECODE_ERROR
    assert retry_for(client, cctx) is None
    # A refusal before our flight (no common suite): not retried.
    sctx = server_ctx(pki, server_id, cipher_suites=[CipherSuite.ECC_SM4_CBC_SM3])
    client, err = fail_then_deliver_alert(cctx, sctx)
    assert err.alert is AlertDescription.HANDSHAKE_FAILURE
    assert client.sent_flight is None and retry_for(client, cctx) is None


# --- auto never retries a failure to authenticate the server -------------------------


def _tamper(msg_type: HandshakeType, offset: int):
    def hook(data: bytes) -> bytes:
        out = []
        for t, v, frag in split_records(data):
            if t == 22 and frag[0] == msg_type:
                b = bytearray(frag)
                b[offset] ^= 0x01
                frag = bytes(b)
            out.append((t, v, frag))
        return join_records(out)

    return hook


def test_no_retry_when_the_server_is_not_authenticated(pki, server_id, client_id) -> None:
    cctx = client_ctx(pki, client_id, cipher_suites=[CipherSuite.ECDHE_SM4_GCM_SM3])
    other = TestPKI("Impostor")
    impostor = other.identity("gateway", names=[HOST])
    wrong_name = pki.identity("elsewhere", names=["elsewhere.example.com"])
    cases = {
        "untrusted issuer": (server_ctx(pki, impostor), None),
        "host name mismatch": (server_ctx(pki, wrong_name), None),
        "ServerKeyExchange signature": (
            server_ctx(pki, server_id),
            _tamper(HandshakeType.SERVER_KEY_EXCHANGE, 20),
        ),
    }
    for what, (sctx, hook) in cases.items():
        client = TLCPClient(cctx, server_name=HOST)
        server = TLCPServer(sctx)
        with pytest.raises(TLCPError) as ei:
            pump(client, server, to_client=hook)
        assert not ei.value.received, what
        assert client.sent_flight is None, what
        assert retry_for(client, cctx) is None, what


def test_no_retry_when_the_server_finished_is_wrong(pki, server_id, client_id) -> None:
    """A server Finished that does not verify (after our flight) is our own failure."""
    cctx = client_ctx(pki, client_id, cipher_suites=[CipherSuite.ECC_SM4_CBC_SM3])
    client = TLCPClient(cctx, server_name=HOST)
    server = TLCPServer(server_ctx(pki, server_id))
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    out = split_records(server.data_to_send())
    t, v, frag = out[-1]  # the encrypted Finished
    out[-1] = (t, v, frag[:-1] + bytes([frag[-1] ^ 1]))
    with pytest.raises(TLCPError):
        client.receive_data(join_records(out))
    assert client.sent_flight is not None and client.alert_sent is not None
    assert retry_for(client, cctx) is None


# --- the adapters: one retry, over real sockets -------------------------------------


class Counting:
    """Handshakes a test server saw: completed ones and failed ones."""

    def __init__(self) -> None:
        self.completed = 0
        self.errors: list[BaseException] = []

    async def connections(self, expected: int) -> int:
        for _ in range(100):
            if self.completed + len(self.errors) >= expected:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)  # and no more than that
        return self.completed + len(self.errors)


async def _serve(sctx: TLCPContext, counting: Counting) -> asyncio.Server:
    async def handle(reader, writer) -> None:
        counting.completed += 1
        data = await reader.read(100)
        writer.write(data)
        await writer.drain()
        writer.close()

    def on_error(exc: BaseException, peer) -> None:
        counting.errors.append(exc)

    return await aio.start_server(handle, "127.0.0.1", 0, sctx, on_handshake_error=on_error)


def test_aio_auto_retries_once_and_reports_the_form(pki, server_id, client_id) -> None:
    async def main() -> None:
        counting = Counting()
        server = await _serve(_gmssl_like(pki, server_id), counting)
        port = server.sockets[0].getsockname()[1]
        cctx = client_ctx(pki, client_id, cipher_suites=[CipherSuite.ECC_SM4_GCM_SM3])
        told: list[FormRetry] = []
        r, w = await aio.open_connection(
            "127.0.0.1", port, cctx, server_name=HOST, retry=True, on_retry=told.append
        )
        w.write(b"ping")
        assert await r.read(100) == b"ping"
        assert len(told) == 1 and w.get_extra_info("retry") is told[0]
        used = w.get_extra_info("context")
        assert used.certificate_verify_form is CertificateVerifyForm.TRANSCRIPT
        assert used.ecc_client_dual_certificates is False
        w.close()
        await w.wait_closed()
        assert await counting.connections(2) == 2
        # Without retry the same server refuses the standard form.
        with pytest.raises(TLCPError):
            await aio.open_connection("127.0.0.1", port, cctx, server_name=HOST)
        assert await counting.connections(3) == 3
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_aio_auto_never_retries_an_unauthenticated_server(pki, client_id) -> None:
    impostor = TestPKI("Impostor").identity("gateway", names=[HOST])

    async def main() -> None:
        counting = Counting()
        server = await _serve(server_ctx(pki, impostor), counting)
        port = server.sockets[0].getsockname()[1]
        cctx = client_ctx(pki, client_id)
        told: list[FormRetry] = []
        with pytest.raises(TLCPError) as ei:
            await aio.open_connection(
                "127.0.0.1", port, cctx, server_name=HOST, retry=True, on_retry=told.append
            )
        assert ei.value.alert is AlertDescription.UNKNOWN_CA and not ei.value.received
        assert await counting.connections(1) == 1 and told == []
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_sync_auto_retries_once(pki, server_id, client_id) -> None:
    import socket
    import threading

    sctx = _gmssl_like(pki, server_id)
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    accepted: list[object] = []

    def serve() -> None:
        for _ in range(2):
            conn, _ = lsock.accept()
            conn.settimeout(10)
            try:
                s = TLCPSocket.accept(conn, sctx)
                s.sendall(s.recv())
                accepted.append(s.handshake)
                s.close()
            except (TLCPError, OSError) as exc:
                accepted.append(exc)
                conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    cctx = client_ctx(pki, client_id, cipher_suites=[CipherSuite.ECDHE_SM4_CBC_SM3])
    told: list[FormRetry] = []
    port = lsock.getsockname()[1]
    with TLCPSocket.connect(
        ("127.0.0.1", port), cctx, server_name=HOST, retry=True, on_retry=told.append
    ) as s:
        s.sendall(b"hi")
        assert s.recv_exactly(2) == b"hi"
        assert s.retry is told[0]
    t.join(10)
    lsock.close()
    assert isinstance(accepted[0], TLCPError) and isinstance(accepted[1], HandshakeComplete)
