"""A TCP relay to the Firestore emulator that can make the database misbehave."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class DatabaseRelay:
    """Relays connections to the emulator at `target`. `pause()` holds every byte, as
    a database that hangs (the bytes wait in the sockets and flow again on
    `resume()`); `unplug()` refuses connections and drops those open, as a database
    that is down, and `blackhole()` drops them without a word, as a network that lost
    the way to it (`plug()` takes them again on the same port). `answer_after(s)`
    holds each new connection's first bytes from the database `s` seconds, as a slow
    network's handshake. Starts paused if asked to (the database away when the
    request comes)."""

    def __init__(self, target: str, paused: bool = False) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._running = threading.Event()
        if not paused:
            self._running.set()
        self._port = 0
        self._listener: socket.socket | None = None
        self._links: list[socket.socket] = []
        self._first_bytes_after = 0.0
        self.plug()
        self.address = f"127.0.0.1:{self._port}"

    def resume(self) -> None:
        self._running.set()

    def pause(self) -> None:
        self._running.clear()

    def plug(self) -> None:
        listener = self._listen(50)
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def unplug(self) -> None:
        if self._listener is not None:
            # shutdown, not close alone: a thread blocked in accept() keeps a closed
            # socket listening.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        for link in self._links:
            link.close()
        self._links = []

    def blackhole(self) -> None:
        # A port whose queue of connections is full: the kernel drops each new SYN, and
        # the client retries it later and later (1, 2, 4, 8 s apart), hearing nothing.
        self._listen(0)
        self._links.append(socket.create_connection(("127.0.0.1", self._port)))

    def _listen(self, backlog: int) -> socket.socket:
        """A new listener on the relay's port (the first: any free one)."""
        self.unplug()
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self._port))
        listener.listen(backlog)
        self._port = listener.getsockname()[1]
        self._listener = listener
        return listener

    def answer_after(self, seconds: float) -> None:
        self._first_bytes_after = seconds

    def close(self) -> None:
        self._running.set()
        self.unplug()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                near, _ = listener.accept()
            except OSError:
                return
            far = socket.create_connection(self._target)
            self._links += [near, far]
            for source, sink, wait in ((near, far, 0.0), (far, near, self._first_bytes_after)):
                pump = threading.Thread(target=self._pump, args=(source, sink, wait), daemon=True)
                pump.start()

    def _pump(self, source: socket.socket, sink: socket.socket, wait: float) -> None:
        try:
            if wait:
                time.sleep(wait)
            while data := source.recv(65536):
                self._running.wait()
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass
