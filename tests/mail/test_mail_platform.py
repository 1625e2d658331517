"""Encrypted mail end to end, as the README demo: a real platform (KMC directory, CRLs,
over TLCP), three terminals enrolled into soft tokens, the aiosmtpd server into a
Maildir, and the ``mstcrypt mail`` commands. The server's storage and the terminals'
local stores hold no plaintext; unknown and revoked recipients stop a send; a revoked
signer fails the revocation check."""

from __future__ import annotations

import smtplib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mstcrypt.apps.mail.server import MailServer
from mstcrypt.cli import app
from mstcrypt.cli._common import run as run_cli
from mstcrypt.cli.platform import running_platform
from mstcrypt.client import Client
from mstcrypt.module import KeyUsage, SoftToken
from mstcrypt.pki import Certificate
from mstcrypt.server.config import Settings
from platform_helpers import add_operators, free_port

PIN, ADMIN = "135790", "admin-code-mail"
DOMAIN = "mail.example.cn"
MARKERS = [b"PLATFORM-SUBJECT-MARK", b"PLATFORM-BODY-MARK", b"PLATFORM-FILE-MARK"]


@dataclass
class World:
    url: str
    ops: dict[str, str]
    root_pem: Path
    maildir: Path
    smtp: str
    tokens: dict[str, Path]
    certs: dict[str, Certificate]
    tmp: Path

    def admin(self) -> Client:
        root = Certificate.from_pem(self.root_pem.read_bytes())
        return Client(self.url, anchors=[root], operator_token=self.ops["alice"])


def cli(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["mstcrypt", *args])
    code = run_cli(app)
    out, err = capfd.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("mailworld")
    data = tmp / "platform"
    settings = Settings(
        data_dir=data,
        database_url=f"sqlite:///{data / 'kmc.db'}",
        checkpoint_seconds=3600,
        static_operators=True,
        crl_max_delay=0,
    )
    data.mkdir()
    with running_platform(data, settings) as url:
        kmc = settings.kmc()
        try:
            ops = add_operators(kmc)
            root = kmc.chain()[-1]
        finally:
            kmc.db.dispose()
        root_pem = tmp / "root.pem"
        root_pem.write_bytes(root.pem)
        tokens, certs = {}, {}
        with Client(url, anchors=[root], operator_token=ops["alice"]) as admin:
            for user in ("alice", "bob", "carol"):
                address = f"{user}@{DOMAIN}"
                code = admin.create_enrollment_code(
                    address, {"C": "CN", "O": "Example Unit", "CN": user, "email": address}
                )["code"]
                path = tmp / f"{user}.tok"
                tok = SoftToken.init(path, PIN, ADMIN, iterations=100_000, anchors=[root.der])
                r = admin.enroll(code, tok)
                tokens[user] = path
                certs[user] = r.sign_certificate
        maildir = tmp / "maildir"
        port = free_port()
        with MailServer(maildir, port=port, local_domains=(DOMAIN,)):
            yield World(url, ops, root_pem, maildir, f"127.0.0.1:{port}", tokens, certs, tmp)


def _send(world: World, monkeypatch, capfd, sender: str, *extra: str):  # type: ignore[no-untyped-def]
    return cli(monkeypatch, capfd, "mail", "send", "--token", str(world.tokens[sender]),
               "--pin", PIN, "--server", world.url, "--smtp", world.smtp, *extra)  # fmt: skip


