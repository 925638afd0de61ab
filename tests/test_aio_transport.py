"""Our transport (assistant/http1.py, under aio.py's client) fails the way httpcore did: the
same httpx exceptions, so the chain's error codes do not change."""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
from pathlib import Path

import httpx
import pytest

from assistant import aio
from assistant.config import Timeouts
from assistant.providers.base import translate_http_error

from .raw_http import one_answer


async def _read(url: str, timeouts: Timeouts) -> bytes:
    client = aio.http_client(timeouts)
    async with client.stream("POST", url, content=b"{}") as response:
        return b"".join([part async for part in response.aiter_bytes()])


def _code(url: str, idle: float = 5.0) -> str:
    timeouts = Timeouts(connect=2, first_chunk=min(5.0, idle), idle=idle, reply=10)
    try:
        aio.submit(_read(url, timeouts)).result(timeout=10)
    except httpx.HTTPError as exc:
        return translate_http_error(exc).code
    return "ok"


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"


def test_a_body_read_whole() -> None:
    body = HEAD + b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    timeouts = Timeouts(connect=2, first_chunk=5, idle=5)
    with one_answer(body) as url:
        assert aio.submit(_read(url, timeouts)).result(timeout=10) == b"hello"


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (HEAD + b"transfer-encoding: chunked\r\n\r\n5\r\nhel", "upstream_incomplete"),
        (HEAD + b"content-length: 10\r\n\r\nhello", "upstream_incomplete"),
        (b"", "upstream_incomplete"),  # closed before any status line
        (b"garbage\r\n\r\n", "upstream_incomplete"),
    ],
)
def test_a_dropped_or_broken_answer_is_incomplete(answer: bytes, code: str) -> None:
    with one_answer(answer) as url:
        assert _code(url) == code


def test_silence_past_the_idle_timeout_is_a_timeout() -> None:
    answer = HEAD + b"transfer-encoding: chunked\r\n\r\n"
    with one_answer(answer, then_wait=3) as url:
        assert _code(url, idle=0.3) == "upstream_timeout"


async def _read_past_the_first_chunk(url: str, timeouts: Timeouts) -> bytes:
    """Reads as a provider does, telling the transport when the first chunk is in."""
    client = aio.http_client(timeouts)
    parts = []
    async with client.stream("POST", url, content=b"{}") as response:
        async for part in aio.body_chunks(response):
            if not parts:
                aio.allow_silence(response, timeouts.idle)
            parts.append(part)
    return b"".join(parts)


@pytest.mark.parametrize("started", [True, False], ids=["streaming", "before-first-chunk"])
def test_the_socket_waits_for_the_first_chunk_then_for_the_idle_gap(started: bool) -> None:
    """Until the first chunk the socket may wait FIRST_CHUNK_TIMEOUT_SECONDS, longer
    than the idle gap here; once it is in, a silence past IDLE_TIMEOUT_SECONDS is one."""
    first = b"5\r\nhello\r\n" if started else b""
    answer = HEAD + b"transfer-encoding: chunked\r\n\r\n" + first
    timeouts = Timeouts(connect=2, first_chunk=3, idle=0.3, reply=10)
    with one_answer(answer, then_wait=1) as url:
        try:
            aio.submit(_read_past_the_first_chunk(url, timeouts)).result(timeout=10)
        except httpx.HTTPError as exc:
            code = translate_http_error(exc).code
        else:
            code = "ok"
    # Streaming: cut after 0.3 s of silence. Before the first chunk: the 1 s silence
    # is within the 3 s the first chunk may take, and the answer then ends unfinished.
    assert code == ("upstream_timeout" if started else "upstream_incomplete")


def test_a_refused_connection_is_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert _code(f"http://127.0.0.1:{port}") == "upstream_unreachable"


