"""``python -m devtools.fake_upstream``: serve the fake in the foreground until SIGINT/SIGTERM.

Every request that finds no queued script gets the default one built from the flags; a
separate process can still queue scripts over HTTP (``POST /_fake/scripts``).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from . import FakeUpstream, Script
from . import __doc__ as package_doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.fake_upstream", description=(package_doc or "").splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1957)
    parser.add_argument("--ttft", type=float, default=0.0)
    parser.add_argument("--interval", type=float, default=0.0)
    parser.add_argument("--thinking", help='thinking pieces, "|"-separated')
    parser.add_argument("--echo", action="store_true")
    args = parser.parse_args(argv)
    default = Script(
        ttft=args.ttft,
        interval=args.interval,
        echo=args.echo,
        thinking=args.thinking.split("|") if args.thinking else None,
    )
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    with FakeUpstream(args.host, args.port, default, verbose=True) as upstream:
        print(f"fake upstream listening on {upstream.url}", flush=True)
        done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
