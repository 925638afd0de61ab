"""scripts/dev.sh, the README's first command: what it stops on its way out is its own."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx

from devtools.service import free_port

from .conftest import copy_of_the_project

ROOT = Path(__file__).resolve().parent.parent


def _checkout(into: Path) -> None:
    """The project's tracked files, and the venv, as a clone that ran its setup has."""
    copy_of_the_project(into)
    (into / ".venv").symlink_to(ROOT / ".venv")


def test_a_second_run_that_cannot_start_leaves_the_first_runs_emulator(tmp_path: Path) -> None:
    """Another run's emulator (another port, named in the pid file): the second run's
    start refuses, and its clean-up stopped that emulator (a reviewer's first run then
    saved nothing)."""
    _checkout(tmp_path)
    first_port = free_port()
    env = {**os.environ, "FIRESTORE_EMULATOR_PORT": str(first_port)}
    emulator = tmp_path / "scripts" / "firestore-emulator.sh"
    subprocess.run(["bash", emulator, "start"], cwd=tmp_path, env=env, check=True, timeout=60)
    try:
        second = {
            **os.environ,
            **{name: str(free_port()) for name in ("PORT", "FAKE_UPSTREAM_PORT", "DEMO_PORT")},
            "FIRESTORE_EMULATOR_PORT": str(free_port()),
        }
        run = subprocess.run(
            ["bash", tmp_path / "scripts" / "dev.sh"],
            cwd=tmp_path,
            env=second,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode != 0
        assert "is running but does not answer" in run.stderr
        assert httpx.get(f"http://127.0.0.1:{first_port}/", timeout=5).status_code == 200
    finally:
        subprocess.run(["bash", emulator, "stop"], cwd=tmp_path, env=env, timeout=60)
