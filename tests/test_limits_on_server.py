"""The refusals and bounds of issue 8 on the real server (functions-framework + gunicorn),
as a client sees them over a socket: overload, bad JSON, text that cannot be encoded,
and a reply that never ends.
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from assistant.worker import STOP_SAVE_SECONDS
from devtools.fake_upstream import FakeUpstream, Script
from devtools.service import running_service

from .conftest import sse_events
from .raw_http import dechunked

SSE = "/vac/assistant/live/sse"


@pytest.fixture
def server(fake: FakeUpstream) -> Iterator[str]:
    env = {"THREADS": "4", "MAX_STREAMS": "2", "MAX_REPLY_SECONDS": "2", "HEARTBEAT_SECONDS": "0.5"}
    with running_service(env) as service:
        yield service.url


def test_past_max_streams_a_503_and_health_still_answers(server: str, fake: FakeUpstream) -> None:
    hanging = Script(tokens=["first ", "never"], fail_after=1, fail_mode="hang")
    fake.push(hanging, hanging)
    with httpx.Client(timeout=10) as client:
        streams = [client.stream("POST", f"{server}{SSE}", json={"user_input": "hi"})
                   for _ in range(2)]  # fmt: skip
        for stream in streams:
            assert stream.__enter__().status_code == 200
        try:
            refused = httpx.post(f"{server}{SSE}", json={"user_input": "hi"}, timeout=10)
            assert refused.status_code == 503
            assert refused.json()["code"] == "overloaded"
            assert refused.headers["Retry-After"]
            assert httpx.get(f"{server}/health", timeout=5).status_code == 200
            assert len(fake.requests) == 2
        finally:
            for stream in streams:
                stream.__exit__(None, None, None)


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        (b'{"user_input": "hi", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested"),
        (b'{"user_input": "hi", "n": ' + b"7" * 5000 + b"}", "number longer"),
        (b'{"user_input": "\\ud800"}', "user_input contains text that cannot be encoded"),
    ],
    ids=["deep", "huge-number", "lone-surrogate"],
)
def test_bad_json_is_a_400_on_the_wire(
    server: str, fake: FakeUpstream, body: bytes, mentions: str
) -> None:
    response = httpx.post(
        f"{server}{SSE}", content=body, headers={"Content-Type": "application/json"}, timeout=10
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"
    assert mentions in response.json()["error"]
    assert fake.requests == []


def test_a_reply_that_never_ends_is_cut(server: str, fake: FakeUpstream) -> None:
    fake.push(Script(tokens=["first ", "never"], fail_after=1, fail_mode="hang", ping_every=0.1))
    frames: list[str] = []
    with httpx.stream("POST", f"{server}{SSE}", json={"user_input": "hi"}, timeout=10) as reply:
        frames = [line for line in reply.iter_lines() if line.startswith("data: ")]
    assert '"code":"reply_too_long"' in frames[-2]
    assert frames[-1] == "data: [DONE]"
    assert fake.wait_for_requests(1)[0].client_closed.wait(5)


def test_streams_hold_no_thread_while_they_wait(fake: FakeUpstream) -> None:
    """With THREADS=2, six streams waiting on a silent upstream after their first chunk,
    and four more waiting for a slow first one, hold no thread (worker.py "parking"):
    an eleventh streams to its end beside them, /health answers, heartbeats reach the
    waiting ones, the slow ones start together, and their leaving is noticed."""
    hanging = Script(tokens=["first ", "never"], fail_after=1, fail_mode="hang")
    slow = Script(tokens=["late"], ttft=2)
    fake.push(*[hanging] * 6, *[slow] * 4, Script(tokens=["all ", "the ", "way"]))
    env = {"THREADS": "2", "MAX_STREAMS_PER_USER": "20", "HEARTBEAT_SECONDS": "0.3"}
    with (
        running_service(env) as service,
        httpx.Client(timeout=10) as client,
        concurrent.futures.ThreadPoolExecutor(4) as pool,
    ):
        url = f"{service.url}{SSE}"
        streams = [client.stream("POST", url, json={"user_input": "hi"}) for _ in range(6)]
        try:
            for stream in streams:
                response = stream.__enter__()
                assert response.status_code == 200
                lines = (line for line in response.iter_lines() if line)
                assert next(lines) == 'data: {"chunk":"first "}'
                assert next(lines) == ": ping"  # the upstream is silent: a heartbeat
            started = time.monotonic()
            late = [pool.submit(httpx.post, url, json={"user_input": "hi"}, timeout=20)
                    for _ in range(4)]  # fmt: skip
            fake.wait_for_requests(10)  # all four asked the upstream at once
            whole = httpx.post(url, json={"user_input": "hi"}, timeout=10)
            frames = [line for line in whole.text.splitlines() if line.startswith("data: ")]
            assert frames[:3] == [f'data: {{"chunk":"{text}"}}' for text in ("all ", "the ", "way")]
            assert '"answer":"all the way"' in frames[-2] and frames[-1] == "data: [DONE]"
            assert httpx.get(f"{service.url}/health", timeout=5).status_code == 200
            assert time.monotonic() - started < 1.5  # before the slow first chunks (2 s)
            assert all('"answer":"late"' in future.result().text for future in late)
            assert time.monotonic() - started < 3.5  # theirs came together, not two by two
        finally:
            for stream in streams:
                stream.__exit__(None, None, None)
        upstream = fake.wait_for_requests(11)
        assert all(request.client_closed.wait(5) for request in upstream[:6])


def test_json_replies_hold_no_thread_while_they_wait_either(fake: FakeUpstream) -> None:
    """With THREADS=2, two JSON replies waiting for a slow model held both threads to
    their end: a stream beside them got no heartbeat, nor its status, until they ended.
    They park as streams do: the stream's pings flow, and both answers come whole."""
    fake.push(
        Script(tokens=["streamed"], ttft=3), *[Script(tokens=["json ", "answer"], ttft=3)] * 2
    )
    env = {"THREADS": "2", "HEARTBEAT_SECONDS": "0.5"}
    with (
        running_service(env) as service,
        concurrent.futures.ThreadPoolExecutor(3) as pool,
    ):
        stream = pool.submit(
            httpx.post, f"{service.url}{SSE}", json={"user_input": "hi"}, timeout=20
        )
        fake.wait_for_requests(1)
        json_url = f"{service.url}{SSE.removesuffix('/sse')}"
        answers = [pool.submit(httpx.post, json_url, json={"user_input": "hi"}, timeout=20)
                   for _ in range(2)]  # fmt: skip
        events = [line for line in stream.result().text.splitlines() if line]
        for answer in answers:
            assert answer.result().status_code == 200
            assert answer.result().json()["answer"] == "json answer"
            assert answer.result().headers["X-Trace-Id"]
    assert events.index('data: {"chunk":"streamed"}') >= 4  # pings for its 3 s: 0.5 s apart
    assert set(events[: events.index('data: {"chunk":"streamed"}')]) == {": ping"}


