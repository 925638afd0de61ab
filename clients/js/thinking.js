// thinking.js: split streamed chunks into visible text and thinking, for display as they arrive.
//
// The same rules as the service's own splitter (assistant/thinking.py): `<thinking>…</thinking>`
// and `<think>…</think>`, exact and lowercase; only the matching close tag ends a block; tags may
// be split across chunks anywhere (only the shortest tail that could still become a tag is held
// back); outside a block, other `<…>` text is ordinary text, and so is an open tag right after a
// backtick (a tag shown as code: "wrap it in `<think>` tags"), and a zero-width space right before
// an open tag read as one goes with it (the service puts one before its own tag after a backtick,
// or after such a space of the model's: it is no text of the model's); a block's thinking is set apart from an earlier block's by a blank
// line, as the service joins them. It shows thinking live; the final
// frame's `metadata.thinking_content` is the authoritative thinking (blocks stripped and joined).
//
// A reply may begin inside its thinking (DeepSeek-R1's and Qwen3's chat templates put `<think>`
// in the prompt, and a server with no reasoning parser sends the rest): a close tag at the start of
// a line, before any tag was read, ends a block that began with the reply. The text shown as
// content until then was that thinking: `feed` then says `contentWasThinking: true`, and its
// `thinking` holds all of it; clear the content shown so far.
//
//   const splitter = new ThinkingSplitter();
//   onChunk: (text) => { const {content, thinking, contentWasThinking} = splitter.feed(text); ... }
//   onFinal: () => { const {content, thinking} = splitter.finish(); ... }
//
// `new ThinkingSplitter({json: true})`, for a request with a `responseSchema`: a tag inside a JSON
// string (between its quotes, outside any block) is the JSON's text, as the service reads an
// answer that is JSON (a quote after an odd run of backslashes is escaped, inside a string or not).

/** @type {Record<string, string>} an open tag, its close */
const TAGS = {"<thinking>": "</thinking>", "<think>": "</think>"};
const CLOSES = Object.values(TAGS);
// The service's mark before its own open tag after a backtick (or a mark): dropped with the tag.
const MARK = "\u200b";
/** What a chunk's end may hold back, outside a block: an open tag begun, with its mark or not. */
const OPEN_TAILS = [...Object.keys(TAGS), ...Object.keys(TAGS).map((tag) => MARK + tag)];
// Blank as the service strips a block (ASCII whitespace only: a block of U+00A0 is thinking).
const ASCII_BLANK = /^[ \t\n\r\v\f]*$/;

/**
 * The length of the longest tail of `text` that is a proper prefix of one of `tags`.
 * @param {string} text
 * @param {string[]} tags
 * @returns {number}
 */
function heldBack(text, tags) {
  let longest = 0;
  for (const tag of tags) {
    for (let n = Math.min(tag.length - 1, text.length); n > longest; n--) {
      if (text.endsWith(tag.slice(0, n))) {
        longest = n;
        break;
      }
    }
  }
  return longest;
}

export class ThinkingSplitter {
  /** @param {{json?: boolean}} [options]  json: tags inside JSON strings are text */
  constructor({json = false} = {}) {
    this.json = json;
    /** inside a JSON string, in the text outside blocks (json mode) */
    this.inString = false;
    /** the text outside blocks ends in an odd run of backslashes (json mode) */
    this.escaped = false;
    /** @type {string|null} the close tag of the block we are in */
    this.close = null;
    this.pending = "";
    /** the last character read before `pending` (or before the next chunk) */
    this.before = "";
    /** an earlier block showed thinking that was not blank */
    this.shown = false;
    /** the blank line that sets this block apart is still to come */
    this.gapDue = false;
    /** a tag was read: a close tag outside a block is text from now on */
    this.tagged = false;
    /** the content given out before any tag was read (it may turn out to be thinking) */
    this.shownSoFar = "";
  }

  /**
   * Whether `at` in `rest` is the start of a line (the reply's first too).
   * @param {string} rest
   * @param {number} at
   */
  atLineStart(rest, at) {
    return at > 0 ? rest[at - 1] === "\n" : this.before === "\n" || this.before === "";
  }

  /**
   * Where, from `pos` on, the first close tag at the start of a line is (-1 if none), and which.
   * @param {string} rest
   * @param {number} pos
   * @returns {[number, string]}
   */
  closeAtLineStart(rest, pos) {
    let best = -1;
    let tag = "";
    for (const candidate of CLOSES) {
      for (let at = rest.indexOf(candidate, pos); at >= 0; at = rest.indexOf(candidate, at + 1)) {
        if (this.atLineStart(rest, at)) {
          if (best < 0 || at < best) [best, tag] = [at, candidate];
          break;
        }
      }
    }
    return [best, tag];
  }

  /** True while inside a thinking block. */
  get thinking() {
    return this.close !== null;
  }

