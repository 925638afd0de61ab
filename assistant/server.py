"""Our gunicorn settings and worker under functions-framework: its one private module we import.

functions-framework is the entry point, locally and on Cloud Run. Its CLI
imports main.py, then builds
`functions_framework._http.gunicorn.GunicornApplication(app, host, port,
debug)` itself and runs it. Nothing public reaches that call: it passes no
options, and GUNICORN_CMD_ARGS and gunicorn.conf.py are read only by
gunicorn's own `Application`, not by the `BaseApplication` it builds on.

So `install()`, called from main.py before the server exists, replaces that
class *in its private module* by a subclass whose `load_config()` sets, on
top of what functions-framework set:

- `worker_class`: `assistant.worker.Worker` (read deadline, no 2 s close on
  the main thread, JSON refusals), also when THREADS=1, where gunicorn would
  otherwise pick its sync worker;
- `worker_connections`: half of RLIMIT_NOFILE (`worker_connections()`), not
  gunicorn's 1000, which parked streams alone would reach;
- `limit_request_line` 8190 (functions-framework sets 0, unlimited, and
  gunicorn's parsing time grows with the square of the line: 8 MB took 8 s),
  `limit_request_fields` 100 and `limit_request_field_size` 8190 (gunicorn's
  defaults, set here so that they are ours to change);
- `post_worker_init`: in each worker, once the app is loaded, the settings
  read for the worker's life (config.py), its descriptor table grown
  (`presize_descriptor_table()`), batch scheduling for its threads
  (`batch_scheduling()`), the collector tuned and the memory janitor started
  (memory.py).

Everything else stays functions-framework's: bind, WORKERS, THREADS,
timeout, log level. REQUEST_READ_TIMEOUT_SECONDS, THREADS and WORKERS are
checked here once, before functions-framework reads them, so a bad value
stops the start with a line naming it instead of failing each request (or,
for WORKERS=0, serving nothing without a word).

If a functions-framework upgrade moves or reshapes that class, importing this
module raises, main.py with it, and the server does not start; and
tests/test_slow_clients.py checks that the server functions-framework builds
is ours. Neither fails silently. Only `--debug` (Flask's own server, never
used here) is out of reach.
"""

# gunicorn (and so functions-framework's application class) has no type
# information: subclassing it is what this module is for.
# mypy: disallow-subclassing-any=False

from __future__ import annotations

import os
import resource
import sys
from typing import Any

import gunicorn.app.base  # type: ignore[import-untyped]

from . import config, limits, memory
from .config import ConfigError, ServerSettings
from .tracing import process_log
from .worker import LIMIT_REQUEST_FIELD_SIZE, LIMIT_REQUEST_FIELDS, LIMIT_REQUEST_LINE, Worker

try:
    from functions_framework._http import gunicorn as _ff_gunicorn

    _FunctionsFrameworkApplication: type[Any] = _ff_gunicorn.GunicornApplication
except (ImportError, AttributeError) as exc:  # pragma: no cover - only on an upgrade
    raise ImportError(
        "functions-framework no longer has functions_framework._http.gunicorn."
        "GunicornApplication: assistant/server.py cannot apply our gunicorn settings"
    ) from exc
if not (
    isinstance(_FunctionsFrameworkApplication, type)
    and issubclass(_FunctionsFrameworkApplication, gunicorn.app.base.BaseApplication)
):  # pragma: no cover - only on an upgrade
    raise ImportError(
        "functions_framework._http.gunicorn.GunicornApplication is no longer a gunicorn "
        "application: assistant/server.py cannot apply our gunicorn settings"
    )


def _in_worker(worker: object) -> None:
    """gunicorn's `post_worker_init` hook, once the worker has loaded the app."""
    config.fix_for_process()
    warn_of_cors_origins()
    threads = getattr(getattr(worker, "cfg", None), "threads", None)
    if isinstance(threads, int):
        limits.replies_in_flight.set_threads(threads)  # half of them may wait on clients
    presize_descriptor_table()  # before its threads start: no grace period to wait for
    batch_scheduling()  # before any thread of the worker starts: they inherit it
    memory.start_in_worker()  # last: it freezes what exists, the settings included


def warn_of_cors_origins() -> None:
    """A line in the log for CORS_ORIGINS entries no browser's origin can be (a browser
    reports their refusals to the page as a network error, and nothing else said so),
    and for a `*` among origins: it admits every origin, without credentials, and a
    list meant as the only origins allowed was silently none."""
    origins = config.cors_origins()
    if unmatched := config.origins_that_match_nothing(origins):
        process_log().warning(
            "cors.origins_match_nothing",
            origins=unmatched,
            hint="an origin is scheme://host[:port], no path, one per comma",
        )
    if "*" in origins and len(origins) > 1:
        process_log().warning(
            "cors.any_origin",
            hint="* in CORS_ORIGINS admits every origin (without credentials): "
            "the other entries add nothing",
        )
    elif os.environ.get("CORS_ORIGINS", "x").strip() == "":  # meant as none, maybe
        process_log().warning(
            "cors.any_origin",
            hint="CORS_ORIGINS is set but blank: its default, * (every origin, without "
            "credentials), applies",
        )


