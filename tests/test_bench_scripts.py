"""The benchmark scripts still run, each at its smallest size.

They are not imported by the service, nor type-checked with it, so a change
to the code they drive can break one unseen (bench/loop_pipeline.py relayed
nothing for rounds after a provider method gained a parameter). Only that
each runs and reports is checked here; what its numbers are is for the
benchmarks themselves (README "Speed"), never asserted.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Each script with its smallest run, and a line its report must hold.
RUNS = {
    "loop_pipeline": (["--streams", "5"], r"5 streams of \d+ chunks .* us per chunk"),
    "upstream_request": (["--requests", "5"], r"5 requests: \d+ us of CPU per request"),
    "thinking_splitter": ([], r"\d+ \|\s+[\d,]+ \|"),
    "loop_under_load": (["--streams", "2", "--rounds", "1"], r"C=2, .* us per chunk"),
    "profile_stream": (["--streams", "2", "--no-profile"], r"I/O loop thread CPU per stream"),
    "request_steps": (["--streams", "2"], r"includes the upstream's own answer"),
    "stream_latency": (["--levels", "1"], r"^\s+1 \|\s+[\d.]+"),
    "stream_cpu": (["--levels", "1", "--rounds", "2"], r"^\s+1\s+2 \|.*\|\s+0 \|"),
    "json_cpu": ([".", ".", "--replies", "2", "--rounds", "1"], r"^\s+A \.\s+median\s+[\d.]+"),
}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("script", sorted(RUNS))
def test_bench_script_runs_and_reports(script: str) -> None:
    args, report = RUNS[script]
    done = subprocess.run(
        [sys.executable, f"bench/{script}.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(report, done.stdout, re.MULTILINE), done.stdout[-2000:]
