// Tests of vac-stream.js in Node.js 20 (`node --test clients/js/`; tests/test_browser.py runs
// them too). Bodies come from a fetch stand-in that hands out the bytes in pieces cut at awkward
// places: inside "data:", between CR and LF, inside a UTF-8 character.
import assert from "node:assert/strict";
import {test} from "node:test";

import {ThinkingSplitter} from "./thinking.js";
import {SseParser, streamReply} from "./vac-stream.js";

const encoder = new TextEncoder();

/** A fetch that answers `body` (bytes cut into `pieces` of these sizes, the rest whole). Like
 * a real one, an abort of `init.signal` breaks the body's reads; `calls` gets each request, and
 * "cancelled" when the client closed the body. */
function fakeFetch(
  body,
  {status = 200, type = "text/event-stream", pieces = [], calls = [], headers = {}} = {},
) {
  return async (url, init) => {
    calls.push({url, init});
    const bytes = encoder.encode(body);
    const parts = [];
    let at = 0;
    for (const size of pieces) {
      parts.push(bytes.slice(at, at + size));
      at += size;
    }
    parts.push(bytes.slice(at));
    const stream = new ReadableStream({
      start(controller) {
        init.signal?.addEventListener("abort", () => controller.error(init.signal.reason));
      },
      pull(controller) {
        const part = parts.shift();
        if (part === undefined) controller.close();
        else controller.enqueue(part);
      },
      cancel() {
        calls.push("cancelled");
      },
    });
    return new Response(stream, {
      status, headers: {"Content-Type": type, "X-Trace-Id": "t-1", ...headers},
    });
  };
}

async function collect(body, fetchOptions = {}, extra = {}) {
  const seen = {chunks: [], final: null, errors: [], traceIds: new Set()};
  const result = await streamReply({
    url: "http://service.test/vac/assistant/a/sse",
    body: {user_input: "hi"},
    fetch: fakeFetch(body, fetchOptions),
    onChunk: (text, {traceId}) => {
      seen.chunks.push(text);
      seen.traceIds.add(traceId);
    },
    onFinal: (reply) => {
      seen.final = reply;
      seen.traceIds.add(reply.traceId);
    },
    onError: (error) => {
      seen.errors.push(error);
      seen.traceIds.add(error.traceId);
    },
    ...extra,
  });
  return {result, ...seen};
}

const STREAM =
  'data: {"chunk":"Ol\u00e9 \ud83d\ude00"}\r\n\r\n' +
  ": ping\r\n\r\n" +
  'data: {"chunk":"a\u2028b"}\r\r' +
  'data: {"answer":"Ol\u00e9 \ud83d\ude00a\u2028b",\ndata: "metadata":{"trace_id":"t-1"}}\n\n' +
  "data: [DONE]\n\n";

test("every split of the body gives the same frames", async () => {
  const size = encoder.encode(STREAM).length;
  for (let cut = 1; cut < size; cut++) {
    for (const pieces of [[cut], Array(size).fill(1).slice(0, cut)]) {
      const {result, chunks, final, errors, traceIds} = await collect(STREAM, {pieces});
      assert.deepEqual(chunks, ["Ol\u00e9 \ud83d\ude00", "a\u2028b"], `cut at ${cut}`);
      assert.equal(final.answer, "Ol\u00e9 \ud83d\ude00a\u2028b");
      assert.deepEqual(final.metadata, {trace_id: "t-1"});
      assert.deepEqual(errors, []);
      assert.deepEqual([...traceIds], ["t-1"]);
      assert.equal(result.outcome, "final");
    }
  }
});

test("the parser follows the standard's line and field rules", () => {
  const events = [];
  const parser = new SseParser((event) => events.push(event));
  for (const piece of ["da", "ta:x\r", "\ndata\r", "\r", "\n", ":c\n", "data:  two\n",
      "event: e\nid: 7\nretry: 10\nfoo: bar\n\n", "\n\n", "data: cut off"]) {
    parser.feed(piece);
  }
  parser.end();
  assert.deepEqual(events, [
    {data: "x\n", event: "message", id: ""},
    {data: " two", event: "e", id: "7"},
  ]);
});

