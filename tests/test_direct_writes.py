"""Chunk frames written from the I/O loop (assistant/direct.py), on the real server:
HTTP/1.0 and 1.1 framing, heartbeats and hang-ups while the loop holds the
socket, and a slow reader whose writes go back and forth between the loop
and the request thread without a byte lost or out of order."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from assistant.config import Settings
from assistant.direct import ClientSocket
from assistant.limits import Slot
from assistant.providers.anthropic import AnthropicProvider
from assistant.reply import Reply
from assistant.request import AssistantRequest
from assistant.store import Author
from assistant.tracing import RequestLog
from devtools.fake_upstream import FakeUpstream, Script
from devtools.service import running_service

from .provider_support import anthropic_event, text_delta
from .raw_http import dechunked, open_raw, read_until_closed


@pytest.fixture
def server(fake: FakeUpstream) -> Iterator[str]:
    with running_service({"THREADS": "4", "HEARTBEAT_SECONDS": "0.4"}) as service:
        yield service.url


def events(body: bytes) -> list[str]:
    return [frame for frame in body.decode().split("\n\n") if frame]


def chunk_texts(frames: list[str]) -> list[str]:
    return [json.loads(f[6:])["chunk"] for f in frames if f.startswith('data: {"chunk"')]


def test_an_http_1_0_client_reads_plain_frames(server: str, fake: FakeUpstream) -> None:
    fake.push(Script(tokens=["one ", "two ", "three"], interval=0.05))
    host, port = server.removeprefix("http://").split(":")
    body = b'{"user_input": "hi"}'
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /vac/assistant/a/sse HTTP/1.0\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head, _, rest = read_until_closed(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200")
    assert b"transfer-encoding" not in head.lower()
    frames = events(rest)
    assert chunk_texts(frames) == ["one ", "two ", "three"]
    assert frames[-1] == "data: [DONE]"


def test_heartbeats_go_out_while_the_upstream_pauses_mid_stream(
    server: str, fake: FakeUpstream
) -> None:
    fake.push(Script(tokens=["before ", "after"], interval=1.3))
    with open_raw(server, "/vac/assistant/a/sse", b'{"user_input": "hi"}') as sock:
        _head, _, rest = read_until_closed(sock).partition(b"\r\n\r\n")
    frames = events(dechunked(rest))
    between = frames[
        frames.index('data: {"chunk":"before "}') : frames.index('data: {"chunk":"after"}')
    ]
    assert between.count(": ping") >= 2  # every 0.4 s of the 1.3 s silence
    assert frames[-1] == "data: [DONE]"


def test_a_client_that_hangs_up_while_chunks_flow_stops_the_upstream(
    server: str, fake: FakeUpstream
) -> None:
    fake.push(Script(tokens=["x "] * 400, interval=0.02))  # 8 s of chunks
    with open_raw(server, "/vac/assistant/a/sse", b'{"user_input": "hi"}') as sock:
        received = b""
        while received.count(b'"chunk"') < 3:
            received += sock.recv(4096)
    # The next write from the loop fails (or the once-a-second check sees the close).
    upstream = fake.wait_for_requests(1)[0]
    assert upstream.client_closed.wait(timeout=3), "upstream request left running"


def read_slowly(sock: socket.socket, pause: float) -> bytes:
    received = bytearray()
    while data := sock.recv(4096):
        received += data
        time.sleep(pause)
    return bytes(received)


def assert_every_piece_in_order(response: bytes, pieces: list[str]) -> None:
    _head, _, rest = response.partition(b"\r\n\r\n")
    frames = events(dechunked(rest))
    assert chunk_texts(frames) == pieces
    assert json.loads(frames[-2][6:])["answer"] == "".join(pieces)
    assert frames[-1] == "data: [DONE]"


@pytest.mark.parametrize(
    ("pieces", "interval", "pause"),
    [
        # The upstream outruns the client from the start: chunks queue for the
        # request thread, which never hands the socket to the loop.
        ([f"{i:04d}" + "y" * 996 for i in range(400)], 0.0, 0.001),
        # Spaced: the loop holds the socket, fills it, and hands the rest of a
        # write back to the request thread, which finishes it and carries on.
        ([f"{i:04d}" + "y" * 39_996 for i in range(30)], 0.01, 0.002),
    ],
    ids=["queued-for-the-thread", "loop-then-thread"],
)
def test_a_slow_reader_gets_every_byte_in_order(
    server: str, fake: FakeUpstream, pieces: list[str], interval: float, pause: float
) -> None:
    fake.push(Script(tokens=pieces, interval=interval))
    with open_raw(
        server, "/vac/assistant/a/sse", b'{"user_input": "hi"}', receive_buffer=4096
    ) as sock:
        response = read_slowly(sock, pause)
    assert_every_piece_in_order(response, pieces)


def test_thinking_text_and_a_call_written_from_the_loop_are_all_answered_and_saved(
    fake: FakeUpstream, firestore
) -> None:
    """What the loop wrote is what the reply recorded: the final answer, its thinking
    and calls, and the message saved, each as the frames showed them."""
    fake.push(
        Script(
            thinking=["Let me ", "think."],
            tokens=["The ", "answer ", "is ", "42."],
            tool_calls=[{"name": "lookup", "args": {"q": "42"}}],
            interval=0.03,
        )
    )
    body = b'{"user_input": "hi", "save_to_history": true, "trace_id": "direct-1"}'
    with (
        running_service({"THREADS": "4"}) as service,
        open_raw(service.url, "/vac/assistant/a/sse", body) as sock,
    ):
        _head, _, rest = read_until_closed(sock).partition(b"\r\n\r\n")
    frames = events(dechunked(rest))
    shown = "".join(chunk_texts(frames))
    assert shown == "<thinking>Let me think.</thinking>The answer is 42."
    final = json.loads(frames[-2][6:])
    assert final["answer"] == shown
    assert final["metadata"]["thinking_content"] == "Let me think."
    assert [call["name"] for call in final["metadata"]["tools_to_use"]] == ["lookup"]
    saved = firestore.document("assistants/a/messages/direct-1-assistant").get().to_dict()
    assert saved["content"] == "The answer is 42."
    assert saved["thinkingContent"] == "Let me think."
    assert [call["name"] for call in saved["toolsToUse"]] == ["lookup"]


BIG = "b" * 400_000


def push_big_last_chunk_with_the_end(fake: FakeUpstream) -> None:
    """ "a", then in one write 0.3 s later: a chunk too big for a small socket, and the end."""
    start = [
        anthropic_event("message_start", {"type": "message_start", "message": {"model": "m"}}),
        anthropic_event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
        ),
        text_delta("a"),
    ]
    end = [
        text_delta(BIG),
        anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        anthropic_event(
            "message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}
        ),
        anthropic_event("message_stop", {"type": "message_stop"}),
    ]
    fake.push(Script(raw=[b"".join(start), b"".join(end)], interval=0.3))


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(the service's end, with a small send buffer; the client's end) of one connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    with client, server:
        yield server, client


def direct_reply(
    fake: FakeUpstream, server: socket.socket, send_timeout: float, head: bytes | None = None
) -> Reply:
    """A reply whose loop writes to `server` itself; with `head`, the first write
    carries it (as the worker's parked streams do)."""
    server.settimeout(send_timeout)  # as http.py sets it: non-blocking underneath
    settings = Settings.from_env({"ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_API_KEY": "k"})
    reply = Reply(
        AssistantRequest(assistant_id="a", user_input="hi"),
        trace_id="race",
        settings=settings,
        providers=[AnthropicProvider(settings.providers["anthropic"], "k")],
        store=None,
        author=Author(None, None, None),
        log=RequestLog("race"),
        streaming=True,
        client_socket=ClientSocket(
            server,
            chunked=True,
            slot=Slot(lambda done: None),
            head=(lambda: head) if head is not None else None,
        ),
    )
    reply.start()
    return reply


def serve(reply: Reply, server: socket.socket) -> None:
    """gunicorn's part: each frame the request thread hands on, written chunked;
    a write that fails closes the response."""
    frames = reply.sse_stream()
    try:
        for data in frames:
            assert isinstance(data, bytes)
            server.sendall(b"%X\r\n%b\r\n" % (len(data), data))
    except OSError:
        frames.close()


def test_a_bug_of_ours_after_the_loop_wrote_the_head_ends_the_stream_with_an_error_frame(
    fake: FakeUpstream, tcp_pair: tuple[socket.socket, socket.socket], capfd
) -> None:
    """The loop wrote the head and the text; then the request thread's wait fails (a bug
    of ours): no status can be sent any more, so the stream ends with an error frame
    and [DONE] after the text, and the bug is logged once."""
    server, client = tcp_pair
    # The text comes after the reply's wait began: the loop writes it (and the head).
    fake.push(Script(tokens=["one ", "two"], ttft=0.3))
    reply = direct_reply(fake, server, send_timeout=5, head=b"HTTP/1.1 200 OK\r\n\r\n")
    waits = reply._wait

    def failing_wait(*args: Any, **kwargs: Any) -> Generator[Any, None, None]:
        for item in waits(*args, **kwargs):
            if item is not None:  # the outcome after the text the loop wrote
                raise ValueError("a bug of ours")
            yield item

    reply._wait = failing_wait  # type: ignore[method-assign]
    serve(reply, server)
    server.close()
    head, _, rest = read_until_closed(client).partition(b"\r\n\r\n")
    assert head == b"HTTP/1.1 200 OK"
    frames = events(dechunked(rest + b"0\r\n\r\n"))
    assert chunk_texts(frames) == ["one ", "two"]
    ending = json.loads(frames[-2][6:])
    assert ending["code"] == "internal_error" and ending["partial"] == "one two"
    assert frames[-1] == "data: [DONE]"
    assert capfd.readouterr().out.count('"reply.crashed"') == 1


def test_the_rest_of_a_loop_write_goes_out_before_the_final_frame(
    fake: FakeUpstream, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    """The race the outbox orders (outbox.py): one upstream read brings a chunk too
    big for the client's socket and the end of the reply, so the loop step queues
    the outcome before its write leaves a rest. The final frame must still follow
    the whole chunk. Real TCP sockets; this test plays gunicorn's part."""
    server, client = tcp_pair
    push_big_last_chunk_with_the_end(fake)
    received = bytearray()

    def read_late() -> None:
        time.sleep(1.0)  # the big chunk has arrived and filled the socket by now
        while data := client.recv(65536):
            received.extend(data)

    reader = threading.Thread(target=read_late)
    reader.start()
    serve(direct_reply(fake, server, send_timeout=10), server)
    server.sendall(b"0\r\n\r\n")
    server.shutdown(socket.SHUT_WR)
    reader.join(10)
    frames = events(dechunked(bytes(received)))
    assert "".join(chunk_texts(frames)) == "a" + BIG
    assert json.loads(frames[-2][6:])["answer"] == "a" + BIG
    assert frames[-1] == "data: [DONE]"


def test_a_client_that_takes_nothing_while_the_rest_waits_ends_in_the_send_timeout(
    fake: FakeUpstream, tcp_pair: tuple[socket.socket, socket.socket], capfd
) -> None:
    """The same race with a client that never reads: the rest of the big chunk
    cannot go out, so neither can the final frame; the response ends in the send
    timeout (ours, or gunicorn's, whichever write meets it first). Whether the
    reply learns first that the model finished (`reply.finished`) or that the
    client takes nothing (`reply.client_gone`: the loop's write of the big chunk
    comes before the chain's task runs again), its record is whole."""
    server, client = tcp_pair
    push_big_last_chunk_with_the_end(fake)
    started = time.monotonic()
    serve(direct_reply(fake, server, send_timeout=0.5), server)
    assert time.monotonic() - started < 5
    server.shutdown(socket.SHUT_RDWR)
    received = read_until_closed(client)
    assert b"[DONE]" not in received
    finished = [json.loads(line) for line in capfd.readouterr().out.splitlines()
                if '"reply.finished"' in line or '"reply.client_gone"' in line]  # fmt: skip
    assert len(finished) == 1
    assert finished[0]["chars"] == 1 + len(BIG)  # nothing the model wrote was lost


def test_streams_one_after_another_on_one_kept_alive_connection(
    server: str, fake: FakeUpstream
) -> None:
    """After a reply the loop writes nothing more: the next response on the same
    connection starts clean."""
    body = b'{"user_input": "hi"}'
    request = (
        b"POST /vac/assistant/a/sse HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        for n in range(3):
            fake.push(Script(tokens=[f"reply {n} ", "piece ", "by piece"], interval=0.02))
            sock.sendall(request)
            response = b""
            while not response.endswith(b"\r\n0\r\n\r\n"):
                data = sock.recv(65536)
                assert data, "the server closed the connection"
                response += data
            head, _, rest = response.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            frames = events(dechunked(rest))
            assert "".join(chunk_texts(frames)) == f"reply {n} piece by piece"
            assert frames[-1] == "data: [DONE]"


def test_a_kept_alive_connections_next_request_arriving_in_pieces(
    server: str, fake: FakeUpstream
) -> None:
    """The worker reads a kept-alive connection's next request as soon as the connection
    is readable; a request that was not whole by then is finished on the poller."""
    body = b'{"user_input": "hi"}'
    head = (
        b"POST /vac/assistant/a/sse HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        for n, pieces in enumerate([[head + body], [head[:20], head[20:], body]]):
            fake.push(Script(tokens=[f"reply {n}"]))
            for piece in pieces:
                sock.sendall(piece)
                time.sleep(0.1)
            response = b""
            while not response.endswith(b"\r\n0\r\n\r\n"):
                data = sock.recv(65536)
                assert data, "the server closed the connection"
                response += data
            frames = events(dechunked(response.partition(b"\r\n\r\n")[2]))
            assert "".join(chunk_texts(frames)) == f"reply {n}"
