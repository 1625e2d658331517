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


def _mst(tmp_path: Path, *args: str, env=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "mstcrypt"), *args],
        cwd=tmp_path,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_cli_errors_are_clean(tmp_path):
    build_apk(tmp_path / "plain.apk")
    res = _mst(tmp_path, "app", "inspect", "plain.apk")
    assert res.returncode == 2 and "apksigner" in res.stderr and "Traceback" not in res.stderr
    env = {**_env(), "MSTCRYPT_CHANNEL_PASS": "right"}
    assert (
        _mst(
            tmp_path,
            "app",
            "channel",
            "init",
            "--channel-dir",
            "s",
            "--name",
            "n",
            "--org",
            "o",
            env=env,
        ).returncode
        == 0
    )
    env["MSTCRYPT_CHANNEL_PASS"] = "wrong"
    res = _mst(tmp_path, "app", "channel", "list", "--channel-dir", "s", env=env)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    # the log detects a rewritten record
    log = tmp_path / "s" / "reviews.jsonl"
    log.write_text(log.read_text().replace("channel.init", "channel.lnit"))
    env["MSTCRYPT_CHANNEL_PASS"] = "right"
    assert _mst(tmp_path, "app", "channel", "list", "--channel-dir", "s", env=env).returncode == 0
    with open(log, "a") as f:
        f.write('{"action": "forged", "prev": "00"}\n')
    res = _mst(tmp_path, "app", "channel", "log", "--channel-dir", "s", env=env)
    assert res.returncode == 2 and "broken" in res.stderr
