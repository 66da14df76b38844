"""CORS_ORIGINS: which web front ends on other origins may call the API from a browser.

A preflight (OPTIONS with Access-Control-Request-Method) from an allowed origin is answered 204
with what may be sent, before any token check (browsers send no credentials with it); one from
another origin gets 403 JSON. Every other answer to an allowed origin says it may be read and
which of our headers the page may see.
"""

from __future__ import annotations

from flask import Flask, Response, request

from app.errors import ApiError

ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, X-Request-ID"
EXPOSE_HEADERS = "X-Request-ID, X-Batch-Size, X-Model-Version, Retry-After"
MAX_AGE_S = 600


def install(app: Flask, origins: tuple[str, ...]) -> None:
    any_origin = "*" in origins

    def allowed(origin: str) -> bool:
        return bool(origin) and (any_origin or origin in origins)

    @app.before_request
    def _preflight() -> Response | None:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        origin = request.headers.get("Origin", "")
        if not allowed(origin):
            raise ApiError(403, "origin_not_allowed", f"origin {origin!r} is not in CORS_ORIGINS")
        response = app.response_class(status=204)
        response.headers.update({
            "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": str(MAX_AGE_S),
        })
        return response

    @app.after_request
    def _allow(response: Response) -> Response:
        origin = request.headers.get("Origin", "")
        if allowed(origin):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
            response.vary.add("Origin")
        return response
