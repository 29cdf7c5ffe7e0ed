"""The tests find CIFAR-10 through the environment or a ``shared/data`` beside the repository; CI fails without it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import conftest
from datapaths import MARKER, REPO, candidates, find_cifar_root


def _cifar_at(root: Path) -> Path:
    (root / MARKER).parent.mkdir(parents=True)
    (root / MARKER).write_bytes(b"")
    return root


def test_shared_data_beside_an_ancestor_of_the_repository_is_found(tmp_path: Path) -> None:
    repo = tmp_path / "ci" / "clone" / "odearch"
    repo.mkdir(parents=True)
    assert find_cifar_root({}, repo) is None
    shared = _cifar_at(tmp_path / "ci" / "shared" / "data")
    assert find_cifar_root({}, repo) == shared
    nearer = _cifar_at(tmp_path / "ci" / "clone" / "shared" / "data")
    assert find_cifar_root({}, repo) == nearer  # the nearest ancestor first


def test_a_folder_named_by_the_environment_is_the_only_place_looked_at(tmp_path: Path) -> None:
    repo = tmp_path / "work" / "odearch"
    repo.mkdir(parents=True)
    _cifar_at(tmp_path / "work" / "shared" / "data")
    empty = tmp_path / "empty"
    assert candidates({"ODEARCH_DATA": str(empty)}, repo) == [empty]
    assert find_cifar_root({"ODEARCH_DATA": str(empty)}, repo) is None
    named = _cifar_at(tmp_path / "named")
    assert find_cifar_root({"ODEARCH_TEST_DATA": str(named), "ODEARCH_DATA": str(empty)}, repo) == named
    # without the environment: only shared/data beside the repository's ancestors, no fixed machine path
    assert candidates({}, Path("/elsewhere/odearch")) == [Path("/elsewhere/shared/data"), Path("/shared/data")]


def test_ci_without_cifar_exits_in_configure(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook itself (in-process): under CI without the data it exits, naming where it looked; else it lets be."""
    monkeypatch.setattr(conftest, "HAS_CIFAR", False)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.exit.Exception, match=r"^CI: real CIFAR-10 not found in any of: ") as exit_info:
        conftest.pytest_configure(None)
    assert exit_info.value.returncode == 1
    monkeypatch.setattr(conftest, "HAS_CIFAR", True)
    conftest.pytest_configure(None)  # CI with the data: the run goes on
    monkeypatch.setattr(conftest, "HAS_CIFAR", False)
    monkeypatch.delenv("CI")
    conftest.pytest_configure(None)  # no CI: the tests that need the data skip instead


@pytest.mark.slow
def test_ci_without_cifar_stops_the_run_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "CI": "1", "ODEARCH_TEST_DATA": str(tmp_path)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(REPO / "tests" / "test_datapaths.py")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=300)
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 1, out
    assert len(out.splitlines()) == 1, out
    assert out.startswith(f"Exit: CI: real CIFAR-10 not found in any of: {tmp_path} ("), out
    assert "passed" not in out and "skipped" not in out
