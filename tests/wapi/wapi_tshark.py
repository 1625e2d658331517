"""Run tshark's WAI dissector over a pcap and read its field tree (PDML)."""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from mstcrypt.protocols.wai import messages as m

LEAVES = (
    "wai.auth.id",
    "wai.challenge",
    "wai.identity.data",
    "wai.cert.data",
    "wai.ecdh.content",
    "wai.key.data.content",
    "wai.sign.content",
    "wai.param.content",
    "wai.hash.alg.id",
    "wai.sign.alg.id",
    "wai.nonce",
    "wai.ver.res",
    "wai.access_result",
    "wai.ae.mac",
    "wai.asue.mac",
    "wai.bkid",
    "wai.uskid",
    "wai.mskid",
    "wai.wie",
    "wai.message.auth.code",
    "wai.data.packet.num",
    "wai.key.ann.id",
    "wai.counter",
    "wai.sta.key.id",
    "wai.no.of.ids",
)


def tshark() -> str | None:
    return os.environ.get("MSTCRYPT_TSHARK") or shutil.which("tshark")


def dissect(pcap: Path) -> list[ET.Element]:
    exe = tshark()
    assert exe
    out = subprocess.run(
        [exe, "-r", str(pcap), "-T", "pdml", "-2"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    # our own tshark's output on our own capture, not untrusted input
    return ET.fromstring(out).findall("packet")  # noqa: S314


def fields(packet: ET.Element) -> list[tuple[str, str]]:
    return [(f.get("name", ""), f.get("value", "")) for f in packet.iter("field")]


def problems(packet: ET.Element) -> list[str]:
    bad = []
    for el in packet.iter():
        name = el.get("name", "")
        if name.startswith("_ws.malformed") or name.startswith("_ws.expert"):
            bad.append(el.get("showname") or name)
    return bad


def _ident(i: m.Identity) -> list[tuple[str, bytes]]:
    return [("wai.identity.data", i.data)]


def _sig(s: m.SignatureAttr) -> list[tuple[str, bytes]]:
    return [
        *_ident(s.identity),
        ("wai.hash.alg.id", bytes([s.hash_alg])),
        ("wai.sign.alg.id", bytes([s.sig_alg])),
        ("wai.param.content", s.param),
        ("wai.sign.content", s.value),
    ]


def _addid(a: bytes) -> list[tuple[str, bytes]]:
    return [("wai.ae.mac", a[:6]), ("wai.asue.mac", a[6:])]


def _cvr(c: m.CertVerifyResult) -> list[tuple[str, bytes]]:
    return [
        ("wai.nonce", c.nonce1),
        ("wai.nonce", c.nonce2),
        ("wai.ver.res", bytes([c.result1])),
        ("wai.cert.data", c.cert1.data),
        ("wai.ver.res", bytes([c.result2])),
        ("wai.cert.data", c.cert2.data),
    ]


def expected_leaves(msg: m.Message) -> list[tuple[str, bytes]]:
    """The leaf fields the dissector should show for ``msg``, in order (independently of
    the encoder: from the message's values and the dissector's field table)."""
    if isinstance(msg, m.Activation):
        return [
            ("wai.auth.id", msg.auth_id),
            *_ident(msg.asu_identity),
            ("wai.cert.data", msg.ae_cert.data),
            ("wai.ecdh.content", msg.ecdh.data),
        ]
    if isinstance(msg, m.AccessAuthRequest):
        assert msg.signature
        out = [
            ("wai.auth.id", msg.auth_id),
            ("wai.challenge", msg.n_asue),
            ("wai.key.data.content", msg.asue_key),
            *_ident(msg.ae_identity),
            ("wai.cert.data", msg.asue_cert.data),
            ("wai.ecdh.content", msg.ecdh.data),
        ]
        if msg.asu_list is not None:
            out.append(("wai.no.of.ids", len(msg.asu_list).to_bytes(2, "big")))
            for i in msg.asu_list:
                out += _ident(i)
        return out + _sig(msg.signature)
    if isinstance(msg, m.AccessAuthResponse):
        assert msg.signature
        out = [
            ("wai.challenge", msg.n_asue),
            ("wai.challenge", msg.n_ae),
            ("wai.access_result", bytes([msg.result])),
            ("wai.key.data.content", msg.asue_key),
            ("wai.key.data.content", msg.ae_key),
            *_ident(msg.ae_identity),
            *_ident(msg.asue_identity),
        ]
        if msg.cert_result is not None:
            assert msg.asu_sig_asue
            out += _cvr(msg.cert_result) + _sig(msg.asu_sig_asue)
            if msg.asu_sig_ae:
                out += _sig(msg.asu_sig_ae)
        return out + _sig(msg.signature)
    if isinstance(msg, m.CertAuthRequest):
        return [
            *_addid(msg.addid),
            ("wai.challenge", msg.n_ae),
            ("wai.challenge", msg.n_asue),
            ("wai.cert.data", msg.asue_cert.data),
            ("wai.cert.data", msg.ae_cert.data),
        ]
    if isinstance(msg, m.CertAuthResponse):
        out = [*_addid(msg.addid), *_cvr(msg.cert_result), *_sig(msg.asu_sig_asue)]
        return out + (_sig(msg.asu_sig_ae) if msg.asu_sig_ae else [])
    if isinstance(msg, m.UnicastKeyRequest | m.UnicastKeyResponse | m.UnicastKeyConfirm):
        out = [("wai.bkid", msg.bkid), ("wai.uskid", bytes([msg.uskid])), *_addid(msg.addid)]
        if isinstance(msg, m.UnicastKeyRequest):
            return [*out, ("wai.challenge", msg.n_ae)]
        out.append(("wai.challenge", msg.n_asue))
        if isinstance(msg, m.UnicastKeyResponse):
            out.append(("wai.challenge", msg.n_ae))
        # Wireshark's dissector starts the response's WIE at offset 96, two bytes past
        # its start (94): it shows the IE without element ID and length there, but the
        # whole IE in the confirmation (offset 62). Our layout is the standard's.
        ie = msg.wapi_ie[2:] if isinstance(msg, m.UnicastKeyResponse) else msg.wapi_ie
        return [*out, ("wai.wie", ie), ("wai.message.auth.code", msg.mic)]
    if isinstance(msg, m.MulticastAnnounce):
        return [
            ("wai.mskid", bytes([msg.mskid])),
            ("wai.uskid", bytes([msg.uskid])),
            *_addid(msg.addid),
            ("wai.data.packet.num", msg.data_pn),
            ("wai.key.ann.id", msg.announce_id),
            ("wai.key.data.content", msg.key_data),
            ("wai.message.auth.code", msg.mic),
        ]
    if isinstance(msg, m.MulticastAnnounceResponse):
        return [
            ("wai.mskid", bytes([msg.mskid])),
            ("wai.uskid", bytes([msg.uskid])),
            *_addid(msg.addid),
            ("wai.key.ann.id", msg.announce_id),
            ("wai.message.auth.code", msg.mic),
        ]
    if isinstance(msg, m.PreAuthStart):
        return [
            ("wai.uskid", bytes([msg.uskid])),
            *_addid(msg.addid),
            ("wai.counter", msg.counter),
            ("wai.message.auth.code", msg.mic),
        ]
    if isinstance(msg, m.StaKeyRequest):
        return [
            ("wai.sta.key.id", bytes([msg.stakey_id])),
            ("wai.uskid", bytes([msg.uskid])),
            *_addid(msg.addid),
            ("wai.counter", msg.counter),
            ("wai.message.auth.code", msg.mic),
        ]
    raise AssertionError(type(msg))


def leaves(packet: ET.Element) -> list[tuple[str, bytes]]:
    return [(n, bytes.fromhex(v)) for n, v in fields(packet) if n in LEAVES]
