"""The interactive chat: its controller driven directly (commands -> ImClient calls,
incoming -> lines), the CLI verbs for rich content, and the real ``mstcrypt im chat``
over a pseudo-terminal against a running IMS."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest
from im_helpers import PIN, World, world

from mstcrypt.apps.im import ImError
from mstcrypt.apps.im.chat import ChatController, safe
from mstcrypt.apps.im.content import Edit, Location, Poll, Reaction, Reply, Text, Vote
from mstcrypt.cli import _common
from mstcrypt.cli import app as cli_app
from mstcrypt.server.ims import running_ims


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("imchat")
    with world(tmp) as wd:
        for name in ("alice", "bob", "carol"):
            wd.enroll(name)
        with wd.admin() as a:
            a.create_group("crew", ["alice", "bob", "carol"])
            a.create_group("pair", ["alice", "bob"])
        (tmp / "root.pem").write_bytes(wd.root.pem)
        kmc = wd.kmc()
        with running_ims(kmc, blob_dir=tmp / "blobs") as url:
            wd.ims = url  # type: ignore[attr-defined]
            yield wd
        kmc.db.dispose()


def chat(w: World, name: str) -> tuple[ChatController, list[str], Any]:
    client = w.im(name, w.ims)  # type: ignore[attr-defined]
    out: list[str] = []
    return ChatController(client, out.append), out, client


def deliver(ctrl: ChatController, client: Any) -> list[Any]:
    got = client.receive_pending()
    for r in got:
        ctrl.incoming(r)
    return got


def test_controller_commands_and_rendering(w: World, tmp_path: Path) -> None:
    a, a_out, alice = chat(w, "alice")
    b, b_out, bob = chat(w, "bob")
    assert a.start() is False  # two groups: the person chooses
    assert any("crew" in line for line in a_out) and "choose one" in a_out[-1]
    assert a.handle("hello before choosing") and "choose a group first" in a_out[-1]
    assert a.handle("/switch crew") and a_out[-1].startswith("== crew (key v1): alice, bob")
    assert b.start("crew")

    a.handle("hello crew")
    assert re.search(r"\[[0-9a-f]{8}\] <alice> hello crew$", a_out[-1])
    hello_id = re.search(r"\[([0-9a-f]{8})\]", a_out[-1]).group(1)  # type: ignore[union-attr]
    a.handle("//slash at the start")
    a.handle(f"/reply {hello_id} replying to myself")
    a.handle(f"/edit {hello_id} hello crew (edited)")
    a.handle(f"/react {hello_id} 👍")
    a.handle('/poll "lunch where?" canteen "noodle bar" home')
    poll_id = re.search(r"\[([0-9a-f]{8})\]", a_out[-1]).group(1)  # type: ignore[union-attr]
    a.handle(f"/vote {poll_id} 1")
    a.handle("/location 39.9042 116.4074 Tiananmen")
    src = tmp_path / "plan.txt"
    src.write_bytes(os.urandom(5000))
    a.handle(f"/file {src} the plan")
    file_id = re.search(r"\[([0-9a-f]{8})\]", a_out[-1]).group(1)  # type: ignore[union-attr]
    a.handle(f"/delete {hello_id}")
    assert not any(line.startswith("!!") for line in a_out[4:]), a_out

    got = deliver(b, bob)
    contents = [r.content for r in got]
    assert contents[0] == Text("hello crew") and contents[1] == Text("/slash at the start")
    assert isinstance(contents[2], Reply) and contents[2].text == "replying to myself"
    assert isinstance(contents[3], Edit) and isinstance(contents[4], Reaction)
    assert isinstance(contents[5], Poll) and contents[5].options == (
        "canteen",
        "noodle bar",
        "home",
    )
    assert isinstance(contents[6], Vote) and contents[6].choice == 1
    assert isinstance(contents[7], Location) and contents[7].label == "Tiananmen"
    text = "\n".join(b_out)
    assert "<alice> ↪ (alice: hello crew) replying to myself" in text
    assert f"[edit of {hello_id}] hello crew (edited)" in text
    assert f"[+👍 on {hello_id}]" in text
    assert "[poll] lunch where?  0) canteen  1) noodle bar  2) home" in text
    assert f"[vote 1 on {poll_id}]" in text
    assert "[location] 39.904200, 116.407400 Tiananmen" in text
    assert "[file] plan.txt (text/plain, 5000 bytes) the plan" in text
    assert f"[deleted {hello_id}]" in text
    # bob saves the file (decrypted, digest checked)
    b.handle(f"/save {file_id} {tmp_path / 'inbox'}")
    assert (tmp_path / "inbox" / "plan.txt").read_bytes() == src.read_bytes(), b_out[-1]

    # an edit of alice's message by bob: sent, but every reader refuses it
    b.handle(f"/edit {hello_id} bob rewrites alice")
    deliver(a, alice)
    assert "!! refused message (not-the-author)" in a_out[-1]

    # usage errors are shown, nothing is sent
    before = len(bob.local_messages("crew"))
    for bad, why in (
        ("/vote zzzz 1", "not a message id"),
        ("/vote 0000 1", "no message"),
        ("/poll only-one-option x", "usage"),
        ('/poll "q" same same', "distinct"),
        ("/location 91 0", "lat"),
        ("/teleport", "unknown command"),
        ('/poll "unclosed', "cannot parse"),
        ("/file /no/such/file", "no file"),
        ("/switch nowhere", "not in a group"),
    ):
        b.handle(bad)
        assert b_out[-1].startswith("!!") and why in b_out[-1], (bad, b_out[-1])
    assert len(bob.local_messages("crew")) == before
    # scrollback from the sealed store when the group is opened again
    b.handle("/switch pair")
    b.handle("/switch crew")
    assert any("[poll] lunch where?" in line for line in b_out[-20:])
    assert b.handle("/quit") is False
    for c in (alice, bob):
        c.close()


def test_members_presence_and_rekey_notice(w: World) -> None:
    a, a_out, alice = chat(w, "alice")
    c, c_out, carol = chat(w, "carol")
    a.start("crew")
    c.start("crew")
    a.handle("/members")
    assert "  alice: offline" in a_out and "  carol: offline" in a_out  # nobody on the WS
    # the group changes: the next send fetches the new key, readers are told
    with w.admin() as adm:
        v = adm.change_group("crew", remove=["bob"])["version"]
    a.handle("after the change")
    assert not a_out[-1].startswith("!!"), a_out[-1]
    deliver(c, carol)
    assert f"-- crew: group key rotated to v{v} (membership changed)" in c_out
    assert c_out[-1].endswith("<alice> after the change")
    # presence frames about others in the current group become lines
    c.frame(
        {"op": "presence", "group": "crew", "member": "alice", "device": "ab" * 16, "online": True}
    )
    assert c_out[-1] == "-- alice is online (device abababab)"
    c.frame({"op": "presence", "group": "pair", "member": "alice", "device": "ab", "online": True})
    assert c_out[-1] == "-- alice is online (device abababab)"  # another group: not shown
    for x in (alice, carol):
        x.close()
    with w.admin() as adm:
        adm.change_group("crew", add=["bob"])


def test_terminal_safety() -> None:
    """Whatever a sender managed to put into a name or a text cannot drive the terminal."""
    s = safe("a\x1b[2Jb\x9b31mc\x07d\r\ne\u202eevil")
    assert "\x1b" not in s and "\x9b" not in s and "\x07" not in s and "\r" not in s
    assert "\u202e" not in s and s.startswith("a�[2Jb�31mc�d")


def run(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["mstcrypt", *args])
    monkeypatch.setenv("COLUMNS", "200")
    code = _common.run(cli_app)
    out, err = capfd.readouterr()
    return code, out + err


def term(w: World, name: str, state: Path | None = None) -> list[str]:
    out = [
        "--server",
        w.url,
        "--ims",
        w.ims,  # type: ignore[attr-defined]
        "--token",
        str(w.tmp / f"{name}.tok"),
        "--pin",
        PIN,
        "--ca-file",
        str(w.tmp / "root.pem"),
    ]
    return [*out, "--state", str(state)] if state else out


def test_cli_verbs(
    w: World, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    st = tmp_path / "alice.im"
    code, out = run(monkeypatch, capfd, "im", "send", "pair", "first", *term(w, "alice", st))
    assert code == 0, out
    mid = re.search(r"\(id ([0-9a-f]{8})\)", out).group(1)  # type: ignore[union-attr]
    steps = [
        ("react", "pair", mid, "🎉"),
        ("edit", "pair", mid, "first (fixed)"),
        ("poll", "pair", "tea or coffee?", "tea", "coffee"),
        ("location", "pair", "31.2304", "121.4737", "--label", "Shanghai"),
        ("delete", "pair", mid),
    ]
    for step in steps:
        code, out = run(monkeypatch, capfd, "im", *step, *term(w, "alice", st))
        assert code == 0 and "sent to pair" in out, (step, out)
    poll_id = None
    code, out = run(monkeypatch, capfd, "im", "history", "pair", *term(w, "bob", tmp_path / "b"))
    assert code == 0, out
    assert f"[edit of {mid}] first (fixed)" in out and f"+🎉 on {mid}" in out
    assert "[poll] tea or coffee?  0) tea  1) coffee" in out
    assert "[location] 31.230400, 121.473700 Shanghai" in out and f"[deleted {mid}]" in out
    poll_id = re.search(r"\[([0-9a-f]{8})\] <alice> \(v\d+\) \[poll\]", out).group(1)  # type: ignore[union-attr]
    # bob votes on a poll his store never saw: the prefix is found in the server's history
    code, out = run(
        monkeypatch, capfd, "im", "vote", "pair", poll_id, "1", *term(w, "bob", tmp_path / "b2")
    )
    assert code == 0, out
    code, out = run(
        monkeypatch, capfd, "im", "vote", "pair", "ffff", "1", *term(w, "bob", tmp_path / "b2")
    )
    assert code == 2 and "no message" in out
    code, out = run(monkeypatch, capfd, "im", "prune", *term(w, "alice", st))
    assert code == 0 and "store compacted" in out


def _read_until(fd: int, buf: bytearray, pattern: str, timeout: float = 30) -> str:
    ansi = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[=>]|\r")
    deadline = time.monotonic() + timeout
    while True:
        text = ansi.sub(b"", bytes(buf)).decode("utf-8", "replace")
        if re.search(pattern, text):
            return text
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{pattern!r} not seen in:\n{text[-3000:]}")
        r, _, _ = select.select([fd], [], [], min(left, 0.5))
        if r:
            with contextlib.suppress(OSError):
                buf += os.read(fd, 65536)


def test_chat_over_a_pseudo_terminal(w: World, tmp_path: Path) -> None:
    """The real ``mstcrypt im chat`` in a pty: type a message, see a live one arrive while
    the prompt waits, ask for the members, quit."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSTCRYPT_")}
    env.update(
        PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"),
        TERM="xterm",
        PROMPT_TOOLKIT_NO_CPR="1",
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mstcrypt",
            "im",
            "chat",
            "--group",
            "pair",
            *term(w, "alice", tmp_path / "alice-chat.im"),
        ],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    buf = bytearray()
    bob = w.im("bob", w.ims, state=False)  # type: ignore[attr-defined]
    try:
        _read_until(master, buf, r"== pair \(key v\d+\): alice, bob")
        _read_until(master, buf, r"pair>")
        os.write(master, "hello from the terminal 你好\r".encode())
        _read_until(master, buf, r"<alice> hello from the terminal 你好")
        got = bob.receive_pending()
        assert [r.content for r in got if not isinstance(r, ImError)][-1] == Text(
            "hello from the terminal 你好"
        )
        # a live message arrives while the prompt waits for input
        time.sleep(0.5)
        bob.send_text("pair", "hi alice, live")
        text = _read_until(master, buf, r"<bob> hi alice, live")
        # her own message came back over the WebSocket too: shown (and stored) once
        assert text.count("<alice> hello from the terminal") == 1, text
        os.write(master, b"/members\r")
        _read_until(master, buf, r"alice: online \(1 device\)")
        os.write(master, b"/quit\r")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        os.close(master)
        bob.close()
