"""The service as it runs: functions-framework + gunicorn in a subprocess, real sockets.

What only a real server shows: chunks crossing TCP as they arrive, and a
client that hangs up while the upstream is silent being noticed (socket peek)
so that the upstream request is closed and the worker thread freed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from assistant.server import DESCRIPTORS, batch_scheduling
from devtools.fake_upstream import FakeUpstream, Script
from devtools.service import running_service

from .raw_http import open_raw, read_until_closed


@pytest.fixture
def server(fake: FakeUpstream) -> Iterator[str]:
    env = {
        "THREADS": "1",  # one thread: a second request is served only if the first freed it
        "HEARTBEAT_SECONDS": "30",  # no pings: a hang-up can only be noticed by the peek
        "MAX_STREAMS_PER_USER": "1",  # a reply that keeps its slot shows as a 429
    }
    with running_service(env) as service:
        yield service.url


def test_chunks_cross_the_socket_as_they_arrive(server: str, fake: FakeUpstream) -> None:
    fake.push(Script(tokens=["one ", "two ", "three"], interval=0.3))
    arrivals: list[tuple[float, str]] = []
    with httpx.stream(
        "POST", f"{server}/vac/assistant/live/sse", json={"user_input": "hi"}, timeout=10
    ) as response:
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append((time.monotonic(), line))
    chunk_times = [t for t, line in arrivals if line.startswith('data: {"chunk"')]
    assert len(chunk_times) == 3
    assert chunk_times[2] - chunk_times[0] > 0.3  # spread out, as the upstream sent them
    assert arrivals[-1][1] == "data: [DONE]"


def test_an_absolute_form_target_with_no_path_is_the_root(server: str) -> None:
    """RFC 9112 3.2.2: `GET http://host HTTP/1.1` asks for `/`. Flask answered it with
    an HTML 308 redirect, before any route of ours, with no trace id or CORS."""
    host, port = server.removeprefix("http://").split(":")
    for target in (b"http://x", b"http://x?a=b", b"HTTP://x:1956"):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            head, _, body = read_until_closed(sock).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 404 "), head
        assert b"x-trace-id: " in head.lower()
        refusal = json.loads(body)
        assert (refusal["code"], refusal["error"]) == ("not_found", "no route for /")


def test_a_pipelined_request_still_arriving_holds_no_thread(
    server: str, fake: FakeUpstream
) -> None:
    """A request sent behind another on one connection, and not whole yet, went to a
    thread at once, which waited for the rest of it (a reviewer's trickled ones held
    every thread; each piece got a fresh read clock): it is awaited on the poller, as
    any request is. The server here has one thread: the stream after it is answered
    while the slow request's connection is still open."""
    host, port = server.removeprefix("http://").split(":")
    slow = socket.create_connection((host, int(port)), timeout=10)
    with slow:
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"POST /vac/assistant/live/sse HTTP/1.1\r\nHost: x\r\nContent-")  # fmt: skip
        first = b""
        while not first.endswith(b"}"):  # the first, answered whole
            first += slow.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        fake.push(Script(tokens=["served"]))
        answer = httpx.post(f"{server}/vac/assistant/live/sse", json={"user_input": "hi"})
        assert answer.status_code == 200 and "data: [DONE]" in answer.text
        slow.setblocking(False)
        with pytest.raises(BlockingIOError):  # not closed by its read deadline meanwhile
            slow.recv(1)


def test_a_stream_carries_no_connection_header_unless_the_connection_closes(
    server: str, fake: FakeUpstream
) -> None:
    host, port = server.removeprefix("http://").split(":")
    body = b'{"user_input": "hi"}'
    for asked, expected in ((b"", None), (b"Connection: close\r\n", "close")):
        fake.push(Script(tokens=["one"]))
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /vac/assistant/live/sse HTTP/1.1\r\nHost: x\r\n" + asked
                + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                % (len(body), body)
            )  # fmt: skip
            received = b""
            while not received.endswith(b"0\r\n\r\n"):  # the stream's last chunk
                received += sock.recv(65536)
        head = received.partition(b"\r\n\r\n")[0].decode().lower().split("\r\n")
        fields = dict(line.split(": ", 1) for line in head[1:])
        assert head[0] == "http/1.1 200 ok"
        assert fields.get("connection") == expected
        assert "content-length" not in fields
        assert b"data: [DONE]" in received


