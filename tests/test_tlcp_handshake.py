"""TLCP (GB/T 38636-2020): our client against our server in memory — every suite, with
and without client authentication, resumption, SNI, keys in a cryptographic module, the
ECDHE and CertificateVerify variants, the PRF and the public API's guards."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mstcrypt.crypto.sm3 import hmac_sm3
from mstcrypt.errors import PolicyError
from mstcrypt.module.server import ServerModule
from mstcrypt.protocols.tlcp import (
    AlertDescription,
    ApplicationData,
    CertificateVerifyForm,
    CipherSuite,
    ClientAuth,
    ConnectionClosed,
    Credentials,
    ECDHEParamsEncoding,
    HandshakeComplete,
    SessionCache,
    TLCPClient,
    TLCPContext,
    TLCPError,
    TLCPServer,
    prf,
)
from mstcrypt.protocols.tlcp.constants import HandshakeType
from mstcrypt.protocols.tlcp.testing import TestPKI, pump, split_records

HOST = "gw.example.com"
ALL_SUITES = list(CipherSuite)


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI()


@pytest.fixture(scope="module")
def server_id(pki: TestPKI):
    return pki.identity("gateway", names=[HOST])


@pytest.fixture(scope="module")
def client_id(pki: TestPKI):
    return pki.identity("terminal-001", server=False)


def contexts(pki, server_id, client_id, **server_kw):
    client_kw = server_kw.pop("client_kw", {})
    sctx = TLCPContext(credentials=server_id.credentials(), trust_anchors=[pki.root], **server_kw)
    cctx = TLCPContext(
        credentials=client_id.credentials() if client_id else None,
        trust_anchors=[pki.root],
        **client_kw,
    )
    return cctx, sctx


def connect(cctx, sctx, **client_kw):
    client = TLCPClient(cctx, server_name=client_kw.pop("server_name", HOST), **client_kw)
    server = TLCPServer(sctx)
    cev, sev = pump(client, server)
    return client, server, cev, sev


def only(events, kind):
    found = [e for e in events if isinstance(e, kind)]
    assert len(found) == 1, events
    return found[0]


@pytest.mark.parametrize("suite", ALL_SUITES, ids=lambda s: s.name)
@pytest.mark.parametrize("auth", list(ClientAuth), ids=lambda a: a.value)
def test_handshake_and_data_every_suite(pki, server_id, client_id, suite, auth) -> None:
    cctx, sctx = contexts(pki, server_id, client_id, cipher_suites=[suite], client_auth=auth)
    client, server, cev, sev = connect(cctx, sctx)
    ch, sh = only(cev, HandshakeComplete), only(sev, HandshakeComplete)
    assert ch.cipher_suite is sh.cipher_suite is suite
    assert client.cipher_suite is suite and server.handshake_complete
    # The client sees signing certificate then encryption certificate.
    assert [c.der for c in ch.peer_certificates] == [
        server_id.sign_certificate.der,
        server_id.enc_certificate.der,
    ]
    # ECDHE always authenticates the client; ECC only when the server asks.
    if suite.is_ecdhe or auth is not ClientAuth.NONE:
        assert [c.der for c in sh.peer_certificates] == [
            client_id.sign_certificate.der,
            client_id.enc_certificate.der,
        ]
    else:
        assert sh.peer_certificates == ()
    assert ch.server_name == sh.server_name == HOST
    # Application data both ways, larger than one record.
    blob = bytes(range(256)) * 200  # 51200 bytes → 4 records
    client.send_application_data(blob)
    wire = client.data_to_send()
    assert len(split_records(wire)) == 4
    assert b"".join(e.data for e in server.receive_data(wire)) == blob
    server.send_application_data(b"pong")
    assert [e.data for e in client.receive_data(server.data_to_send())] == [b"pong"]
    # Orderly close: close_notify answered with close_notify.
    client.close()
    ev = server.receive_data(client.data_to_send())
    assert ev == [ConnectionClosed(AlertDescription.CLOSE_NOTIFY, by_peer=True)]
    assert client.receive_data(server.data_to_send()) == [
        ConnectionClosed(AlertDescription.CLOSE_NOTIFY, by_peer=True)
    ]
    assert server.closed and client.closed
    with pytest.raises(PolicyError):
        client.send_application_data(b"late")


def test_empty_and_byte_at_a_time_delivery(pki, server_id, client_id) -> None:
    cctx, sctx = contexts(pki, server_id, client_id, cipher_suites=[CipherSuite.ECC_SM4_CBC_SM3])
    client = TLCPClient(cctx, server_name=HOST)
    server = TLCPServer(sctx)
    events = []
    for _ in range(6):
        for b in client.data_to_send():
            events += server.receive_data(bytes([b]))
        for b in server.data_to_send():
            events += client.receive_data(bytes([b]))
    assert sum(isinstance(e, HandshakeComplete) for e in events) == 2
    client.send_application_data(b"")  # nothing queued
    assert client.data_to_send() == b""
    assert server.receive_data(b"") == []


def test_client_offers_ecdhe_only_with_credentials(pki, server_id) -> None:
    cctx, sctx = contexts(pki, server_id, None)
    _, _, cev, _ = connect(cctx, sctx)
    assert only(cev, HandshakeComplete).cipher_suite is CipherSuite.ECC_SM4_GCM_SM3
    with pytest.raises(PolicyError, match="ECDHE"):
        TLCPClient(
            TLCPContext(trust_anchors=[pki.root], cipher_suites=[CipherSuite.ECDHE_SM4_GCM_SM3]),
            server_name=HOST,
        )


def test_server_preference_and_ecdhe_needs_trust_anchors(pki, server_id, client_id) -> None:
    order = [CipherSuite.ECC_SM4_CBC_SM3, CipherSuite.ECDHE_SM4_GCM_SM3]
    cctx, sctx = contexts(pki, server_id, client_id, cipher_suites=order)
    _, _, cev, _ = connect(cctx, sctx)
    assert only(cev, HandshakeComplete).cipher_suite is CipherSuite.ECC_SM4_CBC_SM3
    # A server that cannot verify client certificates never selects ECDHE.
    sctx = TLCPContext(credentials=server_id.credentials(), cipher_suites=list(reversed(order)))
    _, _, cev, _ = connect(cctx, sctx)
    assert only(cev, HandshakeComplete).cipher_suite is CipherSuite.ECC_SM4_CBC_SM3


@pytest.mark.parametrize("suite", ALL_SUITES, ids=lambda s: s.name)
def test_resumption(pki, server_id, client_id, suite) -> None:
    cache = SessionCache()
    cctx, sctx = contexts(
        pki,
        server_id,
        client_id,
        cipher_suites=[suite],
        session_cache=cache,
        client_auth=ClientAuth.OPTIONAL,
    )
    client, _, cev, sev = connect(cctx, sctx)
    first = only(cev, HandshakeComplete)
    assert not first.resumed and len(first.session_id) == 32 and len(cache) == 1
    assert first.session is not None and "master_secret" not in repr(first.session)
    client2, server2, cev2, sev2 = connect(cctx, sctx, session=client.session)
    ch, sh = only(cev2, HandshakeComplete), only(sev2, HandshakeComplete)
    assert ch.resumed and sh.resumed and ch.session_id == first.session_id
    # The abbreviated handshake: no Certificate messages; the peers' certificates are
    # those of the original session.
    assert ch.peer_certificates == first.peer_certificates
    assert sh.peer_certificates == only(sev, HandshakeComplete).peer_certificates
    client2.send_application_data(b"resumed")
    assert server2.receive_data(client2.data_to_send()) == [ApplicationData(b"resumed")]
    server2.send_application_data(b"ok")
    assert client2.receive_data(server2.data_to_send()) == [ApplicationData(b"ok")]


def test_resumption_refused_falls_back_to_full_handshake(pki, server_id, client_id) -> None:
    cache = SessionCache(lifetime=timedelta(minutes=5))
    cctx, sctx = contexts(pki, server_id, client_id, session_cache=cache)
    client, _, _, _ = connect(cctx, sctx)
    session = client.session
    # Expired in the cache → full handshake with a new session ID.
    later = datetime.now(UTC) + timedelta(minutes=10)
    c2 = TLCPClient(cctx, server_name=HOST, session=session, now=later)
    s2 = TLCPServer(sctx, now=later)
    cev, _ = pump(c2, s2)
    hc = only(cev, HandshakeComplete)
    assert not hc.resumed and hc.session_id != session.session_id
    # A server without a cache issues no session ID at all.
    sctx_nocache = TLCPContext(credentials=server_id.credentials(), trust_anchors=[pki.root])
    c3, _, cev, _ = connect(cctx, sctx_nocache, session=c2.session)
    assert only(cev, HandshakeComplete).session_id == b"" and c3.session is None
    # A session for another server name is not offered.
    c4 = TLCPClient(
        TLCPContext(trust_anchors=[pki.root], check_hostname=False),
        server_name="other.example",
        session=c2.session,
    )
    hello = split_records(c4.data_to_send())[0][2]
    assert hello[4 + 2 + 32] == 0  # empty session_id


def test_fatal_alert_removes_session_from_cache(pki, server_id, client_id) -> None:
    cache = SessionCache()
    cctx, sctx = contexts(pki, server_id, client_id, session_cache=cache)
    client, server, _, _ = connect(cctx, sctx)
    assert len(cache) == 1
    wire = bytearray((client.send_application_data(b"x"), client.data_to_send())[1])
    wire[-1] ^= 1
    with pytest.raises(TLCPError) as ei:
        server.receive_data(bytes(wire))
    assert ei.value.alert is AlertDescription.BAD_RECORD_MAC
    assert len(cache) == 0


def test_sni_selects_credentials(pki, server_id, client_id) -> None:
    other = pki.identity("mail gateway", names=["mail.example.com"])
    chosen = []

    def by_name(host):
        chosen.append(host)
        return other.credentials() if host == "mail.example.com" else None

    sctx = TLCPContext(
        credentials=server_id.credentials(), trust_anchors=[pki.root], sni_callback=by_name
    )
    cctx = TLCPContext(trust_anchors=[pki.root])
    _, _, cev, sev = connect(cctx, sctx, server_name="mail.example.com")
    assert only(cev, HandshakeComplete).peer_certificates[0] == other.sign_certificate
    assert only(sev, HandshakeComplete).server_name == "mail.example.com"
    _, _, cev, _ = connect(cctx, sctx)  # falls back to the default credentials
    assert only(cev, HandshakeComplete).peer_certificates[0] == server_id.sign_certificate
    assert chosen == ["mail.example.com", HOST]
    # No default and no match: unrecognized_name.
    sctx = TLCPContext(trust_anchors=[pki.root], sni_callback=lambda host: None)
    with pytest.raises(TLCPError) as ei:
        connect(cctx, sctx, server_name="nobody.example.com")
    assert ei.value.alert is AlertDescription.UNRECOGNIZED_NAME


def test_client_without_server_name_sends_no_extension(pki, server_id) -> None:
    cctx = TLCPContext(trust_anchors=[pki.root], check_hostname=False)
    sctx = TLCPContext(credentials=server_id.credentials())
    client = TLCPClient(cctx)
    hello = split_records(client.data_to_send())[0][2]
    # type(1) len(3) version(2) random(32) sid<1> suites<2> comp<1>: nothing after.
    n_suites = int.from_bytes(hello[39:41], "big")
    assert len(hello) == 41 + n_suites + 2
    server = TLCPServer(sctx)
    server.receive_data(_reframe(hello))
    assert server.server_name is None


def _reframe(msg: bytes) -> bytes:
    return bytes([22, 1, 1]) + len(msg).to_bytes(2, "big") + msg


def test_keys_in_a_crypto_module(tmp_path: Path, pki, client_id) -> None:
    """The gateway's keys stay in an SS-CC module; the protocol only sees callables."""
    module = ServerModule(tmp_path / "sscc.ks", b"k" * 32, create=True)
    module.create_container("gw")
    sign_h = module.generate_key_pair("gw", "sign")
    enc_h = module.generate_key_pair("gw", "enc", escrowed=False)
    from mstcrypt.pki import Profile, name

    subject = name(C="CN", O="mstcrypt test", CN="gateway")
    for h, profile in ((sign_h, Profile.GATEWAY_SIGN), (enc_h, Profile.GATEWAY_ENC)):
        cert = pki.issuer.issue(
            subject=subject, public_key=h.public_key, profile=profile, subject_alt_names=[HOST]
        )
        module.put_certificate("gw", h.usage, cert.der)
    creds = Credentials.from_module(module, "gw")
    for suite in ALL_SUITES:
        sctx = TLCPContext(credentials=creds, trust_anchors=[pki.root], cipher_suites=[suite])
        cctx = TLCPContext(credentials=client_id.credentials(), trust_anchors=[pki.root])
        _, _, cev, _ = connect(cctx, sctx)
        assert only(cev, HandshakeComplete).cipher_suite is suite
    with pytest.raises(PolicyError, match="encryption key does not match"):
        Credentials.from_module(module, "gw", enc_certificate=creds.sign_certificate)


