"""Throughput of the thinking splitter, the one piece of work done on every chunk.

Prints chunks per second and the cost per chunk for small (token-sized) and
large chunks, so a change that makes feeding super-linear shows up as a
falling rate. Numbers, not assertions. Run:

    .venv/bin/python bench/thinking_splitter.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from assistant.thinking import ThinkingSplitter

TEXT = (
    "Some words < and a tag <thi <thinking>reasoning, step by step </thi more</thinking> done. "
    * 2000
)


def run(chunk_size: int) -> tuple[int, float]:
    chunks = [TEXT[i : i + chunk_size] for i in range(0, len(TEXT), chunk_size)]
    splitter = ThinkingSplitter()
    started = time.perf_counter()
    for chunk in chunks:
        splitter.feed(chunk)
    splitter.finish()
    _ = splitter.content, splitter.thinking
    return len(chunks), time.perf_counter() - started


def main() -> None:
    print(f"text: {len(TEXT):,} characters")
    print(f"{'chunk chars':>11} | {'chunks':>8} | {'chunks/s':>12} | {'µs/chunk':>8}")
    for size in (1, 4, 16, 256, 4096):
        count, seconds = run(size)
        print(
            f"{size:>11} | {count:>8,} | {count / seconds:>12,.0f} | {seconds / count * 1e6:>8.2f}"
        )


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()  # --help
    main()
