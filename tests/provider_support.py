"""Helpers shared by the provider tests and the stream-decoder tests.

test_all_providers.py drives all four providers against devtools.fake_upstream on
loopback, one scenario for all of them, with what each must come to as data in
provider_cases.py; test_anthropic.py, test_openai.py, test_gemini.py and
test_ollama.py hold what only one of them does; test_sse_events.py and
test_ndjson.py feed the decoders those providers stand on. The helpers they share
live here: running a provider or a chain, the fake's failures, bodies in pieces.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from itertools import pairwise
from typing import Any, TypeVar

import httpx
import pytest

from assistant import aio
from assistant.chain import Attempt, Chain, Chunk, Item
from assistant.config import ProviderSettings, Timeouts
from assistant.providers.anthropic import AnthropicProvider
from assistant.providers.base import (
    Event,
    Prompt,
    Provider,
    ProviderError,
    Working,
    translate_http_error,
)
from assistant.request import Turn
from devtools.fake_upstream import FakeUpstream, Script

PROMPT = Prompt(system="Be brief.", turns=(Turn("user", "Hi there"),))
FAKE_MODEL = "fake-claude"  # the model the fake reports unless a script says otherwise

P = TypeVar("P", bound=Provider)


@pytest.fixture(name="upstream")
def upstream_fixture() -> Iterator[FakeUpstream]:
    """A fake upstream on loopback that answers with a default `Script()` when none is queued.

    A test module gets it with `from .provider_support import upstream_fixture as
    upstream_fixture` (the redundant alias tells the linter the import is meant).
    """
    with FakeUpstream(default=Script()) as fake:
        yield fake


# -- providers and their settings ---------------------------------------------------------


def provider_settings(
    name: str, base_url: str, model: str, key_name: str, /, **changes: Any
) -> ProviderSettings:
    """ProviderSettings with the defaults every provider test starts from.

    1024 max tokens, no temperature, thinking off (with a budget of 2048); `changes`
    replace any field, the four given ones too.
    """
    base = ProviderSettings(
        name=name,
        base_url=base_url,
        model=model,
        key_name=key_name,
        max_tokens=1024,
        temperature=None,
        thinking=False,
        thinking_budget=2048,
    )
    return dataclasses.replace(base, **changes)


def anthropic_settings(url: str, **changes: Any) -> ProviderSettings:
    """Settings for an Anthropic-format provider at `url` (model "claude-test")."""
    return provider_settings("anthropic", url, "claude-test", "ANTHROPIC_API_KEY", **changes)


def named(provider: P, name: str) -> P:
    """`provider`, renamed: the chain tells its attempts apart by name."""
    provider.name = name
    return provider


def anthropic_at(url: str, name: str = "anthropic") -> AnthropicProvider:
    """An AnthropicProvider at `url`: the provider under test in test_anthropic.py, and
    the second provider a chain falls through to in the other provider tests."""
    return named(AnthropicProvider(anthropic_settings(url), "test-key"), name)


# -- one provider on its own --------------------------------------------------------------


def stream_events(
    provider_class: Callable[[ProviderSettings, str], Provider],
    settings: ProviderSettings,
    prompt: Prompt = PROMPT,
    key: str = "test-key",
    read_timeout: float = 5,
    working: bool = False,
) -> tuple[list[Event], ProviderError | None]:
    """Everything `provider_class(settings, key)` yielded, and the ProviderError it ended
    with (if any). `Working` events only with `working` (the chain's timing; most tests
    compare the output alone).

    The provider streams on a fresh httpx client (5 s timeouts, `read_timeout` between
    reads). httpx errors (a dropped connection, a read timeout) escape a provider by
    design, since the chain translates them in one place; they are translated here the
    same way, with `translate_http_error`. Each test file binds this to its provider
    class as `run_provider`.
    """

    async def collect() -> tuple[list[Event], ProviderError | None]:
        events: list[Event] = []
        timeout = httpx.Timeout(5, read=read_timeout)
        # Plain HTTP on loopback: no certificate store to load (it costs ~50 ms a client).
        async with httpx.AsyncClient(timeout=timeout, verify=False) as client:
            try:
                async for event in provider_events(provider_class(settings, key), client, prompt):
                    if working or not isinstance(event, Working):
                        events.append(event)
            except ProviderError as error:
                return events, error
            except httpx.HTTPError as exc:
                return events, translate_http_error(exc)
        return events, None

    return asyncio.run(collect())


async def provider_events(
    provider: Provider, client: httpx.AsyncClient, prompt: Prompt
) -> AsyncIterator[Event]:
    """The provider's reply as events, from its own `open` and `decoder`, read as httpx
    hands the body out (the chain feeds the same decoder from the connection's callback,
    aio.BodyFeed). httpx's errors come out as they are."""
    async with provider.open(client, prompt) as response:
        decoder = provider.decoder(response)
        async for data in response.aiter_bytes():
            events: list[Event] = []
            try:
                decoder.feed(data, events)
            finally:
                for event in events:
                    yield event
            if decoder.finished:
                break
    events = []
    try:
        decoder.end(events)
    finally:
        for event in events:
            yield event


