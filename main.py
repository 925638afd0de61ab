"""Cloud Run function entry point: hands every request to the assistant package."""

import flask
import functions_framework

from assistant import server
from assistant.http import handle

server.install()  # our gunicorn worker and limits; functions-framework starts the server next


@functions_framework.http
def assistant(request: flask.Request) -> flask.Response:
    return handle(request)
