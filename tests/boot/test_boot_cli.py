"""``mstcrypt boot``: the whole flow through the CLI on real artefacts — a real ext4
system image built with mkfs.ext4, a machine binary as bootloader, and the machine's
kernel and initrd when /boot has them."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mstcrypt.cli import app
from mstcrypt.cli._common import run

MKFS = shutil.which("mkfs.ext4") or shutil.which("mkfs.ext4", path="/usr/sbin:/sbin")
DEBUGFS = shutil.which("debugfs") or shutil.which("debugfs", path="/usr/sbin:/sbin")


def cli(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], *args: str):
    monkeypatch.setattr(sys, "argv", ["mstcrypt", *args])
    code = run(app)
    out, err = capfd.readouterr()
    return code, out, err


def _ext4(tmp: Path) -> tuple[Path, int]:
    """A real ext4 image with /etc/motd; returns it and the fs block of that file."""
    src = tmp / "rootfs"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "motd").write_bytes(b"welcome to a verified system\n" * 200)
    img = tmp / "system.img"
    subprocess.run(
        [MKFS, "-q", "-F", "-b", "4096", "-d", str(src), str(img), "8M"],
        check=True, capture_output=True, env={**os.environ, "E2FSPROGS_FAKE_TIME": "1"},
    )  # fmt: skip
    out = subprocess.run(
        [DEBUGFS, "-R", "blocks /etc/motd", str(img)], check=True, capture_output=True, text=True
    ).stdout
    return img, int(out.split()[0])


def _kernel_pair() -> tuple[str, str] | None:
    for k in sorted(glob.glob("/boot/vmlinuz-*")):
        initrd = k.replace("vmlinuz", "initrd.img")
        if os.access(k, os.R_OK) and os.access(initrd, os.R_OK):
            return k, initrd
    return None


def _flow(
    tmp: Path, mp: pytest.MonkeyPatch, cf: pytest.CaptureFixture[str], vmlinuz: str, initrd: str
) -> None:
    def ok(*args: str) -> str:
        code, out, err = cli(mp, cf, *args)
        assert code == 0, err
        return out

    for k in ("rom", "kernel", "next"):
        ok("boot", "keygen", "--out", str(tmp / f"{k}.pem"), "--pubout", str(tmp / f"{k}.pub"))
    state = tmp / "state.json"
    ok("boot", "provision", "--rom-key", str(tmp / "rom.pub"), "--state", str(state))
    system, motd_block = _ext4(tmp)
    t = str(tmp)

    def sign_kernel(index: int) -> None:
        ok("boot", "sign", "--stage", "kernel", "--key", f"{t}/kernel.pem", "--out", f"{t}/k.mf",
           "--image", f"vmlinuz={vmlinuz}", "--image", f"initrd={initrd}",
           "--chain", f"system:2={t}/next.pub", "--rollback-location", "1",
           "--rollback-index", str(index))  # fmt: skip

    ok("boot", "sign", "--stage", "bootloader", "--key", f"{t}/rom.pem", "--out", f"{t}/bl.mf",
       "--image", f"bootloader={sys.executable}", "--chain", f"kernel:1={t}/kernel.pub",
       "--rollback-index", "1")  # fmt: skip
    sign_kernel(3)
    ok("boot", "sign", "--stage", "system", "--key", f"{t}/next.pem", "--out", f"{t}/s.mf",
       "--hashtree", f"system={system}", "--rollback-location", "2")  # fmt: skip
    info = json.loads(ok("boot", "inspect", "--json", f"{t}/k.mf"))
    assert [d["type"] for d in info["descriptors"]] == ["hash", "hash", "chain"]
    verify = ["boot", "verify", "--state", str(state), "--manifest", f"{t}/bl.mf",
              "--manifest", f"{t}/k.mf", "--manifest", f"{t}/s.mf",
              "--image", f"bootloader={sys.executable}", "--image", f"vmlinuz={vmlinuz}",
              "--image", f"initrd={initrd}", "--image", f"system={system}",
              "--tree", f"system={system}.tree"]  # fmt: skip
    out = ok(*verify, "--full", "--commit")
    assert "system: OK" in out and "PCR:" in out
    assert json.loads(state.read_text())["rollback"][:3] == [1, 3, 0]
    hv = ["boot", "hashtree", "verify", "--manifest", f"{t}/s.mf", "--key", f"{t}/next.pub",
          "--name", "system", "--image", str(system), "--tree", f"{system}.tree"]  # fmt: skip
    assert "OK" in ok(*hv, "--block", str(motd_block))
    # a rollback to an older kernel is refused, and nothing is stored
    sign_kernel(2)
    code, _, err = cli(mp, cf, *verify, "--commit")
    assert code == 1 and "kernel" in err and "[rollback]" in err
    # a modified file in the system image: the block that holds it fails when read
    data = bytearray(system.read_bytes())
    data[motd_block * 4096] ^= 0x20
    system.write_bytes(bytes(data))
    code, _, err = cli(mp, cf, *hv, "--block", str(motd_block))
    assert code == 1 and f"data block {motd_block}" in err
    assert "OK" in ok(*hv, "--block", "0")
    sign_kernel(3)
    ok(*verify)  # lazy: the chain boots, the block is refused when read
    code, _, err = cli(mp, cf, *verify, "--full")
    assert code == 1 and "system" in err and "[hashtree]" in err
    assert json.loads(state.read_text())["rollback"][:3] == [1, 3, 0]


@pytest.mark.skipif(
    MKFS is None or DEBUGFS is None, reason="e2fsprogs (mkfs.ext4, debugfs) not installed"
)
def test_cli_flow_ext4_system_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # stand-ins for kernel and initrd: real ELF and shared-object files of this machine
    libs = sorted(glob.glob("/usr/lib/x86_64-linux-gnu/libcrypto.so*")) or [sys.executable]
    _flow(
        tmp_path,
        monkeypatch,
        capfd,
        os.path.realpath(libs[0]),
        shutil.which("sh") or sys.executable,
    )


@pytest.mark.skipif(
    MKFS is None or DEBUGFS is None, reason="e2fsprogs (mkfs.ext4, debugfs) not installed"
)
@pytest.mark.skipif(
    _kernel_pair() is None,
    reason="no readable /boot/vmlinuz-* with its initrd.img-* on this machine",
)
def test_cli_flow_machine_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    pair = _kernel_pair()
    assert pair is not None
    _flow(tmp_path, monkeypatch, capfd, *pair)


def test_cli_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.mf"
    bad.write_bytes(b"\x89MSTBOOT\x01" + bytes(9))
    code, _, err = cli(monkeypatch, capfd, "boot", "inspect", str(bad))
    assert code == 2 and "truncated" in err
    code, _, err = cli(monkeypatch, capfd, "boot", "sign", "--stage", "x", "--key", "k",
                       "--out", "o", "--image", "noequals")  # fmt: skip
    assert code == 2
    k = tmp_path / "k"
    assert (
        cli(monkeypatch, capfd, "boot", "keygen", "--out", f"{k}.pem", "--pubout", f"{k}.pub")[0]
        == 0
    )
    st = tmp_path / "st.json"
    assert (
        cli(monkeypatch, capfd, "boot", "provision", "--rom-key", f"{k}.pub", "--state", str(st))[0]
        == 0
    )
    code, _, err = cli(
        monkeypatch, capfd, "boot", "provision", "--rom-key", f"{k}.pub", "--state", str(st)
    )
    assert code == 2 and "provisioned once" in err
    img = tmp_path / "img"
    img.write_bytes(os.urandom(3 * 4096))
    # a corrupt manifest named by stage: the chain stops there as malformed
    code, _, err = cli(monkeypatch, capfd, "boot", "verify", "--state", str(st),
                       "--manifest", f"bootloader={bad}")  # fmt: skip
    assert code == 1 and "bootloader" in err and "[malformed-manifest]" in err
    code, _, err = cli(
        monkeypatch, capfd, "boot", "verify", "--state", str(st), "--manifest", str(bad)
    )
    assert code == 1 and "note:" in err and "[missing-manifest]" in err
    code, out, _ = cli(monkeypatch, capfd, "boot", "hashtree", "build", "--image", str(img),
                       "--tree", str(tmp_path / "t"), "--salt", "00ff")  # fmt: skip
    assert code == 0 and "root:" in out


def test_cli_attest_against_platform(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """verify --log-out on the device, then boot attest with its soft token: trusted
    while the boot matches the golden values, flagged (exit 1) once the kernel changed."""
    from bootkit import make_chain

    from mstcrypt.apps import boot
    from mstcrypt.cli.platform import running_platform
    from mstcrypt.client import Client
    from mstcrypt.pki import Certificate
    from mstcrypt.server.config import Settings

    data = tmp_path / "data"
    settings = Settings.from_env(data, static_operators=True)
    monkeypatch.setenv("MSTCRYPT_PIN", "123456")
    (tmp_path / "chain").mkdir()
    ch = make_chain(tmp_path / "chain")
    with running_platform(data, settings) as url:
        kmc = settings.kmc()
        op = kmc.operators.add_static("op", ["registration_officer", "administrator"])
        root = tmp_path / "root.pem"
        root.write_bytes(kmc.chain()[-1].pem)
        kmc.db.dispose()
        anchors = [Certificate.from_pem(root.read_bytes())]
        with Client(url, anchors=anchors, operator_token=op) as admin:
            code = admin.create_enrollment_code("dave", {"CN": "dave"})["code"]
        # the operators' commands: approve the vendor's manifests, say dave's model
        sess = tmp_path / "op.session"
        sess.write_text(op)
        opargs = ("--server", url, "--session", str(sess), "--ca-file", str(root))
        for stage in ("bootloader", "kernel", "system"):
            (tmp_path / f"{stage}.mf").write_bytes(ch.manifests[stage])
        mfs = [
            a
            for s in ("bootloader", "kernel", "system")
            for a in ("--manifest", f"{tmp_path}/{s}.mf")
        ]
        code_, out, err = cli(
            monkeypatch, capfd, "boot", "golden", *opargs, "--model", "phone-x1", *mfs
        )
        assert code_ == 0 and out.count("approved") == 3, err
        code_, _, err = cli(
            monkeypatch, capfd, "boot", "device", *opargs, "--owner", "dave", "--model", "phone-x1"
        )
        assert code_ == 0, err
        tok = str(tmp_path / "dave.tok")
        for args in (
            ("token", "init", "--token", tok, "--admin-code", "admin-code-1",
             "--iterations", "100000", "--anchor", str(root)),
            ("enroll", "--server", url, "--code", code, "--token", tok),
        ):  # fmt: skip
            code_, _, err = cli(monkeypatch, capfd, *args)
            assert code_ == 0, err

        def device_boot() -> Path:
            log = tmp_path / "events.json"
            with ch.verify() as r:
                log.write_text(r.log.to_json())
            return log

        attest = ("boot", "attest", "--server", url, "--token", tok)
        code_, out, err = cli(monkeypatch, capfd, *attest, "--log", str(device_boot()))
        assert code_ == 0 and "verdict: trusted" in out, err
        m = boot.Manifest.parse(ch.manifests["kernel"])
        ch.images["initrd"].write_bytes(b"an initrd with a backdoor")
        descs = [
            boot.HashDescriptor.of("initrd", b"an initrd with a backdoor")
            if getattr(d, "name", "") == "initrd"
            else d
            for d in m.descriptors
        ]
        ch.resign("kernel", descriptors=descs)
        code_, out, err = cli(monkeypatch, capfd, *attest, "--log", str(device_boot()))
        assert code_ == 1 and "verdict: modified" in out and "kernel booted unapproved" in out
        with Client(url, anchors=anchors, operator_token=op) as admin:
            verdicts = sorted(a["status"] for a in admin.boot_attestations("dave"))
            assert verdicts == ["modified", "trusted"]
        code_, out, err = cli(monkeypatch, capfd, "boot", "verdicts", *opargs, "--owner", "dave")
        assert code_ == 0 and "modified" in out and "trusted" in out, err
