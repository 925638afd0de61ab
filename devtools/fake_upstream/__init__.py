"""A scriptable fake LLM provider (Anthropic, OpenAI, Gemini, Ollama streams) for tests.

`FakeUpstream` is a real HTTP/1.1 server on 127.0.0.1 that answers each provider's native
streaming endpoint, driven by `Script` objects queued with `push()` (FIFO; the `default` script
is used when the queue is empty). One script queue serves every format: the request path picks
the wire format, the script says what to stream. A separate process can script it over HTTP:
``POST /_fake/scripts`` (JSON list of script dicts), ``GET /_fake/requests``,
``GET /_fake/health``. ``python -m devtools.fake_upstream`` runs it in the foreground.

Modules, one responsibility each:

* ``script.py``: the `Script` model - its fields, their validation, and how a script plays out
  (timing, failures, counts, precedence) in every format.
* ``base.py``: the `Format` interface (request checks, error bodies, the frames of one reply)
  and the SSE / JSON framing helpers.
* One `Format` subclass per wire format, each module describing its stream; the loop that
  drives a script is shared (in ``server.py``):

  * ``anthropic.py``: Anthropic Messages, ``POST /v1/messages``.
  * ``openai.py``: OpenAI Chat Completions, ``POST /v1/chat/completions``.
  * ``gemini.py``: Gemini, ``POST /v1beta/models/{model}:streamGenerateContent?alt=sse``.
  * ``ollama.py``: Ollama, ``POST /api/chat`` (NDJSON).

* ``server.py``: `FakeUpstream`, the HTTP handler and the ``/_fake/`` control API.
* ``__main__.py``: the command line (``--host``, ``--port``, ``--ttft``, ``--interval``,
  ``--thinking``, ``--echo`` make the default script).

Deliberate choice: stdlib only (`ThreadingHTTPServer`, daemon threads): no extra dependency for
dev tooling. The others are told where they are made (``script.py``, ``server.py``).
"""

from .anthropic import Anthropic
from .base import Format
from .gemini import Gemini
from .ollama import Ollama
from .openai import OpenAI
from .script import FAIL_MODES, FAILS, Script
from .server import FORMATS, FakeUpstream, RecordedRequest

__all__ = [
    "FAILS",
    "FAIL_MODES",
    "FORMATS",
    "Anthropic",
    "FakeUpstream",
    "Format",
    "Gemini",
    "Ollama",
    "OpenAI",
    "RecordedRequest",
    "Script",
]
