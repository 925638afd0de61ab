"""CPU per relayed chunk, and the latency we add, at C=1/50/200/500 streams.

One run, against the fake upstream (devtools/fake_upstream, in its own
process) and the real service (functions-framework + gunicorn, as
devtools/service.py starts it), with the service pinned to one core and the
benchmark client and the fake pinned to the other. At each level C streams
are kept open at once, each worker starting its next stream when the last
one ended (the first starts spread over one stream's length, as traffic
arrives; with --burst all C start at once), first straight against the
fake, then through the service.
It prints, per level:

- CPU of the gunicorn worker process (utime + stime from /proc/<pid>/stat,
  the delta over the level) per 1,000 chunks relayed and per stream, and
  the derived number of streams one vCPU carries at 50 tokens/s;
- added first-chunk latency: the first chunk's time from the request's
  start, through the service minus directly, at p50 and p99;
- added per-chunk latency: each chunk carries the fake's clock at the
  moment it was written (perf_counter_ns, one clock for every process here);
  the time it took to reach the client, through the service minus directly,
  at p50 and p99;
- errors (status not 200, a missing chunk, no final answer, no [DONE], a
  connection error), and the worker's largest RSS during the level;
- with --per-thread, the worker's CPU split by thread (from each thread's
  /proc schedstat): the upstream I/O loop, gunicorn's main thread (accept,
  the poller) and the rest (request threads), and into user and system time.

The client is a small asyncio one on raw sockets (TCP_NODELAY, one
connection per stream), cheap enough that the client's core is not the
bottleneck before the service's is. Numbers, not assertions: this machine is
shared and noisy; run it more than once. Run:

    .venv/bin/python bench/stream_cpu.py [--levels 1,50,200,500] [--chunks 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.service import running_service, stop_process  # noqa: E402

SERVICE_CORE, CLIENT_CORE = 0, 1
TICKS = os.sysconf("SC_CLK_TCK")

# The fake, in its own process: every text delta it writes carries its clock.
FAKE = """
import sys, time
sys.path.insert(0, {root!r})
from devtools.fake_upstream import FakeUpstream, Script
from devtools.fake_upstream.anthropic import Anthropic

delta = Anthropic.delta
def stamped(self, kind, piece):
    return delta(self, kind, f"{{time.perf_counter_ns()}} ")
Anthropic.delta = stamped

fake = FakeUpstream(default=Script(tokens=["x"] * {chunks}, ttft={ttft}, interval={interval}))
fake.start()
print(fake.url, flush=True)
sys.stdin.read()
fake.stop()
"""

# A chunk frame through the service; a text delta straight from the fake.
STAMPS = {
    True: re.compile(rb'data: \{"chunk":"(\d{9,}) "'),
    False: re.compile(rb'"text":"(\d{9,}) "'),
}


@dataclass
class Stream:
    started: int = 0  # perf_counter_ns
    first: int | None = None  # perf_counter_ns of the first chunk
    delays: list[int] = field(default_factory=list)  # ns from the fake's write to our read
    chunks: int = 0
    error: str | None = None


def _request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close",
            "Content-Type: application/json", f"Content-Length: {len(body)}"]  # fmt: skip
    head += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def stream_requests(fake_url: str, service_url: str) -> tuple[bytes, bytes]:
    """A stream asked of the fake directly, and the same stream asked of the service."""
    fake_host, fake_port = fake_url.removeprefix("http://").split(":")
    host, port = service_url.removeprefix("http://").split(":")
    direct_body = json.dumps({"model": "m", "max_tokens": 10, "stream": True,
                              "messages": [{"role": "user", "content": "x"}]}).encode()  # fmt: skip
    direct = _request(fake_host, int(fake_port), "/v1/messages", direct_body,
                      {"x-api-key": "bench", "anthropic-version": "2023-06-01"})  # fmt: skip
    body = json.dumps({"user_input": "benchmark"}).encode()
    via = _request(
        host, int(port), "/vac/assistant/bench/sse", body, {"Accept": "text/event-stream"}
    )
    return direct, via


async def _stream(host: str, port: int, request: bytes, service: bool, expected: int) -> Stream:
    result = Stream(started=time.perf_counter_ns())
    writer = None
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer.write(request)
        carry = b""
        seen = bytearray()
        while True:
            data = await asyncio.wait_for(reader.read(65536), 30)
            now = time.perf_counter_ns()
            if not data:
                break
            seen += data
            data = carry + data
            cut = data.rfind(b"\n") + 1
            carry, data = data[cut:], data[:cut]
            for match in STAMPS[service].finditer(data):
                result.chunks += 1
                result.delays.append(now - int(match[1]))
                if result.first is None:
                    result.first = now
        text = bytes(seen)
        status = text[9:12]
        if status != b"200":
            result.error = f"status {status.decode(errors='replace')}"
        elif result.chunks != expected:
            result.error = f"{result.chunks} chunks of {expected}"
        elif service and (b'data: {"answer"' not in text or b"data: [DONE]" not in text):
            result.error = "no final answer or [DONE]"
        elif not service and b"message_stop" not in text:
            result.error = "no message_stop"
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        result.error = type(exc).__name__
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return result


async def _level(
    host: str, port: int, request: bytes, service: bool, concurrency: int, streams: int,
    expected: int, spread: float,
) -> list[Stream]:  # fmt: skip
    """`streams` streams, at most `concurrency` at once; starts spread over `spread` s."""
    results: list[Stream] = []
    remaining = [streams]

    async def worker() -> None:
        await asyncio.sleep(random.uniform(0, spread) if concurrency > 1 else 0)
        while remaining[0] > 0:
            remaining[0] -= 1
            results.append(await _stream(host, port, request, service, expected))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def _q(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 10) - 1]


def _cpu_ticks(pid: int) -> tuple[int, int]:
    """The process's user and system CPU, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]), int(fields[12])  # utime, stime (fields 14 and 15)


