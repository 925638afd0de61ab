"""Third-party SSE clients, each reading one reply from the real service, as a developer uses them.

Python: httpx-sse, sseclient-py (over a `requests` streaming POST), aiohttp and httpx's
`iter_lines` (both reading lines by hand), curl (`curl -sN`). Node.js: eventsource-parser,
@microsoft/fetch-event-source and the `eventsource` package, one small script each in
tests/clients/, installed from package-lock.json by scripts/node-tools.sh.

One service for the module (functions-framework in a subprocess) with a fake Anthropic API, a
one-second heartbeat, and a first token late enough that a `: ping` goes out before it. The
text has non-ASCII characters and the line breaks (U+2028, U+2029, U+0085) that line splitters
such as `str.splitlines` cut at. Every client must get every chunk in order and intact, a final
answer equal to the chunks joined, and `[DONE]`, with nothing it could not parse; and every
reply costs exactly one upstream request.

The Node scripts are skipped when node_modules lacks their package, unless VAC_REAL_CLIENTS is
set: then that is a failure. Rerun alone: `.venv/bin/pytest tests/test_real_clients.py`.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import requests
import sseclient
from httpx_sse import connect_sse

from devtools.fake_upstream import FakeUpstream, Script
from devtools.service import running_service

from .conftest import _SETTING_NAMES, _SETTING_PREFIXES

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "tests" / "clients"
PATH = "/vac/assistant/real-clients/sse"
INPUT = "Say it in every script."
TOKENS = ["é ", "😀 ", "漢字 ", "a\u2028b ", "c\u2029d ", "e\u0085f"]
# The first token comes after more than one heartbeat (HEARTBEAT_SECONDS=1): a ping before it.
REPLY = Script(tokens=TOKENS, ttft=1.6, interval=0.02)
TIMEOUT = 20  # seconds for one client to read one reply (it takes about two)


@dataclass
class Reading:
    """What a client saw of one reply; tests/clients/reading.mjs prints the same fields."""

    frames: list[dict[str, Any]] = field(default_factory=list)  # every payload but [DONE]
    done: bool = False  # `data: [DONE]` arrived
    pings: int | None = None  # comments before the first frame; None: the client hides them
    errors: list[str] = field(default_factory=list)  # unparsable payloads, data after [DONE]
    _lines: list[str] = field(default_factory=list)  # the current event's data lines

    def data(self, text: str) -> None:
        if self.done:
            self.errors.append(f"data after [DONE]: {text!r}")
        elif text == "[DONE]":
            self.done = True
        else:
            try:
                self.frames.append(json.loads(text))
            except json.JSONDecodeError as exc:
                self.errors.append(f"{exc}: {text!r}")

    def comment(self) -> None:
        if not self.frames:
            self.pings = (self.pings or 0) + 1

    def line(self, line: str) -> None:
        """One line without its ending, for the clients that split lines themselves."""
        if line.startswith(":"):
            self.comment()
        elif line.startswith("data:"):
            self._lines.append(line.removeprefix("data:").removeprefix(" "))
        elif line:
            self.errors.append(f"not a data line: {line!r}")
        elif self._lines:
            self.data("\n".join(self._lines))
            self._lines.clear()


# --- the Python clients: each POSTs {"user_input": INPUT} to `url` and reads one reply ---


def with_httpx_sse(url: str) -> Reading:
    reading = Reading()  # comments never reach the caller
    with (
        httpx.Client(timeout=TIMEOUT) as client,
        connect_sse(client, "POST", url, json={"user_input": INPUT}) as source,
    ):
        source.response.raise_for_status()
        for event in source.iter_sse():
            reading.data(event.data)
            if reading.done:
                break
    return reading


def with_sseclient_py(url: str) -> Reading:
    reading = Reading()  # comments never reach the caller
    response = requests.post(url, json={"user_input": INPUT}, stream=True, timeout=TIMEOUT)
    response.raise_for_status()
    client = sseclient.SSEClient(response)
    try:
        for event in client.events():
            reading.data(event.data)
            if reading.done:
                break
    finally:
        client.close()
    return reading


def with_aiohttp(url: str) -> Reading:
    async def read() -> Reading:
        reading = Reading(pings=0)
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, json={"user_input": INPUT}) as response,
        ):
            response.raise_for_status()
            async for line in response.content:  # split at b"\n" only
                reading.line(line.decode().removesuffix("\n"))
                if reading.done:
                    break
        return reading

    return asyncio.run(read())


def with_httpx_iter_lines(url: str) -> Reading:
    reading = Reading(pings=0)
    with httpx.stream("POST", url, json={"user_input": INPUT}, timeout=TIMEOUT) as response:
        response.raise_for_status()
        for line in response.iter_lines():  # str.splitlines: U+2028 and the like end lines too
            reading.line(line)
            if reading.done:
                break
    return reading


def with_curl(url: str) -> Reading:
    reading = Reading(pings=0)
    result = subprocess.run(
        ["curl", "-sN", "--fail-with-body", "--max-time", str(TIMEOUT), url,
         "-H", "Content-Type: application/json", "-d", json.dumps({"user_input": INPUT})],
        capture_output=True, check=True, timeout=TIMEOUT + 5,
    )  # fmt: skip
    for line in result.stdout.decode().split("\n"):  # the whole output: nothing after [DONE]
        reading.line(line)
    return reading


PYTHON_CLIENTS: dict[str, Callable[[str], Reading]] = {
    "httpx-sse": with_httpx_sse,
    "sseclient-py": with_sseclient_py,
    "aiohttp": with_aiohttp,
    "httpx-iter-lines": with_httpx_iter_lines,
    "curl": with_curl,
}

# --- the Node clients: npm package -> its script in tests/clients/ ---

NODE_CLIENTS = {
    "eventsource-parser": "eventsource-parser.mjs",
    "@microsoft/fetch-event-source": "fetch-event-source.mjs",
    "eventsource": "eventsource.mjs",
}


def node_command(package: str, url: str, *flags: str) -> list[str]:
    """The script's command line, or a skip (a failure with VAC_REAL_CLIENTS set) naming why."""
    node = shutil.which("node")
    if node is None:
        why = "node is not on PATH (Node.js 20 is needed)"
    elif not (ROOT / "node_modules" / package / "package.json").exists():
        why = f"node_modules/{package} is missing: bash scripts/node-tools.sh installs it"
    else:
        return [node, str(SCRIPTS / NODE_CLIENTS[package]), url, INPUT, *flags]
    if os.environ.get("VAC_REAL_CLIENTS"):
        pytest.fail(why, pytrace=False)
    pytest.skip(why)


