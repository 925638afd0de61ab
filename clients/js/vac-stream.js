// vac-stream.js: the reference client for the VAC assistant's SSE replies.
//
// A dependency-free ES module for browsers and Node.js 20+ (anything with
// `fetch`, `ReadableStream` and `TextDecoder`). See clients/js/README.md.
//
//   import {streamReply} from "./vac-stream.js";
//   const result = await streamReply({
//     url: "http://127.0.0.1:1956/vac/assistant/demo/sse",
//     body: {user_input: "What is SSE?"},
//     token,                                  // optional Firebase ID token
//     signal: controller.signal,              // optional: controller.abort() stops the reply
//     onChunk: (text, {traceId}) => { ... },
//     onFinal: ({answer, metadata, traceId}) => { ... },
//     onError: ({error, code, partial, metadata, status, traceId}) => { ... },
//   });
//
// Deliberate choices (keep them):
// - One request, never re-sent. There is no reconnect and no retry of any
//   kind: a second POST would generate (and bill) a second, different reply.
//   `retry:` and `id:` fields are parsed and ignored. Retrying (say, once
//   after a 401 with a refreshed token) is the caller's decision.
// - The stream is closed as soon as `data: [DONE]` arrives.
// - SSE is parsed as the WHATWG HTML standard says (section 9.2.6): lines end
//   at CRLF, LF or CR (never at U+2028 or other Unicode breaks), anywhere
//   across reads, also between the CR and the LF of a CRLF; `data:` lines of
//   one event are joined with "\n"; comment lines (`: ping`) are ignored; an
//   event cut off by the end of the stream is dropped. UTF-8 is decoded in
//   streaming mode, so a character split across reads survives.
// - Exactly one of onFinal / onError is called per request, unless the
//   caller aborts before the terminal frame (then neither: the promise
//   resolves with outcome "aborted"); an abort after it changes nothing.
// - A callback that throws stops the stream: the connection is closed and the
//   promise rejects with that exception.

/**
 * @typedef {object} OpenInfo
 * @property {number} status   HTTP status of the response (200 when streaming)
 * @property {string|null} traceId  the request's trace id: the response's X-Trace-Id header
 *   (the body's trace_id when it sent one), else the one sent
 * @property {Headers} headers the response headers (cross-origin, the service exposes
 *   X-Trace-Id and Retry-After)
 */

/**
 * @typedef {object} ChunkInfo
 * @property {string|null} traceId
 */

/**
 * @typedef {object} ToolCall
 * @property {string} id        send it back as a tool turn's `tool_call_id`
 * @property {string} name
 * @property {Record<string, any>|null} args  null when the model's were no JSON object
 * @property {string} [signature]  when the provider gave one: send it back unchanged
 * @property {string} [args_error]  when `args` is null: why
 */

/**
 * @typedef {object} Metadata  a final frame's, an error frame's or a JSON answer's (docs/API.md,
 *   "Metadata", says what each holds)
 * @property {string} trace_id
 * @property {string|null} provider
 * @property {string|null} model
 * @property {string|null} model_version
 * @property {{input_tokens: number|null, output_tokens: number|null, thinking_tokens?: number|null}} usage
 * @property {string|null} stop_reason
 * @property {string} thinking_content
 * @property {ToolCall[]} tools_to_use
 * @property {any} structured_output
 * @property {string} [structured_output_error]
 * @property {string} [history_error]
 * @property {{name: string, outcome: string, ms: number, status?: number}[]} attempts
 * @property {{first_chunk_ms: number|null, total_ms: number}} timing
 * @property {{user?: string, assistant?: string}|null} message_ids
 * @property {boolean} persist_failed
 */

/**
 * @typedef {object} FinalReply
 * @property {string} answer    the whole text, thinking tags included
 * @property {Metadata} metadata
 * @property {string|null} traceId
 */