test("a long line is joined once, when its end comes", () => {
  // The final frame is one line as long as the reply: joined with the pieces before it and
  // scanned again on every read, a 4 MB one took 2.6 s (each read cost the whole line).
  const events = [];
  const parser = new SseParser((event) => events.push(event));
  const joins = [];
  const join = Array.prototype.join;
  Array.prototype.join = function (...args) { joins.push(this.length); return join.apply(this, args); };
  try {
    parser.feed("data: ");
    for (let i = 0; i < 1000; i++) parser.feed("x".repeat(100));
    parser.feed("\n\n");
  } finally {
    Array.prototype.join = join;
  }
  assert.deepEqual(events, [{data: "x".repeat(100_000), event: "message", id: ""}]);
  assert.deepEqual(joins.filter((pieces) => pieces > 1), [1002]); // once, all 1,002 pieces
});

test("an error frame goes to onError with its partial text and metadata", async () => {
  const body = 'data: {"chunk":"Half "}\n\n' +
    'data: {"error":"The reply broke off.","code":"provider_error","partial":"Half ",' +
    '"metadata":{"trace_id":"t-1"}}\n\ndata: [DONE]\n\n';
  const {result, chunks, final, errors} = await collect(body);
  assert.deepEqual(chunks, ["Half "]);
  assert.equal(final, null);
  assert.equal(errors.length, 1);
  assert.deepEqual(errors[0], {error: "The reply broke off.", code: "provider_error",
    partial: "Half ", metadata: {trace_id: "t-1"}, status: 200, traceId: "t-1",
    retryAfter: null, body: null});
  assert.equal(result.outcome, "error");
});

test("an error before the stream is read from its JSON body", async () => {
  const body = '{"error":"user_input is required","code":"invalid_request","trace_id":"t-1"}';
  const {errors, result} = await collect(body, {status: 400, type: "application/json"});
  assert.deepEqual(errors, [{error: "user_input is required", code: "invalid_request",
    partial: "", metadata: null, status: 400, traceId: "t-1", retryAfter: null,
    body: JSON.parse(body)}]);
  assert.equal(result.outcome, "error");
});

test("a 429 says when to try again, and a 502 which providers failed", async () => {
  const limited = '{"error":"too many","code":"rate_limited","trace_id":"t-1"}';
  const headers = {"Retry-After": "5"};
  const {errors} = await collect(limited, {status: 429, type: "application/json", headers});
  assert.equal(errors[0].retryAfter, 5);
  // A proxy's HTTP date (RFC 9110) was null: the seconds until then.
  const at = new Date(Date.now() + 30_000).toUTCString();
  const dated = await collect(limited, {status: 503, type: "application/json",
    headers: {"Retry-After": at}});
  assert.ok(dated.errors[0].retryAfter >= 28 && dated.errors[0].retryAfter <= 31);
  const past = await collect(limited, {status: 503, type: "application/json",
    headers: {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}});
  assert.equal(past.errors[0].retryAfter, 0);
  const junk = await collect(limited, {status: 503, type: "application/json",
    headers: {"Retry-After": "soon"}});
  assert.equal(junk.errors[0].retryAfter, null);
  const failed = {error: "no provider answered", code: "providers_failed", trace_id: "t-1",
    attempts: [{name: "anthropic", outcome: "upstream_status", ms: 3}]};
  const second = await collect(JSON.stringify(failed), {status: 502, type: "application/json"});
  assert.deepEqual(second.errors[0].body.attempts, failed.attempts);
});

test("a JSON reply that failed after text came gives that text as partial", async () => {
  const failed = {error: "cut off", code: "providers_failed", trace_id: "t-1", partial: "a b "};
  const {errors} = await collect(JSON.stringify(failed), {status: 502, type: "application/json"});
  assert.equal(errors[0].partial, "a b ");
});

test("a callback that throws in onOpen closes the connection", async () => {
  const calls = [];
  await assert.rejects(
    collect('data: {"chunk":"x"}\n\n', {calls}, {onOpen: () => {
      throw new TypeError("boom");
    }}),
    /boom/,
  );
  assert.equal(calls.at(-1), "cancelled");
});

test("an abort after the final frame leaves the reply final", async () => {
  // The final frame and [DONE] in separate reads: Stop pressed as the reply ends.
  const body = 'data: {"answer":"a b","metadata":{}}\n\ndata: [DONE]\n\n';
  const controller = new AbortController();
  const {result, final, errors} = await collect(body, {pieces: [38]}, {
    signal: controller.signal, onFinal: () => controller.abort(),
  });
  assert.equal(result.outcome, "final");
  assert.equal(errors.length, 0);
  assert.equal(final, null); // collect's own onFinal was replaced by the aborting one
});