def test_credentials_refuse_a_key_that_does_not_match(server_id) -> None:
    with pytest.raises(PolicyError, match="encryption key does not match"):
        Credentials.from_keys(
            server_id.sign_certificate,
            server_id.sign_key,
            server_id.enc_certificate,
            server_id.sign_key,
        )
    with pytest.raises(PolicyError, match="signing key does not match"):
        Credentials.from_keys(
            server_id.sign_certificate,
            server_id.enc_key,
            server_id.enc_certificate,
            server_id.enc_key,
        )
    creds = server_id.credentials()
    assert "sign_key" not in repr(creds) and "bound method" not in repr(creds)


@pytest.mark.parametrize("encoding", list(ECDHEParamsEncoding))
def test_both_client_ecdhe_params_framings_accepted(pki, server_id, client_id, encoding) -> None:
    cctx, sctx = contexts(
        pki,
        server_id,
        client_id,
        cipher_suites=[CipherSuite.ECDHE_SM4_CBC_SM3],
        client_kw={"ecdhe_params_encoding": encoding},
    )
    client = TLCPClient(cctx, server_name=HOST)
    server = TLCPServer(sctx)
    seen = []

    def watch(data: bytes) -> bytes:
        for t, _, frag in split_records(data):
            if t == 22 and frag[0] == HandshakeType.CLIENT_KEY_EXCHANGE:
                seen.append(len(frag) - 4)
        return data

    cev, _ = pump(client, server, to_server=watch)
    assert only(cev, HandshakeComplete)
    assert seen == [71 if encoding is ECDHEParamsEncoding.VECTOR else 69]