  /**
   * @param {string} text  one chunk
   * @returns {{content: string, thinking: string}}  what this chunk adds to each
   */
  feed(text) {
    /** @type {{content: string, thinking: string, contentWasThinking?: boolean}} */
    const out = {content: "", thinking: ""};
    const rest = this.pending + text;
    this.pending = "";
    // Read by position, never by cutting `rest` anew at each tag: a chunk of many short blocks
    // would copy its tail once per tag. Where each open tag (and, until a tag is read, a close
    // tag at a line's start) is next found is remembered for the same reason: a tag not found
    // from one position on is not found from any later one (1 MB of code tags took a minute).
    /** @type {Record<string, number>} */
    const next = {};
    /** @type {(tag: string, from: number) => number} */
    const openAt = (tag, from) => {
      if (next[tag] === undefined || (next[tag] >= 0 && next[tag] < from)) {
        next[tag] = rest.indexOf(tag, from);
      }
      return next[tag];
    };
    /** @type {[number, string] | null} the first close tag at a line's start, as last found */
    let closing = null;
    /** @type {(from: number) => [number, string]} */
    const closeAt = (from) => {
      if (closing === null || (closing[0] >= 0 && closing[0] < from)) {
        closing = this.closeAtLineStart(rest, from);
      }
      return closing;
    };
    let pos = 0;
    for (;;) {
      if (this.close === null) {
        let at = -1;
        let tag = "";
        for (const candidate of Object.keys(TAGS)) {
          const found = openAt(candidate, pos);
          if (found >= 0 && (at < 0 || found < at)) [at, tag] = [found, candidate];
        }
        const marked = at > pos && rest[at - 1] === MARK;
        const asCode = at >= 0 && !marked && (at > 0 ? rest[at - 1] : this.before) === "`";
        if (!this.tagged) {
          const [ends, closeTag] = closeAt(pos);
          if (ends >= 0 && (at < 0 || ends < at)) {
            // The reply began inside its thinking: all shown so far, and up to here, was it.
            this.think(out, this.shownSoFar + out.content + rest.slice(pos, ends));
            out.content = "";
            out.contentWasThinking = true;
            this.shownSoFar = "";
            [this.tagged, this.inString, this.escaped] = [true, false, false];
            pos = ends + closeTag.length;
            continue;
          }
          this.tagged = at >= 0 && !asCode; // a tag read, or one in a JSON string's text
        }
        if (at >= 0 && ((this.json && this.quoted(rest, pos, at)) || asCode)) {
          out.content += rest.slice(pos, at + tag.length); // the JSON string's own text, or code
          pos = at + tag.length;
          this.escaped = false; // the tag ends in ">"
          continue;
        }
        if (at >= 0) {
          out.content += rest.slice(pos, marked ? at - 1 : at);
          this.close = TAGS[tag];
          this.escaped = false; // a block's text is not read for quotes
          this.gapDue = this.shown;
          pos = at + tag.length;
          continue;
        }
        let hold = heldBack(rest, OPEN_TAILS);
        // Until a tag is read, a close tag begun at a line's start is held back too.
        const begun = this.tagged ? 0 : heldBack(rest, CLOSES);
        const from = rest.length - begun;
        if (begun > hold && from >= pos && this.atLineStart(rest, from)) hold = begun;
        if (this.json) this.quoted(rest, pos, Math.max(pos, rest.length - hold));
        out.content += rest.slice(pos, Math.max(pos, rest.length - hold));
        this.holdFrom(rest, Math.max(pos, rest.length - hold));
        if (!this.tagged) this.shownSoFar += out.content;
        return out;
      }
      const at = rest.indexOf(this.close, pos);
      if (at >= 0) {
        this.think(out, rest.slice(pos, at));
        pos = at + this.close.length;
        this.close = null;
        continue;
      }
      const hold = heldBack(rest, [this.close]);
      this.think(out, rest.slice(pos, Math.max(pos, rest.length - hold)));
      this.holdFrom(rest, Math.max(pos, rest.length - hold));
      return out;
    }
  }

  /** Keeps `rest` from `at` on for the next chunk, and the character read before it.
   * @param {string} rest
   * @param {number} at
   */
  holdFrom(rest, at) {
    this.pending = rest.slice(at);
    if (at > 0) this.before = rest[at - 1];
  }

  /** Reads the quotes of `text` from `from` to `to` (text outside blocks, each part once):
   * whether `to` is inside a JSON string. A block's tags hold no quote or backslash.
   * @param {string} text
   * @param {number} from
   * @param {number} to
   * @returns {boolean}
   */
  quoted(text, from, to) {
    for (let i = from; i < to; i++) {
      const c = text.charCodeAt(i);
      if (c === 92) {
        this.escaped = !this.escaped; // a backslash
        continue;
      }
      if (c === 34 && !this.escaped) this.inString = !this.inString; // a quote
      this.escaped = false;
    }
    return this.inString;
  }

  /**
   * Adds `text` to `out.thinking`, after the blank line due before a later block's first words.
   * @param {{content: string, thinking: string}} out
   * @param {string} text
   */
  think(out, text) {
    if (ASCII_BLANK.test(text)) {
      out.thinking += text;
      return;
    }
    if (this.gapDue) out.thinking += "\n\n";
    this.gapDue = false;
    this.shown = true;
    out.thinking += text;
  }

  /** The stream ended: a held-back partial tag is literal text of the section it was in. */
  finish() {
    const out = {content: "", thinking: ""};
    if (this.close === null) out.content = this.pending;
    else this.think(out, this.pending);
    this.pending = "";
    return out;
  }
}