test("an abort from a callback stops the callbacks, whatever came in the same read", async () => {
  // Every frame in one read: an abort in the first onChunk leaves the rest undelivered.
  const body = 'data: {"chunk":"a "}\n\ndata: {"chunk":"b"}\n\n' +
    'data: {"answer":"a b","metadata":{}}\n\ndata: [DONE]\n\n';
  const controller = new AbortController();
  const chunks = [];
  const {result, final, errors} = await collect(body, {}, {
    signal: controller.signal,
    onChunk: (text) => {
      chunks.push(text);
      controller.abort();
    },
  });
  assert.equal(result.outcome, "aborted");
  assert.deepEqual(chunks, ["a "]);
  assert.equal(final, null);
  assert.equal(errors.length, 0);
});

test("a data line that is JSON but no object is a bad frame, not a rejection", async () => {
  for (const data of ["5", '"hi"', "true", "null", "[1]"]) {
    const {result, errors} = await collect(`data: ${data}\n\ndata: [DONE]\n\n`);
    assert.equal(result.outcome, "error");
    assert.equal(errors.length, 1);
    assert.equal(errors[0].code, "bad_frame");
  }
});

test("nothing is delivered after the terminal frame", async () => {
  const body = 'data: {"answer":"a","metadata":{}}\n\ndata: {"error":"late","code":"x"}\n\n' +
    'data: {"chunk":"more"}\n\ndata: <html>\n\ndata: [DONE]\n\n';
  const {result, chunks, final, errors} = await collect(body);
  assert.equal(result.outcome, "final");
  assert.equal(final.answer, "a");
  assert.deepEqual(chunks, []);
  assert.equal(errors.length, 0);
});

test("a body that cannot be JSON is a bad request, and nothing is sent", async () => {
  const calls = [];
  const errors = [];
  const result = await streamReply({
    url: "http://service.test/x", body: {n: 1n}, fetch: fakeFetch("data: [DONE]\n\n", {calls}),
    onError: (e) => errors.push(e),
  });
  assert.equal(result.outcome, "error");
  assert.equal(errors[0].code, "bad_request");
  assert.equal(calls.length, 0);
  assert.equal(result.traceId, null); // nothing sent: no id to retry with
  assert.equal(errors[0].traceId, null);
});

test("a body's own trace id stays the request's, even after a refusal with another", async () => {
  // A 401 (an expired token) comes before the service reads the body, under an id of its
  // own: a retry with that one would save the question and reply twice.
  const errors = [];
  const refusal = JSON.stringify({error: "sign in again", code: "unauthenticated", trace_id: "new"});
  const result = await streamReply({
    url: "http://service.test/x",
    body: {user_input: "hi", trace_id: "first-try"},
    fetch: fakeFetch(refusal, {status: 401, type: "application/json", headers: {"X-Trace-Id": "new"}}),
    onError: (e) => errors.push(e),
  });
  assert.equal(result.traceId, "first-try");
  assert.equal(errors[0].traceId, "first-try");
  assert.equal(errors[0].body.trace_id, "new"); // the service's own, for its logs
});

test("a body's trace id the service would refuse is not taken for the request's", async () => {
  // A reviewer: "" or "has space" was the outcome's traceId, and no trace header went;
  // sent again, it is refused again.
  for (const refused of ["", "has space", "x".repeat(129)]) {
    const calls = [];
    const answer = JSON.stringify({error: "trace_id is not valid", code: "invalid_request",
      trace_id: "4bf92f3577b34da6a3ce929d0e0e4736"});
    const result = await streamReply({
      url: "http://service.test/x",
      body: {user_input: "hi", trace_id: refused},
      fetch: fakeFetch(answer, {status: 400, type: "application/json", calls,
        headers: {"X-Trace-Id": "4bf92f3577b34da6a3ce929d0e0e4736"}}),
    });
    assert.match(calls[0].init.headers.get("traceparent"), /^00-[0-9a-f]{32}-/);
    assert.equal(result.traceId, "4bf92f3577b34da6a3ce929d0e0e4736"); // the service's
  }
});