def _all_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_send_to_two_terminals_both_read_it(
    world: World, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    att = world.tmp / "report.bin"
    att.write_bytes(MARKERS[2] * 5000)
    code, out, err = _send(world, monkeypatch, capfd, "alice",
                           "--to", f"bob@{DOMAIN}", "--to", f"carol@{DOMAIN}",
                           "--subject", MARKERS[0].decode(), "--text", MARKERS[1].decode(),
                           "--attach", str(att))  # fmt: skip
    assert code == 0, err
    assert "signed and encrypted" in out
    # the server's storage holds ciphertext only
    stored = _all_files(world.maildir)
    assert {p.parent.parent.name for p in stored} == {f"bob@{DOMAIN}", f"carol@{DOMAIN}"}
    for p in stored:
        data = p.read_bytes()
        assert b"application/pkcs7-mime" in data and b"Subject: ..." in data
        for m in MARKERS:
            assert m not in data
    for user in ("bob", "carol"):
        tok = str(world.tokens[user])
        code, out, err = cli(monkeypatch, capfd, "mail", "list", "--token", tok, "--pin", PIN,
                             "--maildir", str(world.maildir))  # fmt: skip
        assert code == 0, err
        assert "1 new message" in err and MARKERS[0].decode() in out
        mid = out.split()[0]
        save = world.tmp / f"saved-{user}"
        code, out, err = cli(monkeypatch, capfd, "mail", "read", mid, "--token", tok, "--pin",
                             PIN, "--server", world.url, "--save-dir", str(save))  # fmt: skip
        assert code == 0, err + out
        for check in ("envelope", "signature", "certificate", "revocation", "sender", "addressed"):
            assert f"✓ {check}:" in out
        assert f"Subject: {MARKERS[0].decode()}" in out and MARKERS[1].decode() in out
        assert (save / "report.bin").read_bytes() == att.read_bytes()
        # the terminal's local store holds no plaintext either
        for p in _all_files(world.tokens[user].with_suffix(".mail")):
            for m in MARKERS:
                assert m not in p.read_bytes()
    # the sender's copy is in its sent folder and readable
    code, out, _ = cli(monkeypatch, capfd, "mail", "list", "--token", str(world.tokens["alice"]),
                       "--pin", PIN, "--folder", "sent")  # fmt: skip
    assert code == 0 and MARKERS[0].decode() in out


def test_unknown_and_revoked_recipients_stop_the_send(
    world: World, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    before = len(_all_files(world.maildir))
    code, _, err = _send(world, monkeypatch, capfd, "alice", "--to", f"bob@{DOMAIN}",
                         "--to", f"nobody@{DOMAIN}", "--subject", "s", "--text", "t")  # fmt: skip
    assert code == 2
    assert f"recipient nobody@{DOMAIN}: no encryption certificate in the directory" in " ".join(
        err.split()
    )
    assert len(_all_files(world.maildir)) == before


def test_plaintext_is_refused_by_the_server(world: World) -> None:
    host, port = world.smtp.split(":")
    with (
        smtplib.SMTP(host, int(port), timeout=30) as s,
        pytest.raises(smtplib.SMTPDataError) as info,
    ):
        s.sendmail(f"alice@{DOMAIN}", [f"bob@{DOMAIN}"], b"Subject: hi\r\n\r\nplain text\r\n")
    assert info.value.smtp_code == 554
    with (
        smtplib.SMTP(host, int(port), timeout=30) as s,
        pytest.raises(smtplib.SMTPRecipientsRefused),
    ):
        s.sendmail(f"alice@{DOMAIN}", ["someone@elsewhere.example"], b"x")


def test_revoked_signer_and_recipient(
    world: World, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Carol sends to bob, then carol's certificates are revoked: bob's reading fails
    the revocation check, and nobody can send to carol any more."""
    code, _, err = _send(world, monkeypatch, capfd, "carol", "--to", f"bob@{DOMAIN}",
                         "--subject", "before revocation", "--text", "t")  # fmt: skip
    assert code == 0, err
    tok = SoftToken.open(world.tokens["carol"])
    tok.login(PIN)
    der = tok.get_certificate("main", KeyUsage.SIGN)
    assert der is not None
    with world.admin() as a:  # revoking the signing certificate revokes the pair
        a.revoke_certificate(f"{Certificate.from_der(der).serial:x}", "key_compromise")
    bob = str(world.tokens["bob"])
    code, out, err = cli(monkeypatch, capfd, "mail", "list", "--token", bob, "--pin", PIN,
                         "--maildir", str(world.maildir))  # fmt: skip
    assert code == 0, err
    line = next(x for x in out.splitlines() if "before revocation" in x)
    mid = line.split()[0]
    code, out, _ = cli(monkeypatch, capfd, "mail", "read", mid, "--token", bob, "--pin", PIN,
                       "--server", world.url, "--save-dir", str(world.tmp / "x"))  # fmt: skip
    assert code == 1
    assert "✓ signature:" in out and "✗ revocation:" in out and "NOT TRUSTED" in out
    code, _, err = _send(world, monkeypatch, capfd, "alice", "--to", f"carol@{DOMAIN}",
                         "--subject", "s", "--text", "t")  # fmt: skip
    assert code == 2 and f"recipient carol@{DOMAIN}" in " ".join(err.split())
