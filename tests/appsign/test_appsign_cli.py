"""The README's app-signing walkthrough, run as written on a real APK (built here and
signed by apksigner): every command succeeds, and every line marked ``!`` (a tampered
copy, another channel's package, a developer the channel did not register) is refused
with a verification or policy exit code. Plus the CLI's own error paths."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from appsign_kit import apksign, apksigner_path, build_apk

from mstcrypt.cli import app
from mstcrypt.cli._common import run

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## App signing (guide 6.2)"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.skipif(
    apksigner_path() is None, reason="apksigner not installed (Debian package apksigner)"
)


def _readme_block() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(SECTION) :]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the App signing section has no sh block"
    return [ln for ln in block.group(1).splitlines() if ln.strip()]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSTCRYPT_")}
    env["PATH"] = f"{BIN}{os.pathsep}{Path(apksigner_path()).parent}{os.pathsep}{env['PATH']}"
    return env


def test_readme_walkthrough(tmp_path):
    build_apk(tmp_path / "unsigned.apk", "cn.gov.notes", 7, payload=20_000)
    apksign(tmp_path / "unsigned.apk", tmp_path / "app.apk", tmp_path)
    env = _env()
    refused = 0
    for line in _readme_block():
        cmd = line.split("  #")[0].strip()
        if cmd.startswith("export "):
            key, _, value = cmd[len("export ") :].partition("=")
            env[key] = shlex.split(value)[0]
            continue
        expect_fail = cmd.startswith("! ")
        cmd = cmd[2:] if expect_fail else cmd
        res = subprocess.run(
            ["bash", "-c", cmd],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        if expect_fail:
            assert res.returncode in (1, 2), (line, res.returncode, res.stdout, res.stderr)
            assert "Traceback" not in res.stderr, res.stderr
            refused += 1
        else:
            assert res.returncode == 0, (line, res.stdout, res.stderr)
    assert refused == 3
    # what was refused left the installed app as it was
    state = json.loads((tmp_path / "mst" / "state.json").read_text())
    assert list(state["apps"]) == ["cn.gov.notes"]
    log = subprocess.run(
        ["mstcrypt", "app", "channel", "log", "--channel-dir", "store"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    doc = json.loads(log.stdout)
    assert doc["chain"] == "intact"
    assert [r["action"] for r in doc["log"]] == [
        "channel.init",
        "developer.register",
        "app.countersign",
    ]
    other = json.loads(
        subprocess.run(
            ["mstcrypt", "app", "channel", "log", "--channel-dir", "other"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    refusal = other["log"][1]
    assert (refusal["action"], refusal["result"], refusal["code"]) == (
        "app.review",
        "refused",
        "developer-certificate",
    )


class InProcess:
    """``mstcrypt`` in this process (as tests/test_cli.py): same exit codes, no start-up."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], cwd: Path
    ) -> None:
        self.mp, self.capfd = monkeypatch, capfd
        monkeypatch.chdir(cwd)
        for k in [k for k in os.environ if k.startswith("MSTCRYPT_")]:
            monkeypatch.delenv(k)

    def __call__(self, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
        if password is None:
            self.mp.delenv("MSTCRYPT_CHANNEL_PASS", raising=False)
        else:
            self.mp.setenv("MSTCRYPT_CHANNEL_PASS", password)
        self.mp.setattr(sys, "argv", ["mstcrypt", *args])
        self.capfd.readouterr()
        code = run(app)
        out, err = self.capfd.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)


