"""The service as it runs in production: functions-framework (gunicorn) in a subprocess.

One way to start it for the real-server tests and the benchmarks: on a free
loopback port, with extra environment, stopped on exit.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class RunningService:
    url: str
    process: subprocess.Popen[bytes]
    ready_after: float  # seconds from start to the first answer of /health


def stop_process(process: subprocess.Popen[bytes] | None, grace: float = 10) -> None:
    """SIGTERM, up to `grace` seconds to exit, then SIGKILL."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_service(
    env: dict[str, str], timeout: float = 30, output: IO[bytes] | None = None
) -> Iterator[RunningService]:
    """The service on 127.0.0.1 with `env` on top of this process's environment.

    Its stdout and stderr (the log lines) go to `output`, or nowhere.
    """
    port = free_port()
    started = time.perf_counter()
    sink = output or subprocess.DEVNULL
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "functions-framework"), "--target=assistant",
         "--source=main.py", "--host=127.0.0.1", f"--port={port}"],
        cwd=ROOT, env={**os.environ, **env}, stdout=sink, stderr=sink,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.perf_counter() - started > timeout:
                raise RuntimeError("functions-framework did not start")
            time.sleep(0.02)
        yield RunningService(url, process, time.perf_counter() - started)
    finally:
        stop_process(process)
