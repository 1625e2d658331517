"""``mstcrypt im …`` and ``mstcrypt ims serve`` against a running platform and IMS, and
``mstcrypt im demo`` end to end."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from im_helpers import PIN, World, free_port, world

from mstcrypt.cli import _common
from mstcrypt.cli import app as cli_app
from mstcrypt.server.ims import running_ims


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("imcli")
    with world(tmp) as wd:
        for name in ("alice", "bob", "carol"):
            wd.enroll(name)
        (tmp / "root.pem").write_bytes(wd.root.pem)
        kmc = wd.kmc()
        with running_ims(kmc, blob_dir=tmp / "blobs") as url:
            wd.ims = url  # type: ignore[attr-defined]
            yield wd
        kmc.db.dispose()


def run(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["mstcrypt", *args])
    monkeypatch.setenv("COLUMNS", "200")
    code = _common.run(cli_app)
    out, err = capfd.readouterr()
    return code, out + err


def term(w: World, name: str) -> list[str]:
    return [
        "--server",
        w.url,
        "--ims",
        w.ims,
        "--token",
        str(w.tmp / f"{name}.tok"),  # type: ignore[attr-defined]
        "--pin",
        PIN,
        "--ca-file",
        str(w.tmp / "root.pem"),
    ]


def test_group_send_history_listen(
    w: World, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    op = [
        "--server",
        w.url,
        "--operator-token",
        w.ops["alice"],
        "--ca-file",
        str(w.tmp / "root.pem"),
    ]
    code, out = run(
        monkeypatch, capfd, "im", "group", "create", "crew", "alice", "bob", "carol", *op
    )
    assert code == 0 and "group crew at key v1: alice, bob, carol" in out, out
    code, out = run(monkeypatch, capfd, "im", "group", "list", *term(w, "bob"))
    assert code == 0 and "crew: key v1, members alice, bob, carol" in out, out
    code, out = run(
        monkeypatch, capfd, "im", "send", "crew", "hello from the CLI", *term(w, "alice")
    )
    assert code == 0 and "sent to crew at position" in out, out
    # a sender's console markup is shown, not interpreted
    code, out = run(
        monkeypatch, capfd, "im", "send", "crew", "[red]not red[/red]", *term(w, "alice")
    )
    assert code == 0, out
    src = tmp_path / "photo.jpg"
    src.write_bytes(os.urandom(70_000))
    code, out = run(
        monkeypatch,
        capfd,
        "im",
        "send",
        "crew",
        "holiday",
        "--file",
        str(src),
        "--media-type",
        "image/jpeg",
        *term(w, "alice"),
    )
    assert code == 0, out
    code, out = run(monkeypatch, capfd, "im", "history", "crew", *term(w, "bob"))
    assert code == 0 and "<alice> (v1) hello from the CLI" in out
    assert "[red]not red[/red]" in out
    assert "[file] photo.jpg (image/jpeg, 70000 bytes) holiday" in out
    save = tmp_path / "got"
    code, out = run(
        monkeypatch,
        capfd,
        "im",
        "listen",
        "--count",
        "3",
        "--timeout",
        "10",
        "--save-dir",
        str(save),
        *term(w, "carol"),
    )
    assert code == 0 and "hello from the CLI" in out, out
    assert (save / "photo.jpg").read_bytes() == src.read_bytes()
    # carol removed: she can no longer send, and the rotation shows in the listing
    code, out = run(monkeypatch, capfd, "im", "group", "change", "crew", "--remove", "carol", *op)
    assert code == 0 and "now at key v2: alice, bob" in out, out
    code, out = run(monkeypatch, capfd, "im", "send", "crew", "still here?", *term(w, "carol"))
    assert code == 2 and "not a member" in out, out
    code, out = run(monkeypatch, capfd, "im", "history", "crew", *term(w, "carol"))
    assert code == 2
    # usage errors
    code, out = run(monkeypatch, capfd, "im", "send", "crew", *term(w, "alice"))
    assert code == 2 and "a text or --file" in out
    code, out = run(
        monkeypatch, capfd, "im", "send", "crew", "x", *term(w, "alice")[:-4], "--pin", "000000"
    )
    assert code == 2


def test_ims_serve(w: World, tmp_path: Path) -> None:
    """The real command in a subprocess, on the platform's database."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSTCRYPT_")}
    env.update(
        PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"),
        MSTCRYPT_DATA_DIR=str(w.settings.data_dir),
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mstcrypt",
            "ims",
            "serve",
            "--port",
            str(port),
            "--blob-dir",
            str(tmp_path / "blobs"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                h = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert h["status"] == "ok" and h["fanout"] == "local"
        alice = w.im("alice", f"http://127.0.0.1:{port}", state=False)
        assert any(g["group"] == "crew" for g in alice.groups())
        alice.close()
    finally:
        proc.terminate()
        proc.wait(15)


def test_im_demo(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSTCRYPT_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "src")
    env["COLUMNS"] = "200"
    r = subprocess.run(
        [sys.executable, "-m", "mstcrypt", "im", "demo", "--data-dir", str(tmp_path / "demo")],
        env=env,
        capture_output=True,
        timeout=240,
        check=False,
    )
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    assert "FAILED" not in out and "IM demo complete" in out
    assert out.count(" ok ") >= 8
    assert "the KMC refuses zhao the new group key" in out
    assert "WebSocket run over TLCP" in out and "on https://localhost:" in out
