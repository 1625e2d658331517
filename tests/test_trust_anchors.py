"""Issue 9, finding 6: trust anchors are preset in the MST-CC and never fetched from the
server they should authenticate.

An impostor platform (its own CA, served like the real one) faces a terminal whose token
holds the real root: over TLCP the handshake fails; over plain HTTP every certificate it
hands out (enrollment, recipients, the key-escrow certificate) fails validation; and a
certificate of the real CA that is not the KMC's escrow certificate is not accepted as
one. Nothing is written to the token or the file system when a check fails.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mstcrypt.cli.platform import running_platform
from mstcrypt.client import Client, token_anchors
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import MstCryptError, PolicyError, VerificationError
from mstcrypt.module import SoftToken
from mstcrypt.pki import Certificate, build_csr, name
from mstcrypt.protocols.tlcp import TLCPError
from mstcrypt.protocols.tlcp.http_client import tlcp_transport
from mstcrypt.server.config import Settings

SRC = Path(__file__).resolve().parents[1] / "src"
PIN, ADMIN = "246810", "admin-code-1"


class Platform:
    def __init__(self, url: str, settings: Settings) -> None:
        self.url, self.settings = url, settings
        self.kmc = settings.kmc()
        self.root = self.kmc.chain()[-1]

    def code(self, owner: str) -> str:
        code, _ = self.kmc.create_enrollment_code(
            owner=owner, subject={"CN": owner}, actor="officer"
        )
        return code

    def enroll_direct(self, owner: str) -> None:
        key = SM2PrivateKey.generate()
        csr = build_csr(name(CN=owner), key.public_key(), key.sign).der
        self.kmc.enroll(self.code(owner), csr)


@pytest.fixture
def platforms(tmp_path: Path) -> Iterator[tuple[Platform, Platform, Platform]]:
    """(real over TLCP, impostor over TLCP, impostor over plain HTTP)."""
    out = []
    with contextlib.ExitStack() as stack:
        for label, tls in (("real", True), ("fake", True), ("fake-http", False)):
            data = tmp_path / label
            settings = Settings.from_env(data, checkpoint_seconds=3600)
            url = stack.enter_context(running_platform(data, settings, tls=tls))
            out.append(Platform(url, settings))
        yield out[0], out[1], out[2]
        for p in out:
            p.kmc.db.dispose()


def anchored_token(path: Path, root: Certificate) -> SoftToken:
    return SoftToken.init(path, PIN, ADMIN, iterations=100_000, anchors=[root.der])


def test_real_platform_works_with_the_preset_root(platforms, tmp_path: Path) -> None:
    real, _, _ = platforms
    tok = anchored_token(tmp_path / "t.tok", real.root)
    tok.login(PIN)
    with Client(real.url, anchors=token_anchors(tok)) as c:
        r = c.enroll(real.code("alice"), tok)
        assert r.chain[-1].der == real.root.der
        escrow = c.escrow_certificate()
        assert escrow.public_key == real.kmc.file_recovery_public_key()
        assert c.recipient_certificate("alice").der == r.encryption_certificate.der


def test_impostor_over_tlcp_fails_the_handshake(platforms, tmp_path: Path) -> None:
    real, fake, _ = platforms
    tok = anchored_token(tmp_path / "t.tok", real.root)
    tok.login(PIN)
    with Client(fake.url, anchors=token_anchors(tok)) as c:
        with pytest.raises(TLCPError):
            c.health()
        with pytest.raises(TLCPError):
            c.enroll(fake.code("alice"), tok)
    assert tok.list_containers() == []


def test_impostor_over_http_hands_out_nothing_the_terminal_accepts(
    platforms, tmp_path: Path
) -> None:
    real, _, fake = platforms
    tok = anchored_token(tmp_path / "t.tok", real.root)
    tok.login(PIN)
    fake.enroll_direct("bob")
    with Client(fake.url, anchors=token_anchors(tok)) as c:
        with pytest.raises(MstCryptError):  # chain does not validate to the preset root
            c.enroll(fake.code("alice"), tok)
        assert tok.list_containers() == []
        with pytest.raises(MstCryptError):
            c.escrow_certificate()
        with pytest.raises(MstCryptError):
            c.recipient_certificate("bob")


def test_no_anchor_no_trust(platforms, tmp_path: Path) -> None:
    real, _, fake_http = platforms
    bare = SoftToken.init(tmp_path / "bare.tok", PIN, ADMIN, iterations=100_000)
    bare.login(PIN)
    with pytest.raises(PolicyError, match="root CA"):
        Client(real.url)  # https needs anchors to authenticate the server
    with Client(fake_http.url) as c, pytest.raises(PolicyError, match="no trust anchor"):
        c.enroll(fake_http.code("alice"), bare)
    assert bare.list_containers() == []


def test_a_device_certificate_is_not_the_escrow_certificate(platforms) -> None:
    """Even under the real CA, only the certificate with the KMC escrow policy is accepted
    as the escrow key: a user's encryption certificate served at /ca/escrow.pem is refused."""
    real, _, _ = platforms
    real.enroll_direct("mallory")
    mallory_enc = real.kmc.encryption_certificate("mallory")
    inner = httpx.Client(
        base_url=real.url,
        transport=tlcp_transport(anchors=[real.root.der], server_name="127.0.0.1"),
    )

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/ca/escrow.pem":
            return httpx.Response(200, content=mallory_enc.pem)
        r = inner.get(request.url.path)
        return httpx.Response(r.status_code, content=r.content, headers=r.headers)

    mock = httpx.MockTransport(handler)
    with (
        Client(real.url, anchors=[real.root], transport=mock) as c,
        pytest.raises(VerificationError, match="escrow policy"),
    ):
        c.escrow_certificate()
    inner.close()


def test_cli_file_escrow_from_an_impostor_is_refused(platforms, tmp_path: Path) -> None:
    real, _, fake = platforms
    tok_path = tmp_path / "anchor.tok"
    anchored_token(tok_path, real.root)
    fake.enroll_direct("bob")
    (tmp_path / "doc.txt").write_bytes(b"report")
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for extra in (["--to", "bob"], ["--recipient-key", str(_pubkey(tmp_path)), "--escrow"]):
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "mstcrypt",
                "file",
                "encrypt",
                str(tmp_path / "doc.txt"),
                "--server",
                fake.url,
                "--anchor",
                str(tok_path),
                *extra,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert r.returncode != 0, r.stdout
        assert not (tmp_path / "doc.txt.mst").exists()


def _pubkey(tmp_path: Path) -> Path:
    from mstcrypt.formats.keys import dump_public_key

    p = tmp_path / "r.pub.pem"
    p.write_bytes(dump_public_key(SM2PrivateKey.generate().public_key()))
    return p
