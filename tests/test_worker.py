"""assistant/worker.py in-process: when a request arriving on the poller is ready for a thread,
and which JSON refusal each of gunicorn's errors becomes. The real server is tested in
tests/test_slow_clients.py.
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.http import errors

from assistant import server
from assistant.limits import replies_in_flight
from assistant.worker import (
    BODY_BUFFER_BYTES,
    HEAD_BUFFER_BYTES,
    STOP_KEEPALIVE_LINGER,
    Worker,
    _Arrival,
    _close_body,
    _MethodQueue,
    _ReadFirst,
    _reserved_request,
    _SettledConfig,
    refusal,
)

HEAD = b"POST /vac/assistant/x/sse HTTP/1.1\r\nHost: x\r\n"
CHUNKS = b"".join(b"%x;ext=1\r\n%s\r\n" % (n, b"z" * n) for n in (1, 100, 5000, 3))

# Whole requests: ready for a thread on their last byte, however they are cut up.
WHOLE = {
    "no-body": HEAD + b"\r\n",
    "content-length": HEAD + b"Content-Length: 5\r\n\r\nhello",
    "chunked": HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + CHUNKS + b"0\r\n\r\n",
    "chunked-trailers": HEAD
    + b"Transfer-Encoding: gzip, chunked\r\n\r\n"
    + CHUNKS
    + b"0\r\nX-Sum: 1\r\nX-More: 2\r\n\r\n",
    # gunicorn refuses these: the head alone goes to the parser, which says why.
    "expect-continue": HEAD + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    "unknown-coding": HEAD + b"Transfer-Encoding: zstd, chunked\r\n\r\n",
    "not-quite-chunked": HEAD + b"Transfer-Encoding: notchunked\r\n\r\n",
    "length-and-chunked": HEAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    "two-lengths": HEAD + b"Content-Length: 5\r\nContent-Length: x\r\n\r\n",
    "negative-length": HEAD + b"Content-Length: -1\r\n\r\n",
}


def _ready_after(request: bytes, step: int, body_limit: int = BODY_BUFFER_BYTES) -> int | None:
    arrival = _Arrival(None, 0, body_limit)  # type: ignore[arg-type]  # add() never uses conn
    for start in range(0, len(request), step):
        if arrival.add(request[start : start + step]):
            return min(start + step, len(request))
    return None


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64, 100_000])
@pytest.mark.parametrize("name", list(WHOLE))
def test_a_request_is_ready_on_its_last_byte(name: str, step: int) -> None:
    assert _ready_after(WHOLE[name], step) == len(WHOLE[name])


@pytest.mark.parametrize(
    "partial",
    [
        HEAD + b"Content-Length: 5\r\n\r\nhell",
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + CHUNKS + b"0\r\n",
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + CHUNKS + b"0\r\nX-Sum: 1\r\n",
        HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhel",
        HEAD,
    ],
)
def test_a_request_still_arriving_is_not_ready(partial: bytes) -> None:
    assert _ready_after(partial, 1) is None


def test_a_body_larger_than_the_app_takes_is_not_waited_for() -> None:
    """The app refuses it unread (413) at once, to a client that may wait for that
    before it sends the body (a reviewer's client waited 10 s, then was dropped)."""
    head = HEAD + b"Content-Length: 101\r\n\r\n"
    assert _ready_after(head, 1, body_limit=100) == len(head)
    assert _ready_after(head, 1, body_limit=101) is None  # the body is awaited


def test_a_head_the_parser_refuses_is_ready_at_once() -> None:
    bare_lf = b"GET /health HTTP/1.1\nHost: x\n"
    assert _ready_after(bare_lf, 1) == len(b"GET /health HTTP/1.1\n")
    too_long = b"GET /" + b"a" * HEAD_BUFFER_BYTES
    ready = _ready_after(too_long, 4096)  # at the read that took it past the bound
    assert ready is not None and HEAD_BUFFER_BYTES <= ready < HEAD_BUFFER_BYTES + 4096


def test_a_head_gunicorn_would_take_waits_on_the_poller_whole() -> None:
    """A head cannot be signed in before it is whole: at 32 KiB an unfinished one went to
    a thread and was read there, eight of 40 KB (no token needed) held eight threads for
    REQUEST_READ_TIMEOUT_SECONDS. Held up to past gunicorn's own limits, which it then
    refuses at once, no head waits on a thread."""
    fields = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 8000) for i in range(99))
    assert _ready_after(HEAD + fields, 4096) is None  # 99 fields of 8 KB: still awaited
    assert _ready_after(HEAD + fields + b"\r\n", 4096) == len(HEAD + fields) + 2
    # gunicorn's C parser refuses an unfinished head past this, its Python one sooner:
    # handed on one byte past it, a head too large is a 431 at once, not a wait.
    limits = server.GUNICORN_OPTIONS
    line, count = limits["limit_request_line"], limits["limit_request_fields"]
    largest = count * (limits["limit_request_field_size"] + 2) + 4 + line
    assert largest + 1 == HEAD_BUFFER_BYTES


@pytest.fixture(scope="module")
def cfg() -> Any:
    config = Config()
    config.set("limit_request_line", 8190)
    return config


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (errors.LimitRequestLine(9000, 8190), (414, "uri_too_long")),
        (errors.LimitRequestHeaders("max buffer headers"), (431, "headers_too_large")),
        (errors.InvalidRequestMethod("G@T"), (400, "invalid_request")),
        (errors.UnsupportedTransferCoding("zstd"), (400, "invalid_request")),
        (errors.ExpectationFailed("magic"), (400, "invalid_request")),
        (errors.InvalidChunkSize(b"zz"), (400, "invalid_request")),
        (errors.InvalidResponseHeader("X-Bad"), (500, "internal_error")),
        (errors.ConfigurationProblem("oops"), (500, "internal_error")),
        (ValueError("a bug"), (500, "internal_error")),
    ],
)
def test_each_gunicorn_error_has_a_status_and_code(
    cfg: Any, exc: BaseException, expected: tuple[int, str]
) -> None:
    status, code, message = refusal(exc, cfg)
    assert (status, code) == expected
    assert message


def test_refusals_never_echo_what_the_client_sent(cfg: Any) -> None:
    secret = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.c2lnbmF0dXJl"
    for exc in (
        errors.InvalidHeader(secret),
        errors.InvalidHeader(f"Authorization Bearer {secret}"),
        errors.InvalidRequestLine(f"GET /{secret} HTTP/1.1"),
        errors.InvalidHeaderName(secret),
    ):
        assert secret not in refusal(exc, cfg)[2]
    assert refusal(errors.InvalidHeader("HOST"), cfg)[2] == "the Host header is invalid"


