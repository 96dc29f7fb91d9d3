"""Shared fixtures: the read-only real files in ../shared/realdata (tests skip when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REALDATA = PROJECT_ROOT.parent / "shared" / "realdata"


@pytest.fixture(scope="session")
def realdata() -> Path:
    """Folder of real files written by others; skip the test cleanly when it is absent."""
    if not REALDATA.is_dir():
        pytest.skip(f"real data folder absent: {REALDATA}")
    return REALDATA
