"""Voice media: G.711 against audioop (an implementation we did not write), RTP
packetising and the receive buffer, and calls over loopback UDP through a relay that
drops, reorders, duplicates and replays packets — the output audio is measured against
the input."""

from __future__ import annotations

import asyncio
import os
import struct
import warnings
from pathlib import Path

import pytest

from mstcrypt.apps.voice import CallKeys, media
from mstcrypt.apps.voice.transport import MediaEndpoint, UdpRelay
from mstcrypt.errors import DecodeError
from mstcrypt.protocols import srtp

np = pytest.importorskip("numpy")

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop
    except ImportError:  # Python >= 3.13
        audioop = None  # type: ignore[assignment]


@pytest.mark.skipif(audioop is None, reason="audioop was removed in Python 3.13")
def test_g711_matches_audioop_on_every_sample() -> None:
    pcm = b"".join(struct.pack("<h", s) for s in range(-32768, 32768))
    assert media.mulaw_encode(pcm) == audioop.lin2ulaw(pcm, 2)
    codes = bytes(range(256))
    assert media.mulaw_decode(codes) == audioop.ulaw2lin(codes, 2)


def test_g711_round_trip_snr() -> None:
    x = speechlike(1.0)
    y = np.frombuffer(media.mulaw_decode(media.mulaw_encode(x.tobytes())), "<i2")
    snr = 10 * np.log10(np.sum(x.astype(float) ** 2) / np.sum((x - y).astype(float) ** 2))
    assert snr > 30  # G.711 µ-law: about 38 dB on speech-level signals
    with pytest.raises(DecodeError):
        media.mulaw_encode(b"\x00")


def speechlike(seconds: float, seed: int = 1) -> np.ndarray:
    """A voiced-speech stand-in: a gliding harmonic series under a syllable envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * media.SAMPLE_RATE)) / media.SAMPLE_RATE
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / media.SAMPLE_RATE
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = 0.55 + 0.45 * np.sin(2 * np.pi * 3.1 * t + rng.uniform(0, 6))
    x = x * env + 0.02 * rng.standard_normal(t.size)
    return (x / np.max(np.abs(x)) * 12000).astype("<i2")


def best_correlation(x: np.ndarray, y: np.ndarray, max_frames: int = 50) -> float:
    """Normalised correlation of y against x at the best whole-frame lag (the receiver
    does not know the sender's first timestamp if that packet was lost)."""
    best = -1.0
    xf = x.astype(float)
    for lag in range(0, max_frames * media.FRAME_SAMPLES + 1, media.FRAME_SAMPLES):
        a = xf[lag : lag + y.size]
        b = y[: a.size].astype(float)
        if a.size < media.FRAME_SAMPLES * 10:
            break
        c = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))
        best = max(best, c)
    return best


def test_depacketizer_places_frames_by_timestamp() -> None:
    pk = media.Packetizer(ssrc=5, seq=65530, timestamp=0xFFFFFF00)  # both wrap
    x = speechlike(0.4)
    pkts = pk.packets(x.tobytes())
    d = media.Depacketizer(5)
    order = [1, 0, 3, 2, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14, 17, 16, 19, 18]
    for i in order:  # reordered, one duplicate, frame 1 arrives before frame 0
        d.add(pkts[i])
    assert d.duplicates == 1
    y = np.frombuffer(d.pcm(), "<i2")
    ref = np.frombuffer(media.mulaw_decode(media.mulaw_encode(x.tobytes())), "<i2")
    assert np.array_equal(y, ref[: y.size]) and y.size == x.size
    d.add(media.Packetizer(ssrc=6).packet(b"\x00" * 160))  # another SSRC: ignored
    assert d.foreign == 1


def test_wav_round_trip(tmp_path: Path) -> None:
    x = speechlike(0.3)
    media.write_wav(tmp_path / "a.wav", x.tobytes())
    assert media.read_wav(tmp_path / "a.wav") == x.tobytes()
    media.write_wav(tmp_path / "b.wav", np.repeat(x, 2).tobytes(), rate=16000)
    y = np.frombuffer(media.read_wav(tmp_path / "b.wav"), "<i2")
    assert abs(y.size - x.size) <= 1 and best_correlation(x, y, 1) > 0.99
    (tmp_path / "c.wav").write_bytes(b"RIFF\x00\x00")
    with pytest.raises(DecodeError):
        media.read_wav(tmp_path / "c.wav")


def keys_pair(profile: srtp.Profile) -> tuple[CallKeys, CallKeys]:
    k = [os.urandom(profile.key_len) for _ in range(2)]
    s = [os.urandom(profile.salt_len) for _ in range(2)]
    a = CallKeys("0" * 32, profile, 1111, 2222, k[0], s[0], k[1], s[1])
    b = CallKeys("0" * 32, profile, 2222, 1111, k[1], s[1], k[0], s[0])
    return a, b


