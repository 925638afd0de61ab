"""Our HTTP/1.1 transport (assistant/http1.py) against a real server on loopback:
framing split at every byte, connections kept and not kept, a reader that
leaves, flow control, TLS. How it fails the way httpcore did is in
tests/test_aio_transport.py."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from assistant import aio, http1

from .certificates import self_signed

T = TypeVar("T")

EVENTS = b"event: a\ndata: 1\n\nevent: b\ndata: 2\n\n"
CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    b"12;ext=1\r\nevent: a\ndata: 1\n\n\r\n"  # 0x12 = 18 bytes, with a chunk extension
    b"12\r\nevent: b\ndata: 2\n\n\r\n"
    b"0\r\nx-trailer: t\r\n\r\n"
)


class Upstream:
    """A loopback HTTP/1.1 server that gives each request it reads the next of
    `answers`, one send per piece (each its own read on our side), and keeps the
    connection for the next request unless the answer is marked to close it."""

    def __init__(
        self,
        answers: Sequence[Sequence[bytes]],
        gap: float = 0.002,
        close_after: Sequence[int] = (),
        tls: ssl.SSLContext | None = None,
        drop: Sequence[int] = (),
        reset: bool = False,
        drop_after: float = 0.0,
    ) -> None:
        self._answers = list(answers)
        self._gap = gap
        self._close_after = set(close_after)  # answer indexes after which to close
        self._drop = set(drop)  # request indexes read, then left unanswered: closed
        self._reset = reset  # ...with a reset rather than a FIN
        self._drop_after = drop_after  # ...this long after it was read
        self._tls = tls
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed_by_peer = threading.Event()  # a connection our side closed first
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://127.0.0.1:{self._listener.getsockname()[1]}"

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            try:
                conn = self._tls.wrap_socket(conn, server_side=True)
            except OSError:  # a client that refused our certificate
                conn.close()
                return
        with conn:
            while True:
                request = _read_request(conn)
                if request is None:
                    self.closed_by_peer.set()
                    return
                with self._lock:
                    index = len(self.requests)
                    self.requests.append(request)
                if index in self._drop:
                    time.sleep(self._drop_after)
                    if self._reset:
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                    return
                try:
                    for piece in self._answers[index]:
                        conn.sendall(piece)
                        time.sleep(self._gap)
                except (OSError, IndexError):
                    self.closed_by_peer.set()
                    return
                if index in self._close_after:
                    return


def _read_request(conn: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            piece = conn.recv(65536)
        except OSError:
            return None
        if not piece:
            return None
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            while len(body) < int(value):
                body += conn.recv(65536)
    return data


@contextmanager
def upstream(answers: Sequence[Sequence[bytes]], **options: object) -> Iterator[Upstream]:
    server = Upstream(answers, **options)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.close()


def on_loop(coro: Awaitable[T]) -> T:
    async def run() -> T:
        return await coro

    return aio.submit(run()).result(timeout=20)


def client(keepalive: float = 5.0, tls: ssl.SSLContext | None = None) -> httpx.AsyncClient:
    transport = http1.Http1Transport(tls or ssl.create_default_context(), keepalive)
    return httpx.AsyncClient(transport=transport, timeout=5)


async def read_body(http: httpx.AsyncClient, url: str) -> bytes:
    async with http.stream("POST", url, content=b"{}") as response:
        return b"".join([part async for part in aio.body_chunks(response)])


def test_chunked_framing_split_at_every_byte_reads_the_same() -> None:
    """Each byte its own read: every boundary of size line, data, CRLF and trailer."""
    with upstream([[CHUNKED], [bytes([b]) for b in CHUNKED]], gap=0.001) as server:
        http = client()
        assert on_loop(read_body(http, server.url)) == EVENTS
        assert on_loop(read_body(http, server.url)) == EVENTS


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 36\r\n\r\n" + EVENTS,
        b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\ncontent-length: 36\r\n\r\n" + EVENTS,
    ],
    ids=["content-length", "informational-first"],
)
def test_a_body_framed_by_its_length(answer: bytes) -> None:
    with upstream([[answer[:50], answer[50:]]]) as server:
        assert on_loop(read_body(client(), server.url)) == EVENTS


def test_a_body_ended_by_the_connection_is_whole_and_the_connection_is_not_kept() -> None:
    answer = b"HTTP/1.1 200 OK\r\n\r\n" + EVENTS
    with upstream([[answer], [answer]], close_after=[0, 1]) as server:
        http = client()
        assert on_loop(read_body(http, server.url)) == EVENTS
        assert on_loop(read_body(http, server.url)) == EVENTS
        assert server.connections == 2


def test_a_connection_read_to_its_end_carries_the_next_request() -> None:
    with upstream([[CHUNKED]] * 3) as server:
        http = client()
        for _ in range(3):
            assert on_loop(read_body(http, server.url)) == EVENTS
        assert server.connections == 1
        assert len(server.requests) == 3


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 36\r\n\r\n",
        b"HTTP/1.0 200 OK\r\ncontent-length: 36\r\n\r\n",
    ],
    ids=["connection-close", "http-1.0"],
)
def test_a_connection_the_answer_will_not_keep_is_not_reused(head: bytes) -> None:
    with upstream([[head + EVENTS], [head + EVENTS]]) as server:
        http = client()
        assert on_loop(read_body(http, server.url)) == EVENTS
        assert on_loop(read_body(http, server.url)) == EVENTS
        assert server.connections == 2


def test_an_idle_connection_the_server_closed_is_not_used() -> None:
    with upstream([[CHUNKED], [CHUNKED]], close_after=[0]) as server:
        http = client()
        assert on_loop(read_body(http, server.url)) == EVENTS
        time.sleep(0.1)  # the close reaches our side
        assert on_loop(read_body(http, server.url)) == EVENTS
        assert server.connections == 2


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "reset"])
def test_a_kept_connection_dropped_as_the_request_went_out_asks_again_anew(reset: bool) -> None:
    """A server's keep-alive ran out as our request went: it read it and closed with no
    answer. A reviewer found the provider failed for it (a 502 with one provider)."""
    with upstream([[CHUNKED], [], [CHUNKED]], drop=[1], reset=reset) as server:
        http = client()
        assert on_loop(read_body(http, server.url)) == EVENTS
        assert on_loop(read_body(http, server.url)) == EVENTS
        assert server.connections == 2 and len(server.requests) == 3


def test_a_request_dropped_after_the_server_worked_on_it_is_not_asked_again() -> None:
    """Dropped a while after it came, the request may have been taken up: sent again, a
    reviewer found, a provider did (and billed) the work twice, and the next provider
    waited for the first-chunk timeout instead of the drop."""
    assert http1.STALE_CLOSE_SECONDS < 1
    with upstream([[CHUNKED], [], [CHUNKED]], drop=[1], drop_after=1.0) as server:
        http = client()
        assert on_loop(read_body(http, server.url)) == EVENTS
        with pytest.raises(httpx.RemoteProtocolError):
            on_loop(read_body(http, server.url))
        assert server.connections == 1 and len(server.requests) == 2


def test_a_kept_connection_that_began_an_answer_is_not_asked_again() -> None:
    # Something of an answer came: the server took the request up. Asking again could
    # make it do the work twice.
    with upstream([[CHUNKED], [b"HTTP/1.1 200 OK\r\ncontent-"]], close_after=[1]) as server:
        http = client()
        assert on_loop(read_body(http, server.url)) == EVENTS
        with pytest.raises(httpx.RemoteProtocolError):
            on_loop(read_body(http, server.url))
        assert server.connections == 1


def test_an_idle_connection_past_its_keep_alive_is_closed() -> None:
    with upstream([[CHUNKED], [CHUNKED]]) as server:
        http = client(keepalive=0.2)
        assert on_loop(read_body(http, server.url)) == EVENTS
        assert server.closed_by_peer.wait(2)  # closed by its timer, with no request
        assert on_loop(read_body(http, server.url)) == EVENTS
        assert server.connections == 2


async def read_first_event(http: httpx.AsyncClient, url: str) -> bytes:
    """As a provider reads: it stops at the answer's last event, before the body ends."""
    async with http.stream("POST", url, content=b"{}") as response:
        async for part in aio.body_chunks(response):
            return part
    return b""


