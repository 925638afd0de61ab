"""The endpoint end to end through functions-framework: frames, status hold, failures."""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from assistant.config import ConfigError, Settings, shown_url
from devtools.fake_upstream import FakeUpstream, Script

from .conftest import ask, log_lines, sse_events


def test_sse_streams_chunks_then_one_final_answer_then_done(client, fake: FakeUpstream) -> None:
    fake.push(Script(tokens=["Here ", "is ", "the answer."], thinking=["weighing ", "options"]))
    response = ask(client)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache, no-transform"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert "Content-Length" not in response.headers
    assert "Connection" not in response.headers

    events = sse_events(response.get_data())
    chunks = [event["chunk"] for event in events[:-2]]
    assert chunks == ["<thinking>weighing ", "options", "</thinking>Here ", "is ", "the answer."]
    final, done = events[-2:]
    assert done == "[DONE]"
    assert final["answer"] == "<thinking>weighing options</thinking>Here is the answer."
    metadata = final["metadata"]
    assert metadata["thinking_content"] == "weighing options"
    assert metadata["provider"] == "anthropic"
    assert metadata["model_version"] == "fake-claude"
    assert metadata["usage"] == {"input_tokens": 12, "output_tokens": 5}
    assert metadata["stop_reason"] == "end_turn"
    assert metadata["structured_output"] is None
    assert metadata["tools_to_use"] == []
    assert metadata["persist_failed"] is False
    assert metadata["message_ids"] is None
    assert [(a["name"], a["outcome"]) for a in metadata["attempts"]] == [("anthropic", "ok")]
    assert metadata["timing"]["first_chunk_ms"] <= metadata["timing"]["total_ms"]
    assert metadata["trace_id"] == response.headers["X-Trace-Id"]


def test_frames_are_data_lines_only_with_compact_utf8_json(client, fake: FakeUpstream) -> None:
    fake.push(Script(tokens=["héllo\u2028", "line\nbreak"]))
    body = ask(client).get_data()
    assert b"event:" not in body
    assert 'data: {"chunk":"héllo\\u2028"}\n\n'.encode() in body  # U+2028 escaped, é raw
    assert b'data: {"chunk":"line\\nbreak"}\n\n' in body
    assert body.endswith(b"data: [DONE]\n\n")


def test_chunks_leave_as_they_arrive(client, fake: FakeUpstream) -> None:
    fake.push(Script(tokens=["one ", "two ", "three"], interval=0.3))
    response = ask(client)
    arrivals = []
    for frame in response.response:
        arrivals.append((time.monotonic(), frame))
    chunk_times = [t for t, frame in arrivals if frame.startswith(b'data: {"chunk"')]
    assert len(chunk_times) == 3
    # Three chunks 0.3 s apart upstream arrive spread out, not in one batch at the end.
    assert chunk_times[2] - chunk_times[0] > 0.3


def test_heartbeats_while_the_upstream_is_silent(client, fake: FakeUpstream) -> None:
    os.environ["HEARTBEAT_SECONDS"] = "0.2"
    fake.push(Script(tokens=["late ", "answer"], ttft=0.9))
    response = ask(client)
    assert response.status_code == 200  # the status window passed without text
    events = sse_events(response.get_data())
    first_chunk = next(i for i, e in enumerate(events) if isinstance(e, dict) and "chunk" in e)
    assert events[0] == ": ping"
    assert events[:first_chunk].count(": ping") >= 2  # 4 due; a loaded machine may merge some
    assert events[-2]["answer"] == "late answer"


def test_heartbeats_between_chunks(client, fake: FakeUpstream) -> None:
    os.environ["HEARTBEAT_SECONDS"] = "0.15"
    fake.push(Script(tokens=["a", "b"], interval=0.6))
    events = sse_events(ask(client).get_data())
    first = events.index({"chunk": "a"})
    second = events.index({"chunk": "b"})
    assert ": ping" in events[first:second]


def test_no_heartbeat_when_text_flows(client, fake: FakeUpstream) -> None:
    os.environ["HEARTBEAT_SECONDS"] = "5"
    fake.push(Script(tokens=["a", "b", "c"], interval=0.01))
    assert ": ping" not in sse_events(ask(client).get_data())


