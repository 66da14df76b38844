"""Inference requests answered without Flask's request machinery, for those that need none of it.

Flask's routing, request and response objects and hooks cost a uWSGI worker about 0.3 ms of CPU
per /predict (in-process on a 2-core AMD EPYC VM, the model faked: 0.56 ms for a 64x64 PNG
through Flask, 0.26 without it), a quarter of all the CPU a small model's request takes on 2
cores. So the app's WSGI callable looks at each request first: a POST to /predict (with an image
or JSON body), to v2's `infer` or to TF Serving's `:predict`, with no query string, no CORS
origin and, where tokens are required, an accepted one, is answered here by the function its
view calls, with the view's headers, request id and metrics. Anything else goes to Flask; so
does every error, which Flask's error handlers (the protocol blueprints' included) render as on
any route.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from flask import Flask, g
from werkzeug.exceptions import ClientDisconnected

from app import auth, metrics, request_ids, routes, serving
from app.inputs import in_body
from app.protocols import tfserving, v2

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]
Answers = Callable[..., serving.Answer]  # (call, **path parameters)


@dataclass(frozen=True)
class _Route:
    rule: str  # Flask's rule for the same requests: the route label of the metrics
    answer: Answers
    takes_type: Callable[[str], bool] = lambda content_type: True  # the view reads any body

    def pattern(self) -> re.Pattern[str]:
        """The rule as a regular expression; a <parameter> is one path segment, as in Flask."""
        parts = re.split(r"<(\w+)>", self.rule)  # literal, name, literal, ...
        return re.compile("".join(f"(?P<{part}>[^/]+)" if i % 2 else re.escape(part) for i, part in enumerate(parts)))


ROUTES = (
    _Route("/predict", routes.answer, in_body),
    _Route("/v2/models/<name>/infer", v2.answer),
    _Route("/v2/models/<name>/versions/<version>/infer", v2.answer),
    _Route("/v1/models/<name>:predict", tfserving.answer),
    _Route("/v1/models/<name>/versions/<version>:predict", tfserving.answer),
)


class FastLane:
    """The WSGI app: the fast lane in front of Flask's own `wsgi_app`."""

    def __init__(self, app: Flask, tokens: auth.TokenFile | None):
        self._app = app
        self._flask: WsgiApp = app.wsgi_app
        self._tokens = tokens
        self._settings = app.extensions["kerasrv.settings"]
        self._routes = [(route.pattern(), route) for route in ROUTES]

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        content_type = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
        taken = self._takes(environ, content_type)
        if taken is None:
            return self._flask(environ, start_response)
        route, path_args = taken
        started = environ[metrics.STARTED] = time.perf_counter()
        request_id = environ["HTTP_X_REQUEST_ID"] = request_ids.take(environ.get("HTTP_X_REQUEST_ID", ""))
        with self._app.app_context():
            g.request_id = request_id
            try:
                length = int(environ["CONTENT_LENGTH"])
                body = environ["wsgi.input"].read(length)
                if len(body) < length:
                    raise ClientDisconnected()
                call = serving.Call(body, content_type, environ.get("HTTP_X_REQUEST_START", ""),
                                    environ.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH"))
                answer = route.answer(call, **path_args)
            except Exception as exc:
                return self._error(environ, start_response, exc)
        metrics.count_answer(self._settings.model_name, route.rule, 200, started)
        start_response("200 OK", [*answer.headers(), (request_ids.HEADER, request_id)])
        return [answer.body]

    def _takes(self, environ: dict, content_type: str) -> tuple[_Route, dict[str, str]] | None:
        """The route of a request the lane answers, and its path parameters; None for Flask."""
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "POST" or environ.get("QUERY_STRING") or not path.isascii():
            return None  # a non-ASCII path: Flask decodes it
        found = next(((route, match) for pattern, route in self._routes if (match := pattern.fullmatch(path))), None)
        if found is None:
            return None
        route, match = found
        if not route.takes_type(content_type):
            return None
        length = environ.get("CONTENT_LENGTH", "")
        if not length.isdigit() or not 0 < int(length) <= self._app.config["MAX_CONTENT_LENGTH"]:
            return None  # Flask answers the limits
        if self._settings.cors_origins and "HTTP_ORIGIN" in environ:
            return None
        if self._tokens is not None and not auth.bearer_accepted(self._tokens, environ.get("HTTP_AUTHORIZATION", "")):
            return None
        return route, match.groupdict()

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
