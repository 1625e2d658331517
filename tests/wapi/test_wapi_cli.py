"""`mstcrypt wapi inspect` and the role configuration files (keys, certificates, CRL
source) without network namespaces."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import wapi_env as env
import wapi_samples as samples

from mstcrypt.apps.wapi import config as cf
from mstcrypt.cli import app
from mstcrypt.cli._common import run
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.formats.keys import dump_private_key
from mstcrypt.pki import Profile, name
from mstcrypt.protocols.wai import messages as m
from mstcrypt.protocols.wai import pcap
from mstcrypt.protocols.wai.constants import VerifyResult

PASSWORD = "pw-for-tests"


def cli(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["mstcrypt", *args])
    code = run(app)
    out, err = capfd.readouterr()
    return code, out, err


def _capture(tmp_path: Path, extra: list[bytes] = ()) -> Path:  # type: ignore[assignment]
    packets = [m.encode_packet(msg, i + 1) for i, (msg, _) in enumerate(samples.cases())]
    frames = [pcap.ethernet_frame(samples.STA_MAC, samples.AE_MAC, p) for p in packets]
    frames.append(
        pcap.ethernet_frame(samples.STA_MAC, samples.AE_MAC, b"not wai", ethertype=0x0800)
    )
    frames += [pcap.ethernet_frame(samples.STA_MAC, samples.AE_MAC, p) for p in extra]
    path = tmp_path / "c.pcap"
    path.write_bytes(pcap.write_pcap([(1.0 + i, f) for i, f in enumerate(frames)]))
    return path


def test_inspect_lists_every_packet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    path = _capture(tmp_path)
    code, out, _ = cli(monkeypatch, capfd, "wapi", "inspect", str(path))
    assert code == 0
    for sub in (
        "auth_activation",
        "access_auth_response",
        "cert_auth_response",
        "multicast_announce_response",
    ):
        assert sub in out
    code, out, _ = cli(monkeypatch, capfd, "wapi", "inspect", "--json", str(path))
    assert code == 0
    recs = [
        json.loads(line) for line in out.replace("}\n{", "}\x00{").split("\x00") if line.strip()
    ]
    assert len(recs) == len(samples.cases())
    assert recs[0]["subtype"] == "auth_activation" and recs[0]["fields"]["auth_id"] == "11" * 32


def test_inspect_reports_malformed_packets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    bad = bytearray(m.encode_packet(samples.cases()[0][0], 99))
    bad[12 + 35] = 0xFF  # identity length beyond the packet
    path = _capture(tmp_path, [bytes(bad)])
    code, out, _ = cli(monkeypatch, capfd, "wapi", "inspect", str(path))
    assert code == 1 and "malformed" in out
    (tmp_path / "x.pcap").write_bytes(b"\x00" * 30)
    code, _, err = cli(monkeypatch, capfd, "wapi", "inspect", str(tmp_path / "x.pcap"))
    assert code == 1 and "pcap" in err


@pytest.fixture
def material(tmp_path: Path) -> env.SmPlatform:
    p = env.SmPlatform()
    (tmp_path / "root.pem").write_bytes(p.ca.certificate.pem)
    for cn, prof in (
        ("asu", Profile.WLAN_ASU_SIGN),
        ("ap", Profile.WLAN_AP_SIGN),
        ("sta", Profile.DEVICE_SIGN),
    ):
        key = SM2PrivateKey.generate()
        cert = p.ca.issue(subject=name(CN=cn), public_key=key.public_key(), profile=prof)
        (tmp_path / f"{cn}.pem").write_bytes(cert.pem)
        (tmp_path / f"{cn}.key").write_bytes(dump_private_key(key, password=PASSWORD))
        (tmp_path / f"{cn}.plain").write_bytes(dump_private_key(key))
    (tmp_path / "root.crl").write_bytes(p.crl().der)
    return p


def _cfg(tmp_path: Path, role: str, body: str) -> Path:
    path = tmp_path / f"{role}.toml"
    path.write_text(f"[{role}]\n{body}")
    return path


def test_configs_build_the_roles(tmp_path: Path, material: env.SmPlatform) -> None:
    asu = cf.load(
        _cfg(
            tmp_path,
            "asu",
            'listen="127.0.0.1:0"\ncert="asu.pem"\nkey="asu.key"\nca="root.pem"\ncrl="root.crl"\n',
        ),
        "asu",
        PASSWORD,
    )
    server = cf.build_asu(asu)
    assert server.validator(material.sta.cert_der, env.AT) is VerifyResult.VALID
    ap = cf.load(
        _cfg(
            tmp_path,
            "ap",
            'interface="x"\ncert="ap.pem"\nkey="ap.key"\nasu_cert="asu.pem"\nasu="127.0.0.1:1"\n',
        ),
        "ap",
        PASSWORD,
    )
    assert cf.build_ap(ap, env.AE_MAC).mac == env.AE_MAC
    sta = cf.load(
        _cfg(
            tmp_path, "sta", 'interface="x"\ncert="sta.pem"\nkey="sta.key"\ntrusted_asu="asu.pem"\n'
        ),
        "sta",
        PASSWORD,
    )
    assert cf.asue_factory(sta, env.STA_MAC)(env.AE_MAC).addid == env.AE_MAC + env.STA_MAC


@pytest.mark.parametrize(
    ("body", "password", "why"),
    [
        ('cert="sta.pem"\nkey="sta.plain"\n', PASSWORD, "not encrypted"),
        ('cert="sta.pem"\nkey="sta.key"\n', None, "needs --pass"),
        ('cert="ap.pem"\nkey="sta.key"\n', PASSWORD, "does not match"),
        ('cert="missing.pem"\nkey="sta.key"\n', PASSWORD, "cannot read"),
        ('key="sta.key"\n', PASSWORD, "needs 'cert'"),
    ],
)
def test_bad_credentials_are_refused(
    tmp_path: Path, material: env.SmPlatform, body: str, password: str | None, why: str
) -> None:
    cfg = cf.load(_cfg(tmp_path, "sta", body), "sta", password)
    with pytest.raises(cf.ConfigError, match=why):
        cfg.credential()


def test_bad_config_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(cf.ConfigError, match="no \\[ap\\]"):
        cf.load(_cfg(tmp_path, "sta", 'interface="x"\n'), "ap", None)
    (tmp_path / "broken.toml").write_text("[ap\n")
    with pytest.raises(cf.ConfigError, match="cannot read"):
        cf.load(tmp_path / "broken.toml", "ap", None)


def test_crl_source_rereads_and_keeps_the_last_good(
    tmp_path: Path, material: env.SmPlatform
) -> None:
    cfg = cf.load(_cfg(tmp_path, "asu", 'crl="root.crl"\ncrl_refresh=0\n'), "asu", None)
    src = cf.CrlSource(cfg)
    first = src()
    assert len(first) == 1
    material.revoke(material.sta)
    good = material.crl().der
    (tmp_path / "root.crl").write_bytes(good)
    assert src()[0].der == good != first[0].der  # re-read
    (tmp_path / "root.crl").write_bytes(b"garbage")
    assert [c.der for c in src()] == [good]  # the last good one is kept
    os.remove(tmp_path / "root.crl")
    cfg2 = cf.load(_cfg(tmp_path, "asu", 'crl="root.crl"\n'), "asu", None)
    assert cf.CrlSource(cfg2)() == []  # none: verdicts say "revocation unknown"


# ---------------------------------------------------------------- standard suite
def test_wapi_key_file_round_trip_and_refusals() -> None:
    from mstcrypt.crypto import wapi192
    from mstcrypt.errors import DecodeError, DecryptionError, UnsupportedError
    from mstcrypt.formats.wapi_keys import dump_wapi_private_key, load_wapi_private_key

    key = wapi192.PrivateKey.generate()
    pem = dump_wapi_private_key(key, "secret", iterations=1000)
    assert b"ENCRYPTED PRIVATE KEY" in pem and key.to_bytes().hex().encode() not in pem
    assert load_wapi_private_key(pem, "secret").to_bytes() == key.to_bytes()
    with pytest.raises(DecryptionError):
        load_wapi_private_key(pem, "wrong")
    with pytest.raises(UnsupportedError):
        dump_wapi_private_key(key, "")
    # an SM2 key file is not a WAPI key
    sm2_pem = dump_private_key(SM2PrivateKey.generate(), password="secret")
    with pytest.raises((UnsupportedError, DecryptionError, DecodeError)):
        load_wapi_private_key(sm2_pem, "secret")
    with pytest.raises(DecodeError):
        load_wapi_private_key(
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
            "x",
        )


def test_issue_command_and_standard_configs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MSTCRYPT_KEY_PASS", PASSWORD)
    code, out, _ = cli(monkeypatch, capfd, "wapi", "issue", "--cn", "ASU", "--out", "asu")
    assert code == 0 and "asu.pem" in out
    for who in ("ap", "sta"):
        code, out, err = cli(
            monkeypatch,
            capfd,
            "wapi",
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
        assert code == 0, err
    assert oct((tmp_path / "sta.key").stat().st_mode & 0o777) == "0o600"
    # a mismatched issuer pair is refused
    code, _, err = cli(
        monkeypatch,
        capfd,
        "wapi",
        "issue",
        "--cn",
        "x",
        "--issuer-cert",
        "ap.pem",
        "--issuer-key",
        "asu.key",
        "--out",
        "x",
    )
    assert code != 0 and "does not match" in err
    serial = out.rsplit("serial ", 1)[1].strip(")\n ")
    (tmp_path / "revoked.txt").write_text("")
    asu = cf.load(
        _cfg(
            tmp_path,
            "asu",
            'suite="standard"\ncert="asu.pem"\nkey="asu.key"\nca="asu.pem"\nrevoked="revoked.txt"\ncrl_refresh=0\n',
        ),
        "asu",
        PASSWORD,
    )
    server = cf.build_asu(asu)
    from mstcrypt.formats._der import pem_decode

    sta_der = pem_decode((tmp_path / "sta.pem").read_bytes(), ("CERTIFICATE",))[1]
    now = datetime.now(UTC)  # `wapi issue` made it just now, valid from now
    assert server.validator(sta_der, now) is VerifyResult.VALID
    (tmp_path / "revoked.txt").write_text(f"# comment\n{serial}\n")
    assert server.validator(sta_der, now) is VerifyResult.REVOKED
    sta = cf.load(
        _cfg(
            tmp_path,
            "sta",
            'suite="standard"\ncert="sta.pem"\nkey="sta.key"\ntrusted_asu="asu.pem"\n',
        ),
        "sta",
        PASSWORD,
    )
    asue = cf.asue_factory(sta, env.STA_MAC)(env.AE_MAC)
    assert asue.suite.name == "standard"
    bad = cf.load(
        _cfg(tmp_path, "ap", 'suite="standard"\ncert="ap.pem"\nkey="sta.key"\n'), "ap", PASSWORD
    )
    with pytest.raises(cf.ConfigError, match="does not match"):
        bad.credential()
    with pytest.raises(cf.ConfigError, match="suite must be"):
        cf.load(_cfg(tmp_path, "ap", 'suite="wep"\n'), "ap", None)
