"""The standard suite (ECDSA/ECDH on the WAPI 192-bit curve, SHA-256): certificates that
OpenSSL parses, the full flow, a revoked terminal, and tshark's decode of the real
handshake field by field."""

from __future__ import annotations

import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
import wapi_env as env
import wapi_tshark as ts

from mstcrypt.crypto import wapi192
from mstcrypt.protocols.wai import certs, pcap
from mstcrypt.protocols.wai import messages as m
from mstcrypt.protocols.wai.constants import VerifyResult
from mstcrypt.protocols.wai.events import AuthenticationFailed, UnicastKeyInstalled
from mstcrypt.protocols.wai.roles import State


@pytest.fixture(scope="module")
def plat() -> env.StdPlatform:
    return env.StdPlatform()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_certificates_parse_with_openssl(plat: env.StdPlatform, tmp_path: Path) -> None:
    path = tmp_path / "ap.der"
    path.write_bytes(plat.ap.cert_der)
    out = subprocess.run(
        [
            "openssl",
            "x509",
            "-inform",
            "DER",
            "-in",
            str(path),
            "-noout",
            "-subject",
            "-issuer",
            "-serial",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "CN = AP-1" in out and "CN = ASU" in out
    asn1 = subprocess.run(
        ["openssl", "asn1parse", "-inform", "DER", "-in", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "1.2.156.11235.1.1.1" in asn1 and "1.2.156.11235.1.1.2.1" in asn1


def test_validator_verdicts(plat: env.StdPlatform) -> None:
    v = plat.validator()
    assert v(plat.sta.cert_der, env.AT) is VerifyResult.VALID  # type: ignore[operator]
    assert v(plat.sta.cert_der, env.AT + timedelta(days=400)) is VerifyResult.TIME_INVALID  # type: ignore[operator]
    foreign = certs.issue(
        subject_cn="terminal-y",
        public_key=wapi192.PrivateKey.generate().public_key(),
        issuer_cn="Other ASU",
        issuer_key=wapi192.PrivateKey.generate(),
        serial=98,
        not_before=env.AT - timedelta(days=1),
        not_after=env.AT + timedelta(days=1),
    )
    assert v(foreign, env.AT) is VerifyResult.ISSUER_UNKNOWN  # type: ignore[operator]
    # another ASU with the same name: the signature fails
    other = env.StdPlatform()
    assert v(other.sta.cert_der, env.AT) is VerifyResult.SIGNATURE_INVALID  # type: ignore[operator]
    # same issuer name, different key: the signature fails
    forged = certs.issue(
        subject_cn="terminal-x",
        public_key=wapi192.PrivateKey.generate().public_key(),
        issuer_cn="ASU",
        issuer_key=wapi192.PrivateKey.generate(),
        serial=99,
        not_before=env.AT - timedelta(days=1),
        not_after=env.AT + timedelta(days=1),
    )
    assert v(forged, env.AT) is VerifyResult.SIGNATURE_INVALID  # type: ignore[operator]
    assert v(b"\x30\x00", env.AT) is VerifyResult.UNKNOWN_ERROR  # type: ignore[operator]


def test_standard_flow_and_tshark_decode(plat: env.StdPlatform, tmp_path: Path) -> None:
    p = env.std_pump(plat)
    p.run()
    assert p.asue.state is State.ESTABLISHED and p.ae.state is State.ESTABLISHED
    (u1,) = [e for e in p.asue_events if isinstance(e, UnicastKeyInstalled)]
    (u2,) = [e for e in p.ae_events if isinstance(e, UnicastKeyInstalled)]
    assert u1.uek == u2.uek
    sig = m.decode_packet(p.log[1][2])[1].signature  # type: ignore[attr-defined]
    assert (sig.hash_alg, sig.sig_alg, len(sig.value), sig.param) == (
        1,
        1,
        48,
        wapi192.CURVE_OID_DER,
    )
    if ts.tshark() is None:
        pytest.skip("tshark not installed")
    macs = {"ae": env.AE_MAC, "asue": env.STA_MAC, "asu": bytes.fromhex("020000000003")}
    frames = []
    for i, (src, dst, pkt) in enumerate(p.log):
        dst = "ae" if dst == "ae_from_asu" else dst
        frames.append((1.0 + i, pcap.ethernet_frame(macs[dst], macs[src], pkt)))
    path = tmp_path / "handshake.pcap"
    path.write_bytes(pcap.write_pcap(frames))
    decoded = ts.dissect(path)
    assert len(decoded) == len(p.log) == 10
    for (_, _, pkt), dp in zip(p.log, decoded, strict=True):
        assert ts.problems(dp) == []
        assert ts.leaves(dp) == ts.expected_leaves(m.decode_packet(pkt)[1])


def test_standard_revoked_terminal_refused(plat: env.StdPlatform) -> None:
    sta = plat.issue("terminal-revoked")
    from mstcrypt.protocols.wai.certs import _serial_and_issuer

    plat.revoked.add(_serial_and_issuer(sta.cert_der)[0])
    p = env.std_pump(plat, sta=sta)
    p.run()
    fails = [e for e in p.ae_events if isinstance(e, AuthenticationFailed)]
    assert fails and fails[0].asue_result is VerifyResult.REVOKED
    assert p.asue.state is State.FAILED
