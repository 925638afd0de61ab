"""Marks the steps of a request in the service, for bench/request_steps.py.

Loaded only by that benchmark (it puts this folder first on the service's
PYTHONPATH, so Python imports this file at start-up): it wraps a dozen
functions of the service so that each notes the time (perf_counter_ns, one
clock for every process here) when it starts or returns. One request at a
time is assumed (C=1): a request's marks run from gunicorn's accept() to
the end of its reply, when they are appended to STEPS_OUT as one JSON line.
Nothing of this is in the service's own code.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

_marks: list[tuple[str, int]] = []


def _mark(name: str) -> None:
    if name == "accept":
        _marks.clear()
    _marks.append((name, time.perf_counter_ns()))


def _save() -> None:
    """Once per request (a reply may be closed twice: by its frames and by the server)."""
    if _marks:
        with open(os.environ["STEPS_OUT"], "a") as out:
            out.write(json.dumps(_marks) + "\n")
        _marks.clear()


def _on_entry(owner: Any, name: str, mark: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def marked(*args: Any, **kwargs: Any) -> Any:
        _mark(mark)
        return original(*args, **kwargs)

    setattr(owner, name, marked)


def _on_return(owner: Any, name: str, mark: str, after: Callable[[], None] | None = None) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def marked(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        _mark(mark)
        if after is not None:
            after()
        return result

    setattr(owner, name, marked)


def _async_marks(owner: Any, name: str, entry: str | None, exit_: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    async def marked(*args: Any, **kwargs: Any) -> Any:
        if entry:
            _mark(entry)
        result = await original(*args, **kwargs)
        _mark(exit_)
        return result

    setattr(owner, name, marked)


def _first_write(response_class: Any) -> None:
    """The response's head and first frame sent (gunicorn's first write)."""
    original = response_class.write

    @functools.wraps(original)
    def marked(self: Any, data: bytes) -> None:
        first = not self.headers_sent
        original(self, data)
        if first:
            _mark("first_written")

    response_class.write = marked


def _app_called(worker_class: Any) -> None:
    """gunicorn calls the WSGI app (functions-framework's Flask app, in our wrapper)."""
    original = worker_class._clocked

    @functools.wraps(original)
    def clocked(self: Any, app: Any) -> Any:
        inner = original(self, app)

        def marked(environ: Any, start_response: Any) -> Any:
            _mark("wsgi_call")
            return inner(environ, start_response)

        return marked

    worker_class._clocked = clocked


def _install() -> None:
    from assistant import chain, direct, http, http1, outbox, reply, worker

    _on_entry(worker.Worker, "accept", "accept")
    _on_entry(worker.Worker, "handle", "pool_thread")
    _app_called(worker.Worker)
    _on_entry(http, "handle", "app")  # before main.py imports it
    _on_entry(reply.Reply, "start", "reply_start")
    _async_marks(chain.Chain, "run", "chain_run", "chain_done")
    _async_marks(http1.Http1Transport, "handle_async_request", "upstream_request", "upstream_head")
    _async_marks(http1.Body, "__anext__", None, "upstream_data")
    _on_entry(outbox.Outbox, "put", "chunk_put")
    _on_entry(worker.Worker, "_park", "parked")
    _on_return(direct.ClientSocket, "write_now", "first_written")  # the loop writes it
    _first_write(worker._KeepAliveImplied)  # or a thread does (a ping first, say)
    _on_return(reply.Reply, "close", "closed", after=_save)


if os.environ.get("STEPS_OUT"):
    _install()
