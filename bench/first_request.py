"""Cold start: time to the first chunk of a fresh server's first requests.

Starts the service (functions-framework + gunicorn) against the fake upstream
(no delay, two tokens) and prints the first chunk time of its first few
requests, which is where one-time costs (imports, CA bundle, the I/O loop)
show. Run a few times; these machines are noisy:

    .venv/bin/python bench/first_request.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.fake_upstream import FakeUpstream, Script  # noqa: E402
from devtools.service import running_service  # noqa: E402


def main() -> None:
    fake = FakeUpstream(default=Script(tokens=["a", "b"])).start()
    env = {
        "THREADS": "8",
        "ANTHROPIC_API_KEY": "bench-key",
        "ANTHROPIC_BASE_URL": fake.url,
        "ASSISTANT_PROVIDERS": "anthropic",
    }
    client = httpx.Client(timeout=30)
    try:
        with running_service(env) as service:
            print(f"server answering after {1000 * service.ready_after:.0f} ms")
            for index in range(3):
                sent = time.perf_counter()
                with client.stream(
                    "POST", f"{service.url}/vac/assistant/bench/sse", json={"user_input": "hi"}
                ) as response:
                    for line in response.iter_lines():
                        if line.startswith('data: {"chunk"'):
                            break
                elapsed_ms = 1000 * (time.perf_counter() - sent)
                print(f"request {index + 1}: first chunk after {elapsed_ms:.1f} ms")
    finally:
        fake.stop()


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()  # --help
    main()
