"""The SMTP server: ``mstcrypt mail serve`` as a process, Maildir delivery, plaintext
and foreign domains refused, address checks; ``send_file`` dot-stuffing and errors."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mailkit import DOMAIN, mailkit

from mstcrypt.apps import mail
from mstcrypt.apps.mail.errors import MailError
from mstcrypt.apps.mail.mime import InnerMessage
from mstcrypt.apps.mail.server import is_smime_enveloped, mailbox_path
from mstcrypt.errors import PolicyError
from platform_helpers import free_port

SRC = Path(__file__).resolve().parents[2] / "src"


def _message(tmp: Path) -> Path:
    k = mailkit()
    inner = InnerMessage(sender=k.alice.address, to=[k.bob.address], subject="s",
                         text=".leading dot line\n.\n..")  # fmt: skip
    out = io.BytesIO()
    mail.compose(out, k.alice.identity, inner, [k.bob.identity.encryption_certificate])
    p = tmp / "m.eml"
    p.write_bytes(out.getvalue())
    return p


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode() if proc.stderr else "exited")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError("mail serve did not listen")


def test_mail_serve_process_delivers_and_refuses(tmp_path: Path) -> None:
    k = mailkit()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mstcrypt",
            "mail",
            "serve",
            "--maildir",
            str(tmp_path / "md"),
            "--port",
            str(port),
            "--domain",
            DOMAIN,
        ],
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_port(port, proc)
        msg = _message(tmp_path)
        mail.send_file(("127.0.0.1", port), k.alice.address, [k.bob.address], msg)
        entries = mail.list_mailbox(tmp_path / "md", k.bob.address)
        assert len(entries) == 1
        with mail.open_mailbox_entry(tmp_path / "md", k.bob.address, entries[0].key) as f:
            stored = f.read()
        assert stored.replace(b"\r\n", b"\n") == msg.read_bytes().replace(b"\r\n", b"\n")
        with mail.open_mailbox_entry(tmp_path / "md", k.bob.address, entries[0].key) as f:
            r = mail.open_message(f, k.bob.identity, validator=k.validator())
        assert r.text == ".leading dot line\n.\n.."  # dot-stuffing undone by the server
        plain = tmp_path / "plain.eml"
        plain.write_bytes(b"From: a@x\r\nSubject: hello\r\n\r\nplain text\r\n")
        with pytest.raises(MailError, match=r"554 5\.7\.1"):
            mail.send_file(("127.0.0.1", port), k.alice.address, [k.bob.address], plain)
        with pytest.raises(MailError, match=r"550 5\.1\.2"):
            mail.send_file(("127.0.0.1", port), k.alice.address, ["x@elsewhere.org"], msg)
        assert len(mail.list_mailbox(tmp_path / "md", k.bob.address)) == 1
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_address_and_form_checks(tmp_path: Path) -> None:
    assert mailbox_path(tmp_path, "Bob@Example.CN") == tmp_path / "bob@example.cn"
    for bad in ("../etc@x.cn", "a/b@x.cn", ".hidden@x.cn", "no-at-sign", "a@b/../c"):
        with pytest.raises(PolicyError):
            mailbox_path(tmp_path, bad)
    assert is_smime_enveloped(_message(tmp_path).read_bytes())
    assert not is_smime_enveloped(b"Content-Type: text/plain\r\n\r\nhi")
    assert not is_smime_enveloped(b"no header end")


def test_send_file_reports_connection_failure(tmp_path: Path) -> None:
    port = free_port()
    with pytest.raises(MailError, match=f"SMTP to 127.0.0.1:{port} failed"):
        mail.send_file(("127.0.0.1", port), "a@x.cn", ["b@x.cn"], _message(tmp_path))
