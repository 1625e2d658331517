"""kill -9 during SoftToken.change_pin(), SoftToken.unlock() and
SoftToken.recover_sealed().

A child process opens a copy of a prepared token and runs the operation; it is killed
with SIGKILL either by its own ``crash_hook`` at the N-th hook call (every position of
the atomic write: each ``write``, ``before-rename``, ``after-rename``) or by the parent
after a random delay. Afterwards the token is in the old state or the new one, never
bricked: a PIN change leaves the old PIN or the new one working with the same keys; an
administrator unlock leaves the token locked (and unlockable) or unlocked with the keys
sealed; a recovery leaves the keys sealed (and recoverable) or recovered. In every case
the old PIN gets the same keys back, and the child's stray temporary files do not
disturb the next open or write."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mstcrypt.crypto.sm2 import SM2PublicKey
from mstcrypt.errors import PinIncorrectError, PinLockedError
from mstcrypt.module import KeyUsage, SoftToken

ITER = 100_000
PIN = "pin-4711-user"
NEW_PIN = "pin-2024-next"
ADMIN = "adm-0815-code"
SRC = Path(__file__).resolve().parents[1] / "src"
CHILD_ENV = {**os.environ, "PYTHONPATH": str(SRC)}
HOOK_REPEATS = 3
RANDOM_RUNS = 30
MAX_DELAY = 0.3

CHILD = r"""
import os, signal, sys
from mstcrypt.module import SoftToken

path, op, secret, new, kill_at, wait = sys.argv[1:7]
kill_at = int(kill_at)
tok = SoftToken.open(path)
stages = []

def hook(stage):
    stages.append(stage)
    if len(stages) == kill_at:
        sys.stdout.write("KILL %s\n" % stage)
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

tok.crash_hook = hook
if wait == "1":
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    sys.stdin.readline()
if op == "change":
    tok.change_pin(secret, new)
elif op == "unlock":
    tok.unlock(secret, new)
else:  # recover: the administrator's PIN is current, the user proves the old one
    tok.login(new)
    tok.recover_sealed(secret)
