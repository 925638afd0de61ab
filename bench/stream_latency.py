"""Time to first chunk and stalls, through the real server, at several concurrencies.

Starts the fake upstream (in this process) and the service (functions-framework
+ gunicorn, in a subprocess, THREADS as given), then at each concurrency level
opens that many streams at once and prints, per level:

- first chunk p50 / p95 / max through the service, and the same measured
  directly against the fake upstream: the difference is what we add;
- the largest gap between two chunks of one stream, against the upstream's
  own token interval: a stall shows up here;
- the server's RSS after the level.

Numbers, not assertions: these machines are shared and noisy. Run:

    .venv/bin/python bench/stream_latency.py [--levels 1,10,50] [--threads 64]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.fake_upstream import FakeUpstream, Script  # noqa: E402
from devtools.service import running_service  # noqa: E402

TOKENS = [f"token{i} " for i in range(40)]
# One client for the whole run: a new client per stream would time TLS-context
# creation, not streaming.
CLIENT = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=None))


def _timed_stream(
    url: str, body: dict, headers: dict[str, str], marker: str
) -> tuple[float, float]:
    """(seconds to the first line holding `marker`, largest gap between two such lines)."""
    started = time.perf_counter()
    times: list[float] = []
    with CLIENT.stream("POST", url, json=body, headers=headers) as response:
        for line in response.iter_lines():
            if marker in line:
                times.append(time.perf_counter())
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    return times[0] - started, max(gaps, default=0.0)


def _stream_through_service(url: str) -> tuple[float, float]:
    body = {"user_input": "benchmark"}
    return _timed_stream(f"{url}/vac/assistant/bench/sse", body, {}, 'data: {"chunk"')


def _stream_direct(url: str) -> tuple[float, float]:
    body = {
        "model": "m",
        "max_tokens": 10,
        "stream": True,
        "messages": [{"role": "user", "content": "x"}],
    }
    headers = {"x-api-key": "bench", "anthropic-version": "2023-06-01"}
    return _timed_stream(f"{url}/v1/messages", body, headers, '"text_delta"')


def _run_level(fn, url: str, concurrency: int) -> tuple[list[float], list[float]]:
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda _: fn(url), range(concurrency)))
    return [r[0] for r in results], [r[1] for r in results]


def _ms(values: list[float], q: float) -> str:
    if len(values) == 1:
        return f"{values[0] * 1000:7.1f}"
    return f"{statistics.quantiles(values, n=100, method='inclusive')[int(q) - 1] * 1000:7.1f}"


def _rss_mb(pid: int) -> float:
    """RSS of the server and its children (gunicorn worker), from /proc."""
    total = 0
    for candidate in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{candidate}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            continue
    return total / 1024


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,10,50")
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--ttft", type=float, default=0.05, help="upstream time to first token (s)")
    parser.add_argument("--interval", type=float, default=0.02, help="upstream token interval (s)")
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]

    fake = FakeUpstream(
        default=Script(tokens=TOKENS, ttft=args.ttft, interval=args.interval)
    ).start()
    env = {
        "THREADS": str(max(args.threads, max(levels))),
        "ANTHROPIC_API_KEY": "bench-key",
        "ANTHROPIC_BASE_URL": fake.url,
        "ASSISTANT_PROVIDERS": "anthropic",
        # Every benchmark stream is the same anonymous user (AUTH_MODE none):
        # the per-user limit would otherwise refuse all but a few.
        "MAX_STREAMS_PER_USER": str(max(levels)),
    }
    try:
        with running_service(env) as service:
            _stream_through_service(service.url)  # warm-up: the loop and the connection pool
            print(f"upstream: ttft {args.ttft * 1000:.0f} ms, {len(TOKENS)} tokens every "
                  f"{args.interval * 1000:.0f} ms; THREADS={env['THREADS']}")  # fmt: skip
            print(
                f"{'streams':>7} | {'first chunk via service p50/p95/max ms':>40} | "
                f"{'direct p50/p95 ms':>18} | {'max gap ms':>10} | {'RSS MB':>6}"
            )
            for level in levels:
                direct, _ = _run_level(_stream_direct, fake.url, level)
                first, gaps = _run_level(_stream_through_service, service.url, level)
                print(
                    f"{level:>7} | {_ms(first, 50)} {_ms(first, 95)} {max(first) * 1000:7.1f}"
                    f"{'':>17} | {_ms(direct, 50)} {_ms(direct, 95)}   | "
                    f"{max(gaps) * 1000:10.1f} | {_rss_mb(service.process.pid):6.0f}"
                )
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