def test_a_body_closed_after_its_last_event_is_kept_once_its_end_arrives() -> None:
    """The chunked terminator often comes in a write of its own after the last event."""
    head = CHUNKED.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
    answer = [head + b"12\r\nevent: a\ndata: 1\n\n\r\n", b"0\r\n\r\n"]
    with upstream([answer, answer], gap=0.03) as server:
        http = client()
        assert on_loop(read_first_event(http, server.url)) == b"event: a\ndata: 1\n\n"
        time.sleep(0.1)
        assert on_loop(read_first_event(http, server.url)) == b"event: a\ndata: 1\n\n"
        assert server.connections == 1


def test_a_body_that_does_not_end_soon_after_its_reader_closed_it_is_closed() -> None:
    head = CHUNKED.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
    answer = [head + b"12\r\nevent: a\ndata: 1\n\n\r\n"] + [b"3\r\n:p\n\r\n"] * 100
    with upstream([answer], gap=0.05) as server:
        on_loop(read_first_event(client(), server.url))
        started = time.monotonic()
        assert server.closed_by_peer.wait(3)
        assert time.monotonic() - started < http1.DRAIN_SECONDS + 0.5


def test_a_cancelled_reader_closes_the_connection_at_once() -> None:
    """A client that left: the upstream must stop generating, with no grace period."""
    head = CHUNKED.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
    answer = [head] + [b"3\r\n:p\n\r\n"] * 200
    with upstream([answer], gap=0.02) as server:
        http = client()

        async def read_then_cancel() -> None:
            task = asyncio.ensure_future(read_body(http, server.url))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        on_loop(read_then_cancel())
        cancelled = time.monotonic()
        assert server.closed_by_peer.wait(3)
        assert time.monotonic() - cancelled < http1.DRAIN_SECONDS