test("a stream that ends without a terminal frame is an error", async () => {
  const {errors} = await collect('data: {"chunk":"Hal');
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, "stream_ended");
});

test("it sends one POST with the token, and never another", async () => {
  const calls = [];
  const fetch = fakeFetch('data: {"answer":"x","metadata":{}}\n\ndata: [DONE]\n\n', {calls});
  await streamReply({url: "http://service.test/x", body: {user_input: "hi"}, token: "tok", fetch});
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(calls.length, 1);
  assert.equal(calls[0].init.method, "POST");
  assert.equal(calls[0].init.headers.get("Authorization"), "Bearer tok");
  assert.equal(calls[0].init.headers.get("Accept"), "text/event-stream");
  assert.deepEqual(JSON.parse(calls[0].init.body), {user_input: "hi"});
  assert.match(calls[0].init.headers.get("traceparent"), /^00-[0-9a-f]{32}-/); // see below
});

test("a caller's header replaces ours whatever its case", async () => {
  const calls = [];
  const fetch = fakeFetch('data: {"answer":"x","metadata":{}}\n\ndata: [DONE]\n\n', {calls});
  const headers = {"content-type": "text/plain", "x-extra": "1", authorization: "Bearer old"};
  await streamReply({url: "http://service.test/x", body: {}, token: "tok", headers, fetch});
  const sent = calls[0].init.headers;
  assert.equal(sent.get("Content-Type"), "text/plain"); // not "application/json, text/plain"
  assert.equal(sent.get("X-Extra"), "1");
  assert.equal(sent.get("Authorization"), "Bearer tok"); // the token wins, as before
});

test("a header no request can carry is an error, not a rejection", async () => {
  const calls = [];
  const fetch = fakeFetch('data: [DONE]\n\n', {calls});
  const errors = [];
  const result = await streamReply({
    url: "http://service.test/x", body: {}, token: "tok\nX", fetch, onError: (e) => errors.push(e),
  });
  assert.equal(result.outcome, "error");
  assert.equal(errors[0].code, "bad_request");
  assert.ok(!errors[0].error.includes("tok")); // a message safe to show: no token in it
  assert.equal(calls.length, 0); // nothing was sent
});

test("an abort made before the call is an abort, whatever else is wrong", async () => {
  const calls = [];
  const errors = [];
  const controller = new AbortController();
  controller.abort();
  const cyclic = {};
  cyclic.self = cyclic;
  const result = await streamReply({
    url: "http://service.test/x", body: cyclic, signal: controller.signal,
    fetch: fakeFetch("data: [DONE]\n\n", {calls}), onError: (e) => errors.push(e),
  });
  assert.equal(result.outcome, "aborted");
  assert.equal(errors.length, 0); // no callback after an abort
  assert.equal(calls.length, 0);
});

test("a callback that throws rejects the promise", async () => {
  await assert.rejects(
    collect('data: {"chunk":"x"}\n\n', {}, {onChunk: () => {
      throw new TypeError("boom");
    }}),
    /boom/,
  );
});

test("thinking is split out of chunks cut anywhere", () => {
  const text = "A <thinking>x < y</think>z</thinking>B<think>w</think> C <thin";
  for (let cut = 0; cut <= text.length; cut++) {
    const splitter = new ThinkingSplitter();
    const parts = [text.slice(0, cut), text.slice(cut)].map((piece) => splitter.feed(piece));
    parts.push(splitter.finish());
    const content = parts.map((part) => part.content).join("");
    const thinking = parts.map((part) => part.thinking).join("");
    assert.equal(content, "A B C <thin", `cut at ${cut}`);
    assert.equal(thinking, "x < y</think>z\n\nw", `cut at ${cut}`);
  }
});

/**
 * Asserts that `text`, cut in two anywhere, splits into `content` and `thinking`, in each mode.
 * @param {string} text
 * @param {string} content
 * @param {string} thinking
 */
function splitsAnywhere(text, content, thinking) {
  for (const json of [false, true]) {
    for (let cut = 0; cut <= text.length; cut++) {
      const splitter = new ThinkingSplitter({json});
      const parts = [text.slice(0, cut), text.slice(cut)].map((piece) => splitter.feed(piece));
      parts.push(splitter.finish());
      assert.equal(parts.map((part) => part.content).join(""), content, `json ${json}, cut at ${cut}`);
      assert.equal(parts.map((part) => part.thinking).join(""), thinking, `json ${json}, cut at ${cut}`);
    }
  }
}

