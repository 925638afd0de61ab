"""What a descriptor table's growth costs a threaded process, and what presizing it saves.

Linux grows a process's descriptor table in powers of two, and in a process
with more than one thread each growth waits for an RCU grace period
(server.presize_descriptor_table). This opens 1,000 sockets in a fresh
process that runs a second thread (as a gunicorn worker does), timing each
socket(), once as the process starts and once after the table was presized,
and prints the slowest opens and where they happened. Run:

    .venv/bin/python bench/descriptor_growth.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import os, socket, sys, threading, time
sys.path.insert(0, {root!r})
from assistant.server import presize_descriptor_table

if sys.argv[1] == "presized":
    presize_descriptor_table()
stop = threading.Event()
threading.Thread(target=stop.wait).start()  # a second thread: the table is shared
opened, times = [], []
for _ in range(1000):
    started = time.perf_counter_ns()
    sock = socket.socket()
    times.append((time.perf_counter_ns() - started, sock.fileno()))
    opened.append(sock)
stop.set()
slow = sorted(times, reverse=True)[:5]
print(" ".join(f"{{ns / 1e6:.2f}}ms@fd{{fd}}" for ns, fd in slow),
      f"| total {{sum(ns for ns, _ in times) / 1e6:.1f}} ms")
"""


def main() -> int:
    for case in ("as it starts", "presized"):
        for _ in range(3):
            done = subprocess.run(
                [sys.executable, "-c", PROBE.format(root=str(ROOT)), case.split()[0]],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            print(f"{case:>12}: slowest socket() calls {done.stdout.strip()}")
    return 0


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()  # --help
    raise SystemExit(main())
