"""CMS interoperability with tools this project did not write.

- GmSSL (``MSTCRYPT_GMSSL`` or ``gmssl`` on PATH): ``cmssign/cmsverify/cmsencrypt/
  cmsdecrypt`` both ways. GmSSL 3.x signs e = SM3(DER(ContentInfo)) without Z and writes
  sm2encrypt as 1.2.156.10197.1.301.2, so messages for it use ``form="gmssl"``; its
  messages are read with ``forms=["gmssl"]`` (docs/mail.md, *CMS interop*).
- Tongsuo (``MSTCRYPT_TONGSUO`` or ``tongsuo`` on PATH): ``cms -sign/-verify`` both ways
  and ``cms -decrypt`` of our envelopes, in the PKCS#7-OID profile. Tongsuo 8.5 cannot
  write an SM2 KeyTransRecipientInfo (``cms -encrypt`` fails with "illegal zero content").
- OpenSSL 3 (``openssl`` on PATH): ``cms -decrypt`` of our PKCS#7-profile envelope.

Without a tool its tests skip and say which variable to set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cmskit import kit

from mstcrypt.formats import cms
from mstcrypt.formats.keys import dump_private_key

PASS = "cms-interop"
MSG = b"interop message \xe4\xbd\xa0\xe5\xa5\xbd\r\n" * 50


def _tool(env: str, name: str) -> str | None:
    path = os.environ.get(env) or shutil.which(name)
    return path if path and Path(path).is_file() else None


GMSSL = _tool("MSTCRYPT_GMSSL", "gmssl")
TONGSUO = _tool("MSTCRYPT_TONGSUO", "tongsuo")
OPENSSL = shutil.which("openssl")

needs_gmssl = pytest.mark.skipif(
    GMSSL is None, reason="GmSSL not available: set MSTCRYPT_GMSSL=/path/to/bin/gmssl"
)
needs_tongsuo = pytest.mark.skipif(
    TONGSUO is None, reason="Tongsuo not available: set MSTCRYPT_TONGSUO=/path/to/bin/tongsuo"
)


def run(exe: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ)
    lib = Path(exe).resolve().parent.parent / "lib"
    if lib.is_dir():
        env["LD_LIBRARY_PATH"] = f"{lib}:{env.get('LD_LIBRARY_PATH', '')}"
    p = subprocess.run([exe, *args], capture_output=True, env=env, check=False, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError(f"{exe} {' '.join(args)} failed: {p.stderr.decode()[:400]}")
    return p


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    k = kit()
    out = {}
    for name, party in (("alice", k.alice), ("bob", k.bob), ("carol", k.carol)):
        (tmp_path / f"{name}.crt").write_bytes(party.cert.pem)
        (tmp_path / f"{name}.key").write_bytes(dump_private_key(party.key, password=PASS))
        (tmp_path / f"{name}.plain.key").write_bytes(dump_private_key(party.key))
        out[name] = tmp_path / f"{name}.crt"
        out[f"{name}.key"] = tmp_path / f"{name}.key"
        out[f"{name}.plain.key"] = tmp_path / f"{name}.plain.key"
    (tmp_path / "root.crt").write_bytes(k.root.certificate.pem)
    out["root"] = tmp_path / "root.crt"
    (tmp_path / "msg").write_bytes(MSG)
    out["msg"] = tmp_path / "msg"
    out["dir"] = tmp_path
    return out


# --- GmSSL ------------------------------------------------------------------------


@needs_gmssl
def test_gmssl_signs_we_verify(files: dict[str, Path]) -> None:
    assert GMSSL is not None
    out = files["dir"] / "s.pem"
    run(GMSSL, "cmssign", "-key", str(files["alice.key"]), "-pass", PASS,
        "-cert", str(files["alice"]), "-in", str(files["msg"]), "-out", str(out))  # fmt: skip
    sd = cms.SignedData.from_der(out.read_bytes())
    assert sd.content == MSG and sd.profile is cms.Profile.GMT0010
    signers = sd.verify(forms=["gmssl"])
    assert signers[0].certificate_der == kit().alice.cert.der
    assert signers[0].form is cms.SignatureForm.GMSSL
    with pytest.raises(cms.VerificationError):
        sd.verify()  # not the standard form: refused unless asked for


@needs_gmssl
def test_we_sign_gmssl_verifies(files: dict[str, Path]) -> None:
    assert GMSSL is not None
    k = kit()
    f = files["dir"] / "ours.pem"
    f.write_bytes(cms.pem(cms.sign(MSG, k.alice.cert, k.alice.key, form="gmssl")))
    p = run(GMSSL, "cmsverify", "-in", str(f), "-out", str(files["dir"] / "content"))
    assert b"verify success" in p.stdout + p.stderr
    assert (files["dir"] / "content").read_bytes() == MSG
    # a forged copy is refused by GmSSL too
    der = cms.sign(MSG, k.alice.cert, k.alice.key, form="gmssl")
    forged = der.replace(MSG[:20], b"X" * 20)
    f.write_bytes(cms.pem(forged))
    assert run(GMSSL, "cmsverify", "-in", str(f), check=False).returncode != 0


@needs_gmssl
def test_gmssl_encrypts_we_decrypt(files: dict[str, Path]) -> None:
    assert GMSSL is not None
    k = kit()
    out = files["dir"] / "e.pem"
    run(GMSSL, "cmsencrypt", "-rcptcert", str(files["bob"]), "-rcptcert", str(files["carol"]),
        "-in", str(files["msg"]), "-out", str(out))  # fmt: skip
    ed = cms.EnvelopedData.from_der(out.read_bytes())
    assert {r.algorithm for r in ed.recipients} == {"1.2.156.10197.1.301.2"}
    assert ed.decrypt(k.bob.cert, k.bob.key) == MSG
    assert ed.decrypt(k.carol.cert, k.carol.key) == MSG


@needs_gmssl
@pytest.mark.parametrize("who", ["bob", "carol"])
def test_we_encrypt_gmssl_decrypts(files: dict[str, Path], who: str) -> None:
    assert GMSSL is not None
    k = kit()
    f = files["dir"] / "ours.pem"
    f.write_bytes(cms.pem(cms.encrypt(MSG, [k.bob.cert, k.carol.cert], form="gmssl")))
    out = files["dir"] / "plain"
    run(GMSSL, "cmsdecrypt", "-key", str(files[f"{who}.key"]), "-pass", PASS,
        "-cert", str(files[who]), "-in", str(f), "-out", str(out))  # fmt: skip
    assert out.read_bytes() == MSG


# --- Tongsuo (PKCS#7 OIDs) ----------------------------------------------------------


@needs_tongsuo
@pytest.mark.parametrize("detached", [False, True])
def test_tongsuo_signs_we_verify(files: dict[str, Path], detached: bool) -> None:
    assert TONGSUO is not None
    out = files["dir"] / "t.der"
    run(TONGSUO, "cms", "-sign", "-binary", "-md", "sm3", "-signer", str(files["alice"]),
        "-inkey", str(files["alice.plain.key"]), "-in", str(files["msg"]), "-outform", "DER",
        "-out", str(out), *([] if detached else ["-nodetach"]))  # fmt: skip
    sd = cms.SignedData.from_der(out.read_bytes())
    assert sd.profile is cms.Profile.PKCS7 and sd.detached is detached
    signers = sd.verify(MSG) if detached else sd.verify()
    assert signers[0].form is cms.SignatureForm.STANDARD
    assert signers[0].signing_time is not None
    if detached:
        with pytest.raises(cms.VerificationError, match="messageDigest does not match"):
            sd.verify(MSG + b"!")


@needs_tongsuo
@pytest.mark.parametrize("detached", [False, True])
def test_we_sign_tongsuo_verifies(files: dict[str, Path], detached: bool) -> None:
    assert TONGSUO is not None
    k = kit()
    f = files["dir"] / "ours.der"
    f.write_bytes(cms.sign(MSG, k.alice.cert, k.alice.key, profile="pkcs7", detached=detached))
    args = ["cms", "-verify", "-binary", "-inform", "DER", "-in", str(f),
            "-CAfile", str(files["root"]), "-purpose", "any"]  # fmt: skip
    if detached:
        args += ["-content", str(files["msg"])]
    p = run(TONGSUO, *args)
    assert p.stdout == MSG and b"Verification successful" in p.stderr
    # Tongsuo refuses a forged copy as well
    f.write_bytes(cms.sign(MSG, k.alice.cert, k.alice.key, profile="pkcs7"))
    forged = f.read_bytes().replace(MSG[:20], b"Y" * 20)
    f.write_bytes(forged)
    attached = ["cms", "-verify", "-binary", "-inform", "DER", "-in", str(f),
                "-CAfile", str(files["root"]), "-purpose", "any"]  # fmt: skip
    p = run(TONGSUO, *attached, check=False)
    assert p.returncode != 0 and b"content verify error" in p.stderr, p.stderr


@needs_tongsuo
def test_we_encrypt_tongsuo_decrypts(files: dict[str, Path]) -> None:
    assert TONGSUO is not None
    k = kit()
    f = files["dir"] / "ours.der"
    f.write_bytes(cms.encrypt(MSG, [k.bob.cert, k.carol.cert], profile="pkcs7"))
    for who in ("bob", "carol"):
        p = run(TONGSUO, "cms", "-decrypt", "-binary", "-inform", "DER", "-in", str(f),
                "-inkey", str(files[f"{who}.plain.key"]), "-recip", str(files[who]))  # fmt: skip
        assert p.stdout == MSG


# --- OpenSSL 3 --------------------------------------------------------------------


@pytest.mark.skipif(OPENSSL is None, reason="the openssl command line tool is not on PATH")
def test_we_encrypt_openssl_decrypts(files: dict[str, Path]) -> None:
    assert OPENSSL is not None
    k = kit()
    f = files["dir"] / "ours.der"
    f.write_bytes(cms.encrypt(MSG, [k.bob.cert], profile="pkcs7"))
    args = ["cms", "-decrypt", "-binary", "-inform", "DER", "-in", str(f),
            "-inkey", str(files["bob.plain.key"]), "-recip", str(files["bob"])]  # fmt: skip
    p = run(OPENSSL, *args, check=False)
    if p.returncode != 0 and b"unsupported" in p.stderr.lower():
        pytest.skip(f"this openssl cannot decrypt SM2 key transport: {p.stderr[:200]!r}")
    assert p.returncode == 0, p.stderr
    assert p.stdout == MSG
