"""`--update-golden`: rewrite golden files instead of comparing (or set MESHGATE_UPDATE_GOLDEN=1).

Enable with `pytest -p tests.golden.plugin --update-golden`, or list it in tests/conftest.py's
`pytest_plugins`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

__all__ = ["assert_golden", "update_requested"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite golden files from current output")


def update_requested(config: pytest.Config) -> bool:
    flag = False
    try:
        flag = bool(config.getoption("--update-golden"))
    except ValueError:  # the plugin is not loaded: only the environment variable counts
        flag = False
    return flag or os.environ.get("MESHGATE_UPDATE_GOLDEN", "") not in ("", "0")


def assert_golden(actual: Any, path: Path, *, update: bool) -> None:
    """Compare `actual` (JSON-able) with the file; with `update`, write it instead."""
    text = json.dumps(actual, indent=2, sort_keys=True) + "\n"
    if update or not path.exists():
        path.write_text(text)
        if not update:
            pytest.fail(f"{path} did not exist: written; check it in and run again")
        return
    expected = path.read_text()
    assert text == expected, (
        f"{path} differs; rerun with --update-golden (or MESHGATE_UPDATE_GOLDEN=1) and review"
    )
