"""`DemoServer`: a tiny static server for the demo page and the reference client.

Deliberate choices:

* A fixed table of files (URL path -> file), not a directory listing: nothing else in the
  checkout can be fetched through it, whatever the path says.
* ``Cache-Control: no-store``, so an edited file shows on the next reload.
* JavaScript as ``text/javascript``: browsers refuse module scripts of other types.
* Stdlib only (`ThreadingHTTPServer`), quiet unless asked: it is a dev tool, not shipped.
"""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CLIENT = HERE.parent.parent / "clients" / "js"

FILES: dict[str, Path] = {
    "/": HERE / "index.html",
    "/index.html": HERE / "index.html",
    "/demo.js": HERE / "demo.js",
    "/vac-stream.js": CLIENT / "vac-stream.js",
    "/thinking.js": CLIENT / "thinking.js",
}
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        path = FILES.get(self.path.split("?", 1)[0])
        if path is None:
            data, status, kind = b"not found\n", 404, "text/plain; charset=utf-8"
        else:
            data, status, kind = path.read_bytes(), 200, TYPES[path.suffix]
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            sys.stderr.write(f"demo: {self.address_string()} {format % args}\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    verbose = False


class DemoServer:
    """The demo on ``http://host:port/`` (port 0: a free one), in a thread or in the foreground.

    ``with DemoServer() as demo: ... demo.url`` runs it in a background thread until the block
    ends; `serve_forever` runs it in the calling thread.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, verbose: bool = False) -> None:
        self._server = _Server((host, port), _Handler)
        self._server.verbose = verbose
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        try:
            self._server.serve_forever()
        finally:
            self._server.server_close()

    def __enter__(self) -> DemoServer:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