def test_failure_before_first_chunk_is_a_real_502(client, fake: FakeUpstream) -> None:
    fake.push(Script(fail="500"))
    response = ask(client)
    assert response.status_code == 502
    body = response.get_json()
    assert body["code"] == "providers_failed"
    assert body["trace_id"] == response.headers["X-Trace-Id"]
    assert [(a["name"], a["outcome"], a["status"]) for a in body["attempts"]] == [
        ("anthropic", "upstream_status", 500)
    ]
    assert "api_error" not in response.get_data(as_text=True)  # no raw upstream body


@pytest.mark.parametrize("fail", ["error_event", "empty", "no_text", "429", "401"])
def test_each_pre_text_failure_is_a_502(client, fake: FakeUpstream, fail: str) -> None:
    fake.push(Script(fail=fail))
    response = ask(client)
    assert response.status_code == 502
    assert response.get_json()["code"] == "providers_failed"


def test_a_502_after_a_refusal_says_the_model_declined(client, fake: FakeUpstream) -> None:
    """A refusal with no text is no outage: the 502 does not tell the user to try again
    (a reviewer: a refused prompt answered "Please try again")."""
    fake.push(Script(fail="no_text", stop_reason="refusal"))
    response = ask(client)
    assert response.status_code == 502
    body = response.get_json()
    assert body["code"] == "providers_failed"
    assert body["error"] == "The model declined to answer this request."
    assert [a["outcome"] for a in body["attempts"]] == ["upstream_refused"]


def test_failure_after_the_status_window_ends_the_stream_with_an_error_frame(
    client, fake: FakeUpstream
) -> None:
    os.environ["HEARTBEAT_SECONDS"] = "0.2"
    fake.push(Script(ttft=0.6, fail="error_event"))
    response = ask(client)
    assert response.status_code == 200
    events = sse_events(response.get_data())
    assert events[0] == ": ping"
    error, done = events[-2:]
    assert done == "[DONE]"
    assert error["code"] == "providers_failed"
    assert error["partial"] == ""
    assert error["metadata"]["attempts"][0]["outcome"] == "upstream_error"


@pytest.mark.parametrize(
    ("mode", "code"),
    [
        ("error_event", "upstream_error"),
        ("cut", "upstream_incomplete"),
        ("no_stop", "upstream_incomplete"),
    ],
)
def test_mid_stream_failure_sends_partial_text_in_one_error_frame(
    client, fake: FakeUpstream, mode: str, code: str
) -> None:
    fake.push(Script(tokens=["Half ", "an ", "answer"], fail_after=2, fail_mode=mode))
    response = ask(client)
    assert response.status_code == 200
    events = sse_events(response.get_data())
    assert events[:2] == [{"chunk": "Half "}, {"chunk": "an "}]
    error, done = events[2:]
    assert done == "[DONE]"
    assert error["code"] == code
    assert error["partial"] == "Half an "
    assert error["error"] and "Traceback" not in error["error"]
    assert error["metadata"]["provider"] == "anthropic"
    # Both counts are always there; what the provider never said is null.
    assert {"input_tokens", "output_tokens"} <= set(error["metadata"]["usage"])
    assert len(fake.requests) == 1  # committed: never retried


def test_idle_gap_after_first_chunk_ends_with_timeout_error(client, fake: FakeUpstream) -> None:
    os.environ["IDLE_TIMEOUT_SECONDS"] = "0.3"
    fake.push(Script(tokens=["start ", "never"], fail_after=1, fail_mode="hang"))
    events = sse_events(ask(client).get_data())
    assert events[0] == {"chunk": "start "}
    assert events[-2]["code"] == "upstream_timeout"
    assert events[-2]["partial"] == "start "


def test_first_chunk_timeout_falls_to_502(client, fake: FakeUpstream) -> None:
    os.environ["FIRST_CHUNK_TIMEOUT_SECONDS"] = "0.3"
    fake.push(Script(fail="hang", ping_every=0.05))  # pings keep the socket busy, no text
    response = ask(client)
    assert response.status_code == 502
    assert response.get_json()["attempts"][0]["outcome"] == "upstream_timeout"


def test_a_long_live_generation_is_not_cut(client, fake: FakeUpstream) -> None:
    os.environ.update(FIRST_CHUNK_TIMEOUT_SECONDS="0.5", IDLE_TIMEOUT_SECONDS="0.5")
    fake.push(Script(tokens=[f"t{i} " for i in range(8)], interval=0.2))  # 1.6 s in all
    events = sse_events(ask(client).get_data())
    assert events[-2]["answer"] == "".join(f"t{i} " for i in range(8))


def test_unclosed_native_thinking_is_closed_and_split(client, fake: FakeUpstream) -> None:
    fake.push(Script(thinking=["only ", "thinking"], tokens=[]))
    events = sse_events(ask(client).get_data())
    final = events[-2]
    assert final["answer"] == "<thinking>only thinking</thinking>"
    assert final["metadata"]["thinking_content"] == "only thinking"


def test_inline_thinking_streams_unchanged(client, fake: FakeUpstream) -> None:
    fake.push(Script(thinking=["a plan"], thinking_mode="inline", tokens=["Done."]))
    final = sse_events(ask(client).get_data())[-2]
    assert final["answer"] == "<thinking>a plan</thinking>Done."
    assert final["metadata"]["thinking_content"] == "a plan"


def test_a_reply_that_began_inside_its_thinking_is_split_at_its_close_tag(
    client, fake: FakeUpstream
) -> None:
    """An R1-style reply (its `<think>` was the chat template's) keeps its reasoning out
    of the answer's content: it was shown and saved as the answer."""
    fake.push(Script(tokens=["Okay, the user", " greets me.\n</th", "ink>\n\nHello!"]))
    final = sse_events(ask(client).get_data())[-2]
    assert final["answer"] == "Okay, the user greets me.\n</think>\n\nHello!"  # as streamed
    assert final["metadata"]["thinking_content"] == "Okay, the user greets me."


def test_no_provider_configured_is_409_and_nothing_is_called(client, fake: FakeUpstream) -> None:
    del os.environ["ANTHROPIC_API_KEY"]
    response = ask(client)
    assert response.status_code == 409
    assert response.get_json()["code"] == "no_provider"
    assert fake.requests == []


def test_legacy_route_answers_json_without_event_stream_accept(client, fake: FakeUpstream) -> None:
    fake.push(Script(tokens=["plain ", "answer"]))
    response = client.post(
        "/vac/assistant/test-assistant",
        json={"user_input": "hi"},
        headers={"Accept": "application/json, */*"},
    )
    assert response.status_code == 200
    assert response.content_type == "application/json"
    body = response.get_json()
    assert body["answer"] == "plain answer"
    assert body["metadata"]["trace_id"] == response.headers["X-Trace-Id"]
    response.close()  # its slot back: the test client closes no response by itself


@pytest.mark.parametrize(
    "accept",
    [
        "text/event-stream",
        "Text/Event-Stream; charset=utf-8",  # parameters, any case
        "application/json;q=0.9, text/event-stream;q=0.5",
        "text/event-stream;q=1.",  # RFC 9110's weight; werkzeug dropped the entry
        'text/event-stream;foo="x;q=0"',  # a quoted parameter's ; is its own
        "text/event-stream;q\x85=0",  # no weight: HTTP's whitespace is spaces and tabs
    ],
)
def test_legacy_route_streams_when_accept_asks_for_it(
    client, fake: FakeUpstream, accept: str
) -> None:
    response = client.post(
        "/vac/assistant/test-assistant", json={"user_input": "hi"}, headers={"Accept": accept}
    )
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert sse_events(response.get_data())[-1] == "[DONE]"


@pytest.mark.parametrize(
    "accept",
    [
        "text/event-stream;q=0, application/json",
        "text/event-stream; q = 0",  # werkzeug took it for q=1
        "text/event-stream;Q=0.000",
        "text/event-stream;q=0.",
        'text/event-stream;foo="a,b";q=0',  # and its comma
        'application/json;foo="a, text/event-stream;x=y"',
        "text/event-stream;q=2",  # no weight: not a request for it
        "*/*",
        ";",  # an entry of semicolons alone: a 500 (a reviewer's)
        "application/json,;;",
        "\x85text/event-stream",  # as the JS kit reads it (its trim() keeps a NEL)
    ],
)
def test_legacy_route_answers_json_when_accept_refuses_the_stream(
    client, fake: FakeUpstream, accept: str
) -> None:
    response = client.post(
        "/vac/assistant/test-assistant", json={"user_input": "hi"}, headers={"Accept": accept}
    )
    assert (response.status_code, response.content_type) == (200, "application/json")
    response.close()


