"""Known-answer self test: every standard vector through the public API, plus round
trips with the OpenSSL command line when it is installed.

Used by ``mstcrypt selftest``; returns results instead of printing so other front ends
(the platform's health endpoint) can use it too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from mstcrypt.crypto import sm3, sm4, zuc
from mstcrypt.crypto.curve import P
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.crypto.sm2_kex import KeyExchangeInitiator, KeyExchangeResponder
from mstcrypt.errors import MstCryptError, PinIncorrectError, VerificationError
from mstcrypt.formats import gmt0009
from mstcrypt.formats.envelope import build_enveloped_key, open_enveloped_key
from mstcrypt.formats.keys import (
    dump_private_key,
    dump_public_key,
    load_private_key,
    load_public_key,
)

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclass
class Result:
    group: str
    name: str
    status: str
    detail: str = ""


class _Skip(Exception):
    pass


def load_vectors(name: str) -> Any:
    ref = resources.files("mstcrypt.data").joinpath("vectors", f"{name}.json")
    return json.loads(ref.read_text(encoding="utf-8"))


def _h(s: str) -> bytes:
    return bytes.fromhex(s)


def _expect(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


# --- checks ----------------------------------------------------------------------------


def _sm3_checks() -> Iterator[tuple[str, str, Callable[[], None]]]:
    for v in load_vectors("sm3")["vectors"]:
        msg = v["msg_ascii"].encode() if "msg_ascii" in v else _h(v.get("msg_hex", ""))
        yield (
            "SM3",
            v.get("name", "vector"),
            lambda m=msg, d=v["digest"]: _expect(sm3.sm3(m) == _h(d), "digest mismatch"),
        )


def _sm4_checks() -> Iterator[tuple[str, str, Callable[[], None]]]:
    data = load_vectors("sm4")
    for v in data["block"]:

        def run(v: dict[str, Any] = v) -> None:
            e = sm4.SM4ECB(_h(v["key"]))
            b = _h(v["plaintext"])
            for _ in range(int(v.get("iterations", 1))):
                b = e.encrypt_blocks(b)
            _expect(b == _h(v["ciphertext"]), "ciphertext mismatch")

        yield "SM4", v["name"], run
    for v in data["modes"]:
        mode = v["mode"]

        def run_mode(v: dict[str, Any] = v, mode: str = mode) -> None:
            key, pt, ct = _h(v["key"]), _h(v["plaintext"]), _h(v["ciphertext"])
            if mode == "cbc":
                _expect(sm4.cbc_encrypt(key, _h(v["iv"]), pt, padding=False) == ct, "CBC")
                _expect(sm4.cbc_decrypt(key, _h(v["iv"]), ct, padding=False) == pt, "CBC dec")
            elif mode == "ofb":
                _expect(sm4.ofb(key, _h(v["iv"]), pt) == ct, "OFB")
            elif mode == "cfb":
                _expect(sm4.cfb_encrypt(key, _h(v["iv"]), pt) == ct, "CFB")
                _expect(sm4.cfb_decrypt(key, _h(v["iv"]), ct) == pt, "CFB dec")
            elif mode == "ctr":
                _expect(sm4.ctr(key, _h(v["iv"]), pt) == ct, "CTR")
            elif mode == "gcm":
                nonce, aad, tag = _h(v["iv"]), _h(v.get("aad", "")), _h(v["tag"])
                _expect(sm4.gcm_encrypt(key, nonce, pt, aad) == ct + tag, "GCM")
                _expect(sm4.gcm_decrypt(key, nonce, ct + tag, aad) == pt, "GCM dec")
            elif mode == "ccm":
                nonce, aad, tag = _h(v["iv"]), _h(v.get("aad", "")), _h(v["tag"])
                _expect(sm4.ccm_encrypt(key, nonce, pt, aad) == ct + tag, "CCM")
                _expect(sm4.ccm_decrypt(key, nonce, ct + tag, aad) == pt, "CCM dec")
            else:
                raise _Skip(f"SM4-{mode.upper()} is not offered by the backend")

        yield "SM4", f"{mode.upper()} ({v.get('source', '')})", run_mode


def _recommended(vectors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Vectors on sm2p256v1 (the example-curve ones are checked by the test suite)."""
    return [v for v in vectors if int(v.get("curve", {}).get("p", "0"), 16) == P]


