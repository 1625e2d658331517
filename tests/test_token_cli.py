"""``mstcrypt token``: trust anchors at init and add-anchor, the escrow rule of keygen,
administrator unlock only of a locked token with the keys sealed, recover and
discard-sealed, and what ``token info`` shows."""

from __future__ import annotations

from pathlib import Path

import pytest

from mstcrypt.cli import app
from mstcrypt.cli._common import run
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.crypto.sm3 import sm3
from mstcrypt.module import KeyOrigin, KeyUsage, SoftToken
from mstcrypt.pki import Issuer, Profile, name

PIN, ADMIN, NEW_PIN = "pin-123456", "admin-code-1", "pin-654321"


def cli(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.argv", ["mstcrypt", *args])
    code = run(app)
    out, err = capfd.readouterr()
    return code, out, err


def _root(cn: str) -> Issuer:
    key = SM2PrivateKey.generate()
    return Issuer.self_signed(name(C="CN", O="mstcrypt test", CN=cn), key.public_key(), key.sign)


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, tuple[Path, bytes]]:
    out = {}
    for cn in ("Root A", "Root B", "Root C"):
        issuer = _root(cn)
        path = tmp_path / f"{cn.replace(' ', '_')}.pem"
        path.write_bytes(issuer.certificate.pem)
        out[cn] = (path, issuer.certificate.der)
    leaf = _root("Leaf CA").issue(
        subject=name(CN="device"),
        public_key=SM2PrivateKey.generate().public_key(),
        profile=Profile.DEVICE_SIGN,
    )
    (tmp_path / "leaf.pem").write_bytes(leaf.pem)
    out["leaf"] = (tmp_path / "leaf.pem", leaf.der)
    return out


