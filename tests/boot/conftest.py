"""Fixtures of the trusted-boot tests (helpers in bootkit.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bootkit import Chain, make_chain


@pytest.fixture
def chain(tmp_path: Path) -> Chain:
    return make_chain(tmp_path)