@pytest.mark.parametrize("form", list(CertificateVerifyForm))
def test_certificate_verify_forms(pki, server_id, client_id, form) -> None:
    # A server accepts both forms by default (GmSSL 3.2+ sends the transcript form).
    cctx, sctx = contexts(
        pki,
        server_id,
        client_id,
        client_auth=ClientAuth.REQUIRED,
        client_kw={"certificate_verify_form": form},
    )
    assert sctx.certificate_verify_accept == tuple(CertificateVerifyForm)
    _, _, cev, sev = connect(cctx, sctx)
    assert only(cev, HandshakeComplete)
    assert only(sev, HandshakeComplete).peer_certificates[0] == client_id.sign_certificate
    # A server restricted to one form refuses the other.
    other = next(f for f in CertificateVerifyForm if f is not form)
    _, strict = contexts(
        pki, server_id, client_id, client_auth=ClientAuth.REQUIRED, certificate_verify_accept=[form]
    )
    cctx2, _ = contexts(pki, server_id, client_id, client_kw={"certificate_verify_form": other})
    with pytest.raises(TLCPError) as ei:
        connect(cctx2, strict)
    assert ei.value.alert is AlertDescription.DECRYPT_ERROR
    _, _, cev, _ = connect(cctx, strict)
    assert only(cev, HandshakeComplete)


