"""Hostile clients against the real server: what they cost everyone else, side by side with quiet.

Starts the Firestore emulator (java), the fake upstream (in this process) and
the service (functions-framework + gunicorn gthread, in a subprocess, THREADS
as given), all on 127.0.0.1, then:

1. quiet baseline: `GET /health` latency p50/p99 (a fresh connection per
   probe, one started every 50 ms, answered or not) and normal streams'
   first-chunk latency p50/p99 and errors (two clients streaming one after the other; the fake
   answers with a first token after 50 ms, then 20 tokens 20 ms apart);
2. the same, one attack at a time, while `--attackers` hostile connections
   are attached (all driven by one thread with a selector, so the attacker
   costs little CPU; a connection the server drops is opened again, as a
   real attacker would):
   - slow-body: full headers with a Content-Length, then the body 1 byte/s;
   - slow-headers: the request line and headers 1 byte/s;
   - non-readers: an SSE stream whose reply is 2 MB, with a small
     SO_RCVBUF, never read (more of them than MAX_STREAMS hold every
     stream slot: normal streams then get 503 `overloaded`, by design,
     until SEND_TIMEOUT_SECONDS frees the slots);
   - close-idle: a request with `Connection: close`; half never read the
     answer, half read it 64 bytes/s;
   - huge-head: half a `--line-kb` request line, half 200 headers, at full
     speed, again one second after each answer;
   with the ratio to the baseline and the targets (/health p99 <= 100 ms,
   no stream errors, first-chunk p99 within 2x the baseline);
3. the gunicorn worker's RSS, open file descriptors and threads (from /proc)
   before each attack, at its peak (during it and the recovery), and
   `--recover-seconds` after the attackers left (target: RSS back within 10 % of where it started);
4. a load run with saving on (`save_to_history`, a unique trace_id per
   request), then the documents in the emulator: exactly two per request;
5. a soak of `--soak-streams` concurrent streams for `--soak-seconds`,
   printing RSS / fds / threads every few seconds.

All clients are one anonymous user, so MAX_STREAMS_PER_USER is set out of
the way. Every client socket has TCP_NODELAY. Numbers, not assertions: the machine is
shared (2 cores), the attacker runs on it too, and numbers move by +-30 %
between runs. Run:

    .venv/bin/python bench/abuse.py [--quick] [--attackers 100] [--attack-seconds 15]
        [--soak-seconds 60] [--threads 64] [--attacks slow-body,non-readers]

`--quick` (about 40 s) shortens every window; flags given with it still win.
The service's log goes to .run/abuse-service.log.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.fake_upstream import FakeUpstream, Script  # noqa: E402
from devtools.service import RunningService, running_service  # noqa: E402
from tests.emulator import PROJECT, EmulatorUnavailable, FirestoreEmulator  # noqa: E402

NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
SHORT = Script(tokens=[f"word{i} " for i in range(20)], ttft=0.05, interval=0.02)
LONG = Script(tokens=["x" * 999 + " " for _ in range(2000)])  # 2 MB, as fast as it is read
ASSISTANT = "abuse"
STREAM_PATH = f"/vac/assistant/{ASSISTANT}/sse"
HEALTH_EVERY = 0.05  # seconds between /health probes
HEALTH_OUTSTANDING = 100  # probes waiting at once, at most
HEALTH_TARGET = 0.100  # seconds, /health p99 during an attack
STREAM_RATIO_TARGET = 2.0  # first-chunk p99 during an attack / quiet
RSS_TARGET = 0.10  # RSS after the attackers left, relative to before
# --quick: every window short, so the whole run takes about 45 s.
QUICK = {
    "attack_seconds": 2,
    "baseline_seconds": 2,
    "settle_seconds": 0.5,
    "recover_seconds": 1,
    "timeout": 2,
    "save_requests": 20,
    "save_concurrency": 10,
    "soak_seconds": 4,
    "soak_every": 2,
}
SETTINGS_SHOWN = (
    "REQUEST_READ_TIMEOUT_SECONDS",
    "SEND_TIMEOUT_SECONDS",
    "MAX_STREAMS",
    "MAX_REPLY_SECONDS",
)


def _client(timeout: float, keepalive: bool = False) -> httpx.Client:
    """TCP_NODELAY on every connection; by default a fresh connection per request."""
    return httpx.Client(
        transport=httpx.HTTPTransport(socket_options=NODELAY),
        timeout=httpx.Timeout(timeout),
        limits=httpx.Limits(
            max_connections=None, max_keepalive_connections=None if keepalive else 0
        ),
    )


# -- the server's resources, from /proc --------------------------------------------------------
@dataclass(frozen=True)
class Resources:
    rss_mb: float
    fds: int
    threads: int


def _worker_pid(arbiter: int) -> int:
    """The gunicorn worker: the functions-framework process's (first) child."""
    children = Path(f"/proc/{arbiter}/task/{arbiter}/children").read_text().split()
    return int(children[0]) if children else arbiter