/**
 * @typedef {object} ReplyError
 * @property {string} error     a message safe to show
 * @property {string} code      the server's code (`invalid_request`, `providers_failed`, ...) or,
 *   from this client: `network_error` (no response), `http_error` (an error status without our
 *   JSON body), `bad_frame` (a data line that is not JSON), `stream_ended` (the connection
 *   closed before a terminal frame), `bad_request` (a header or token no request can carry)
 * @property {string} partial   text shown before the failure ("" before the stream), or
 *   for a JSON reply the text its provider had sent before it failed (the body's `partial`)
 * @property {Metadata|null} metadata  the error frame's metadata (null before the stream; a
 *   crash's carries its trace_id alone)
 * @property {number} status    HTTP status (0 when no response arrived)
 * @property {string|null} traceId  the request's trace id (X-Trace-Id, the error body's
 *   trace_id, or the one sent): send it again as `body.trace_id` to retry without saving twice
 * @property {number|null} retryAfter  seconds from Retry-After (a 429 or 503), else null
 * @property {Record<string, any>|null} body  an error status's JSON body (a 502's `attempts`
 *   are in it), else null (an error frame's are in `metadata.attempts`)
 */

/**
 * @typedef {object} StreamResult
 * @property {"final"|"error"|"aborted"} outcome
 * @property {number} status
 * @property {string|null} traceId  the request's trace id, as in ReplyError
 * @property {string} text     the chunks received, joined (a JSON reply's: its `answer`)
 */

/**
 * @typedef {object} StreamOptions
 * @property {string} url      the full endpoint URL, e.g. `${base}/vac/assistant/${id}/sse`
 * @property {Record<string, any>} body  the request body (sent as JSON)
 * @property {string} [token]  a bearer token (Firebase ID token); sent as `Authorization`
 * @property {AbortSignal} [signal]  aborting it closes the connection (the server then stops
 *   the model)
 * @property {HeadersInit} [headers]  extra request headers (in any case: one named like
 *   ours, `content-type` say, replaces ours; the token's `Authorization` wins)
 * @property {(info: OpenInfo) => void} [onOpen]  the response headers arrived
 * @property {(text: string, info: ChunkInfo) => void} [onChunk]  one `{"chunk"}` frame
 * @property {(reply: FinalReply) => void} [onFinal]  the final `{"answer", "metadata"}` frame
 * @property {(error: ReplyError) => void} [onError]  an error frame, or an error before the stream
 * @property {typeof fetch} [fetch]  the fetch to use (default: the global one)
 * @property {number} [idleSeconds]  a stream that sends nothing for this long, not even its
 *   `: ping` (every HEARTBEAT_SECONDS, 15 by default), is taken as lost: `network_error`
 *   (default 60; 0 or Infinity never; keep it above the service's HEARTBEAT_SECONDS)
 */

const DONE = "[DONE]";

/**
 * An incremental SSE parser (WHATWG rules). Feed it decoded text in pieces of any size;
 * it calls `onEvent({data, event, id})` for each complete event.
 */
export class SseParser {
  /** @param {(event: {data: string, event: string, id: string}) => void} onEvent */
  constructor(onEvent) {
    this.onEvent = onEvent;
    // A line not ended yet, in the pieces it came in: joined once, when its end comes (the
    // final frame is one line as long as the reply: joined and scanned again with every
    // read, a 4 MB one took 2.6 s).
    /** @type {string[]} */
    this.pieces = [];
    this.skipLf = false; // the last piece ended with CR: an LF that starts the next one is its pair
    /** @type {string[]} */
    this.data = [];
    this.eventType = "";
    this.lastEventId = "";
  }

  /** @param {string} text */
  feed(text) {
    if (!text) return;
    let start = 0;
    if (this.skipLf) {
      this.skipLf = false;
      if (text[0] === "\n") start = 1;
    }
    const piece = start ? text.slice(start) : text;
    if (!/[\r\n]/.test(piece)) {
      if (piece) this.pieces.push(piece);
      return;
    }
    this.pieces.push(piece);
    const buffer = this.pieces.join("");
    this.pieces = [];
    const eol = /\r\n|\r|\n/g;
    let from = 0;
    let match;
    while ((match = eol.exec(buffer)) !== null) {
      if (match[0] === "\r" && match.index === buffer.length - 1) {
        this.skipLf = true; // its LF, if any, comes with the next piece
      }
      this.line(buffer.slice(from, match.index));
      from = eol.lastIndex;
    }
    if (from < buffer.length) this.pieces.push(buffer.slice(from));
  }

