"""cProfile inside the service's upstream I/O loop thread, or its request threads, for a bench
run.

Loaded only when a benchmark puts this folder first on the service's
PYTHONPATH (e.g. `bench/stream_cpu.py --env PYTHONPATH=bench/loop_profile_hook
--env LOOP_PROFILE_OUT=/tmp/loop.prof`): it wraps `assistant.aio._run` so the
loop runs under cProfile, and writes the stats to LOOP_PROFILE_OUT every two
seconds (read them with `python -m pstats`). With REQUEST_PROFILE_OUT set
too (or instead), the request threads are profiled (below). Each profile is
clocked by its own thread's CPU time: with the wall clock, a thread's wait
for the GIL was charged to whatever it ran then. cProfile counts Python
calls and the C functions they call; uvloop's own C work between callbacks
is not in it, so the profile's total is below the thread's CPU. Nothing of
this is in the service's own code.
"""

from __future__ import annotations

import cProfile
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

if os.environ.get("LOOP_PROFILE_OUT"):
    import asyncio

    from assistant import aio

    _plain_run = aio._run

    def _profiled_run(loop: asyncio.AbstractEventLoop) -> None:
        profile = cProfile.Profile(time.thread_time)  # its CPU, not the GIL waits

        def dump() -> None:
            profile.dump_stats(os.environ["LOOP_PROFILE_OUT"])  # disables it: enable again
            profile.enable()
            loop.call_later(2.0, dump)

        loop.call_soon(profile.enable)  # in this thread: cProfile is per thread
        loop.call_later(2.0, dump)
        _plain_run(loop)

    aio._run = _profiled_run

if os.environ.get("REQUEST_PROFILE_OUT"):
    # The request threads: each pool thread its own cProfile (its CPU time as the
    # clock, so waiting for the GIL costs nothing), around gthread's handle() and the
    # worker's _go_on() (a parked reply's way on). Each thread writes its own file,
    # REQUEST_PROFILE_OUT.<thread>, at most every two seconds, between requests (a
    # profile is read only while disabled); merge them with pstats.Stats(*files).
    import threading
    from typing import Any

    from assistant import worker

    _local = threading.local()

    def _profiled(method: Any) -> Any:
        def run(*args: Any) -> Any:
            profile = getattr(_local, "profile", None)
            if profile is None:
                profile = _local.profile = cProfile.Profile(time.thread_time)
                _local.dumped = time.monotonic()
            profile.enable()
            try:
                return method(*args)
            finally:
                profile.disable()
                if time.monotonic() - _local.dumped > 2.0:
                    _local.dumped = time.monotonic()
                    out = os.environ["REQUEST_PROFILE_OUT"]
                    profile.dump_stats(f"{out}.{threading.get_ident()}")

        return run

    worker.Worker.handle = _profiled(worker.Worker.handle)
    worker.Worker._go_on = _profiled(worker.Worker._go_on)