def _half_closed_after(path: str, seconds: float, env: dict[str, str] | None = None) -> bytes:
    """All a client that asks at `path`, and shuts its sending side `seconds` later,
    reads of the service's answer."""
    with running_service(env or {}) as service:
        host, port = service.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            body = b'{"user_input": "hi"}'
            sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (path.encode(), len(body), body))  # fmt: skip
            time.sleep(seconds)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(10)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


def test_a_json_caller_that_half_closes_while_it_waits_reads_a_499(fake: FakeUpstream) -> None:
    """Taken for gone (README "Choices"), a JSON caller that only half-closed reads what
    a stream's would: a 499 in JSON (a parked JSON reply answered 200 with an empty
    text/html body)."""
    fake.push(Script(tokens=["late"], ttft=3))
    answer = _half_closed_after("/vac/assistant/live", 1.2)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 499 ")
    assert b"Content-Type: application/json" in head
    assert json.loads(payload)["code"] == "client_gone"


def test_a_stream_that_half_closes_reads_a_terminal_frame(fake: FakeUpstream) -> None:
    """Taken for gone, a streaming client that only half-closed read a chunked body that
    ended as a whole one does, with no terminal frame and no [DONE] (a reviewer's)."""
    fake.push(Script(tokens=[f"w{n} " for n in range(100)], interval=0.05))
    answer = _half_closed_after("/vac/assistant/live/sse", 0.5)
    events = sse_events(dechunked(answer.partition(b"\r\n\r\n")[2]))
    assert events[-1] == "[DONE]"
    assert events[-2]["code"] == "client_gone"
    shown = "".join(event["chunk"] for event in events if "chunk" in event)
    assert shown and events[-2]["partial"].startswith(shown)


