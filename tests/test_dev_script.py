"""scripts/dev.sh, the README's first command: what it stops on its way out is its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from devtools.fake_upstream import FakeUpstream
from devtools.has_provider import NO_PROVIDER
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


def test_without_ps_the_scripts_stop_and_say_what_to_install(tmp_path: Path) -> None:
    """Without ps (procps is not in slim images) `stop` took a running emulator for gone
    and left it running; the scripts now refuse to start and name the package."""
    commands = tmp_path / "bin"  # every command on the PATH but ps and pgrep
    commands.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        for command in Path(folder).glob("*") if Path(folder).is_dir() else ():
            link = commands / command.name
            if command.name not in ("ps", "pgrep") and not os.path.lexists(link):
                link.symlink_to(command)
    project = tmp_path / "project"
    _checkout(project)
    ports = {"PORT": str(free_port()), "FIRESTORE_EMULATOR_PORT": str(free_port())}
    try:
        for script, arguments in (("firestore-emulator.sh", ["start"]), ("dev.sh", [])):
            run = subprocess.run(
                ["bash", project / "scripts" / script, *arguments],
                cwd=project,
                env={**os.environ, **ports, "PATH": str(commands)},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert run.returncode != 0
            assert "install procps" in run.stderr, run.stderr
    finally:  # had one started, with ps at hand this time
        emulator = project / "scripts" / "firestore-emulator.sh"
        subprocess.run(["bash", emulator, "stop"], cwd=project, env={**os.environ, **ports})


def test_a_key_under_another_name_is_used_not_the_fake(tmp_path: Path, fake: FakeUpstream) -> None:
    """With ANTHROPIC_KEY_NAME naming the key's variable, dev.sh looked at
    ANTHROPIC_API_KEY alone, started its fake model and sent the key to it (a reviewer)."""
    _checkout(tmp_path)
    ports = {name: str(free_port()) for name in ("PORT", "FAKE_UPSTREAM_PORT", "DEMO_PORT")}
    env = {
        **{name: value for name, value in os.environ.items() if name != "ANTHROPIC_API_KEY"},
        **ports,
        "FIRESTORE_EMULATOR_PORT": str(free_port()),
        "ANTHROPIC_KEY_NAME": "MY_ANTHROPIC_KEY",
        "MY_ANTHROPIC_KEY": "sk-renamed-key",
        "ASSISTANT_PROVIDERS": "anthropic",  # at `fake`, as the fixture set its base URL
    }
    log = tmp_path / "dev.log"
    with log.open("wb") as output:
        dev = subprocess.Popen(
            ["bash", tmp_path / "scripts" / "dev.sh"],
            cwd=tmp_path, env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{ports['PORT']}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert dev.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        reply = httpx.post(f"{url}/vac/assistant/demo", json={"user_input": "hi"}, timeout=30)
        assert reply.status_code == 200
    finally:
        dev.send_signal(signal.SIGTERM)
        dev.wait(timeout=60)
    keys = [request.headers["x-api-key"] for request in fake.requests]
    assert keys == ["sk-renamed-key"], log.read_text()
    assert "NO PROVIDER KEY SET" not in log.read_text()


@pytest.mark.parametrize(
    ("settings", "has"),
    [
        ({}, False),
        ({"ANTHROPIC_API_KEY": "sk-1"}, True),
        # A Secret Manager name is the usual key name, hyphens and all (a reviewer).
        ({"ANTHROPIC_KEY_NAME": "anthropic-api-key", "anthropic-api-key": "sk-1"}, True),
        ({"ANTHROPIC_KEY_NAME": "MY_KEY", "ANTHROPIC_API_KEY": "sk-1"}, False),
        ({"ANTHROPIC_API_KEY": "sk-\u2026"}, False),  # no header can carry it
        ({"ASSISTANT_PROVIDERS": "openai", "ANTHROPIC_API_KEY": "sk-1"}, False),
        ({"OLLAMA_BASE_URL": "http://127.0.0.1:9"}, True),
        ({"SECRET_MANAGER": "yes"}, True),
        ({"SECRET_MANAGER": "yes", "ASSISTANT_PROVIDERS": "ollama"}, False),  # no URL
        ({"HEARTBEAT_SECONDS": "never"}, True),  # the service says what is wrong
    ],
)
def test_dev_sh_starts_its_fake_model_only_when_the_service_has_no_provider(
    settings: dict[str, str], has: bool
) -> None:
    """dev.sh asks the service's own settings (devtools/has_provider.py)."""
    env = {"PATH": os.environ["PATH"], **settings}
    run = subprocess.run(
        [sys.executable, "-m", "devtools.has_provider"], cwd=ROOT, env=env, capture_output=True
    )
    assert run.returncode == (0 if has else NO_PROVIDER), run.stderr
