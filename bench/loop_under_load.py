"""The I/O loop's path under C streams at once, with no gunicorn and no Flask.

What bench/stream_cpu.py's loop thread does, alone: the fake upstream (its own
process) streams to our transport (http1.py), the Anthropic provider decodes,
the chain and the outbox relay each chunk's frame, written to a real TCP
socket whose far end (a sink, its own process) reads and drops it. The fake
and the sink are pinned to CPU 1, this process to CPU 0; its CPU time per
stream and per chunk is printed. Run it at two chunk counts: the difference
is what a chunk costs, apart from what a stream costs.

Modes take parts away, to tell their costs apart:
- `full`: as above;
- `nowrite`: the frames are made but not written (the write's cost, by difference);
- `readonly`: the upstream's body is read through the transport and dropped
  (no decoding, no chain).

    .venv/bin/python bench/loop_under_load.py [--chunks 20] [--streams 200] [--mode full]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chain_relay import relay_stream  # noqa: E402  (this folder)

from assistant import aio  # noqa: E402
from assistant.config import ProviderSettings, Timeouts  # noqa: E402
from assistant.providers.anthropic import AnthropicProvider  # noqa: E402
from assistant.providers.base import Prompt  # noqa: E402
from assistant.request import Turn  # noqa: E402

SERVICE_CORE, OTHER_CORE = 0, 1
FAKE = """
import sys
sys.path.insert(0, {root!r})
from devtools.fake_upstream import FakeUpstream, Script
fake = FakeUpstream(default=Script(tokens=["x"] * {chunks}, ttft={ttft}, interval={interval}))
fake.start()
print(fake.url, flush=True)
sys.stdin.read()
"""
SINK = """
import asyncio
async def drop(reader, writer):
    while await reader.read(65536):
        pass
async def main():
    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""
BODY = b'{"model":"m","stream":true,"max_tokens":10,"messages":[{"role":"user","content":"x"}]}'


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--streams", type=int, default=200, help="at once")
    parser.add_argument("--rounds", type=int, default=5, help="streams per slot")
    parser.add_argument("--ttft", type=float, default=0.05)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--mode", choices=("full", "nowrite", "readonly"), default="full")
    args = parser.parse_args()

    os.sched_setaffinity(0, {OTHER_CORE})
    fake = subprocess.Popen(
        [sys.executable, "-c", FAKE.format(root=str(ROOT), chunks=args.chunks, ttft=args.ttft,
                                           interval=args.interval)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE)
    try:
        assert fake.stdout is not None and sink.stdout is not None
        fake_url = fake.stdout.readline().decode().strip()
        sink_port = int(sink.stdout.readline())
        os.sched_setaffinity(0, {SERVICE_CORE})
        user, system = aio.submit(_run(args, fake_url, sink_port)).result()
    finally:
        fake.kill()
        sink.kill()
    streams = args.streams * args.rounds
    per_stream = (user + system) / streams
    print(
        f"{args.mode}, C={args.streams}, {args.chunks} chunks: user {user:.0f} ms, "
        f"system {system:.0f} ms; {per_stream:.2f} ms per stream, "
        f"{per_stream / args.chunks * 1000:.1f} us per chunk"
    )
    return 0


async def _run(args: argparse.Namespace, fake_url: str, sink_port: int) -> tuple[float, float]:
    settings = ProviderSettings.from_env({"ANTHROPIC_BASE_URL": fake_url}, "anthropic")
    provider = AnthropicProvider(settings, "bench-key")
    prompt = Prompt(system=None, turns=(Turn("user", "hi"),))
    timeouts = Timeouts(connect=5, first_chunk=30, idle=30)
    sockets = []
    for _ in range(args.streams):
        sock = socket.create_connection(("127.0.0.1", sink_port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        sockets.append(sock)
    spread = args.ttft + args.interval * (args.chunks - 1)

    async def read_only() -> None:
        headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
        client = aio.http_client(timeouts)
        url = f"{fake_url}/v1/messages"
        async with client.stream("POST", url, content=BODY, headers=headers) as response:
            async for part in aio.body_chunks(response):
                if b"message_stop" in part:
                    return
        raise RuntimeError("a stream ended without message_stop")  # it would cost less

    async def relay(fd: int) -> None:
        def write(frame: bytes) -> bytes:
            if args.mode == "full":
                os.write(fd, b"%X\r\n%b\r\n" % (len(frame), frame))
            return b""

        await relay_stream([provider], prompt, timeouts, write, args.chunks)

    async def level(n: int) -> None:
        """`n` streams, `args.streams` at once, each slot's first start spread over one
        stream's length (as bench/stream_cpu.py starts them)."""
        remaining = [n]

        async def slot(sock: socket.socket) -> None:
            await asyncio.sleep(random.uniform(0, spread))
            while remaining[0] > 0:
                remaining[0] -= 1
                await (read_only() if args.mode == "readonly" else relay(sock.fileno()))

        await asyncio.gather(*(slot(sock) for sock in sockets))

    await level(args.streams)  # warm: connections made, code paths run once
    before = resource.getrusage(resource.RUSAGE_SELF)
    await level(args.streams * args.rounds)
    after = resource.getrusage(resource.RUSAGE_SELF)
    for sock in sockets:
        sock.close()
    return (after.ru_utime - before.ru_utime) * 1000, (after.ru_stime - before.ru_stime) * 1000


if __name__ == "__main__":
    raise SystemExit(main())
