"""The real Cloud Firestore emulator, started by the test suite itself.

Started once per session on a free port, with firestore.rules loaded, and
stopped at the end; tests reset its data instead of restarting it. If java,
gcloud or the emulator jar is missing, the failure says which in one line.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx

from devtools.service import free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "demo-test"
MAIN_CLASS = "com.google.cloud.datastore.emulator.firestore.CloudFirestore"


class EmulatorUnavailable(RuntimeError):
    pass


def _jar() -> Path:
    for tool in ("java", "gcloud"):
        if shutil.which(tool) is None:
            raise EmulatorUnavailable(f"{tool} is not installed: the Firestore emulator needs it")
    sdk_root = subprocess.run(
        ["gcloud", "info", "--format=value(installation.sdk_root)"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    ).stdout.strip()
    jar = Path(sdk_root) / "platform/cloud-firestore-emulator/cloud-firestore-emulator.jar"
    if not jar.is_file():
        raise EmulatorUnavailable(
            "the Cloud Firestore emulator is not installed "
            "(gcloud component cloud-firestore-emulator)"
        )
    return jar


class FirestoreEmulator:
    def __init__(self) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._log = (ROOT / ".run").joinpath(f"test-firestore-{self.port}.log")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> FirestoreEmulator:
        jar = _jar()
        self._log.parent.mkdir(exist_ok=True)
        command = [
            "java", "-Duser.language=en", "-cp", str(jar), MAIN_CLASS, "start",
            "--host=127.0.0.1", f"--port={self.port}", f"--rules={ROOT / 'firestore.rules'}",
        ]  # fmt: skip
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmulatorUnavailable(f"the Firestore emulator exited; see {self._log}")
            try:
                if httpx.get(f"http://{self.host}/", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise EmulatorUnavailable(f"the Firestore emulator did not answer in {timeout}s")

    def reset(self) -> None:
        """Delete every document (the emulator's own reset endpoint)."""
        url = f"http://{self.host}/emulator/v1/projects/{PROJECT}/databases/(default)/documents"
        httpx.delete(url, timeout=10).raise_for_status()

    def stop(self) -> None:
        stop_process(self._process)
