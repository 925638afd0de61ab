"""Cold start: time to the first chunk of a fresh server's first requests.

Starts the service (functions-framework + gunicorn) against the fake upstream
(no delay, two tokens) and prints the first chunk time of its first few
requests, which is where one-time costs (imports, CA bundle, the I/O loop)
show. Run a few times; these machines are noisy:

    .venv/bin/python bench/first_request.py
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.fake_upstream import FakeUpstream, Script  # noqa: E402


def main() -> None:
    fake = FakeUpstream(default=Script(tokens=["a", "b"])).start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "THREADS": "8",
        "ANTHROPIC_API_KEY": "bench-key",
        "ANTHROPIC_BASE_URL": fake.url,
        "ASSISTANT_PROVIDERS": "anthropic",
    }
    started = time.perf_counter()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "functions-framework"), "--target=assistant",
         "--source=main.py", "--host=127.0.0.1", f"--port={port}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(timeout=30)
    try:
        while True:
            try:
                client.get(f"{url}/health")
                break
            except httpx.TransportError:
                time.sleep(0.02)
        print(f"server answering after {1000 * (time.perf_counter() - started):.0f} ms")
        for index in range(3):
            sent = time.perf_counter()
            with client.stream(
                "POST", f"{url}/vac/assistant/bench/sse", json={"user_input": "hi"}
            ) as response:
                for line in response.iter_lines():
                    if line.startswith('data: {"chunk"'):
                        break
            elapsed_ms = 1000 * (time.perf_counter() - sent)
            print(f"request {index + 1}: first chunk after {elapsed_ms:.1f} ms")
    finally:
        server.terminate()
        server.wait(timeout=10)
        fake.stop()


if __name__ == "__main__":
    main()
