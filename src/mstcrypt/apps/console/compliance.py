"""The cryptographic-compliance report: for every clause the guide maps in Annexes A and
B (:mod:`.compliance_map`), the evidence the live deployment gives and a verdict.

Evidence is gathered per guide section, from the store and the services themselves,
never from configuration files alone: algorithms and key lengths of the certificates in
the store, their profiles, where server keys live (the SS-CC type), dual control
(approvals required, officers holding the role, the auditor apart), the audit chain
verified from its genesis to the head and its newest signed checkpoint, CRL freshness,
the TLCP suites the platform's endpoint offers and its certificate pair, the login
server's certificate and logins, the key-escrow certificate, key rotation ages, backups,
and the known-answer self-tests run now.

Verdicts: ``met``, ``partly``, ``not met``, ``not applicable`` — each with the reason. A
section whose application no component of this installation implements is ``not met``
unless the operator declares it out of scope (``not_applicable``). A clause takes the
best verdict only when all its sections agree: all met → met; none met and none partly
→ not met; otherwise partly. Nothing is claimed that software cannot show (product
certification by the national cryptography administration is the assessor's to see).
"""

from __future__ import annotations

import functools
import importlib.util
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from mstcrypt.apps.console.compliance_map import ROWS, SECTIONS, Clause
from mstcrypt.errors import MstCryptError
from mstcrypt.kmc.context import aware
from mstcrypt.kmc.models import (
    AuditCheckpoint,
    AuditRecord,
    EncryptionKey,
    IssuedCertificate,
    Operator,
    ServiceKey,
)
from mstcrypt.kmc.operators import ADMINISTRATOR, AUDITOR, KEY_RECOVERY_OFFICER
from mstcrypt.kmc.service import Kmc
from mstcrypt.pki import Certificate

__all__ = ["MET", "NA", "NOT_MET", "PARTLY", "ComplianceReport", "Evidence", "collect"]

MET, PARTLY, NOT_MET, NA = "met", "partly", "not met", "not applicable"
VERDICTS = (MET, PARTLY, NOT_MET, NA)
SM2_WITH_SM3 = "1.2.156.10197.1.501"
#: the application packages of the guide's sections, when installed
_APP_MODULES = {
    "6.1": "mstcrypt.apps.boot",
    "6.2": "mstcrypt.apps.appsign",
    "6.3": "mstcrypt.apps.wapi",
    "7.1": "mstcrypt.apps.voice",
    "7.2": "mstcrypt.apps.mail",
    "7.4": "mstcrypt.apps.seal",
    "7.5": "mstcrypt.apps.im",
}


@dataclass
class Evidence:
    section: str
    verdict: str
    why: str
    facts: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return SECTIONS[self.section][0]


@dataclass(frozen=True)
class RowResult:
    clause: Clause
    verdict: str
    why: str