@pytest.mark.parametrize(
    ("head", "reserved"),
    [
        (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (b"HEAD /health?probe=1 HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (b"OPTIONS /vac/assistant/x/sse HTTP/1.1\r\nOrigin: https://a.example\r\n\r\n", True),
        (b"POST /vac/assistant/x/sse HTTP/1.1\r\nHost: x\r\n\r\n", False),
        (b"GET /healthy HTTP/1.1\r\nHost: x\r\n\r\n", False),
        (b"GET /health HTTP/1.1\r\nHost: x\r\n", False),  # not all there
        (b"GET /health HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n", False),
        # No body (some probes send it): it waited 11 s behind busy threads.
        (b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", True),
        (b"GET /health HTTP/1.1\r\nContent-Length:0\r\nHost: x\r\n\r\n", True),
        (b"GET /health HTTP/1.1\r\nContent-Length: 01\r\n\r\n", False),
        (b"GET /health HTTP/1.1\r\nContent-Length: 0, 5\r\n\r\n", False),
        (b"OPTIONS / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", False),
        (b"OPTIONS / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n", False),
        (None, False),  # the head was not read on the poller
    ],
)
def test_only_whole_bodiless_health_checks_and_preflights_get_the_reserved_threads(
    head: bytes | None, reserved: bool
) -> None:
    """A reserved thread must never wait on a client: a body (or an Expect) would have
    it read on the client's time, and two slow clients would hold both."""
    assert _reserved_request(head) is reserved


def test_the_workers_settings_are_read_once_and_stay_the_same() -> None:
    """A settled config (point 8) answers as gunicorn's does, and keeps each value."""
    cfg = Config()
    cfg.set("threads", 7)
    cfg.set("forwarded_allow_ips", "10.0.0.1")
    names = ("threads", "keepalive", "limit_request_line", "is_ssl")
    expected = {name: getattr(cfg, name) for name in names}
    cfg.__class__ = _SettledConfig
    assert {name: getattr(cfg, name) for name in expected} == expected
    assert "threads" in vars(cfg)  # kept: the next read is an attribute's
    assert cfg.forwarded_allow_ips == ["10.0.0.1"]
    assert "is_ssl" not in vars(cfg)  # a property: computed as before, not kept
    with pytest.raises(AttributeError):
        _ = cfg.no_such_setting


def test_nothing_is_deferred_to_the_main_thread_once_its_queue_is_closed() -> None:
    """Point 9: a pool thread that outlived the graceful wait ends after gthread closed
    the queue's pipe; its wake-up byte must not land in whatever file now has the pipe's
    descriptor number."""
    queue = _MethodQueue()
    queue.init()
    queue.defer(print, "before")
    assert os.read(queue.fileno(), 10) == b"\x00"  # an open queue wakes the main thread
    queue.close()
    read_fd, write_fd = os.pipe()  # the lowest free numbers: most likely the old pipe's
    try:
        os.set_blocking(read_fd, False)
        queue.defer(print, "after")
        with pytest.raises(BlockingIOError):  # nothing was written to it
            os.read(read_fd, 10)
    finally:
        os.close(read_fd)
        os.close(write_fd)


class _Clock:
    """A read clock that says when it ran."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.remaining = 10.0

    def run(self) -> None:
        self.log.append("run")

    def stop(self) -> None:
        self.log.append("stop")


def test_what_the_poller_read_is_handed_out_a_read_at_a_time_and_off_the_clock() -> None:
    """Handed whole, a chunked body of small chunks was parsed in time quadratic in its
    size; and the read clock ran while the parser worked through bytes already read, so
    a fast client's body of small chunks was cut as if it were slow (a reviewer's 1 MiB
    of one-byte chunks). The clock runs only while the socket is read."""
    ours, client = socket.socketpair()
    with ours, client:
        reader = _ReadFirst(ours)
        clock = _Clock()
        reader.clock = clock  # type: ignore[assignment]  # a stand-in
        reader.hold(b"x" * 20_000)
        pieces = [reader.chunk() for _ in range(3)]
        assert [len(piece) for piece in pieces] == [8192, 8192, 20_000 - 2 * 8192]
        assert clock.log == []  # the bytes were in: no wait for the client
        client.sendall(b"abc")
        assert reader.chunk() == b"abc" and clock.log == []  # in the socket already: the same
        later = threading.Timer(0.2, client.sendall, (b"def",))
        later.start()
        assert reader.chunk() == b"def" and clock.log == ["run", "stop"]  # waited for
        later.join()
        reader.hold(b"y" * 100_000)  # a chunk's size asks for more at once
        assert len(reader.chunk(size_hint=50_000)) == 50_000
        reader.chunk(size_hint=50_000)
        clock.remaining = 0.0  # the watchdog's: the time is up, the socket shut down
        client.sendall(b"still queued")
        assert reader.chunk() == b"" and clock.log == ["run", "stop"]  # not run again


def test_what_is_held_is_read_after_what_was_put_back() -> None:
    ours, client = socket.socketpair()
    with ours, client:
        reader = _ReadFirst(ours)
        reader.hold(b"first second")
        assert reader.read(6) == b"first "  # gunicorn puts "second" back: read before more
        reader.hold(b"new ")
        assert reader.read() == b"new second"
        reader.hold(b"pipelined")
        reader.unread(b"put back ")
        assert reader.take_buffered() == b"put back pipelined"  # a next request, read
        assert reader.take_buffered() == b""


class _ClosingChunk:
    """gunicorn's response as its close() sees it: the last chunk of a chunked body to write."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def close(self) -> None:
        self.sock.sendall(b"0\r\n\r\n")


def test_a_bodys_last_chunk_is_a_write_among_the_capped_ones(monkeypatch) -> None:
    """gunicorn's close wrote it with the whole send timeout, uncounted: clients that
    took nothing past their final frame held every thread (a reviewer). With as many
    threads as may wait on clients waiting, it waits BRIEF_WRITE_SECONDS at most."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        with contextlib.suppress(BlockingIOError):  # a client that reads nothing: full
            while True:
                ours.send(b"x" * 65536)
        ours.settimeout(30)  # the send timeout
        writers = replies_in_flight.writers
        monkeypatch.setattr(writers, "cap", writers.waiting)  # every place taken
        started = time.monotonic()
        with pytest.raises(OSError):
            _close_body(_ClosingChunk(ours), ours)
        assert time.monotonic() - started < 5  # not the send timeout's 30 s
        assert ours.gettimeout() == 30  # set back for whatever comes next
    ours, theirs = socket.socketpair()
    with ours, theirs:  # under the cap: counted while it is written, then given back
        before = writers.waiting
        monkeypatch.setattr(writers, "cap", before + 1)
        _close_body(_ClosingChunk(ours), ours)
        assert theirs.recv(16) == b"0\r\n\r\n" and writers.waiting == before


def test_a_connection_idle_again_on_a_stopping_worker_keeps_the_set_in_order() -> None:
    """gthread sweeps its kept-alive connections from the first until one has time left:
    put last behind a later one (a stream's, ended after the stop), a connection that
    sent an empty line after the stop stayed open past the stop's linger (a reviewer)."""
    stop = time.monotonic()
    later = SimpleNamespace(timeout=stop + 5.0)  # a stream's, kept after its end
    earlier = SimpleNamespace(timeout=stop + 1.0)
    worker = SimpleNamespace(
        alive=False,
        _stopping_since=stop,
        keepalived_conns=collections.deque([earlier, later]),
        poller=SimpleNamespace(register=lambda *arguments: None),
        on_client_socket_readable=lambda *arguments: None,
    )
    idle = SimpleNamespace(timeout=None, sock=None)
    idle.set_timeout = lambda: setattr(idle, "timeout", time.monotonic() + 2.0)  # gthread's
    Worker._idle_again(worker, idle)
    assert list(worker.keepalived_conns) == [earlier, idle, later]
    assert idle.timeout == stop + STOP_KEEPALIVE_LINGER
