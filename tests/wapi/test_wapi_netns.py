"""WAPI between processes on real Ethernet frames in network namespaces: the terminal
associates with the AP through the ASU (platform CA + CRL), moves a file and echo
requests over WPI; tshark decodes the captured handshake; a revoked terminal is refused."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import wapi_env as env
import wapi_netns as nsmod
import wapi_tshark as ts

from mstcrypt.formats.keys import dump_private_key
from mstcrypt.protocols.wai import messages as m
from mstcrypt.protocols.wai import pcap

WHY = nsmod.unavailable()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"no network namespaces: {WHY}")
PASSWORD = "wapi-test-pass"


@pytest.fixture(scope="module")
def topo() -> Iterator[nsmod.Topology]:
    t = nsmod.Topology()
    try:
        yield t
    finally:
        t.close()


def _write_pki(d: Path) -> dict[str, object]:
    from mstcrypt.crypto.sm2 import SM2PrivateKey
    from mstcrypt.pki import Profile, name

    p = env.SmPlatform()
    d.mkdir(parents=True, exist_ok=True)
    (d / "root.pem").write_bytes(p.ca.certificate.pem)

    def issue(cn: str, profile: Profile) -> tuple[bytes, object]:
        key = SM2PrivateKey.generate()
        cert = p.ca.issue(
            subject=name(C="CN", O="Example Org", CN=cn),
            public_key=key.public_key(),
            profile=profile,
        )
        (d / f"{cn}.pem").write_bytes(cert.pem)
        (d / f"{cn}.key").write_bytes(dump_private_key(key, password=PASSWORD))
        os.chmod(d / f"{cn}.key", 0o600)
        return cert.der, cert

    issue("asu", Profile.WLAN_ASU_SIGN)
    issue("ap", Profile.WLAN_AP_SIGN)
    issue("sta", Profile.DEVICE_SIGN)
    _, revoked = issue("sta-revoked", Profile.DEVICE_SIGN)
    from mstcrypt.pki import RevokedEntry

    p.revoked.append(RevokedEntry(revoked.serial, env.AT))  # type: ignore[attr-defined]
    (d / "root.crl").write_bytes(p.crl().der)
    return {"platform": p}


def _configs(d: Path, t: nsmod.Topology) -> None:
    (d / "asu.toml").write_text(
        f'[asu]\nlisten = "{t.asu_ip}:3810"\ncert = "asu.pem"\nkey = "asu.key"\n'
        'ca = "root.pem"\ncrl = "root.crl"\n'
    )
    (d / "in").mkdir(exist_ok=True)
    (d / "ap.toml").write_text(
        f'[ap]\ninterface = "{t.ifs["ap"]}"\ncert = "ap.pem"\nkey = "ap.key"\n'
        'asu_cert = "asu.pem"\n'
        f'asu = "{t.asu_ip}:3810"\nreceive_dir = "in"\n'
    )
    for who in ("sta", "sta-revoked"):
        (d / f"{who}.toml").write_text(
            f'[sta]\ninterface = "{t.ifs["sta"]}"\ncert = "{who}.pem"\nkey = "{who}.key"\n'
            'trusted_asu = ["asu.pem"]\ntimeout = 15\n'
        )


def _wait_for(proc: subprocess.Popen[bytes], text: bytes, timeout: float = 30) -> None:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    seen = b""
    os.set_blocking(proc.stderr.fileno(), False)
    while time.monotonic() < deadline:
        chunk = proc.stderr.read() or b""
        seen += chunk
        if text in seen:
            return
        if proc.poll() is not None:
            raise AssertionError(f"process exited: {seen.decode(errors='replace')}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {text!r}: {seen.decode(errors='replace')}")


def test_terminal_associates_moves_data_and_revoked_terminal_is_refused(
    topo: nsmod.Topology, tmp_path: Path
) -> None:
    _write_pki(tmp_path)
    _configs(tmp_path, topo)
    e = topo.env(PASSWORD)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        asu = subprocess.Popen(
            topo.mstcrypt("asu", "wapi", "asu", "-c", str(tmp_path / "asu.toml")),
            env=e,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        procs.append(asu)
        _wait_for(asu, b"ASU listening")
        ap = subprocess.Popen(
            topo.mstcrypt("ap", "wapi", "ap", "-c", str(tmp_path / "ap.toml")),
            env=e,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        procs.append(ap)
        _wait_for(ap, b"AP ")
        cap_file = tmp_path / "wai.pcap"
        if ts.tshark():
            cap = subprocess.Popen(
                topo.cmd(
                    "ap",
                    str(ts.tshark()),
                    "-i",
                    topo.ifs["ap"],
                    "-f",
                    "ether proto 0x88b4",
                    "-F",
                    "pcap",
                    "-w",
                    str(cap_file),
                ),
                stderr=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
            )
            procs.append(cap)
            _wait_for(cap, b"Capturing on")
        payload = os.urandom(300_000)
        (tmp_path / "payload.bin").write_bytes(payload)
        r = subprocess.run(
            topo.mstcrypt(
                "sta",
                "wapi",
                "sta",
                "-c",
                str(tmp_path / "sta.toml"),
                "--send",
                str(tmp_path / "payload.bin"),
                "--ping",
                "3",
            ),
            env=e,
            capture_output=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr.decode()
        out = r.stdout.decode()
        assert "associated with" in out and "3 echo replies over WPI" in out
        received = list((tmp_path / "in").iterdir())
        assert len(received) == 1 and received[0].read_bytes() == payload
        # the revoked terminal
        r = subprocess.run(
            topo.mstcrypt(
                "sta", "wapi", "sta", "-c", str(tmp_path / "sta-revoked.toml"), "--ping", "1"
            ),
            env=e,
            capture_output=True,
            timeout=60,
        )
        assert r.returncode == 1 and "refused" in r.stderr.decode(), r.stderr.decode()
        if ts.tshark():
            time.sleep(0.5)
            procs[-1].terminate()
            procs[-1].wait(10)
            frames = list(pcap.read_pcap(cap_file.read_bytes()))
            assert len(frames) >= 12
            decoded = ts.dissect(cap_file)
            assert all(ts.problems(d) == [] for d in decoded)
            # one entry per packet (its last fragment); the AP link carries no ASU packets
            subtypes = [f[14 + 3] for _, f in frames if f[14 + 11] == 0]
            assert subtypes[:8] == [3, 4, 5, 8, 9, 10, 11, 12]
            assert any(f[14 + 11] == 1 for _, f in frames)  # a fragmented packet
            # field by field for the unfragmented packets
            for (_, frame), d in zip(frames, decoded, strict=True):
                wai = frame[14:]
                if wai[11] == 0 and wai[10] == 0:
                    assert ts.leaves(d) == ts.expected_leaves(m.decode_packet(wai)[1])
            inspect = subprocess.run(
                topo.mstcrypt("ap", "wapi", "inspect", str(cap_file)),
                env=e,
                capture_output=True,
                timeout=60,
            )
            assert inspect.returncode == 0 and b"unicast_key_confirm" in inspect.stdout
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
    assert hashlib.sha256(payload).digest()  # payload was generated


def test_standard_suite_over_namespaces(topo: nsmod.Topology, tmp_path: Path) -> None:
    """The standard suite end to end: certificates from `mstcrypt wapi issue` (the ASU
    issues), a revoked serial listed in the ASU's file, data over WPI."""
    e = topo.env(PASSWORD)
    d = tmp_path

    def cli(*args: str) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "mstcrypt", "wapi", *args],
            env=e,
            capture_output=True,
            timeout=60,
            cwd=d,
        )
        assert r.returncode == 0, r.stderr.decode()
        return r.stdout.decode()

    cli("issue", "--cn", "ASU", "--out", "asu")
    for who in ("ap", "sta", "sta-revoked"):
        out = cli(
            "issue",
            "--cn",
            who,
            "--issuer-cert",
            "asu.pem",
            "--issuer-key",
            "asu.key",
            "--out",
            who,
        )
    serial = out.rsplit("serial ", 1)[1].strip(")\n ")
    (d / "revoked.txt").write_text(f"# revoked terminals\n{serial}\n")
    (d / "in").mkdir()
    (d / "asu.toml").write_text(
        f'[asu]\nsuite = "standard"\nlisten = "{topo.asu_ip}:3811"\ncert = "asu.pem"\n'
        'key = "asu.key"\nca = "asu.pem"\nrevoked = "revoked.txt"\n'
    )
    (d / "ap.toml").write_text(
        f'[ap]\nsuite = "standard"\ninterface = "{topo.ifs["ap"]}"\ncert = "ap.pem"\n'
        f'key = "ap.key"\nasu_cert = "asu.pem"\nasu = "{topo.asu_ip}:3811"\nreceive_dir = "in"\n'
    )
    for who in ("sta", "sta-revoked"):
        (d / f"{who}.toml").write_text(
            f'[sta]\nsuite = "standard"\ninterface = "{topo.ifs["sta"]}"\ncert = "{who}.pem"\n'
            f'key = "{who}.key"\ntrusted_asu = ["asu.pem"]\ntimeout = 15\n'
        )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for role in ("asu", "ap"):
            proc = subprocess.Popen(
                topo.mstcrypt(role, "wapi", role, "-c", str(d / f"{role}.toml")),
                env=e,
                stderr=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
            )
            procs.append(proc)
            _wait_for(proc, b"ASU listening" if role == "asu" else b"AP ")
        payload = os.urandom(50_000)
        (d / "payload.bin").write_bytes(payload)
        r = subprocess.run(
            topo.mstcrypt(
                "sta", "wapi", "sta", "-c", str(d / "sta.toml"), "--send", str(d / "payload.bin")
            ),
            env=e,
            capture_output=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr.decode()
        assert "standard suite" in r.stdout.decode()
        assert [p.read_bytes() for p in (d / "in").iterdir()] == [payload]
        r = subprocess.run(
            topo.mstcrypt("sta", "wapi", "sta", "-c", str(d / "sta-revoked.toml"), "--ping", "1"),
            env=e,
            capture_output=True,
            timeout=60,
        )
        assert r.returncode == 1 and "refused" in r.stderr.decode()
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
