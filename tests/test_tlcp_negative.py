"""TLCP failure paths: every tampered record type and handshake message, truncated and
oversized records, unexpected messages, and the certificate checks (mismatched
encryption key, another CA, revocation, expiry, host name) — each must end the
handshake with the right alert, sent to the peer."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mstcrypt.pki import RevokedEntry
from mstcrypt.protocols.tlcp import (
    AlertDescription,
    AlertReceived,
    CipherSuite,
    ClientAuth,
    ConnectionClosed,
    Credentials,
    SessionCache,
    TLCPClient,
    TLCPContext,
    TLCPError,
    TLCPServer,
    prf,
)
from mstcrypt.protocols.tlcp.constants import MAX_CIPHERTEXT, MAX_PLAINTEXT, HandshakeType
from mstcrypt.protocols.tlcp.messages import vec
from mstcrypt.protocols.tlcp.record import key_block_size, protections_for
from mstcrypt.protocols.tlcp.testing import TestPKI, join_records, pump, split_records

HOST = "gw.example.com"
A = AlertDescription
H = HandshakeType
ECC = CipherSuite.ECC_SM4_CBC_SM3
ECC_GCM = CipherSuite.ECC_SM4_GCM_SM3
ECDHE = CipherSuite.ECDHE_SM4_GCM_SM3
ECDHE_CBC = CipherSuite.ECDHE_SM4_CBC_SM3
Rewrite = Callable[[bytes], bytes]


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI()


@pytest.fixture(scope="module")
def ids(pki):
    return {
        "server": pki.identity("gateway", names=[HOST]),
        "client": pki.identity("terminal-001", server=False),
    }


def ctxs(pki, ids, suite=ECC, *, auth=ClientAuth.REQUIRED, server_creds=None, **kw):
    sctx = TLCPContext(
        credentials=server_creds or ids["server"].credentials(),
        trust_anchors=kw.pop("server_anchors", [pki.root]),
        crls=kw.pop("server_crls", ()),
        cipher_suites=[suite],
        client_auth=auth,
        session_cache=kw.pop("session_cache", None),
    )
    cctx = TLCPContext(
        credentials=kw.pop("client_creds", ids["client"].credentials()),
        trust_anchors=kw.pop("client_anchors", [pki.root]),
        crls=kw.pop("client_crls", ()),
        cipher_suites=kw.pop("client_suites", [suite]),
    )
    assert not kw
    return cctx, sctx


def fail(
    cctx,
    sctx,
    *,
    to_server: Rewrite | None = None,
    to_client: Rewrite | None = None,
    server_name: str = HOST,
    now: datetime | None = None,
):
    client = TLCPClient(cctx, server_name=server_name, now=now)
    server = TLCPServer(sctx, now=now)
    with pytest.raises(TLCPError) as ei:
        pump(client, server, to_server=to_server, to_client=to_client)
    return ei.value, client, server


def check(err: TLCPError, side, alert: AlertDescription, *, plaintext: bool = True) -> bytes:
    """``side`` raised ``alert`` and queued it as a fatal alert record; returns that
    record as sent."""
    assert err.alert is alert, str(err)
    assert side.closed
    records = split_records(side.data_to_send())
    assert records and records[-1][0] == 21
    if plaintext:
        assert records[-1][2] == bytes([2, alert])
    return join_records(records[-1:])


# --- record rewriting ---------------------------------------------------------------


def on_message(msg_type: int, fn: Callable[[bytes], bytes | None]) -> Rewrite:
    """Rewrite (or drop, when fn returns None) the plaintext handshake message
    ``msg_type``; lengths are recomputed from the new body."""

    def rewrite(data: bytes) -> bytes:
        out, protected = [], False
        for t, v, frag in split_records(data):
            if t == 20:
                protected = True
            if t == 22 and not protected and frag[0] == msg_type:
                body = fn(frag[4:])
                if body is None:
                    continue
                frag = bytes([msg_type]) + len(body).to_bytes(3, "big") + body
            out.append((t, v, frag))
        return join_records(out)

    return rewrite


def after_ccs(fn: Callable[[bytes], bytes]) -> Rewrite:
    """Rewrite the fragment of the first record after ChangeCipherSpec (Finished)."""

    def rewrite(data: bytes) -> bytes:
        recs = split_records(data)
        for i, (t, _, _) in enumerate(recs):
            if t == 20 and i + 1 < len(recs):
                nt, nv, nf = recs[i + 1]
                recs[i + 1] = (nt, nv, fn(nf))
        return join_records(recs)

    return rewrite


def on_record_type(rtype: int, fn: Callable[[bytes], bytes]) -> Rewrite:
    def rewrite(data: bytes) -> bytes:
        return join_records([(t, v, fn(f) if t == rtype else f) for t, v, f in split_records(data)])

    return rewrite


def flip(pos: int) -> Callable[[bytes], bytes]:
    def f(b: bytes) -> bytes:
        m = bytearray(b)
        m[pos] ^= 0x01
        return bytes(m)

    return f


def replace(pos: int, new: bytes) -> Callable[[bytes], bytes]:
    return lambda b: b[:pos] + new + b[pos + len(new) :]


# --- tampering with each handshake message ------------------------------------------

# (suite, direction, message, body rewrite, side that detects it, alert)
TAMPER = [
    # ClientHello: the server signs the altered random, the client's check fails.
    (ECC, "c2s", H.CLIENT_HELLO, flip(10), "client", A.DECRYPT_ERROR),
    (ECC, "c2s", H.CLIENT_HELLO, replace(0, b"\x03\x03"), "server", A.PROTOCOL_VERSION),
    (ECC, "c2s", H.CLIENT_HELLO, lambda b: b[:-1], "server", A.DECODE_ERROR),
    (ECC, "c2s", H.CLIENT_HELLO, lambda b: b + b"\x00", "server", A.DECODE_ERROR),
    (ECC, "c2s", H.CLIENT_HELLO, replace(34, b"\x21"), "server", A.DECODE_ERROR),  # sid 33
    (ECC, "c2s", H.CLIENT_HELLO, lambda b: b[:-1] + b"\x01", "server", A.ILLEGAL_PARAMETER),
    # ServerHello
    (ECC, "s2c", H.SERVER_HELLO, flip(5), "client", A.DECRYPT_ERROR),
    (ECC, "s2c", H.SERVER_HELLO, replace(0, b"\x03\x03"), "client", A.PROTOCOL_VERSION),
    (ECC, "s2c", H.SERVER_HELLO, replace(35, b"\xe0\x53"), "client", A.ILLEGAL_PARAMETER),
    (ECC, "s2c", H.SERVER_HELLO, replace(37, b"\x01"), "client", A.ILLEGAL_PARAMETER),
    (
        ECC,
        "s2c",
        H.SERVER_HELLO,
        lambda b: b + vec(b"\x00\x23\x00\x00", 2),
        "client",
        A.UNSUPPORTED_EXTENSION,
    ),
    (ECC, "s2c", H.SERVER_HELLO, lambda b: b[:-2], "client", A.DECODE_ERROR),
    # Server Certificate: signature of the signing certificate, then of the encryption one
    (
        ECC,
        "s2c",
        H.CERTIFICATE,
        lambda b: flip(_cert_end(b, 0) - 2)(b),
        "client",
        A.BAD_CERTIFICATE,
    ),
    (
        ECC,
        "s2c",
        H.CERTIFICATE,
        lambda b: flip(_cert_end(b, 1) - 2)(b),
        "client",
        A.BAD_CERTIFICATE,
    ),
    (ECC, "s2c", H.CERTIFICATE, lambda b: _keep_certs(b, 1), "client", A.BAD_CERTIFICATE),
    (ECC, "s2c", H.CERTIFICATE, lambda b: _swap_certs(b), "client", A.UNSUPPORTED_CERTIFICATE),
    (ECC, "s2c", H.CERTIFICATE, lambda b: b[:-1], "client", A.DECODE_ERROR),
    # ServerKeyExchange
    (ECC, "s2c", H.SERVER_KEY_EXCHANGE, lambda b: flip(len(b) - 1)(b), "client", A.DECRYPT_ERROR),
    (ECDHE, "s2c", H.SERVER_KEY_EXCHANGE, lambda b: flip(len(b) - 1)(b), "client", A.DECRYPT_ERROR),
    (ECDHE, "s2c", H.SERVER_KEY_EXCHANGE, flip(40), "client", A.DECRYPT_ERROR),
    (ECDHE, "s2c", H.SERVER_KEY_EXCHANGE, replace(1, b"\x00\x1a"), "client", A.ILLEGAL_PARAMETER),
    (ECDHE, "s2c", H.SERVER_KEY_EXCHANGE, replace(0, b"\x01"), "client", A.ILLEGAL_PARAMETER),
    (ECDHE, "s2c", H.SERVER_KEY_EXCHANGE, replace(4, b"\x02"), "client", A.ILLEGAL_PARAMETER),
    (ECC, "s2c", H.SERVER_KEY_EXCHANGE, lambda b: b + b"\x00", "client", A.DECODE_ERROR),
    # CertificateRequest: the transcripts differ; CertificateVerify fails at the server.
    (ECC, "s2c", H.CERTIFICATE_REQUEST, replace(1, b"\x01"), "server", A.DECRYPT_ERROR),
    (ECC, "s2c", H.CERTIFICATE_REQUEST, lambda b: b"\x00" + b[1:], "client", A.DECODE_ERROR),
    (ECDHE, "s2c", H.CERTIFICATE_REQUEST, lambda b: None, "client", A.HANDSHAKE_FAILURE),
    (ECC, "s2c", H.CERTIFICATE_REQUEST, lambda b: b + b"\x00", "client", A.DECODE_ERROR),
    # ServerHelloDone
    (ECC, "s2c", H.SERVER_HELLO_DONE, lambda b: b"\x00", "client", A.DECODE_ERROR),
    (ECC, "s2c", H.SERVER_HELLO_DONE, lambda b: None, "client", None),  # waits: see below
    # Client Certificate
    (
        ECC,
        "c2s",
        H.CERTIFICATE,
        lambda b: flip(_cert_end(b, 0) - 2)(b),
        "server",
        A.BAD_CERTIFICATE,
    ),
    (ECDHE, "c2s", H.CERTIFICATE, lambda b: _keep_certs(b, 1), "server", A.BAD_CERTIFICATE),
    (ECC, "c2s", H.CERTIFICATE, lambda b: None, "server", A.UNEXPECTED_MESSAGE),
    (ECC, "c2s", H.CERTIFICATE, lambda b: b"\x00\x00\x00", "server", A.HANDSHAKE_FAILURE),
    # ClientKeyExchange
    (ECC, "c2s", H.CLIENT_KEY_EXCHANGE, lambda b: flip(len(b) - 1)(b), "server", A.DECRYPT_ERROR),
    (ECC, "c2s", H.CLIENT_KEY_EXCHANGE, lambda b: flip(len(b) - 40)(b), "server", A.DECRYPT_ERROR),
    (ECC, "c2s", H.CLIENT_KEY_EXCHANGE, lambda b: b[:-1], "server", A.DECODE_ERROR),
    (ECC, "c2s", H.CLIENT_KEY_EXCHANGE, lambda b: b"\x00\x00", "server", A.DECODE_ERROR),
    (
        ECDHE,
        "c2s",
        H.CLIENT_KEY_EXCHANGE,
        lambda b: flip(len(b) - 1)(b),
        "server",
        A.ILLEGAL_PARAMETER,
    ),
    (ECDHE, "c2s", H.CLIENT_KEY_EXCHANGE, lambda b: b[:-1], "server", A.DECODE_ERROR),
    (ECDHE, "c2s", H.CLIENT_KEY_EXCHANGE, lambda b: b + b"\x00", "server", A.DECODE_ERROR),
    (ECDHE, "c2s", H.CLIENT_KEY_EXCHANGE, replace(3, b"\x00\x1a"), "server", A.ILLEGAL_PARAMETER),
    # CertificateVerify
    (ECC, "c2s", H.CERTIFICATE_VERIFY, lambda b: flip(len(b) - 1)(b), "server", A.DECRYPT_ERROR),
    (ECDHE, "c2s", H.CERTIFICATE_VERIFY, lambda b: flip(len(b) - 1)(b), "server", A.DECRYPT_ERROR),
    (ECC, "c2s", H.CERTIFICATE_VERIFY, lambda b: None, "server", A.UNEXPECTED_MESSAGE),
    (ECC, "c2s", H.CERTIFICATE_VERIFY, lambda b: b"\x00\x00", "server", A.DECODE_ERROR),
]


def _cert_offsets(body: bytes) -> list[tuple[int, int]]:
    out, pos = [], 3
    while pos < len(body):
        n = int.from_bytes(body[pos : pos + 3], "big")
        out.append((pos + 3, pos + 3 + n))
        pos += 3 + n
    return out


def _cert_end(body: bytes, i: int) -> int:
    return _cert_offsets(body)[i][1]


def _certs(body: bytes) -> list[bytes]:
    return [body[a:b] for a, b in _cert_offsets(body)]


def _keep_certs(body: bytes, n: int) -> bytes:
    return vec(b"".join(vec(c, 3) for c in _certs(body)[:n]), 3)


def _swap_certs(body: bytes) -> bytes:
    c = _certs(body)
    return vec(b"".join(vec(x, 3) for x in [c[1], c[0], *c[2:]]), 3)


@pytest.mark.parametrize(
    ("suite", "direction", "msg", "fn", "detector", "alert"),
    TAMPER,
    ids=[f"{s.name}-{m.name}-{i}" for i, (s, _, m, *_rest) in enumerate(TAMPER)],
)
def test_tampered_handshake_message(pki, ids, suite, direction, msg, fn, detector, alert) -> None:
    cctx, sctx = ctxs(pki, ids, suite)
    rewrite = on_message(msg, fn)
    kw = {"to_server": rewrite} if direction == "c2s" else {"to_client": rewrite}
    if alert is None:
        # A dropped ServerHelloDone leaves the client waiting: nothing sent, no error.
        client, server = TLCPClient(cctx, server_name=HOST), TLCPServer(sctx)
        cev, sev = pump(client, server, **kw)
        assert cev == sev == [] and not client.handshake_complete and not client.closed
        return
    err, client, server = fail(cctx, sctx, **kw)
    detecting, other = (client, server) if detector == "client" else (server, client)
    alert_record = check(err, detecting, alert)
    # The peer learns why: the alert gives AlertReceived + ConnectionClosed, no error.
    assert other.receive_data(alert_record) == [AlertReceived(2, alert), ConnectionClosed(alert)]
    assert other.closed and other.receive_data(b"anything") == []


# --- ChangeCipherSpec, Finished, application data, alerts: protected records ------------


@pytest.mark.parametrize("suite", list(CipherSuite), ids=lambda s: s.name)
def test_tampered_client_finished(pki, ids, suite) -> None:
    cctx, sctx = ctxs(pki, ids, suite)
    err, _, server = fail(cctx, sctx, to_server=after_ccs(flip(-1)))
    check(err, server, A.BAD_RECORD_MAC, plaintext=False)


@pytest.mark.parametrize("suite", list(CipherSuite), ids=lambda s: s.name)
def test_tampered_server_finished(pki, ids, suite) -> None:
    cctx, sctx = ctxs(pki, ids, suite)
    err, client, _ = fail(cctx, sctx, to_client=after_ccs(flip(20)))
    check(err, client, A.BAD_RECORD_MAC, plaintext=False)


def test_tampered_change_cipher_spec(pki, ids) -> None:
    cctx, sctx = ctxs(pki, ids)
    err, _, server = fail(cctx, sctx, to_server=on_record_type(20, lambda f: b"\x02"))
    check(err, server, A.DECODE_ERROR)
    err, client, _ = fail(cctx, sctx, to_client=on_record_type(20, lambda f: b"\x01\x01"))
    check(err, client, A.DECODE_ERROR, plaintext=False)  # the client already sent CCS


def test_finished_with_wrong_verify_data_is_decrypt_error(pki, ids) -> None:
    """A correctly protected Finished whose verify_data is wrong (computed over another
    transcript) is decrypt_error, not bad_record_mac."""
    cctx, sctx = ctxs(pki, ids, ECC_GCM, auth=ClientAuth.NONE)
    client, server = TLCPClient(cctx, server_name=HOST), TLCPServer(sctx)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    flight = split_records(client.data_to_send())
    assert [t for t, _, _ in flight] == [22, 20, 22]  # CKE, CCS, Finished
    block = prf.key_block(
        client._master, client.client_random, client.server_random, key_block_size(ECC_GCM)
    )
    client_write, _ = protections_for(ECC_GCM, block)
    wrong = prf.verify_data(client._master, b"client finished", b"\x00" * 32)
    forged = client_write.seal(22, bytes([20, 0, 0, 12]) + wrong)
    with pytest.raises(TLCPError) as ei:
        server.receive_data(join_records([*flight[:2], (22, 0x0101, forged)]))
    check(ei.value, server, A.DECRYPT_ERROR)


def established(pki, ids, suite=ECC_GCM):
    cctx, sctx = ctxs(pki, ids, suite, auth=ClientAuth.NONE)
    client, server = TLCPClient(cctx, server_name=HOST), TLCPServer(sctx)
    pump(client, server)
    assert client.handshake_complete and server.handshake_complete
    return client, server


@pytest.mark.parametrize("suite", list(CipherSuite), ids=lambda s: s.name)
@pytest.mark.parametrize("pos", [0, 9, 20, -17, -1])
def test_tampered_application_data(pki, ids, suite, pos) -> None:
    client, server = established(pki, ids, suite)
    client.send_application_data(b"transfer 100 to alice")
    wire = bytearray(client.data_to_send())
    wire[5 + pos if pos >= 0 else pos] ^= 0x80
    with pytest.raises(TLCPError) as ei:
        server.receive_data(bytes(wire))
    check(ei.value, server, A.BAD_RECORD_MAC, plaintext=False)


@pytest.mark.parametrize("suite", [ECC, ECC_GCM], ids=lambda s: s.name)
def test_tampered_alert_and_wrong_record_type(pki, ids, suite) -> None:
    client, server = established(pki, ids, suite)
    client.close()
    wire = bytearray(client.data_to_send())
    wire[-1] ^= 1
    with pytest.raises(TLCPError) as ei:
        server.receive_data(bytes(wire))
    check(ei.value, server, A.BAD_RECORD_MAC, plaintext=False)
    # The record type is authenticated too: app data relabelled as handshake.
    client, server = established(pki, ids, suite)
    client.send_application_data(b"data")
    wire = bytearray(client.data_to_send())
    wire[0] = 22
    with pytest.raises(TLCPError) as ei:
        server.receive_data(bytes(wire))
    check(ei.value, server, A.BAD_RECORD_MAC, plaintext=False)


@pytest.mark.parametrize("suite", [ECC, ECC_GCM], ids=lambda s: s.name)
def test_replayed_and_reordered_records(pki, ids, suite) -> None:
    client, server = established(pki, ids, suite)
    client.send_application_data(b"one")
    first = client.data_to_send()
    client.send_application_data(b"two")
    second = client.data_to_send()
    assert server.receive_data(first)[0].data == b"one"
    with pytest.raises(TLCPError) as ei:
        server.receive_data(first)  # replay: the sequence number has moved on
    check(ei.value, server, A.BAD_RECORD_MAC, plaintext=False)
    client, server = established(pki, ids, suite)
    client.send_application_data(b"one")
    first = client.data_to_send()
    client.send_application_data(b"two")
    second = client.data_to_send()
    with pytest.raises(TLCPError) as ei:
        server.receive_data(second + first)  # reordered
    check(ei.value, server, A.BAD_RECORD_MAC, plaintext=False)


# --- truncated and oversized records ----------------------------------------------------


def test_truncated_records_wait_and_truncated_ciphertext_fails(pki, ids) -> None:
    cctx, sctx = ctxs(pki, ids)
    client, server = TLCPClient(cctx, server_name=HOST), TLCPServer(sctx)
    hello = client.data_to_send()
    assert server.receive_data(hello[:3]) == []  # partial header
    assert server.receive_data(hello[3:-1]) == []  # partial body
    assert server.data_to_send() == b"" and not server.closed
    server.receive_data(hello[-1:])
    assert server.data_to_send()  # the server's flight
    # A protected record cut short (with its length field adjusted) fails authentication.
    for suite in (ECC, ECC_GCM):
        for cut in (1, 16, 100):
            client, server = established(pki, ids, suite)
            client.send_application_data(b"x" * 100)
            t, v, frag = split_records(client.data_to_send())[0]
            with pytest.raises(TLCPError) as ei:
                server.receive_data(join_records([(t, v, frag[:-cut])]))
            check(ei.value, server, A.BAD_RECORD_MAC, plaintext=False)


@pytest.mark.parametrize("suite", [ECC, ECC_GCM], ids=lambda s: s.name)
def test_short_protected_fragments(pki, ids, suite) -> None:
    for n in (0, 15, 16, 23, 63):
        _client, server = established(pki, ids, suite)
        with pytest.raises(TLCPError) as ei:
            server.receive_data(bytes([23, 1, 1]) + n.to_bytes(2, "big") + bytes(n))
        check(ei.value, server, A.BAD_RECORD_MAC, plaintext=False)


def test_oversized_records(pki, ids) -> None:
    _cctx, sctx = ctxs(pki, ids)
    # Plaintext record longer than 2^14 (refused from the header alone).
    server = TLCPServer(sctx)
    with pytest.raises(TLCPError) as ei:
        server.receive_data(bytes([22, 1, 1]) + (MAX_PLAINTEXT + 1).to_bytes(2, "big"))
    check(ei.value, server, A.RECORD_OVERFLOW)
    for suite in (ECC, ECC_GCM):
        # Protected record longer than 2^14 + 2048.
        client, server = established(pki, ids, suite)
        with pytest.raises(TLCPError) as ei:
            server.receive_data(bytes([23, 1, 1]) + (MAX_CIPHERTEXT + 1).to_bytes(2, "big"))
        check(ei.value, server, A.RECORD_OVERFLOW, plaintext=False)
        # A well-protected record whose plaintext exceeds 2^14.
        client, server = established(pki, ids, suite)
        frag = client._rl.write.seal(23, b"y" * (MAX_PLAINTEXT + 1))
        with pytest.raises(TLCPError) as ei:
            server.receive_data(bytes([23, 1, 1]) + len(frag).to_bytes(2, "big") + frag)
        check(ei.value, server, A.RECORD_OVERFLOW, plaintext=False)
    # A handshake message longer than the configured limit.
    server = TLCPServer(sctx)
    msg = bytes([1]) + (1 << 20).to_bytes(3, "big")
    with pytest.raises(TLCPError) as ei:
        server.receive_data(bytes([22, 1, 1, 0, 4]) + msg)
    check(ei.value, server, A.DECODE_ERROR)


def test_record_layer_framing_errors(pki, ids) -> None:
    _cctx, sctx = ctxs(pki, ids)
    cases = [
        (bytes([99, 1, 1, 0, 1, 0]), A.UNEXPECTED_MESSAGE),  # unknown content type
        (bytes([22, 3, 3, 0, 1, 0]), A.PROTOCOL_VERSION),  # TLS 1.2 record version
        (bytes([22, 1, 1, 0, 0]), A.DECODE_ERROR),  # empty handshake record
        (bytes([21, 1, 1, 0, 3, 2, 40, 0]), A.DECODE_ERROR),  # 3-byte alert
        (bytes([21, 1, 1, 0, 2, 3, 40]), A.ILLEGAL_PARAMETER),  # alert level 3
        (bytes([23, 1, 1, 0, 2, 1, 2]), A.UNEXPECTED_MESSAGE),  # data before handshake
        (bytes([20, 1, 1, 0, 1, 1]), A.UNEXPECTED_MESSAGE),  # CCS before key exchange
        (bytes([22, 1, 1, 0, 4, 2, 0, 0, 0]), A.UNEXPECTED_MESSAGE),  # ServerHello to server
        (bytes([22, 1, 1, 0, 4, 99, 0, 0, 0]), A.UNEXPECTED_MESSAGE),  # unknown message
    ]
    for wire, alert in cases:
        server = TLCPServer(sctx)
        with pytest.raises(TLCPError) as ei:
            server.receive_data(wire)
        check(ei.value, server, alert)
        assert server.receive_data(b"more") == []  # dead after the failure


def test_ccs_inside_a_fragmented_handshake_message(pki, ids) -> None:
    cctx, sctx = ctxs(pki, ids, auth=ClientAuth.NONE)
    client, server = TLCPClient(cctx, server_name=HOST), TLCPServer(sctx)
    pump(client, server, rounds=1)
    # Half a handshake message, then ChangeCipherSpec.
    with pytest.raises(TLCPError) as ei:
        client.receive_data(bytes([22, 1, 1, 0, 2, 20, 0]) + bytes([20, 1, 1, 0, 1, 1]))
    check(ei.value, client, A.UNEXPECTED_MESSAGE, plaintext=False)


def test_duplicate_extension_and_bad_server_name(pki, ids) -> None:
    cctx, sctx = ctxs(pki, ids)

    def dup(body: bytes) -> bytes:
        ext = vec(b"\x00\x17" + vec(b"", 2) + b"\x00\x17" + vec(b"", 2), 2)
        return body[: _ext_start(body)] + ext

    err, _, server = fail(cctx, sctx, to_server=on_message(H.CLIENT_HELLO, dup))
    check(err, server, A.ILLEGAL_PARAMETER)

    def bad_sni(body: bytes) -> bytes:
        ext = vec(b"\x00\x00" + vec(vec(b"\x00" + vec(b"", 2), 2), 2), 2)
        return body[: _ext_start(body)] + ext

    err, _, server = fail(cctx, sctx, to_server=on_message(H.CLIENT_HELLO, bad_sni))
    check(err, server, A.DECODE_ERROR)


def _ext_start(body: bytes) -> int:
    pos = 2 + 32
    pos += 1 + body[pos]
    pos += 2 + int.from_bytes(body[pos : pos + 2], "big")
    pos += 1 + body[pos]
    return pos


def test_unknown_client_extensions_are_ignored(pki, ids) -> None:
    cctx, sctx = ctxs(pki, ids)

    def extra(body: bytes) -> bytes:
        start = _ext_start(body)
        old = body[start + 2 :]
        ext = b"\x00\x23" + vec(b"", 2) + b"\xff\x01" + vec(b"\x00", 2) + old
        return body[:start] + vec(ext, 2)

    client, server = TLCPClient(cctx, server_name=HOST), TLCPServer(sctx)
    hello = on_message(H.CLIENT_HELLO, extra)(client.data_to_send())
    server.receive_data(hello)
    assert server.server_name == HOST and not server.closed


# --- negotiation failures -------------------------------------------------------------


def test_no_common_cipher_suite(pki, ids) -> None:
    cctx, sctx = ctxs(pki, ids, ECC, client_suites=[ECC_GCM])
    err, _, server = fail(cctx, sctx)
    check(err, server, A.HANDSHAKE_FAILURE)


def test_required_client_certificate_missing(pki, ids) -> None:
    cctx, sctx = ctxs(pki, ids, ECC, client_creds=None)
    err, _, server = fail(cctx, sctx)
    check(err, server, A.HANDSHAKE_FAILURE)


# --- certificate checks -------------------------------------------------------------------


def test_server_encryption_certificate_not_matching_its_key(pki, ids) -> None:
    sid, other = ids["server"], pki.identity("impostor", names=[HOST])
    # The certificate says one key, the decryption operation holds another.
    lying = Credentials(
        sign_certificate=sid.sign_certificate,
        enc_certificate=sid.enc_certificate,
        sign=sid.sign_key.sign,
        decrypt=other.enc_key.decrypt,
        key_exchange=other.credentials().key_exchange,
    )
    cctx, sctx = ctxs(pki, ids, ECC, server_creds=lying)
    err, _, server = fail(cctx, sctx)
    check(err, server, A.DECRYPT_ERROR)
    # With ECDHE the two sides derive different keys: the client's Finished fails.
    cctx, sctx = ctxs(pki, ids, ECDHE, server_creds=lying)
    err, _, server = fail(cctx, sctx)
    check(err, server, A.BAD_RECORD_MAC, plaintext=False)
    # Announcing another party's (valid) encryption certificate does not help either:
    # the client encrypts to that key and the server cannot decrypt.
    swapped = Credentials(
        sign_certificate=sid.sign_certificate,
        enc_certificate=other.enc_certificate,
        sign=sid.sign_key.sign,
        decrypt=sid.enc_key.decrypt,
    )
    cctx, sctx = ctxs(pki, ids, ECC, server_creds=swapped)
    err, _, server = fail(cctx, sctx)
    check(err, server, A.DECRYPT_ERROR)


def test_certificates_from_another_ca(pki, ids) -> None:
    stranger = TestPKI("elsewhere")
    # Server certificate from a CA the client does not trust.
    cctx, sctx = ctxs(pki, ids, ECC, client_anchors=[stranger.root])
    err, client, _ = fail(cctx, sctx)
    check(err, client, A.UNKNOWN_CA)
    # Client certificate from a CA the server does not trust.
    foreign = stranger.identity("foreign terminal", server=False).credentials()
    for suite in (ECC, ECDHE):
        cctx, sctx = ctxs(pki, ids, suite, client_creds=foreign)
        err, _, server = fail(cctx, sctx)
        check(err, server, A.UNKNOWN_CA)
    # Signing certificate from our CA, encryption certificate from another one.
    mixed = Credentials.from_keys(
        ids["client"].sign_certificate,
        ids["client"].sign_key,
        (f := stranger.identity("x", server=False)).enc_certificate,
        f.enc_key,
    )
    cctx, sctx = ctxs(pki, ids, ECDHE, client_creds=mixed)
    err, _, server = fail(cctx, sctx)
    check(err, server, A.UNKNOWN_CA)


@pytest.mark.parametrize("which", ["sign", "enc"])
def test_revoked_peers(pki, ids, which) -> None:
    sid, cid = ids["server"], ids["client"]
    now = datetime.now(UTC)

    def crl_for(cert):
        return pki.issuer.crl(number=1, entries=[RevokedEntry(cert.serial, now, "key_compromise")])

    server_cert = sid.sign_certificate if which == "sign" else sid.enc_certificate
    cctx, sctx = ctxs(pki, ids, ECC, client_crls=[crl_for(server_cert)])
    err, client, _ = fail(cctx, sctx)
    check(err, client, A.CERTIFICATE_REVOKED)
    client_cert = cid.sign_certificate if which == "sign" else cid.enc_certificate
    cctx, sctx = ctxs(pki, ids, ECDHE, server_crls=[crl_for(client_cert)])
    err, _, server = fail(cctx, sctx)
    check(err, server, A.CERTIFICATE_REVOKED)
    # A CRL that does not list the peer lets the handshake through.
    cctx, sctx = ctxs(
        pki,
        ids,
        ECDHE,
        server_crls=[pki.issuer.crl(number=2)],
        client_crls=[pki.issuer.crl(number=2)],
    )
    cev, _ = pump(TLCPClient(cctx, server_name=HOST), TLCPServer(sctx))
    assert cev


def test_crl_required_but_missing(pki, ids) -> None:
    cctx, sctx = ctxs(pki, ids, ECC)
    cctx.require_crl = True
    err, client, _ = fail(cctx, sctx)
    check(err, client, A.CERTIFICATE_UNKNOWN)


def test_expired_and_not_yet_valid(pki, ids) -> None:
    cctx, sctx = ctxs(pki, ids, ECC)
    late = datetime.now(UTC) + timedelta(days=4000)
    err, client, _ = fail(cctx, sctx, now=late)
    check(err, client, A.CERTIFICATE_EXPIRED)
    young = pki.identity("new gw", names=[HOST], not_before=datetime.now(UTC) + timedelta(days=2))
    cctx, sctx = ctxs(pki, ids, ECC, server_creds=young.credentials())
    err, client, _ = fail(cctx, sctx)
    check(err, client, A.CERTIFICATE_EXPIRED)


def test_host_name_mismatch(pki, ids) -> None:
    cctx, sctx = ctxs(pki, ids, ECC)
    err, client, _ = fail(cctx, sctx, server_name="evil.example.com")
    check(err, client, A.BAD_CERTIFICATE)
    wild = pki.identity("wild", names=["*.example.com"]).credentials()
    cctx, sctx = ctxs(pki, ids, ECC, server_creds=wild, auth=ClientAuth.NONE)
    pump(client := TLCPClient(cctx, server_name="gw.example.com"), TLCPServer(sctx))
    assert client.handshake_complete
    err, client, _ = fail(cctx, sctx, server_name="a.b.example.com")
    check(err, client, A.BAD_CERTIFICATE)


def test_device_certificate_cannot_serve(pki, ids) -> None:
    """A device (clientAuth) certificate presented by a server is refused, even one that
    names the host (our CA never issues one: a device profile carries no DNS name, so it
    is built here with the raw certificate builder)."""
    from mstcrypt.crypto.sm2 import SM2PrivateKey
    from mstcrypt.pki import Profile, build_certificate, name

    def device_cert(profile: Profile, key: SM2PrivateKey):
        now = datetime.now(UTC).replace(microsecond=0)
        return build_certificate(
            subject=name(CN="terminal as server"),
            public_key=key.public_key(),
            issuer=pki.root,
            issuer_public_key=pki.root.public_key,
            signer=pki.root_key.sign,
            serial=int.from_bytes(key.public_key().to_bytes()[1:9], "big") | 1,
            not_before=now - timedelta(minutes=5),
            not_after=now + timedelta(days=1),
            profile=profile,
            subject_alt_names=[HOST],
        )

    sk, ek = SM2PrivateKey.generate(), SM2PrivateKey.generate()
    terminal = Credentials.from_keys(
        device_cert(Profile.DEVICE_SIGN, sk), sk, device_cert(Profile.DEVICE_ENC, ek), ek
    )
    cctx, sctx = ctxs(pki, ids, ECC, server_creds=terminal)
    err, client, _ = fail(cctx, sctx)
    check(err, client, A.UNSUPPORTED_CERTIFICATE)


def test_resumption_with_a_tampered_finished(pki, ids) -> None:
    cache = SessionCache()
    cctx, sctx = ctxs(pki, ids, ECC_GCM, auth=ClientAuth.NONE, session_cache=cache)
    client, server = TLCPClient(cctx, server_name=HOST), TLCPServer(sctx)
    pump(client, server)
    c2 = TLCPClient(cctx, server_name=HOST, session=client.session)
    s2 = TLCPServer(sctx)
    with pytest.raises(TLCPError) as ei:
        pump(c2, s2, to_client=after_ccs(flip(30)))
    check(ei.value, c2, A.BAD_RECORD_MAC, plaintext=False)
    # A ServerHello resuming with another suite is refused.
    c3 = TLCPClient(cctx, server_name=HOST, session=client.session)
    s3 = TLCPServer(sctx)
    s3.receive_data(c3.data_to_send())
    flight = on_message(H.SERVER_HELLO, replace(67, b"\xe0\x13"))(s3.data_to_send())
    with pytest.raises(TLCPError) as ei:
        c3.receive_data(flight)
    check(ei.value, c3, A.ILLEGAL_PARAMETER)


# --- certificates with other algorithms (made by the OpenSSL CLI) --------------------


def _openssl_certificate(tmp: Path, kind: str) -> bytes:
    """A self-signed DER certificate with an ECDSA P-256 or an RSA key, made by the
    openssl CLI (the TLCP code never sees how it was made)."""
    newkey = {"ecdsa": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]}.get(
        kind, ["-newkey", "rsa:2048"]
    )
    out = tmp / f"{kind}.der"
    subprocess.run(
        [
            *("openssl", "req", "-x509", *newkey, "-nodes", "-days", "2"),
            *("-subj", f"/CN={HOST}", "-addext", f"subjectAltName=DNS:{HOST}"),
            *("-keyout", str(tmp / f"{kind}.key"), "-outform", "DER", "-out", str(out)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out.read_bytes()


@pytest.fixture(scope="module")
def foreign_certs(tmp_path_factory) -> dict[str, bytes]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make ECDSA and RSA certificates")
    tmp = tmp_path_factory.mktemp("foreign")
    return {kind: _openssl_certificate(tmp, kind) for kind in ("ecdsa", "rsa")}


def _replace_cert(i: int, der: bytes) -> Callable[[bytes], bytes]:
    def fn(body: bytes) -> bytes:
        c = _certs(body)
        c[i] = der
        return vec(b"".join(vec(x, 3) for x in c), 3)

    return fn


def _closed_with(conn: TLCPClient | TLCPServer, record: bytes) -> AlertDescription | int:
    """Feed the fatal alert record to the other side; the alert it reports."""
    closed = [e for e in conn.receive_data(record) if isinstance(e, ConnectionClosed)]
    assert len(closed) == 1 and conn.closed
    return closed[0].alert


@pytest.mark.parametrize("kind", ["ecdsa", "rsa"])
@pytest.mark.parametrize("position", [0, 1, 2], ids=["signing", "encryption", "ca"])
@pytest.mark.parametrize("suite", [ECC, ECDHE], ids=["ECC", "ECDHE"])
def test_non_sm2_peer_certificates_are_unsupported(
    pki, ids, foreign_certs, kind, position, suite
) -> None:
    """A peer presenting an ECDSA P-256 or RSA certificate (as its signing, encryption or
    CA certificate) gets unsupported_certificate, not internal_error, from our client and
    from our server."""
    der = foreign_certs[kind]
    swap = on_message(H.CERTIFICATE, _replace_cert(position, der))

    # The server sends it: the client refuses with unsupported_certificate.
    s = ids["server"]
    server_creds = Credentials.from_keys(
        s.sign_certificate, s.sign_key, s.enc_certificate, s.enc_key, [pki.root]
    )
    cctx, sctx = ctxs(pki, ids, suite, server_creds=server_creds)
    err, client, server = fail(cctx, sctx, to_client=swap)
    assert "not an SM2 certificate" in str(err)
    record = check(err, client, A.UNSUPPORTED_CERTIFICATE)
    assert _closed_with(server, record) == A.UNSUPPORTED_CERTIFICATE

    # The client sends it: the server refuses with unsupported_certificate.
    c = ids["client"]
    client_creds = Credentials.from_keys(
        c.sign_certificate, c.sign_key, c.enc_certificate, c.enc_key, [pki.root]
    )
    cctx, sctx = ctxs(pki, ids, suite, client_creds=client_creds)
    err, client, server = fail(cctx, sctx, to_server=swap)
    record = check(err, server, A.UNSUPPORTED_CERTIFICATE)
    assert _closed_with(client, record) == A.UNSUPPORTED_CERTIFICATE
