"""The real Firebase Auth emulator (firebase-tools from package.json), for tests.

It takes 15-40 s to be ready, so `start()` only launches it: a session can
start it early and call `wait_ready()` when a test first needs it. It runs on
free auth, hub and logging ports (left to itself firebase-tools takes 4400
and 4500, which two runs would fight over) with a demo- project id, which
keeps it offline. Its ID tokens are unsigned (alg none); the service accepts
them only with FIREBASE_AUTH_EMULATOR_HOST set. If Node or firebase-tools is
missing, the failure says what to do in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx

from devtools.service import free_port, stop_process

from .emulator import PROJECT, EmulatorUnavailable

ROOT = Path(__file__).resolve().parent.parent
FIREBASE = ROOT / "node_modules" / ".bin" / "firebase"
ACCOUNTS_API = "identitytoolkit.googleapis.com/v1/accounts"


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


class AuthEmulator:
    def __init__(self, project: str = PROJECT) -> None:
        if not project.startswith("demo-"):
            raise ValueError(
                f"the Auth emulator runs offline only for a demo-* project, not {project!r}"
            )
        self.project = project
        self.port, self._hub_port, self._logging_port = _free_ports(3)
        self.host = f"127.0.0.1:{self.port}"
        run_dir = ROOT / ".run"
        self._config = run_dir / f"firebase-test-{self.port}.json"
        self._log = run_dir / f"test-auth-{self.port}.log"
        self._debug_log = run_dir / f"test-auth-{self.port}-debug.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._ready = False

    def start(self) -> AuthEmulator:
        """Launch the emulator and return at once; `wait_ready()` waits for it."""
        if shutil.which("node") is None:
            raise EmulatorUnavailable("node is not installed: the Auth emulator needs Node.js 20+")
        if not FIREBASE.is_file():
            raise EmulatorUnavailable(
                "firebase-tools is not installed (node_modules/.bin/firebase missing): "
                "run scripts/node-tools.sh"
            )
        self._config.parent.mkdir(exist_ok=True)
        loopback = "127.0.0.1"
        config = {
            "emulators": {
                "auth": {"host": loopback, "port": self.port},
                "hub": {"host": loopback, "port": self._hub_port},
                "logging": {"host": loopback, "port": self._logging_port},
                "ui": {"enabled": False},
                "singleProjectMode": True,
            }
        }
        self._config.write_text(json.dumps(config, indent=2))
        command = [
            str(FIREBASE), "emulators:start", "--only", "auth",
            "--project", self.project, "--config", str(self._config),
        ]  # fmt: skip
        env = {**os.environ, "FIREBASE_DEBUG_PATH": str(self._debug_log)}
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        return self

    def wait_ready(self, timeout: float = 120) -> AuthEmulator:
        """Wait until the emulator answers; raise EmulatorUnavailable if it does not."""
        if self._ready:
            return self
        if self._process is None:
            raise RuntimeError("AuthEmulator.wait_ready() before start()")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmulatorUnavailable(f"the Auth emulator exited; see {self._log}")
            try:
                response = httpx.get(f"http://{self.host}/", timeout=1)
                if response.status_code == 200 and "authEmulator" in response.text:
                    self._ready = True
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise EmulatorUnavailable(
            f"the Auth emulator did not answer in {timeout}s; see {self._log}"
        )

    def sign_up(self, email: str, password: str) -> tuple[str, str]:
        """Create a user; return its uid and an ID token (alg none, `sub` = uid)."""
        response = httpx.post(
            f"http://{self.host}/{ACCOUNTS_API}:signUp",
            params={"key": "any"},
            json={"email": email, "password": password, "returnSecureToken": True},
            timeout=10,
        )
        if response.status_code != 200:
            raise RuntimeError(
                f"the Auth emulator refused to sign up {email}: "
                f"{response.status_code} {response.text}"
            )
        body = response.json()
        return body["localId"], body["idToken"]

    def reset(self) -> None:
        """Delete every account (the emulator's own reset endpoint)."""
        url = f"http://{self.host}/emulator/v1/projects/{self.project}/accounts"
        httpx.delete(url, timeout=10).raise_for_status()

    def stop(self) -> None:
        stop_process(self._process)
        self._ready = False
        self._config.unlink(missing_ok=True)
