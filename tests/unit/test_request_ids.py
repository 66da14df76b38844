"""X-Request-ID through the app (Flask test client): taken, made, echoed on every answer, logged."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from app import create_app, log_handler
from app.config import PROJECT_ROOT, Settings
from app.inference.backend import Overloaded
from app.request_ids import VALID_ID, current
from tests.doubles import FakeBackend

MADE = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def client():
    return create_app(Settings(), backend=FakeBackend()).test_client()


@pytest.mark.parametrize("given", ["abc", "0af7651916cd43dd8448eb211c80319c", "trace-1.2:3_x", "a" * 128])
def test_a_plain_token_from_the_client_comes_back(client, given):
    assert client.get("/health/live", headers={"X-Request-ID": given}).headers["X-Request-ID"] == given


@pytest.mark.parametrize("given", [None, "", "has space", "a" * 129, "semi;colon", "é"])
def test_otherwise_the_app_makes_one(client, given):
    headers = {} if given is None else {"X-Request-ID": given}
    made = client.get("/health/live", headers=headers).headers["X-Request-ID"]
    assert MADE.fullmatch(made)
    assert client.get("/health/live", headers=headers).headers["X-Request-ID"] != made  # one per request


def test_error_answers_carry_it_too():
    app = create_app(Settings(), backend=FakeBackend(raises=Overloaded("queue full")))
    client = app.test_client()
    for response in (
        client.get("/nope", headers={"X-Request-ID": "r1"}),  # routing error
        client.delete("/predict", headers={"X-Request-ID": "r1"}),  # 405
        client.post("/predict", data=b"x", headers={"X-Request-ID": "r1", "Content-Type": "text/plain"}),  # 415
        client.post("/predict", json={"instances": [[1.0]]}, headers={"X-Request-ID": "r1"}),  # backend 503
    ):
        assert response.status_code >= 400 and response.headers["X-Request-ID"] == "r1", response.status


def test_log_lines_written_during_a_request_carry_its_id():
    out = io.StringIO()
    logger = logging.getLogger("kerasrv.test.request_ids")
    logger.addHandler(log_handler(out))
    logger.setLevel(logging.INFO)
    app = create_app(Settings(), backend=FakeBackend())

    @app.get("/log-something")
    def log_something():
        logger.info("handling it")
        return {"id": current()}

    try:
        assert app.test_client().get("/log-something", headers={"X-Request-ID": "abc"}).json == {"id": "abc"}
        logger.info("outside a request")
    finally:
        logger.handlers.clear()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].endswith("kerasrv.test.request_ids rid=abc: handling it"), lines
    assert lines[1].endswith("rid=-: outside a request"), lines


def test_nginx_uses_the_same_rule():
    conf = (PROJECT_ROOT / "nginx.conf").read_text()
    assert f'"~^{VALID_ID.pattern}$" $http_x_request_id;' in conf


def test_json_log_lines_are_one_object_each_with_the_request_id():
    out = io.StringIO()
    logger = logging.getLogger("kerasrv.test.json")
    logger.addHandler(log_handler(out, "json"))
    logger.setLevel(logging.INFO)
    app = create_app(Settings(), backend=FakeBackend())

    @app.get("/fail-loudly")
    def fail_loudly():
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("it failed: %s", "details")
        return {}

    try:
        app.test_client().get("/fail-loudly", headers={"X-Request-ID": "abc"})
    finally:
        logger.handlers.clear()
    (line,) = out.getvalue().splitlines()  # the traceback too stays on one line
    entry = json.loads(line)
    assert {k: entry[k] for k in ("level", "logger", "request_id", "message")} == {
        "level": "ERROR", "logger": "kerasrv.test.json", "request_id": "abc", "message": "it failed: details"}
    assert "ValueError: boom" in entry["exception"] and entry["time"].endswith("+00:00")
