// eventsource-parser over Node's fetch: the way its README reads a POSTed stream.
import { createParser } from "eventsource-parser";
import { Reading, checkOpen, request } from "./reading.mjs";

const { url, body } = request();
const reading = new Reading({ showsComments: true });
const response = await fetch(url, {
  method: "POST",
  headers: { "Content-Type": "application/json" },
  body,
});
await checkOpen(response);
const parser = createParser({
  onEvent: (event) => reading.data(event.data),
  onComment: () => reading.comment(),
});
const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
while (!reading.done) {
  const { value, done } = await reader.read();
  if (done) break;
  parser.feed(value);
}
await reader.cancel(); // close on [DONE]
reading.print();
