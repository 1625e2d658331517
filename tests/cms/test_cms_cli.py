"""``mstcrypt cms sign|verify|encrypt|decrypt``: gmssl option names, exit codes, chain
and CRL checks, and GmSSL itself on the other end when available."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from cmskit import kit
from test_cms_interop import GMSSL, needs_gmssl, run

from mstcrypt.cli import app
from mstcrypt.cli._common import run as run_cli
from mstcrypt.formats import cms
from mstcrypt.formats.keys import dump_private_key

PASS = "cli-pass"
MSG = b"cms cli message\n" * 10


def cli(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["mstcrypt", *args])
    code = run_cli(app)
    out, err = capfd.readouterr()
    return code, out, err


@pytest.fixture
def d(tmp_path: Path) -> Path:
    k = kit()
    for name, party in (("alice", k.alice), ("bob", k.bob), ("carol", k.carol)):
        (tmp_path / f"{name}.crt").write_bytes(party.cert.pem)
        (tmp_path / f"{name}.key").write_bytes(dump_private_key(party.key, password=PASS))
    (tmp_path / "root.crt").write_bytes(k.root.certificate.pem)
    (tmp_path / "msg").write_bytes(MSG)
    return tmp_path


def test_sign_verify_gmssl_option_names(
    d: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(monkeypatch, capfd, "cms", "sign", "-key", str(d / "alice.key"),
                       "-pass", PASS, "-cert", str(d / "alice.crt"), "-in", str(d / "msg"),
                       "-out", str(d / "s.pem"))  # fmt: skip
    assert code == 0, err
    assert (d / "s.pem").read_bytes().startswith(b"-----BEGIN CMS-----")
    code, out, err = cli(monkeypatch, capfd, "cms", "verify", "-in", str(d / "s.pem"),
                         "-out", str(d / "content"), "-CAfile", str(d / "root.crt"))  # fmt: skip
    assert code == 0, err
    assert "Verification successful" in out
    assert "CN=alice" in out and "chain to" in out and "revocation NOT checked" in out
    assert (d / "content").read_bytes() == MSG
    # without a trust anchor the output says the certificate was not validated
    code, out, _ = cli(monkeypatch, capfd, "cms", "verify", "--in", str(d / "s.pem"))
    assert code == 0 and "NOT validated" in out


def test_detached_and_der(
    d: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(monkeypatch, capfd, "cms", "sign", "--key", str(d / "alice.key"),
                       "--pass", PASS, "--cert", str(d / "alice.crt"), "--in", str(d / "msg"),
                       "--out", str(d / "s.der"), "--detached", "--outform", "der",
                       "--profile", "pkcs7")  # fmt: skip
    assert code == 0, err
    assert cms.SignedData.from_der((d / "s.der").read_bytes()).profile is cms.Profile.PKCS7
    code, out, _ = cli(monkeypatch, capfd, "cms", "verify", "--in", str(d / "s.der"))
    assert code == 2
    code, out, _ = cli(monkeypatch, capfd, "cms", "verify", "--in", str(d / "s.der"),
                       "--content", str(d / "msg"))  # fmt: skip
    assert code == 0 and "Verification successful" in out
    (d / "other").write_bytes(MSG + b"!")
    code, out, _ = cli(monkeypatch, capfd, "cms", "verify", "--in", str(d / "s.der"),
                       "--content", str(d / "other"))  # fmt: skip
    assert code == 1 and "messageDigest does not match the content" in out


def test_revoked_signer_is_refused_with_crl(
    d: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from datetime import UTC, datetime

    from mstcrypt import pki

    k = kit()
    # a separate signer, revoked, so that other tests keep a valid alice
    key = k.alice.key
    cert = k.root.issue(subject=pki.name(C="CN", O="mstcrypt test", CN="revoked"),
                        public_key=key.public_key(), profile=pki.Profile.DEVICE_SIGN)  # fmt: skip
    (d / "rev.crt").write_bytes(cert.pem)
    crl = k.root.crl(number=7, entries=[pki.RevokedEntry(cert.serial, datetime.now(UTC))])
    (d / "crl.der").write_bytes(crl.der)
    empty = k.root.crl(number=6)
    (d / "empty.crl").write_bytes(empty.der)
    code, _, err = cli(monkeypatch, capfd, "cms", "sign", "-key", str(d / "alice.key"),
                       "-pass", PASS, "-cert", str(d / "rev.crt"), "-in", str(d / "msg"),
                       "-out", str(d / "s.pem"))  # fmt: skip
    assert code == 0, err
    base = ["cms", "verify", "-in", str(d / "s.pem"), "-CAfile", str(d / "root.crt")]
    code, out, _ = cli(monkeypatch, capfd, *base, "--crl", str(d / "empty.crl"))
    assert code == 0 and "checked against the CRL" in out
    code, out, _ = cli(monkeypatch, capfd, *base, "--crl", str(d / "crl.der"))
    assert code == 1 and "Verification failure" in out and "revoked" in out


def test_untrusted_signer_is_refused(
    d: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    cli(monkeypatch, capfd, "cms", "sign", "-key", str(d / "alice.key"), "-pass", PASS,
        "-cert", str(d / "alice.crt"), "-in", str(d / "msg"), "-out", str(d / "s.pem"))  # fmt: skip
    code, out, _ = cli(monkeypatch, capfd, "cms", "verify", "-in", str(d / "s.pem"),
                       "-CAfile", str(d / "bob.crt"))  # fmt: skip
    assert code == 1 and "Verification failure" in out


def test_encrypt_decrypt_several_recipients(
    d: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(monkeypatch, capfd, "cms", "encrypt", "-rcptcert", str(d / "bob.crt"),
                       "-rcptcert", str(d / "carol.crt"), "-in", str(d / "msg"),
                       "-out", str(d / "e.pem"))  # fmt: skip
    assert code == 0, err
    for who in ("bob", "carol"):
        code, _, err = cli(monkeypatch, capfd, "cms", "decrypt", "-key", str(d / f"{who}.key"),
                           "-pass", PASS, "-cert", str(d / f"{who}.crt"), "-in", str(d / "e.pem"),
                           "-out", str(d / f"{who}.out"))  # fmt: skip
        assert code == 0, err
        assert (d / f"{who}.out").read_bytes() == MSG
    code, _, err = cli(monkeypatch, capfd, "cms", "decrypt", "-key", str(d / "alice.key"),
                       "-pass", PASS, "-cert", str(d / "alice.crt"), "-in", str(d / "e.pem"),
                       "-out", str(d / "x.out"))  # fmt: skip
    assert code == 2 and "not a recipient" in err
    assert not (d / "x.out").exists()


def test_bad_input_and_options(
    d: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    (d / "bad").write_bytes(b"\x30\x03\x02\x01")
    code, _, err = cli(monkeypatch, capfd, "cms", "verify", "-in", str(d / "bad"))
    assert code == 2 and "ContentInfo is truncated" in err
    code, _, err = cli(monkeypatch, capfd, "cms", "encrypt", "-rcptcert", str(d / "bob.crt"),
                       "-in", str(d / "msg"), "--compat", "openssl")  # fmt: skip
    assert code == 2 and "unknown --compat" in err


@needs_gmssl
def test_cli_against_gmssl(
    d: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    assert GMSSL is not None
    cli(monkeypatch, capfd, "cms", "sign", "-key", str(d / "alice.key"), "-pass", PASS,
        "-cert", str(d / "alice.crt"), "-in", str(d / "msg"), "-out", str(d / "s.pem"),
        "--compat", "gmssl")  # fmt: skip
    assert b"verify success" in run(GMSSL, "cmsverify", "-in", str(d / "s.pem")).stdout
    run(GMSSL, "cmssign", "-key", str(d / "alice.key"), "-pass", PASS, "-cert",
        str(d / "alice.crt"), "-in", str(d / "msg"), "-out", str(d / "g.pem"))  # fmt: skip
    code, out, _ = cli(monkeypatch, capfd, "cms", "verify", "-in", str(d / "g.pem"))
    assert code == 1  # GmSSL's form is refused unless asked for
    code, out, _ = cli(monkeypatch, capfd, "cms", "verify", "-in", str(d / "g.pem"),
                       "--compat", "gmssl", "-CAfile", str(d / "root.crt"))  # fmt: skip
    assert code == 0 and "gmssl form" in out
    cli(monkeypatch, capfd, "cms", "encrypt", "-rcptcert", str(d / "bob.crt"), "-in",
        str(d / "msg"), "-out", str(d / "e.pem"), "--compat", "gmssl")  # fmt: skip
    p = run(GMSSL, "cmsdecrypt", "-key", str(d / "bob.key"), "-pass", PASS, "-cert",
            str(d / "bob.crt"), "-in", str(d / "e.pem"))  # fmt: skip
    assert p.stdout == MSG
