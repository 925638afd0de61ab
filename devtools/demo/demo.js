// The demo page: one reply at a time through the reference client (vac-stream.js).
// Chunks go to the reply as they arrive; text inside <thinking>/<think> tags goes to the
// thinking panel, replaced at the end by metadata.thinking_content (the authoritative one).
// `window.vacDemo.events` records what arrived and when (performance.now() ms), for the tests.
import {ThinkingSplitter} from "./thinking.js";
import {streamReply} from "./vac-stream.js";

const DEFAULT_URL = "http://127.0.0.1:1956/vac/assistant/demo/sse";
const $ = (id) => document.getElementById(id);
const ui = {
  url: $("url"), token: $("token"), input: $("input"), send: $("send"), stop: $("stop"),
  status: $("status"), trace: $("trace"), panel: $("thinking-panel"), thinking: $("thinking"),
  answer: $("answer"), calls: $("calls"), error: $("error"), metadata: $("metadata"),
};
const demo = {events: [], result: null, running: false};
window.vacDemo = demo;

ui.url.value = new URLSearchParams(location.search).get("service") || DEFAULT_URL;

let controller = null;

function record(type, detail = {}) {
  demo.events.push({type, at: performance.now(), ...detail});
}

function show(splitPart) {
  if (splitPart.contentWasThinking) ui.answer.textContent = ""; // a reply that began thinking
  ui.answer.textContent += splitPart.content;
  if (splitPart.thinking) {
    ui.thinking.textContent += splitPart.thinking;
    ui.panel.open = true;
  }
}

// A reply may be tool calls alone, for the frontend to run: shown, not only in the metadata.
function showCalls(metadata) {
  const calls = metadata.tools_to_use ?? [];
  ui.calls.hidden = calls.length === 0;
  ui.calls.textContent = calls.map((call) =>
    `tool call ${call.id}: ${call.name}(${call.args === null ? "unreadable arguments" : JSON.stringify(call.args)})`
  ).join("\n");
}

function setRunning(running, status) {
  demo.running = running;
  ui.send.disabled = running;
  ui.stop.disabled = !running;
  ui.status.textContent = status;
}

async function send() {
  for (const el of [ui.answer, ui.calls, ui.thinking, ui.error, ui.metadata]) el.textContent = "";
  ui.error.hidden = true;
  ui.calls.hidden = true;
  ui.trace.textContent = "–";
  demo.events = [];
  demo.result = null;
  controller = new AbortController();
  const splitter = new ThinkingSplitter();
  setRunning(true, "waiting");
  record("send");
  try {
    demo.result = await streamReply({
      url: ui.url.value.trim(),
      body: {user_input: ui.input.value},
      token: ui.token.value.trim() || undefined,
      signal: controller.signal,
      onOpen: ({status, traceId, headers}) => {
        // The header apart: traceId falls back to the id the client sent when it is unreadable.
        record("open", {status, traceId, header: headers.get("X-Trace-Id")});
        ui.trace.textContent = traceId ?? "(not readable)";
        if (status === 200) ui.status.textContent = "streaming";
      },
      onChunk: (text, {traceId}) => {
        record("chunk", {text, traceId});
        show(splitter.feed(text));
      },
      onFinal: ({answer, metadata, traceId}) => {
        record("final", {answer, traceId});
        show(splitter.finish());
        if (metadata.thinking_content) ui.thinking.textContent = metadata.thinking_content;
        showCalls(metadata);
        ui.metadata.textContent = JSON.stringify(metadata, null, 2);
      },
      onError: ({error, code, partial, metadata, status, traceId, retryAfter}) => {
        record("error", {error, code, partial, status, traceId, retryAfter});
        show(splitter.finish());
        ui.error.hidden = false;
        // The text before the failure is already in the reply above (thinking apart).
        const sentence = /[.!?]$/.test(error) ? error : `${error}.`;
        ui.error.textContent = `${code}${status && status !== 200 ? ` (HTTP ${status})` : ""}: ${sentence}` +
          (retryAfter != null ? ` Try again in ${retryAfter} s.` : "") +
          (partial ? "\n(The reply above stops where it failed.)" : "");
        if (traceId) ui.trace.textContent = traceId;
        if (metadata) {
          showCalls(metadata);
          ui.metadata.textContent = JSON.stringify(metadata, null, 2);
        }
      },
    });
    record("end", {outcome: demo.result.outcome});
    if (demo.result.outcome === "aborted") {
      show(splitter.finish()); // what the splitter held back (a "<" that began no tag)
      if (demo.result.traceId) ui.trace.textContent = demo.result.traceId; // a retry's id
    }
    setRunning(false, {final: "done", error: "failed", aborted: "stopped"}[demo.result.outcome]);
  } catch (exc) {
    record("end", {outcome: "exception", error: String(exc)});
    setRunning(false, `failed: ${exc}`);
  }
}

ui.send.addEventListener("click", send);
ui.stop.addEventListener("click", () => controller?.abort());
ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && !demo.running) send();
});