test("a reply that began inside its thinking is split at its close tag, cut anywhere", () => {
  // DeepSeek-R1 served with no reasoning parser: its `<think>` was the chat template's. The
  // service's ThinkingSplitter gives the content and thinking below (stripped: these are not).
  const text = 'Okay, "hi".\n</think>\n\nHello!<think>b</think>\n</think>';
  for (const json of [false, true]) {
    for (let cut = 0; cut <= text.length; cut++) {
      const splitter = new ThinkingSplitter({json});
      let [content, thinking, told] = ["", "", 0];
      for (const part of [text.slice(0, cut), text.slice(cut), null]) {
        const out = part === null ? splitter.finish() : splitter.feed(part);
        if (out.contentWasThinking) [content, told] = ["", told + 1]; // what was shown, cleared
        [content, thinking] = [content + out.content, thinking + out.thinking];
      }
      assert.equal(content, "\n\nHello!\n</think>", `json ${json}, cut at ${cut}`);
      assert.equal(thinking, 'Okay, "hi".\n\n\nb', `json ${json}, cut at ${cut}`);
      assert.equal(told, 1);
    }
  }
  const within = new ThinkingSplitter(); // a close tag within a line is text
  assert.deepEqual(within.feed("The </think> tag\nends"), {content: "The </think> tag\nends", thinking: ""});
});

test("an open tag right after a backtick is code, cut anywhere, as the service reads it", () => {
  // The service's ThinkingSplitter gives for this text: content and thinking below.
  const text = "Wrap it in `<think>` tags, ``<thinking>x``. <think>use `y`</think>Done";
  splitsAnywhere(text, "Wrap it in `<think>` tags, ``<thinking>x``. Done", "use `y`");
});

test("the service's mark before its own tag goes with the tag, cut anywhere", () => {
  // After text ending in a backtick the service writes "\u200b<thinking>": kept in content, the
  // mark broke a fence closing there and a fenced JSON answer. ThinkingSplitter in the service
  // gives the content and thinking below.
  const text = 'plan```json\n{"a": 1}\n```\u200b<thinking>check</thinking> x\u200b';
  splitsAnywhere(text, 'plan```json\n{"a": 1}\n``` x\u200b', "check");
});

test("a later block's thinking is set apart by a blank line, not a blank block", () => {
  const splitter = new ThinkingSplitter();
  const pieces = ["<think> </think>A<think>one</think>", "B<thinking>", " ", "two", "</thinking><think>"];
  const parts = pieces.map((piece) => splitter.feed(piece));
  parts.push(splitter.finish());
  assert.equal(parts.map((part) => part.thinking).join(""), " one \n\ntwo");
  assert.equal(parts.map((part) => part.content).join(""), "AB");
});

test("a chunk of many blocks of both tags, one inside another's, splits as the blocks say", () => {
  const block = "a<think>b<thinking>c</think>d<thinking>e</thinking>f";
  const splitter = new ThinkingSplitter();
  const first = splitter.feed(block.repeat(5000));
  const last = splitter.finish();
  assert.equal(first.content + last.content, "adf".repeat(5000));
  const blocks = ["b<thinking>c", "e"];
  const thinking = Array.from({length: 10000}, (_, i) => blocks[i % 2]).join("\n\n");
  assert.equal(first.thinking + last.thinking, thinking);
});

test("a block of other blanks than ASCII's is thinking, set apart as the service joins it", () => {
  const splitter = new ThinkingSplitter();
  const first = splitter.feed("<think>a</think><think>\u00a0</think><think>b</think>");
  assert.equal(first.thinking + splitter.finish().thinking, "a\n\n\u00a0\n\nb");
});