sys.stdout.write("DONE %s\n" % ",".join(stages))
sys.stdout.flush()
"""


@dataclass(frozen=True)
class Template:
    path: Path
    sign_pub: SM2PublicKey
    enc_pub: SM2PublicKey
    private: tuple[bytes, ...]

    def copy_to(self, directory: Path) -> Path:
        directory.mkdir()
        dst = directory / self.path.name
        shutil.copy(self.path, dst)
        shutil.copy(_pin(self.path), _pin(dst))
        return dst


def _pin(path: Path) -> Path:
    return path.with_name(path.name + ".pin")


def _make_template(
    directory: Path, *, max_retries: int = 6, wrong: int = 0, sealed: bool = False
) -> Template:
    directory.mkdir(parents=True)
    path = directory / "token.mst"
    tok = SoftToken.init(path, PIN, ADMIN, iterations=ITER, max_retries=max_retries)
    tok.create_container("dev")
    hs = tok.generate_key_pair("dev", KeyUsage.SIGN)
    he = tok.generate_key_pair("dev", KeyUsage.ENCRYPT, escrowed=False)
    tok.put_certificate("dev", KeyUsage.SIGN, b"cert")
    private = tuple(k.private_bytes() for k in tok._containers["dev"].keys.values())
    tok.logout()
    for i in range(wrong):
        with pytest.raises((PinIncorrectError, PinLockedError)):
            SoftToken.open(path).login(f"wrong-pin-{i}")
    if sealed:
        SoftToken.open(path).unlock(ADMIN, NEW_PIN)
    return Template(path, hs.public_key, he.public_key, private)


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Template]:
    base = tmp_path_factory.mktemp("templates")
    return {
        "fresh": _make_template(base / "fresh"),
        "locked": _make_template(base / "locked", max_retries=3, wrong=3),
        "sealed": _make_template(base / "sealed", max_retries=3, wrong=3, sealed=True),
    }


# -- running the child --------------------------------------------------------------------


def _argv(path: Path, op: str, kill_at: int, wait: bool) -> list[str]:
    secret = ADMIN if op == "unlock" else PIN
    return [
        sys.executable,
        "-c",
        CHILD,
        str(path),
        op,
        secret,
        NEW_PIN,
        str(kill_at),
        "1" if wait else "0",
    ]


def _run_hooked(path: Path, op: str, kill_at: int) -> str | None:
    """Run the child, killing itself at hook call ``kill_at`` (0: never). Returns the
    stage it died in, or None when it finished."""
    proc = subprocess.run(
        _argv(path, op, kill_at, False),
        env=CHILD_ENV,
        capture_output=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout.decode()
    if kill_at == 0:
        assert proc.returncode == 0, proc.stderr.decode()
        assert out.startswith("DONE ")
        return None
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr.decode())
    assert out.startswith("KILL "), out
    return out.split()[1]


def _hook_stages(templates: dict[str, Template], name: str, op: str, tmp_path: Path) -> list[str]:
    """The hook calls an uninterrupted run makes (one per os.write, then the renames)."""
    path = templates[name].copy_to(tmp_path / "count")
    proc = subprocess.run(
        _argv(path, op, 0, False), env=CHILD_ENV, capture_output=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()
    stages = proc.stdout.decode().split()[1].split(",")
    assert stages[-2:] == ["before-rename", "after-rename"]
    assert set(stages[:-2]) == {"write"}
    return stages


def _run_killed_after(path: Path, op: str, delay: float) -> bool:
    """Start the child, let it reach the operation, SIGKILL it ``delay`` s later.
    Returns True if the kill hit a running process (False: it had finished)."""
    proc = subprocess.Popen(
        _argv(path, op, 0, True),
        env=CHILD_ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        ready = proc.stdout.readline()
        assert ready == b"READY\n", (ready, proc.stderr.read() if proc.stderr else b"")
        proc.stdin.write(b"GO\n")
        proc.stdin.flush()
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode == 0:
        assert out.startswith(b"DONE "), out
        return False
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, err.decode())
    return True


# -- checking the token afterwards ----------------------------------------------------------


def _assert_no_cleartext(directory: Path, template: Template) -> None:
    for f in directory.iterdir():
        data = f.read_bytes()
        for raw in template.private:
            assert raw not in data and raw.hex().encode() not in data, f.name


def _check_token(path: Path, template: Template, old: str, expect: str | None = None) -> str:
    """Open after the crash: exactly one of the two PINs works; the keys are the same;
    stray temporary files do not disturb opening or the next write. Returns "old" or
    "new" (the PIN that works)."""
    directory = path.parent
    tok = SoftToken.open(path)
    works: str | None = None
    try:
        tok.login(NEW_PIN)
        works = "new"
    except PinIncorrectError:
        tok.login(old)  # raises if neither PIN opens the token
        works = "old"
    if expect is not None:
        assert works == expect
    assert tok.info().pin_failures == 0
    assert tok.info().admin_failures <= 1
    other = old if works == "new" else NEW_PIN
    with pytest.raises(PinIncorrectError):
        SoftToken.open(path).login(other)

    assert tok.list_containers() == ["dev"]
    hs = tok.key("dev", KeyUsage.SIGN)
    he = tok.key("dev", KeyUsage.ENCRYPT)
    assert hs.public_key == template.sign_pub
    assert he.public_key == template.enc_pub
    assert tok.get_certificate("dev", KeyUsage.SIGN) == b"cert"
    tok.verify(template.sign_pub, tok.sign(hs, b"after the crash"), b"after the crash")
    assert tok.decrypt(he, template.enc_pub.encrypt(b"still mine")) == b"still mine"
    _assert_no_cleartext(directory, template)

    # the next atomic write and a fresh open ignore whatever the child left behind
    tok.create_container("after")
    again = SoftToken.open(path)
    again.login(NEW_PIN if works == "new" else old)
    assert again.list_containers() == ["after", "dev"]
    assert again.key("dev", KeyUsage.SIGN).public_key == template.sign_pub
    names = {p.name for p in directory.iterdir()}
    assert {path.name, _pin(path).name} <= names
    assert all(n.endswith(".tmp") for n in names - {path.name, _pin(path).name}), names
    return works


# -- change_pin ---------------------------------------------------------------------------


def test_change_pin_killed_at_every_hook(templates: dict[str, Template], tmp_path: Path) -> None:
    stages = _hook_stages(templates, "fresh", "change", tmp_path)
    template = templates["fresh"]
    for n in range(1, len(stages) + 1):
        for rep in range(HOOK_REPEATS):
            path = template.copy_to(tmp_path / f"k{n}-{rep}")
            stage = _run_hooked(path, "change", n)
            assert stage == stages[n - 1]
            expect = "new" if stage == "after-rename" else "old"
            if stage != "after-rename":  # the child's temp file is left behind
                assert list(path.parent.glob(".token.mst.*.tmp"))
            _check_token(path, template, PIN, expect)


def test_change_pin_killed_after_random_delay(
    templates: dict[str, Template], tmp_path: Path
) -> None:
    rng = random.Random(20200337)
    template = templates["fresh"]
    seen = {"old": 0, "new": 0}
    killed = 0
    for i in range(RANDOM_RUNS):
        path = template.copy_to(tmp_path / f"r{i}")
        hit = _run_killed_after(path, "change", rng.uniform(0, MAX_DELAY))
        killed += hit
        works = _check_token(path, template, PIN, None if hit else "new")
        seen[works] += 1
    assert killed > 0
    assert seen["old"] + seen["new"] == RANDOM_RUNS


# -- unlock ---------------------------------------------------------------------------------


def _finish_unlock(path: Path, template: Template) -> str:
    """After an (interrupted) unlock of a locked token: either the new PIN works and the
    keys are sealed, or the token is still locked (the old PIN does not get around the
    lock) and a repeated unlock succeeds. Either way the old PIN then recovers the same
    keys. Returns "new" or "old" (the state the crash left)."""
    tok = SoftToken.open(path)
    try:
        tok.login(NEW_PIN)
        state = "new"
    except PinLockedError:
        with pytest.raises(PinLockedError):
            SoftToken.open(path).login(PIN)
        tok = SoftToken.open(path)
        tok.unlock(ADMIN, NEW_PIN)
        state = "old"
    assert tok.list_containers() == []
    assert [list(s.containers) for s in tok.info().sealed] == [["dev"]]
    _assert_no_cleartext(path.parent, template)
    assert tok.recover_sealed(PIN) == ["dev"]
    _check_token(path, template, PIN, "old")
    return state


# -- recovery of sealed keys ------------------------------------------------------------------


def _finish_recover(path: Path, template: Template) -> str:
    """After an (interrupted) recovery: the old PIN opens the recovered keys, or the
    administrator's PIN still opens the token with the keys sealed and a repeated
    recovery succeeds. Returns "recovered" or "sealed"."""
    tok = SoftToken.open(path)
    try:
        tok.login(PIN)
        state = "recovered"
        assert tok.info().sealed == ()
    except PinIncorrectError:
        tok.login(NEW_PIN)
        state = "sealed"
        assert tok.list_containers() == [] and len(tok.info().sealed) == 1
        assert tok.recover_sealed(PIN) == ["dev"]
    _check_token(path, template, PIN, "old")
    return state


# -- unlock and recovery, killed -----------------------------------------------------------

#: op -> (template, check after the crash, state after the rename, state before it,
#: repeats per hook position, random runs)
_ADMIN_OPS = {
    "unlock": ("locked", _finish_unlock, "new", "old", HOOK_REPEATS, RANDOM_RUNS),
    "recover": ("sealed", _finish_recover, "recovered", "sealed", 1, RANDOM_RUNS // 2),
}


@pytest.mark.parametrize("op", sorted(_ADMIN_OPS))
def test_killed_at_every_hook(op: str, templates: dict[str, Template], tmp_path: Path) -> None:
    name, finish, after, before, repeats, _ = _ADMIN_OPS[op]
    stages = _hook_stages(templates, name, op, tmp_path)
    template = templates[name]
    for n in range(1, len(stages) + 1):
        for rep in range(repeats):
            path = template.copy_to(tmp_path / f"k{n}-{rep}")
            stage = _run_hooked(path, op, n)
            assert stage == stages[n - 1]
            assert finish(path, template) == (after if stage == "after-rename" else before)


@pytest.mark.parametrize("op", sorted(_ADMIN_OPS))
def test_killed_after_random_delay(op: str, templates: dict[str, Template], tmp_path: Path) -> None:
    name, finish, after, _, _, runs = _ADMIN_OPS[op]
    rng = random.Random(f"{op}-3720")
    template = templates[name]
    killed = 0
    for i in range(runs):
        path = template.copy_to(tmp_path / f"r{i}")
        hit = _run_killed_after(path, op, rng.uniform(0, MAX_DELAY))
        killed += hit
        state = finish(path, template)
        if not hit:
            assert state == after
    assert killed > 0