def test_legacy_json_failure_is_502_with_attempts(client, fake: FakeUpstream) -> None:
    fake.push(Script(tokens=["a", "b", "c"], fail_after=1, fail_mode="error_event"))
    response = client.post("/vac/assistant/x", json={"user_input": "hi"})
    assert response.status_code == 502
    body = response.get_json()
    assert body["code"] == "providers_failed"
    assert body["attempts"][0]["outcome"] == "upstream_error"
    response.close()


def test_client_disconnect_closes_the_upstream(client, fake: FakeUpstream) -> None:
    fake.push(Script(tokens=[f"w{i} " for i in range(200)], interval=0.05))
    response = ask(client)
    frames = iter(response.response)
    assert next(frames).startswith(b'data: {"chunk"')
    response.close()  # the client goes away: GeneratorExit in the reply
    upstream_request = fake.wait_for_requests(1)[0]
    assert upstream_request.client_closed.wait(timeout=3), "upstream request left running"


def test_client_disconnect_while_upstream_is_silent(client, fake: FakeUpstream) -> None:
    os.environ["HEARTBEAT_SECONDS"] = "0.2"
    fake.push(Script(tokens=["first ", "never"], fail_after=1, fail_mode="hang"))
    response = ask(client)
    frames = iter(response.response)
    assert next(frames) == b'data: {"chunk":"first "}\n\n'
    assert next(frames) == b": ping\n\n"
    response.close()
    assert fake.wait_for_requests(1)[0].client_closed.wait(timeout=3)


def test_trace_id_from_body_wins_and_is_on_header_metadata_and_logs(client, fake, capfd) -> None:
    os.environ["GOOGLE_CLOUD_PROJECT"] = "demo-project"
    response = client.post(
        "/vac/assistant/a/sse",
        json={"user_input": "hi", "trace_id": "frontend.trace:42"},
        headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )
    assert response.headers["X-Trace-Id"] == "frontend.trace:42"
    assert sse_events(response.get_data())[-2]["metadata"]["trace_id"] == "frontend.trace:42"
    lines = log_lines(capfd.readouterr().out)  # providers.configured too, when written
    assert lines and all(line["trace_id"] == "frontend.trace:42" for line in lines)
    assert all(
        line["logging.googleapis.com/trace"] == "projects/demo-project/traces/frontend.trace:42"
        for line in lines
    )


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
            "0af7651916cd43dd8448eb211c80319c",
        ),
        (
            {"X-Cloud-Trace-Context": "105445AA7843BC8BF206B12000100000/1;o=1"},
            "105445aa7843bc8bf206b12000100000",
        ),
    ],
)
def test_trace_id_from_headers(client, fake, headers: dict[str, str], expected: str) -> None:
    response = client.post("/vac/assistant/a/sse", json={"user_input": "hi"}, headers=headers)
    assert response.headers["X-Trace-Id"] == expected
    assert sse_events(response.get_data())[-2]["metadata"]["trace_id"] == expected


@pytest.mark.parametrize(
    "traceparent",
    [
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # no trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # no parent id
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # upper case
        None,
    ],
)
def test_new_trace_id_when_none_is_given(client, fake, traceparent: str | None) -> None:
    """None, or a `traceparent` the W3C spec calls invalid (it is ignored)."""
    headers = {"traceparent": traceparent} if traceparent else {}
    response = client.post("/vac/assistant/a/sse", json={"user_input": "hi"}, headers=headers)
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Trace-Id"])
    assert response.headers["X-Trace-Id"] != "0af7651916cd43dd8448eb211c80319c"


def test_logs_hold_no_key_and_no_prompt(client, fake, capfd) -> None:
    ask(client, "my secret question").get_data()
    fake.push(Script(fail="401"))
    ask(client, "my secret question").get_data()
    out = capfd.readouterr().out
    assert "test-key" not in out
    assert "my secret question" not in out


