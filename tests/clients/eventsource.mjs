// The `eventsource` package (a WHATWG EventSource for Node), made to POST through its `fetch`
// option. It never shows comments. It reconnects when a stream ends, re-sending the POST, unless
// closed: this script closes on [DONE], or with --no-close does not and prints a line per
// [DONE] (tests/test_real_clients.py shows the re-POST, then ends the process).
import { EventSource } from "eventsource";
import { Reading, request } from "./reading.mjs";

const { url, body, flags } = request();
const keepOpen = flags.includes("--no-close");
let reading = new Reading({ showsComments: false });
const source = new EventSource(url, {
  // Not a checking fetch: a throw here is a network error to it, and it reconnects. It fails
  // the connection itself on a status other than 200 or a type other than text/event-stream.
  fetch: (input, init) =>
    fetch(input, {
      ...init,
      method: "POST",
      headers: { ...init.headers, "Content-Type": "application/json" },
      body,
    }),
});
source.onmessage = (event) => {
  reading.data(event.data);
  if (!reading.done) return;
  reading.print();
  if (keepOpen) reading = new Reading({ showsComments: false });
  else source.close();
};
source.onerror = (event) => {
  if (source.readyState === EventSource.CLOSED) {
    process.stderr.write(`eventsource: ${event.message ?? "failed"}\n`);
    process.exit(1);
  }
};