async def _call(profile: srtp.Profile, loss: float, seconds: float = 3.0) -> dict[str, object]:
    ka, kb = keys_pair(profile)
    a, b = MediaEndpoint(ka), MediaEndpoint(kb)
    await a.start()
    b_addr = await b.start()
    relay = UdpRelay(b_addr, loss=loss, duplicate=0.03, reorder=0.05, replay=0.03, seed=42)
    r_addr = await relay.start()
    x = speechlike(seconds)
    sent = await a.send(x.tobytes(), r_addr, pace=0.2)
    a.send_bye(r_addr)  # SRTCP: SR + BYE
    # forged and foreign packets on the media port: dropped and counted
    loop = asyncio.get_running_loop()
    t, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=b_addr)
    side = srtp.SrtpContext(profile, ka.tx_key, ka.tx_salt)  # the sender's key, own counters
    nxt = media.Packetizer(1111, a.packetizer.seq, a.packetizer.timestamp)  # not yet sent
    forged = bytearray(side.protect(nxt.packet(b"\x00" * 160)))
    forged[20] ^= 1
    t.sendto(bytes(forged))
    t.sendto(b"\x80\x00junk")
    t.close()
    await asyncio.sleep(0.2)
    relay.close()
    await asyncio.sleep(0.05)
    y = np.frombuffer(b.received.pcm(), "<i2")
    out = {"sent": sent, "corr": best_correlation(x, y), "relay": relay.stats,
           "rx": b.rx.stats, "frames": len(b.received.frames),
           "report": b.remote_report, "bye": b.remote_bye}  # fmt: skip
    a.close()
    b.close()
    return out


@pytest.mark.parametrize("profile", [srtp.SM4_CM_128_HMAC_SM3_80, srtp.AEAD_SM4_128_GCM,
                                     srtp.ZUC_128_EEA3_EIA3_32])  # fmt: skip
@pytest.mark.parametrize("loss", [0.0, 0.05])
def test_call_through_an_impaired_network(profile: srtp.Profile, loss: float) -> None:
    r = asyncio.run(_call(profile, loss))
    rs, rx = r["relay"], r["rx"]
    assert r["sent"] == 150
    # every replayed or duplicated packet the relay injected was refused by SRTP
    assert rx.replays == rs.duplicated + rs.replayed  # type: ignore[attr-defined]
    assert rx.auth_failures == 1 and rx.malformed == 1  # type: ignore[attr-defined]
    # the relay's drops include up to the two SRTCP packets
    assert 150 - rs.dropped <= r["frames"] <= 152 - rs.dropped  # type: ignore[attr-defined]
    threshold = 0.99 if loss == 0 else 0.90
    assert r["corr"] > threshold, r
    # the sender's RTCP reports crossed the same network as SRTCP
    assert r["report"] is not None and r["report"].packets == 150  # type: ignore[attr-defined]
    assert r["bye"] and rx.rtcp_unprotected >= 1  # type: ignore[attr-defined]


def test_rtcp_reports_round_trip() -> None:
    sr = media.rtcp_sender_report(0xABCD, 1_700_000_000.5, 12345, 150, 24000)
    assert len(sr) == 28
    (rep,), byes = media.parse_rtcp(sr + media.rtcp_bye(0xABCD))
    assert (rep.ssrc, rep.rtp_timestamp, rep.packets, rep.octets) == (0xABCD, 12345, 150, 24000)
    assert rep.ntp >> 32 == 1_700_000_000 + 2208988800 and rep.ntp & 0xFFFFFFFF == 1 << 31
    assert byes == {0xABCD}
    # and it passes the SRTCP layer's compound-packet checks
    tx, _ = keys_pair(srtp.AEAD_SM4_128_GCM)[0].contexts()
    assert len(tx.protect_rtcp(sr + media.rtcp_bye(1))) > 36
    with pytest.raises(DecodeError):
        media.parse_rtcp(bytes([0x80, 200, 0, 9]) + bytes(8))


def test_spoken_sentence_through_a_lossy_call(tmp_path: Path) -> None:
    """Real speech (espeak-ng) over the ZUC profile with 5% loss."""
    import shutil
    import subprocess

    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    wav = tmp_path / "speech.wav"
    subprocess.run([espeak, "-v", "en", "-s", "160", "-w", str(wav),
                    "The voice is encrypted end to end."], check=True, timeout=60)  # fmt: skip
    x = np.frombuffer(media.read_wav(wav), "<i2")

    async def run() -> np.ndarray:
        ka, kb = keys_pair(srtp.ZUC_128_EEA3_EIA3_32)
        a, b = MediaEndpoint(ka), MediaEndpoint(kb)
        await a.start()
        relay = UdpRelay(await b.start(), loss=0.05, reorder=0.05, seed=9)
        await a.send(x.tobytes(), await relay.start(), pace=0.1)
        await asyncio.sleep(0.2)
        relay.close()
        await asyncio.sleep(0.05)
        a.close()
        b.close()
        assert relay.stats.dropped > 0
        return np.frombuffer(b.received.pcm(), "<i2")

    y = asyncio.run(run())
    assert best_correlation(x, y) > 0.85
