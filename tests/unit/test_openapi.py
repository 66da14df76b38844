"""/openapi.json: a valid OpenAPI 3.1 document that documents every route the app has."""

from __future__ import annotations

import re

from openapi_spec_validator import validate

from app import create_app
from app.config import Settings
from tests.doubles import FakeBackend


def test_the_document_is_valid_openapi_31_and_covers_every_route():
    app = create_app(Settings(), FakeBackend())
    document = app.test_client().get("/openapi.json").get_json()
    validate(document)  # raises on any error
    assert document["openapi"] == "3.1.0"
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "api_docs.swagger_ui_asset"):
            continue  # files, not API
        path = re.sub(r"<(?:\w+:)?name>", "{model}", rule.rule).replace("<version>", "{version}")
        routes |= {(path, method.lower()) for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert routes == documented


def test_swagger_ui_is_served_from_the_package(tmp_path):
    client = create_app(Settings(), FakeBackend()).test_client()
    page = client.get("/docs")
    assert page.status_code == 200 and b"/docs/swagger-ui-bundle.js" in page.data
    assert b"<script>" not in page.data  # no inline script: the CSP forbids it
    script = client.get("/docs/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.data) > 500_000
    assert client.get("/docs/../config.py").status_code == 404
