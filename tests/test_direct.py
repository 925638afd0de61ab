"""Writing chunk frames to the client's socket from the I/O loop (assistant/direct.py),
on a real socket pair: framing, a socket that takes part of a write, a client that left."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator

import pytest

from assistant.direct import ClientSocket, client_socket
from assistant.limits import BRIEF_WRITE_SECONDS, InFlight, Slot


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = socket.socketpair()
    server.settimeout(5)  # what http.py does: the send timeout, which makes it non-blocking
    client.settimeout(5)
    with server, client:
        yield server, client


def writer(sock: socket.socket, chunked: bool = True) -> ClientSocket:
    return ClientSocket(sock, chunked=chunked, slot=Slot(lambda slot: None))


def test_an_http_1_1_frame_goes_out_in_chunked_coding(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    frame = b'data: {"chunk":"hello"}\n\n'
    assert writer(server).write_now(frame) == b""
    assert client.recv(100) == b"19\r\n" + frame + b"\r\n"  # 0x19 = 25 bytes


def test_the_first_write_carries_the_head_the_server_handed_over(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """Under our worker the loop may write a stream's first frame: the response's head
    (worker.py HEAD) goes out with it, once, outside the chunked coding."""
    server, client = pair
    asked: list[int] = []

    def head() -> bytes:
        asked.append(1)
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"

    direct = ClientSocket(server, chunked=True, slot=Slot(lambda slot: None), head=head)
    assert direct.sends_head and not direct.wrote_head
    assert direct.write_now(b"data: one\n\n") == b""
    assert direct.wrote_head
    assert direct.write_now(b"data: two\n\n") == b""
    expected = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    expected += b"B\r\ndata: one\n\n\r\nB\r\ndata: two\n\n\r\n"
    assert read_exactly(client, len(expected)) == expected
    assert asked == [1]


def test_an_http_1_0_frame_goes_out_as_it_is(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    assert writer(server, chunked=False).write_now(b": ping\n\n") == b""
    assert client.recv(100) == b": ping\n\n"


def read_exactly(sock: socket.socket, size: int) -> bytes:
    received = bytearray()
    while len(received) < size:
        received.extend(sock.recv(65536))
    return bytes(received)


def test_what_a_full_socket_does_not_take_comes_back_and_send_all_finishes_it(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    slot = Slot(lambda slot: None)
    direct = ClientSocket(server, chunked=True, slot=slot)
    frame = b"x" * 1_000_000
    rest = direct.write_now(frame)  # never waits: the client is not reading
    assert 0 < len(rest) < len(frame)
    assert direct.write_now(b"more") == b"4\r\nmore\r\n"  # nothing taken: all of it back

    framed = b"F4240\r\n" + frame + b"\r\n"  # 0xF4240 = 1,000,000
    marked: list[float | None] = []
    sender = threading.Thread(target=direct.send_all, args=(rest,))
    sender.start()  # the request thread's part: it waits while the client reads
    time.sleep(0.2)
    marked.append(slot.writing_since)  # a write under way, for eviction to see
    assert read_exactly(client, len(framed)) == framed
    sender.join(5)
    assert marked[0] is not None
    assert slot.writing_since is None


def test_send_all_to_a_client_that_takes_nothing_ends_in_the_send_timeout(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, _client = pair
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    server.settimeout(0.2)
    slot = Slot(lambda slot: None)
    with pytest.raises(TimeoutError):
        ClientSocket(server, chunked=False, slot=slot).send_all(b"x" * 10_000_000)
    assert slot.writing_since is None
    # Shut, so that gunicorn's end of the body fails at once instead of waiting again.
    with pytest.raises(OSError) as caught:
        server.sendall(b"0\r\n\r\n")
    assert not isinstance(caught.value, TimeoutError)


def test_send_all_to_a_slow_but_steady_client_is_not_cut_by_the_send_timeout(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """The timeout is for a client that takes nothing: one that drains a piece at a time,
    each well within it, gets a rest it needs far longer than the timeout for in all."""
    server, client = pair
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    server.settimeout(0.5)
    data = bytes(range(256)) * 1_000  # 256,000 bytes: about 3 s at this client's pace
    received = bytearray()

    def read_slowly() -> None:
        while len(received) < len(data):
            time.sleep(0.05)
            received.extend(client.recv(4096))

    reader = threading.Thread(target=read_slowly)
    reader.start()
    ClientSocket(server, chunked=False, slot=Slot(lambda slot: None)).send_all(data)
    reader.join(30)
    assert bytes(received) == data


def test_a_write_to_a_client_that_left_raises(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    client.close()
    direct = writer(server)
    with pytest.raises(OSError):
        for _ in range(3):  # the first write after a close may still be accepted locally
            direct.write_now(b"data: x\n\n")


def test_direct_writes_only_where_they_are_safe() -> None:
    slot = Slot(lambda slot: None)
    with socket.socket() as blocking, socket.socket() as timed:
        timed.settimeout(1)
        assert client_socket(blocking, "HTTP/1.1", slot) is None  # the loop would wait
        assert client_socket(timed, "HTTP/2", slot) is None  # framing not known
        assert client_socket(object(), "HTTP/1.1", slot) is None  # not a socket (test client)
        direct = client_socket(timed, "HTTP/1.1", slot)
        assert isinstance(direct, ClientSocket)
        tls = ssl.create_default_context().wrap_socket(
            socket.socket(), server_hostname="x", do_handshake_on_connect=False
        )
        with tls:
            tls.settimeout(1)
            assert client_socket(tls, "HTTP/1.1", slot) is None  # its bytes are not the socket's


def test_past_the_cap_of_waiting_writers_a_write_waits_briefly(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """limits.py: at most half of THREADS wait on clients for the send timeout. Past
    that, send_all waits BRIEF_WRITE_SECONDS at most: a client that takes nothing in it
    is gone (its socket shut: no later write waits either), and one that reads gets it
    all."""
    server, _client = pair
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    in_flight = InFlight()
    in_flight.set_threads(3)  # one thread may wait
    waiting, late = (in_flight.take("someone", per_user=10, total=10) for _ in range(2))
    assert waiting.write_begins()  # a write under way on another thread
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        ClientSocket(server, chunked=False, slot=late).send_all(b"x" * 10_000_000)
    assert BRIEF_WRITE_SECONDS <= time.monotonic() - started < 5  # not the socket's 5 s
    assert late.writing_since is None
    with pytest.raises(OSError):
        server.sendall(b"the end of the body")  # shut: fails at once
    assert server.gettimeout() == 5

    reading_server, reading_client = socket.socketpair()
    with reading_server, reading_client:
        reading_server.settimeout(5)
        data = b"y" * 100_000
        reader = threading.Thread(target=read_exactly, args=(reading_client, len(data)))
        reader.start()  # a client that reads: it gets it all within the brief wait
        ClientSocket(reading_server, chunked=False, slot=late).send_all(data)
        reader.join(5)
        assert not reader.is_alive()
    waiting.write_ends()
    assert late.write_begins()  # its place is free again