# -- providers inside the chain, on the I/O loop ------------------------------------------


@dataclasses.dataclass
class ChainRun:
    """What one `Chain.run()` produced.

    `items` are what it emitted, `chain` holds its attempts, usage, provider and model,
    `errors` is the ProviderError each attempt ended with (None for a success), and
    `seconds` is how long the run took.
    """

    items: list[Item]
    chain: Chain
    errors: list[ProviderError | None]
    seconds: float

    @property
    def outcomes(self) -> list[str]:
        return [attempt.outcome for attempt in self.chain.attempts]

    @property
    def text(self) -> str:
        return "".join(item.text for item in self.items if isinstance(item, Chunk))


def run_chain(
    providers: Sequence[Provider],
    timeouts: Timeouts,
    wait: float = 10,
    refresh_key: Callable[[Provider], Provider | None] | None = None,
    prompt: Prompt = PROMPT,
) -> ChainRun:
    """Run a Chain over `providers` on the app's I/O loop (`assistant.aio`), as the
    endpoint does, waiting at most `wait` seconds for it to finish."""
    items: list[Item] = []
    errors: list[ProviderError | None] = []

    def on_attempt(attempt: Attempt, error: ProviderError | None) -> None:
        errors.append(error)

    chain = Chain(
        providers, prompt, timeouts, items.append, on_attempt=on_attempt, refresh_key=refresh_key
    )
    started = time.monotonic()
    aio.submit(chain.run()).result(timeout=wait)
    return ChainRun(items, chain, errors, time.monotonic() - started)


# -- the fake's failures ------------------------------------------------------------------

# What each `fail` of the fake (devtools.fake_upstream.FAILS) comes to before any text,
# all but "no_text": that one is a clean end, whose StreamEnd is each provider's own.
# The hangs end on the client's read timeout.
FAIL_CODES = {
    "error_event": "upstream_error",
    "error_data": "upstream_error",
    "hang": "upstream_timeout",
    "hang_headers": "upstream_timeout",
    "empty": "upstream_incomplete",
    "cut": "upstream_incomplete",
    "no_stop": "upstream_incomplete",
}

# What each `fail_mode` of the fake (devtools.fake_upstream.FAIL_MODES) comes to when it
# fires after `fail_after` pieces.
FAIL_MODE_CODES = {
    "error_event": "upstream_error",
    "error_data": "upstream_error",
    "cut": "upstream_incomplete",
    "hang": "upstream_timeout",
    "no_stop": "upstream_incomplete",
}


# -- bodies in pieces ---------------------------------------------------------------------


def anthropic_event(name: str, data: dict[str, object]) -> bytes:
    """One event of Anthropic's stream, as it goes on the wire."""
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def text_delta(text: str) -> bytes:
    """Anthropic's event for a piece of text in the first content block."""
    delta = {"type": "text_delta", "text": text}
    return anthropic_event(
        "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
    )


def anthropic_text_stream(pieces: Sequence[str]) -> bytes:
    """A whole Anthropic stream whose text comes in `pieces`, one event each."""
    start = {"type": "message_start", "message": {"model": "m"}}
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}
    stop = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}
    return b"".join(
        [
            anthropic_event("message_start", start),
            anthropic_event("content_block_start", block),
            *(text_delta(piece) for piece in pieces),
            anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            anthropic_event("message_delta", stop),
            anthropic_event("message_stop", {"type": "message_stop"}),
        ]
    )


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """`data` cut at each of `cuts` that falls inside it (repeats and the ends ignored)."""
    inside = sorted({cut for cut in cuts if 0 < cut < len(data)})
    return [data[start:end] for start, end in pairwise([0, *inside, len(data)])]


