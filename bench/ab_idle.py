"""Two versions of the service side by side, idle: the added first chunk, paired.

On this shared machine the same code's idle first chunk moves by 0.3-0.5 ms
from one run to the next (bench/results/stream_cpu-round9.txt, part 2), more
than most changes to it. So both versions run at once, both pinned to the
service's core (only one works at a time: streams go one after another),
and each round streams once directly from the fake, once through A and once
through B, A and B taking turns to go first. A slow phase of the machine
then slows both alike, and the difference is read per round.

A version is a source folder (its own `main.py` and `assistant/`) or a git
revision of this repository, unpacked into a temporary folder; both run on
this checkout's virtualenv. The upstream is bench/stream_cpu.py's fake
(first token after 50 ms, 20 chunks 20 ms apart).

    .venv/bin/python bench/ab_idle.py HEAD~1 . [--rounds 300]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import stream_cpu as harness  # noqa: E402

from devtools.service import free_port, stop_process  # noqa: E402

ENV = {
    "THREADS": "16",
    "MAX_STREAMS_PER_USER": "16",
    "ANTHROPIC_API_KEY": "bench-key",
    "ASSISTANT_PROVIDERS": "anthropic",
    "AUTH_MODE": "none",
}


@contextlib.contextmanager
def _source(version: str, scratch: Path) -> Iterator[Path]:
    """The folder to run `version` from: itself, or the git revision unpacked."""
    if Path(version, "main.py").is_file():
        yield Path(version).resolve()
        return
    archive = subprocess.run(
        ["git", "archive", version], cwd=harness.ROOT, capture_output=True, check=True
    ).stdout
    folder = scratch / version.replace("/", "_")
    folder.mkdir()
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    yield folder


@contextlib.contextmanager
def _fake(chunks: int) -> Iterator[str]:
    """bench/stream_cpu.py's fake in its own process (first token after 50 ms, then one
    every 20 ms), on the client's core; its URL."""
    os.sched_setaffinity(0, {harness.CLIENT_CORE})
    fake = subprocess.Popen(
        [sys.executable, "-c", harness.FAKE.format(root=str(harness.ROOT), chunks=chunks,
                                                   ttft=0.05, interval=0.02)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=harness.ROOT,
    )  # fmt: skip
    try:
        assert fake.stdout is not None
        yield fake.stdout.readline().decode().strip()
    finally:
        if fake.stdin is not None:
            with contextlib.suppress(OSError):
                fake.stdin.close()
        stop_process(fake)  # type: ignore[arg-type]


@contextlib.contextmanager
def _service(source: Path, env: dict[str, str]) -> Iterator[tuple[str, int]]:
    """The service run from `source` on the service's core; its URL and its gunicorn
    worker's pid."""
    port = free_port()
    os.sched_setaffinity(0, {harness.SERVICE_CORE})
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "functions-framework"), "--target=assistant",
         "--source=main.py", "--host=127.0.0.1", f"--port={port}"],
        cwd=source, env={**os.environ, **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.sched_setaffinity(0, {harness.CLIENT_CORE})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service in {source} did not start")
            time.sleep(0.05)
        worker = harness._worker_pid(process.pid)
        harness._pin_all(process.pid, harness.SERVICE_CORE)
        harness._pin_all(worker, harness.SERVICE_CORE)
        yield url, worker
    finally:
        stop_process(process)


async def _first_ms(url: str, request: bytes, service: bool) -> float | None:
    host, port = url.removeprefix("http://").split(":")
    stream = await harness._stream(host, int(port), request, service, expected=20)
    if stream.error or stream.first is None:
        return None
    return (stream.first - stream.started) / 1e6


async def _rounds(fake: str, a: str, b: str, rounds: int) -> tuple[list[float], list[float]]:
    """Added first chunk (ms) through A and through B, round by round."""
    direct, via_a = harness.stream_requests(fake, a)
    _, via_b = harness.stream_requests(fake, b)
    for _ in range(8):  # warm-up: the loop, the pools, imports
        await _first_ms(a, via_a, True)
        await _first_ms(b, via_b, True)
    added_a: list[float] = []
    added_b: list[float] = []
    for n in range(rounds):
        plain = await _first_ms(fake, direct, False)
        order = [(a, via_a, added_a), (b, via_b, added_b)]
        results = []
        for url, request, _ in order if n % 2 == 0 else order[::-1]:
            results.append(await _first_ms(url, request, True))
        if plain is None or None in results:
            continue
        first_a, first_b = results if n % 2 == 0 else results[::-1]
        assert first_a is not None and first_b is not None
        added_a.append(first_a - plain)
        added_b.append(first_b - plain)
    return added_a, added_b


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("a", help="a source folder, or a git revision")
    parser.add_argument("b", help="a source folder, or a git revision")
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    with (
        _fake(chunks=20) as fake,
        tempfile.TemporaryDirectory(prefix="ab-idle-") as scratch,
        _source(args.a, Path(scratch)) as source_a,
        _source(args.b, Path(scratch)) as source_b,
        _service(source_a, {**ENV, "ANTHROPIC_BASE_URL": fake}) as (url_a, _),
        _service(source_b, {**ENV, "ANTHROPIC_BASE_URL": fake}) as (url_b, _),
    ):
        added_a, added_b = asyncio.run(_rounds(fake, url_a, url_b, args.rounds))

    print(harness._machine())
    print(f"{len(added_a)} rounds of {args.rounds} with no error; added first chunk, ms:")
    for name, added in ((f"A {args.a}", added_a), (f"B {args.b}", added_b)):
        print(f"  {name:<40} p50 {statistics.median(added):5.2f}  p90 {harness._q(added, 90):5.2f}")
    differences = [b - a for a, b in zip(added_a, added_b, strict=True)]
    print(
        f"  B - A, round by round: median {statistics.median(differences):+.2f}, "
        f"B faster in {sum(d < 0 for d in differences)} of {len(differences)} rounds"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
