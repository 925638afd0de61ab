"""How low an idle added first chunk can go on this machine: three relays, paired.

Issue 11 asks for an idle added first chunk of at most 1 ms, measured with
the service on one core and the client and the upstream on the other. This
runs three things between the same client and the same fake upstream
(bench/stream_cpu.py's), one stream at a time, each round taking them in a
new order, so that a slow phase of the machine slows all of them alike:

- `relay`: the least a Python program can do: one thread, blocking
  sockets, the request read and not checked, the upstream asked over a
  kept-alive connection (http.client), every text it sends relayed at once
  as one frame. No web framework, no thread hand-over, no I/O loop.
- `ff`: the least a function under functions-framework can do (gunicorn's
  gthread worker and Flask, as the card wants, `THREADS=256`): the same
  relay as the function's body, with its JSON body read through Flask.
- `service`: this project, as bench/stream_cpu.py runs it.

Each is in its own process, pinned to the service's core. It prints each
one's added first chunk (its first chunk's time minus the direct path's, in
the same round) at p50 and p90, and each one's difference from the relay
round by round. The relay's figure is what the topology costs (two more
hops across cores, each waking an idle core); `ff` minus `relay` is what
the entry point alone costs before any code of ours runs.

    .venv/bin/python bench/idle_floor.py [--rounds 150]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import stream_cpu as harness  # noqa: E402

from devtools.service import free_port, running_service, stop_process  # noqa: E402

# The shared part of both floors: ask the fake for its stream over a kept-alive
# connection and turn each of its text deltas into one frame of ours.
RELAY_CORE = """
import http.client, re, socket, threading

TEXT = re.compile(rb'"text":"(\\d{9,}) "')
HEADERS = {"x-api-key": "bench", "anthropic-version": "2023-06-01",
           "content-type": "application/json"}
_idle, _lock = [], threading.Lock()

def upstream_frames(host, port, body):
    with _lock:
        conn = _idle.pop() if _idle else None
    if conn is None:
        conn = http.client.HTTPConnection(host, port)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.request("POST", "/v1/messages", body=body, headers=HEADERS)
    answer = conn.getresponse()
    carry = b""
    while piece := answer.read1(65536):
        piece = carry + piece
        cut = piece.rfind(b"\\n") + 1
        carry, piece = piece[cut:], piece[:cut]
        frames = b"".join(b'data: {"chunk":"%s "}\\n\\n' % m[1] for m in TEXT.finditer(piece))
        if frames:
            yield frames
    with _lock:
        _idle.append(conn)
    yield b'data: {"answer":"x"}\\n\\ndata: [DONE]\\n\\n'
"""

RELAY = (
    RELAY_CORE
    + """
import os, sys
host, port, body = os.environ["FLOOR_HOST"], int(os.environ["FLOOR_PORT"]), sys.stdin.buffer.read()
listener = socket.create_server(("127.0.0.1", int(os.environ["FLOOR_LISTEN"])), backlog=128)
while True:
    client, _ = listener.accept()
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data, piece = b"", b"-"
    while piece and b"\\r\\n\\r\\n" not in data:
        data += (piece := client.recv(65536))
    if not piece:  # a probe that only connected
        client.close()
        continue
    head, _, rest = data.partition(b"\\r\\n\\r\\n")
    length = int(re.search(rb"(?i)content-length: *(\\d+)", head)[1])
    while len(rest) < length:
        rest += client.recv(65536)
    client.sendall(b"HTTP/1.1 200 OK\\r\\ncontent-type: text/event-stream\\r\\n"
                   b"connection: close\\r\\n\\r\\n")
    for frames in upstream_frames(host, port, body):
        client.sendall(frames)
    client.close()
"""
)

FF_MAIN = (
    RELAY_CORE
    + """
import os
import flask, functions_framework

HOST, PORT = os.environ["FLOOR_HOST"], int(os.environ["FLOOR_PORT"])
BODY = open(os.environ["FLOOR_BODY"], "rb").read()

@functions_framework.http
def floor(request):
    request.get_json()
    return flask.Response(upstream_frames(HOST, PORT, BODY), mimetype="text/event-stream")