test("json mode: a tag inside a JSON string is text, cut anywhere, as the service reads it", () => {
  // The service's split_outside_json_strings gives for this text: content and thinking below.
  const text = '<think>plan "a"</think>{"a": "x<think>y</think>", "b\\\\": "<think>", "c": "\\"<think>"}<think>z</think>';
  for (let cut = 0; cut <= text.length; cut++) {
    const splitter = new ThinkingSplitter({json: true});
    const parts = [text.slice(0, cut), text.slice(cut)].map((piece) => splitter.feed(piece));
    parts.push(splitter.finish());
    const content = parts.map((part) => part.content).join("");
    const thinking = parts.map((part) => part.thinking).join("");
    assert.equal(content, '{"a": "x<think>y</think>", "b\\\\": "<think>", "c": "\\"<think>"}', `cut at ${cut}`);
    assert.equal(thinking, 'plan "a"\n\nz', `cut at ${cut}`);
  }
  const plain = new ThinkingSplitter(); // without it, tags are tags wherever they are
  assert.equal(plain.feed('{"a": "x<think>y</think>"}').content, '{"a": "x"}');
});

test("a JSON reply whose connection breaks midway is a network error", async () => {
  const errors = [];
  const broken = async (url, init) => {
    const stream = new ReadableStream({
      start(controller) {
        controller.enqueue(new TextEncoder().encode('{"answer":"half of a long rep'));
        controller.error(new TypeError("terminated"));
      },
    });
    return new Response(stream, {status: 200, headers: {"content-type": "application/json"}});
  };
  const result = await streamReply({
    url: "http://service.test/x", body: {user_input: "hi"}, fetch: broken,
    onError: (error) => errors.push(error),
  });
  assert.equal(result.outcome, "error");
  assert.equal(errors[0].code, "network_error");
});

test("a trace id is made and sent as a traceparent when none is given, so a retry can send it", async () => {
  const calls = [];
  const failing = async (url, init) => {
    calls.push(init);
    throw new TypeError("Failed to fetch");
  };
  const errors = [];
  const result = await streamReply({
    url: "http://service.test/vac/assistant/a/sse", body: {user_input: "hi"}, fetch: failing,
    onError: (error) => errors.push(error),
  });
  const [, traceId, span, flags] = /^00-([0-9a-f]{32})-([0-9a-f]{16})-(\d\d)$/
    .exec(calls[0].headers.get("traceparent"));
  assert.ok(span && flags === "00"); // not sampled: a made id asks no trace to be kept
  assert.deepEqual(JSON.parse(calls[0].body), {user_input: "hi"}); // the body as given
  assert.equal(result.traceId, traceId);
  assert.equal(errors[0].code, "network_error");
  assert.equal(errors[0].traceId, traceId);

  const again = await streamReply({
    url: "http://service.test/vac/assistant/a/sse",
    body: {user_input: "hi", trace_id: result.traceId}, fetch: failing,
  });
  assert.equal(JSON.parse(calls[1].body).trace_id, traceId); // the caller's, as it is
  assert.equal(calls[1].headers.get("traceparent"), null);
  assert.equal(again.traceId, traceId);
});

