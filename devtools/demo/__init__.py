"""The one-page demo of the reference client (clients/js/), and the static server for it.

``python -m devtools.demo --port 1958`` serves the page on its own port (``scripts/dev.sh``
starts it beside the service); it is never served by the function. The page talks to the
service cross-origin, as a real frontend does, so the service's CORS settings apply.

* ``index.html`` and ``demo.js``: the page (service URL, optional ID token, Send / Stop, the
  chunks as they arrive, a thinking panel, the error, the final metadata). ``?service=<url>``
  fills in the service URL.
* ``server.py``: `DemoServer`, a stdlib HTTP server that answers a fixed set of files.
"""

from .server import DemoServer

__all__ = ["DemoServer"]