# Descriptors the worker's table holds from the start (each stream holds two:
# its client's socket and its upstream connection).
DESCRIPTORS = 4096


def presize_descriptor_table(descriptors: int = DESCRIPTORS) -> int:
    """Grow this process's descriptor table to `descriptors` slots now (fewer if
    RLIMIT_NOFILE says so); returns the highest descriptor it reached, or -1.

    Linux grows a process's descriptor table in powers of two as descriptors
    are opened, and in a process with more than one thread each growth waits
    for an RCU grace period (`expand_fdtable()`: `synchronize_rcu()`), 6-16 ms
    on this machine (bench/descriptor_growth.py). The thread that opened the
    descriptor waits it out: gunicorn's main thread inside accept() (no
    request is accepted or read meanwhile), or the I/O loop opening an
    upstream connection (every stream stalls). A worker's first burst past
    each size stalled so (`perf sched timehist`: accept4 -> alloc_fd ->
    expand_files -> synchronize_rcu; bench/results/stream_cpu-round6.txt),
    which on Cloud Run is a new instance's first wave of users. The table never
    shrinks: grown here, before the worker starts a thread, it costs 8 bytes a
    slot (32 KB) and no wait, then or later. Nothing is left open.
    """
    try:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return -1
    highest = descriptors - 1 if soft == resource.RLIM_INFINITY else min(descriptors, soft) - 1
    if highest < 3 or _is_open(highest):  # an open one is the table's already
        return -1
    placeholder = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(placeholder, highest, inheritable=False)
        os.close(highest)
    except OSError:
        return -1
    finally:
        os.close(placeholder)
    return highest


def _is_open(descriptor: int) -> bool:
    try:
        os.fstat(descriptor)
    except OSError:
        return False
    return True


def batch_scheduling() -> bool:
    """Linux's SCHED_BATCH for this thread and the threads it starts from now on.

    A worker's threads take turns on one GIL. When the I/O loop wakes a
    request thread (a reply's first chunk, its end), Linux lets the woken
    thread preempt the loop at once; it then finds the GIL held by the
    thread it preempted, and sleeps again: two context switches for nothing,
    ~1,800 times a second at C=200 (the loop's involuntary switches, from
    /proc). A SCHED_BATCH thread does not preempt on waking: it runs when
    the loop blocks, which is when the GIL is free. Measured at C=200: the
    first chunk +15-19 -> +9 ms at p50, gunicorn's main thread 30% less CPU
    (bench/results/stream_cpu-round4.txt). Its priority is unchanged. False
    where the system refuses it (not Linux, or a sandbox).
    """
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):
        return False
    return True


def worker_connections() -> int:
    """Connections a worker holds at once before gunicorn stops accepting.

    gunicorn's default, 1000, counts open streams, kept-alive and arriving
    connections alike; with streams that hold no thread (worker.py "parking")
    and MAX_STREAMS at 1000, it would stop accepting before the 503 that
    MAX_STREAMS promises. A stream holds two descriptors (its client, its
    upstream), so the bound is half of RLIMIT_NOFILE, less a margin for the
    rest: past it accept() would fail with EMFILE.
    """
    try:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return 1000
    if soft == resource.RLIM_INFINITY:
        return 10_000
    return max(100, min(10_000, (soft - 256) // 2))


GUNICORN_OPTIONS: dict[str, Any] = {
    "worker_class": Worker,
    "worker_connections": worker_connections(),
    "limit_request_line": LIMIT_REQUEST_LINE,
    "limit_request_fields": LIMIT_REQUEST_FIELDS,
    "limit_request_field_size": LIMIT_REQUEST_FIELD_SIZE,
    "post_worker_init": _in_worker,
}


class Application(_FunctionsFrameworkApplication):
    """functions-framework's gunicorn application, with GUNICORN_OPTIONS on top."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Before functions-framework's own __init__, which reads THREADS and WORKERS
        # with a bare int(): a bad value stops the start with its name, not a traceback.
        try:
            ServerSettings.from_env()
        except ConfigError as exc:
            process_log().error("config.invalid", reason=str(exc))
            print(f"\nError: {exc}", file=sys.stderr)  # as gunicorn says its own
            sys.exit(1)
        super().__init__(*args, **kwargs)

    def load_config(self) -> None:
        super().load_config()
        for name, value in GUNICORN_OPTIONS.items():
            self.cfg.set(name, value)


def install() -> None:
    """Make functions-framework build `Application` when it starts the server."""
    # mypy: "cannot assign to a type"; replacing that class is the point.
    _ff_gunicorn.GunicornApplication = Application  # type: ignore[misc]
