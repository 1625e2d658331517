"""A whole call: the platform over TLCP is the call server; two enrolled terminals run
`mstcrypt voice answer` and `mstcrypt voice call` (subprocesses) with their media
through relays that drop 5% of the packets and reorder, duplicate and replay others.
The received WAV must match the sent one; a capture of the media holds no audio
plaintext, and tshark decodes its RTP headers."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from mstcrypt.apps.voice import media
from mstcrypt.apps.voice.transport import UdpRelay, write_pcap
from mstcrypt.cli.platform import running_platform
from mstcrypt.client import Client
from mstcrypt.module import SoftToken
from mstcrypt.server.config import Settings

from .test_voice_media import best_correlation, speechlike

np = pytest.importorskip("numpy")
SRC = Path(__file__).resolve().parents[2] / "src"
PIN = "call-pin-1357"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Relays:
    """Two relays (one per direction) on an event loop in a thread."""

    def __init__(self, to_callee: int, to_caller: int, loss: float) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        kw: dict[str, Any] = dict(loss=loss, reorder=0.03, duplicate=0.02, replay=0.02)
        self.ab = UdpRelay(("127.0.0.1", to_callee), seed=1, record=True, **kw)
        self.ba = UdpRelay(("127.0.0.1", to_caller), seed=2, record=True, **kw)
        self.ab_addr = self._run(self.ab.start())
        self.ba_addr = self._run(self.ba.start())

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close(self) -> None:
        async def stop() -> None:
            self.ab.close()
            self.ba.close()

        self._run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def cli(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mstcrypt", "voice", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_call_between_enrolled_terminals(tmp_path: Path) -> None:
    # 0% loss end to end: test_voice_phone; both rates in process: test_voice_media
    loss = 0.05
    data = tmp_path / "platform"
    data.mkdir()
    settings = Settings.from_env(data)
    with running_platform(data, settings) as url:
        kmc = settings.kmc()
        root = kmc.chain()[-1]
        (tmp_path / "root.pem").write_bytes(root.pem)
        public = Client(url, anchors=[root])
        for who in ("alice", "bob"):
            tok = SoftToken.init(tmp_path / f"{who}.tok", PIN, "admin-unlock-code",
                                 iterations=100_000, anchors=[root.der])  # fmt: skip
            tok.login(PIN)
            code, _ = kmc.create_enrollment_code(owner=who, subject={"CN": who}, actor="op")
            public.enroll(code, tok, container="main")
        espeak = shutil.which("espeak-ng")
        if espeak:  # a spoken sentence
            sentence = "Encrypted call test: one, two, three."
            subprocess.run([espeak, "-v", "en", "-s", "160", "-w", str(tmp_path / "in.wav"),
                            sentence], check=True, timeout=60)  # fmt: skip
            x = np.frombuffer(media.read_wav(tmp_path / "in.wav"), "<i2")
        else:
            x = speechlike(3.0)
            media.write_wav(tmp_path / "in.wav", x.tobytes())
        alice_port, bob_port = free_udp_port(), free_udp_port()
        relays = Relays(bob_port, alice_port, loss)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MSTCRYPT_")}
        env.update(PYTHONPATH=str(SRC), MSTCRYPT_PIN=PIN)
        common = ["--server", url, "--ca-file", str(tmp_path / "root.pem")]
        bob = cli("answer", *common, "--token", str(tmp_path / "bob.tok"),
                  "--record", str(tmp_path / "out.wav"), "--timeout", "60",
                  "--media-port", str(bob_port),
                  "--advertise", f"127.0.0.1:{relays.ab_addr[1]}", env=env)  # fmt: skip
        try:
            assert bob.stdout is not None
            line = bob.stdout.readline()
            assert "waiting for a call" in line, line + bob.stdout.read()
            alice = subprocess.run(
                [sys.executable, "-m", "mstcrypt", "voice", "call", "bob", *common,
                 "--token", str(tmp_path / "alice.tok"), "--play", str(tmp_path / "in.wav"),
                 "--media-port", str(alice_port), "--pace", "0.5",
                 "--advertise", f"127.0.0.1:{relays.ba_addr[1]}"],
                env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert alice.returncode == 0, alice.stdout + alice.stderr
            out, _ = bob.communicate(timeout=60)
            assert bob.returncode == 0, out
        finally:
            if bob.poll() is None:
                bob.kill()
            relays.close()
    assert "MST_SM4_CM_128_HMAC_SM3_80" in alice.stdout
    y = np.frombuffer(media.read_wav(tmp_path / "out.wav"), "<i2")
    corr = best_correlation(x, y)
    assert corr > 0.85, (corr, out)  # 5% of the frames are silence
    st = relays.ab.stats
    if loss:
        assert st.dropped > 0 and st.replayed + st.duplicated > 0
        assert "replay 0" not in out  # the injected replays were refused and counted
    # the capture of the media: RTP headers in clear, no audio plaintext
    captured = st.seen
    assert len(captured) >= x.size // 160 - 1
    ulaw = media.mulaw_encode(x.tobytes())
    frames = {ulaw[i : i + 16] for i in range(0, len(ulaw) - 16, 8)}
    for pkt in captured:
        body = pkt[8:]
        assert not any(body[j : j + 16] in frames for j in range(0, len(body) - 16, 4))
    tshark = shutil.which("tshark")
    if tshark:
        pcap = tmp_path / "call.pcap"
        write_pcap(str(pcap), captured, ("127.0.0.1", alice_port), relays.ab_addr)
        r = subprocess.run(
            [tshark, "-r", str(pcap), "-d", f"udp.port=={relays.ab_addr[1]},rtp",
             "-T", "fields", "-e", "rtp.version", "-e", "rtp.p_type", "-e", "rtp.seq"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        rows = [ln.split("\t") for ln in r.stdout.splitlines() if ln.strip()]
        rtp_packets = [p for p in captured if not 192 <= p[1] <= 223]  # SRTCP is muxed in
        assert len(rtp_packets) >= x.size // 160 - 1
        assert len(rows) == len(rtp_packets), r.stderr
        assert all(v == "2" and pt == "0" for v, pt, _ in rows)