  /** The stream ended: an event without its blank line is dropped, as the standard says. */
  end() {
    this.pieces = [];
    this.data = [];
    this.eventType = "";
  }

  /** @param {string} line */
  line(line) {
    if (line === "") {
      this.dispatch();
      return;
    }
    if (line[0] === ":") return; // a comment: `: ping`
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.eventType = value;
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
    // `retry` and unknown fields are ignored: this client never reconnects.
  }

  dispatch() {
    const data = this.data;
    const event = this.eventType || "message";
    this.data = [];
    this.eventType = "";
    if (data.length === 0) return;
    this.onEvent({data: data.join("\n"), event, id: this.lastEventId});
  }
}

/**
 * POST one request and stream its reply into the callbacks.
 *
 * @param {StreamOptions} options
 * @returns {Promise<StreamResult>} resolves when the stream ended (after the terminal frame,
 *   an error, or an abort); rejects only when a callback throws
 */
export async function streamReply(options) {
  const {url, body, token, signal, onOpen, onChunk, onFinal, onError} = options;
  const fetchImpl = options.fetch ?? globalThis.fetch;
  /** @type {StreamResult} */
  const result = {outcome: "error", status: 0, traceId: null, text: ""};
  /** @type {number | null} */
  let retryAfter = null; // seconds, from the response's Retry-After
  /** @param {Partial<ReplyError> & {error: string, code: string}} fields */
  const fail = (fields) => {
    result.outcome = "error";
    onError?.({partial: result.text, metadata: null, status: result.status,
      traceId: result.traceId, retryAfter, body: null, ...fields});
    return result;
  };
  const aborted = () => {
    result.outcome = "aborted";
    return result;
  };

  if (signal?.aborted) return aborted(); // aborted before the call: nothing is sent

  // Header names are case-insensitive: a caller's "content-type" replaces ours (merged
  // as object keys, both went, and the service saw "application/json, text/plain").
  const headers = new Headers({"Content-Type": "application/json", Accept: "text/event-stream"});
  try {
    for (const [name, value] of new Headers(options.headers ?? {})) headers.set(name, value);
    if (token) headers.set("Authorization", `Bearer ${token}`);
  } catch { // a value no request can carry (a line break in a token, say); the
    // browser's message quotes the value, a token perhaps: not in a message to show
    return fail({error: "the request cannot be sent: a header name or value is not valid in HTTP",
      code: "bad_request"});
  }

  // The trace id the reply is saved under, known before any answer: a retry that sends it
  // again as `trace_id` saves nothing twice, also after a failure that came before any
  // answer said which id the service used (no response, an abort). The body's, else the
  // caller's trace header's, else one made here and sent as a `traceparent` header (not
  // sampled): in the body it would override every trace header, the caller's and the one
  // Cloud Run's front end adds for its own request log when the request has none.
  let payload;
  try {
    payload = JSON.stringify(body);
  } catch (exc) { // a BigInt or a cycle in the body: nothing was sent, no trace id either
    return fail({error: `the body cannot be sent as JSON (${describe(exc)})`, code: "bad_request"});
  }
  // A body's own trace id stays the request's: a refusal that came before the service read
  // the body (a 401, a 413) answers with an id of its own, and a retry sent with that one
  // would save the question and reply a second time, beside what the first try saved.
  // One the service would refuse ("", a blank in it) is no id to retry with: the 400 that
  // answers it says which the service used.
  // Read from what is sent, not the object: a toJSON() (the body's, its id's) may give an
  // id the object lacks, and a getter on its prototype one that is never sent.
  const sent = typeof payload === "string" ? JSON.parse(payload) : undefined;
  const ownTraceId = isObject(sent) && typeof sent.trace_id === "string"
    && /^[A-Za-z0-9_.:-]{1,128}$/.test(sent.trace_id) ? sent.trace_id : null;
  result.traceId = ownTraceId ?? traceIdOfHeaders(headers);
  if (result.traceId === null) { // a caller's traceparent the service would not take goes too
    result.traceId = randomHex(16);
    headers.set("traceparent", `00-${result.traceId}-${randomHex(8)}-00`);
  }

  // The connection's own watchdog: a service that froze, or a path that dropped without
  // a reset, sends nothing more, not even the `: ping` it sends every HEARTBEAT_SECONDS
  // (15 by default), and a read would wait for ever.
  // A JSON reply says nothing until it ends: before the response's head, the clock runs
  // only for a request the service answers with a stream (read as it reads it: a JSON
  // reply taken for a stream was cut as lost); after it, for a stream whatever was asked.
  const idleLimitMs = (options.idleSeconds ?? 60) * 1000;
  let idleMs = streamAsked(url, headers.get("Accept") ?? "") ? idleLimitMs : 0;
  const connection = new AbortController();
  const onCallerAbort = () => connection.abort(signal?.reason);
  signal?.addEventListener("abort", onCallerAbort, {once: true});
  let stalled = false;
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  const idleClock = () => {
    clearTimeout(timer);
    // setTimeout takes at most 2**31 - 1 ms (past it, it fires at once): longer is never.
    if (idleMs > 0 && idleMs <= 2 ** 31 - 1) {
      timer = setTimeout(() => {
        stalled = true;
        connection.abort();
      }, idleMs);
    }
  };
  const stalledError = () => fail({
    error: `nothing from the service for ${idleMs / 1000} s: the connection is taken as lost`,
    code: "network_error",
  });

  const receive = async () => {
    let response;
    try {
      idleClock();
      response = await fetchImpl(url, {
        method: "POST",
        headers,
        body: payload,
        signal: connection.signal,
        cache: "no-store",
      });
    } catch (exc) {
      if (stalled) return stalledError();
      if (signal?.aborted) return aborted();
      return fail({error: `no response from the service (${describe(exc)})`, code: "network_error"});
    }
    result.status = response.status;
    if (ownTraceId === null) result.traceId = response.headers.get("X-Trace-Id") ?? result.traceId;
    retryAfter = secondsToWait(response.headers.get("Retry-After"));
    try {
      onOpen?.({status: response.status, traceId: result.traceId, headers: response.headers});
    } catch (exc) {
      await response.body?.cancel().catch(() => {}); // a callback threw: close the connection
      throw exc;
    }

    const type = response.headers.get("Content-Type") ?? "";
    if (!response.ok || !type.startsWith("text/event-stream")) {
      clearTimeout(timer); // an error's body, or a JSON reply's, comes whole
      return readJsonReply(response, result, ownTraceId === null, signal, onFinal, fail, aborted);
    }

    idleMs = idleLimitMs;
    if (response.body === null) { // no body at all: a stream that ended before it began
      return fail({error: "the stream ended before the reply was complete", code: "stream_ended"});
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder("utf-8");
    let finished = false; // [DONE] seen
    let terminal = false; // a final or error frame seen
    /** @type {Record<string, (frame: Record<string, any>) => void>} */
    const handlers = {
      chunk: (frame) => {
        result.text += frame.chunk;
        onChunk?.(frame.chunk, {traceId: result.traceId});
      },
      answer: (frame) => {
        terminal = true;
        result.outcome = "final";
        onFinal?.({answer: frame.answer, metadata: frame.metadata ?? {}, traceId: result.traceId});
      },
      error: (frame) => {
        terminal = true;
        fail({error: String(frame.error), code: String(frame.code ?? "error"),
          partial: frame.partial ?? result.text, metadata: frame.metadata ?? null});
      },
    };
    const parser = new SseParser(({data}) => {
      if (finished) return;
      if (data === DONE) {
        finished = true;
        return;
      }
      // Nothing after the terminal frame, nor once the caller aborted (from a callback,
      // say, with more frames of the same read still to go).
      if (terminal || signal?.aborted) return;
      let frame;
      try {
        frame = JSON.parse(data);
      } catch {
        frame = undefined;
      }
      if (typeof frame !== "object" || frame === null || Array.isArray(frame)) {
        terminal = finished = true;
        fail({error: "the service sent a frame that is not a JSON object", code: "bad_frame"});
        return;
      }
      const kind = ["chunk", "answer", "error"].find((key) => key in frame);
      if (kind) handlers[kind](frame);
    });

    while (!finished) {
      let read;
      try {
        idleClock();
        read = await reader.read();
      } catch (exc) {
        if (terminal) return result; // the reply was complete: an abort now changes nothing
        if (stalled) return stalledError();
        if (signal?.aborted) return aborted();
        return fail({error: `the connection broke (${describe(exc)})`, code: "network_error"});
      }
      try {
        if (read.done) {
          parser.feed(decoder.decode());
          parser.end();
          break;
        }
        parser.feed(decoder.decode(read.value, {stream: true}));
      } catch (exc) {
        await reader.cancel().catch(() => {}); // a callback threw: close the connection
        throw exc;
      }
      if (signal?.aborted && !terminal) { // aborted in a callback: fetch may not see it
        await reader.cancel().catch(() => {});
        return aborted();
      }
    }
    if (finished) await reader.cancel().catch(() => {}); // close the connection now
    if (!terminal) {
      return fail({error: "the stream ended before the reply was complete", code: "stream_ended"});
    }
    return result;
  };
  try {
    return await receive();
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener("abort", onCallerAbort);
  }
}

/**
 * A non-stream response: an error before the stream, or a JSON caller's whole reply.
 * @param {Response} response
 * @param {StreamResult} result
 * @param {boolean} idFromAnswer  the trace id is the answer's (none was sent)
 * @param {AbortSignal | undefined} signal
 * @param {((reply: FinalReply) => void) | undefined} onFinal
 * @param {(fields: Partial<ReplyError> & {error: string, code: string}) => StreamResult} fail
 * @param {() => StreamResult} aborted
 * @returns {Promise<StreamResult>}
 */
async function readJsonReply(response, result, idFromAnswer, signal, onFinal, fail, aborted) {
  let text;
  try {
    text = await response.text();
  } catch (exc) {
    if (signal?.aborted) return aborted();
    return fail({error: `the connection broke (${describe(exc)})`, code: "network_error"});
  }
  let payload = null;
  try {
    payload = JSON.parse(text);
  } catch {
    // Not JSON: an error status from something in front of the service, below.
  }
  if (response.ok && payload && typeof payload.answer === "string") {
    result.outcome = "final";
    result.text = payload.answer;
    onFinal?.({answer: payload.answer, metadata: payload.metadata ?? {},
      traceId: result.traceId});
    return result;
  }
  if (payload && typeof payload.error === "string") {
    if (idFromAnswer && typeof payload.trace_id === "string") result.traceId = payload.trace_id;
    // A JSON reply that failed after text came says what came (`partial`, saved incomplete).
    const partial = typeof payload.partial === "string" ? payload.partial : "";
    return fail({error: payload.error, code: String(payload.code ?? "http_error"), partial,
      body: payload});
  }
  return fail({error: `the service answered HTTP ${response.status}`, code: "http_error"});
}

/**
 * Whether the service answers this request with a stream, read as it reads it: its `/sse`
 * route always does (`/vac/assistant/<id>/sse`, in the URL's path: an assistant called
 * `sse`, or `/sse` in a query, is the other route); the other when `Accept` names
 * `text/event-stream` itself (any case) with a weight above 0 that RFC 9110 allows
 * (`q=0` refuses it, `q=2` is no weight), commas and semicolons inside quotes not
 * splitting it.
 * @param {string | URL} url
 * @param {string} accept
 */
function streamAsked(url, accept) {
  let path;
  try {
    const {pathname} = new URL(String(url), "http://relative.invalid");
    path = decodeURIComponent(pathname.replace(/%2f/gi, "%252F")); // an escaped / is the id's
  } catch {
    path = "";
  }
  if (/\/vac\/assistant\/[^/]+\/sse$/.test(path)) return true; // behind a prefix too
  return outsideQuotes(",", accept).some((entry) => {
    const semicolon = entry.indexOf(";"); // no quote in a media type
    const type = semicolon < 0 ? entry : entry.slice(0, semicolon);
    if (httpTrimmed(type).toLowerCase() !== "text/event-stream") return false;
    const parameters = semicolon < 0 ? [] : outsideQuotes(";", entry.slice(semicolon + 1));
    const weights = parameters
      .map((parameter) => { // split at its first "=" only: `q=0.5=3` is no weight
        const at = parameter.indexOf("=");
        return at < 0 ? [parameter, ""] : [parameter.slice(0, at), parameter.slice(at + 1)];
      })
      .filter(([name]) => httpTrimmed(name).toLowerCase() === "q")
      .map(([, value]) => httpTrimmed(value));
    return weights.length === 0 || (QVALUE.test(weights[0]) && Number(weights[0]) > 0);
  });
}

const QVALUE = /^(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)$/; // RFC 9110's weight

/**
 * `text` without HTTP's whitespace (spaces and tabs) at its ends, as the service trims
 * it (`trim()` takes more, and the service less: they read one header two ways).
 * @param {string} text
 */
function httpTrimmed(text) {
  return text.replace(/^[ \t]+|[ \t]+$/g, "");
}

/**
 * `text`'s parts between each `separator` outside a quoted string (with its backslash
 * escapes; one left open runs to the end), empty ones left out.
 * @param {"," | ";"} separator
 * @param {string} text
 */
function outsideQuotes(separator, text) {
  const part = new RegExp(`(?:[^${separator}"]|"(?:[^"\\\\]|\\\\.)*"?)+`, "g");
  return text.match(part) ?? [];
}

/** @param {unknown} exc */
function describe(exc) {
  return exc instanceof Error ? exc.message : String(exc);
}

/** @param {unknown} value */
function isObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * `bytes` random bytes as hex digits (16: a trace id, as the service makes its own).
 * @param {number} bytes
 */
function randomHex(bytes) {
  const values = globalThis.crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(values, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

/**
 * Retry-After in seconds: the service sends seconds; a proxy in front may send an HTTP
 * date (RFC 9110), read as the seconds until then (at least 0).
 * @param {string|null} value
 * @returns {number|null}
 */
function secondsToWait(value) {
  const text = (value ?? "").trim();
  if (/^\d+$/.test(text)) return Number.parseInt(text, 10);
  const date = /[a-z]/i.test(text) ? Date.parse(text) : Number.NaN;
  return Number.isFinite(date) ? Math.max(0, Math.ceil((date - Date.now()) / 1000)) : null;
}

/**
 * The trace id a caller's `traceparent` or `X-Cloud-Trace-Context` header carries, by the
 * service's own rules (assistant/tracing.py: a version other than ff, no all-zero ids, a
 * 00 header of exactly 55 characters), else null.
 * @param {Headers} headers
 */
function traceIdOfHeaders(headers) {
  const blanks = /^[ \t]+|[ \t]+$/g; // HTTP's own, as the service strips them
  const value = (headers.get("traceparent") ?? "").replace(blanks, "");
  const parent = /^(?!ff)([0-9a-f]{2})-([0-9a-f]{32})-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}/.exec(value);
  const whole = parent && (value.length === 55 || (parent[1] !== "00" && value[55] === "-"));
  if (whole && !/^0+$/.test(parent[2])) return parent[2];
  const cloud = /^([0-9a-fA-F]{32})(?:[/;].*)?$/
    .exec((headers.get("X-Cloud-Trace-Context") ?? "").replace(blanks, ""));
  return cloud && !/^0+$/.test(cloud[1]) ? cloud[1].toLowerCase() : null;
}