def _sm2_checks() -> Iterator[tuple[str, str, Callable[[], None]]]:
    for v in _recommended(load_vectors("sm2_sign")["vectors"]):

        def run_sign(v: dict[str, Any] = v) -> None:
            key = SM2PrivateKey.from_bytes(_h(v["d"]))
            pub = key.public_key()
            _expect(pub.to_bytes() == b"\x04" + _h(v["xA"]) + _h(v["yA"]), "public key")
            sid = v["id_ascii"].encode()
            _expect(pub.z(sid) == _h(v["ZA"]), "Z")
            msg = v["msg_ascii"].encode()
            _expect(pub.message_digest(msg, sid) == _h(v["e"]), "e")
            pub.verify(_h(v["r"]) + _h(v["s"]), msg, signer_id=sid, encoding="raw")
            pub.verify(key.sign(msg, signer_id=sid), msg, signer_id=sid)

        yield "SM2", "signature (GB/T 32918.5 Annex A)", run_sign
    for v in _recommended(load_vectors("sm2_enc")["vectors"]):

        def run_enc(v: dict[str, Any] = v) -> None:
            key = SM2PrivateKey.from_bytes(_h(v["d"]))
            msg = v["msg_ascii"].encode()
            _expect(key.decrypt(_h(v["der"])) == msg, "DER decrypt")
            raw = _h(v["C1x"]) + _h(v["C1y"])
            raw = b"\x04" + raw + _h(v["C3"]) + _h(v["C2"])
            _expect(gmt0009.cipher_from_raw(raw) == _h(v["der"]), "C1C3C2 -> DER")
            _expect(key.decrypt(key.public_key().encrypt(msg)) == msg, "round trip")

        yield "SM2", "encryption (GB/T 32918.5 Annex C)", run_enc
    for v in load_vectors("sm2_kex")["vectors"]:

        def run_kex(v: dict[str, Any] = v) -> None:
            a = SM2PrivateKey.from_bytes(_h(v["dA"]))
            b = SM2PrivateKey.from_bytes(_h(v["dB"]))
            klen = int(v["klen_bits"]) // 8
            ia = KeyExchangeInitiator(
                a,
                b.public_key(),
                own_id=v["idA_ascii"].encode(),
                peer_id=v["idB_ascii"].encode(),
                klen=klen,
                confirm=True,
                ephemeral=int(v["rA"], 16),
            )
            rb = KeyExchangeResponder(
                b,
                a.public_key(),
                own_id=v["idB_ascii"].encode(),
                peer_id=v["idA_ascii"].encode(),
                klen=klen,
                confirm=True,
                ephemeral=int(v["rB"], 16),
            )
            r_b, s_b = rb.respond(ia.ephemeral)
            _expect(s_b == _h(v["SB"]), "S_B")
            k, s_a = ia.finish(r_b, s_b)
            _expect(k == _h(v["K"]) and s_a == _h(v["SA"]), "K / S_A")
            _expect(rb.confirm(s_a or b"") == k, "responder K")

        yield "SM2", "key exchange (GB/T 32918.5)", run_kex


def _zuc_checks() -> Iterator[tuple[str, str, Callable[[], None]]]:
    data = load_vectors("zuc")
    for v in data["zuc128_keystream"]:

        def run_ks(v: dict[str, Any] = v) -> None:
            z = zuc.ZUC128(_h(v["key"]), _h(v["iv"]))
            words = z.keystream_words(len(v["z"]))
            _expect([f"{w:08x}" for w in words] == [x.lower() for x in v["z"]], "keystream")
            if "z2000" in v:
                z2 = zuc.ZUC128(_h(v["key"]), _h(v["iv"])).keystream_words(2000)
                _expect(f"{z2[-1]:08x}" == v["z2000"].lower(), "2000th word")

        yield "ZUC", f"keystream set {v['test_set']}", run_ks
    for v in data["eea3_128"]:

        def run_eea(v: dict[str, Any] = v) -> None:
            out = zuc.eea3(
                _h(v["key"]),
                int(v["count"], 16),
                v["bearer"],
                v["direction"],
                _h(v["plaintext"]),
                v["length_bits"],
            )
            _expect(out == _h(v["ciphertext"]), "EEA3")

        yield "ZUC", f"128-EEA3 set {v['test_set']}", run_eea
    for v in data["eia3_128"]:

        def run_eia(v: dict[str, Any] = v) -> None:
            mac = zuc.eia3(
                _h(v["key"]),
                int(v["count"], 16),
                v["bearer"],
                v["direction"],
                _h(v["message"]),
                v["length_bits"],
            )
            _expect(mac == _h(v["mac"]), "EIA3")

        yield "ZUC", f"128-EIA3 set {v['test_set']}", run_eia