def _init(monkeypatch, capfd, tok: str, *extra: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    return cli(
        monkeypatch,
        capfd,
        "token",
        "init",
        "--token",
        tok,
        "--pin",
        PIN,
        "--admin-code",
        ADMIN,
        "--iterations",
        "100000",
        "--max-retries",
        "2",
        *extra,
    )


def test_init_with_anchors_and_add_anchor(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    roots: dict[str, tuple[Path, bytes]],
) -> None:
    tok = str(tmp_path / "t.tok")
    (pa, da), (pb, db), (pc, dc) = roots["Root A"], roots["Root B"], roots["Root C"]
    fp_b = sm3(db).hex()
    code, _, err = _init(monkeypatch, capfd, tok, "--anchor", str(roots["leaf"][0]))
    assert code == 2 and "not a CA certificate" in err
    (tmp_path / "junk.pem").write_bytes(
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    code, _, err = _init(monkeypatch, capfd, tok, "--anchor", str(tmp_path / "junk.pem"))
    assert code == 2 and "not a certificate" in err
    code, _, err = _init(monkeypatch, capfd, tok, "--anchor-fingerprint", "abc")
    assert code == 2 and "64 hex" in err
    assert not Path(tok).exists()

    code, out, _ = _init(
        monkeypatch, capfd, tok, "--anchor", str(pa), "--anchor-fingerprint", fp_b.upper()
    )
    assert code == 0 and "warning" not in out
    assert SoftToken.open(tok).anchors() == [da]
    code, out, _ = cli(monkeypatch, capfd, "token", "info", "--token", tok)
    assert code == 0 and "Root A" in out and sm3(da).hex() in out
    assert fp_b in out and "not yet fetched" in out

    # changing anchors needs the PIN
    code, _, err = cli(
        monkeypatch, capfd, "token", "add-anchor", "--token", tok, "--pin", "wrong-pin",
        "--anchor", str(pc), "--replace",
    )  # fmt: skip
    assert code == 2 and "wrong PIN" in err
    assert SoftToken.open(tok).anchors() == [da]
    # another root needs --replace; the pinned one fills its pin
    code, _, err = cli(
        monkeypatch, capfd, "token", "add-anchor", "--token", tok, "--pin", PIN,
        "--anchor", str(pc),
    )  # fmt: skip
    assert code == 2 and "replace" in err
    code, out, _ = cli(
        monkeypatch, capfd, "token", "add-anchor", "--token", tok, "--pin", PIN,
        "--anchor", str(pb),
    )  # fmt: skip
    assert code == 0 and "2 trust anchor(s), 0 pinned" in out
    assert SoftToken.open(tok).anchors() == [da, db]
    code, out, _ = cli(
        monkeypatch, capfd, "token", "add-anchor", "--token", tok, "--pin", PIN,
        "--anchor", str(pc), "--replace",
    )  # fmt: skip
    assert code == 0 and SoftToken.open(tok).anchors() == [dc]
    code, out, _ = cli(monkeypatch, capfd, "token", "info", "--token", tok)
    assert "Root C" in out and "Root A" not in out


def test_init_without_anchor_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _init(monkeypatch, capfd, str(tmp_path / "t.tok"))
    assert code == 0 and "no trust anchor" in out
    code, out, _ = cli(monkeypatch, capfd, "token", "info", "--token", str(tmp_path / "t.tok"))
    assert "none" in out


def test_keygen_enc_refused_unless_unescrowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    tok = str(tmp_path / "t.tok")
    assert _init(monkeypatch, capfd, tok)[0] == 0
    base = ["token", "keygen", "--token", tok, "--container", "alice", "--pin", PIN]
    code, _, err = cli(monkeypatch, capfd, *base, "--usage", "enc")
    assert code == 2 and "KMC" in err and "--unescrowed" in err
    t = SoftToken.open(tok)
    t.login(PIN)
    assert t.list_containers() == []  # refused before anything was written
    code, _, err = cli(monkeypatch, capfd, *base, "--usage", "sign", "--unescrowed")
    assert code == 2 and "encryption keys only" in err
    code, _, err = cli(monkeypatch, capfd, *base, "--usage", "decrypt")
    assert code == 2 and "unknown --usage" in err
    assert (
        cli(monkeypatch, capfd, *base, "--usage", "sign", "--pubout", str(tmp_path / "s"))[0] == 0
    )
    code, _, _ = cli(
        monkeypatch, capfd, *base, "--usage", "enc", "--unescrowed", "--pubout", str(tmp_path / "e")
    )
    assert code == 0
    t = SoftToken.open(tok)
    t.login(PIN)
    prov = t.key_provenance("alice", KeyUsage.ENCRYPT)
    assert (prov.origin, prov.escrowed) == (KeyOrigin.GENERATED, False)
    code, out, _ = cli(monkeypatch, capfd, "token", "info", "--token", tok, "--pin", PIN)
    assert code == 0 and "NOT escrowed" in out
    code, out, _ = cli(monkeypatch, capfd, "token", "info", "--token", tok)
    assert "alice" in out and "enc, sign" in out  # names and usages need no PIN


def test_unlock_recover_discard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    tok = str(tmp_path / "t.tok")
    assert _init(monkeypatch, capfd, tok)[0] == 0
    keygen = ["token", "keygen", "--token", tok, "--container", "alice", "--pubout", "-"]
    code, _, _ = cli(monkeypatch, capfd, *keygen, "--pin", PIN)
    assert code == 0
    unlock = ["token", "unlock", "--token", tok, "--admin-code", ADMIN, "--new-pin", NEW_PIN]
    code, _, err = cli(monkeypatch, capfd, *unlock)
    assert code == 2 and "not locked" in err
    for _ in range(2):
        cli(monkeypatch, capfd, "token", "info", "--token", tok, "--pin", "000000")
    code, out, _ = cli(monkeypatch, capfd, "token", "info", "--token", tok)
    assert "LOCKED" in out
    code, out, _ = cli(monkeypatch, capfd, *unlock)
    assert code == 0 and "sealed" in out
    code, out, _ = cli(monkeypatch, capfd, "token", "info", "--token", tok)
    assert "keys sealed, recovery needed" in out and "alice (sign)" in out
    assert "change it before adding keys" in out
    code, _, err = cli(monkeypatch, capfd, *keygen, "--pin", NEW_PIN)
    assert code == 2 and "administrator" in err
    recover = ["token", "recover", "--token", tok, "--pin", NEW_PIN]
    code, _, err = cli(monkeypatch, capfd, *recover, "--old-pin", ADMIN)
    assert code == 2 and "wrong old PIN" in err and ADMIN not in err
    code, out, _ = cli(monkeypatch, capfd, *recover, "--old-pin", PIN)
    assert code == 0 and "recovered: alice" in out
    t = SoftToken.open(tok)
    t.login(PIN)
    assert t.list_containers() == ["alice"]
    code, out, _ = cli(monkeypatch, capfd, "token", "info", "--token", tok)
    assert "recovery needed" not in out

    # second round: the user lost the old PIN, re-enrolls and discards the sealed keys
    for _ in range(2):
        cli(monkeypatch, capfd, "token", "info", "--token", tok, "--pin", "000000")
    assert cli(monkeypatch, capfd, *unlock)[0] == 0
    code, _, err = cli(
        monkeypatch, capfd, "token", "change-pin", "--token", tok, "--old-pin", NEW_PIN,
        "--new-pin", "users-own-pin",
    )  # fmt: skip
    assert code == 0
    assert cli(monkeypatch, capfd, *keygen, "--pin", "users-own-pin")[0] == 0
    discard = ["token", "discard-sealed", "--token", tok, "--pin", "users-own-pin"]
    code, out, _ = cli(monkeypatch, capfd, *discard, "--yes")
    assert code == 0 and "destroyed 1" in out
    code, out, _ = cli(monkeypatch, capfd, *discard, "--yes")
    assert code == 0 and "no sealed keys" in out
    code, out, _ = cli(
        monkeypatch, capfd, "token", "info", "--token", tok, "--pin", "users-own-pin"
    )
    assert "recovery needed" not in out and "alice" in out