def test_a_streamed_request_on_the_short_way_keeps_what_httpx_send_gives() -> None:
    """`send(stream=True)` skips httpx's layers around the transport (aio._UpstreamClient):
    the response and a failure still know their request, and a client given an event
    hook is served by httpx's own send(), hook and all."""
    timeouts = Timeouts(connect=2, first_chunk=5, idle=5)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"

    async def exchange(client: httpx.AsyncClient, url: str) -> httpx.Response:
        request = client.build_request("POST", url, content=b"{}")
        response = await client.send(request, stream=True)
        await response.aread()
        await response.aclose()
        assert response.request is request
        return response

    async def failure(client: httpx.AsyncClient) -> httpx.RequestError:
        request = client.build_request("POST", refused, content=b"{}")
        with pytest.raises(httpx.ConnectError) as caught:
            await client.send(request, stream=True)
        assert caught.value.request is request
        return caught.value

    with one_answer(HEAD + b"content-length: 2\r\n\r\nok") as url:
        response = aio.submit(exchange(aio.http_client(timeouts), url)).result(timeout=10)
    assert response.content == b"ok"
    aio.submit(failure(aio.http_client(timeouts))).result(timeout=10)

    seen: list[httpx.Request] = []

    async def hook(request: httpx.Request) -> None:
        seen.append(request)

    hooked = aio._UpstreamClient(
        transport=aio.Http1Transport(aio._TLS, keepalive_seconds=1), event_hooks={"request": [hook]}
    )
    with one_answer(HEAD + b"content-length: 2\r\n\r\nok") as url:
        response = aio.submit(exchange(hooked, url)).result(timeout=10)
    assert seen == [response.request]
    aio.submit(hooked.aclose()).result(timeout=5)


def test_credentials_in_the_url_are_sent_as_httpx_sends_them() -> None:
    """A base URL with a user and password in it (an Ollama behind a proxy with basic auth)
    takes httpx's own send(), whose auth step sends them: the short way would not."""
    timeouts = Timeouts(connect=2, first_chunk=5, idle=5)
    received: list[bytes] = []

    async def exchange(url: str) -> None:
        client = aio.http_client(timeouts)
        with_user = url.replace("http://", "http://user:secret@")
        response = await client.send(client.build_request("POST", with_user), stream=True)
        await response.aread()
        await response.aclose()

    with one_answer(HEAD + b"content-length: 2\r\n\r\nok", received=received) as url:
        aio.submit(exchange(url)).result(timeout=10)
    expected = b"authorization: basic " + base64.b64encode(b"user:secret").lower()
    assert expected in received[0].lower()


def test_a_cookie_an_upstream_sets_is_not_sent_on_the_next_request() -> None:
    """One client serves every user: nothing one response set rides on another's request."""
    answer = HEAD + b"set-cookie: session=user-a; Path=/\r\ncontent-length: 2\r\n\r\nok"
    timeouts = Timeouts(connect=2, first_chunk=5, idle=5)
    requests: list[bytes] = []
    for _ in range(2):  # two servers on 127.0.0.1: a cookie's domain, whatever the port
        with one_answer(answer, received=requests) as url:
            assert aio.submit(_read(url, timeouts)).result(timeout=10) == b"ok"
    assert len(requests) == 2
    assert b"cookie" not in requests[1].lower()
    assert not aio.http_client(timeouts).cookies


def test_the_loop_thread_is_named_for_the_os() -> None:
    """`top -H`, py-spy and bench/stream_cpu.py's split tell the loop's CPU apart by it."""
    aio.submit(_read_nothing()).result(timeout=5)
    names = {path.read_text().strip() for path in Path("/proc/self/task").glob("*/comm")}
    assert "upstream-io" in names


async def _read_nothing() -> None:
    return None


def test_submit_can_wait_for_the_first_step_and_no_longer() -> None:
    """`first_step_wait`: back once the coroutine reached its first real wait (for a
    reply: its upstream request is out), or once the wait is over if the loop is busy."""
    steps: list[str] = []

    async def reply() -> None:
        steps.append("request sent")
        await asyncio.sleep(0.5)  # the upstream thinks
        steps.append("answer read")

    future = aio.submit(reply(), first_step_wait=5)
    assert steps == ["request sent"]
    future.cancel()

    busy, release = threading.Event(), threading.Event()

    def hold_the_loop() -> None:
        busy.set()
        release.wait(5)

    aio.call_soon(hold_the_loop)
    assert busy.wait(5)
    steps.clear()
    late = aio.submit(reply(), first_step_wait=0.05)  # returns, the step still to come
    assert steps == []
    release.set()
    late.cancel()
