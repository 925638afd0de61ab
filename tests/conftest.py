"""Shared fixtures: an isolated environment, fake upstreams on loopback, the app.

Provider traffic always goes to a real HTTP server on 127.0.0.1
(devtools/fake_upstream/); nothing of ours is mocked.
"""

from __future__ import annotations

import fnmatch
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import functions_framework
import pytest

from assistant import saving
from assistant.late_saves import LateSaves
from assistant.limits import replies_in_flight
from devtools.fake_upstream import FakeUpstream, Script

from .auth_emulator import AuthEmulator
from .emulator import PROJECT, EmulatorUnavailable, FirestoreEmulator

ROOT = Path(__file__).resolve().parent.parent

# Settings that could leak in from the developer's shell (see assistant/config.py).
_SETTING_PREFIXES = ("ANTHROPIC_", "OPENAI_", "GEMINI_", "OLLAMA_", "MAX_", "AUTH_", "FIREBASE_")
_SETTING_NAMES = {
    "ASSISTANT_PROVIDERS",
    "CONNECT_TIMEOUT_SECONDS",
    "FIRST_CHUNK_TIMEOUT_SECONDS",
    "IDLE_TIMEOUT_SECONDS",
    "HEARTBEAT_SECONDS",
    "CORS_ORIGINS",
    "GOOGLE_CLOUD_PROJECT",
    "GCP_PROJECT",
    "FIRESTORE_COLLECTION",
    "PERSIST_TIMEOUT_SECONDS",
    "FIRESTORE_EMULATOR_HOST",
    "FIRESTORE_DATABASE",
    "K_SERVICE",
    "SECRET_MANAGER",
    "SECRETS_PROJECT",
    "KEY_CACHE_SECONDS",
    "SECRET_TIMEOUT_SECONDS",
    "REQUEST_READ_TIMEOUT_SECONDS",
}


@pytest.fixture(autouse=True)
def isolated_env() -> Iterator[None]:
    """Each test starts from the same environment and cannot leak changes into the next."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name in _SETTING_NAMES or name.startswith(_SETTING_PREFIXES):
            del os.environ[name]
    os.environ["ASSISTANT_PROVIDERS"] = "anthropic"
    # Requests without a user share one bucket of replies in flight, and the
    # Flask test client never closes a streamed response whose body a test
    # did not read; the tests of the limits set their own.
    os.environ["MAX_STREAMS_PER_USER"] = "100000"
    os.environ["MAX_STREAMS"] = "100000"
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def none_in_flight() -> None:
    """A test of the instance's limits counts from zero: what earlier tests left in
    flight (streamed responses the Flask test client never closed, their slots given
    back when the collector finalizes them) is let go of first. Without it such a test
    failed when run after those (tests/test_store.py before tests/test_auth_modes.py)."""
    deadline = time.monotonic() + 10
    while replies_in_flight.count() and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    assert replies_in_flight.count() == 0, "replies of earlier tests are still in flight"


@pytest.fixture(autouse=True)
def late_writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[LateSaves]:
    """Each test's own late saves: a message one test's database could not take is not
    written into the next test's. Its writes under way are waited for at the end."""
    saves = LateSaves()
    monkeypatch.setattr(saving, "late_saves", saves)
    yield saves
    saves.close(0.0)
    saves.wait_idle(30.0)


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    """A fake Anthropic API on loopback, wired into the environment."""
    with FakeUpstream(default=Script()) as upstream:
        os.environ["ANTHROPIC_BASE_URL"] = upstream.url
        os.environ["ANTHROPIC_API_KEY"] = "test-key"
        yield upstream


@pytest.fixture(scope="session")
def app() -> Any:
    return functions_framework.create_app(target="assistant", source=str(ROOT / "main.py"))


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


def python_in_own_process(script: str) -> str:
    """What `script` prints, run by this Python in a process of its own (for state that is
    the whole process's: the collector, settings fixed for a worker's life)."""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def copy_of_the_project(into: Path) -> None:
    """The project's files, as a fresh clone has them, copied into `into`."""
    for name in project_files(ROOT):
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, into / name)


def project_files(root: Path) -> list[str]:
    """The project's files under `root`: git's tracked ones, or, where there is no `.git`
    (a Cloud Build's upload: cloudbuild.yaml's test step), every file but those
    `.gcloudignore.build` keeps out of the upload (what a run makes: a venv, caches)."""
    if (root / ".git").exists():
        listing = ["git", "ls-files"]
        return subprocess.run(
            listing, cwd=root, capture_output=True, text=True, check=True
        ).stdout.split()
    rules = (root / ".gcloudignore.build").read_text(encoding="utf-8").splitlines()
    patterns = [rule.strip() for rule in rules if rule.strip() and not rule.startswith("#")]
    return sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and not _ignored(path.relative_to(root).parts, patterns)
    )