def test_optional_client_auth_without_client_certificates(pki, server_id) -> None:
    cctx, sctx = contexts(
        pki,
        server_id,
        None,
        client_auth=ClientAuth.OPTIONAL,
        cipher_suites=[CipherSuite.ECC_SM4_GCM_SM3],
    )
    _, _, _, sev = connect(cctx, sctx)
    assert only(sev, HandshakeComplete).peer_certificates == ()


def test_renegotiation_is_refused_with_a_warning(pki, server_id, client_id) -> None:
    cctx, sctx = contexts(pki, server_id, client_id)
    client, server, _, _ = connect(cctx, sctx)
    # A second ClientHello on the established connection → warning no_renegotiation.
    c2 = TLCPClient(cctx, server_name=HOST)
    hello = split_records(c2.data_to_send())[0][2]
    client._send_handshake(HandshakeType.CLIENT_HELLO, hello[4:])
    assert server.receive_data(client.data_to_send()) == []
    ev = client.receive_data(server.data_to_send())
    assert [(e.level, e.description) for e in ev] == [(1, AlertDescription.NO_RENEGOTIATION)]
    server.send_application_data(b"still up")
    assert client.receive_data(server.data_to_send()) == [ApplicationData(b"still up")]


def test_prf_matches_rfc5246_definition() -> None:
    secret, label, seed = b"s" * 48, b"test label", b"seed" * 8
    a1 = hmac_sm3(secret, label + seed)
    a2 = hmac_sm3(secret, a1)
    expect = hmac_sm3(secret, a1 + label + seed) + hmac_sm3(secret, a2 + label + seed)
    assert prf.prf(secret, label, seed, 40) == expect[:40]
    assert prf.prf(secret, label, seed, 64) == expect
    # Key block seed is server_random ‖ client_random; master secret client ‖ server.
    cr, sr = b"c" * 32, b"s" * 32
    assert prf.key_block(secret, cr, sr, 40) == prf.prf(secret, b"key expansion", sr + cr, 40)
    assert prf.master_secret(secret, cr, sr) == prf.prf(secret, b"master secret", cr + sr, 48)
    with pytest.raises(PolicyError):
        prf.prf(secret, label, seed, 0)