test("a caller's trace header is kept, and its trace id known before any answer", async () => {
  for (const [name, value, expected] of [
    ["traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "4bf92f3577b34da6a3ce929d0e0e4736"],
    ["X-Cloud-Trace-Context", "105445AA7843BC8BF206B12000100000/1;o=1", "105445aa7843bc8bf206b12000100000"],
  ]) {
    const calls = [];
    const result = await streamReply({
      url: "http://service.test/x", body: {user_input: "hi"}, headers: {[name]: value},
      fetch: async (url, init) => {
        calls.push(init);
        throw new TypeError("Failed to fetch");
      },
    });
    assert.equal(calls[0].headers.get(name), value);
    assert.equal(calls[0].headers.get("traceparent") ?? value, value); // none added
    assert.equal(result.traceId, expected);
  }
});

test("a body with its own toJSON is sent as it says", async () => {
  const calls = [];
  class Ask {
    toJSON() {
      return {user_input: "hi"};
    }
  }
  const fetch = fakeFetch('data: {"answer":"x","metadata":{}}\n\ndata: [DONE]\n\n', {calls});
  await streamReply({url: "http://service.test/x", body: new Ask(), fetch});
  assert.deepEqual(JSON.parse(calls[0].init.body), {user_input: "hi"});
});

test("the trace id reported when no answer came is the one the body sent", async () => {
  // The kit read the object's own trace_id, not what was sent, and reported another: a
  // retry with it saved the question and reply twice (reviewers').
  class Ask {
    toJSON() {
      return {user_input: "hi", trace_id: "my-ask-43"};
    }
  }
  class WithGetter {
    get trace_id() {
      return "never-sent";
    }
  }
  const unreachable = async () => {
    throw new TypeError("fetch failed");
  };
  const bodies = [
    [new Ask(), "my-ask-43"],
    [{user_input: "hi", trace_id: {toJSON: () => "my-ask-44"}}, "my-ask-44"],
    [{user_input: "hi", trace_id: new String("my-ask-45")}, "my-ask-45"],
  ];
  for (const [body, sent] of bodies) {
    const result = await streamReply({url: "http://service.test/x", body, fetch: unreachable});
    assert.equal(result.traceId, sent);
  }
  const result = await streamReply({url: "http://service.test/x", body: new WithGetter(), fetch: unreachable});
  assert.notEqual(result.traceId, "never-sent"); // the one made up here, sent as traceparent
  assert.match(result.traceId, /^[0-9a-f]{32}$/);
});

test("the service's X-Trace-Id wins over the one sent", async () => {
  const {result, traceIds} = await collect(STREAM);
  assert.equal(result.traceId, "t-1");
  assert.deepEqual([...traceIds], ["t-1"]);
});

test("a caller's trace header is read by the service's rules, or replaced", async () => {
  const id = "0af7651916cd43dd8448eb211c80319c";
  const span = "b7ad6b7169203331";
  const cloud = "1234567890abcdef1234567890abcdef";
  // [headers, the id the service takes from them (assistant/tracing.py), or null]
  const cases = [
    [{traceparent: `00-${id}-${span}-01`}, id],
    [{traceparent: `ff-${id}-${span}-01`}, null],
    [{traceparent: `00-${id}-0000000000000000-01`}, null],
    [{traceparent: `00-${id}-${span}-01-extra`}, null],
    [{traceparent: `01-${id}-${span}-01-extra`}, id],
    [{traceparent: `01-${id}-${span}-01x`}, null],
    [{traceparent: `00-${id}-${span}-011`}, null],
    [{traceparent: `00-${id.toUpperCase()}-${span}-01`}, null],
    [{traceparent: `ff-${id}-${span}-01`, "X-Cloud-Trace-Context": cloud}, cloud],
    [{traceparent: `00-${"0".repeat(32)}-${span}-01`, "X-Cloud-Trace-Context": `${cloud}/1;o=1`}, cloud],
    [{"X-Cloud-Trace-Context": `${cloud.toUpperCase()};o=1`}, cloud],
    [{"X-Cloud-Trace-Context": `${cloud}X`}, null],
    [{"X-Cloud-Trace-Context": "0".repeat(32)}, null],
  ];
  for (const [headers, taken] of cases) {
    const calls = [];
    const result = await streamReply({
      url: "http://service.test/x", body: {user_input: "hi"}, headers,
      fetch: async (url, init) => {
        calls.push(init);
        throw new TypeError("Failed to fetch");
      },
    });
    const sent = calls[0].headers.get("traceparent");
    if (taken) {
      assert.equal(result.traceId, taken, JSON.stringify(headers));
      assert.equal(sent, headers.traceparent ?? null); // the caller's, as it was
    } else { // one the service would not take: replaced by one it will
      assert.equal(sent, `00-${result.traceId}-${sent.slice(36, 52)}-00`, JSON.stringify(headers));
    }
  }
});


test("a stream that goes silent is taken as lost, and its connection closed", async () => {
  // A frozen service, or a path dropped without a reset: no byte, not even a ping.
  const calls = [];
  const errors = [];
  const silent = async (url, init) => {
    calls.push({url, init});
    const stream = new ReadableStream({
      start(controller) {
        controller.enqueue(encoder.encode('data: {"chunk":"Hel"}\n\n'));
        init.signal.addEventListener("abort", () => controller.error(init.signal.reason));
      },
      cancel() {
        calls.push("cancelled");
      },
    });
    return new Response(stream, {headers: {"Content-Type": "text/event-stream"}});
  };
  const result = await streamReply({
    url: "http://service.test/x", body: {user_input: "hi"}, fetch: silent, idleSeconds: 0.05,
    onError: (e) => errors.push(e),
  });
  assert.equal(result.outcome, "error");
  assert.equal(errors[0].code, "network_error");
  assert.equal(errors[0].partial, "Hel");
  assert.match(errors[0].error, /nothing from the service for 0.05 s/);
});

test("a service that never answers is taken as lost too", async () => {
  const errors = [];
  const never = (url, init) => new Promise((_, reject) => {
    init.signal.addEventListener("abort", () => reject(init.signal.reason));
  });
  const result = await streamReply({
    url: "http://service.test/x", body: {user_input: "hi"}, fetch: never, idleSeconds: 0.05,
    onError: (e) => errors.push(e),
  });
  assert.equal(result.outcome, "error");
  assert.equal(errors[0].code, "network_error");
  assert.equal(errors[0].status, 0);
});

test("a caller's abort is still an abort, with the watchdog on", async () => {
  const controller = new AbortController();
  const never = (url, init) => new Promise((_, reject) => {
    init.signal.addEventListener("abort", () => reject(init.signal.reason));
  });
  setTimeout(() => controller.abort(), 20);
  const result = await streamReply({
    url: "http://service.test/x", body: {user_input: "hi"}, fetch: never, signal: controller.signal,
  });
  assert.equal(result.outcome, "aborted");
});

test("idleSeconds: Infinity never fires (setTimeout would have, at once)", async () => {
  const later = async (url, init) => {
    const stream = new ReadableStream({
      async start(controller) {
        init.signal.addEventListener("abort", () => controller.error(init.signal.reason));
        await new Promise((resolve) => setTimeout(resolve, 30));
        controller.enqueue(encoder.encode(STREAM));
        controller.close();
      },
    });
    return new Response(stream, {headers: {"Content-Type": "text/event-stream"}});
  };
  const errors = [];
  const result = await streamReply({
    url: "http://service.test/x", body: {user_input: "hi"}, fetch: later, idleSeconds: Infinity,
    onError: (e) => errors.push(e),
  });
  assert.deepEqual(errors, []);
  assert.equal(result.outcome, "final");
});

test("a JSON reply slower than idleSeconds is not taken as lost, whatever Accept's case", async () => {
  // The service reads `q=0` as a refusal of streams and answers with JSON at the end: the
  // watchdog took the wait for it as a lost connection (a reviewer's).
  const slowJson = async (url, init) => {
    await new Promise((resolve, reject) => {
      setTimeout(resolve, 150);
      init.signal.addEventListener("abort", () => reject(init.signal.reason));
    });
    const answer = {answer: "Hi", metadata: {trace_id: "t-1"}};
    return new Response(JSON.stringify(answer), {headers: {"Content-Type": "application/json"}});
  };
  const cases = [
    ["http://service.test/vac/assistant/a", "text/event-stream;q=0, application/json"],
    ["http://service.test/vac/assistant/a", "text/event-stream;q=2"], // no weight RFC 9110 has
    ["http://service.test/vac/assistant/a", 'text/event-stream;x="a,b";q=0'],
    ["http://service.test/vac/assistant/sse", "application/json"], // an assistant named sse
    ["http://service.test/vac/assistant/a?from=/sse", "application/json"],
    ["http://service.test/vac/assistant/a", "text/event-stream;q=0.5=3"],
    ["http://service.test/vac/assistant/a", ";"], // threw before sending (a reviewer's)
    ["http://service.test/vac/assistant/a", "text/event-stream;;q\u0085=0;q=0"], // as the service
  ];
  for (const [url, accept] of cases) {
    const result = await streamReply({
      url, body: {user_input: "hi"}, fetch: slowJson, headers: {Accept: accept}, idleSeconds: 0.05,
    });
    assert.equal(result.outcome, "final", `${url} ${accept}`);
  }
});

test("a stream goes silent under the watchdog whatever Accept asked for", async () => {
  const silent = async (url, init) => new Response(new ReadableStream({
    start(controller) {
      controller.enqueue(encoder.encode('data: {"chunk":"Hel"}\n\n'));
      init.signal.addEventListener("abort", () => controller.error(init.signal.reason));
    },
  }), {headers: {"Content-Type": "text/event-stream"}});
  const errors = [];
  const result = await streamReply({
    url: "http://service.test/vac/assistant/a", body: {user_input: "hi"}, fetch: silent,
    headers: {Accept: "Text/Event-Stream"}, idleSeconds: 0.05, onError: (e) => errors.push(e),
  });
  assert.equal(result.outcome, "error");
  assert.equal(errors[0].partial, "Hel");
});
