"""The JSON error every bad request gets: a message for a human and a stable code for a machine."""

from __future__ import annotations

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from app.inference.backend import BackendError


class ApiError(Exception):
    """Raised anywhere below the routes; rendered as `{"error": ..., "code": ...}` with `status`."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.headers = headers or {}


def render_error(status: int, code: str, message: str, retry_after: int | None = None,
            headers: dict[str, str] | None = None):
    response = jsonify(error=message, code=code)
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    response.headers.update(headers or {})
    return response


# Werkzeug's own errors (routing, body limits) keep their status but get our JSON body.
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(err: ApiError):
        return render_error(err.status, err.code, err.message, err.retry_after, err.headers)

    @app.errorhandler(BackendError)
    def _backend_error(err: BackendError):
        return render_error(err.status, err.code, str(err) or err.code, err.retry_after)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        status = err.code or 500
        if status == 413:
            message = "request body too large"
        else:
            message = err.description or err.name
        response = render_error(status, _HTTP_CODES.get(status, "http_error"), message)
        for name, value in err.get_headers():  # e.g. Allow on 405
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        app.logger.exception("unhandled error")
        return render_error(500, "internal_error", "internal server error (see the server log)")