def test_cli_errors_are_clean(tmp_path, monkeypatch, capfd):
    mst = InProcess(monkeypatch, capfd, tmp_path)
    build_apk(tmp_path / "plain.apk")
    res = mst("app", "inspect", "plain.apk")
    assert res.returncode == 2 and "apksigner" in res.stderr
    res = mst(
        "app",
        "channel",
        "init",
        "--channel-dir",
        "s",
        "--name",
        "n",
        "--org",
        "o",
        password="right",
    )
    assert res.returncode == 0, res.stderr
    res = mst("app", "channel", "list", "--channel-dir", "s", password="wrong")
    assert res.returncode == 2, res.stderr
    res = mst("app", "channel", "list", "--channel-dir", "nowhere", password="right")
    assert res.returncode == 2 and "not a channel directory" in res.stderr
    # the log detects a rewritten record (even the last one), a forged and a removed one
    log = tmp_path / "s" / "reviews.jsonl"
    good = log.read_bytes()
    assert mst("app", "channel", "log", "--channel-dir", "s", password="right").returncode == 0
    log.write_bytes(good.replace(b"channel.init", b"channel.lnit"))
    res = mst("app", "channel", "log", "--channel-dir", "s", password="right")
    assert res.returncode == 2 and "signed head" in res.stderr
    forged = b'{"action": "forged", "prev": "' + b"0" * 64 + b'"}\n'
    log.write_bytes(good + forged)
    res = mst("app", "channel", "log", "--channel-dir", "s", password="right")
    assert res.returncode == 2 and "broken at record 1" in res.stderr
    log.write_bytes(b"")
    res = mst("app", "channel", "log", "--channel-dir", "s", password="right")
    assert res.returncode == 2 and "signed head" in res.stderr


def test_cli_review_verify_inspect_revoke(tmp_path, monkeypatch, capfd):
    build_apk(tmp_path / "unsigned.apk", "cn.gov.mail", 4, payload=5_000)
    apksign(tmp_path / "unsigned.apk", tmp_path / "app.apk", tmp_path)
    mst = InProcess(monkeypatch, capfd, tmp_path)

    def ok(*args: str) -> str:
        res = mst(*args, password="pw")
        assert res.returncode == 0, (args, res.stdout, res.stderr)
        return res.stdout

    ok("app", "channel", "init", "--channel-dir", "s", "--name", "gov", "--org", "Gov")
    ok("sm2", "keygen", "--out", "dev.key", "--pass", "devpw")
    ok("app", "csr", "--key", "dev.key", "--pass", "devpw", "--cn", "Mail Dev", "--out", "d.csr")
    reg = ok(
        "app",
        "channel",
        "register",
        "d.csr",
        "--out",
        "d.pem",
        "--channel-dir",
        "s",
        "--email",
        "dev@example.cn",
    )
    serial = json.loads(reg)["serial"]
    listing = json.loads(ok("app", "channel", "list", "--channel-dir", "s"))
    assert listing[serial]["status"] == "active" and listing[serial]["subject"] == "CN=Mail Dev"
    ok("app", "sign", "--key", "dev.key", "--pass", "devpw", "--cert", "d.pem", "app.apk", "d.apk")
    assert json.loads(ok("app", "review", "d.apk", "--channel-dir", "s"))["review"] == "passed"
    ok("app", "countersign", "d.apk", "p.apk", "--channel-dir", "s")
    info = json.loads(ok("app", "inspect", "p.apk"))
    assert info["developer"]["digest_matches"] is True
    assert info["channel"]["name"] == "gov"
    assert "0x4d534431 " in " ".join(info["signing_block"]["pairs"])
    fp = ok("app", "fingerprint", "s/signer.pem").strip()
    policy = json.loads((tmp_path / "s" / "policy.json").read_text())
    assert policy["channels"][0]["signer_keys"] == [fp]
    verdict = json.loads(
        ok("app", "verify", "p.apk", "--policy", "s/policy.json", "--crl", "s/crl.pem")
    )
    assert verdict["verified"] is True and verdict["version_code"] == 4
    ok(
        "app",
        "install",
        "p.apk",
        "--into",
        "mst",
        "--policy",
        "s/policy.json",
        "--crl",
        "s/crl.pem",
    )
    # the channel revokes the developer; terminals with the new CRL refuse
    ok("app", "channel", "revoke", serial, "--channel-dir", "s")
    res = mst("app", "verify", "p.apk", "--policy", "s/policy.json", "--crl", "s/crl.pem")
    assert res.returncode == 1 and "revoked" in res.stderr
    res = mst(
        "app",
        "launch",
        "cn.gov.mail",
        "--from",
        "mst",
        "--policy",
        "s/policy.json",
        "--crl",
        "s/crl.pem",
    )
    assert res.returncode == 1 and "revoked" in res.stderr
    assert json.loads(ok("app", "channel", "crl", "--channel-dir", "s"))["crl_number"] == 3
    # no CRL at all: refused (the policy requires revocation checking)
    res = mst("app", "verify", "p.apk", "--policy", "s/policy.json")
    assert res.returncode == 1 and "crl_missing" in res.stderr
