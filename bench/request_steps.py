"""Where the added first-chunk latency of one stream goes, step by step (C=1).

The service and the fake upstream run as in bench/stream_cpu.py (service on
CPU 0, client and fake on CPU 1); the service is started with
bench/steps_hook/ first on its PYTHONPATH, whose sitecustomize.py wraps a
dozen of its functions to note when each step starts (nothing of it is in
the service's own code). Streams run one after another, first straight
against the fake, then through the service. It prints the added first chunk
(through the service minus directly, p50) and the median time of each step
of a request through the service: the steps before the upstream request
goes out and those after the upstream's first text add to the first chunk;
the upstream's own answer is in both paths.

By default the upstream waits 50 ms for its first token and 20 ms between
tokens, so the service's core sits idle between steps, as it does for a
lone user. `--warm` has the upstream answer at once (0.5 ms, three
tokens): the same steps on a core that was busy a moment before.

    .venv/bin/python bench/request_steps.py [--streams 100] [--warm]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import stream_cpu as harness  # noqa: E402

# (from mark, to mark, what happens in between); "text" is the upstream read
# that carried the first text, the last one before the first chunk is queued.
STEPS = (
    ("accept", "pool_thread", "gunicorn's main thread: accept, read the request, hand it over"),
    ("pool_thread", "wsgi_call", "gunicorn parses the request, builds the WSGI environ"),
    ("wsgi_call", "app", "functions-framework and Flask route it to our handler"),
    ("app", "reply_start", "our checks (auth, limits, body, fields) and the reply's set-up"),
    ("reply_start", "chain_run", "hand-over to the I/O loop thread"),
    ("chain_run", "upstream_request", "the chain, the provider's request, httpx"),
    ("upstream_request", "upstream_head", "sent; the upstream answers its head *"),
    ("text", "chunk_put", "the first text decoded and queued"),
    ("chunk_put", "first_written", "the loop writes the head and the frame"),
)
# Off the list above, since round 9: the view returns and the reply parks while the
# upstream request goes out (on the same core, so not always for free).
AFTER_VIEW = ("reply_start", "parked", "our set-up done: back through Flask, the reply parks")


def _times(marks: list[list[object]]) -> dict[str, int]:
    times: dict[str, int] = {}
    for name, ns in marks:
        assert isinstance(name, str) and isinstance(ns, int)
        if name == "upstream_data" and "chunk_put" not in times:
            times["text"] = ns  # the last upstream read before the first chunk
        times.setdefault(name, ns)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--warm", action="store_true", help="the upstream answers at once")
    args = parser.parse_args()
    ttft, interval, chunks = (0.0005, 0.0005, 3) if args.warm else (0.05, 0.02, 20)

    steps_file = Path(tempfile.mkstemp(prefix="request-steps-")[1])
    env = {
        "THREADS": "16",
        "MAX_STREAMS_PER_USER": "16",
        "ANTHROPIC_API_KEY": "bench-key",
        "ASSISTANT_PROVIDERS": "anthropic",
        "AUTH_MODE": "none",
        "PYTHONPATH": str(BENCH / "steps_hook"),
        "STEPS_OUT": str(steps_file),
    }
    os.sched_setaffinity(0, {harness.CLIENT_CORE})
    fake = subprocess.Popen(
        [sys.executable, "-c", harness.FAKE.format(root=str(harness.ROOT), chunks=chunks,
                                                   ttft=ttft, interval=interval)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=harness.ROOT,
    )  # fmt: skip
    try:
        assert fake.stdout is not None
        fake_url = fake.stdout.readline().decode().strip()
        env["ANTHROPIC_BASE_URL"] = fake_url
        os.sched_setaffinity(0, {harness.SERVICE_CORE})
        with harness.running_service(env) as service:
            os.sched_setaffinity(0, {harness.CLIENT_CORE})
            worker = harness._worker_pid(service.process.pid)
            harness._pin_all(service.process.pid, harness.SERVICE_CORE)
            harness._pin_all(worker, harness.SERVICE_CORE)
            _report(args.streams, chunks, ttft, fake_url, service.url, steps_file)
    finally:
        if fake.stdin is not None:
            with contextlib.suppress(OSError):
                fake.stdin.close()
        harness.stop_process(fake)  # type: ignore[arg-type]
        steps_file.unlink(missing_ok=True)
    return 0


def _report(
    streams: int, chunks: int, ttft: float, fake_url: str, service_url: str, steps_file: Path
) -> None:
    fake_host, fake_port = fake_url.removeprefix("http://").split(":")
    host, port = service_url.removeprefix("http://").split(":")
    direct, via = harness.stream_requests(fake_url, service_url)

    def run(request: bytes, h: str, p: str, service: bool, n: int) -> list[harness.Stream]:
        return asyncio.run(harness._level(h, int(p), request, service, 1, n, chunks, 0.0))

    run(via, host, port, True, 8)  # warm-up: the loop, the pool, imports
    steps_file.write_text("")
    plain = run(direct, fake_host, fake_port, False, streams)
    served = run(via, host, port, True, streams)
    errors = [s.error for s in plain + served if s.error]
    first_via = [(s.first - s.started) / 1e6 for s in served if s.first]
    first_direct = [(s.first - s.started) / 1e6 for s in plain if s.first]
    requests = [_times(json.loads(line)) for line in steps_file.read_text().splitlines()]

    print(harness._machine())
    print(
        f"{streams} streams one after another; upstream: first token after "
        f"{ttft * 1000:g} ms, {chunks} chunks; errors: {len(errors)}"
    )
    added = statistics.median(first_via) - statistics.median(first_direct)
    print(f"added first chunk, p50: {added:.2f} ms\n")
    print(f"{'step':<78} {'p50 us':>7}")
    for start, end, what in STEPS:
        spans = [(r[end] - r[start]) / 1e3 for r in requests if start in r and end in r]
        if start == "text":
            print(f"{'  (the upstream: time to first token)':<78}")
        shown = f"{statistics.median(spans):7.0f}" if spans else "      -"
        print(f"  {what:<76} {shown}")
    start, end, what = AFTER_VIEW
    spans = [(r[end] - r[start]) / 1e3 for r in requests if start in r and end in r]
    if spans:
        print(f"  {'(beside the above) ' + what:<76} {statistics.median(spans):7.0f}")
    print("\n* includes the upstream's own answer, which the direct path has too")


if __name__ == "__main__":
    raise SystemExit(main())