def test_api_guards(pki, server_id) -> None:
    with pytest.raises(PolicyError, match="trust_anchors"):
        TLCPClient(TLCPContext(), server_name=HOST)
    with pytest.raises(PolicyError, match="server_name"):
        TLCPClient(TLCPContext(trust_anchors=[pki.root]))
    with pytest.raises(PolicyError, match="credentials"):
        TLCPServer(TLCPContext(trust_anchors=[pki.root]))
    with pytest.raises(PolicyError, match="trust_anchors"):
        TLCPServer(TLCPContext(credentials=server_id.credentials(), client_auth="required"))
    with pytest.raises(PolicyError, match="cipher suite"):
        TLCPContext(cipher_suites=[0xC02F])
    with pytest.raises(PolicyError, match="client_auth"):
        TLCPContext(client_auth="sometimes")
    with pytest.raises(PolicyError):
        TLCPContext(cipher_suites=[])
    with pytest.raises(PolicyError):
        TLCPClient(TLCPContext(trust_anchors=[pki.root]), server_name=HOST, now=datetime.now())
    client = TLCPClient(TLCPContext(trust_anchors=[pki.root]), server_name=HOST)
    with pytest.raises(PolicyError, match="not complete"):
        client.send_application_data(b"early")
    with pytest.raises(PolicyError):
        client.receive_data("text")  # type: ignore[arg-type]


def test_ecc_client_may_send_only_its_signing_certificate(pki, server_id, client_id) -> None:
    cctx, sctx = contexts(
        pki,
        server_id,
        client_id,
        cipher_suites=[CipherSuite.ECC_SM4_GCM_SM3],
        client_auth=ClientAuth.REQUIRED,
        client_kw={"ecc_client_dual_certificates": False},
    )
    _, _, _, sev = connect(cctx, sctx)
    assert only(sev, HandshakeComplete).peer_certificates == (client_id.sign_certificate,)


def test_failing_key_operation_and_callback_send_internal_error(pki, server_id) -> None:
    from mstcrypt.errors import KeyStoreError

    def locked(_: bytes) -> bytes:
        raise KeyStoreError("token is not logged in")

    sid = server_id
    creds = Credentials(sid.sign_certificate, sid.enc_certificate, locked, sid.enc_key.decrypt)
    sctx = TLCPContext(credentials=creds)
    client = TLCPClient(TLCPContext(trust_anchors=[pki.root]), server_name=HOST)
    server = TLCPServer(sctx)
    with pytest.raises(TLCPError, match="KeyStoreError") as ei:
        server.receive_data(client.data_to_send())
    assert ei.value.alert is AlertDescription.INTERNAL_ERROR
    assert isinstance(ei.value.__cause__, KeyStoreError)
    assert server.data_to_send()[-2:] == bytes([2, AlertDescription.INTERNAL_ERROR])

    def broken(host):
        raise KeyError(host)

    sctx = TLCPContext(credentials=sid.credentials(), sni_callback=broken)
    client = TLCPClient(TLCPContext(trust_anchors=[pki.root]), server_name=HOST)
    server = TLCPServer(sctx)
    with pytest.raises(TLCPError) as ei:
        server.receive_data(client.data_to_send())
    assert ei.value.alert is AlertDescription.INTERNAL_ERROR
    assert "gw.example.com" not in str(ei.value)  # no details of foreign exceptions


def test_blocking_socket_adapter(pki, server_id, client_id) -> None:
    import socket
    import threading

    from mstcrypt.protocols.tlcp.sync import TLCPSocket

    cctx, sctx = contexts(pki, server_id, client_id, session_cache=SessionCache())
    a, b = socket.socketpair()
    a.settimeout(20)
    b.settimeout(20)
    result = {}

    def serve() -> None:
        with TLCPSocket.accept(b, sctx) as s:
            result["server"] = s.handshake
            data = s.recv_exactly(100_000)
            s.sendall(data[::-1])
            result["eof"] = s.recv()

    t = threading.Thread(target=serve)
    t.start()
    c = TLCPSocket(a, TLCPClient(cctx, server_name=HOST))
    hs = c.do_handshake()
    payload = (bytes(range(256)) * 391)[:100_000]
    c.sendall(payload)
    assert c.recv_exactly(100_000) == payload[::-1]
    c.close()
    t.join(10)
    assert result["eof"] == b""
    assert result["server"].session_id == hs.session_id and hs.cipher_suite is not None