def test_the_providers_in_use_are_logged_once_with_their_base_url(client, fake, capfd) -> None:
    os.environ["ANTHROPIC_MODEL"] = "model-for-this-test"
    ask(client).get_data()
    ask(client).get_data()
    announced = [
        line for line in capfd.readouterr().out.splitlines() if "providers.configured" in line
    ]
    assert len(announced) == 1
    assert f"model-for-this-test @ {fake.url}" in announced[0]
    assert '"trace_id"' in announced[0]  # in the log of the request that first saw them
    assert "test-key" not in announced[0]


def test_a_login_in_a_base_url_is_sent_as_basic_auth_and_never_logged(client, fake, capfd) -> None:
    # The one way to reach an Ollama (it has no key) behind a proxy that asks for a login.
    os.environ["ANTHROPIC_BASE_URL"] = fake.url.replace("//", "//bob:pw-9f3k2@")
    ask(client).get_data()
    assert fake.wait_for_requests(1)[0].headers["authorization"] == "Basic Ym9iOnB3LTlmM2sy"
    out = capfd.readouterr().out
    assert f"@ {fake.url.replace('//', '//***@')}" in out  # providers.configured
    assert "pw-9f3k2" not in out


@pytest.mark.parametrize(
    "url",
    ["htp://bob:pw-9f3k2@proxy.example", "bob:pw-9f3k2@proxy.example", "http:/bob:pw-9f3k2@x"],
)
def test_a_bad_base_url_is_not_quoted(url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"ANTHROPIC_BASE_URL": url})
    assert str(refused.value) == "ANTHROPIC_BASE_URL must be an http:// or https:// URL"


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/?key=AIzaSy-SECRET", "https://proxy.example/v1#SECRET", "http://h/?"],
)
def test_a_base_url_with_a_query_or_fragment_is_a_config_error(url: str) -> None:
    """Paths were joined after it (`/?key=.../v1/messages`: a 404 each request) and it was
    logged whole, a key in its query too (Gemini's documented `?key=`: a reviewer's)."""
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"GEMINI_BASE_URL": url})
    assert (
        str(refused.value) == "GEMINI_BASE_URL must have no query or fragment (nothing from ? or #)"
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [("ANTHROPIC_TEMPERATURE", "warm"), ("MAX_STREAMS", "1.5"), ("MAX_STREAMS", "-3"),
     ("AUTH_MODE", "firebase-admin"), ("ASSISTANT_PROVIDERS", "anthropic,claude"),
     ("ANTHROPIC_TEMPERATURE", "0,7"), ("MAX_STREAMS", "1 000")],
)  # fmt: skip
def test_a_value_of_a_settings_shape_is_quoted_in_its_error(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({name: value})
    assert repr(value.split(",")[-1] if name == "ASSISTANT_PROVIDERS" else value) in str(
        refused.value
    )


@pytest.mark.parametrize(
    "name", ["ANTHROPIC_TEMPERATURE", "MAX_STREAMS", "ANTHROPIC_THINKING", "ASSISTANT_PROVIDERS"]
)
def test_a_key_pasted_into_a_setting_is_not_quoted_in_its_error(name: str) -> None:
    key = "sk-ant-api03-" + "x" * 60
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({name: key})
    assert key not in str(refused.value) and "not shown: it may be a key" in str(refused.value)
    # And keys with no such start: Mistral's (32 random characters), Hugging Face's.
    others = ("q7Yx2LmN9pR4tV8wZ3bC6dF1gH5jK0sT", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345",
              "6f1c2b9e-3d4a-4c8b-9e2f-0a1b2c3d4e5f")  # fmt: skip
    for short in ("sk-short", '"sk-0123456789abcdef"', "Bearer sk-abc", "\u201csk-abc", *others):
        with pytest.raises(ConfigError) as refused:
            Settings.from_env({name: short})
        assert short.removeprefix("Bearer ").strip('"\u201c')[:8] not in str(refused.value)


def test_a_certs_url_may_have_a_query() -> None:
    """It is fetched as it is: the check made for base URLs (paths joined after them)
    refused it (a reviewer's)."""
    url = "https://certs.example.test/x509?dir=/"
    env = {"AUTH_MODE": "firebase", "FIREBASE_CERTS_URL": url, "FIREBASE_PROJECT_ID": "p"}
    assert Settings.from_env(env).auth.certs_url == url


@pytest.mark.parametrize("url", ["http://a b", "http://a\tb:8080", "https://host\x01.example"])
def test_a_base_url_whose_host_no_lookup_takes_is_a_config_error(url: str) -> None:
    """httpx and the IDNA codec take a space in a host: each request was a 502
    (`upstream_unreachable`) where the setting is what is wrong (a reviewer)."""
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"ANTHROPIC_BASE_URL": url})
    assert str(refused.value) == "ANTHROPIC_BASE_URL is not a URL httpx can read"