def test_a_reader_that_falls_behind_stops_the_socket_then_reads_every_byte() -> None:
    size = 3 * http1.MAX_UNREAD_BYTES
    body = bytes(range(256)) * (size // 256)
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size + body

    async def read_slowly(url: str) -> tuple[bytes, bool]:
        async with client().stream("POST", url, content=b"{}") as response:
            await asyncio.sleep(0.5)  # the server sends all it can meanwhile
            connection = response.extensions[http1.RAW_BODY]._connection
            reading = connection._transport.is_reading()
            return b"".join([part async for part in aio.body_chunks(response)]), reading

    with upstream([[answer]]) as server:
        received, reading_while_behind = on_loop(read_slowly(server.url))
    assert not reading_while_behind
    assert received == body


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello!!0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 1x\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nx-long: " + b"a" * (http1.MAX_HEAD_BYTES + 10) + b"\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n bad header\r\n\r\n",
    ],
    ids=["chunk-size", "chunk-end", "content-length", "head-too-long", "status", "header"],
)
def test_a_malformed_answer_is_a_protocol_error(answer: bytes) -> None:
    with upstream([[answer]]) as server, pytest.raises(httpx.RemoteProtocolError):
        on_loop(read_body(client(), server.url))


def _tls_pair(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for 127.0.0.1, and a client that trusts it."""
    key = ec.generate_private_key(ec.SECP256R1())
    loopback = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = self_signed(
        key,
        "upstream.test",
        [(loopback, False), (x509.BasicConstraints(ca=True, path_length=None), True)],
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return server, ssl.create_default_context(cadata=cert_pem.decode())


def test_https_reads_and_keeps_the_connection(tmp_path: Path) -> None:
    server_tls, client_tls = _tls_pair(tmp_path)
    with upstream([[CHUNKED], [CHUNKED]], tls=server_tls) as server:
        http = client(tls=client_tls)
        assert on_loop(read_body(http, server.url)) == EVENTS
        assert on_loop(read_body(http, server.url)) == EVENTS
        assert server.connections == 1


def test_https_to_a_server_we_do_not_trust_cannot_connect(tmp_path: Path) -> None:
    server_tls, _ = _tls_pair(tmp_path)
    with upstream([[CHUNKED]], tls=server_tls) as server, pytest.raises(httpx.ConnectError):
        on_loop(read_body(client(), server.url))


def test_a_connection_reset_mid_body_is_a_read_error() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def reset_mid_body() -> None:
        conn, _ = listener.accept()
        _read_request(conn)
        conn.sendall(CHUNKED[:120])
        time.sleep(0.05)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()  # with a zero linger: a reset, not a FIN

    threading.Thread(target=reset_mid_body, daemon=True).start()
    with pytest.raises(httpx.ReadError):
        on_loop(read_body(client(), f"http://127.0.0.1:{listener.getsockname()[1]}"))
    listener.close()


HEAD_CHUNKED = CHUNKED.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
EVENT_A = b"12\r\nevent: a\ndata: 1\n\n\r\n"


def test_a_closed_body_reads_nothing_more_and_its_timeout_is_left_alone() -> None:
    """Its connection's timer is then the drain's: the body's end must still close or
    keep the connection (a provider may set the idle timeout after its close)."""
    answer = [HEAD_CHUNKED + EVENT_A] + [b"3\r\n:p\n\r\n"] * 100

    async def close_then_touch(url: str) -> type[BaseException] | None:
        async with client().stream("POST", url, content=b"{}") as response:
            body = response.extensions[http1.RAW_BODY]
            await body.__anext__()
        body.read_timeout(30)
        try:
            await body.__anext__()
        except httpx.StreamClosed as exc:
            return type(exc)
        return None

    with upstream([answer], gap=0.05) as server:
        assert on_loop(close_then_touch(server.url)) is httpx.StreamClosed
        started = time.monotonic()
        assert server.closed_by_peer.wait(3)  # the drain still ended it
        assert time.monotonic() - started < http1.DRAIN_SECONDS + 0.5


def test_an_idle_connection_closed_before_the_loop_noticed_is_not_used() -> None:
    """The server's close is in the kernel, unread: the loop was busy meanwhile."""

    async def twice(url: str) -> list[bytes]:
        http = client()
        first = await read_body(http, url)
        time.sleep(0.1)  # blocks the loop: the server's close arrives, unread
        return [first, await read_body(http, url)]

    with upstream([[CHUNKED], [CHUNKED]], close_after=[0]) as server:
        assert on_loop(twice(server.url)) == [EVENTS, EVENTS]
        assert server.connections == 2


def test_a_body_whose_end_came_while_its_reader_was_busy_is_kept() -> None:
    answer = [HEAD_CHUNKED + EVENT_A, b"12\r\nevent: b\ndata: 2\n\n\r\n0\r\n\r\n"]

    async def read_first_slowly(url: str, http: httpx.AsyncClient) -> None:
        async with http.stream("POST", url, content=b"{}") as response:
            async for _ in aio.body_chunks(response):
                await asyncio.sleep(0.1)  # the rest and the end arrive meanwhile
                return

    with upstream([answer, answer], gap=0.01) as server:
        http = client()
        on_loop(read_first_slowly(server.url, http))
        on_loop(read_first_slowly(server.url, http))
        assert server.connections == 1


def test_a_closed_transport_keeps_no_connection() -> None:
    answer = [HEAD_CHUNKED + EVENT_A, b"0\r\n\r\n"]

    async def close_mid_response(url: str) -> None:
        http = client()
        async with http.stream("POST", url, content=b"{}") as response:
            await http.aclose()
            assert [part async for part in aio.body_chunks(response)]

    with upstream([answer], gap=0.05) as server:
        on_loop(close_mid_response(server.url))
        assert server.closed_by_peer.wait(2)


def test_a_streamed_request_body_goes_with_its_length() -> None:
    async def post_streamed(url: str) -> bytes:
        async def pieces() -> AsyncIterator[bytes]:
            yield b'{"a":'
            yield b"1}"

        async with client().stream("POST", url, content=pieces()) as response:
            return await response.aread()

    with upstream([[CHUNKED]]) as server:
        assert on_loop(post_streamed(server.url)) == EVENTS
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert b"content-length: 7" in head.lower()
    assert body == b'{"a":1}'


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 204 No Content\r\n\r\nstray",
        b"HTTP/1.1 200 OK\ncontent-length: 36\n\n" + EVENTS,  # bare LF line ends
        b"HTTP/1.1 100 Continue\r\n\r\n" * 500 + b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ],
    ids=["204-with-bytes", "bare-lf-head", "many-informational"],
)
def test_answers_httpcore_reads_are_read(answer: bytes) -> None:
    with upstream([[answer]]) as server:
        assert on_loop(read_body(client(), server.url)) in (b"", EVENTS, b"ok")


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 100 Continue\r\n\r\n" * 5000 + b"HTTP/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!",
        b"HTTP/1.1 200 OK\r\nx-a: 1\r\n folded\r\ncontent-length: 2\r\n\r\nok",
    ],
    ids=["informational-flood", "conflicting-lengths", "folded-header"],
)
def test_answers_httpcore_refuses_are_protocol_errors(answer: bytes) -> None:
    with upstream([[answer]]) as server, pytest.raises(httpx.RemoteProtocolError):
        on_loop(read_body(client(), server.url))