def _ignored(parts: tuple[str, ...], patterns: list[str]) -> bool:
    """Whether an ignore file's patterns (`name/` a folder anywhere, else a name or a
    path from the root, with wildcards) keep out the path of `parts`."""
    for pattern in patterns:
        if pattern.endswith("/"):
            folder, folders = pattern.rstrip("/"), "/".join(parts[:-1])
            if "/" in folder:
                if fnmatch.fnmatch(folders, folder) or fnmatch.fnmatch(folders, folder + "/*"):
                    return True
            elif any(fnmatch.fnmatch(part, folder) for part in parts[:-1]):
                return True
        elif "/" in pattern.lstrip("/"):
            if fnmatch.fnmatch("/".join(parts), pattern.lstrip("/")):
                return True
        elif fnmatch.fnmatch(parts[-1], pattern):
            return True
    return False


def stopped_before_the_kill(process: subprocess.Popen[Any]) -> None:
    """SIGTERM, as Cloud Run sends it: the server must be gone, cleanly, before the
    kill that follows 10 s later."""
    process.terminate()
    stopped = time.monotonic()
    assert process.wait(timeout=40) == 0
    assert time.monotonic() - stopped < 10


def log_lines(out: str) -> list[dict[str, Any]]:
    """Our JSON log lines in captured output (each a JSON object on its own line)."""
    # "\n" only: a line's text may hold U+2028 and the other breaks splitlines() knows.
    return [json.loads(line) for line in out.split("\n") if line.startswith("{")]


def sse_events(body: bytes) -> list[Any]:
    """The frames of an SSE body: parsed JSON payloads, "[DONE]", or ": ping" comments."""
    events: list[Any] = []
    for block in body.decode("utf-8").split("\n\n"):
        if not block:
            continue
        if block.startswith(":"):
            events.append(block)
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else strict_json(data))
    return events


def strict_json(text: str | bytes) -> Any:
    """JSON as a browser's `JSON.parse` reads it: NaN and Infinity are errors."""
    return json.loads(text, parse_constant=_no_constant)


def _no_constant(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def ask(
    client: Any, text: str = "Hello?", path: str = "/vac/assistant/test-assistant/sse", **body: Any
) -> Any:
    return client.post(path, json={"user_input": text, **body})


@pytest.fixture(scope="session")
def firestore_emulator() -> Iterator[FirestoreEmulator]:
    emulator = FirestoreEmulator()
    try:
        emulator.start()
    except EmulatorUnavailable as exc:
        pytest.fail(f"Firestore emulator unavailable: {exc}", pytrace=False)
    yield emulator
    emulator.stop()


@pytest.fixture
def firestore(firestore_emulator: FirestoreEmulator) -> Iterator[Any]:
    """A clean emulator database, and the environment that points the service at it."""
    firestore_emulator.reset()
    os.environ["FIRESTORE_EMULATOR_HOST"] = firestore_emulator.host
    os.environ["GOOGLE_CLOUD_PROJECT"] = PROJECT
    from google.cloud import firestore as firestore_client

    yield firestore_client.Client(project=PROJECT)


# The Auth emulator takes 15-40 s to start: launched as soon as the run is
# known to need it, it boots while the other tests run.
_auth_emulator: AuthEmulator | None = None
_auth_emulator_error: EmulatorUnavailable | None = None


@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    global _auth_emulator, _auth_emulator_error
    if any("auth_emulator" in getattr(item, "fixturenames", ()) for item in items):
        try:
            _auth_emulator = AuthEmulator().start()
        except EmulatorUnavailable as exc:
            _auth_emulator_error = exc


def pytest_sessionfinish() -> None:
    if _auth_emulator is not None:
        _auth_emulator.stop()


@pytest.fixture(scope="session")
def auth_emulator() -> AuthEmulator:
    """The real Firebase Auth emulator (project demo-test), started at collection."""
    try:
        if _auth_emulator_error is not None:
            raise _auth_emulator_error
        return (_auth_emulator or AuthEmulator().start()).wait_ready()
    except EmulatorUnavailable as exc:
        pytest.fail(f"Firebase Auth emulator unavailable: {exc}", pytrace=False)