@dataclass
class ComplianceReport:
    generated_at: datetime
    deployment: dict[str, Any]
    sections: dict[str, Evidence]
    rows: list[RowResult]
    charts: dict[str, list[tuple[str, int]]]

    def summary(self, annex: str | None = None) -> dict[str, int]:
        c = Counter(r.verdict for r in self.rows if annex is None or r.clause.annex == annex)
        return {v: c.get(v, 0) for v in VERDICTS}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class _Collector:
    def __init__(self, kmc: Kmc, now: datetime, audit_limit: int | None = None) -> None:
        self.kmc = kmc
        self.now = now
        self.audit_limit = audit_limit
        self.facts: dict[str, Any] = {}

    # -- reads --------------------------------------------------------------------------
    def read(self) -> None:
        ic = IssuedCertificate
        with self.kmc.ctx.read() as s:
            self.profiles = dict(
                s.execute(
                    select(ic.profile, func.count())
                    .where(ic.status == "active")
                    .group_by(ic.profile)
                ).all()
            )
            newest = list(s.scalars(select(ic.der).order_by(ic.issued_at.desc()).limit(500)))
            self.key_states = dict(
                s.execute(
                    select(EncryptionKey.state, func.count()).group_by(EncryptionKey.state)
                ).all()
            )
            oldest_active = s.scalar(
                select(func.min(EncryptionKey.created_at)).where(EncryptionKey.state == "active")
            )
            self.oldest_active_key = aware(oldest_active) if oldest_active else None
            self.service_keys = {r.name: aware(r.created_at) for r in s.scalars(select(ServiceKey))}
            self.operators = list(s.scalars(select(Operator).where(Operator.status == "active")))
            actions = dict(
                s.execute(
                    select(AuditRecord.action, func.count())
                    .where(
                        AuditRecord.action.in_(
                            ("login.success", "kmc.backup", "recovery.release", "cert.revoke")
                        )
                    )
                    .group_by(AuditRecord.action)
                ).all()
            )
            self.last_backup = s.scalar(
                select(func.max(AuditRecord.ts)).where(AuditRecord.action == "kmc.backup")
            )
            cp = s.scalars(
                select(AuditCheckpoint).order_by(AuditCheckpoint.seq.desc()).limit(1)
            ).first()
            self.checkpoint = (cp.seq, aware(cp.signed_at)) if cp else None
        self.actions = actions
        self.certs = [Certificate.from_der(d) for d in newest]
        self.chain = self.kmc.chain()

    # -- sections -------------------------------------------------------------------------
    def module(self) -> Evidence:
        facts = []
        algs = Counter(c.signature_algorithm for c in [*self.chain, *self.certs])
        n_keys = len(self.chain) + len(self.certs)
        facts.append(
            "signature algorithms of the CA chain and the newest "
            f"{len(self.certs)} certificates: "
            + ", ".join(
                f"{'SM2-with-SM3' if a == SM2_WITH_SM3 else a} ×{n}" for a, n in algs.items()
            )
        )
        facts.append(
            f"public keys: SM2 on the 256-bit curve sm2p256v1 ({n_keys} certificates read)"
        )
        facts.append("symmetric: SM4 (CBC, GCM, CTR), hash and MAC: SM3 / HMAC-SM3, KDF: SM3")
        store = type(self.kmc.keystore).__name__
        hardware = store.startswith("Pkcs11")
        self.facts["keystore"] = store
        facts.append(
            f"server keys (CA, KMC, service identities) are generated and used inside the "
            f"SS-CC: {store} "
            + ("(PKCS#11 module)" if hardware else "(software, keys wrapped by the master key)")
        )
        self.facts["hardware"] = hardware
        only_sm = set(algs) <= {SM2_WITH_SM3}
        if not only_sm:
            return Evidence(
                "module",
                NOT_MET,
                "certificates signed with other than SM2-with-SM3 were found",
                facts,
            )
        return Evidence(
            "module",
            PARTLY,
            "only the national algorithms are in use and server keys stay in the SS-CC; "
            "the certification of the products (认证核准) is for the assessor to check "
            "on the product certificates, not something a deployment can prove",
            facts,
        )

    def keys(self) -> Evidence:
        facts, problems = [], []
        kro = [o.name for o in self.operators if KEY_RECOVERY_OFFICER in (o.roles or [])]
        auditors = [o.name for o in self.operators if AUDITOR in (o.roles or [])]
        admins = [o.name for o in self.operators if ADMINISTRATOR in (o.roles or [])]
        need = self.kmc.recovery.approvals_required
        facts.append(
            f"key recovery under dual control: {need} approval(s) by officers other than the "
            f"requester; active key-recovery officers: {len(kro)}"
        )
        if len(kro) < need + 1:
            problems.append(f"fewer than {need + 1} key-recovery officers: recovery is impossible")
        facts.append(
            f"separation of duties: {len(admins)} administrator(s), {len(auditors)} auditor(s) "
            "(the auditor role cannot be combined with another)"
        )
        if not auditors:
            problems.append("no active auditor")
        facts.append(
            "encryption keys by state: "
            + (", ".join(f"{k} {v}" for k, v in sorted(self.key_states.items())) or "none")
        )
        if self.oldest_active_key:
            days = (self.now - self.oldest_active_key).days
            facts.append(f"oldest active encryption key: {days} day(s) old")
        for name, created in sorted(self.service_keys.items()):
            facts.append(f"service key {name}: created {(self.now - created).days} day(s) ago")
        root, issuing = self.chain[-1], self.chain[0]
        for label, cert in (("root CA", root), ("issuing CA", issuing)):
            left = (aware(cert.not_after) - self.now).days
            facts.append(f"{label} certificate valid for {left} more day(s)")
            if left < 90:
                problems.append(f"the {label} certificate expires in {left} day(s)")
        for ca in ("root", "issuing"):
            try:
                pub = self.kmc.ca.current_crl(ca, publish=False)
            except MstCryptError:
                problems.append(f"no CRL published for the {ca} CA")
                continue
            fresh = aware(pub.next_update) > self.now
            age = int((self.now - aware(pub.this_update)).total_seconds() // 60)
            facts.append(
                f"{ca} CRL #{pub.number}: {age} min old, next update "
                f"{aware(pub.next_update):%Y-%m-%d %H:%M} UTC ({'fresh' if fresh else 'OVERDUE'})"
            )
            if not fresh:
                problems.append(f"the {ca} CRL is past its nextUpdate")
        if self.audit_limit is None:
            report = self.kmc.verify_audit()
            how = "verified from the genesis"
        else:
            report = self.kmc.verify_audit(incremental=True, limit=self.audit_limit)
            how = "verified from its newest signed checkpoint"
        self.facts["audit"] = report
        anchor = (
            f"newest signed checkpoint at record {self.checkpoint[0]} "
            f"({self.checkpoint[1]:%Y-%m-%d %H:%M} UTC)"
            if self.checkpoint
            else "no signed checkpoint yet"
        )
        facts.append(
            f"audit chain {how}: {'OK' if report.ok else 'BROKEN'}, "
            f"{report.records} record(s) to the head {report.head_seq}; {anchor}"
        )
        if not report.ok:
            return Evidence(
                "keys",
                NOT_MET,
                f"the audit chain is broken at record {report.first_bad_seq}: {report.problem}",
                facts,
            )
        if not self.checkpoint:
            problems.append("the audit log has no signed checkpoint")
        backups = self.actions.get("kmc.backup", 0)
        facts.append(
            f"encrypted backups made: {backups}"
            + (f", newest {self.last_backup}" if self.last_backup else "")
        )
        if not backups:
            problems.append("no backup has been made")
        if problems:
            return Evidence("keys", PARTLY, "; ".join(problems), facts)
        return Evidence(
            "keys",
            MET,
            "keys generated in the SS-CC and escrowed wrapped, dual-control recovery staffed, "
            "auditor apart, CRLs fresh, audit chain verified and signed, backups made",
            facts,
        )

    def tlcp(self) -> Evidence:
        from mstcrypt.protocols.tlcp.constants import DEFAULT_CIPHER_SUITES

        suites = ", ".join(f"{s.name} (0x{int(s):04X})" for s in DEFAULT_CIPHER_SUITES)
        facts = [f"TLCP (GM/T 0024) cipher suites offered: {suites}"]
        has_pair = {"platform-tlcp-sign", "platform-tlcp-enc"} <= set(self.service_keys)
        facts.append(
            "the platform's TLCP endpoint holds a signing and an encryption certificate "
            "(double certificates)"
            if has_pair
            else "the platform's TLCP endpoint identity has not been created (the platform "
            "is served over plain HTTP, e.g. behind a TLS reverse proxy)"
        )
        if has_pair:
            return Evidence(
                "6.4", MET, "the platform is served over TLCP with SM2 double certificates", facts
            )
        return Evidence(
            "6.4",
            PARTLY,
            "TLCP is implemented, but this deployment's endpoint has not served TLCP yet",
            facts,
        )

    def login(self) -> Evidence:
        logins = self.actions.get("login.success", 0)
        has_identity = "login" in self.service_keys
        bound = sum(1 for o in self.operators if o.cert_serial)
        facts = [
            "certificate login (§7.3): the terminal signs the server's challenge with its SM2 "
            "key in a PIN-protected soft token (possession + knowledge, one of them "
            "cryptographic); a password factor can be required by policy",
            f"login server certificate issued: {'yes' if has_identity else 'no'}; "
            f"successful logins recorded: {logins}",
            f"operators bound to a certificate (no passwords): {bound} of {len(self.operators)}",
        ]
        if has_identity and logins:
            return Evidence("7.3", MET, "users and operators log in with certificates", facts)
        return Evidence(
            "7.3", PARTLY, "certificate login is available but has not been used yet", facts
        )

    def files(self) -> Evidence:
        has_escrow = "file-recovery" in self.service_keys
        facts = [
            "file encryption: SM4 STREAM body under a per-file key, recipients by SM2 "
            "(docs/file-format.md)",
            f"KMC key-escrow certificate (kmc_escrow_enc) issued: {'yes' if has_escrow else 'no'}",
        ]
        if has_escrow:
            return Evidence("7.6", MET, "file encryption with escrowed file keys", facts)
        return Evidence(
            "7.6", PARTLY, "file encryption is available; no escrow certificate issued yet", facts
        )

    def whole(self) -> Evidence:
        results = _selftests()
        c = Counter(r.status for r in results)
        facts = [
            "known-answer self-tests (run once in this process): "
            + ", ".join(f"{k} {v}" for k, v in sorted(c.items())),
            "design: docs/platform.md, docs/login.md, docs/file-format.md, docs/console.md; "
            "this report maps Annexes A and B to the deployment",
        ]
        failed = [f"{r.group}/{r.name}" for r in results if r.status not in ("pass", "ok", "skip")]
        if failed:
            return Evidence("whole", NOT_MET, "self-tests failed: " + ", ".join(failed), facts)
        return Evidence(
            "whole",
            PARTLY,
            "design documents, self-tests and this report are evidence; the security test "
            "report before going live is an assessor's",
            facts,
        )

    def app(self, section: str) -> Evidence:
        module = _APP_MODULES[section]
        if _installed(module):
            return Evidence(
                section,
                PARTLY,
                f"implemented by {module} in this installation; this report collects no "
                "deployment evidence for it yet",
                [f"{module} installed"],
            )
        return Evidence(
            section,
            NOT_MET,
            "no component of this installation implements this application",
            [f"{module} not installed"],
        )


@functools.cache
def _selftests() -> tuple[Any, ...]:
    """The known-answer self-tests, once per process (they test the code, not the store)."""
    from mstcrypt.selftest import run_all

    return tuple(run_all())


def collect(
    kmc: Kmc,
    *,
    not_applicable: Iterable[str] = (),
    now: datetime | None = None,
    audit_limit: int | None = None,
) -> ComplianceReport:
    """Gather the evidence and the verdicts. ``not_applicable``: guide sections the unit
    declares out of scope (e.g. ``"6.3"`` without WLAN), reported as such.
    ``audit_limit``: verify the audit chain from its newest signed checkpoint, at most
    this many records (the console); None verifies it whole (the CLI report)."""
    now = now or kmc.clock()
    na = set(not_applicable)
    unknown = na - set(SECTIONS)
    if unknown:
        from mstcrypt.errors import PolicyError

        raise PolicyError(f"unknown guide section(s): {', '.join(sorted(unknown))}")
    col = _Collector(kmc, now, audit_limit)
    col.read()
    sections: dict[str, Evidence] = {}
    for key in SECTIONS:
        if key in na:
            sections[key] = Evidence(key, NA, "declared out of scope for this unit")
            continue
        if key == "module":
            sections[key] = col.module()
        elif key == "keys":
            sections[key] = col.keys()
        elif key == "6.4":
            sections[key] = col.tlcp()
        elif key == "7.3":
            sections[key] = col.login()
        elif key == "7.6":
            sections[key] = col.files()
        elif key == "whole":
            sections[key] = col.whole()
        else:
            sections[key] = col.app(key)
    rows = [_row(clause, sections, col.facts.get("hardware", False)) for clause in ROWS]
    deployment = {
        "CA": col.chain[-1].subject_str,
        "root fingerprint (SM3)": col.chain[-1].fingerprint,
        "issuing CA": col.chain[0].subject_str,
        "SS-CC": col.facts.get("keystore", "?"),
        "database": kmc.db.engine.dialect.name,
        "active certificates": sum(col.profiles.values()),
    }
    charts = {
        "profiles": sorted(
            ((str(k), int(v)) for k, v in col.profiles.items()), key=lambda x: -x[1]
        ),
        "keys": sorted((str(k), int(v)) for k, v in col.key_states.items()),
    }
    return ComplianceReport(now, deployment, sections, rows, charts)


def _row(clause: Clause, sections: dict[str, Evidence], hardware: bool) -> RowResult:
    ev = [sections[s] for s in clause.sections]
    verdicts = [e.verdict for e in ev if e.verdict != NA]
    if not verdicts:
        return RowResult(clause, NA, "every mapped section is out of scope")
    if all(v == MET for v in verdicts):
        verdict = MET
    elif all(v == NOT_MET for v in verdicts):
        verdict = NOT_MET
    else:
        verdict = PARTLY
    why = "; ".join(f"{e.title}: {e.verdict}" for e in ev)
    if clause.hardware and not hardware and verdict != NOT_MET:
        verdict = PARTLY if verdict == MET else verdict
        why += (
            "; a hardware cryptographic module is required at this level and the SS-CC is software"
        )
    return RowResult(clause, verdict, why)


# -- rendering ----------------------------------------------------------------------------
_COLOURS = {MET: "#12b76a", PARTLY: "#f79009", NOT_MET: "#f04438", NA: "#98a2b3"}


def _bars(items: list[tuple[str, int]], colours: dict[str, str] | None = None) -> Any:
    """A horizontal bar chart as inline SVG (no script, no style attribute)."""
    from markupsafe import Markup, escape

    top = max((n for _, n in items), default=0) or 1
    row, label_w, bar_w = 22, 150, 200
    height = row * max(1, len(items)) + 4
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{label_w + bar_w + 50}" '
        f'height="{height}" viewBox="0 0 {label_w + bar_w + 50} {height}" '
        'font-family="sans-serif" font-size="12">'
    ]
    for i, (label, n) in enumerate(items):
        y = i * row + 2
        w = round(bar_w * n / top)
        colour = (colours or {}).get(label, "#0b5cad")
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" fill="#344054">'
            f"{escape(label)}</text>"
            f'<rect x="{label_w}" y="{y + 3}" width="{max(w, 1)}" height="{row - 6}" '
            f'fill="{colour}"><title>{escape(label)}: {n}</title></rect>'
            f'<text x="{label_w + max(w, 1) + 5}" y="{y + 15}" fill="#1b1f24">{n}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - built from escaped labels and integers