"""
)


@contextmanager
def _relay(folder: Path, host: str, port: int, body: bytes) -> Iterator[str]:
    listen = free_port()
    script = folder / "relay.py"
    script.write_text(RELAY)
    env = {**os.environ, "FLOOR_HOST": host, "FLOOR_PORT": str(port), "FLOOR_LISTEN": str(listen)}
    os.sched_setaffinity(0, {harness.SERVICE_CORE})
    process = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, env=env)
    os.sched_setaffinity(0, {harness.CLIENT_CORE})
    assert process.stdin is not None
    process.stdin.write(body)
    process.stdin.close()
    try:
        _wait_for(listen)
        yield f"http://127.0.0.1:{listen}"
    finally:
        stop_process(process)  # type: ignore[arg-type]


@contextmanager
def _ff_floor(folder: Path, host: str, port: int, body: bytes) -> Iterator[tuple[str, int]]:
    (folder / "body.json").write_bytes(body)
    (folder / "main.py").write_text(FF_MAIN)
    listen = free_port()
    env = {**os.environ, "FLOOR_HOST": host, "FLOOR_PORT": str(port),
           "FLOOR_BODY": str(folder / "body.json"), "THREADS": "256"}  # fmt: skip
    functions_framework = Path(sys.executable).parent / "functions-framework"
    os.sched_setaffinity(0, {harness.SERVICE_CORE})
    process = subprocess.Popen(
        [str(functions_framework), "--target=floor", f"--source={folder / 'main.py'}",
         "--host=127.0.0.1", f"--port={listen}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.sched_setaffinity(0, {harness.CLIENT_CORE})
    try:
        _wait_for(listen)
        worker = harness._worker_pid(process.pid)
        harness._pin_all(worker, harness.SERVICE_CORE)
        yield f"http://127.0.0.1:{listen}", worker
    finally:
        stop_process(process)  # type: ignore[arg-type]


def _wait_for(port: int) -> None:
    """Until something listens on `port` (30 s at most)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _first_ms(stream: harness.Stream) -> float:
    if stream.error is not None or stream.first is None:
        raise RuntimeError(f"a stream failed: {stream.error}")
    return (stream.first - stream.started) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--load", type=int, default=200, help="C for the CPU part (0: none)")
    args = parser.parse_args()
    os.sched_setaffinity(0, {harness.CLIENT_CORE})
    fake = subprocess.Popen(
        [sys.executable, "-c", harness.FAKE.format(root=str(harness.ROOT), chunks=20, ttft=0.05,
                                                   interval=0.02)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=harness.ROOT,
    )  # fmt: skip
    with ExitStack() as stack, tempfile.TemporaryDirectory() as folder:
        stack.callback(stop_process, fake)
        assert fake.stdout is not None
        fake_url = fake.stdout.readline().decode().strip()
        fake_host, fake_port = fake_url.removeprefix("http://").split(":")
        direct, _ = harness.stream_requests(fake_url, "http://127.0.0.1:1")
        upstream_body = direct.partition(b"\r\n\r\n")[2]
        env = {"THREADS": "256", "MAX_STREAMS_PER_USER": "1000", "ANTHROPIC_API_KEY": "bench-key",
               "ASSISTANT_PROVIDERS": "anthropic", "AUTH_MODE": "none",
               "ANTHROPIC_BASE_URL": fake_url}  # fmt: skip
        os.sched_setaffinity(0, {harness.SERVICE_CORE})
        service = stack.enter_context(running_service(env))
        os.sched_setaffinity(0, {harness.CLIENT_CORE})
        workers = {"service": harness._worker_pid(service.process.pid)}
        harness._pin_all(workers["service"], harness.SERVICE_CORE)
        relay = _relay(Path(folder), fake_host, int(fake_port), upstream_body)
        ff_url, workers["ff"] = stack.enter_context(
            _ff_floor(Path(folder), fake_host, int(fake_port), upstream_body)
        )
        urls = {"relay": stack.enter_context(relay), "ff": ff_url, "service": service.url}
        requests = {name: harness.stream_requests(fake_url, url)[1] for name, url in urls.items()}

        def one(host: str, port: str, request: bytes, service: bool) -> harness.Stream:
            return asyncio.run(harness._level(host, int(port), request, service, 1, 1, 20, 0))[0]

        def stream(name: str) -> harness.Stream:
            return one(*urls[name].removeprefix("http://").split(":"), requests[name], True)

        for name in urls:  # warm-up: imports, the pools, the first connection
            for _ in range(5):
                _first_ms(stream(name))
        print(harness._machine())
        added: dict[str, list[float]] = {name: [] for name in urls}
        for _ in range(args.rounds):
            base = _first_ms(one(fake_host, fake_port, direct, False))
            for name in random.sample(list(urls), len(urls)):
                added[name].append(_first_ms(stream(name)) - base)
        loaded = {name: _cpu_under_load(urls[name], requests[name], pid, args.load)
                  for name, pid in workers.items() if args.load}  # fmt: skip
    print(
        f"{args.rounds} rounds; each: one stream straight to the fake, then one through each "
        "relay in a random order;\nupstream: first token after 50 ms, 20 chunks 20 ms apart"
    )
    print(
        f"{'':8} {'added first chunk p50':>22} {'p90':>6} | "
        f"{'minus relay, round by round: p50':>33}"
    )
    for name, values in added.items():
        minus = [a - b for a, b in zip(values, added["relay"], strict=True)]
        print(f"{name:8} {statistics.median(values):19.2f} ms {_q90(values):6.2f} | "
              f"{statistics.median(minus):30.2f} ms")  # fmt: skip
    for name, ms in loaded.items():
        print(f"{name:8} at C={args.load}, {args.load * 5} streams: {ms:.0f} ms of CPU per 1,000 "
              "chunks")  # fmt: skip
    return 0


def _cpu_under_load(url: str, request: bytes, worker: int, level: int) -> float:
    """The worker's CPU per 1,000 chunks relayed with `level` streams open at once
    (5 x `level` streams, starts spread over one stream's length)."""
    host, port = url.removeprefix("http://").split(":")
    before = sum(harness._cpu_ticks(worker))
    streams = asyncio.run(harness._level(host, int(port), request, True, level, level * 5, 20,
                                         0.05 + 0.02 * 19))  # fmt: skip
    ticks = sum(harness._cpu_ticks(worker)) - before
    if any(stream.error for stream in streams):
        raise RuntimeError(f"a stream failed under load at C={level}")
    return ticks * 1000 / harness.TICKS / (len(streams) * 20) * 1000


def _q90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1]


if __name__ == "__main__":
    raise SystemExit(main())