def printed(stdout: str) -> list[Reading]:
    """The script's JSON lines. Split at "\n" only: JSON.stringify leaves U+2028 raw."""
    return [Reading(**json.loads(line)) for line in stdout.split("\n") if line]


def with_node(package: str, url: str) -> Reading:
    result = subprocess.run(
        node_command(package, url), capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    [reading] = printed(result.stdout)
    return reading


CLIENTS: dict[str, Callable[[str], Reading]] = {
    **PYTHON_CLIENTS,
    **{package: partial(with_node, package) for package in NODE_CLIENTS},
}

# --- the service ---


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def url(upstream: FakeUpstream) -> Iterator[str]:
    env = {
        "ASSISTANT_PROVIDERS": "anthropic",
        "ANTHROPIC_BASE_URL": upstream.url,
        "ANTHROPIC_API_KEY": "test-key",
        "HEARTBEAT_SECONDS": "1",
    }
    # The service inherits this process's environment: without the developer's settings, as
    # conftest's `isolated_env` gives each test (it runs only after a module's fixtures).
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name in _SETTING_NAMES or name.startswith(_SETTING_PREFIXES):
                patch.delenv(name)
        with running_service(env) as service:
            yield service.url + PATH


def check_reply(reading: Reading) -> None:
    assert reading.errors == []
    assert reading.done
    *chunks, final = reading.frames
    assert [chunk["chunk"] for chunk in chunks] == TOKENS  # every chunk, in order, intact
    assert all(chunk.keys() == {"chunk"} for chunk in chunks)
    assert final.keys() == {"answer", "metadata"}
    assert final["answer"] == "".join(TOKENS)
    assert reading.pings is None or reading.pings >= 1


@pytest.mark.parametrize("client", CLIENTS)
def test_the_client_reads_one_whole_reply(client: str, url: str, upstream: FakeUpstream) -> None:
    upstream.push(REPLY)
    before = len(upstream.requests)
    reading = CLIENTS[client](url)
    check_reply(reading)
    assert len(upstream.requests) == before + 1  # the client has closed: no more can come


def test_eventsource_left_open_after_done_posts_the_request_again(
    url: str, upstream: FakeUpstream
) -> None:
    """The README's warning: close the `eventsource` package's source on [DONE]."""
    upstream.push(REPLY, Script(tokens=["A second, billed reply."]))
    before = len(upstream.requests)
    command = node_command("eventsource", url, "--no-close")
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = upstream.wait_for_requests(before + 1, timeout=10)[before]
        assert first.finished.wait(10)
        ended = time.monotonic()
        again = upstream.wait_for_requests(before + 2, timeout=6)[before + 1]
        after = time.monotonic() - ended
    finally:
        process.kill()
        out, _ = process.communicate(timeout=10)
    assert after < 5  # seen: about 3 s, the package's default reconnection delay
    assert again.path == first.path
    assert again.body is not None and first.body is not None
    assert again.body["messages"] == first.body["messages"]  # the same question, asked again
    check_reply(printed(out.decode())[0])  # read whole, then sent again
