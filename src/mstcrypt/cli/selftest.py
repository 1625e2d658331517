"""``mstcrypt selftest``: every standard vector and OpenSSL round trips, as a table."""

from __future__ import annotations

import time

import typer
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from mstcrypt.cli._common import console
from mstcrypt.selftest import FAIL, PASS, checks, run_one


def selftest_command() -> None:
    """Run the known-answer tests (SM2, SM3, SM4, ZUC, formats, soft token) and the
    OpenSSL CLI interop round trips. Exit 1 if anything fails."""
    todo = checks()
    results = []
    start = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("self test", total=len(todo))
        for group, name, fn in todo:
            progress.update(task, description=f"{group}: {name}")
            results.append(run_one(group, name, fn))
            progress.advance(task)
    t = Table(title="mstcrypt selftest")
    t.add_column("group")
    t.add_column("check")
    t.add_column("result")
    t.add_column("detail")
    colours = {PASS: "green", FAIL: "red"}
    for r in results:
        c = colours.get(r.status, "yellow")
        t.add_row(r.group, r.name, f"[{c}]{r.status}[/{c}]", r.detail)
    console.print(t)
    n_fail = sum(r.status == FAIL for r in results)
    n_pass = sum(r.status == PASS for r in results)
    console.print(
        f"{n_pass} passed, {n_fail} failed, {len(results) - n_pass - n_fail} skipped "
        f"in {time.perf_counter() - start:.1f} s"
    )
    if n_fail:
        raise typer.Exit(1)
