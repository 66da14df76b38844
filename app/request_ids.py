"""X-Request-ID: one id per request, on its response and on every log line written while it is handled.

nginx takes the client's X-Request-ID when it is a plain token (VALID_ID, the same rule as the
map in nginx.conf) and makes one otherwise, logs it in its access log, passes it on and puts it
on every answer, its own error pages included. Here the app takes what nginx passed, or makes an
id when it runs without nginx (tests, debugging), so a client can always quote one.
"""

from __future__ import annotations

import logging
import re
import uuid

from flask import Flask, Response, g, has_app_context, request

HEADER = "X-Request-ID"
VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def current() -> str:
    """The id of the request being handled, or "-" outside one (the mule, start-up)."""
    return g.get("request_id", "-") if has_app_context() else "-"


def take(given: str) -> str:
    """The client's (nginx's) id if it is a plain token, else a new one."""
    return given if VALID_ID.fullmatch(given) else uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Gives every log record a `request_id` for the log format."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current()
        return True


def install(app: Flask) -> None:
    @app.before_request
    def _take_id() -> None:
        g.request_id = take(request.headers.get(HEADER, ""))

    @app.after_request
    def _echo_id(response: Response) -> Response:
        response.headers[HEADER] = current()
        return response