@pytest.mark.parametrize("value", ["key\r\nx-evil: 1", "key\n", "key\r", "k\x00ey"])
def test_a_header_value_with_a_line_break_is_never_sent(value: str) -> None:
    async def post(url: str) -> None:
        async with client().stream("POST", url, content=b"{}", headers={"x-api-key": value}):
            pass

    with upstream([[CHUNKED]]) as server:
        with pytest.raises(httpx.LocalProtocolError):
            on_loop(post(server.url))
        assert not server.requests


def test_a_head_with_bare_lf_lines_and_a_crlf_blank_line_is_read() -> None:
    answer = b"HTTP/1.1 200 OK\ncontent-length: 36\n\r\n" + EVENTS
    with upstream([[answer]]) as server:
        assert on_loop(read_body(client(), server.url)) == EVENTS


def test_bytes_after_the_chunked_end_keep_the_connection_from_reuse() -> None:
    with upstream([[CHUNKED + b"junk"], [CHUNKED]]) as server:
        http = client()
        assert on_loop(read_body(http, server.url)) == EVENTS
        assert on_loop(read_body(http, server.url)) == EVENTS
        assert server.connections == 2


def test_blank_lines_before_a_status_line_are_read_past() -> None:
    """A server's stray CRLF after its last answer, on the kept connection."""
    with upstream([[CHUNKED], [b"\r\n", CHUNKED]]) as server:
        http = client()
        assert on_loop(read_body(http, server.url)) == EVENTS
        assert on_loop(read_body(http, server.url)) == EVENTS
        assert server.connections == 1


def test_bytes_that_begin_no_status_line_fail_at_once() -> None:
    """Bytes a server left after its last answer, read as the next one's head: the
    request waited for the whole first-chunk timeout (30 s) for a head that never came."""
    with upstream([[CHUNKED], [b"junk\n"]]) as server:
        http = client()
        assert on_loop(read_body(http, server.url)) == EVENTS
        started = time.monotonic()
        with pytest.raises(httpx.RemoteProtocolError, match="no status line"):
            on_loop(read_body(http, server.url))
        assert time.monotonic() - started < 4  # the client's timeout is 5 s


@pytest.mark.parametrize("split", ["one-read", "per-byte"])
def test_blank_lines_after_an_informational_answer_are_read_past(split: str) -> None:
    """As they are before the first status line (a reviewer found them refused after a
    103 Early Hints)."""
    early = b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n"
    answer = early + b"\r\n" + b"HTTP/1.1 200 OK\r\ncontent-length: 36\r\n\r\n" + EVENTS
    pieces = [answer] if split == "one-read" else [bytes([byte]) for byte in answer]
    with upstream([pieces], gap=0.001) as server:
        assert on_loop(read_body(client(), server.url)) == EVENTS
