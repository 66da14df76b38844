"""CORS_ORIGINS through the app (Flask test client): preflights, answers, and refused origins."""

from __future__ import annotations

import pytest

from app import create_app
from app.config import ConfigError, Settings
from tests.doubles import TENSOR_SPEC, FakeBackend

FRONT_END = "https://app.example.com"
PREFLIGHT = {"Origin": FRONT_END, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type"}


def make_client(origins: tuple[str, ...], tokens=None):
    settings = Settings(cors_origins=origins, auth_tokens_file=tokens)
    return create_app(settings, backend=FakeBackend(TENSOR_SPEC)).test_client()


def test_a_preflight_from_an_allowed_origin_gets_204_even_with_tokens_required(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("t0ken\n")
    response = make_client((FRONT_END,), tokens).options("/predict", headers=PREFLIGHT)
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == FRONT_END
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert {"authorization", "content-type"} <= {
        h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert response.headers["Vary"] == "Origin"


def test_the_answer_itself_may_be_read_by_that_origin():
    response = make_client((FRONT_END,)).post("/predict", json={"instances": [[1, 2, 3, 4]]},
                                              headers={"Origin": FRONT_END})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == FRONT_END
    assert "X-Request-ID" in response.headers["Access-Control-Expose-Headers"]


def test_another_origin_is_refused_and_gets_no_cors_headers():
    client = make_client((FRONT_END,))
    preflight = client.options("/predict", headers={**PREFLIGHT, "Origin": "https://evil.example"})
    assert preflight.status_code == 403 and preflight.json["code"] == "origin_not_allowed"
    answer = client.post("/predict", json={"instances": [[1, 2, 3, 4]]}, headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in answer.headers


def test_star_allows_any_origin_and_off_allows_none():
    assert make_client(("*",)).options("/predict", headers=PREFLIGHT).status_code == 204
    off = make_client(()).post("/predict", json={"instances": [[1, 2, 3, 4]]}, headers={"Origin": FRONT_END})
    assert off.status_code == 200 and "Access-Control-Allow-Origin" not in off.headers


@pytest.mark.parametrize(("raw", "parsed"), [
    ("", ()), ("*", ("*",)), ("https://a.example, http://localhost:3000/", ("https://a.example", "http://localhost:3000")),
])
def test_cors_origins_setting(raw, parsed):
    assert Settings.from_env({"CORS_ORIGINS": raw}).cors_origins == parsed


@pytest.mark.parametrize("raw", ["a.example", "https://a.example/path", "ftp://a.example", "https://a b"])
def test_cors_origins_must_be_origins(raw):
    with pytest.raises(ConfigError, match="CORS_ORIGINS"):
        Settings.from_env({"CORS_ORIGINS": raw})
