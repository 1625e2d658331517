"""OCSP interoperability with the OpenSSL 3 CLI and Tongsuo's ``ocsp`` command, against
the platform served over plain HTTP on loopback (OCSP's usual transport; the OpenSSL
CLI cannot speak TLCP) and through request/response files.

What OpenSSL 3.0 can and cannot do with SM2 OCSP (as with CRLs, see
test_pki_openssl.py): it parses our requests and responses, its requests (SHA-1 by
default, ``-sha256``, ``-sm3``, with and without nonce) are answered correctly and its
checks of everything but the signature pass (delegation, CertID, validity, nonce);
but ``openssl ocsp`` has no option to set the SM2 ID for verification and verifies
with the empty ID, so our default-ID signatures fail there ("signature failure") —
the same response re-signed with the empty ID passes in full. The other way round,
a response OpenSSL signs with ``-rsigopt distid:1234567812345678`` verifies in
mstcrypt, and one signed with its empty default ID is refused. Tongsuo uses the
default ID and verifies our responses in full, over HTTP and from files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from asn1crypto import ocsp as aocsp

from mstcrypt.cli.platform import running_platform
from mstcrypt.crypto.sm2 import SM2PrivateKey
from mstcrypt.formats.keys import dump_private_key
from mstcrypt.kmc.service import Kmc
from mstcrypt.pki import Certificate, Profile
from mstcrypt.pki.ocsp import (
    CertId,
    OcspError,
    OcspRequest,
    OcspResponse,
    build_request,
    ocsp_urls,
    verify_response,
)
from mstcrypt.server.config import Settings
from platform_helpers import master_key


def _tool(env: str, name: str) -> str | None:
    path = os.environ.get(env) or shutil.which(name)
    return path if path and Path(path).is_file() else None


TONGSUO = _tool("MSTCRYPT_TONGSUO", "tongsuo")


def run(exe: str, *args: str, cwd: Path) -> tuple[int, str]:
    p = subprocess.run([exe, *args], capture_output=True, check=False, cwd=cwd, timeout=60)
    return p.returncode, (p.stdout + p.stderr).decode(errors="replace")


@dataclass
class Live:
    url: str
    dir: Path
    kmc: Kmc
    leaf: Certificate
    revoked: Certificate

    def ask(self, der: bytes) -> bytes:
        return self.kmc.ocsp.respond(der).der


def _issue(kmc: Kmc, cn: str) -> Certificate:
    key = SM2PrivateKey.generate()
    with kmc.ctx.unit("test") as u:
        cert = kmc.ca.issue(
            u,
            public_key=key.public_key(),
            subject={"C": "CN", "CN": cn},
            profile=Profile.DEVICE_SIGN,
            owner=cn,
            usage="sign",
            key_id=None,
        )
        u.audit("test.issue", cn)
    return cert


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    from mstcrypt.module.sscc import SoftKeyStore

    d = tmp_path_factory.mktemp("ocsp-interop")
    settings = Settings(
        data_dir=d / "data",
        checkpoint_seconds=3600,
        keystore_override=SoftKeyStore(master_key()),
    )
    with running_platform(d / "data", settings, tls=False) as url:
        kmc = settings.kmc()
        leaf, revoked = _issue(kmc, "alice"), _issue(kmc, "bob")
        kmc.revoke_certificate(f"{revoked.serial:x}", reason="key_compromise", actor="test")
        issuing, root = kmc.chain()
        _, responder = kmc.ocsp.responder()
        for fname, data in {
            "issuing.pem": issuing.pem,
            "root.pem": root.pem,
            "chain.pem": issuing.pem + root.pem,
            "leaf.pem": leaf.pem,
            "revoked.pem": revoked.pem,
            "responder.pem": responder.pem,
        }.items():
            (d / fname).write_bytes(data)
        try:
            yield Live(url, d, kmc, leaf, revoked)
        finally:
            kmc.ocsp.dispose()
            kmc.db.dispose()


def test_certificates_name_the_responder(live: Live) -> None:
    assert ocsp_urls(live.leaf) == (f"{live.url}/ocsp",)


def test_openssl_parses_our_response(live: Live, openssl: object) -> None:
    issuing = live.kmc.chain()[0]
    req = build_request([CertId.for_certificate(live.revoked, issuing)], nonce=b"n" * 16)
    (live.dir / "ours.der").write_bytes(live.ask(req))
    (live.dir / "ours_req.der").write_bytes(req)
    rc, out = run("openssl", "ocsp", "-respin", "ours.der", "-resp_text", "-noverify", cwd=live.dir)
    assert rc == 0, out
    serial = f"{live.revoked.serial:X}"
    serial = serial.zfill(len(serial) + len(serial) % 2)  # OpenSSL prints whole bytes
    for text in (
        "OCSP Response Status: successful",
        "Hash Algorithm: sm3",
        f"Serial Number: {serial}",
        "Cert Status: revoked",
        "Revocation Reason: keyCompromise",
        "OCSP Nonce",
        "Signature Algorithm: SM2-with-SM3",
        "OCSP Signing",
        "OCSP No Check",
    ):
        assert text in out, (text, out)
    rc, out = run("openssl", "ocsp", "-reqin", "ours_req.der", "-req_text", cwd=live.dir)
    assert rc == 0 and "Hash Algorithm: sm3" in out, out


@pytest.mark.parametrize("digest", [None, "-sha256", "-sm3"])
def test_openssl_client_against_the_live_responder(
    live: Live, openssl: object, digest: str | None
) -> None:
    """openssl ocsp -url: a request with two certificates and a nonce. Everything but
    the SM2 signature is checked and passes (the nonce included); the signature check
    fails because OpenSSL 3.0 verifies with the empty ID."""
    args = [
        "ocsp",
        "-issuer",
        "issuing.pem",
        *([digest] if digest else []),
        "-cert",
        "leaf.pem",
        "-cert",
        "revoked.pem",
        "-url",
        f"{live.url}/ocsp",
        "-VAfile",
        "responder.pem",
        "-respout",
        f"live{digest or ''}.der",
    ]
    rc, out = run("openssl", *args, "-no_signature_verify", cwd=live.dir)
    assert rc == 0, out
    assert "Response verify OK" in out, out
    assert "leaf.pem: good" in out and "revoked.pem: revoked" in out, out
    assert "Reason: keyCompromise" in out, out
    resp = OcspResponse.from_der((live.dir / f"live{digest or ''}.der").read_bytes())
    alg = {None: "sha1", "-sha256": "sha256", "-sm3": "sm3"}[digest]
    assert {r.cert_id.hash_algorithm for r in resp.responses} == {alg}
    assert resp.nonce is not None
    rc, out = run("openssl", *args, cwd=live.dir)
    version = run("openssl", "version", cwd=live.dir)[1]
    if version.startswith("OpenSSL 3.0."):
        assert "Response Verify Failure" in out and "signature failure" in out, out


def test_openssl_accepts_the_response_resigned_with_the_empty_id(
    live: Live, openssl: object
) -> None:
    """The same tbsResponseData signed with the empty SM2 ID (OpenSSL 3.0's default)
    passes OpenSSL's full verification: structure, delegation and CertID are right."""
    issuing = live.kmc.chain()[0]
    der = live.ask(build_request([CertId.for_certificate(live.leaf, issuing, "sha1")]))
    resp = OcspResponse.from_der(der)
    ident, _ = live.kmc.ocsp.responder()
    basic = aocsp.OCSPResponse.load(der).basic_ocsp_response.copy()
    basic["signature"] = ident.sign(resp.tbs_der, signer_id=b"")
    resigned = aocsp.OCSPResponse(
        {
            "response_status": "successful",
            "response_bytes": {"response_type": "basic_ocsp_response", "response": basic},
        }
    ).dump(force=True)
    (live.dir / "empty_id.der").write_bytes(resigned)
    (live.dir / "default_id.der").write_bytes(der)
    common = ["-issuer", "issuing.pem", "-cert", "leaf.pem", "-VAfile", "responder.pem"]
    rc, out = run("openssl", "ocsp", "-respin", "empty_id.der", *common, "-no_nonce", cwd=live.dir)
    assert rc == 0 and "Response verify OK" in out and "leaf.pem: good" in out, out
    # ... and mstcrypt refuses that one (not the default ID), accepts ours
    with pytest.raises(OcspError) as e:
        verify_response(
            resigned, issuer=issuing, cert_id=CertId.for_certificate(live.leaf, issuing, "sha1")
        )
    assert e.value.reason == "bad_signature"


def test_openssl_requests_from_files_are_answered(live: Live, openssl: object) -> None:
    for extra in ([], ["-no_nonce"], ["-sha256"]):
        rc, out = run(
            "openssl",
            "ocsp",
            "-issuer",
            "issuing.pem",
            *extra,
            "-cert",
            "revoked.pem",
            "-reqout",
            "req.der",
            cwd=live.dir,
        )
        assert rc == 0, out
        req_der = (live.dir / "req.der").read_bytes()
        req = OcspRequest.from_der(req_der)
        assert (req.nonce is None) == ("-no_nonce" in extra)
        resp = live.ask(req_der)
        (live.dir / "resp.der").write_bytes(resp)
        single = verify_response(
            resp, issuer=live.kmc.chain()[0], cert_id=req.cert_ids[0], nonce=req.nonce
        )
        assert single.status == "revoked" and single.reason == "key_compromise"
        rc, out = run(
            "openssl",
            "ocsp",
            "-reqin",
            "req.der",
            "-respin",
            "resp.der",
            "-VAfile",
            "responder.pem",
            "-no_signature_verify",
            cwd=live.dir,
        )
        assert rc == 0 and "Response verify OK" in out, out  # nonce matched


def test_openssl_responses_verify_in_mstcrypt(live: Live, openssl: object, tmp_path: Path) -> None:
    """OpenSSL as the responder (index file, a delegated SM2 responder): signed with
    distid:1234567812345678 it verifies here; with OpenSSL's empty ID it is refused."""
    issuing = live.kmc.chain()[0]
    key = SM2PrivateKey.generate()
    with live.kmc.ctx.unit("test") as u:
        responder = live.kmc.ca.issue(
            u,
            public_key=key.public_key(),
            subject={"CN": "OpenSSL OCSP"},
            profile=Profile.OCSP_SIGNER,
            owner="openssl-ocsp",
            usage="sign",
            key_id=None,
        )
        u.audit("test.issue", "openssl-ocsp")
    (tmp_path / "issuing.pem").write_bytes(issuing.pem)
    (tmp_path / "leaf.pem").write_bytes(live.leaf.pem)
    (tmp_path / "rsigner.pem").write_bytes(responder.pem)
    (tmp_path / "rkey.pem").write_bytes(dump_private_key(key))
    exp = live.leaf.not_after.strftime("%y%m%d%H%M%SZ")
    (tmp_path / "index.txt").write_text(f"V\t{exp}\t\t{live.leaf.serial:X}\tunknown\t/CN=alice\n")
    rc, out = run(
        "openssl",
        "ocsp",
        "-issuer",
        "issuing.pem",
        "-sm3",
        "-cert",
        "leaf.pem",
        "-reqout",
        "req.der",
        cwd=tmp_path,
    )
    assert rc == 0, out
    req = OcspRequest.from_der((tmp_path / "req.der").read_bytes())
    results = {}
    for label, opts in (("distid", ["-rsigopt", "distid:1234567812345678"]), ("empty", [])):
        rc, out = run(
            "openssl",
            "ocsp",
            "-index",
            "index.txt",
            "-CA",
            "issuing.pem",
            "-rsigner",
            "rsigner.pem",
            "-rkey",
            "rkey.pem",
            "-rmd",
            "sm3",
            *opts,
            "-nmin",
            "60",
            "-reqin",
            "req.der",
            "-respout",
            f"{label}.der",
            cwd=tmp_path,
        )
        assert rc == 0, out
        try:
            results[label] = verify_response(
                (tmp_path / f"{label}.der").read_bytes(),
                issuer=issuing,
                cert_id=req.cert_ids[0],
                nonce=req.nonce,
            ).status
        except OcspError as exc:
            results[label] = exc.reason
    assert results == {"distid": "good", "empty": "bad_signature"}


# ---------------------------------------------------------------- Tongsuo ----------------
@pytest.mark.skipif(
    TONGSUO is None, reason="Tongsuo not found (set MSTCRYPT_TONGSUO=/path/to/bin/tongsuo)"
)
@pytest.mark.parametrize("trust", ["VAfile", "CAfile"])
def test_tongsuo_verifies_our_responses(live: Live, trust: str) -> None:
    """Tongsuo verifies SM2 with the default ID: full verification over HTTP, with the
    responder pinned (-VAfile) or validated as delegated by the issuing CA (-CAfile)."""
    assert TONGSUO is not None
    anchor = ["-VAfile", "responder.pem"] if trust == "VAfile" else ["-CAfile", "chain.pem"]
    for digest in ([], ["-sm3"]):
        rc, out = run(
            TONGSUO,
            "ocsp",
            "-issuer",
            "issuing.pem",
            *digest,
            "-cert",
            "leaf.pem",
            "-cert",
            "revoked.pem",
            "-url",
            f"{live.url}/ocsp",
            *anchor,
            cwd=live.dir,
        )
        assert rc == 0, out
        assert "Response verify OK" in out, out
        assert "leaf.pem: good" in out and "revoked.pem: revoked" in out, out
    # without a nonce: the pre-signed response, verified the same way
    rc, out = run(
        TONGSUO,
        "ocsp",
        "-issuer",
        "issuing.pem",
        "-cert",
        "leaf.pem",
        "-no_nonce",
        "-url",
        f"{live.url}/ocsp",
        *anchor,
        cwd=live.dir,
    )
    assert rc == 0 and "Response verify OK" in out and "leaf.pem: good" in out, out
