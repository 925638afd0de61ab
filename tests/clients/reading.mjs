// What one of these scripts saw of one reply, printed as one JSON line: the record
// tests/test_real_clients.py checks for every client (its `Reading` has the same fields).

export class Reading {
  frames = []; // every data payload but [DONE], parsed
  done = false; // `data: [DONE]` arrived
  pings = null; // comments before the first frame; null if the client never shows comments
  errors = []; // payloads that were not JSON, and anything after [DONE]

  constructor({ showsComments }) {
    if (showsComments) this.pings = 0;
  }

  data(text) {
    if (this.done) {
      this.errors.push(`data after [DONE]: ${JSON.stringify(text)}`);
    } else if (text === "[DONE]") {
      this.done = true;
    } else {
      try {
        this.frames.push(JSON.parse(text));
      } catch (error) {
        this.errors.push(`${error.message}: ${JSON.stringify(text)}`);
      }
    }
  }

  comment() {
    if (this.frames.length === 0) this.pings += 1;
  }

  print() {
    process.stdout.write(`${JSON.stringify(this)}\n`);
  }
}

// argv: the stream's URL, the user's input, then flags.
export function request() {
  const [url, input, ...flags] = process.argv.slice(2);
  return { url, body: JSON.stringify({ user_input: input }), flags };
}

// A non-200 answer (or one that is not a stream) is a JSON error body.
export async function checkOpen(response) {
  const type = response.headers.get("Content-Type") ?? "";
  if (response.status !== 200 || !type.startsWith("text/event-stream")) {
    throw new Error(`HTTP ${response.status} ${type}: ${await response.text()}`);
  }
}