def test_a_stream_that_half_closes_after_its_status_window_reads_a_terminal_frame(
    fake: FakeUpstream,
) -> None:
    """The same past the status window, while the model is silent: the stream's head and
    a ping are out, and its client check, not the loop's, takes it for gone."""
    fake.push(Script(tokens=["late"], ttft=4))
    answer = _half_closed_after("/vac/assistant/live/sse", 1.5, {"HEARTBEAT_SECONDS": "1"})
    events = sse_events(dechunked(answer.partition(b"\r\n\r\n")[2]))
    assert events[0] == ": ping" and events[-1] == "[DONE]"
    assert events[-2]["code"] == "client_gone" and events[-2]["partial"] == ""


def test_a_failure_while_the_status_waits_is_a_real_502_on_the_wire(fake: FakeUpstream) -> None:
    """The status of a parked reply is decided when its chain fails: a JSON 502 with
    the CORS headers and none of a stream's, whole (Content-Length); the user's place
    in the limits is given back, and the connection serves the next request."""
    fake.push(Script(fail="error_event", ttft=0.3), Script(tokens=["fine"]))
    env = {"THREADS": "2", "CORS_ORIGINS": "https://app.example.com", "MAX_STREAMS_PER_USER": "1"}
    with (
        running_service(env) as service,
        httpx.Client(base_url=service.url, timeout=10) as client,
    ):
        headers = {"Origin": "https://app.example.com"}
        failed = client.post(SSE, json={"user_input": "hi"}, headers=headers)
        assert failed.status_code == 502
        assert failed.headers["content-type"] == "application/json"
        assert failed.headers["content-length"] == str(len(failed.content))
        assert failed.headers["access-control-allow-origin"] == "https://app.example.com"
        assert failed.headers["x-trace-id"] == failed.json()["trace_id"]
        assert "cache-control" not in failed.headers
        assert failed.json()["code"] == "providers_failed"
        assert [a["outcome"] for a in failed.json()["attempts"]] == ["upstream_error"]
        fine = client.post(SSE, json={"user_input": "hi"}, headers=headers)  # same connection
        assert fine.status_code == 200 and '"answer":"fine"' in fine.text


