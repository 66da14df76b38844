"""The documented API against the real stack: Schemathesis sends what /openapi.json allows (and
mutations of it) and every answer must be no 5xx and match its documented schema; Swagger UI at
/docs renders in headless Chromium with no request leaving this server.
"""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from playwright.sync_api import sync_playwright
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app import openapi
from app.config import Settings
from tests.e2e.test_dashboard import CHROMIUM, FLAGS
from tools.local_server import LocalServer


@pytest.fixture(scope="module")
def digits():
    server = LocalServer(name="api-docs").start()
    yield server
    assert server.stop() == 0, server.log()


# The document as the server writes it for the demo model: the operations are known before it starts.
OPERATIONS = [result.ok() for result in
              schemathesis.openapi.from_dict(openapi.document(Settings())).get_all_operations()]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.label)
def test_every_answer_is_documented_and_never_a_server_error(digits, operation):
    """Schema-valid requests for the served model (real model name and version, so bodies reach the
    parsers), then, where there is a body or a query, requests that break the schema: 25 each."""
    named = {"model": "digits", "version": "1"}
    path_parameters = {p["name"]: named[p["name"]] for p in operation.definition.raw.get("parameters", [])
                       if p["in"] == "path"}
    strategies = [operation.as_strategy(path_parameters=path_parameters)]
    if "requestBody" in operation.definition.raw or any(p["in"] == "query" for p in operation.definition.raw.get(
            "parameters", [])):  # with nothing but a path to break, a negative case cannot be made
        strategies.append(operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    for strategy in strategies:
        @given(case=strategy)
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def check(case):
            case.call_and_validate(base_url=digits.url, checks=CHECKS, timeout=30)

        check()
    if operation.path.endswith("/unload"):  # leave the model served for the operations after this one
        assert requests.post(f"{digits.url}/v2/repository/models/digits/load", timeout=60).status_code == 200


def test_swagger_ui_renders_offline(digits):
    requested: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        page.on("request", lambda request: requested.append(request.url))
        page.goto(f"{digits.url}/docs")
        page.wait_for_selector(".opblock-summary-path", timeout=60_000)
        paths = page.eval_on_selector_all(".opblock-summary-path", "nodes => nodes.map(n => n.dataset.path)")
        title = page.text_content(".title")
        browser.close()
    assert "/v2/models/{model}/infer" in paths and "/predict" in paths and len(paths) >= 25, paths
    assert "kerasrv" in title
    outside = [url for url in requested if not url.startswith((digits.url, "data:", "blob:"))]
    assert not outside, outside
