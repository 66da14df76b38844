"""kerasrv: a production HTTP server for Keras models (Flask app factory)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import TextIO

from flask import Flask

from app import auth, cors, metrics, request_ids
from app.config import Settings
from app.errors import register_error_handlers
from app.inference.backend import Backend

__version__ = "0.1.0"  # keep in step with pyproject.toml (tests/unit/test_packaging.py checks)


def make_backend(settings: Settings) -> Backend:
    """The backend INFERENCE_MODE asks for; neither import pulls in TensorFlow here."""
    if settings.inference_mode == "worker":
        from app.inference.local import LocalBackend  # noqa: PLC0415

        return LocalBackend(settings)
    from app.inference.mule_client import MuleClient  # noqa: PLC0415

    return MuleClient.for_uwsgi_worker(settings)


TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s rid=%(request_id)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """LOG_FORMAT=json: one JSON object per line, with the same fields as the text lines."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "pid": record.process,
            "logger": record.name,
            "request_id": record.request_id,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def log_handler(stream: TextIO, log_format: str = "text") -> logging.Handler:
    """Log lines for `stream`; `request_id` is the X-Request-ID of the request being handled, or "-"."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(request_ids.RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    return handler


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(handlers=[log_handler(sys.stderr, settings.log_format)], level=settings.log_level.upper())


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> Flask:
    settings = settings or Settings.from_env()
    configure_logging(settings)
    app = Flask(__name__)
    # Without nginx in front (tests, debugging) Flask enforces the same upload limit.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_mb * 1024 * 1024
    app.json.sort_keys = False
    app.extensions["kerasrv.settings"] = settings
    app.extensions["kerasrv.backend"] = backend or make_backend(settings)
    register_error_handlers(app)
    request_ids.install(app)
    metrics.instrument(app, settings.model_name)
    if settings.cors_origins:  # before the token check: a preflight carries no token
        cors.install(app, settings.cors_origins)
    tokens = auth.TokenFile(settings.auth_tokens_file) if settings.auth_tokens_file is not None else None
    if tokens is not None:
        auth.install(app, tokens, settings.metrics_open)
    from app import api_docs  # noqa: PLC0415
    from app.fast_lane import FastLane  # noqa: PLC0415
    from app.protocols import tfserving, v2, v2_repository  # noqa: PLC0415
    from app.routes import bp  # noqa: PLC0415

    app.register_blueprint(bp)
    app.register_blueprint(api_docs.bp)
    app.register_blueprint(tfserving.bp)
    app.register_blueprint(v2.bp)
    app.register_blueprint(v2_repository.bp)
    app.wsgi_app = FastLane(app, tokens)
    return app
