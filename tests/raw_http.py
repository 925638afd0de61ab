"""Requests written by hand on a plain socket, so a test decides when the client hangs
up, whether it ever reads, and how the body is framed."""

from __future__ import annotations

import socket


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