def _thread_cpu_ms(pid: int) -> dict[str, float]:
    """CPU ms per thread kind (from schedstat, in ns): the upstream I/O loop,
    gunicorn's main thread, the request threads and the rest."""
    cpu: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            name = (task / "comm").read_text().strip()
            ns = int((task / "schedstat").read_text().split()[0])
            kind = "loop" if name == "upstream-io" else "main" if task.name == str(pid) else "other"
            cpu[kind] = cpu.get(kind, 0.0) + ns / 1e6
    return cpu


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _worker_pid(master: int) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise RuntimeError("no gunicorn worker")


def _pin_all(pid: int, core: int) -> None:
    """Every thread of `pid` (affinity is per thread) on `core`."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), {core})


class _RssWatch:
    """The largest RSS of `pid` while the level runs, sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _rss_mib(self.pid))
            _pin_all(self.pid, SERVICE_CORE)  # threads started since (the pool grows)

    def __enter__(self) -> _RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mib(self.pid))


def _machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor())  # fmt: skip
    load = Path("/proc/loadavg").read_text().split()[:3]
    return (
        f"machine: {os.cpu_count()} vCPU ({model}), Linux {platform.release()}, "
        f"Python {platform.python_version()}; load average at start {' '.join(load)}; "
        f"service pinned to CPU {SERVICE_CORE}, client and fake upstream to CPU {CLIENT_CORE}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--levels", default="1,50,200,500")
    parser.add_argument("--chunks", type=int, default=20, help="text chunks per stream")
    parser.add_argument("--ttft", type=float, default=0.05, help="upstream first token (s)")
    parser.add_argument("--interval", type=float, default=0.02, help="between tokens (s)")
    parser.add_argument("--rounds", default="40,8,5,3", help="streams per worker, per level")
    parser.add_argument("--threads", type=int, default=256)  # issue 11's harness
    parser.add_argument(
        "--per-thread",
        action="store_true",
        help="also split the CPU: I/O loop thread, gunicorn main, request threads",
    )
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the service")
    parser.add_argument(
        "--burst", action="store_true", help="each level's first C streams start at once"
    )
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    rounds = [int(r) for r in args.rounds.split(",")]
    rounds = (rounds + [rounds[-1]] * len(levels))[: len(levels)]
    spread = 0.0 if args.burst else args.ttft + args.interval * (args.chunks - 1)

    # The service is started from this process: it inherits the service core.
    os.sched_setaffinity(0, {SERVICE_CORE})
    env = {
        "THREADS": str(args.threads),
        "MAX_STREAMS_PER_USER": "1000",  # every stream is the same anonymous user
        "ANTHROPIC_API_KEY": "bench-key",
        "ASSISTANT_PROVIDERS": "anthropic",
        "AUTH_MODE": "none",
        **dict(item.split("=", 1) for item in args.env),
    }
    os.sched_setaffinity(0, {CLIENT_CORE})
    fake = subprocess.Popen(
        [sys.executable, "-c", FAKE.format(root=str(ROOT), chunks=args.chunks, ttft=args.ttft,
                                           interval=args.interval)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        assert fake.stdout is not None
        fake_url = fake.stdout.readline().decode().strip()
        env["ANTHROPIC_BASE_URL"] = fake_url
        os.sched_setaffinity(0, {SERVICE_CORE})
        with running_service(env) as service:
            os.sched_setaffinity(0, {CLIENT_CORE})
            worker = _worker_pid(service.process.pid)
            _pin_all(service.process.pid, SERVICE_CORE)
            _pin_all(worker, SERVICE_CORE)
            _report(args, levels, rounds, spread, fake_url, service.url, worker)
    finally:
        if fake.stdin is not None:
            with contextlib.suppress(OSError):
                fake.stdin.close()
        stop_process(fake)  # type: ignore[arg-type]
    return 0


def _report(
    args: argparse.Namespace, levels: list[int], rounds: list[int], spread: float,
    fake_url: str, service_url: str, worker: int,
) -> None:  # fmt: skip
    fake_host, fake_port = fake_url.removeprefix("http://").split(":")
    host, port = service_url.removeprefix("http://").split(":")
    direct, via = stream_requests(fake_url, service_url)

    def run(request: bytes, p: int, service: bool, c: int, n: int) -> list[Stream]:
        return asyncio.run(_level(fake_host if not service else host, p, request, service,
                                  c, n, args.chunks, spread))  # fmt: skip

    run(via, int(port), True, 4, 8)  # warm-up: the loop, the pool, imports
    print(_machine())
    print(
        f"service: functions-framework, THREADS={args.threads}; upstream: the fake's Anthropic "
        f"stream, {args.chunks} text chunks, first after {args.ttft * 1000:.0f} ms, then every "
        f"{args.interval * 1000:.0f} ms ({1 / args.interval:.0f} tokens/s); "
        + ("each level's first streams start at once" if args.burst else "starts spread")
    )
    if args.env:
        print("service env: " + " ".join(args.env))
    print(
        f"{'C':>4} {'streams':>7} | {'CPU ms/1k chunks':>16} {'ms/stream':>9} "
        f"{'streams/vCPU@50t/s':>18} | {'+first p50/p99 ms':>17} | {'+chunk p50/p99 ms':>17} | "
        f"{'errors':>6} | {'RSS MiB':>7} | {'direct first p50 ms':>19}"
    )
    for level, r in zip(levels, rounds, strict=True):
        n = level * r
        plain = run(direct, int(fake_port), False, level, n)
        with _RssWatch(worker) as watch:
            before, threads_before = _cpu_ticks(worker), _thread_cpu_ms(worker)
            served = run(via, int(port), True, level, n)
            after = _cpu_ticks(worker)
            user_ms, system_ms = (
                (a - b) * 1000 / TICKS for a, b in zip(after, before, strict=True)
            )
            cpu_ms = user_ms + system_ms
            threads_after = _thread_cpu_ms(worker)
        chunks = sum(s.chunks for s in served)
        errors = [s.error for s in served if s.error] + [s.error for s in plain if s.error]
        first_via = [(s.first - s.started) / 1e6 for s in served if s.first]
        first_direct = [(s.first - s.started) / 1e6 for s in plain if s.first]
        delay_via = [d / 1e6 for s in served for d in s.delays]
        delay_direct = [d / 1e6 for s in plain for d in s.delays]
        per_chunk = cpu_ms / max(chunks, 1)
        print(
            f"{level:>4} {n:>7} | {per_chunk * 1000:16.0f} {cpu_ms / max(n, 1):9.2f} "
            f"{1000 / (per_chunk * 50) if per_chunk else float('inf'):18.0f} | "
            f"{_q(first_via, 50) - _q(first_direct, 50):7.1f} / "
            f"{_q(first_via, 99) - _q(first_direct, 99):7.1f} | "
            f"{_q(delay_via, 50) - _q(delay_direct, 50):7.2f} / "
            f"{_q(delay_via, 99) - _q(delay_direct, 99):7.2f} | {len(errors):>6} | "
            f"{watch.peak:7.0f} | {_q(first_direct, 50):19.1f}",
            flush=True,
        )
        if args.per_thread:
            split = {kind: threads_after.get(kind, 0) - threads_before.get(kind, 0)
                     for kind in ("loop", "main", "other")}  # fmt: skip
            shares = [f"{kind} {ms:.0f} ({ms * 100 / max(cpu_ms, 1e-9):.0f}%)"
                      for kind, ms in split.items()]  # fmt: skip
            print("     CPU ms by thread: " + ", ".join(shares)
                  + f"; user {user_ms:.0f}, system {system_ms:.0f}")  # fmt: skip
        if errors:
            kinds = sorted({e for e in errors if e})
            print(f"     errors: {', '.join(kinds[:5])}")


if __name__ == "__main__":
    raise SystemExit(main())
