"""Clients that stop reading (README "Slow, stuck and greedy clients"): back-pressure and
the send timeout, on the
real server. The client here sets a small receive buffer and never reads.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from assistant.limits import LAST_WRITE_GRACE_SECONDS, STUCK_SECONDS
from devtools.fake_upstream import FakeUpstream, Script
from devtools.service import running_service

from .conftest import stopped_before_the_kill
from .raw_http import dechunked, open_raw

PIECE = "x" * 1000
HUGE = Script(tokens=[PIECE] * 20_000)  # 20 MB as fast as the service will read it
LONG_ANSWER = [f"{i:05d}" + "x" * 95 for i in range(4_000)]  # 400,000 characters


def open_stream_and_never_read(url: str, body: bytes) -> socket.socket:
    return open_raw(url, "/vac/assistant/test-assistant/sse", body, receive_buffer=4096)


@pytest.fixture
def service(fake: FakeUpstream) -> Iterator[str]:
    with running_service({"THREADS": "4", "SEND_TIMEOUT_SECONDS": "60"}) as running:
        yield running.url


def test_a_stuck_client_stops_the_upstream_being_read(service: str, fake: FakeUpstream) -> None:
    fake.push(HUGE)
    with open_stream_and_never_read(service, b'{"user_input": "hi"}'):
        upstream = fake.wait_for_requests(1)[0]
        time.sleep(3)  # unbounded, the service would have read all 20 MB by now
        assert not upstream.finished.is_set(), "the upstream was read with nobody to send to"
        assert not upstream.client_closed.is_set()
        assert httpx.get(f"{service}/health", timeout=5).status_code == 200
    assert upstream.client_closed.wait(5)  # the client left: noticed, upstream closed


def test_a_client_that_accepts_no_write_is_treated_as_gone(
    fake: FakeUpstream, firestore, tmp_path: Path
) -> None:
    """The upstream is cancelled, the reply abandoned and what arrived saved `incomplete`,
    as for any client that left; and what it cost is bounded (send buffer + outbox)."""
    fake.push(HUGE)
    log_path = tmp_path / "server.log"
    env = {"THREADS": "4", "SEND_TIMEOUT_SECONDS": "1"}
    body = b'{"user_input": "hi", "save_to_history": true, "trace_id": "stuck-1"}'
    with (
        log_path.open("wb") as log,
        running_service(env, output=log) as service,
        open_stream_and_never_read(service.url, body),
    ):
        upstream = fake.wait_for_requests(1)[0]
        assert upstream.client_closed.wait(15), "a stuck client kept the upstream open"
        assert httpx.get(f"{service.url}/health", timeout=5).status_code == 200
        saved = firestore.document("assistants/test-assistant/messages/stuck-1-assistant")
        deadline = time.monotonic() + 10
        while not saved.get().exists and time.monotonic() < deadline:
            time.sleep(0.1)
    reply = saved.get().to_dict()
    assert reply is not None
    assert reply["status"] == "incomplete"
    assert reply["content"].startswith(PIECE)
    gone = [json.loads(line) for line in log_path.read_text().splitlines()
            if '"reply.client_gone"' in line]  # fmt: skip
    assert len(gone) == 1
    assert gone[0]["attempts"][0]["outcome"] == "client_gone"
    # Only what the small send buffers and the outbox held (about 130,000 here, under
    # load too): not megabytes. (Once, in CI, 7.4 million: frames the loop had made and
    # not yet written did not count against the outbox's bound; now they do.)
    assert 0 < gone[0]["chars"] < 400_000


def test_a_full_instance_gives_a_stuck_clients_place_to_a_newcomer(
    fake: FakeUpstream, firestore, tmp_path: Path
) -> None:
    """MAX_STREAMS=1, taken by a client that reads nothing: after STUCK_SECONDS of a
    write it does not take, a new request gets its place instead of a 503, and the
    stuck reply ends like any client that left (saved incomplete)."""
    fake.push(HUGE, Script(tokens=["for ", "the newcomer"]))
    env = {"THREADS": "4", "MAX_STREAMS": "1", "SEND_TIMEOUT_SECONDS": "60"}
    body = b'{"user_input": "hi", "save_to_history": true, "trace_id": "evicted-1"}'
    log = tmp_path / "service.log"
    with (
        log.open("wb") as output,
        running_service(env, output=output) as service,
        open_stream_and_never_read(service.url, body),
    ):
        upstream = fake.wait_for_requests(1)[0]
        # At once, not after a pause: its writes may be blocked already, and a pause of
        # a second left a loaded machine too little of STUCK_SECONDS to be sure of a 503.
        early = httpx.post(f"{service.url}/vac/assistant/x/sse", json={"user_input": "hi"})
        assert early.status_code == 503
        time.sleep(STUCK_SECONDS + 3)  # stuck for longer than STUCK_SECONDS by now
        newcomer = httpx.post(
            f"{service.url}/vac/assistant/x/sse", json={"user_input": "hi"}, timeout=10
        )
        assert newcomer.status_code == 200
        assert '"answer":"for the newcomer"' in newcomer.text
        assert upstream.client_closed.wait(5)
        saved = firestore.document("assistants/test-assistant/messages/evicted-1-assistant")
        # 30 s, not 10: in 2 of 7 whole-suite runs after round 11 the document was not
        # there within 10 s (never alone, nor under CPU load, in 16 runs): left open in
        # issue 11's note, to be told apart from a save that never comes.
        deadline = time.monotonic() + 30
        while not saved.get().exists and time.monotonic() < deadline:
            time.sleep(0.1)
        evicted = [line for line in log.read_text().splitlines() if "evicted-1" in line]
        assert saved.get().exists, "\n".join(evicted)  # its log, to tell why
        assert saved.get().to_dict()["status"] == "incomplete"


def test_a_json_answer_its_client_does_not_read_keeps_the_users_place(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    """The slot went back when the reply ended, before its answer was written: one user's
    JSON requests whose clients took nothing each held a thread SEND_TIMEOUT_SECONDS,
    past the user's limit (every other user's requests waited 28 s). Held while it is
    written, the place is given back when the client goes."""
    fake.push(Script(tokens=[PIECE] * 300), Script(tokens=["back"]))  # 300 KB, then a word
    env = {"THREADS": "8", "MAX_STREAMS_PER_USER": "1", "SEND_TIMEOUT_SECONDS": "60"}
    log = tmp_path / "service.log"
    with log.open("wb") as output, running_service(env, output=output) as service:
        body = b'{"user_input": "hi"}'
        stuck = open_raw(service.url, "/vac/assistant/test-assistant", body, receive_buffer=4096)
        deadline = time.monotonic() + 10
        while '"reply.finished"' not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert '"reply.finished"' in log.read_text()  # its answer is being written now
        time.sleep(2 * LAST_WRITE_GRACE_SECONDS)  # a last write not taken counts again
        url = f"{service.url}/vac/assistant/x"
        assert httpx.post(url, json={"user_input": "hi"}).status_code == 429
        stuck.close()
        deadline = time.monotonic() + 10
        while (again := httpx.post(url, json={"user_input": "hi"})).status_code == 429:
            assert time.monotonic() < deadline, "the place was not given back"
            time.sleep(0.1)
        assert again.json()["answer"] == "back"


def test_a_stopping_server_ends_a_stream_whose_client_reads_nothing_in_time(
    fake: FakeUpstream, firestore
) -> None:
    """SIGTERM while a thread's write waits on a client that takes nothing: the stop
    neither ended nor abandoned it (it was neither parked nor in the app), and the
    worker waited up to SEND_TIMEOUT_SECONDS (past Cloud Run's kill at 10 s, its reply
    never saved, not a line logged). At the abandon its socket is shut: the reply ends
    as a client that left, saved `incomplete`, the worker gone before the kill."""
    fake.push(HUGE)
    body = b'{"user_input": "hi", "save_to_history": true, "trace_id": "stuck-stop"}'
    env = {"THREADS": "4", "SEND_TIMEOUT_SECONDS": "60"}
    with running_service(env) as service, open_stream_and_never_read(service.url, body):
        fake.wait_for_requests(1)
        time.sleep(2)  # its writes are blocked by now
        stopped_before_the_kill(service.process)
    saved = firestore.document("assistants/test-assistant/messages/stuck-stop-assistant").get()
    assert saved.exists and saved.to_dict()["status"] == "incomplete"
    assert saved.to_dict()["content"].startswith(PIECE)


def test_clients_that_send_preflights_and_read_nothing_cannot_hold_the_threads() -> None:
    """gthread's sockets block without end: six connections sending preflights (each
    answer echoes its 8 KB of asked headers) and reading none filled their buffers and
    held every thread, a refusal unanswered for 50 s. Every answer now has a send
    timeout (SEND_TIMEOUT_SECONDS; 2 s on the reserved threads)."""
    asked = "x-a, " * 1600
    preflight = (
        "OPTIONS /vac/assistant/a/sse HTTP/1.1\r\nHost: x\r\nOrigin: https://a.example\r\n"
        f"Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: {asked}\r\n\r\n"
    ).encode()
    stop = threading.Event()

    def send_and_never_read(url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((host, int(port)))
            sock.settimeout(0.5)
            while not stop.is_set():
                try:
                    sock.sendall(preflight * 20)
                except OSError:  # our own buffers full, or the service gave up on us
                    time.sleep(0.05)

    env = {"THREADS": "4", "SEND_TIMEOUT_SECONDS": "2", "CORS_ORIGINS": "*"}
    with running_service(env) as service:
        senders = [
            threading.Thread(target=send_and_never_read, args=(service.url,)) for _ in range(6)
        ]
        for sender in senders:
            sender.start()
        try:
            time.sleep(8)  # their buffers are full by now
            refused = httpx.post(
                f"{service.url}/vac/assistant/a/sse",
                content=b"{",
                headers={"Content-Type": "application/json"},
                timeout=10,
            )
            assert refused.status_code == 400
            assert httpx.get(f"{service.url}/health", timeout=10).status_code == 200
        finally:
            stop.set()
            for sender in senders:
                sender.join()


def test_a_slow_but_steady_reader_gets_a_final_frame_longer_than_the_send_timeout(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    """SEND_TIMEOUT_SECONDS is for a client that takes nothing. One that reads ~160 KB/s
    needs ~2.5 s for the final frame of a 400,000-character answer: written in one
    sendall, the 1 s timeout cut it in the middle. In pieces, each piece has it."""
    tokens = LONG_ANSWER
    fake.push(Script(tokens=tokens))
    log = tmp_path / "service.log"
    env = {"THREADS": "4", "SEND_TIMEOUT_SECONDS": "1"}
    with log.open("wb") as output, running_service(env, output=output) as service:
        sock = open_stream_and_never_read(service.url, b'{"user_input": "hi"}')
        received = _read_slowly(sock)
    body = received.partition(b"\r\n\r\n")[2]
    assert body.endswith(b"0\r\n\r\n"), log.read_text()[-2000:]  # the whole response
    events = dechunked(body).split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    assert json.loads(events[-3].removeprefix(b"data: "))["answer"] == "".join(tokens)


def test_a_slow_but_steady_reader_gets_a_json_answer_longer_than_the_send_timeout(
    fake: FakeUpstream,
) -> None:
    """The legacy JSON route's body, likewise: piece by piece, each with the timeout
    (what the socket buffers do not hold takes the reader ~1.6 s)."""
    tokens = LONG_ANSWER
    fake.push(Script(tokens=tokens))
    env = {"THREADS": "4", "SEND_TIMEOUT_SECONDS": "1"}
    with running_service(env) as service:
        body = b'{"user_input": "hi"}'
        sock = open_raw(service.url, "/vac/assistant/test-assistant", body, receive_buffer=4096)
        head, _, answer = _read_slowly(sock).partition(b"\r\n\r\n")
    assert b"200 OK" in head.split(b"\r\n")[0]
    assert json.loads(answer)["answer"] == "".join(tokens)


def _read_slowly(sock: socket.socket) -> bytes:
    """What `sock` gets until closed, read 8 KB every 0.05 s (~160 KB/s). Slower, a write
    blocked on a full socket would be woken only after a second or so anyway (the kernel
    wakes a writer once a third of the send buffer is free), a timeout of its own."""
    with sock:
        sock.settimeout(30)
        received = bytearray()
        while data := sock.recv(8192):
            received += data
            time.sleep(0.05)
    return bytes(received)


def test_a_final_frame_the_client_takes_too_slowly_is_a_line_of_ours(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    """THREADS=2: one client that reads nothing holds the one thread that may wait on a
    client (limits.py); a second one's final frame, too large for its socket's buffers,
    then has BRIEF_WRITE_SECONDS. Its end is a `response.cut` line with its trace id,
    not a traceback of gunicorn's without one."""
    # 60,000 characters of thinking: ~75 KB of chunk frames, which the socket's buffers
    # take; the final frame holds them twice (the answer, thinking_content), which they
    # do not.
    thinking = [f"{i:04d}" + "y" * 96 for i in range(600)]
    fake.push(HUGE, Script(thinking=thinking, tokens=["done"]))
    log = tmp_path / "service.log"
    env = {"THREADS": "2", "SEND_TIMEOUT_SECONDS": "60"}
    body = b'{"user_input": "hi", "trace_id": "cut-1"}'
    with (
        log.open("wb") as output,
        running_service(env, output=output) as service,
        open_stream_and_never_read(service.url, b'{"user_input": "hi"}'),
    ):
        fake.wait_for_requests(1)
        time.sleep(1)  # its writes wait now, for up to 60 s
        with open_stream_and_never_read(service.url, body):
            deadline = time.monotonic() + 10
            while '"response.cut"' not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
    text = log.read_text()
    cut = [json.loads(line) for line in text.splitlines() if '"response.cut"' in line]
    assert [line["trace_id"] for line in cut] == ["cut-1"], text[-3000:]
    assert "Traceback" not in text and "Socket error" not in text