def test_hang_up_while_upstream_is_silent_closes_it_and_frees_the_thread(
    server: str, fake: FakeUpstream
) -> None:
    fake.push(Script(tokens=["first ", "never"], fail_after=1, fail_mode="hang"))
    with open_raw(server, "/vac/assistant/live/sse", b'{"user_input": "hi"}') as sock:
        received = b""
        while b'"chunk"' not in received:
            received += sock.recv(4096)
    # The client is gone; the upstream is silent, so only the socket peek can notice.
    upstream = fake.wait_for_requests(1)[0]
    assert upstream.client_closed.wait(timeout=5), "upstream request left running"
    # With THREADS=1, this answers only once the abandoned stream let go of the thread.
    assert httpx.get(f"{server}/health", timeout=5).status_code == 200
    # ...and of its place in the (anonymous) user's replies in flight.
    fake.push(Script(tokens=["next"]))
    next_reply = httpx.post(
        f"{server}/vac/assistant/live/sse", json={"user_input": "hi"}, timeout=10
    )
    assert next_reply.status_code == 200


@pytest.mark.parametrize(
    "path",
    ["/vac/assistant/live/sse", "/vac/assistant/live"],
    ids=["sse-before-its-status", "json-caller"],
)
def test_hang_up_before_any_byte_was_sent_closes_the_upstream(
    server: str, fake: FakeUpstream, path: str
) -> None:
    """The SSE status is still held (30 s window) / a JSON caller waits for the end:
    the service has written nothing, yet notices the hang-up, and gives the user's
    place in the limits back."""
    fake.push(Script(fail="hang"))
    sock = open_raw(server, path, b'{"user_input": "hi"}')
    upstream = fake.wait_for_requests(1)[0]
    sock.close()
    assert upstream.client_closed.wait(timeout=5), "upstream request left running"
    assert httpx.get(f"{server}/health", timeout=5).status_code == 200
    fake.push(Script(tokens=["next"]))
    assert httpx.post(f"{server}{path}", json={"user_input": "hi"}, timeout=10).status_code == 200


def test_oversize_chunked_body_without_length_is_413(server: str, fake: FakeUpstream) -> None:
    body = b'{"user_input": "' + b"x" * (1024 * 1024) + b'"}'
    with open_raw(server, "/vac/assistant/live/sse", body, chunked=True) as sock:
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"payload_too_large" in answer
    assert fake.requests == []


def test_a_body_of_many_small_chunks_is_read_in_time(server: str, fake: FakeUpstream) -> None:
    """Handed to gunicorn whole, a chunked body was parsed in time quadratic in its size
    (its parser copies what is left after each chunk): a reviewer's 1 MiB of small
    chunks took 10 s of CPU, cut by the read deadline with no answer."""
    fake.push(Script(tokens=["ok"]))
    body = b'{"user_input": "hi", "padding": "' + b"x" * 400_000 + b'"}'  # ignored
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /vac/assistant/live/sse HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x\r\n%b\r\n" % (len(piece), piece) for piece in _pieces(body, 16))
            + b"0\r\n\r\n"
        )
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b"data: [DONE]" in answer
    assert len(fake.requests) == 1


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[at : at + size] for at in range(0, len(data), size)]


def test_a_length_just_over_the_limit_is_refused_before_its_body(
    server: str, fake: FakeUpstream
) -> None:
    """A Content-Length over MAX_BODY_BYTES (1 MiB) but within what the server would
    buffer: answered 413 at once, to a client that waits for that before it sends the
    body (a reviewer's waited 10 s for nothing, then was dropped)."""
    answer = _answer_to_a_head_alone(server, 1024 * 1024 + 1)
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"payload_too_large" in answer
    assert fake.requests == []


@pytest.mark.parametrize(
    "connection",
    [b"Connection: keep-alive, close\r\n", b"Connection: keep-alive\r\nConnection: Close\r\n"],
)
def test_close_among_the_connection_options_closes_after_the_answer(
    server: str, connection: bytes
) -> None:
    """RFC 9112 9.6: the connection ends after this answer, which says so, and a request
    sent behind it is not served (gunicorn heeded only a lone `Connection: close`)."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + connection + b"\r\n"
                     b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # fmt: skip
        answers = read_until_closed(sock)
    assert answers.count(b"HTTP/1.1 200") == 1
    assert b"connection: close" in answers.lower()


@pytest.mark.parametrize(("length", "kept"), [(65535, True), (65536, False)])
def test_a_body_refused_unread_is_drained_below_64_kib_and_closed_from_it(
    server: str, length: int, kept: bool
) -> None:
    """gthread drains an unread body to keep the connection and gives up on reaching
    64 KiB: from there the answer says `Connection: close` (at exactly 64 KiB a reviewer
    saw the connection kept in words and closed in deed)."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b"
                     b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                     % (length, b"x" * length))  # fmt: skip
        answers = read_until_closed(sock)
    assert answers.startswith(b"HTTP/1.1 404")
    assert (b"HTTP/1.1 200" in answers) is kept
    assert (b"connection: close" in answers.lower().split(b"\r\n\r\n")[0]) is not kept


