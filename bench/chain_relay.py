"""One stream relayed through the loop's own path, as the service relays it: the
chain, an outbox attached for direct writes, each chunk's frame written by `write`.
Shared by bench/loop_pipeline.py and bench/loop_under_load.py (run as scripts, they
import it from this folder)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from assistant import sse
from assistant.chain import Chain, Chunk
from assistant.config import Timeouts
from assistant.outbox import DirectWrites, Outbox
from assistant.providers.base import Prompt, Provider


async def relay_stream(
    providers: Sequence[Provider],
    prompt: Prompt,
    timeouts: Timeouts,
    write: Callable[[bytes], bytes],
    chunks: int,
) -> None:
    """One stream, relayed whole: a stream that relayed fewer than `chunks` chunks (it
    failed, and would cost less and mislead) raises RuntimeError."""
    relayed: list[Chunk] = []

    def frame(chunk: Chunk) -> bytes:
        relayed.append(chunk)
        return sse.chunk_frame(chunk.text)

    outbox = Outbox()
    outbox.attach(DirectWrites(frame=frame, write=write))
    chain = Chain(providers, prompt, timeouts, emit=outbox.put, room=outbox.room)
    await chain.run()
    if len(relayed) != chunks:
        # The attempts say why (a bench whose stand-in no longer fits the code fails here).
        raise RuntimeError(
            f"a stream relayed {len(relayed)} of {chunks} chunks: {chain.report().attempts}"
        )
