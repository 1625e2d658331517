"""``mstcrypt speed``: our throughput next to ``openssl speed`` (and Tongsuo's, for what
OpenSSL lacks) measured in the same run, on the same CPU-time basis."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn
from rich.table import Table

from mstcrypt.cli._common import console, fail
from mstcrypt.errors import MstCryptError
from mstcrypt.perf import ALGORITHMS, SIZES, Report, measure_report


def _size(n: int | None) -> str:
    if n is None:
        return ""
    return f"{n // 1024} KiB" if n >= 1024 and n % 1024 == 0 else f"{n} B"


def render(report: Report) -> tuple[Table, list[str]]:
    """The table, and the notes its last column refers to (how each reference was measured,
    or why there is none)."""
    t = Table(title="mstcrypt speed (CPU-time basis, as openssl speed)", title_justify="left")
    t.add_column("algorithm", no_wrap=True)
    t.add_column("message", justify="right", no_wrap=True)
    t.add_column("mstcrypt", justify="right", no_wrap=True)
    t.add_column("reference", justify="right", no_wrap=True)
    t.add_column("ratio", justify="right", no_wrap=True)
    t.add_column("ref.", no_wrap=True)
    notes: list[str] = []
    rows = report.rows
    for i, r in enumerate(rows):
        how = r.reference_name or "-"
        if how not in notes:
            notes.append(how)
        ref = f"{r.reference:,.1f} {r.unit}" if r.reference else "-"
        ratio = f"{r.ratio:.2f}×" if r.ratio is not None else "-"
        nxt = rows[i + 1] if i + 1 < len(rows) else None
        # a rule between algorithms, SM2's four operations forming one group
        new_group = nxt is not None and nxt.name != r.name and (r.size or nxt.size) is not None
        t.add_row(
            r.name,
            _size(r.size),
            f"{r.ours:,.1f} {r.unit}",
            ref,
            ratio,
            f"[{notes.index(how) + 1}]",
            end_section=new_group,
        )
    return t, [f"[{n}] {how}" for n, how in enumerate(notes, 1)]


def _footer(report: Report) -> list[str]:
    lines = [f"Basis: {report.basis}."]
    share = report.cpu_share
    if share is not None:
        busy = " (machine busy: wall-clock figures would understate)" if share < 0.9 else ""
        lines.append(f"CPU share while measuring mstcrypt: {share:.0%} of wall time{busy}.")
    lines.append(f"ZUC backend: {report.zuc_backend}.")
    if report.references:
        lines.append("References: " + ", ".join(report.references.values()) + ".")
    lines.append(
        "mstcrypt rows are one call per message (key and IV set-up included); "
        "`speed -evp` streams EVP updates on one context, `-aead` sets key, IV, AAD and "
        "tag per message. Wall-clock figures and CPU shares per row: --json."
    )
    return lines


def _csv(value: str, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        fail(f"{what}: empty list")
    return items


def speed_command(
    seconds: Annotated[
        float, typer.Option("--seconds", help="CPU seconds per measurement (ours).")
    ] = 1.0,
    sizes: Annotated[
        str, typer.Option("--sizes", help="Message sizes in bytes, comma-separated.")
    ] = ",".join(map(str, SIZES)),
    algorithms: Annotated[
        str,
        typer.Option("--algorithms", help=f"Comma-separated subset of: {', '.join(ALGORITHMS)}."),
    ] = ",".join(a for a in ALGORITHMS if not a.startswith("zuc-")),
    rounds: Annotated[
        int,
        typer.Option(
            "--rounds",
            help="Measure each row this many times (seconds split between them), keep medians.",
        ),
    ] = 1,
    reference: Annotated[
        bool,
        typer.Option(
            "--reference/--no-reference", help="Measure openssl/tongsuo speed beside ours."
        ),
    ] = True,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write every figure as JSON.")
    ] = None,
) -> None:
    """SM2 ops/s and SM3/SM4/ZUC MB/s for 16 B to 16 KiB messages, beside `openssl speed`
    (Tongsuo for SM4-GCM/ZUC when present) measured in the same run, on CPU time."""
    if seconds <= 0:
        fail("--seconds must be positive")
    if rounds < 1:
        fail("--rounds must be at least 1")
    try:
        size_list = [int(s) for s in _csv(sizes, "--sizes")]
    except ValueError:
        fail("--sizes takes positive integers, e.g. 16,1024,16384")
    if any(s <= 0 for s in size_list):
        fail("--sizes takes positive integers, e.g. 16,1024,16384")
    algs = _csv(algorithms, "--algorithms")
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), console=console, transient=True
    ) as progress:
        task = progress.add_task("measuring", total=None)
        try:
            report = measure_report(
                seconds,
                lambda name: progress.update(task, description=name),
                sizes=size_list,
                algorithms=algs,
                reference=reference,
                rounds=rounds,
            )
        except MstCryptError as exc:
            fail(str(exc))
    table, notes = render(report)
    console.print(table)
    for line in [*notes, *_footer(report)]:
        console.print(line, soft_wrap=True)
    if json_out is not None:
        json_out.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