def test_a_small_body_limit_refuses_an_unsent_body_and_closes(fake: FakeUpstream) -> None:
    """MAX_BODY_BYTES under what gthread drains (64 KiB): a body over it, refused
    unread, closes the connection at once; kept, gthread waited 5 s with the thread
    for a body its client sends only after our answer (a reviewer's probe)."""
    with running_service({"MAX_BODY_BYTES": "1000", "THREADS": "2"}) as service:
        started = time.monotonic()
        answer = _answer_to_a_head_alone(service.url, 2000)
        assert time.monotonic() - started < 4  # not after gthread's 5-s drain
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"connection: close" in answer.lower()


def _answer_to_a_head_alone(server: str, length: int) -> bytes:
    """What the server sends to a POST whose head says `length` bytes and whose body
    never comes, until it closes the connection."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /vac/assistant/live/sse HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % length
        )
        return read_until_closed(sock)  # closed after the answer: its body is left unread


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")
def test_every_thread_of_the_worker_runs_under_batch_scheduling(fake: FakeUpstream) -> None:
    """Set in the worker before it starts a thread (server.batch_scheduling): the pool's
    threads, the I/O loop's and the collector's inherit it, and none preempts on waking."""
    with running_service({"THREADS": "4"}) as service:
        response = httpx.post(
            f"{service.url}/vac/assistant/live/sse", json={"user_input": "hi"}, timeout=10
        )
        assert response.status_code == 200 and "[DONE]" in response.text
        tasks = Path(f"/proc/{_worker_pid(service.process.pid)}/task")
        threads = [
            ((task / "comm").read_text().strip(), os.sched_getscheduler(int(task.name)))
            for task in tasks.iterdir()
        ]
    assert "upstream-io" in {name for name, _ in threads}  # started by the first reply
    assert len(threads) >= 5  # main, a request thread, the loop, the watchdog, the collector
    assert {policy for _, policy in threads} == {os.SCHED_BATCH}


@pytest.mark.parametrize("refusal", ["sandbox", "not linux"])
def test_a_system_that_refuses_batch_scheduling_leaves_the_worker_as_it_was(
    monkeypatch: pytest.MonkeyPatch, refusal: str
) -> None:
    def refused(*args: object) -> None:
        raise PermissionError("operation not permitted")

    if refusal == "sandbox":
        monkeypatch.setattr(os, "sched_setscheduler", refused)
    else:
        monkeypatch.delattr(os, "SCHED_BATCH", raising=False)
    policy = os.sched_getscheduler(0)
    assert batch_scheduling() is False
    assert os.sched_getscheduler(0) == policy


def _worker_pid(server_pid: int) -> str:
    (worker,) = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    return worker  # gunicorn's one worker


def test_the_worker_starts_with_its_descriptor_table_grown(fake: FakeUpstream) -> None:
    """server.presize_descriptor_table: a worker that reaches hundreds of
    descriptors never waits for the table to grow (an RCU grace period per doubling)."""
    with running_service({"THREADS": "4"}) as service:
        status = Path(f"/proc/{_worker_pid(service.process.pid)}/status").read_text()
    slots = int(status.split("FDSize:")[1].split()[0])
    assert slots >= DESCRIPTORS


PRESIZE = """
import json, os, resource, sys
from assistant.server import presize_descriptor_table

def slots():
    with open("/proc/self/status") as status:
        return int(status.read().split("FDSize:")[1].split()[0])

if sys.argv[1] == "limited":
    resource.setrlimit(resource.RLIMIT_NOFILE, (300, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
if sys.argv[1] == "taken":
    os.dup2(0, 4095)
before, open_before = slots(), sorted(os.listdir("/proc/self/fd"))
highest = presize_descriptor_table(4096)
print(json.dumps({"before": before, "after": slots(), "highest": highest,
                  "same_open": sorted(os.listdir("/proc/self/fd")) == open_before}))
"""


def _presized(case: str) -> dict[str, object]:
    """presize_descriptor_table() in a fresh process, whose table is still small."""
    done = subprocess.run(
        [sys.executable, "-c", PRESIZE, case],
        capture_output=True, text=True, timeout=60, check=True, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_presizing_grows_the_table_and_leaves_nothing_open() -> None:
    result = _presized("plain")
    assert result["highest"] == 4095
    assert isinstance(result["before"], int) and result["before"] < 4096
    assert isinstance(result["after"], int) and result["after"] >= 4096
    assert result["same_open"] is True


def test_presizing_stays_within_the_open_files_limit() -> None:
    result = _presized("limited")
    assert result["highest"] == 299
    assert isinstance(result["after"], int) and 300 <= result["after"] < 4096
    assert result["same_open"] is True


def test_presizing_never_closes_a_descriptor_in_use() -> None:
    result = _presized("taken")
    assert result["highest"] == -1  # the table already reaches it
    assert result["same_open"] is True  # 4095 among them
