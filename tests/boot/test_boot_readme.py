"""README.md's trusted-boot block runs as written (bash, in a temporary directory)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from test_readme import README, run_session, shell_blocks

MKFS = shutil.which("mkfs.ext4") or shutil.which("mkfs.ext4", path="/usr/sbin:/sbin")


@pytest.mark.skipif(MKFS is None, reason="e2fsprogs (mkfs.ext4) not installed")
def test_readme_trusted_boot_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the chain itself (the second block, attestation, needs the platform walkthrough
    # and runs in tests/test_readme.py)
    block = next(b for b in shell_blocks(README) if b.section == "Trusted boot (guide 6.1)")
    monkeypatch.setenv("PATH", f"{Path(MKFS).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    out = run_session([block], tmp_path, timeout=300)
    assert "system: OK" in out and "block 200 refused" in out and "rollback refused" in out
    assert "block 0: OK" in out
    assert (tmp_path / "events.json").read_text().count('"stage"') == 3
