// @microsoft/fetch-event-source, used as docs/API.md ("Writing a client") says it must be.
import { createRequire } from "node:module";
import { Reading, checkOpen, request } from "./reading.mjs";

// Outside a browser it reaches for `window` (fetch, timers) and `document` (visibility; it
// calls document.removeEventListener on every dispose, even with openWhenHidden).
globalThis.window = globalThis;
globalThis.document = { hidden: false, addEventListener() {}, removeEventListener() {} };
const { fetchEventSource } = createRequire(import.meta.url)("@microsoft/fetch-event-source");

const { url, body } = request();
const reading = new Reading({ showsComments: true });
const controller = new AbortController();
await fetchEventSource(url, {
  method: "POST",
  headers: { "Content-Type": "application/json" },
  body,
  signal: controller.signal,
  openWhenHidden: true, // else it aborts and re-sends the POST when the page is hidden
  onopen: checkOpen, // its default throws on a JSON error, which onerror would retry
  onmessage(event) {
    if (!event.data) {
      reading.comment(); // it hands each `: ping` comment over as an empty message
      return;
    }
    reading.data(event.data);
    if (reading.done) controller.abort(); // close on [DONE]
  },
  onerror(error) {
    throw error; // returning would retry: a new POST, a new reply
  },
});
reading.print();
