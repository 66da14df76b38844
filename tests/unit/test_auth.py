"""AUTH_TOKENS_FILE through the app (Flask test client): who gets in, what they are told, rotation."""

from __future__ import annotations

import os

import pytest

from app import create_app
from app.config import ConfigError, Settings
from tests.doubles import TENSOR_SPEC, FakeBackend

ROW = {"instances": [[1, 2, 3, 4]]}


def write_tokens(path, *lines: str) -> None:
    """Replace the file the way a Secret rotation does: a new file renamed over the old one."""
    fresh = path.with_suffix(".new")
    fresh.write_text("".join(f"{line}\n" for line in lines))
    os.replace(fresh, path)


@pytest.fixture
def tokens(tmp_path):
    path = tmp_path / "tokens"
    write_tokens(path, "# the front end", "s3cret-one", "", "  s3cret-two  ")
    return path


def make_client(tokens, **settings):
    app = create_app(Settings(auth_tokens_file=tokens, **settings), backend=FakeBackend(TENSOR_SPEC))
    return app.test_client()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("token", ["s3cret-one", "s3cret-two"])
def test_an_accepted_token_gets_in(tokens, token):
    assert make_client(tokens).post("/predict", json=ROW, headers=bearer(token)).status_code == 200


@pytest.mark.parametrize(("headers", "query"), [
    ({}, ""),  # no token
    (bearer("s3cret-three"), ""),  # a wrong one
    (bearer("s3cret-one "), ""),  # a trailing space
    (bearer("s3cret-on"), ""),  # a prefix of a real one
    ({"Authorization": "Basic s3cret-one"}, ""),  # another scheme
    ({"Authorization": "s3cret-one"}, ""),  # no scheme
    (bearer("# the front end"), ""),  # a comment line
    (bearer(""), ""),  # a blank line
    ({}, "?token=s3cret-one"),  # in the query string
    ({}, "?access_token=s3cret-one"),
])
def test_anything_else_gets_401_json_without_a_hint(tokens, headers, query):
    response = make_client(tokens).post(f"/predict{query}", json=ROW, headers=headers)
    assert response.status_code == 401
    assert response.json == {"error": "a valid 'Authorization: Bearer <token>' header is required",
                             "code": "unauthorized"}
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="kerasrv"'
    assert response.headers["X-Request-ID"]


def test_every_route_but_the_probes_is_closed(tokens):
    client = make_client(tokens)
    assert client.get("/health/live").status_code == 200
    assert client.get("/health/ready").status_code == 200
    for path in ("/", "/stats", "/metrics", "/dashboard", "/nope"):
        assert client.get(path).status_code == 401, path
    assert make_client(tokens, metrics_open=True).get("/metrics").status_code == 200


def test_no_token_file_means_no_check():
    client = create_app(Settings(), backend=FakeBackend(TENSOR_SPEC)).test_client()
    assert client.post("/predict", json=ROW).status_code == 200


def test_a_rotated_file_takes_effect_on_the_next_request(tokens):
    client = make_client(tokens)
    assert client.post("/predict", json=ROW, headers=bearer("s3cret-one")).status_code == 200
    write_tokens(tokens, "s3cret-new")
    assert client.post("/predict", json=ROW, headers=bearer("s3cret-one")).status_code == 401
    assert client.post("/predict", json=ROW, headers=bearer("s3cret-new")).status_code == 200


def test_a_vanished_file_keeps_the_last_tokens(tokens):
    client = make_client(tokens)
    tokens.unlink()
    assert client.post("/predict", json=ROW, headers=bearer("s3cret-one")).status_code == 200
    assert client.post("/predict", json=ROW, headers=bearer("s3cret-new")).status_code == 401


def test_an_empty_file_lets_nobody_in(tmp_path):
    empty = tmp_path / "tokens"
    empty.write_text("# nobody yet\n")
    assert make_client(empty).post("/predict", json=ROW, headers=bearer("")).status_code == 401


def test_a_missing_file_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigError, match="AUTH_TOKENS_FILE"):
        Settings.from_env({"AUTH_TOKENS_FILE": str(tmp_path / "absent")})
    with pytest.raises(ConfigError, match="not a readable file"):
        Settings.from_env({"AUTH_TOKENS_FILE": str(tmp_path)})  # a directory