@pytest.mark.parametrize(
    "url",
    [
        "http://\u0645\u062b\u0627\u06441.example",
        "http://faß.de",
        "http://[fe80::1%25lo]:11434",
        "http://my_ollama.",
    ],
)
def test_a_base_url_httpx_takes_is_taken(url: str) -> None:
    """Checked with Python's IDNA codec (IDNA 2003), a name ending in a digit in a
    right-to-left script was refused, where httpx (IDNA 2008) sends it (a reviewer)."""
    assert Settings.from_env({"ANTHROPIC_BASE_URL": url}).providers["anthropic"].base_url == url


@pytest.mark.parametrize("password", ["pa/ss", "pa?ss", "pa#ss", "p@ss"])
def test_a_login_is_hidden_whatever_its_password_holds(password: str) -> None:
    shown = shown_url(f"http://alice:{password}@host:11434")
    assert shown == "http://***@host:11434"


def test_closing_right_after_the_status_closes_the_upstream(client, fake) -> None:
    fake.push(Script(tokens=[f"w{i} " for i in range(200)], interval=0.05))
    response = ask(client)  # the status came with the first chunk; no frame read yet
    response.close()
    assert fake.wait_for_requests(1)[0].client_closed.wait(timeout=3)


def test_line_separators_are_escaped_so_any_line_splitter_reads_one_frame_per_line(
    client, fake: FakeUpstream
) -> None:
    # Python's str.splitlines (and so httpx's iter_lines) also breaks at U+2028,
    # U+2029 and U+0085, which JSON leaves raw.
    tokens = ["a\u2028b ", "c\u2029d\x85e ", "é😀"]
    fake.push(Script(tokens=tokens))
    body = ask(client).get_data().decode("utf-8")
    lines = [line for line in body.splitlines() if line]
    assert all(line.startswith("data: ") for line in lines)
    frames = [line.removeprefix("data: ") for line in lines]
    assert [json.loads(frame)["chunk"] for frame in frames[:3]] == tokens
    assert json.loads(frames[3])["answer"] == "".join(tokens)
    assert "\\u2028" in body and "\\u0085" in body and "é😀" in body  # other text stays raw


def test_a_first_chunk_timeout_longer_than_the_idle_gap_is_honoured(
    client, fake: FakeUpstream
) -> None:
    """Before the first chunk only FIRST_CHUNK_TIMEOUT_SECONDS counts, even when it is
    longer than IDLE_TIMEOUT_SECONDS (the socket's own read timeout was the idle one)."""
    os.environ.update(FIRST_CHUNK_TIMEOUT_SECONDS="3", IDLE_TIMEOUT_SECONDS="0.4")
    fake.push(Script(tokens=["slow ", "start"], ttft=1.0, interval=0.1))
    events = sse_events(ask(client).get_data())
    assert events[-2]["answer"] == "slow start"
    assert [a["outcome"] for a in events[-2]["metadata"]["attempts"]] == ["ok"]


def test_with_a_longer_first_chunk_timeout_idle_gaps_are_still_cut(
    client, fake: FakeUpstream
) -> None:
    """Once the first chunk is in, the socket's read timeout is the idle gap again."""
    os.environ.update(FIRST_CHUNK_TIMEOUT_SECONDS="3", IDLE_TIMEOUT_SECONDS="0.4")
    fake.push(Script(tokens=["start ", "never"], fail_after=1, fail_mode="hang"))
    events = sse_events(ask(client).get_data())
    assert events[0] == {"chunk": "start "}
    assert events[-2]["code"] == "upstream_timeout"
    assert events[-2]["partial"] == "start "
