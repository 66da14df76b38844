"""POST /predict without Flask's request machinery, for the requests that need none of it.

Flask's routing, request and response objects and hooks cost a uWSGI worker about 0.3 ms of CPU
per /predict (in-process, the model faked: 0.56 ms for a 64x64 PNG through Flask, 0.26 without
it), a quarter of all the CPU a small model's request takes on 2 cores. So the app's WSGI callable
looks at each request first: a POST /predict with an image or JSON body, no query string, no
CORS origin and, where tokens are required, an accepted one, is parsed and answered here by the
functions the view uses (app.inputs.body_inputs, app.routes.prediction), with its headers, request
id and metrics. Anything else goes to Flask; so does every error, which Flask's error handlers
render as on any route.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable

from flask import Flask, g
from werkzeug.exceptions import ClientDisconnected

from app import auth, metrics, request_ids, serving
from app.inputs import body_inputs, in_body
from app.routes import prediction

ROUTE = "/predict"

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]


class FastLane:
    """The WSGI app: the fast lane in front of Flask's own `wsgi_app`."""

    def __init__(self, app: Flask, tokens: auth.TokenFile | None):
        self._app = app
        self._flask: WsgiApp = app.wsgi_app
        self._tokens = tokens
        self._settings = app.extensions["kerasrv.settings"]

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        content_type = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
        if not self._takes(environ, content_type):
            return self._flask(environ, start_response)
        started = environ[metrics.STARTED] = time.perf_counter()
        request_id = environ["HTTP_X_REQUEST_ID"] = request_ids.take(environ.get("HTTP_X_REQUEST_ID", ""))
        with self._app.app_context():
            g.request_id = request_id
            try:
                length = int(environ["CONTENT_LENGTH"])
                body = environ["wsgi.input"].read(length)
                if len(body) < length:
                    raise ClientDisconnected()
                deadline = serving.deadline(environ.get("HTTP_X_REQUEST_START", ""))
                spec = serving.ready_spec()
                inputs, raw_instances = body_inputs(content_type, body)
                answer, result = prediction(spec, inputs, raw_instances, self._settings.default_top_k, deadline)
            except Exception as exc:
                return self._error(environ, start_response, exc)
            response = self._app.json.response(answer)
        response.headers.update(serving.answer_headers(result))
        response.headers[request_ids.HEADER] = request_id
        metrics.count_answer(self._settings.model_name, ROUTE, response.status_code, started)
        return response(environ, start_response)

    def _takes(self, environ: dict, content_type: str) -> bool:
        if environ.get("REQUEST_METHOD") != "POST" or environ.get("PATH_INFO") != ROUTE:
            return False
        if environ.get("QUERY_STRING") or not in_body(content_type):
            return False
        length = environ.get("CONTENT_LENGTH", "")
        if not length.isdigit() or not 0 < int(length) <= self._app.config["MAX_CONTENT_LENGTH"]:
            return False  # Flask answers the limits
        if self._settings.cors_origins and "HTTP_ORIGIN" in environ:
            return False
        return self._tokens is None or auth.bearer_accepted(self._tokens, environ.get("HTTP_AUTHORIZATION", ""))

    def _error(self, environ: dict, start_response: Callable, exc: Exception) -> Iterable[bytes]:
        """`exc` answered as Flask answers it from the view, its hooks run (metrics, request id)."""
        environ["wsgi.input"] = io.BytesIO(b"")
        with self._app.request_context(environ):
            try:
                answer = self._app.preprocess_request() or self._app.handle_user_exception(exc)
            except Exception as hook_exc:
                answer = self._app.handle_user_exception(hook_exc)
            response = self._app.finalize_request(answer)
        return response(environ, start_response)