def _format_checks() -> Iterator[tuple[str, str, Callable[[], None]]]:
    def pkcs8() -> None:
        k = SM2PrivateKey.generate()
        for pw, scheme in ((None, "gmssl"), ("pw-selftest", "gmssl"), ("pw-selftest", "openssl")):
            pem = dump_private_key(k, password=pw, scheme=scheme, iterations=1000)
            _expect(load_private_key(pem, pw) == k, f"PKCS#8 {scheme}")
        _expect(load_public_key(dump_public_key(k.public_key())) == k.public_key(), "SPKI")

    def envelope() -> None:
        term, escrow = SM2PrivateKey.generate(), SM2PrivateKey.generate()
        env = build_enveloped_key(escrow, term.public_key())
        _expect(open_enveloped_key(env, term) == escrow, "SM2EnvelopedKey")

    def token() -> None:
        from mstcrypt.module import KeyUsage, SoftToken

        with tempfile.TemporaryDirectory() as d:
            tok = SoftToken.init(
                Path(d) / "t.tok", "selftest-pin", "selftest-admin", iterations=100_000
            )
            tok.create_container("c")
            h = tok.generate_key_pair("c", KeyUsage.SIGN)
            h.public_key.verify(tok.sign(h, b"m"), b"m")
            t2 = SoftToken.open(Path(d) / "t.tok")
            try:
                t2.login("wrong-pin")
                raise AssertionError("wrong PIN accepted")
            except PinIncorrectError:
                pass
            t2.login("selftest-pin")
            _expect(t2.export_public_key("c") == h.public_key, "reopened key")

    yield "formats", "PKCS#8 / SPKI / encrypted PKCS#8", pkcs8
    yield "formats", "GB/T 35276 SM2EnvelopedKey", envelope
    yield "module", "soft token: PIN, sign, reopen", token


def _openssl_checks() -> Iterator[tuple[str, str, Callable[[], None]]]:
    exe = shutil.which("openssl")

    def need() -> str:
        if exe is None:
            raise _Skip("openssl CLI not found")
        return exe

    def run(*args: str, data: bytes | None = None) -> bytes:
        p = subprocess.run(
            [need(), *args], input=data, capture_output=True, check=False, timeout=60
        )
        if p.returncode != 0:
            raise AssertionError(f"openssl {args[0]} failed: {p.stderr.decode()[:200]}")
        return p.stdout

    def sign_interop() -> None:
        with tempfile.TemporaryDirectory() as d:
            dd = Path(d)
            key = SM2PrivateKey.generate()
            (dd / "k.pem").write_bytes(dump_private_key(key))
            (dd / "p.pem").write_bytes(dump_public_key(key.public_key()))
            (dd / "m").write_bytes(b"mstcrypt selftest message")
            (dd / "s").write_bytes(key.sign(b"mstcrypt selftest message"))
            run(
                "pkeyutl",
                "-verify",
                "-pubin",
                "-inkey",
                str(dd / "p.pem"),
                "-rawin",
                "-digest",
                "sm3",
                "-pkeyopt",
                "distid:1234567812345678",
                "-in",
                str(dd / "m"),
                "-sigfile",
                str(dd / "s"),
            )
            run("genpkey", "-algorithm", "SM2", "-out", str(dd / "ok.pem"))
            osig = run(
                "pkeyutl",
                "-sign",
                "-inkey",
                str(dd / "ok.pem"),
                "-rawin",
                "-digest",
                "sm3",
                "-pkeyopt",
                "distid:1234567812345678",
                "-in",
                str(dd / "m"),
            )
            okey = load_private_key((dd / "ok.pem").read_bytes())
            okey.public_key().verify(osig, b"mstcrypt selftest message")

    def enc_interop() -> None:
        with tempfile.TemporaryDirectory() as d:
            dd = Path(d)
            key = SM2PrivateKey.generate()
            (dd / "k.pem").write_bytes(dump_private_key(key))
            (dd / "p.pem").write_bytes(dump_public_key(key.public_key()))
            ct = run(
                "pkeyutl", "-encrypt", "-pubin", "-inkey", str(dd / "p.pem"), data=b"to mstcrypt"
            )
            _expect(key.decrypt(ct) == b"to mstcrypt", "openssl -> mstcrypt")
            ours = key.public_key().encrypt(b"to openssl")
            pt = run("pkeyutl", "-decrypt", "-inkey", str(dd / "k.pem"), data=ours)
            _expect(pt == b"to openssl", "mstcrypt -> openssl")

    yield "OpenSSL CLI", "SM2 signatures both ways (distid)", sign_interop
    yield "OpenSSL CLI", "SM2 encryption both ways", enc_interop


ALL = (_sm3_checks, _sm4_checks, _sm2_checks, _zuc_checks, _format_checks, _openssl_checks)


def checks() -> list[tuple[str, str, Callable[[], None]]]:
    return [c for gen in ALL for c in gen()]


def run_one(group: str, name: str, fn: Callable[[], None]) -> Result:
    try:
        fn()
    except _Skip as exc:
        return Result(group, name, SKIP, str(exc))
    except (AssertionError, MstCryptError, VerificationError) as exc:
        return Result(group, name, FAIL, f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # a broken check must be reported, not crash the table
        return Result(group, name, FAIL, f"unexpected {type(exc).__name__}: {exc}")
    return Result(group, name, PASS)


def run_all() -> list[Result]:
    return [run_one(*c) for c in checks()]
