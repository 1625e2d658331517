"""``mstcrypt seal`` end to end against a running platform (over TLCP): a terminal
enrolls its soft token and logs in (SDK), then through the CLI generates a two-party seal
key, an administrator makes a seal for it, the terminal stamps a PDF, and ``seal verify``
checks it (text and ``--json``) and reports tampering with exit code 1. The commands run
in-process (typer's runner) to keep the test fast."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from mstcrypt.apps.seal.ofd import sample_ofd
from mstcrypt.apps.seal.pdf import sample_pdf
from mstcrypt.cli import app
from mstcrypt.cli.platform import running_platform
from mstcrypt.client import Client
from mstcrypt.module import SoftToken
from mstcrypt.server.config import Settings


def test_seal_cli_end_to_end(tmp_path: Path) -> None:
    data = tmp_path / "data"
    runner = CliRunner()

    def cli(*args: str, **env: str):
        return runner.invoke(app, list(args), env={"MSTCRYPT_PIN": "123456", **env})

    settings = Settings.from_env(data, static_operators=True)
    with running_platform(data, settings) as url:
        kmc = settings.kmc()
        ra = kmc.operators.add_static("ra", ["registration_officer"])
        admin = kmc.operators.add_static("seal-admin", ["administrator"])
        root_cert = kmc.chain()[-1]
        kmc.db.dispose()
        root = tmp_path / "root.pem"
        root.write_bytes(root_cert.pem)
        tok_path = tmp_path / "carol.tok"
        tok = SoftToken.init(tok_path, "123456", "admin-code-1", anchors=[root_cert.der])
        with Client(url, anchors=[root_cert], operator_token=ra) as c:
            c.enroll(c.create_enrollment_code("carol", {"CN": "carol"})["code"], tok)
            session = c.login(tok)["session_token"]
        (tmp_path / "session").write_text(session)
        sess = {"MSTCRYPT_SESSION": f"@{tmp_path / 'session'}"}
        r = cli(
            "seal", "keygen", "--server", url, "--token", str(tok_path), "--cn", "carol", **sess
        )
        assert r.exit_code == 0, r.output
        assert "stamper certificate" in r.output
        r = cli(
            "seal", "make", "--server", url, "--ca-file", str(root), "--name", "Carol Unit Seal",
            "--stamper", "carol", "--operator-token", admin, "--out", str(tmp_path / "seal.esl"),
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        es_id = r.output.strip().splitlines()[-1]
        r = cli("seal", "inspect", str(tmp_path / "seal.esl"))
        assert r.exit_code == 0 and "Carol Unit Seal" in r.output, r.output
        doc = tmp_path / "doc.pdf"
        doc.write_bytes(sample_pdf(["Agreement", "Seal here:"]))
        out = tmp_path / "stamped.pdf"
        r = cli(
            "seal", "stamp", str(doc), "--server", url, "--token", str(tok_path), "--seal", es_id,
            "--keyword", "Seal here:", "--out", str(out), **sess,
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        verify = ["seal", "verify", "--ca-file", str(root), "--server", url]
        r = cli(*verify, str(out))
        assert r.exit_code == 0, r.output
        assert "VALID" in r.output and "data_hash" in r.output
        r = cli(*verify, "--json", str(out))
        report = json.loads(r.output)
        assert report["valid"] is True and report["seals"][0]["es_id"] == es_id
        # tampering: change a byte of the page text inside the signed range
        stamped = out.read_bytes()
        i = stamped.index(b"Agreement")
        (tmp_path / "bad.pdf").write_bytes(stamped[:i] + b"Agreemenu" + stamped[i + 9 :])
        r = cli(*verify, "--json", str(tmp_path / "bad.pdf"))
        assert r.exit_code == 1
        checks = {c["code"]: c["ok"] for c in json.loads(r.output)["seals"][0]["checks"]}
        assert checks["data_hash"] is False
        # the same commands on an OFD document
        (tmp_path / "doc.ofd").write_bytes(sample_ofd(["Agreement", "Seal here:"]))
        r = cli(
            "seal", "stamp", str(tmp_path / "doc.ofd"), "--server", url, "--token",
            str(tok_path), "--seal", es_id, "--at", "120,200", "--out",
            str(tmp_path / "stamped.ofd"), **sess,
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        r = cli(*verify, "--json", str(tmp_path / "stamped.ofd"))
        assert r.exit_code == 0 and json.loads(r.output)["valid"] is True, r.output
        # offline with neither the issuing CA nor CRLs the certificates cannot be checked
        r = cli("seal", "verify", "--ca-file", str(root), "--no-revocation", str(out))
        assert r.exit_code == 1 and "unknown_issuer" in r.output