@pytest.mark.parametrize(
    ("script", "frames"),
    [
        pytest.param(
            Script(tokens=["one ", "two"], ttft=0.3, fail_after=1, fail_mode="error_event"),
            ['{"chunk":"one "}', '"code":"upstream_error"', "[DONE]"],
            id="failure-after-the-first-chunk",
        ),
        pytest.param(
            Script(tokens=["late"], ttft=0.8),
            [": ping", '{"chunk":"late"}', '"answer":"late"', "[DONE]"],
            id="first-chunk-after-the-status-window",
        ),
        pytest.param(
            Script(tokens=["one ", "two"], ttft=0.3),
            ['{"chunk":"one "}', '{"chunk":"two"}', '"answer":"one two"', "[DONE]"],
            id="whole",
        ),
    ],
)
def test_a_parked_reply_opens_its_stream_on_the_wire(
    fake: FakeUpstream, script: Script, frames: list[str]
) -> None:
    """Parked while its status waits, the reply's head goes out with its first frame,
    written by the I/O loop (worker.py HEAD): a 200 once anything was shown, a failure
    after it an error frame, never a 502; a status window with nothing in it a ping."""
    fake.push(script)
    env = {"THREADS": "2", "HEARTBEAT_SECONDS": "0.5"}
    with running_service(env) as service:
        response = httpx.post(f"{service.url}{SSE}", json={"user_input": "hi"}, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["x-trace-id"]
    lines = [line for line in response.text.splitlines() if line]
    assert len(lines) == len(frames)
    assert all(want in line for want, line in zip(frames, lines, strict=True))
    if "error" in lines[-2]:
        assert '"partial":"one "' in lines[-2]


def test_health_and_preflights_have_threads_of_their_own(fake: FakeUpstream) -> None:
    """With THREADS=2, two legacy JSON replies (they keep their thread until the end)
    waiting for a slow upstream hold both request threads; /health and a CORS
    preflight are answered at once all the same (worker.py: reserved threads)."""
    slow = Script(tokens=["late"], ttft=3)
    fake.push(slow, slow)
    env = {"THREADS": "2", "MAX_STREAMS_PER_USER": "10"}
    with running_service(env) as service, concurrent.futures.ThreadPoolExecutor(2) as pool:
        url = f"{service.url}/vac/assistant/live"
        waiting = [pool.submit(httpx.post, url, json={"user_input": "hi"}, timeout=20)
                   for _ in range(2)]  # fmt: skip
        fake.wait_for_requests(2)
        started = time.monotonic()
        assert httpx.get(f"{service.url}/health", timeout=5).status_code == 200
        asking = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}
        preflight = httpx.options(url, headers=asking)
        assert preflight.status_code == 204
        assert time.monotonic() - started < 1.5  # not after the first chunks (3 s)
        assert all(future.result().json()["answer"] == "late" for future in waiting)


def _read_response(sock: socket.socket) -> bytes:
    """One chunked response off a kept-alive connection: up to its last chunk."""
    received = b""
    while not received.endswith(b"\r\n0\r\n\r\n"):
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        received += chunk
    return received