def first_multibyte(data: bytes) -> int | None:
    """Where the first multi-byte UTF-8 character of `data` starts, if it has one."""
    return next((i for i, byte in enumerate(data) if byte >= 0xC0), None)


def sse_cuts(data: bytes) -> set[int]:
    """Awkward places to cut an SSE body: mid-line, between the first CR and LF, inside
    the first multi-byte UTF-8 character, inside `[DONE]`, and mid-file."""
    cuts = {data.index(b"data: ") + 3, len(data) // 2, len(data) - 5}
    if b"\r\n" in data:
        cuts.add(data.index(b"\r\n") + 1)
    start = first_multibyte(data)
    if start is not None:
        cuts.add(start + 1)
    if b"[DONE]" in data:
        cuts.add(data.index(b"[DONE]") + 3)
    return cuts


def awkward_sse_chunks(data: bytes) -> list[bytes]:
    """An SSE body in pieces, cut at `sse_cuts`: what a fixture replay sends."""
    return split_at(data, sse_cuts(data))


def awkward_gemini_chunks(data: bytes) -> list[bytes]:
    """A Gemini body cut as `sse_cuts` does, and inside CR LF CR LF, inside a UTF-8
    character once more, and in a bare JSON error tail."""
    cuts = sse_cuts(data)
    separator = data.find(b"\r\n\r\n")
    if separator >= 0:
        cuts |= {separator + 1, separator + 2, separator + 3}  # CR|LF, CRLF|CRLF, CR|LF
    start = first_multibyte(data)
    if start is not None:
        cuts |= {start + 1, start + 2}
    tail = data.find(b'"error"')
    if tail >= 0:
        cuts.add(tail + 4)
    return split_at(data, cuts)


def awkward_ndjson_chunks(data: bytes) -> list[bytes]:
    """An NDJSON body cut mid-line, between `}` and its LF, inside UTF-8 characters, and
    mid-file."""
    cuts = {
        data.find(b'"content"') + 4,
        data.index(b"\n"),  # the first line's LF starts the second read
        data.index(b"\n") + 1,
        len(data) // 2,
        len(data) - 5,
    }
    start = first_multibyte(data)
    if start is not None:
        cuts.add(start + 1)
    if b"\xe2\x80\xa8" in data:  # U+2028, cut inside it
        cuts.add(data.index(b"\xe2\x80\xa8") + 2)
    return split_at(data, cuts)


def one_byte_reads(data: bytes | str) -> list[bytes]:
    """The bytes of `data` (UTF-8, if text), one a read."""
    raw = data.encode() if isinstance(data, str) else data
    return [raw[i : i + 1] for i in range(len(raw))]


class ChunkStream(httpx.AsyncByteStream):
    """The body arrives in exactly these reads."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


def chunked_response(chunks: list[bytes], content_type: str | None) -> httpx.Response:
    """A real 200 `httpx.Response` whose body arrives in exactly these reads, so httpx's
    own decoding runs as on a live socket (no content-type header if it is None)."""
    headers = {"content-type": content_type} if content_type is not None else {}
    return httpx.Response(200, headers=headers, stream=ChunkStream(chunks))


def utf8_split_cases(before: bytes, after: bytes) -> list[Any]:
    """pytest params: UTF-8 characters cut across reads, inside one record of a format
    that starts with `before` and ends with `after`; each with the text it must give."""
    return [
        pytest.param([before + b"caf\xc3", b"\xa9" + after], "café", id="e-acute-two-reads"),
        pytest.param([before + b"\xe2", b"\x82", b"\xac" + after], "€", id="euro-three-reads"),
        pytest.param(
            [before + b"\xf0\x9f", b"\x98", b"\x80!" + after], "😀!", id="emoji-three-reads"
        ),
        pytest.param(
            [before + b"\xf0", b"\x9f", b"\x98", b"\x80" + after], "😀", id="emoji-four-reads"
        ),
        pytest.param(
            [before + b"\xe2\x82\xac\xe2", b"\x82\xac\xe2\x82", b"\xac" + after],
            "€€€",
            id="in-a-row",
        ),
    ]
