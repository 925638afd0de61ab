"""Where a relayed stream's CPU goes: cProfile in the request thread and in the I/O loop thread.

In one process: the fake upstream (its own threads, not profiled) and the
function through functions-framework's Flask app (`create_app(...).test_client()`,
so gunicorn and our worker are not in it). Streams run one after another
(C=1), the upstream's chunks spaced as in bench/stream_cpu.py; each
thread's CPU time (user and kernel) and context switches are printed per stream, then each
profile's top functions by own time and by cumulative time.
cProfile slows what it measures by ~2x: read the split, not the totals.

    .venv/bin/python bench/profile_stream.py [--streams 200] [--chunks 20] [--interval 0.02]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.fake_upstream import FakeUpstream, Script  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--ttft", type=float, default=0.05, help="upstream first token (s)")
    parser.add_argument("--interval", type=float, default=0.02, help="between tokens (s)")
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument("--no-profile", action="store_true", help="thread CPU only")
    args = parser.parse_args()

    script = Script(tokens=["x"] * args.chunks, ttft=args.ttft, interval=args.interval)
    fake = FakeUpstream(default=script)
    fake.start()
    os.environ.update(
        ANTHROPIC_BASE_URL=fake.url,
        ANTHROPIC_API_KEY="bench-key",
        ASSISTANT_PROVIDERS="anthropic",
        AUTH_MODE="none",
    )
    import functions_framework

    from assistant import aio

    client = functions_framework.create_app(target="assistant", source=str(ROOT / "main.py"))
    client = client.test_client()

    def one() -> None:
        response = client.post(
            "/vac/assistant/bench/sse",
            json={"user_input": "benchmark"},
            headers={"Accept": "text/event-stream"},
            buffered=True,
        )
        assert response.status_code == 200 and b"[DONE]" in response.data, response.data[:200]

    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the log lines: written, not shown
    for _ in range(20):  # warm-up: imports, the loop, the pool
        one()

    loop_profile = cProfile.Profile()

    async def loop_start() -> resource.struct_rusage:
        if not args.no_profile:
            loop_profile.enable()
        return resource.getrusage(resource.RUSAGE_THREAD)

    async def loop_stop() -> resource.struct_rusage:
        loop_profile.disable()
        return resource.getrusage(resource.RUSAGE_THREAD)

    request_profile = cProfile.Profile()
    loop_before = aio.submit(loop_start()).result()
    request_before = resource.getrusage(resource.RUSAGE_THREAD)
    if not args.no_profile:
        request_profile.enable()
    for _ in range(args.streams):
        one()
    request_profile.disable()
    request_after = resource.getrusage(resource.RUSAGE_THREAD)
    loop_after = aio.submit(loop_stop()).result()
    fake.stop()
    sys.stdout = sys.__stdout__

    n = args.streams
    profiled = "" if args.no_profile else " (under cProfile)"
    print(f"{n} streams of {args.chunks} chunks, C=1, one after another{profiled}")
    for name, before, after in (
        ("request thread", request_before, request_after),
        ("I/O loop thread", loop_before, loop_after),
    ):
        user = (after.ru_utime - before.ru_utime) * 1000 / n
        system = (after.ru_stime - before.ru_stime) * 1000 / n
        switches = (after.ru_nvcsw - before.ru_nvcsw + after.ru_nivcsw - before.ru_nivcsw) / n
        print(
            f"{name} CPU per stream: {user + system:.2f} ms "
            f"(user {user:.2f}, kernel {system:.2f}), {switches:.0f} context switches"
        )
    if args.no_profile:
        return 0
    for name, profile in (("request thread", request_profile), ("I/O loop thread", loop_profile)):
        for order in ("tottime", "cumulative"):
            out = io.StringIO()
            stats = pstats.Stats(profile, stream=out).strip_dirs().sort_stats(order)
            stats.print_stats(args.top)
            body = out.getvalue()
            start = body.find("   ncalls")
            print(f"\n== {name}, by {order} ==")
            print(body[start:].rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