def test_a_connection_serves_the_next_request_after_a_reply_that_parked(
    fake: FakeUpstream,
) -> None:
    """Each reply lets go of its thread between chunks and is resumed for its end; the
    worker then keeps the connection for the next request, as gthread would."""
    fake.push(*[Script(tokens=["one ", "two"], interval=0.3)] * 2)
    body = b'{"user_input": "hi"}'
    request = (
        f"POST {SSE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with running_service({"THREADS": "2", "HEARTBEAT_SECONDS": "0.2"}) as service:
        host, port = service.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            for _ in range(2):
                sock.sendall(request)
                answer = _read_response(sock)
                assert answer.startswith(b"HTTP/1.1 200 ")
                assert b": ping" in answer  # it waited (parked) between its chunks
                assert b'"answer":"one two"' in answer and b"data: [DONE]" in answer
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_a_stopping_server_finishes_the_replies_that_parked(fake: FakeUpstream) -> None:
    """SIGTERM while a reply streams: gunicorn's graceful stop waits for its connection,
    parked or not, and the reply ends whole before the process exits."""
    fake.push(Script(tokens=[f"{n} " for n in range(8)], interval=0.2))
    # Streams still under way are ended STOP_END_SECONDS after the stop at most, earlier by
    # as much as a save wait more (a second with the default 5 s): a short one, so that
    # this 1.6 s stream is not ended first on a loaded machine (a fresh-clone run).
    env = {"THREADS": "2", "PERSIST_TIMEOUT_SECONDS": "1"}
    with running_service(env) as service, httpx.stream(
        "POST", f"{service.url}{SSE}", json={"user_input": "hi"}, timeout=10
    ) as reply:  # fmt: skip
        lines = reply.iter_lines()
        assert next(line for line in lines if line) == 'data: {"chunk":"0 "}'
        service.process.terminate()
        frames = [line for line in lines if line.startswith("data: ")]
        assert frames[-1] == "data: [DONE]"
        assert '"answer":"0 1 2 3 4 5 6 7 "' in frames[-2]
        assert service.process.wait(timeout=10) == 0


_HEAD = f"POST {SSE} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(b"", id="nothing"),
        pytest.param(_HEAD.encode(), id="half-a-head"),
        pytest.param(f"{_HEAD}Content-Length: 100\r\n\r\n{{".encode(), id="half-a-body"),
        pytest.param(
            f"{_HEAD}Content-Length: 100\r\nExpect: 100-continue\r\n\r\n".encode(),
            id="half-a-body-on-a-thread",  # read by the app, after its 100 Continue
        ),
    ],
)
def test_a_stopping_server_ends_requests_still_arriving(sent: bytes) -> None:
    """A connection that sent nothing, or half a request, kept a stopping worker for
    REQUEST_READ_TIMEOUT_SECONDS from when it began (past Cloud Run's kill 10 s after
    the signal), and the late saves, tried once the last connection closed, got no time
    (a reviewer): it is ended when the streams are."""
    with running_service({"THREADS": "2"}) as service:
        host, port = service.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(sent)
            if b"Expect" in sent:
                assert sock.recv(100).startswith(b"HTTP/1.1 100 ")
                sock.sendall(b'{"user_input"')
            time.sleep(0.5)
            service.process.terminate()
            stopped = time.monotonic()
            assert service.process.wait(timeout=20) == 0
            assert time.monotonic() - stopped < 5  # a second after the signal, and the exit


def test_a_stopping_server_answers_a_reply_still_waiting_for_its_first_chunk(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    """SIGTERM while a reply waits for a slow first chunk (parked, its head not out): it
    is answered 503 `overloaded` with Retry-After and its CORS headers when the streams
    are ended (not STOP_SAVE_SECONDS later, when a first chunk could have opened it only
    to end it), so that its client may try again elsewhere; and the server exits."""
    fake.push(Script(tokens=["late"], ttft=15))
    env = {
        "THREADS": "2",
        "CORS_ORIGINS": "*",
        "HEARTBEAT_SECONDS": "30",
        "GOOGLE_CLOUD_PROJECT": "demo-x",
    }
    origin = {"Origin": "https://app.example.com"}
    log = tmp_path / "service.log"
    with (
        log.open("wb") as output,
        running_service(env, output=output) as service,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        url = f"{service.url}{SSE}"
        waiting = pool.submit(
            httpx.post, url, json={"user_input": "hi"}, headers=origin, timeout=20
        )
        fake.wait_for_requests(1)
        service.process.terminate()
        told = time.monotonic()
        answer = waiting.result()
        assert time.monotonic() - told < STOP_SAVE_SECONDS - 2  # with the streams, ~1 s in
        assert service.process.wait(timeout=20) == 0
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    # The reply's own end, as for a stream ended early: its chain told to stop.
    refused = [entry for entry in lines if entry["message"] == "reply.failed"]
    assert [(entry["code"], entry["trace_id"]) for entry in refused] == [
        ("overloaded", answer.headers["x-trace-id"])
    ]
    trace_link = refused[0].get("logging.googleapis.com/trace", "")
    assert trace_link.endswith(f"/traces/{answer.headers['x-trace-id']}")
    assert answer.status_code == 503
    assert answer.json()["code"] == "overloaded"
    assert answer.json()["trace_id"] == answer.headers["x-trace-id"]
    assert answer.headers["retry-after"] == "1"
    assert answer.headers["access-control-allow-origin"] == "*"
    assert answer.headers["content-type"] == "application/json"
