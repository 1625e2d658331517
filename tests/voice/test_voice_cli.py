"""`mstcrypt voice relay` (call and answer run in test_voice_call, serve is the platform's
serve): it forwards UDP with the impairments asked for and writes a pcap tshark reads."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def test_relay_forwards_and_writes_pcap(tmp_path: Path) -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(5)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSTCRYPT_")}
    env["PYTHONPATH"] = str(SRC)
    pcap = tmp_path / "r.pcap"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mstcrypt", "voice", "relay", "--to",
         f"127.0.0.1:{sink.getsockname()[1]}", "--port", str(port), "--loss", "0.5",
         "--seed", "3", "--duration", "2", "--pcap", str(pcap)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert "relay 127.0.0.1:" in proc.stdout.readline()
        pkts = [bytes([0x80, 0]) + i.to_bytes(2, "big") + bytes(8) + b"x" * 20 for i in range(40)]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for p in pkts:
                tx.sendto(p, ("127.0.0.1", port))
                time.sleep(0.005)
        got = []
        try:
            while True:
                got.append(sink.recv(2048))
                sink.settimeout(0.5)
        except TimeoutError:
            pass
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        sink.close()
    assert proc.returncode == 0, out
    assert 5 < len(got) < 35 and set(got) <= set(pkts)  # about half were dropped
    assert f"dropped {40 - len(got)}" in out
    assert pcap.stat().st_size > 24 + 40 * 16
    tshark = shutil.which("tshark")
    if tshark:
        r = subprocess.run([tshark, "-r", str(pcap), "-d", f"udp.port=={port},rtp", "-T",
                            "fields", "-e", "rtp.seq"], capture_output=True, text=True,
                           timeout=60)  # fmt: skip
        assert [int(x) for x in r.stdout.split()] == list(range(40))
