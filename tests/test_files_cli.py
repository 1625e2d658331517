"""``mstcrypt file encrypt|decrypt|inspect|rewrap``: every command and option, exit code 2
on format errors, the KMC directory (--to) and the KMC escrow recovery flow."""

from __future__ import annotations

import base64
import json
import secrets
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer

from mstcrypt.apps import files
from mstcrypt.cli import file_cmd
from mstcrypt.cli._common import run
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.errors import PolicyError
from mstcrypt.formats.keys import dump_public_key
from mstcrypt.kmc.context import NotFoundError
from mstcrypt.module import KeyUsage, SoftToken
from mstcrypt.pki import Issuer, Profile, build_csr, name

KIT = Path(__file__).parent / "filekit"
PIN = "123456"

root = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
root.add_typer(file_cmd.app, name="file")


@root.callback()
def _main() -> None:
    """Test harness: the lead registers file_cmd.app as ``mstcrypt file``."""


def cli(
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    *args: str,
    stdin: bytes | None = None,
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["mstcrypt", "file", *args])
    if stdin is not None:
        import io

        class _In:
            buffer = io.BytesIO(stdin)

        monkeypatch.setattr(sys, "stdin", _In)
    code = run(root)
    out, err = capfd.readouterr()
    return code, out, err


class Env:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.token = tmp / "t.tok"
        tok = SoftToken.init(self.token, PIN, "admin-code-1", iterations=100_000)
        k = SM2PrivateKey.generate()
        self.ca = Issuer.self_signed(name(CN="Root"), k.public_key(), k.sign)
        self.certs: dict[str, Path] = {}
        self.keys: dict[str, Any] = {}
        for n in ("alice", "bob"):
            tok.create_container(n)
            h = tok.generate_key_pair(n, KeyUsage.ENCRYPT, escrowed=False)
            self.keys[n] = h.public_key
            cert = self.ca.issue(
                subject=name(CN=n), public_key=h.public_key, profile=Profile.DEVICE_ENC
            )
            self.certs[n] = tmp / f"{n}.pem"
            self.certs[n].write_bytes(cert.pem)

    def file(self, name: str, content: bytes) -> Path:
        p = self.tmp / name
        p.write_bytes(content)
        return p

    def tok(self, container: str | None = None) -> list[str]:
        args = ["--token", str(self.token), "--pin", PIN]
        return [*args, "--container", container] if container else args


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def test_encrypt_decrypt_default_names(
    env: Env, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    pt = secrets.token_bytes(200_000)
    src = env.file("report.pdf", pt)
    code, _, err = cli(
        monkeypatch,
        capfd,
        "encrypt",
        str(src),
        "--recipient-cert",
        str(env.certs["alice"]),
        "--recipient-cert",
        str(env.certs["bob"]),
    )
    assert code == 0, err
    assert "2 stanza(s)" in err
    enc = env.tmp / "report.pdf.mst"
    assert files.inspect(enc.read_bytes()).stanzas[0].cert_fingerprint is not None
    src.unlink()
    code, _, err = cli(monkeypatch, capfd, "decrypt", str(enc), *env.tok("bob"))
    assert code == 0, err
    assert src.read_bytes() == pt
    # existing output needs --force; without --container every container is tried
    code, _, err = cli(monkeypatch, capfd, "decrypt", str(enc), *env.tok())
    assert code == 2 and "--force" in err
    code, _, err = cli(monkeypatch, capfd, "decrypt", str(enc), *env.tok(), "--force")
    assert code == 0, err
    code, _, err = cli(monkeypatch, capfd, "decrypt", str(src), *env.tok())
    assert code == 2 and "--out" in err


def test_stdin_stdout_and_raw_keys(
    env: Env, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    pub = env.tmp / "alice.pub"
    pub.write_bytes(dump_public_key(env.keys["alice"]))
    code, out, err = cli(
        monkeypatch,
        capfd,
        "encrypt",
        "-",
        "--recipient-key",
        str(pub),
        "--chunk-size",
        "1024",
        stdin=b"from a pipe",
    )
    assert code == 0 and out, err  # the ciphertext went to standard output
    enc = env.tmp / "x.mst"
    code, _, err = cli(
        monkeypatch,
        capfd,
        "encrypt",
        "-",
        "--recipient-key",
        str(pub),
        "-o",
        str(enc),
        stdin=b"from a pipe",
    )
    assert code == 0, err
    code, out, err = cli(monkeypatch, capfd, "decrypt", str(enc), *env.tok("alice"), "-o", "-")
    assert code == 0 and out == "from a pipe"
    code, out, err = cli(
        monkeypatch, capfd, "decrypt", "-", *env.tok("alice"), "-o", "-", stdin=enc.read_bytes()
    )
    assert code == 0 and out == "from a pipe"


def test_in_place_and_ranges(
    env: Env, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    pt = bytes(range(256)) * 1000
    db = env.file("app.db", pt)
    code, _, err = cli(
        monkeypatch,
        capfd,
        "encrypt",
        str(db),
        "--in-place",
        "--recipient-cert",
        str(env.certs["alice"]),
        "--chunk-size",
        "4096",
        "--progress",
    )
    assert code == 0, err
    assert db.read_bytes().startswith(files.MAGIC)
    rng = env.tmp / "r10.bin"
    code, _, err = cli(
        monkeypatch,
        capfd,
        "decrypt",
        str(db),
        *env.tok("alice"),
        "--offset",
        "5000",
        "--length",
        "10",
        "-o",
        str(rng),
    )
    assert code == 0, err
    assert rng.read_bytes() == pt[5000:5010]
    rng = env.tmp / "range.bin"
    code, _, err = cli(
        monkeypatch,
        capfd,
        "decrypt",
        str(db),
        *env.tok("alice"),
        "--offset",
        "255000",
        "-o",
        str(rng),
    )
    assert code == 0 and rng.read_bytes() == pt[255000:]
    code, _, err = cli(monkeypatch, capfd, "decrypt", str(db), *env.tok("alice"), "--in-place")
    assert code == 0, err
    assert db.read_bytes() == pt
    code, _, err = cli(
        monkeypatch,
        capfd,
        "encrypt",
        str(db),
        "--in-place",
        "-o",
        "x",
        "--recipient-cert",
        str(env.certs["alice"]),
    )
    assert code == 2 and "--in-place" in err
    code, _, err = cli(monkeypatch, capfd, "decrypt", "-", *env.tok(), "--offset", "1")
    assert code == 2 and "seekable" in err


def test_inspect(
    env: Env, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    kmc = SM2PrivateKey.generate()
    kpem = env.file("kmc.pub", dump_public_key(kmc.public_key()))
    src = env.file("a.txt", b"hello" * 1000)
    code, _, err = cli(
        monkeypatch,
        capfd,
        "encrypt",
        str(src),
        "--recipient-cert",
        str(env.certs["alice"]),
        "--escrow-key",
        str(kpem),
    )
    assert code == 0, err
    enc = env.tmp / "a.txt.mst"
    code, out, _ = cli(monkeypatch, capfd, "inspect", str(enc), "--json")
    assert code == 0
    d = json.loads(out)
    assert d["plaintext_size"] == 5000 and d["authenticated"] is False
    assert [s["kind"] for s in d["stanzas"]] == ["recipient", "escrow"]
    esc = env.tmp / "escrow.b64"
    code, out, _ = cli(monkeypatch, capfd, "inspect", str(enc), "--escrow-out", str(esc))
    assert code == 0 and "escrow" in out and env.keys["alice"].fingerprint().hex() in out
    wrapped = base64.b64decode(esc.read_text())
    assert kmc.decrypt(wrapped) and len(kmc.decrypt(wrapped)) == 16
    code, out, _ = cli(monkeypatch, capfd, "inspect", "-", stdin=enc.read_bytes())
    assert code == 0 and "stanza 1: escrow" in out
    other = env.file("b.txt", b"b")
    code, _, _ = cli(
        monkeypatch, capfd, "encrypt", str(other), "--recipient-cert", str(env.certs["alice"])
    )
    code, _, err = cli(
        monkeypatch, capfd, "inspect", str(env.tmp / "b.txt.mst"), "--escrow-out", str(esc)
    )
    assert code == 2 and "no escrow stanza" in err


MANIFEST = json.loads((KIT / "manifest.json").read_text())


@pytest.fixture(scope="module")
def kit_token(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("kit") / "k.tok"
    tok = SoftToken.init(path, PIN, "admin-code-1", iterations=100_000)
    tok.create_container("reader")
    key = SM2PrivateKey.from_bytes(bytes.fromhex(MANIFEST["reader"]["private_key"]))
    tok.import_key_pair("reader", key, KeyUsage.ENCRYPT, allow_plaintext_import=True)
    return path


@pytest.mark.parametrize(
    "case",
    [
        "bad_magic",
        "version_2",
        "header_mac_flipped",
        "chunks_swapped",
        "last_chunk_dropped",
        "stanza_for_other_recipient",
        "stanza_c2_tampered",
        "header_truncated_mac",
    ],
)
def test_format_errors_exit_2(
    case: str,
    kit_token: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    entry = next(c for c in MANIFEST["cases"] if c["file"] == f"corpus/{case}")
    out = tmp_path / "out.bin"
    code, _, err = cli(
        monkeypatch,
        capfd,
        "decrypt",
        str(KIT / entry["file"]),
        "--token",
        str(kit_token),
        "--pin",
        PIN,
        "-o",
        str(out),
    )
    assert code == 2
    assert f"[{entry['code']}]" in err
    assert " ".join(entry["message"].split())[:40] in " ".join(err.split())
    assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".mstcrypt-tmp")]
    if entry["code"] in files.errors.FORMAT_CODES:
        code, _, err = cli(monkeypatch, capfd, "inspect", str(KIT / entry["file"]))
        assert code == 2 and entry["code"] in err


def test_rewrap(
    env: Env, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    src = env.file("d.txt", b"shared document" * 100)
    code, _, _ = cli(
        monkeypatch, capfd, "encrypt", str(src), "--recipient-cert", str(env.certs["alice"])
    )
    enc = env.tmp / "d.txt.mst"
    body = enc.read_bytes()[files.inspect(enc.read_bytes()).size :]
    code, _, err = cli(
        monkeypatch,
        capfd,
        "rewrap",
        str(enc),
        *env.tok("alice"),
        "--add-cert",
        str(env.certs["bob"]),
        "--remove",
        env.keys["alice"].fingerprint().hex(),
    )
    assert code == 0, err
    h = files.inspect(enc.read_bytes())
    assert enc.read_bytes()[h.size :] == body
    assert [s.key_id for s in h.stanzas] == [env.keys["bob"].fingerprint()]
    code, _, err = cli(
        monkeypatch,
        capfd,
        "rewrap",
        str(enc),
        *env.tok("alice"),
        "--add-cert",
        str(env.certs["alice"]),
    )
    assert code == 2 and "no-matching-recipient" in err
    copy = env.tmp / "copy.mst"
    code, _, err = cli(
        monkeypatch,
        capfd,
        "rewrap",
        str(enc),
        *env.tok(),
        "-o",
        str(copy),
        "--add-cert",
        str(env.certs["alice"]),
    )
    assert code == 0, err
    assert len(files.inspect(copy.read_bytes()).stanzas) == 2
    code, _, err = cli(monkeypatch, capfd, "rewrap", str(enc), *env.tok(), "-o", str(copy))
    assert code == 2 and "--force" in err


def test_usage_errors(
    env: Env, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    src = env.file("u.txt", b"u")
    code, _, err = cli(monkeypatch, capfd, "encrypt", str(src))
    assert code == 2 and "no recipient" in err
    code, _, err = cli(monkeypatch, capfd, "encrypt", str(src), "--to", "bob")
    assert code == 2 and "--server" in err
    code, _, err = cli(
        monkeypatch,
        capfd,
        "encrypt",
        str(src),
        "--recipient-cert",
        str(env.certs["alice"]),
        "--escrow",
    )
    assert code == 2 and "--server" in err
    code, _, err = cli(
        monkeypatch,
        capfd,
        "encrypt",
        str(src),
        "--recipient-cert",
        str(env.certs["alice"]),
        "--escrow",
        "--escrow-key",
        str(src),
    )
    assert code == 2 and "not both" in err
    code, _, err = cli(
        monkeypatch, capfd, "encrypt", str(src), "--recipient-cert", str(env.tmp / "nope.pem")
    )
    assert code == 2 and "cannot read" in err
    code, _, err = cli(monkeypatch, capfd, "encrypt", str(src), "--recipient-cert", str(src))
    assert code == 2 and "certificate" in err
    code, _, err = cli(
        monkeypatch,
        capfd,
        "encrypt",
        str(src),
        "--recipient-cert",
        str(env.certs["alice"]),
        "--chunk-size",
        "1000",
    )
    assert code == 2 and "power of two" in err
    code, _, err = cli(
        monkeypatch,
        capfd,
        "encrypt",
        str(env.tmp / "missing"),
        "--recipient-cert",
        str(env.certs["alice"]),
    )
    assert code == 2 and "cannot read" in err
    code, _, err = cli(
        monkeypatch, capfd, "decrypt", "x.mst", "--token", str(env.token), "--pin", "999999"
    )
    assert code == 2 and "PIN" in err


def kmc_transport(kmc: Any, *, escrow_pem: bytes | None = None) -> httpx.MockTransport:
    """The public routes file_cmd reaches through the real :class:`Client`, answered by a
    Kmc service object (``escrow_pem`` replaces the escrow certificate a server sends)."""

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/ca/chain.pem":
            return httpx.Response(200, content=b"".join(c.pem for c in kmc.chain()))
        if path.startswith("/crl/") and path.endswith("-delta.crl"):
            return httpx.Response(200, content=kmc.delta_crl(path[5:-10]))
        if path.startswith("/crl/") and path.endswith(".crl"):
            return httpx.Response(200, content=kmc.crl(path[5:-4]))
        if path == "/ca/escrow.pem":
            return httpx.Response(200, content=escrow_pem or kmc.escrow_certificate().pem)
        if path.startswith("/directory/encryption-certificate/"):
            try:
                return httpx.Response(200, content=kmc.encryption_certificate(path[34:]).pem)
            except NotFoundError as exc:
                return httpx.Response(404, json={"error": "NotFoundError", "detail": str(exc)})
        return httpx.Response(404, json={"error": "NotFound", "detail": path})

    return httpx.MockTransport(handle)


def use_kmc(monkeypatch: pytest.MonkeyPatch, kmc: Any, **kw: Any) -> list[str]:
    """Point file_cmd's client at ``kmc``; returns the list of URLs it was asked for."""
    from mstcrypt.client import Client

    asked: list[str] = []

    def client(server: str, anchors: list[Any]) -> Client:
        asked.append(server)
        return Client(server, anchors=anchors, transport=kmc_transport(kmc, **kw))

    monkeypatch.setattr(file_cmd, "_client", client)
    return asked


@pytest.fixture
def kmc(tmp_path: Path) -> Any:
    from mstcrypt.kmc.db import Database
    from mstcrypt.kmc.service import Kmc
    from mstcrypt.module.sscc import SoftKeyStore

    k = Kmc(
        Database(f"sqlite:///{tmp_path / 'kmc.db'}"),
        SoftKeyStore(secrets.token_bytes(32)),
        crl_base_url="http://kmc.test",
    )
    k.create_schema()
    k.init_ca(actor="test")
    yield k
    k.db.dispose()


def _enroll(kmc: Any, token: SoftToken, owner: str) -> Any:
    """Enroll a token container with the KMC (what Client.enroll does over HTTP)."""
    token.create_container(owner)
    h = token.generate_key_pair(owner, KeyUsage.SIGN)
    code, _ = kmc.create_enrollment_code(owner=owner, subject={"CN": owner}, actor="op1")
    csr = build_csr(name(CN=owner), h.public_key, lambda tbs: token.sign(h, tbs))
    e = kmc.enroll(code, csr.der)
    return token.import_enveloped_key(owner, e.enveloped_key)


def test_directory_recipients_and_escrow_recovery(
    env: Env, kmc: Any, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    tok = SoftToken.open(env.token)
    tok.login(PIN)
    dave = _enroll(kmc, tok, "dave")
    asked = use_kmc(monkeypatch, kmc)
    anchor = env.file("root.pem", kmc.chain()[-1].pem)
    src = env.file("plan.txt", b"the plan" * 500)
    code, _, err = cli(
        monkeypatch,
        capfd,
        "encrypt",
        str(src),
        "--to",
        "dave",
        "--server",
        "https://kmc",
        "--anchor",
        str(anchor),
        "--escrow",
    )
    assert code == 0, err
    assert asked and set(asked) == {"https://kmc"}
    enc = env.tmp / "plan.txt.mst"
    h = files.inspect(enc.read_bytes())
    assert h.stanzas[0].key_id == dave.public_key.fingerprint()
    assert h.escrow is not None
    assert h.escrow.key_id == kmc.escrow_certificate().public_key.fingerprint()
    assert h.escrow.key_id == kmc.file_recovery_public_key().fingerprint()
    # without an anchor the server's own root is never trusted: refused, nothing written
    code, _, err = cli(
        monkeypatch,
        capfd,
        "encrypt",
        str(src),
        "--to",
        "dave",
        "--server",
        "https://kmc",
        "-o",
        str(env.tmp / "p0.mst"),
    )
    assert code == 2 and "no trust anchor" in err
    assert not (env.tmp / "p0.mst").exists()
    # a soft token with the root preset serves as the anchor
    tok.add_anchor(kmc.chain()[-1].der)
    code, _, err = cli(
        monkeypatch,
        capfd,
        "encrypt",
        str(src),
        "--to",
        "dave",
        "--server",
        "https://kmc",
        "--anchor",
        str(env.token),
        "-o",
        str(env.tmp / "p2.mst"),
    )
    assert code == 0, err
    # an anchor that is not the platform's root: the directory certificate is refused
    code, _, err = cli(
        monkeypatch,
        capfd,
        "encrypt",
        str(src),
        "--to",
        "dave",
        "--server",
        "https://kmc",
        "--anchor",
        str(env.file("other-root.pem", env.ca.certificate.pem)),
        "-o",
        str(env.tmp / "p4.mst"),
    )
    assert code == 1 and not (env.tmp / "p4.mst").exists()
    # an owner without an encryption certificate
    code, _, err = cli(
        monkeypatch,
        capfd,
        "encrypt",
        str(src),
        "--to",
        "nobody",
        "--server",
        "https://kmc",
        "--anchor",
        str(anchor),
        "-o",
        str(env.tmp / "p3.mst"),
    )
    assert code == 2

    # the device is lost; bob (a new token container) gets the file back via the KMC
    esc = env.tmp / "escrow.b64"
    assert cli(monkeypatch, capfd, "inspect", str(enc), "--escrow-out", str(esc))[0] == 0
    rid = kmc.request_file_recovery(
        base64.b64decode(esc.read_text()), env.keys["bob"], reason="lost phone", actor="op1"
    )
    with pytest.raises(PolicyError, match="dual control"):  # never the requester
        kmc.approve_recovery(rid, actor="op1")
    review = kmc.recovery_result(rid)
    assert review["file_key_ciphertext"] is None and review["requested_by"] == "op1"
    assert review["recipient_fingerprint"] == env.keys["bob"].fingerprint().hex()
    kmc.approve_recovery(rid, actor="op2", recipient_fingerprint=review["recipient_fingerprint"])
    rel = env.tmp / "released.b64"
    rel.write_text(kmc.recovery_result(rid)["file_key_ciphertext"])
    code, _, err = cli(
        monkeypatch, capfd, "rewrap", str(enc), *env.tok("bob"), "--recovered", str(rel)
    )
    assert code == 0, err
    out = env.tmp / "plan.out"
    code, _, err = cli(monkeypatch, capfd, "decrypt", str(enc), *env.tok("bob"), "-o", str(out))
    assert code == 0 and out.read_bytes() == b"the plan" * 500
    # --recovered into --out, with the released key as DER
    rel.write_bytes(base64.b64decode(rel.read_text()))
    copy = env.tmp / "copy.mst"
    code, _, err = cli(
        monkeypatch,
        capfd,
        "rewrap",
        str(env.tmp / "p2.mst"),
        *env.tok("bob"),
        "--recovered",
        str(rel),
        "-o",
        str(copy),
    )
    assert code == 2 and "header-mac-mismatch" in err  # released for another file
    # rewrap can change the escrow stanza through the directory too (anchors: the token's)
    code, _, err = cli(monkeypatch, capfd, "rewrap", str(enc), *env.tok("bob"), "--remove-escrow")
    assert code == 0 and files.inspect(enc.read_bytes()).escrow is None
    code, _, err = cli(
        monkeypatch,
        capfd,
        "rewrap",
        str(enc),
        *env.tok("bob"),
        "--escrow",
        "--server",
        "https://kmc",
        "--add-to",
        "dave",
    )
    assert code == 2 and "already a recipient" in err


def test_escrow_key_comes_only_from_a_certified_escrow_certificate(
    env: Env, kmc: Any, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Finding 6: a server cannot put its own key into files' escrow stanzas. The escrow
    key is the KMC's escrow certificate, validated to the anchor with the escrow policy:
    a bare key, a self-issued certificate, or a genuine platform certificate that is not
    the escrow certificate (a device encryption certificate) are all refused."""
    from mstcrypt.client import Client

    real = file_cmd._client("http://127.0.0.1:9", [])
    assert isinstance(real, Client)
    real.close()
    anchor = env.file("root.pem", kmc.chain()[-1].pem)
    src = env.file("e.txt", b"escrowed")
    tok = SoftToken.open(env.token)
    tok.login(PIN)
    _enroll(kmc, tok, "mallory")
    mallory_enc = kmc.encryption_certificate("mallory").pem  # genuine, but not the escrow
    fake = SM2PrivateKey.generate()
    # a foreign CA's certificate with every escrow attribute, for a key of the attacker's
    forged = env.ca.issue(
        subject=name(CN="mstcrypt key escrow"),
        public_key=fake.public_key(),
        profile=Profile.KMC_ESCROW_ENC,
    ).pem
    bare = dump_public_key(fake.public_key())

    def encrypt(out: str) -> tuple[int, str]:
        args = ["--recipient-cert", str(env.certs["alice"]), "--escrow", "--server"]
        args += ["https://kmc", "--anchor", str(anchor), "-o", str(env.tmp / out)]
        code, _, err = cli(monkeypatch, capfd, "encrypt", str(src), *args)
        return code, err

    expected = [(1, "lacks the KMC escrow policy"), (1, "no trusted or interm"), (2, "no PEM")]
    for i, pem in enumerate((mallory_enc, forged, bare)):
        use_kmc(monkeypatch, kmc, escrow_pem=pem)
        code, err = encrypt(f"bad{i}.mst")
        assert code == expected[i][0] and expected[i][1] in err, err
        assert not (env.tmp / f"bad{i}.mst").exists()
    use_kmc(monkeypatch, kmc)
    code, err = encrypt("e.txt.mst")
    assert code == 0, err
    h = files.inspect((env.tmp / "e.txt.mst").read_bytes())
    assert h.escrow is not None
    assert h.escrow.key_id == kmc.escrow_certificate().public_key.fingerprint()
    # --escrow needs a server; --escrow-key (an explicit, out-of-band key) needs none
    args = ["--recipient-cert", str(env.certs["alice"]), "--escrow", "-o", str(env.tmp / "x.mst")]
    code, _, err = cli(monkeypatch, capfd, "encrypt", str(src), *args)
    assert code == 2 and "--escrow needs --server" in err


@pytest.mark.parametrize("last", [0x09, 0x0A, 0x0D, 0x20, 0x41])
def test_released_key_in_der_is_read_whole(tmp_path, last) -> None:
    """A released key given as DER is read byte for byte: a DER encoding may end in a
    byte that is whitespace in ASCII, and stripping it truncated the key (a flaky
    'not a canonical DER SM2Cipher' about 1 time in 40)."""
    from mstcrypt.cli.file_cmd import _released

    der = bytes([0x30, 0x04, 0x02, 0x02, 0x01, last])
    (tmp_path / "k.der").write_bytes(der)
    assert _released(str(tmp_path / "k.der")) == der
    (tmp_path / "k.b64").write_text(base64.b64encode(der).decode() + "\n")
    assert _released(str(tmp_path / "k.b64")) == der
