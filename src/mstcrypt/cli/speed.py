"""``mstcrypt speed``: our throughput next to ``openssl speed`` from the same run."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn
from rich.table import Table

from mstcrypt.cli._common import console
from mstcrypt.perf import Row, measure


def render(rows: list[Row]) -> Table:
    t = Table(title="mstcrypt speed (16 KiB buffers for bulk ciphers)")
    t.add_column("algorithm")
    t.add_column("mstcrypt", justify="right")
    t.add_column("reference", justify="right")
    t.add_column("ratio", justify="right")
    t.add_column("reference measured with")
    for r in rows:
        ref = f"{r.reference:,.1f} {r.unit}" if r.reference else "-"
        ratio = f"{r.ratio:.2f}×" if r.ratio is not None else "-"
        t.add_row(r.name, f"{r.ours:,.1f} {r.unit}", ref, ratio, r.reference_name or "-")
    return t


def speed_command(
    seconds: Annotated[float, typer.Option("--seconds", help="Seconds per measurement.")] = 1.0,
) -> None:
    """SM2 ops/s, SM3/SM4/ZUC MB/s, beside `openssl speed` measured in the same run."""
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), console=console, transient=True
    ) as progress:
        task = progress.add_task("measuring", total=None)
        rows = measure(seconds, lambda name: progress.update(task, description=name))
    console.print(render(rows))