def charts(report: ComplianceReport) -> dict[str, Any]:
    return {
        "annex_a": _bars(list(report.summary("A").items()), _COLOURS),
        "annex_b": _bars(list(report.summary("B").items()), _COLOURS),
        "profiles": _bars(report.charts["profiles"] or [("none", 0)]),
    }


def render_html(report: ComplianceReport) -> str:
    """The standalone report (HTML with its own print stylesheet, no script)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("mstcrypt.apps.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template("report.html").render(
        r=report, sections=SECTIONS, charts=charts(report)
    )


CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-pdf-header-footer",
    "--print-to-pdf-no-header",
)


def write_pdf(html: str, out: Any, *, chromium: str = "chromium", timeout: float = 120) -> None:
    """Print ``html`` to the PDF file ``out`` with Chromium's print to PDF (the page is
    loaded from a temporary file; it fetches nothing)."""
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    from mstcrypt.errors import UnsupportedError

    exe = shutil.which(chromium) or (chromium if Path(chromium).exists() else None)
    if exe is None:
        raise UnsupportedError(
            f"PDF output needs Chromium ({chromium!r} not found; apt-get install chromium), "
            "or write HTML (--out report.html)"
        )
    out = Path(out).resolve()
    with tempfile.TemporaryDirectory(prefix="mstcrypt-report-") as tmp:
        page = Path(tmp) / "report.html"
        page.write_text(html, encoding="utf-8")
        proc = subprocess.run(
            [
                exe,
                *CHROMIUM_ARGS,
                f"--user-data-dir={Path(tmp) / 'profile'}",
                f"--print-to-pdf={out}",
                page.as_uri(),
            ],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    if proc.returncode != 0 or not out.exists() or out.stat().st_size == 0:
        raise UnsupportedError(
            f"Chromium could not print the report (exit {proc.returncode}): "
            + proc.stderr.decode(errors="replace").strip()[-300:]
        )
