"""/openapi.json and Swagger UI at /docs, served from the flask-swagger-ui package's copy of
Swagger UI: no CDN, because this server often runs where nothing outside can be reached."""

from __future__ import annotations

from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, jsonify, render_template, send_from_directory

from app import openapi, serving

SWAGGER_UI = Path(flask_swagger_ui.__file__).parent / "dist"

bp = Blueprint("api_docs", __name__)


@bp.get("/openapi.json")
def document():
    return jsonify(openapi.document(serving.settings()))


@bp.get("/docs")
def swagger_ui():
    return render_template("docs.html", settings=serving.settings())


@bp.get("/docs/<name>")
def swagger_ui_asset(name: str):
    """Swagger UI's own files (scripts, styles, icons), from the installed package."""
    return send_from_directory(SWAGGER_UI, name, max_age=3600)
