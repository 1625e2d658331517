"""Interoperability with GmSSL's command line (built from source outside the repository).

Point ``MSTCRYPT_GMSSL`` at the ``gmssl`` binary (its ``../lib`` is added to the library
path), or put ``gmssl`` on PATH. Without it these tests skip with that reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mstcrypt.crypto import sm3, sm4, zuc
from mstcrypt.crypto.random import random_bytes
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.crypto.sm2_kex import KeyExchangeInitiator, KeyExchangeResponder
from mstcrypt.formats.keys import dump_private_key, dump_public_key, load_private_key


def _gmssl() -> str | None:
    path = os.environ.get("MSTCRYPT_GMSSL") or shutil.which("gmssl")
    if path and Path(path).is_file():
        return path
    return None


GMSSL = _gmssl()
pytestmark = pytest.mark.skipif(
    GMSSL is None,
    reason="GmSSL not available: build it from source outside the repository and set "
    "MSTCRYPT_GMSSL=/path/to/bin/gmssl",
)
PASS = "interop-pass"


def gm(*args: str, data: bytes | None = None, check: bool = True) -> bytes:
    assert GMSSL is not None
    env = dict(os.environ)
    lib = Path(GMSSL).resolve().parent.parent / "lib"
    env["LD_LIBRARY_PATH"] = f"{lib}:{env.get('LD_LIBRARY_PATH', '')}"
    p = subprocess.run(
        [GMSSL, *args], input=data, capture_output=True, env=env, check=False, timeout=60
    )
    if check and p.returncode != 0:
        raise AssertionError(f"gmssl {' '.join(args)} failed: {p.stderr.decode()[:300]}")
    return p.stdout


@pytest.fixture
def gm_key(tmp_path: Path) -> tuple[Path, Path]:
    k, p = tmp_path / "gk.pem", tmp_path / "gp.pem"
    gm("sm2keygen", "-pass", PASS, "-out", str(k), "-pubout", str(p))
    return k, p


def test_gmssl_encrypted_key_is_read(gm_key: tuple[Path, Path]) -> None:
    k, p = gm_key
    key = load_private_key(k.read_bytes(), PASS)
    assert dump_public_key(key.public_key()) == p.read_bytes()


def test_our_gmssl_form_key_is_read_by_gmssl(tmp_path: Path) -> None:
    key = SM2PrivateKey.generate()
    kf = tmp_path / "k.pem"
    kf.write_bytes(dump_private_key(key, password=PASS, scheme="gmssl"))
    (tmp_path / "m").write_bytes(b"signed by gmssl with our key file")
    sig = gm("sm2sign", "-key", str(kf), "-pass", PASS, "-in", str(tmp_path / "m"))
    key.public_key().verify(sig, b"signed by gmssl with our key file")


@pytest.mark.parametrize("signer_id", ["1234567812345678", "alice@example.com"])
def test_signatures_both_ways(signer_id: str, tmp_path: Path, gm_key: tuple[Path, Path]) -> None:
    k, p = gm_key
    msg = tmp_path / "m"
    msg.write_bytes(b"interop message " + signer_id.encode())
    # gmssl -> mstcrypt
    sig = gm("sm2sign", "-key", str(k), "-pass", PASS, "-id", signer_id, "-in", str(msg))
    key = load_private_key(k.read_bytes(), PASS)
    key.public_key().verify(sig, msg.read_bytes(), signer_id=signer_id.encode())
    # mstcrypt -> gmssl
    (tmp_path / "s").write_bytes(key.sign(msg.read_bytes(), signer_id=signer_id.encode()))
    out = gm(
        "sm2verify",
        "-pubkey",
        str(p),
        "-id",
        signer_id,
        "-in",
        str(msg),
        "-sig",
        str(tmp_path / "s"),
    )
    assert b"success" in out.lower() or out == b""


def test_encryption_both_ways(tmp_path: Path, gm_key: tuple[Path, Path]) -> None:
    k, p = gm_key
    key = load_private_key(k.read_bytes(), PASS)
    for size in (1, 32, 200):
        pt = random_bytes(size)
        (tmp_path / "pt").write_bytes(pt)
        ct = gm("sm2encrypt", "-pubkey", str(p), "-in", str(tmp_path / "pt"))
        assert key.decrypt(ct) == pt
        (tmp_path / "ct").write_bytes(key.public_key().encrypt(pt))
        assert gm("sm2decrypt", "-key", str(k), "-pass", PASS, "-in", str(tmp_path / "ct")) == pt


@pytest.mark.parametrize("we_initiate", [True, False])
def test_key_exchange_with_confirmation(we_initiate: bool, tmp_path: Path) -> None:
    ours = SM2PrivateKey.generate()
    (tmp_path / "our_pub.pem").write_bytes(dump_public_key(ours.public_key()))
    gk, gp = tmp_path / "g.pem", tmp_path / "gp.pem"
    gm("sm2keygen", "-pass", PASS, "-out", str(gk), "-pubout", str(gp))
    theirs = load_private_key(gk.read_bytes(), PASS).public_key()
    common = ["-pass", PASS, "-exch_pass", PASS, "-bin", "-keylen", "48"]
    if we_initiate:
        a = KeyExchangeInitiator(
            ours, theirs, own_id=b"Alice", peer_id=b"Bob", klen=48, confirm=True
        )
        (tmp_path / "ra").write_bytes(a.ephemeral)
        gm(
            "sm2exch",
            "-stage",
            "respond",
            "-key",
            str(gk),
            "-id",
            "Bob",
            "-peer_pubkey",
            str(tmp_path / "our_pub.pem"),
            "-peer_id",
            "Alice",
            "-in",
            str(tmp_path / "ra"),
            "-exch_keyout",
            str(tmp_path / "rb.pem"),
            "-secret_state_out",
            str(tmp_path / "state"),
            "-out",
            str(tmp_path / "rbsb"),
            *common,
        )
        rbsb = (tmp_path / "rbsb").read_bytes()
        key, s_a = a.finish(rbsb[:65], rbsb[65:])
        (tmp_path / "sa").write_bytes(s_a or b"")
        gm(
            "sm2exch",
            "-stage",
            "finish",
            "-key",
            str(gk),
            "-id",
            "Bob",
            "-peer_pubkey",
            str(tmp_path / "our_pub.pem"),
            "-peer_id",
            "Alice",
            "-exch_key",
            str(tmp_path / "rb.pem"),
            "-secret_state",
            str(tmp_path / "state"),
            "-in",
            str(tmp_path / "sa"),
            "-keyout",
            str(tmp_path / "k"),
            *common,
        )
    else:
        gm(
            "sm2exch",
            "-stage",
            "init",
            "-exch_keyout",
            str(tmp_path / "ra.pem"),
            "-out",
            str(tmp_path / "ra"),
            *common,
        )
        b = KeyExchangeResponder(
            ours, theirs, own_id=b"Bob", peer_id=b"Alice", klen=48, confirm=True
        )
        r_b, s_b = b.respond((tmp_path / "ra").read_bytes())
        (tmp_path / "rbsb").write_bytes(r_b + (s_b or b""))
        gm(
            "sm2exch",
            "-stage",
            "confirm",
            "-key",
            str(gk),
            "-id",
            "Alice",
            "-peer_pubkey",
            str(tmp_path / "our_pub.pem"),
            "-peer_id",
            "Bob",
            "-exch_key",
            str(tmp_path / "ra.pem"),
            "-in",
            str(tmp_path / "rbsb"),
            "-keyout",
            str(tmp_path / "k"),
            "-out",
            str(tmp_path / "sa"),
            *common,
        )
        key = b.confirm((tmp_path / "sa").read_bytes())
    assert (tmp_path / "k").read_bytes() == key


def test_sm3_sm4_zuc_agree(tmp_path: Path) -> None:
    data = random_bytes(1000)
    f = tmp_path / "d"
    f.write_bytes(data)
    assert gm("sm3", "-in", str(f)).decode().split()[0] == sm3.sm3(data).hex()
    key, iv, nonce = random_bytes(16), random_bytes(16), random_bytes(12)
    assert gm(
        "sm4_cbc", "-encrypt", "-pkcs7_padding", "-key", key.hex(), "-iv", iv.hex(), "-in", str(f)
    ) == sm4.cbc_encrypt(key, iv, data)
    assert gm("sm4_ctr", "-encrypt", "-key", key.hex(), "-iv", iv.hex(), "-in", str(f)) == sm4.ctr(
        key, iv, data
    )
    assert gm(
        "sm4_gcm",
        "-encrypt",
        "-key",
        key.hex(),
        "-iv",
        nonce.hex(),
        "-aad_hex",
        "0011",
        "-in",
        str(f),
    ) == sm4.gcm_encrypt(key, nonce, data, b"\x00\x11")
    assert gm(
        "sm4_ccm",
        "-encrypt",
        "-key",
        key.hex(),
        "-iv",
        nonce.hex(),
        "-aad_hex",
        "0011",
        "-in",
        str(f),
    ) == sm4.ccm_encrypt(key, nonce, data, b"\x00\x11")
    assert gm(
        "zuc_128_eea3",
        "-key",
        key.hex(),
        "-count",
        "0x1234",
        "-bearer",
        "5",
        "-direction",
        "1",
        "-in",
        str(f),
    ) == zuc.eea3(key, 0x1234, 5, 1, data, 8000)
