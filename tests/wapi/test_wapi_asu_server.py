"""The ASU over UDP on the loopback: answers certificate requests, ignores garbage, and
rate-limits each source."""

from __future__ import annotations

import socket
import threading

import wapi_env as env

from mstcrypt.apps.wapi.runtime import AsuServer
from mstcrypt.protocols.wai import messages as m
from mstcrypt.protocols.wai.constants import VerifyResult


def test_asu_server_answers_and_rate_limits() -> None:
    plat = env.SmPlatform()
    _, _, asu, _ = env.machines(plat)
    server = AsuServer(asu, "127.0.0.1:0", rate=2.0)
    port = server.sock.getsockname()[1]
    stop = threading.Event()
    t = threading.Thread(target=server.serve, kwargs={"stop": stop.is_set}, daemon=True)
    t.start()
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.settimeout(2.0)
    try:
        req = m.CertAuthRequest(
            env.AE_MAC + env.STA_MAC,
            bytes(32),
            bytes(range(32)),
            m.Certificate(plat.sta.cert_der),
            m.Certificate(plat.ap.cert_der),
        )
        c.sendto(b"garbage", ("127.0.0.1", port))  # dropped, no answer
        c.sendto(m.encode_packet(req, 5), ("127.0.0.1", port))
        data, _ = c.recvfrom(65535)
        h, resp = m.decode_packet(data)
        assert h.seq == 5 and isinstance(resp, m.CertAuthResponse)
        assert resp.cert_result.nonce2 == bytes(range(32))
        assert resp.cert_result.result1 is VerifyResult.VALID
        # a burst beyond the bucket (2, and the garbage took one token): not all answered
        for i in range(10):
            c.sendto(m.encode_packet(req, 6 + i), ("127.0.0.1", port))
        got = 0
        c.settimeout(0.5)
        try:
            while True:
                c.recvfrom(65535)
                got += 1
        except TimeoutError:
            pass
        assert got < 10
    finally:
        stop.set()
        t.join(5)
        c.close()
        server.sock.close()
