"""``mstcrypt seal`` end to end against a running platform (over TLCP): a terminal
enrolls its soft token and logs in, generates a two-party seal key, an administrator
makes a seal for it, the terminal stamps a PDF, and ``seal verify`` checks it (text and
``--json``) and reports tampering with exit code 1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mstcrypt.apps.seal.pdf import sample_pdf
from mstcrypt.cli.platform import running_platform
from mstcrypt.client import Client
from mstcrypt.server.config import Settings

SRC = Path(__file__).resolve().parents[2] / "src"


def test_seal_cli_end_to_end(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "MSTCRYPT_PIN": "123456"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mstcrypt", *args],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    settings = Settings.from_env(data, static_operators=True)
    with running_platform(data, settings) as url:
        kmc = settings.kmc()
        ra = kmc.operators.add_static("ra", ["registration_officer"])
        admin = kmc.operators.add_static("seal-admin", ["administrator"])
        root = tmp_path / "root.pem"
        root.write_bytes(kmc.chain()[-1].pem)
        kmc.db.dispose()
        with Client(url, anchors=kmc.chain()[-1:], operator_token=ra) as c:
            code = c.create_enrollment_code("carol", {"CN": "carol"})["code"]
        tok = str(tmp_path / "carol.tok")
        init = ["token", "init", "--token", tok, "--admin-code", "admin-code-1"]
        r = cli(*init, "--iterations", "100000", "--anchor", str(root))
        assert r.returncode == 0, r.stderr
        assert cli("enroll", "--server", url, "--code", code, "--token", tok).returncode == 0
        session = tmp_path / "session"
        r = cli("login", "--server", url, "--token", tok, "--out", str(session))
        assert r.returncode == 0, r.stderr
        env["MSTCRYPT_SESSION"] = f"@{session}"
        r = cli("seal", "keygen", "--server", url, "--token", tok, "--cn", "carol")
        assert r.returncode == 0, r.stderr
        assert "stamper certificate" in r.stdout
        r = cli(
            "seal", "make", "--server", url, "--ca-file", str(root), "--name", "Carol Unit Seal",
            "--stamper", "carol", "--operator-token", admin, "--out", str(tmp_path / "seal.esl"),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        es_id = r.stdout.strip().splitlines()[-1]
        r = cli("seal", "inspect", str(tmp_path / "seal.esl"))
        assert r.returncode == 0 and "Carol Unit Seal" in r.stdout, r.stderr
        doc = tmp_path / "doc.pdf"
        doc.write_bytes(sample_pdf(["Agreement", "Seal here:"]))
        out = tmp_path / "stamped.pdf"
        r = cli(
            "seal", "stamp", str(doc), "--server", url, "--token", tok, "--seal", es_id,
            "--keyword", "Seal here:", "--out", str(out),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        verify = ["seal", "verify", "--ca-file", str(root), "--server", url]
        r = cli(*verify, str(out))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "VALID" in r.stdout and "data_hash" in r.stdout
        r = cli(*verify, "--json", str(out))
        report = json.loads(r.stdout)
        assert report["valid"] is True and report["seals"][0]["es_id"] == es_id
        # tampering: change a byte of the page text inside the signed range
        data_bytes = out.read_bytes()
        i = data_bytes.index(b"Agreement")
        (tmp_path / "bad.pdf").write_bytes(data_bytes[:i] + b"Agreemenu" + data_bytes[i + 9 :])
        r = cli(*verify, "--json", str(tmp_path / "bad.pdf"))
        assert r.returncode == 1
        checks = {c["code"]: c["ok"] for c in json.loads(r.stdout)["seals"][0]["checks"]}
        assert checks["data_hash"] is False
        # offline with neither the issuing CA nor CRLs the certificates cannot be checked
        offline = ["seal", "verify", "--ca-file", str(root), str(out)]
        assert cli(*offline).returncode == 1