def resources(arbiter: int) -> Resources:
    pid = _worker_pid(arbiter)
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return Resources(
        rss_mb=int(status["VmRSS"].split()[0]) / 1024,
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        threads=int(status["Threads"]),
    )


class PeakSampler:
    """Samples the worker's resources every `every` seconds while in use; keeps the largest."""

    def __init__(self, arbiter: int, every: float = 0.25) -> None:
        self.arbiter, self.every = arbiter, every
        self.peak = resources(arbiter)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            with contextlib.suppress(OSError, IndexError, KeyError):
                now = resources(self.arbiter)
                self.peak = Resources(
                    max(self.peak.rss_mb, now.rss_mb),
                    max(self.peak.fds, now.fds),
                    max(self.peak.threads, now.threads),
                )

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- normal users: /health probes and streams --------------------------------------------------
@dataclass
class Measured:
    """What normal users saw in one window. A failed probe counts as `inf` latency."""

    health: list[float] = field(default_factory=list)
    health_errors: Counter[str] = field(default_factory=Counter)
    first_chunk: list[float] = field(default_factory=list)
    stream_errors: Counter[str] = field(default_factory=Counter)
    streams: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _error_name(exc: Exception) -> str:
    return "timeout" if isinstance(exc, httpx.TimeoutException) else type(exc).__name__


def probe_health(client: httpx.Client, url: str, into: Measured) -> None:
    sent = time.perf_counter()
    try:
        response = client.get(f"{url}/health")
        error = None if response.status_code == 200 else f"HTTP {response.status_code}"
    except httpx.HTTPError as exc:
        error = _error_name(exc)
    took = time.perf_counter() - sent
    with into.lock:
        into.health.append(math.inf if error else took)
        if error:
            into.health_errors[error] += 1


def stream_once(
    client: httpx.Client, url: str, body: dict[str, Any]
) -> tuple[float | None, str | None, dict[str, Any] | None]:
    """(seconds to the first chunk, error or None, the final frame's JSON) of one SSE reply."""
    sent = time.perf_counter()
    first: float | None = None
    final: dict[str, Any] | None = None
    try:
        with client.stream("POST", f"{url}{STREAM_PATH}", json=body) as response:
            if response.status_code != 200:
                response.read()
                return None, f"HTTP {response.status_code}", None
            done = False
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    done = True
                    break
                frame = json.loads(data)
                if "chunk" in frame:
                    first = first if first is not None else time.perf_counter() - sent
                elif "error" in frame:
                    return first, f"error frame {frame.get('code')}", frame
                else:
                    final = frame
    except httpx.HTTPError as exc:
        return first, _error_name(exc), None
    if not done:
        return first, "no [DONE]", final
    if first is None:
        return None, "no chunk", final
    return first, None, final


