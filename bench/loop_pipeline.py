"""CPU of the I/O loop's own pipeline per chunk, with no network: a tight A/B for its code.

From an upstream body's bytes to a written frame, the code a relayed chunk
runs on the loop: `Body.push` (http1.py) -> the chain's reader -> SSE
decoding (sse_events.py) -> the Anthropic provider's decoder -> the chain ->
the outbox, attached as for direct writes -> the chunk's frame -> `os.write`
to /dev/null. The body is an Anthropic
stream as the fake upstream sends it (20 text chunks, 22 reads, each read
its own loop step, as from a socket); only the connection under `Body`
is stood in for. Streams run one after another on a uvloop loop (or
`--together N` at once, their reads interleaved); the
process's CPU time per stream and per chunk is printed. bench/stream_cpu.py
measures the whole service; this measures the part of it that is ours on
the loop, with none of the noise of sockets and threads.

    .venv/bin/python bench/loop_pipeline.py [--streams 3000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chain_relay import relay_stream  # noqa: E402  (this folder)

from assistant.config import ProviderSettings, Timeouts  # noqa: E402
from assistant.http1 import RAW_BODY, Body  # noqa: E402
from assistant.providers.anthropic import AnthropicProvider  # noqa: E402
from assistant.providers.base import Prompt, upstream_json  # noqa: E402
from assistant.request import Turn  # noqa: E402

CHUNKS = int(os.environ.get("PIPELINE_CHUNKS", "20"))  # text chunks per stream


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def _reads() -> list[bytes]:
    """The stream's reads, as the fake upstream writes them."""
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": 10, "output_tokens": 1},
    }
    reads = [
        _event("message_start", {"type": "message_start", "message": message})
        + _event("ping", {"type": "ping"})
    ]
    for i in range(CHUNKS):
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": f"tok{i} "},
        }
        read = _event("content_block_delta", delta)
        if i == 0:
            start = {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            }
            read = _event("content_block_start", start) + read
        reads.append(read)
    end = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn"},
        "usage": {"output_tokens": CHUNKS},
    }
    reads.append(
        _event("content_block_stop", {"type": "content_block_stop", "index": 0})
        + _event("message_delta", end)
        + _event("message_stop", {"type": "message_stop"})
    )
    return reads


READS = _reads()


class _Connection:
    """The transport's connection, as `Body` uses it: READS, one per loop step, each
    handed to the reader's sink as `data_received` does (`Body.push`), or to a waiting
    read."""

    def __init__(self) -> None:
        self._reads = READS[::-1]
        self.pieces: list[bytes] = []
        self.sink: Callable[[bytes], bool] | None = None
        self.sink_stopped: bool | None = None

    def body_wait(self) -> asyncio.Future[None] | None:
        if not self._reads:
            return None  # the body's end
        waiter = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(self._arrive, waiter)
        return waiter

    def _arrive(self, waiter: asyncio.Future[None]) -> None:
        """The next read, in a loop step of its own, as from a socket."""
        self.pieces.append(self._reads.pop())
        if self.sink is None:
            waiter.set_result(None)
            return
        stopped = self.sink(self.take())
        if stopped or not self._reads:
            self.sink_stopped = stopped
            waiter.set_result(None)
        else:
            asyncio.get_running_loop().call_soon(self._arrive, waiter)

    def take(self) -> bytes:
        data = b"".join(self.pieces)
        self.pieces.clear()
        return data

    def set_read_timeout(self, seconds: float) -> None:
        pass

    def taken(self, size: int) -> None:
        pass

    def done(self) -> None:
        pass


class _Provider(AnthropicProvider):
    """The Anthropic provider, its request answered at once with READS."""

    @asynccontextmanager
    async def _post(
        self,
        client: httpx.AsyncClient,
        url: str,
        body: dict[str, Any],
        headers: dict[str, str],
        prompt: Prompt,
    ) -> AsyncIterator[httpx.Response]:
        upstream_json(body)  # the request body is encoded as for a real request
        body_stream = Body(_Connection())  # type: ignore[arg-type]
        yield httpx.Response(
            200,
            headers=[(b"content-type", b"text/event-stream")],
            stream=body_stream,
            extensions={RAW_BODY: body_stream},
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--streams", type=int, default=3000)
    parser.add_argument("--profile", action="store_true", help="then cProfile another round")
    parser.add_argument(
        "--together", type=int, default=1, help="streams at once, their reads interleaved"
    )
    args = parser.parse_args()

    provider = _Provider(ProviderSettings.from_env({}, "anthropic"), "bench-key")
    prompt = Prompt(system=None, turns=(Turn("user", "hi"),))
    timeouts = Timeouts(connect=5, first_chunk=30, idle=30)
    sink = os.open(os.devnull, os.O_WRONLY)

    def write(data: bytes) -> bytes:
        os.write(sink, data)
        return b""

    async def one_stream() -> None:
        await relay_stream([provider], prompt, timeouts, write, CHUNKS)

    async def one_after_another(n: int) -> None:
        for _ in range(n):
            await one_stream()

    async def streams(n: int) -> None:
        await asyncio.gather(*(one_after_another(n // args.together) for _ in range(args.together)))

    loop = uvloop.new_event_loop()
    loop.run_until_complete(streams(200))  # warm-up
    started = time.process_time()
    loop.run_until_complete(streams(args.streams))
    per_stream = (time.process_time() - started) / args.streams
    print(
        f"{args.streams} streams of {CHUNKS} chunks ({len(READS)} reads): "
        f"{per_stream * 1e6:.0f} us per stream, {per_stream / CHUNKS * 1e6:.1f} us per chunk"
    )
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        loop.run_until_complete(streams(args.streams))
        profile.disable()
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(30)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
