"""tshark's WAI dissector (an implementation this project did not write) decodes our
packets field by field, with no malformed-packet or expert errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import wapi_samples as samples
import wapi_tshark as ts

from mstcrypt.protocols.wai import messages as m
from mstcrypt.protocols.wai import pcap

pytestmark = pytest.mark.skipif(
    ts.tshark() is None, reason="tshark not installed (apt-get install tshark)"
)


def _write(tmp_path: Path, packets: list[bytes]) -> Path:
    frames = [
        (1.0 + i, pcap.ethernet_frame(samples.STA_MAC, samples.AE_MAC, p))
        for i, p in enumerate(packets)
    ]
    path = tmp_path / "wai.pcap"
    path.write_bytes(pcap.write_pcap(frames))
    assert [f for _, f in pcap.read_pcap(path.read_bytes())] == [f for _, f in frames]
    return path


def test_every_subtype_decodes_field_by_field(tmp_path: Path) -> None:
    msgs = [msg for msg, _ in samples.cases()]
    packets = [m.encode_packet(msg, i + 1) for i, msg in enumerate(msgs)]
    decoded = ts.dissect(_write(tmp_path, packets))
    assert len(decoded) == len(msgs)
    for msg, pkt, dp in zip(msgs, packets, decoded, strict=True):
        assert ts.problems(dp) == [], type(msg).__name__
        f: dict[str, str] = {}
        for name, value in ts.fields(dp):
            f.setdefault(name, value)  # the header's fields come first
        assert f["eth.type"] == "88b4"
        assert int(f["wai.version"], 16) == 1 and int(f["wai.type"], 16) == 1
        assert int(f["wai.subtype"], 16) == msg.SUBTYPE
        assert int(f["wai.length"], 16) == len(pkt)
        assert ts.leaves(dp) == ts.expected_leaves(msg), type(msg).__name__


def test_fragmented_packet_is_reassembled_by_tshark(tmp_path: Path) -> None:
    msg = next(
        a for a, _ in samples.cases() if isinstance(a, m.AccessAuthResponse) and a.asu_sig_ae
    )
    frags = m.fragment(m.encode_packet(msg, 9), 500)
    assert len(frags) == 3
    decoded = ts.dissect(_write(tmp_path, frags))
    assert all(ts.problems(d) == [] for d in decoded)
    assert ts.leaves(decoded[-1]) == ts.expected_leaves(msg)


def test_the_malformed_check_can_fail(tmp_path: Path) -> None:
    # An identity length pointing past the end: tshark must flag it, or the checks above
    # would prove nothing.
    msg = samples.cases()[0][0]
    pkt = bytearray(m.encode_packet(msg, 1))
    pkt[12 + 33 + 2 : 12 + 33 + 4] = (0x7FFF).to_bytes(2, "big")
    decoded = ts.dissect(_write(tmp_path, [bytes(pkt)]))
    assert ts.problems(decoded[0])