def measure(url: str, seconds: float, timeout: float, stream_clients: int = 2) -> Measured:
    """/health every 50 ms and `stream_clients` clients streaming, for `seconds`.

    The probes are open-loop: one starts every 50 ms whether or not the earlier
    ones were answered (at most HEALTH_OUTSTANDING at once), so a stuck server
    shows as many slow probes, not as one.
    """
    measured = Measured()
    deadline = time.monotonic() + seconds
    client = _client(timeout)

    def health_loop() -> None:
        probes: list[threading.Thread] = []
        next_at = time.monotonic()
        while next_at < deadline:
            time.sleep(max(0.0, next_at - time.monotonic()))
            probes = [probe for probe in probes if probe.is_alive()]
            if len(probes) < HEALTH_OUTSTANDING:
                probe = threading.Thread(target=probe_health, args=(client, url, measured))
                probe.start()
                probes.append(probe)
            next_at += HEALTH_EVERY
        for probe in probes:
            probe.join()

    def stream_loop() -> None:
        while time.monotonic() < deadline:
            first, error, _ = stream_once(client, url, {"user_input": "benchmark"})
            with measured.lock:
                measured.streams += 1
                if error:
                    measured.stream_errors[error] += 1
                elif first is not None:
                    measured.first_chunk.append(first)
            if error:
                time.sleep(0.1)  # a refused stream comes back at once: do not spin

    threads = [threading.Thread(target=health_loop)]
    threads += [threading.Thread(target=stream_loop) for _ in range(stream_clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    return measured


# -- hostile clients: one thread, one selector --------------------------------------------------
@dataclass(frozen=True)
class Hostile:
    """One kind of hostile connection.

    `head` is sent at once (as fast as the server takes it), then `drip` one byte
    a second. `read_every`: None never reads, 0 reads all that arrives,
    otherwise `read_size` bytes every `read_every` seconds. When the server
    drops the connection (seen by reading or sending) a new one is opened
    `reconnect_after` seconds later (None: never).
    """

    head: bytes
    drip: bytes = b""
    read_every: float | None = 0
    read_size: int = 64
    rcvbuf: int | None = None
    reconnect_after: float | None = 0


@dataclass(eq=False)  # hashed by identity, kept in a set
class _Conn:
    kind: Hostile
    sock: socket.socket
    opened: float
    pending: bytes  # of the head, not yet sent
    dripped: int = 0
    next_drip: float = 0.0
    next_read: float = 0.0
    answered: bool = False


@dataclass
class SwarmStats:
    opened: int = 0
    dropped: int = 0  # closed or reset by the server
    lifetimes: list[float] = field(default_factory=list)  # seconds, of the dropped ones
    answers: Counter[str] = field(default_factory=Counter)  # status codes the server sent


class Swarm:
    """Hostile connections, `count` of each kind, kept open by one thread until stopped."""

    def __init__(self, address: tuple[str, int], kinds: list[tuple[Hostile, int]]) -> None:
        self.address = address
        self.kinds = kinds
        self.stats = SwarmStats()
        self._selector = selectors.DefaultSelector()
        self._conns: set[_Conn] = set()
        self._reopen: list[tuple[float, Hostile]] = []
        self._stop = threading.Event()
        self._crashed: BaseException | None = None
        self._thread = threading.Thread(target=self._guarded, name="swarm", daemon=True)

    def __enter__(self) -> Swarm:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._crashed is not None:
            raise RuntimeError("the attacking thread crashed") from self._crashed

    def _open(self, kind: Hostile) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if kind.rcvbuf is not None:  # before connect, so the window is small from the start
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, kind.rcvbuf)
        sock.settimeout(5)
        try:
            sock.connect(self.address)
        except OSError:
            sock.close()
            self._reopen.append((time.monotonic() + 1, kind))
            return
        sock.setblocking(False)
        now = time.monotonic()
        conn = _Conn(kind, sock, now, kind.head, next_drip=now + 1, next_read=now)
        self._conns.add(conn)
        self.stats.opened += 1
        self._watch(conn)

    def _watch(self, conn: _Conn) -> None:
        events = (selectors.EVENT_WRITE if conn.pending else 0) | (
            selectors.EVENT_READ if conn.kind.read_every == 0 else 0
        )
        with contextlib.suppress(KeyError):
            self._selector.unregister(conn.sock)
        if events:
            self._selector.register(conn.sock, events, conn)

    def _drop(self, conn: _Conn) -> None:
        """The server closed or reset `conn`."""
        self.stats.dropped += 1
        self.stats.lifetimes.append(time.monotonic() - conn.opened)
        self._close(conn)
        if conn.kind.reconnect_after is not None and not self._stop.is_set():
            self._reopen.append((time.monotonic() + conn.kind.reconnect_after, conn.kind))

    def _close(self, conn: _Conn) -> None:
        with contextlib.suppress(KeyError):
            self._selector.unregister(conn.sock)
        conn.sock.close()
        self._conns.discard(conn)

    def _send(self, conn: _Conn, data: bytes) -> int:
        try:
            return conn.sock.send(data)
        except BlockingIOError:
            return 0
        except OSError:
            self._drop(conn)
            return -1

    def _read(self, conn: _Conn, size: int) -> None:
        try:
            data = conn.sock.recv(size)
        except BlockingIOError:
            return
        except OSError:
            return self._drop(conn)
        if not data:
            return self._drop(conn)
        if not conn.answered and data.startswith(b"HTTP/"):
            conn.answered = True
            self.stats.answers[data.split(b" ", 2)[1].decode("latin-1")] += 1

    def _guarded(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            self._crashed = exc
            for conn in list(self._conns):
                self._close(conn)

    def _run(self) -> None:
        for kind, count in self.kinds:
            for _ in range(count):
                self._open(kind)
        while not self._stop.is_set():
            for key, mask in self._selector.select(timeout=0.05):
                conn: _Conn = key.data
                if conn not in self._conns:
                    continue
                if mask & selectors.EVENT_WRITE:
                    sent = self._send(conn, conn.pending[:65536])
                    if sent > 0:
                        conn.pending = conn.pending[sent:]
                        if not conn.pending:
                            self._watch(conn)
                if mask & selectors.EVENT_READ and conn in self._conns:
                    self._read(conn, 65536)
            now = time.monotonic()
            for conn in list(self._conns):
                kind = conn.kind
                if not conn.pending and conn.dripped < len(kind.drip) and now >= conn.next_drip:
                    if self._send(conn, kind.drip[conn.dripped : conn.dripped + 1]) < 0:
                        continue
                    conn.dripped += 1
                    conn.next_drip += 1
                if kind.read_every and now >= conn.next_read and conn in self._conns:
                    conn.next_read = now + kind.read_every
                    self._read(conn, kind.read_size)
            due = [item for item in self._reopen if item[0] <= now]
            self._reopen = [item for item in self._reopen if item[0] > now]
            for _, kind in due:
                self._open(kind)
        for conn in list(self._conns):
            self._close(conn)
        self._selector.close()


def _attacks(args: argparse.Namespace) -> dict[str, list[tuple[Hostile, int]]]:
    n, half = args.attackers, args.attackers // 2
    post = f"POST {STREAM_PATH} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    body = b'{"user_input": "a stream nobody reads"}'
    stream = (post + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    slow_head = (post + "".join(f"X-Pad-{i}: {'p' * 40}\r\n" for i in range(40)) + "\r\n").encode()
    close = (
        f"POST {STREAM_PATH} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    health_close = b"GET /health HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    long_line = b"GET /" + b"a" * (args.line_kb * 1024) + b" HTTP/1.1\r\nHost: bench\r\n\r\n"
    many_headers = (
        b"GET /health HTTP/1.1\r\nHost: bench\r\n"
        + b"".join(b"X-H%d: %s\r\n" % (i, b"h" * 100) for i in range(200))
        + b"\r\n"
    )
    return {
        "slow-body": [
            (
                Hostile(
                    head=(post + "Content-Length: 100000\r\n\r\n").encode(), drip=b"{" * 100000
                ),
                n,
            )
        ],
        "slow-headers": [(Hostile(head=b"", drip=slow_head), n)],
        "non-readers": [
            (Hostile(head=stream, read_every=None, rcvbuf=4096, reconnect_after=None), n)
        ],
        "close-idle": [
            (Hostile(head=health_close, read_every=None, reconnect_after=None), half),
            (Hostile(head=close, read_every=1.0, read_size=64, rcvbuf=4096), n - half),
        ],
        "huge-head": [
            (Hostile(head=long_line, reconnect_after=1.0), half),
            (Hostile(head=many_headers, reconnect_after=1.0), n - half),
        ],
    }


# -- report -------------------------------------------------------------------------------------
def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile; nan when there are no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def ms(value: float, width: int = 7) -> str:
    if math.isnan(value):
        return f"{'-':>{width}}"
    if math.isinf(value):
        return f"{'failed':>{width}}"
    return f"{value * 1000:{width}.1f}"


def duration(value: float) -> str:
    """'12.3 ms', 'failed' (no answer in time, or refused), or '-' (nothing to measure)."""
    return ms(value, 0).strip() + ("" if math.isnan(value) or math.isinf(value) else " ms")


def ratio(value: float, base: float) -> str:
    if math.isnan(value) or math.isnan(base) or base <= 0:
        return "    -"
    return "  inf" if math.isinf(value) else f"{value / base:5.1f}"


def errors(counter: Counter[str]) -> str:
    return ", ".join(f"{name} x{count}" for name, count in counter.most_common()) or "-"


def row(name: str, m: Measured, base: Measured | None) -> str:
    h50, h99 = quantile(m.health, 0.5), quantile(m.health, 0.99)
    s50, s99 = quantile(m.first_chunk, 0.5), quantile(m.first_chunk, 0.99)
    ratios = ""
    if base is not None:
        ratios = (
            f" | {ratio(h99, quantile(base.health, 0.99))}"
            f" {ratio(s99, quantile(base.first_chunk, 0.99))}"
        )
    else:
        ratios = " |     -     -"
    return (
        f"{name:<14} | {len(m.health):>5} {ms(h50)} {ms(h99)} | {m.streams:>5} "
        f"{ms(s50)} {ms(s99)} {sum(m.stream_errors.values()):>5}{ratios}"
    )


HEADER = (
    f"{'':<14} | {'/health':^21} | {'normal streams, first chunk':^31} | {'p99 ratio':^11}\n"
    f"{'window':<14} | {'n':>5} {'p50 ms':>7} {'p99 ms':>7} | {'n':>5} {'p50 ms':>7} "
    f"{'p99 ms':>7} {'errs':>5} | {'hlth':>5} {'strm':>5}"
)
LEGEND = (
    "(failed: that quantile is a request with no answer within --timeout, or refused; "
    "-: no stream succeeded)"
)


def verdicts(name: str, m: Measured, base: Measured) -> list[str]:
    h99 = quantile(m.health, 0.99)
    s99, b99 = quantile(m.first_chunk, 0.99), quantile(base.first_chunk, 0.99)
    n_errors = sum(m.stream_errors.values())
    return [
        f"  {_mark(h99 <= HEALTH_TARGET)} /health p99 <= {HEALTH_TARGET * 1000:.0f} ms: "
        f"{duration(h99)}" + (f" ({errors(m.health_errors)})" if m.health_errors else ""),
        f"  {_mark(n_errors == 0 and m.streams > 0)} no stream errors: {n_errors} of {m.streams}"
        + (f" ({errors(m.stream_errors)})" if n_errors else ""),
        f"  {_mark(s99 <= STREAM_RATIO_TARGET * b99)} first chunk p99 <= "
        f"{STREAM_RATIO_TARGET:.0f}x quiet ({STREAM_RATIO_TARGET * b99 * 1000:.0f} ms): "
        f"{duration(s99)}",
    ]


def _mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def pct(after: float, before: float) -> str:
    return f"{(after - before) / before * 100:+.0f}%" if before else "-"


def resource_row(name: str, before: Resources, peak: Resources, after: Resources) -> str:
    return (
        f"{name:<14} | {before.rss_mb:6.1f} {peak.rss_mb:6.1f} {after.rss_mb:6.1f} "
        f"{pct(after.rss_mb, before.rss_mb):>5} | {before.fds:>4} {peak.fds:>5} {after.fds:>4} "
        f"{pct(after.fds, before.fds):>5} | {before.threads:>4} {peak.threads:>4} "
        f"{after.threads:>4} {pct(after.threads, before.threads):>5} | "
        f"{_mark(after.rss_mb <= before.rss_mb * (1 + RSS_TARGET))}"
    )


RESOURCE_HEADER = (
    f"{'':<14} | {'worker RSS MB':^26} | {'open fds':^22} | {'threads':^20} | RSS\n"
    f"{'attack':<14} | {'before':>6} {'peak':>6} {'after':>6} {'chg':>5} | {'bef':>4} "
    f"{'peak':>5} {'aft':>4} {'chg':>5} | {'bef':>4} {'peak':>4} {'aft':>4} {'chg':>5} | <=+10%"
)


# -- the runs -----------------------------------------------------------------------------------
def wait_fake_settled(fake: FakeUpstream, quiet: float = 1.0, limit: float = 10.0) -> int:
    """Wait until no new upstream request arrived for `quiet` seconds; how many there are."""
    deadline = time.monotonic() + limit
    count, since = len(fake.requests), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet:
        time.sleep(0.1)
        if len(fake.requests) != count:
            count, since = len(fake.requests), time.monotonic()
    return count


def run_attack(
    name: str,
    kinds: list[tuple[Hostile, int]],
    service: RunningService,
    fake: FakeUpstream,
    args: argparse.Namespace,
) -> tuple[Measured, Resources, Resources, Resources, SwarmStats]:
    host, port = service.url.removeprefix("http://").split(":")
    pid = service.process.pid
    before = resources(pid)
    upstream_before = len(fake.requests)
    if name == "non-readers":
        fake.default = LONG  # only the attackers' replies are long
    # The peak covers the recovery too: the server may pay for leavers as they leave.
    with PeakSampler(pid) as sampler:
        with Swarm((host, int(port)), kinds) as swarm:
            time.sleep(args.settle_seconds)
            if name == "non-readers":
                reached = wait_fake_settled(fake) - upstream_before
                fake.default = SHORT
                print(f"  ({reached} of {args.attackers} non-readers got a stream)", flush=True)
            measured = measure(service.url, args.attack_seconds, args.timeout)
        time.sleep(args.recover_seconds)
        after = resources(pid)
    return measured, before, sampler.peak, after, swarm.stats


def describe_swarm(stats: SwarmStats) -> str:
    lifetimes = sorted(stats.lifetimes)
    dropped = (
        f"{stats.dropped} dropped by the server after {quantile(lifetimes, 0.5):.1f} s median "
        f"({lifetimes[0]:.1f}-{lifetimes[-1]:.1f})"
        if lifetimes
        else "none dropped by the server"
    )
    answers = ", ".join(f"{code} x{n}" for code, n in stats.answers.most_common()) or "none"
    return f"  attackers: {stats.opened} connections opened, {dropped}; answers seen: {answers}"


def saving_run(
    service: RunningService, emulator: FirestoreEmulator, requests: int, concurrency: int
) -> None:
    run = uuid.uuid4().hex[:8]
    trace_ids = [f"abuse-{run}-{i}" for i in range(requests)]
    results: list[tuple[float | None, str | None, dict[str, Any] | None]] = []
    lock = threading.Lock()
    pending = list(trace_ids)
    client = _client(30, keepalive=True)

    def worker() -> None:
        while True:
            with lock:
                if not pending:
                    return
                trace_id = pending.pop()
            body = {
                "user_input": f"save me ({trace_id})",
                "trace_id": trace_id,
                "save_to_history": True,
                "emissaryConfig": {"currentUser": {"email": "bench@example.com"}},
            }
            result = stream_once(client, service.url, body)
            with lock:
                results.append(result)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    took = time.perf_counter() - started
    client.close()

    ids = list_message_ids(emulator)
    expected = {f"{t}-{role}" for t in trace_ids for role in ("user", "assistant")}
    failed = Counter(error for _, error, _ in results if error)
    persist_failed = sum(
        1 for _, _, final in results if final and final["metadata"].get("persist_failed")
    )
    firsts = [first for first, error, _ in results if first is not None and not error]
    print(
        f"{requests} requests, {concurrency} at a time, in {took:.1f} s "
        f"({requests / took:.0f}/s); first chunk p50 {duration(quantile(firsts, 0.5))}, "
        f"p99 {duration(quantile(firsts, 0.99))}"
    )
    print(f"  stream errors: {errors(failed)}; final frames with persist_failed: {persist_failed}")
    missing, extra = expected - set(ids), set(ids) - expected
    duplicates = len(ids) - len(set(ids))
    print(
        f"  {_mark(len(ids) == 2 * requests and not missing and not extra)} documents: "
        f"{len(ids)} (expected {2 * requests}); missing {len(missing)}, unexpected {len(extra)}, "
        f"duplicates {duplicates}"
    )
    for name in sorted(missing)[:5]:
        print(f"    missing {name}")


def list_message_ids(emulator: FirestoreEmulator) -> list[str]:
    """Every document id under assistants/<ASSISTANT>/messages (REST, rules bypassed)."""
    url = (
        f"http://{emulator.host}/v1/projects/{PROJECT}/databases/(default)/documents/"
        f"assistants/{ASSISTANT}/messages"
    )
    ids: list[str] = []
    params: dict[str, Any] = {"pageSize": 300, "mask.fieldPaths": "role"}
    with _client(30) as client:
        while True:
            response = client.get(url, params=params, headers={"Authorization": "Bearer owner"})
            response.raise_for_status()
            page = response.json()
            ids += [doc["name"].rsplit("/", 1)[-1] for doc in page.get("documents", [])]
            if not page.get("nextPageToken"):
                return ids
            params["pageToken"] = page["nextPageToken"]


def soak(service: RunningService, seconds: float, streams: int, every: float) -> None:
    pid = service.process.pid
    stop = threading.Event()
    measured = Measured()
    client = _client(30, keepalive=True)

    def worker() -> None:
        while not stop.is_set():
            first, error, _ = stream_once(client, service.url, {"user_input": "soak"})
            with measured.lock:
                measured.streams += 1
                if error:
                    measured.stream_errors[error] += 1
                elif first is not None:
                    measured.first_chunk.append(first)

    start = resources(pid)
    print(
        f"{'s':>5} | {'streams':>7} {'errs':>5} {'1st p50':>7} {'1st p99':>7} | "
        f"{'RSS MB':>6} {'fds':>5} {'thr':>4}"
    )
    print(
        f"{0:>5} | {0:>7} {0:>5} {'':>7} {'':>7} | "
        f"{start.rss_mb:6.1f} {start.fds:>5} {start.threads:>4}"
    )
    threads = [threading.Thread(target=worker) for _ in range(streams)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    seen = 0
    while (elapsed := time.monotonic() - began) < seconds:
        time.sleep(min(every, seconds - elapsed))
        now = resources(pid)
        with measured.lock:
            window, seen = measured.first_chunk[seen:], len(measured.first_chunk)
            done, failed = measured.streams, sum(measured.stream_errors.values())
        print(
            f"{time.monotonic() - began:5.0f} | {done:>7} {failed:>5} {ms(quantile(window, 0.5))} "
            f"{ms(quantile(window, 0.99))} | {now.rss_mb:6.1f} {now.fds:>5} {now.threads:>4}",
            flush=True,
        )
    stop.set()
    for thread in threads:
        thread.join()
    client.close()
    time.sleep(1)
    end = resources(pid)
    print(
        f"  after the soak: RSS {start.rss_mb:.1f} -> {end.rss_mb:.1f} MB "
        f"({pct(end.rss_mb, start.rss_mb)}), fds {start.fds} -> {end.fds}, threads "
        f"{start.threads} -> {end.threads}; errors: {errors(measured.stream_errors)}"
    )


@contextlib.contextmanager
def firestore_emulator(enabled: bool) -> Iterator[FirestoreEmulator | None]:
    if not enabled:
        yield None
        return
    emulator = FirestoreEmulator()
    try:
        emulator.start()
    except EmulatorUnavailable as exc:
        print(f"(no saving run: {exc})")
        yield None
        return
    try:
        yield emulator
    finally:
        emulator.stop()


def _code() -> str:
    """The commit the service runs, and any uncommitted change to what it runs."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        )
        return result.stdout.rstrip()  # not strip(): porcelain lines start with a space

    head = git("log", "-1", "--format=%h %s")[:90]
    if not head:
        return f"{ROOT} (not a git checkout)"
    changed = git("status", "--porcelain", "--", "assistant", "main.py", "devtools")
    if changed:
        head += " + uncommitted: " + ", ".join(line[3:] for line in changed.splitlines())
    return head


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (< 1 min)")
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--attackers", type=int, default=100)
    parser.add_argument(
        "--attacks", default="slow-body,slow-headers,non-readers,close-idle,huge-head"
    )
    parser.add_argument(
        "--attack-seconds", type=float, default=15, help="measuring window per attack"
    )
    parser.add_argument("--baseline-seconds", type=float, default=10)
    parser.add_argument(
        "--settle-seconds", type=float, default=2, help="attackers attach, then measure"
    )
    parser.add_argument("--recover-seconds", type=float, default=5, help="after the attackers left")
    parser.add_argument("--timeout", type=float, default=5, help="a normal request's timeout (s)")
    parser.add_argument("--line-kb", type=int, default=256, help="huge-head request line size")
    parser.add_argument("--save-requests", type=int, default=200)
    parser.add_argument("--save-concurrency", type=int, default=20)
    parser.add_argument("--soak-seconds", type=float, default=60)
    parser.add_argument("--soak-streams", type=int, default=20)
    parser.add_argument("--soak-every", type=float, default=5)
    parser.add_argument("--no-firestore", action="store_true", help="skip the saving run")
    if parser.parse_known_args()[0].quick:
        parser.set_defaults(**QUICK)  # flags given still win
    args = parser.parse_args()
    chosen = args.attacks.split(",")
    every = _attacks(args)
    unknown = set(chosen) - set(every)
    if unknown:
        parser.error(f"unknown attacks {sorted(unknown)}; known: {', '.join(every)}")

    with firestore_emulator(not args.no_firestore) as emulator:
        fake = FakeUpstream(default=SHORT).start()
        env = {
            "THREADS": str(args.threads),
            "ANTHROPIC_API_KEY": "bench-key",
            "ANTHROPIC_BASE_URL": fake.url,
            "ASSISTANT_PROVIDERS": "anthropic",
            # Every client here is the same anonymous user (AUTH_MODE none).
            "MAX_STREAMS_PER_USER": "100000",
        }
        if emulator is not None:
            env |= {"FIRESTORE_EMULATOR_HOST": emulator.host, "GOOGLE_CLOUD_PROJECT": PROJECT}
        log = (ROOT / ".run").joinpath("abuse-service.log")
        log.parent.mkdir(exist_ok=True)
        try:
            with log.open("wb") as output, running_service(env, output=output) as service:
                report(service, fake, emulator, args, chosen, every, env)
        finally:
            fake.stop()
    return 0


def report(
    service: RunningService,
    fake: FakeUpstream,
    emulator: FirestoreEmulator | None,
    args: argparse.Namespace,
    chosen: list[str],
    every: dict[str, list[tuple[Hostile, int]]],
    env: dict[str, str],
) -> None:
    shown = ", ".join(f"{name}={os.environ.get(name, 'default')}" for name in SETTINGS_SHOWN)
    print(f"# bench/abuse.py, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"# code: {_code()}")
    print(
        f"# THREADS={env['THREADS']}, {shown}; {args.attackers} attackers, "
        f"{args.attack_seconds:g} s windows; {os.cpu_count()} cores shared with the attacker"
    )
    print("# numbers move by +-30 % between runs on this machine\n")
    # Warm-up: the I/O loop, the connection pool, and the gunicorn thread pool (which
    # grows on demand and never shrinks), so "before" already has its threads.
    with _client(30) as client:
        stream_once(client, service.url, {"user_input": "warm up"})
        threads = [
            threading.Thread(target=stream_once, args=(client, service.url, {"user_input": "w"}))
            for _ in range(args.threads)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    time.sleep(1)
    start = resources(service.process.pid)

    print("## 1-2. latency, quiet and under attack")
    print(LEGEND)
    print(HEADER, flush=True)
    quiet = measure(service.url, args.baseline_seconds, args.timeout)
    print(row("quiet", quiet, None), flush=True)
    results: list[tuple[str, Measured, Resources, Resources, Resources, SwarmStats]] = []
    for name in chosen:
        measured, before, peak, after, stats = run_attack(name, every[name], service, fake, args)
        results.append((name, measured, before, peak, after, stats))
        print(row(name, measured, quiet), flush=True)
        print(describe_swarm(stats), flush=True)
    quiet_again = measure(service.url, args.baseline_seconds, args.timeout)
    print(row("quiet again", quiet_again, quiet), flush=True)

    quiet99 = duration(quantile(quiet.first_chunk, 0.99))
    print(f"\n## targets during the attacks (quiet: first chunk p99 {quiet99})")
    for name, measured, *_ in results:
        print(name)
        print("\n".join(verdicts(name, measured, quiet)))

    print(
        f"\n## 3. gunicorn worker resources ({args.recover_seconds:g} s after the attackers left)"
    )
    print(RESOURCE_HEADER)
    for name, _, before, peak, after, _ in results:
        print(resource_row(name, before, peak, after))
    end = resources(service.process.pid)
    print(resource_row("whole run", start, max_of(start, *(r[3] for r in results)), end))

    if emulator is not None:
        print("\n## 4. saving on: documents in the Firestore emulator")
        saving_run(service, emulator, args.save_requests, args.save_concurrency)

    print(f"\n## 5. soak: {args.soak_streams} concurrent streams for {args.soak_seconds:g} s")
    soak(service, args.soak_seconds, args.soak_streams, args.soak_every)


def max_of(*samples: Resources) -> Resources:
    return Resources(
        max(s.rss_mb for s in samples), max(s.fds for s in samples), max(s.threads for s in samples)
    )


if __name__ == "__main__":
    raise SystemExit(main())
