"""Fixed WAPI vectors (tests/wapi/wapi_vectors.json, computed by the independent kit):
KD-HMAC for both suites and WPI frames (pseudo-header, MIC, OFB) at several sizes, with
and without QoS. A change to either implementation breaks one of these."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mstcrypt.protocols.wai import SM, STANDARD, wpi

VEC = json.loads((Path(__file__).parent / "wapi_vectors.json").read_text())


@pytest.mark.parametrize("v", VEC["kd"], ids=lambda v: v["hash"])
def test_kd_vectors(v: dict[str, object]) -> None:
    suite = STANDARD if v["hash"] == "sha256" else SM
    out = suite.kd(bytes.fromhex(str(v["key"])), bytes.fromhex(str(v["text"])), int(v["length"]))  # type: ignore[call-overload]
    assert out.hex() == v["out"]


@pytest.mark.parametrize(
    "v", VEC["wpi"], ids=lambda v: f"{len(v['data']) // 2}B-qos={bool(v['qos'])}"
)
def test_wpi_vectors(v: dict[str, str]) -> None:
    qos = bytes.fromhex(v["qos"]) if v["qos"] else None
    hdr = wpi.Dot11Header(
        bytes.fromhex(v["fc"]),
        bytes.fromhex(v["addr1"]),
        bytes.fromhex(v["addr2"]),
        bytes.fromhex(v["addr3"]),
        bytes.fromhex(v["seq_ctl"]),
        qos=qos,
    )
    data = bytes.fromhex(v["data"])
    assert wpi.pseudo_header(hdr, v["key_idx"], len(data)).hex() == v["pseudo_header"]  # type: ignore[arg-type]
    tx = wpi.WpiSender(
        bytes.fromhex(v["uek"]), bytes.fromhex(v["uck"]), 1, unicast=True, from_ae=True
    )
    assert tx.protect_body(hdr, data).hex() == v["body"]
    assert tx.pn == int(v["pn"], 16)
    rx = wpi.WpiReceiver(
        bytes.fromhex(v["uek"]), bytes.fromhex(v["uck"]), 1, unicast=True, from_ae=True
    )
    assert rx.unprotect_body(hdr, bytes.fromhex(v["body"])) == data


def test_the_kit_regenerates_the_vector_file() -> None:
    import wapi_kit

    assert wapi_kit.vectors() == VEC
