"""Cloud Run function entry point: hands every request to the assistant package."""

import flask
import functions_framework

from assistant.http import handle


@functions_framework.http
def assistant(request: flask.Request) -> flask.Response:
    return handle(request)
