"""Two versions of the service side by side: CPU per chunk of the JSON route.

A JSON reply (the legacy route without `Accept: text/event-stream`) writes
nothing before its end. Round 23 let its wait go of its thread (parking), as a
stream's does; this measures what a relayed chunk then costs the worker, A
and B taking turns on the service's core (bench/ab_idle.py's way: a folder or
a git revision each, this checkout's virtualenv). The upstream is
bench/stream_cpu.py's fake: 50 chunks 20 ms apart (50 tokens/s) per reply.

    .venv/bin/python bench/json_cpu.py HEAD~1 . [--replies 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import stream_cpu as harness  # noqa: E402
from ab_idle import ENV, _fake, _service, _source  # noqa: E402

CHUNKS = 50


def _cpu_ms_per_1000_chunks(url: str, worker: int, replies: int) -> float:
    """The worker's CPU while `replies` JSON replies run at once, per 1,000 chunks."""
    before = sum(harness._cpu_ticks(worker))

    def ask(_: int) -> None:
        answer = httpx.post(f"{url}/vac/assistant/bench", json={"user_input": "hi"}, timeout=60)
        answer.raise_for_status()
        if len(answer.json()["answer"].split()) != CHUNKS:  # each the fake's clock, and " "
            raise RuntimeError("a reply came short")

    with concurrent.futures.ThreadPoolExecutor(replies) as pool:
        list(pool.map(ask, range(replies)))
    ms = (sum(harness._cpu_ticks(worker)) - before) * 1000 / harness.TICKS
    return ms * 1000 / (replies * CHUNKS)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("a", help="a source folder, or a git revision")
    parser.add_argument("b", help="a source folder, or a git revision")
    parser.add_argument("--replies", type=int, default=40, help="JSON replies at once")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    figures: dict[str, list[float]] = {args.a: [], args.b: []}
    with _fake(chunks=CHUNKS) as fake:
        env = {**ENV, "ANTHROPIC_BASE_URL": fake, "MAX_STREAMS_PER_USER": str(args.replies)}
        with (
            tempfile.TemporaryDirectory(prefix="json-cpu-") as scratch,
            _source(args.a, Path(scratch)) as source_a,
            _source(args.b, Path(scratch)) as source_b,
            _service(source_a, env) as (url_a, worker_a),
            _service(source_b, env) as (url_b, worker_b),
        ):
            versions = [(args.a, url_a, worker_a), (args.b, url_b, worker_b)]
            for round_ in range(args.rounds):
                for name, url, worker in versions[:: 1 if round_ % 2 == 0 else -1]:
                    figures[name].append(_cpu_ms_per_1000_chunks(url, worker, args.replies))

    print(harness._machine())
    print(f"{args.replies} JSON replies at once, {CHUNKS} chunks each at 50 tokens/s, "
          f"{args.rounds} rounds; worker CPU per 1,000 chunks, ms:")  # fmt: skip
    for label, name in (("A", args.a), ("B", args.b)):
        values = figures[name]
        listed = ", ".join(f"{value:.0f}" for value in values)
        print(f"  {label} {name:<40} median {statistics.median(values):6.1f}  ({listed})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
