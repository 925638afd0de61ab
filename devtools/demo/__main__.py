"""``python -m devtools.demo [--host 127.0.0.1] [--port 1958] [--verbose]``: serve the demo page."""

from __future__ import annotations

import argparse
import contextlib
import sys

from .server import DemoServer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1958)
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    try:
        server = DemoServer(args.host, args.port, args.verbose)
    except OSError as exc:
        sys.exit(f"demo: cannot listen on {args.host}:{args.port}: {exc}")
    print(f"demo: serving the demo page on {server.url}/", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
