"""kerasrv: a production HTTP server for Keras models (Flask app factory)."""

from __future__ import annotations

import logging
import sys

from flask import Flask

from app.config import Settings
from app.errors import register_error_handlers
from app.inference.backend import Backend


def make_backend(settings: Settings) -> Backend:
    """The backend INFERENCE_MODE asks for; neither import pulls in TensorFlow here."""
    if settings.inference_mode == "worker":
        from app.inference.local import LocalBackend  # noqa: PLC0415

        return LocalBackend(settings)
    from app.inference.mule_client import MuleClient  # noqa: PLC0415

    return MuleClient.for_uwsgi_worker(settings)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=level.upper(),
        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
    )


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> Flask:
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level)
    app = Flask(__name__)
    # Without nginx in front (tests, debugging) Flask enforces the same upload limit.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_mb * 1024 * 1024
    app.json.sort_keys = False
    app.extensions["kerasrv.settings"] = settings
    app.extensions["kerasrv.backend"] = backend or make_backend(settings)
    register_error_handlers(app)
    from app.routes import bp  # noqa: PLC0415

    app.register_blueprint(bp)
    return app
