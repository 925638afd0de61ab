"""Cloud Run function entry point: hands every request to the assistant package."""

from typing import Any

import flask
import functions_framework

from assistant import server
from assistant.http import handle

server.install()  # our gunicorn worker and limits; functions-framework starts the server next


@functions_framework.http
def assistant(request: flask.Request) -> flask.Response:
    return handle(request)


def _routing_refused(error: Exception) -> Any:
    """Ours answers what werkzeug's routing refused (an HTML 400: a WebSocket upgrade, a
    Host no IDNA takes); any other 400 stays Flask's."""
    return handle(flask.request) if flask.request.routing_exception is error else error


# functions-framework loads this module inside its app's context, and answers
# /robots.txt and /favicon.ico itself with an HTML 404, as Flask does a path its
# routing cannot take (a decoded %0A in an assistant id): ours answers them all.
if flask.has_app_context():
    flask.current_app.register_error_handler(404, lambda _error: handle(flask.request))
    flask.current_app.register_error_handler(400, _routing_refused)
