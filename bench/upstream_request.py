"""CPU of one upstream request's round trip through httpx and our transport (http1.py).

The Anthropic provider's request (`open()`, with its body and headers) and
the decoding of a one-event answer (relayed as the chain relays it), on the I/O loop (`aio.submit`),
against a server in its own process that answers every request at once
with the same bytes. One request after another on a kept-alive connection;
this process is pinned to CPU 0 and the server to CPU 1, and the CPU time
of this process per request is printed: what a stream pays for its
upstream request before its first chunk, apart from the chunks.

    .venv/bin/python bench/upstream_request.py [--requests 3000] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from assistant import aio  # noqa: E402
from assistant.config import ProviderSettings, Timeouts  # noqa: E402
from assistant.providers.anthropic import AnthropicProvider  # noqa: E402
from assistant.providers.base import Event, Prompt  # noqa: E402
from assistant.request import Turn  # noqa: E402

SERVER_CORE, CLIENT_CORE = 1, 0

# An HTTP/1.1 server that answers each request (head + Content-Length body) with ANSWER.
SERVER = r"""
import asyncio, os, uvloop
os.sched_setaffinity(0, {{{core}}})
EVENT = b'event: message_stop\ndata: {{"type":"message_stop"}}\n\n'
ANSWER = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
          b"transfer-encoding: chunked\r\n\r\n"
          + b"%X\r\n%b\r\n0\r\n\r\n" % (len(EVENT), EVENT))

class Answering(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""

    def data_received(self, data):
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15:].split(b"\r\n")[0]) if at >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            self.transport.write(ANSWER)

async def main():
    server = await asyncio.get_running_loop().create_server(Answering, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(3600)

uvloop.run(main())
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--profile", action="store_true", help="then cProfile another round")
    args = parser.parse_args()

    os.sched_setaffinity(0, {CLIENT_CORE})
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER.format(core=SERVER_CORE)], stdout=subprocess.PIPE
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        env = {"ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}"}
        provider = AnthropicProvider(ProviderSettings.from_env(env, "anthropic"), "bench-key")
        prompt = Prompt(system=None, turns=(Turn("user", "hi"),))
        timeouts = Timeouts(connect=5, first_chunk=30, idle=30)

        async def one() -> None:
            async with provider.open(aio.http_client(timeouts), prompt) as answer:
                decoder = provider.decoder(answer)
                events: list[Event] = []

                def read(data: bytes) -> bool:
                    decoder.feed(data, events)
                    return decoder.finished

                await aio.BodyFeed(answer).into(read)
            decoder.end(events)

        async def requests(n: int) -> None:
            for _ in range(n):
                await one()

        aio.submit(requests(300)).result()  # warm-up: the connection, imports
        started = time.process_time()
        aio.submit(requests(args.requests)).result()
        per_request = (time.process_time() - started) / args.requests
        print(f"{args.requests} requests: {per_request * 1e6:.0f} us of CPU per request")
        if args.profile:

            async def profiled() -> str:
                profile = cProfile.Profile()
                profile.enable()
                await requests(args.requests)
                profile.disable()
                out = io.StringIO()
                pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(30)
                return out.getvalue()

            print(aio.submit(profiled()).result())
    finally:
        server.kill()
        server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
