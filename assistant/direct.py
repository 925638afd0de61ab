"""Chunk frames written to the client straight from the I/O loop, while its socket takes them.

Why (README "Speed"): handing every chunk from the loop to the request
thread cost a thread wake-up and GIL hand-offs per chunk, about as much CPU
as everything else a relayed chunk needs. So the request thread lets the
loop write chunk frames itself (`Outbox.attach`), from the first one on
under our server, which hands over the response's head to go with it
(worker.py `HEAD`), and otherwise once the head and first frame are out:
each is still its own frame in its own write, sent the moment it arrives.
The request thread wakes only for what is not text (tool calls, the
outcome), for heartbeats and for the once-a-second check that the client is
still there; before it writes anything itself it takes
the socket back (`Outbox.detach`), so the two never write at once.

Only while the socket takes every byte at once: the loop never waits on a
client. A write the socket takes in part, or not at all (a client that reads
slowly), hands the rest to the request thread (`send_all`), which sends it
within the socket's send timeout and goes on writing what follows itself,
as it always did: slow and stuck clients, the send timeout, back-pressure
and eviction are handled there (README "Slow, stuck and greedy clients").
A write that fails means the client left.

gunicorn sends an HTTP/1.1 stream in chunked transfer coding (a stream has
no Content-Length), so bytes written next to it are framed the same way.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import cast

from .limits import BRIEF_WRITE_SECONDS, Slot, pieces


class ClientSocket:
    def __init__(
        self,
        sock: socket.socket,
        chunked: bool,
        slot: Slot,
        head: Callable[[], bytes] | None = None,
    ) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._chunked = chunked
        self._slot = slot
        self._head = head  # the response's head, from the server, while nobody has sent it
        self.sends_head = head is not None  # the first write may come before the head is out

    @property
    def wrote_head(self) -> bool:
        """Whether a write here carried the response's head (it is out, or on its way)."""
        return self.sends_head and self._head is None

    def write_now(self, frame: bytes) -> bytes:
        """On the loop: write what the socket takes without waiting; returns the rest
        (empty when it took it all). OSError: the client is gone.

        The first write carries the response's head, when the server gave it
        (`sends_head`): a stream's first chunk then needs no thread at all.
        """
        data = b"%X\r\n%b\r\n" % (len(frame), frame) if self._chunked else frame
        if self._head is not None:
            head, self._head = self._head, None
            data = head() + data
        try:
            # os.write, not sock.send: a socket with a timeout (the send
            # timeout, http.py) polls before every send; its descriptor is
            # non-blocking, so this returns at once either way.
            sent = os.write(self._fd, data)
        except BlockingIOError:
            return data
        return data[sent:]

    def send_all(self, data: bytes) -> None:
        """On the request thread: bytes `write_now` left, waiting up to the socket's timeout
        (BRIEF_WRITE_SECONDS when as many threads as may wait on clients already do:
        limits.py).

        Already framed: they go to the socket as they are. OSError (a timeout
        included): the client is gone or takes nothing.
        """
        if self._slot.write_begins():
            try:
                for piece in pieces(data):  # each piece has the whole send timeout
                    self._sock.sendall(piece)
                    self._slot.write_moved_on()
            except OSError:
                _shut(self._sock)  # gunicorn's end of the body must not wait all over again
                raise
            finally:
                self._slot.write_ends()
            return
        with briefly(self._sock):
            self._sock.sendall(data)


@contextlib.contextmanager
def briefly(sock: socket.socket) -> Iterator[None]:
    """Writes to `sock` meanwhile wait BRIEF_WRITE_SECONDS at most (limits.py). One that
    fails shuts the socket: the client is gone, and no later write to it (gunicorn's
    end of the body) may wait either."""
    timeout = sock.gettimeout()
    sock.settimeout(min(timeout or BRIEF_WRITE_SECONDS, BRIEF_WRITE_SECONDS))
    try:
        yield
    except OSError:
        _shut(sock)
        raise
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(timeout)


def _shut(sock: socket.socket) -> None:
    """A write to `sock` failed: no later one (gunicorn's end of the body) may wait."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def client_socket(
    sock: object, protocol: object, slot: Slot, head: object = None
) -> ClientSocket | None:
    """The response's socket for direct writes, or None where they cannot be used;
    `head`, the server's callable for the response's head, if it has one.

    Not through TLS (its bytes are not the socket's), not on a blocking socket
    (the loop must never wait), and only for HTTP/1.0 and 1.1, whose framing
    is known.
    """
    if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
        return None
    if protocol not in ("HTTP/1.0", "HTTP/1.1") or sock.gettimeout() is None:
        return None
    sends_head = cast("Callable[[], bytes] | None", head if callable(head) else None)
    return ClientSocket(sock, chunked=protocol == "HTTP/1.1", slot=slot, head=sends_head)
