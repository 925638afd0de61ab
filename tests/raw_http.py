"""HTTP by hand on plain sockets: requests, so a test decides when the client hangs
up, whether it ever reads, and how the body is framed; and a one-request server, so a
test decides exactly what an upstream sends and when."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence


def open_raw(
    server: str,
    path: str,
    body: bytes,
    chunked: bool = False,
    receive_buffer: int | None = None,
) -> socket.socket:
    """A POST of `body` (JSON) to `path`, sent whole; the socket is the caller's to close.

    `receive_buffer` shrinks the socket's receive buffer first: a client that never
    reads then stops the server's writes after a few kilobytes.
    """
    host, port = server.removeprefix("http://").split(":")
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect((host, int(port)))
    framing = (
        b"Transfer-Encoding: chunked\r\n\r\n"
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n\r\n"
        if chunked
        else f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    )
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode() + framing
    )
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (head and body can come in separate reads)."""
    sock.settimeout(10)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


@contextlib.contextmanager
def one_answer(
    head: bytes,
    pieces: Sequence[bytes] = (),
    then_wait: float = 0.0,
    received: list[bytes] | None = None,
    reset: bool = False,
) -> Iterator[str]:
    """A server on loopback that answers one request with `head`, then each of `pieces`
    in its own send (its own read on the other side), waits `then_wait` seconds (or
    until the test ends) and closes the connection (with a reset if `reset`). Yields
    its URL; the request's first read goes to `received`."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    done = threading.Event()

    def run() -> None:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = conn.recv(65536)
        if received is not None:
            received.append(request)
        with contextlib.suppress(OSError):  # the client may leave while pieces are due
            conn.sendall(head)
            for piece in pieces:
                time.sleep(0.005)
                conn.sendall(piece)
        done.wait(then_wait)
        if reset:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        done.set()
        listener.close()
        thread.join(5)


def dechunked(body: bytes) -> bytes:
    """An HTTP/1.1 chunked body decoded; AssertionError if its framing is broken."""
    out, at = bytearray(), 0
    while True:
        line_end = body.index(b"\r\n", at)
        size = int(body[at:line_end], 16)
        start = line_end + 2
        assert body[start + size : start + size + 2] == b"\r\n", "a chunk's size is not its data's"
        if size == 0:
            return bytes(out)
        out += body[start : start + size]
        at = start + size + 2
