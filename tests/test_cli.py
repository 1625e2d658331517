"""The command line: every command, exit codes, and OpenSSL CLI interop through it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mstcrypt.cli import app
from mstcrypt.cli._common import run
from mstcrypt.crypto import sm3, sm4
from mstcrypt.formats.keys import load_private_key, load_public_key

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")


def cli(
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    *args: str,
    stdin: bytes | None = None,
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["mstcrypt", *args])
    if stdin is not None:
        import io

        class _In:
            buffer = io.BytesIO(stdin)

        monkeypatch.setattr(sys, "stdin", _In)
    code = run(app)
    out, err = capfd.readouterr()
    return code, out, err


@pytest.fixture
def keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> tuple[Path, Path]:
    k, p = tmp_path / "k.pem", tmp_path / "p.pem"
    code, _, _ = cli(monkeypatch, capfd, "sm2", "keygen", "--out", str(k), "--pubout", str(p))
    assert code == 0
    return k, p


def test_keygen_files(keys: tuple[Path, Path]) -> None:
    k, p = keys
    key = load_private_key(k.read_bytes())
    assert load_public_key(p.read_bytes()) == key.public_key()
    assert k.stat().st_mode & 0o077 == 0  # private key is owner-only


def test_sign_verify_exit_codes(
    tmp_path: Path,
    keys: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    k, p = keys
    msg, sig = tmp_path / "m", tmp_path / "s"
    msg.write_bytes(b"hello")
    assert (
        cli(
            monkeypatch, capfd, "sm2", "sign", "--key", str(k), "--in", str(msg), "--out", str(sig)
        )[0]
        == 0
    )
    code, out, _ = cli(
        monkeypatch, capfd, "sm2", "verify", "--pubkey", str(p), "--in", str(msg), "--sig", str(sig)
    )
    assert code == 0 and "Verified OK" in out
    # wrong ID -> invalid (1)
    assert (
        cli(
            monkeypatch,
            capfd,
            "sm2",
            "verify",
            "--pubkey",
            str(p),
            "--in",
            str(msg),
            "--sig",
            str(sig),
            "--id",
            "other",
        )[0]
        == 1
    )
    # altered message -> invalid (1)
    msg.write_bytes(b"hellO")
    assert (
        cli(
            monkeypatch,
            capfd,
            "sm2",
            "verify",
            "--pubkey",
            str(p),
            "--in",
            str(msg),
            "--sig",
            str(sig),
        )[0]
        == 1
    )
    # malformed signature -> format error (2)
    sig.write_bytes(b"\x30\x03\x02\x01")
    code, _, err = cli(
        monkeypatch, capfd, "sm2", "verify", "--pubkey", str(p), "--in", str(msg), "--sig", str(sig)
    )
    assert code == 2 and "malformed" in err
    # missing file -> 2, no traceback
    code, _, err = cli(
        monkeypatch,
        capfd,
        "sm2",
        "verify",
        "--pubkey",
        str(tmp_path / "nope"),
        "--in",
        str(msg),
        "--sig",
        str(sig),
    )
    assert code == 2 and "Traceback" not in err


def test_raw_signature_and_custom_id(
    tmp_path: Path,
    keys: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    k, p = keys
    msg, sig = tmp_path / "m", tmp_path / "s"
    msg.write_bytes(b"data")
    cli(
        monkeypatch,
        capfd,
        "sm2",
        "sign",
        "--key",
        str(k),
        "--in",
        str(msg),
        "--out",
        str(sig),
        "--raw",
        "--id",
        "alice@example.com",
    )
    assert len(sig.read_bytes()) == 64
    assert (
        cli(
            monkeypatch,
            capfd,
            "sm2",
            "verify",
            "--pubkey",
            str(p),
            "--in",
            str(msg),
            "--sig",
            str(sig),
            "--raw",
            "--id",
            "alice@example.com",
        )[0]
        == 0
    )


@pytest.mark.parametrize("fmt", ["der", "c1c3c2", "c1c2c3", "c1c3c2-no04", "c1c2c3-no04"])
def test_encrypt_decrypt_formats(
    fmt: str,
    tmp_path: Path,
    keys: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    k, p = keys
    pt, ct, out = tmp_path / "pt", tmp_path / "ct", tmp_path / "out"
    pt.write_bytes(b"attack at dawn")
    assert (
        cli(
            monkeypatch,
            capfd,
            "sm2",
            "encrypt",
            "--pubkey",
            str(p),
            "--in",
            str(pt),
            "--out",
            str(ct),
            "--format",
            fmt,
        )[0]
        == 0
    )
    raw = ct.read_bytes()
    assert raw[0] == (0x30 if fmt == "der" else (4 if "no04" not in fmt else raw[0]))
    assert (
        cli(
            monkeypatch,
            capfd,
            "sm2",
            "decrypt",
            "--key",
            str(k),
            "--in",
            str(ct),
            "--out",
            str(out),
            "--format",
            fmt,
        )[0]
        == 0
    )
    assert out.read_bytes() == b"attack at dawn"


def test_decrypt_wrong_format_is_clear(
    tmp_path: Path,
    keys: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    k, p = keys
    pt, ct = tmp_path / "pt", tmp_path / "ct"
    pt.write_bytes(b"x")
    cli(monkeypatch, capfd, "sm2", "encrypt", "--pubkey", str(p), "--in", str(pt), "--out", str(ct))
    code, _, err = cli(
        monkeypatch, capfd, "sm2", "decrypt", "--key", str(k), "--in", str(ct), "--format", "c1c3c2"
    )
    assert code == 2 and "04" in err
    code, _, err = cli(
        monkeypatch, capfd, "sm2", "decrypt", "--key", str(k), "--in", str(ct), "--format", "bogus"
    )
    assert code == 2 and "expected one of" in err


def test_encrypted_key_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    k = tmp_path / "k.pem"
    assert cli(monkeypatch, capfd, "sm2", "keygen", "--out", str(k), "--pass", "s3cret")[0] == 0
    assert b"ENCRYPTED PRIVATE KEY" in k.read_bytes()
    msg = tmp_path / "m"
    msg.write_bytes(b"m")
    code, _, err = cli(
        monkeypatch, capfd, "sm2", "sign", "--key", str(k), "--in", str(msg), "--pass", "wrong"
    )
    assert code == 2 and "wrong password" in err and "s3cret" not in err
    code, _, err = cli(monkeypatch, capfd, "sm2", "sign", "--key", str(k), "--in", str(msg))
    assert code == 2 and "password is needed" in err


def test_sm3_and_hmac(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    code, out, _ = cli(monkeypatch, capfd, "sm3", "--in", str(f))
    assert code == 0
    assert out.strip() == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    code, out, _ = cli(monkeypatch, capfd, "sm3", "--in", str(f), "--hmac-key", "00112233")
    assert out.strip() == sm3.hmac_sm3(bytes.fromhex("00112233"), b"abc").hex()
    code, _, err = cli(monkeypatch, capfd, "sm3", "--in", str(f), "--hmac-key", "zz")
    assert code == 2 and "hexadecimal" in err


@pytest.mark.parametrize("mode,ivlen", [("cbc", 16), ("ctr", 16), ("gcm", 12)])
def test_sm4_roundtrip(
    mode: str,
    ivlen: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    key, iv = "00" * 16, "11" * ivlen
    pt, ct, out = tmp_path / "pt", tmp_path / "ct", tmp_path / "out"
    pt.write_bytes(b"x" * 1000)
    extra = ["--aad", "abcd"] if mode == "gcm" else []
    assert (
        cli(
            monkeypatch,
            capfd,
            "sm4",
            "encrypt",
            "--mode",
            mode,
            "--key",
            key,
            "--iv",
            iv,
            "--in",
            str(pt),
            "--out",
            str(ct),
            *extra,
        )[0]
        == 0
    )
    if mode == "gcm":
        assert ct.read_bytes() == sm4.gcm_encrypt(
            bytes(16), bytes.fromhex(iv), b"x" * 1000, bytes.fromhex("abcd")
        )
    assert (
        cli(
            monkeypatch,
            capfd,
            "sm4",
            "decrypt",
            "--mode",
            mode,
            "--key",
            key,
            "--iv",
            iv,
            "--in",
            str(ct),
            "--out",
            str(out),
            *extra,
        )[0]
        == 0
    )
    assert out.read_bytes() == b"x" * 1000
    if mode != "ctr":
        data = bytearray(ct.read_bytes())
        data[-1] ^= 1
        ct.write_bytes(bytes(data))
        code, _, err = cli(
            monkeypatch,
            capfd,
            "sm4",
            "decrypt",
            "--mode",
            mode,
            "--key",
            key,
            "--iv",
            iv,
            "--in",
            str(ct),
            "--out",
            str(out),
            *extra,
        )
        assert code == 2 and "Traceback" not in err


def test_sm4_bad_parameters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    code, _, err = cli(
        monkeypatch,
        capfd,
        "sm4",
        "encrypt",
        "--mode",
        "gcm",
        "--key",
        "00" * 16,
        "--iv",
        "00" * 16,
        "--in",
        str(f),
    )
    assert code == 2 and "12 bytes" in err
    code, _, err = cli(
        monkeypatch,
        capfd,
        "sm4",
        "encrypt",
        "--mode",
        "ecb",
        "--key",
        "00" * 16,
        "--iv",
        "00" * 16,
        "--in",
        str(f),
    )
    assert code == 2 and "unknown --mode" in err


def test_token_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    tok = str(tmp_path / "t.tok")
    code, out, _ = cli(
        monkeypatch,
        capfd,
        "token",
        "init",
        "--token",
        tok,
        "--pin",
        "123456",
        "--admin-code",
        "admin-code-1",
        "--iterations",
        "100000",
        "--max-retries",
        "2",
    )
    assert code == 0 and "created" in out
    assert (
        cli(
            monkeypatch,
            capfd,
            "token",
            "keygen",
            "--token",
            tok,
            "--container",
            "alice",
            "--pin",
            "123456",
            "--pubout",
            str(tmp_path / "p.pem"),
        )[0]
        == 0
    )
    code, out, _ = cli(monkeypatch, capfd, "token", "info", "--token", tok, "--pin", "123456")
    assert code == 0 and "alice" in out and "usable" in out
    code, _, err = cli(monkeypatch, capfd, "token", "info", "--token", tok, "--pin", "000000")
    assert code == 2 and "wrong PIN" in err and "000000" not in err
    code, _, err = cli(monkeypatch, capfd, "token", "info", "--token", tok, "--pin", "000000")
    assert code == 2 and "locked" in err
    code, out, _ = cli(monkeypatch, capfd, "token", "info", "--token", tok)
    assert "LOCKED" in out
    assert (
        cli(
            monkeypatch,
            capfd,
            "token",
            "unlock",
            "--token",
            tok,
            "--admin-code",
            "admin-code-1",
            "--new-pin",
            "654321",
        )[0]
        == 0
    )
    assert (
        cli(
            monkeypatch,
            capfd,
            "token",
            "change-pin",
            "--token",
            tok,
            "--old-pin",
            "654321",
            "--new-pin",
            "111111",
        )[0]
        == 0
    )
    code, out, _ = cli(monkeypatch, capfd, "token", "info", "--token", tok, "--pin", "111111")
    assert code == 0 and "alice" in out
    code, _, err = cli(
        monkeypatch,
        capfd,
        "token",
        "init",
        "--token",
        tok,
        "--pin",
        "123456",
        "--admin-code",
        "admin-code-1",
    )
    assert code == 2 and "already exists" in err


def test_usage_error_exit_code(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = cli(monkeypatch, capfd, "sm2", "sign")
    assert code == 2


def test_selftest_and_version_commands(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(monkeypatch, capfd, "selftest")
    assert code == 0 and " 0 failed" in out
    code, out, _ = cli(monkeypatch, capfd, "version")
    assert code == 0 and "OpenSSL 3" in out


def test_speed_command(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    # structure only (tests/test_speed.py covers references and the CPU-time basis)
    code, out, _ = cli(monkeypatch, capfd, "speed", "--seconds", "0.02", "--no-reference")
    assert code == 0
    for name in ("SM2 sign", "SM2 verify", "SM3", "SM4-CTR", "SM4-GCM", "ZUC"):
        assert name in out


def test_entry_point_subprocess(tmp_path: Path) -> None:
    """`python -m mstcrypt` works as a real process and reports errors without a trace."""
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "mstcrypt",
            "sm2",
            "verify",
            "--pubkey",
            str(tmp_path / "missing.pem"),
            "--sig",
            "x",
            "--in",
            "y",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr


@needs_openssl
def test_cli_signature_verified_by_openssl(
    tmp_path: Path,
    keys: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    k, p = keys
    msg, sig = tmp_path / "m", tmp_path / "s"
    msg.write_bytes(b"cli to openssl")
    cli(monkeypatch, capfd, "sm2", "sign", "--key", str(k), "--in", str(msg), "--out", str(sig))
    r = subprocess.run(
        [
            OPENSSL or "openssl",
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            str(p),
            "-rawin",
            "-digest",
            "sm3",
            "-pkeyopt",
            "distid:1234567812345678",
            "-in",
            str(msg),
            "-sigfile",
            str(sig),
        ],
        capture_output=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr


def test_missing_sm2_backend_fails_clearly_at_import(tmp_path: Path) -> None:
    env = {"MSTCRYPT_LIBCRYPTO": str(tmp_path / "libcrypto-missing.so"), "PATH": "/usr/bin"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent / "src")
    p = subprocess.run(
        [sys.executable, "-c", "import mstcrypt.crypto.sm2"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode != 0
    assert "BackendError" in p.stderr and "libcrypto-missing.so" in p.stderr
    assert "OpenSSL 3" in p.stderr
