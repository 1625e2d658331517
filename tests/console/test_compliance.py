"""The compliance report: every Annex A/B row, verdicts from live evidence (a broken audit
chain, missing officers and backups show), rendering (HTML escaped, PDF by Chromium),
the CLI command and the console page."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from console_helpers import log_in
from sqlalchemy import update

from http_helpers import Platform, make_kmc, platform
from mstcrypt.apps.console.compliance import (
    MET,
    NA,
    NOT_MET,
    PARTLY,
    VERDICTS,
    Evidence,
    _row,
    collect,
    render_html,
    write_pdf,
)
from mstcrypt.apps.console.compliance_map import ANNEX_A, ANNEX_B, ROWS, SECTIONS
from mstcrypt.errors import PolicyError
from mstcrypt.kmc.models import AuditRecord
from mstcrypt.kmc.service import Kmc

SRC = Path(__file__).resolve().parents[2] / "src"
CHROMIUM = os.environ.get("MSTCRYPT_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
def kmc(tmp_path: Path) -> Iterator[Kmc]:
    k = make_kmc(f"sqlite:///{tmp_path / 'kmc.db'}")
    yield k
    k.db.dispose()


def test_the_map_is_the_guides_tables() -> None:
    # Table A.1 has 29 rows over levels 1-4, Table B.1 12 (chapters 7, 8 and 9)
    assert len(ANNEX_A) == 29 and len(ANNEX_B) == 12
    levels = [r.group[:3] for r in ANNEX_A]
    assert levels.count("第一级") == 2 and levels.count("第二级") == 5
    assert levels.count("第三级") == 12 and levels.count("第四级") == 10
    assert {r.clause for r in ANNEX_B} >= {"7.2.1 a)", "7.3.1 a)", "7.4.1 g)", "8.1", "9.1-9.4"}
    # every application section of the guide is mapped by some clause
    mapped = {s for r in ROWS for s in r.sections}
    assert mapped == set(SECTIONS)
    assert [r.clause for r in ANNEX_A if r.hardware] == ["9.1.2.2 c) d)", "9.1.10.9"]


def test_row_verdicts() -> None:
    clause = next(r for r in ROWS if r.sections == ("6.4", "7.1", "7.4", "7.5", "7.6"))
    ev = {s: Evidence(s, MET, "ok") for s in SECTIONS}
    assert _row(clause, ev, True).verdict == MET
    ev["7.1"] = Evidence("7.1", NOT_MET, "absent")
    assert _row(clause, ev, True).verdict == PARTLY
    for s in clause.sections:
        ev[s] = Evidence(s, NOT_MET, "absent")
    assert _row(clause, ev, True).verdict == NOT_MET
    for s in clause.sections:
        ev[s] = Evidence(s, NA, "out of scope")
    assert _row(clause, ev, True).verdict == NA
    hw = next(r for r in ROWS if r.hardware and r.sections == ("module", "keys"))
    ev = {s: Evidence(s, MET, "ok") for s in SECTIONS}
    row = _row(hw, ev, False)
    assert row.verdict == PARTLY and "hardware" in row.why
    assert _row(hw, ev, True).verdict == MET


def test_evidence_from_the_deployment(kmc: Kmc) -> None:
    r = collect(kmc, not_applicable=["6.3"])
    assert [x.clause.id for x in r.rows] == [c.id for c in ROWS]
    assert all(x.verdict in VERDICTS and x.why for x in r.rows)
    assert r.sections["6.3"].verdict == NA
    assert all(x.verdict == NA for x in r.rows if x.clause.sections == ("6.3",))
    keys = r.sections["keys"]
    assert keys.verdict == PARTLY
    for problem in ("key-recovery officers", "no active auditor", "no backup"):
        assert problem in keys.why
    assert any("audit chain verified from the genesis: OK" in f for f in keys.facts)
    module = r.sections["module"]
    assert any("SM2-with-SM3" in f for f in module.facts)
    assert any("SoftKeyStore" in f for f in module.facts)
    hw = [x for x in r.rows if x.clause.hardware]
    assert all(x.verdict != MET and "hardware" in x.why for x in hw)
    with pytest.raises(PolicyError):
        collect(kmc, not_applicable=["9.9"])

    # staff the platform and make a backup: key management is met
    kmc.operators.add_static("kro-1", ["key_recovery_officer"])
    kmc.operators.add_static("kro-2", ["key_recovery_officer"])
    kmc.operators.add_static("aud", ["auditor"])
    kmc.backup("backup passphrase 1", actor="t")
    kmc.checkpoint()
    r = collect(kmc)
    assert r.sections["keys"].verdict == MET, r.sections["keys"].why
    row = next(x for x in r.rows if x.clause.id == "B-8.1")
    assert row.verdict == MET

    # a tampered audit record: key management is not met, and says where
    with kmc.db.tx() as s:
        s.execute(update(AuditRecord).where(AuditRecord.seq == 2).values(actor="mallory"))
    r = collect(kmc)
    assert r.sections["keys"].verdict == NOT_MET
    assert "broken at record 2" in r.sections["keys"].why
    assert next(x for x in r.rows if x.clause.id == "B-8.1").verdict == NOT_MET


def test_html_has_every_row_and_escapes(kmc: Kmc) -> None:
    r = collect(kmc)
    r.deployment["CA"] = "<script>alert(1)</script>"
    html = render_html(r)
    for clause in ROWS:
        assert f'data-clause="{clause.id}"' in html
    assert "<script>alert(1)" not in html and "&lt;script&gt;" in html
    assert "<script" not in html  # the report runs no script
    assert html.count("<svg") == 3


@pytest.mark.skipif(
    not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)),
    reason=f"Chromium not found at {CHROMIUM} (apt-get install chromium)",
)
def test_pdf_and_cli(kmc: Kmc, tmp_path: Path) -> None:
    out = tmp_path / "report.pdf"
    write_pdf(render_html(collect(kmc)), out, chromium=CHROMIUM)
    data = out.read_bytes()
    assert data.startswith(b"%PDF-")
    assert len(re.findall(rb"/Type\s*/Page[^s]", data)) >= 5  # a multi-page report


def test_cli_html(tmp_path: Path) -> None:
    from mstcrypt.server.config import Settings

    data = tmp_path / "data"
    settings = Settings.from_env(data)
    k = settings.kmc()
    k.create_schema()
    k.ensure_initialised(actor="t")
    k.db.dispose()
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = tmp_path / "r.html"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "mstcrypt",
            "report",
            "compliance",
            "--data-dir",
            str(data),
            "--out",
            str(out),
            "--not-applicable",
            "6.3",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert "41 clauses" in p.stdout and out.read_text().count("data-clause=") == 41
    from typer.testing import CliRunner

    from mstcrypt.cli import app

    r = CliRunner().invoke(
        app, ["report", "compliance", "--data-dir", str(data), "--out", str(tmp_path / "r.txt")]
    )
    assert r.exit_code == 2 and ".html or .pdf" in r.output


@pytest.fixture
def p(tmp_path: Path) -> Iterator[Platform]:
    kmc = make_kmc(f"sqlite:///{tmp_path / 'p.db'}")
    gen = platform(kmc, tmp_path / "data")
    try:
        yield next(gen)
    finally:
        gen.close()
        kmc.db.dispose()


def test_console_page(p: Platform) -> None:
    b = log_in(p, p.cert_operator("ops-aud", ["auditor"]))
    r = b.get("/console/compliance")
    assert r.status_code == 200 and r.text.count("data-clause=") == len(ROWS)
    assert "<script>" not in r.text and " style=" not in r.text
    ra = log_in(p, p.cert_operator("ops-ra", ["registration_officer"]))
    assert ra.get("/console/compliance").status_code == 403
