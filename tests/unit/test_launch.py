"""app.launch: nginx.conf rendering and the runtime directory prepare() sets up (no server is started)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from app.config import PROJECT_ROOT, Settings
from app.launch import MALLOC_DEFAULTS, kserve_arguments, prepare, render_nginx
from tests.doubles import self_signed_cert

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()),
                                      None)


def test_render_fills_placeholders():
    template = "listen ${HOST}:${PORT};\nclient_max_body_size ${MAX_UPLOAD_MB}m;\nroot ${RUNTIME_DIR}/x;"
    rendered = render_nginx(template, {"HOST": "127.0.0.1", "PORT": "8080", "MAX_UPLOAD_MB": "10",
                                       "RUNTIME_DIR": "/run/k"})
    assert rendered == "listen 127.0.0.1:8080;\nclient_max_body_size 10m;\nroot /run/k/x;"


def test_render_fills_every_occurrence_and_empty_values():
    rendered = render_nginx("${USER_DIRECTIVE}\na ${PORT} b ${PORT}", {"USER_DIRECTIVE": "", "PORT": "1"})
    assert rendered == "\na 1 b 1"


def test_render_leaves_nginx_variables_alone():
    template = 'uwsgi_param HTTP_X_REQUEST_START "t=$msec"; try_files $uri $uri/ =404; set $x ${PORT}; ${ }'
    rendered = render_nginx(template, {"PORT": "9"})
    assert rendered == 'uwsgi_param HTTP_X_REQUEST_START "t=$msec"; try_files $uri $uri/ =404; set $x 9; ${ }'


def test_render_does_not_expand_placeholders_inside_values():
    assert render_nginx("${HOST}", {"HOST": "${PORT}", "PORT": "1"}) == "${PORT}"


def test_render_refuses_an_unknown_placeholder():
    with pytest.raises(KeyError, match="NOT_PROVIDED"):
        render_nginx("listen ${PORT}; ${NOT_PROVIDED}", {"PORT": "1"})


def test_the_real_template_only_uses_known_placeholders():
    # every placeholder in nginx.conf is one prepare() provides
    provided = {"HOST", "PORT", "RUNTIME_DIR", "STATIC_DIR", "MAX_UPLOAD_MB", "PROXY_TIMEOUT_S", "USER_DIRECTIVE",
                "LOG_FORMAT", "RATE_LIMIT_ZONE", "RATE_LIMIT", "LISTEN_OPTIONS", "TLS_DIRECTIVES", "REDIRECT_SERVER"}
    render_nginx((PROJECT_ROOT / "nginx.conf").read_text(), dict.fromkeys(provided, "x"))


@pytest.fixture(params=[{"LOG_FORMAT": "text"}, {"LOG_FORMAT": "json", "RATE_LIMIT_RPS": "5"},
                        {"TLS": "on", "HTTP_REDIRECT_PORT": "18124"}], ids=["text", "json-limited", "tls"])
def prepared(tmp_path, monkeypatch, request):
    """prepare() for a server on port 18123 with its runtime directory in tmp_path: plain, with
    JSON logs and a rate limit, and with TLS and a redirect port."""
    if NGINX is None:
        pytest.skip("nginx is not installed")
    monkeypatch.delenv("KERASRV_USER", raising=False)
    tmp_path.chmod(0o755)  # as root the service user is `nobody`, who must be able to enter it
    settings = Settings.from_env({
        "HOST": "127.0.0.1", "PORT": "18123", "RUNTIME_DIR": str(tmp_path / "run"), "MAX_UPLOAD_MB": "7",
        "REQUEST_TIMEOUT_MS": "20000", "WORKERS": "3", "THREADS": "2", "SLOT_MB": "1",
        **request.param, **tls_files(request.param, tmp_path),
    })
    env = prepare(settings, {"PATH": os.environ.get("PATH", ""), "KERASRV_MULE": "stale"})
    return settings, env, tmp_path / "run"


def tls_files(param: dict[str, str], folder: Path) -> dict[str, str]:
    if "TLS" not in param:
        return {}
    cert, key = self_signed_cert(folder)
    return {"TLS_CERT_FILE": str(cert), "TLS_KEY_FILE": str(key)}


def test_prepare_writes_the_runtime_directory(prepared):
    settings, _, runtime = prepared
    for sub in ("nginx", "nginx/body", "nginx/temp"):
        assert (runtime / sub).is_dir()
    conf = (runtime / "nginx.conf").read_text()
    assert "${" not in conf
    assert "listen 127.0.0.1:18123" in conf
    assert "client_max_body_size 7m;" in conf
    assert f"uwsgi_read_timeout {settings.proxy_timeout_s}s;" in conf
    assert f"access_log /dev/stdout {settings.log_format} buffer=32k flush=1s;" in conf
    limited = "limit_req zone=per_client burst=20 nodelay;" in conf
    assert limited == ("limit_req_zone $kerasrv_limit_key zone=per_client:10m rate=5r/s;" in conf)
    assert limited == (settings.rate_limit_rps == 5)
    tls = settings.tls_cert_file is not None
    assert ("listen 127.0.0.1:18123 ssl http2;" in conf) == tls and ("listen 127.0.0.1:18123;" in conf) != tls
    assert ("ssl_protocols TLSv1.2 TLSv1.3;" in conf) == tls
    assert ("listen 127.0.0.1:18124;" in conf and "return 308 https://$host:18123$request_uri;" in conf) == tls
    assert f"server unix:{runtime}/uwsgi.sock;" in conf
    assert f"alias {PROJECT_ROOT}/app/static/;" in conf
    assert "the limit is 7 MB" in conf
    assert '"t=$msec"' in conf  # nginx's own variable survived


def test_prepare_environment(prepared):
    settings, env, runtime = prepared
    assert env["PATH"] == os.environ.get("PATH", "")
    assert env["RUNTIME_DIR"] == env["KERASRV_RUNTIME_DIR"] == str(runtime)
    assert env["MODEL_PATH"] == str(settings.model_path)
    assert env["KERASRV_WORKERS"] == "3" and env["KERASRV_THREADS"] == "2"
    assert env["KERASRV_HARAKIRI"] == str(settings.harakiri_s) == "30"
    assert int(env["KERASRV_SHAREDAREA_PAGES"]) * 4096 >= 6 * 1024 * 1024  # 6 slots of 1 MB
    assert env["KERASRV_MULE"] == "1"  # mule mode is the default
    assert Path(env["KERASRV_NGINX"]).exists()
    assert {k: env[k] for k in MALLOC_DEFAULTS} == {"MALLOC_MMAP_THRESHOLD_": "33554432",
                                                    "MALLOC_TRIM_THRESHOLD_": "268435456"}


def test_prepare_worker_mode_starts_no_mule(tmp_path, monkeypatch):
    if NGINX is None:
        pytest.skip("nginx is not installed")
    monkeypatch.delenv("KERASRV_USER", raising=False)
    tmp_path.chmod(0o755)
    settings = Settings.from_env({"RUNTIME_DIR": str(tmp_path / "run"), "INFERENCE_MODE": "worker"})
    env = prepare(settings, {"KERASRV_MULE": "1"})
    assert "KERASRV_MULE" not in env


def test_prepare_keeps_the_users_malloc_thresholds(tmp_path, monkeypatch):
    if NGINX is None:
        pytest.skip("nginx is not installed")
    monkeypatch.delenv("KERASRV_USER", raising=False)
    tmp_path.chmod(0o755)
    settings = Settings.from_env({"RUNTIME_DIR": str(tmp_path / "run")})
    env = prepare(settings, {"MALLOC_TRIM_THRESHOLD_": "131072"})
    assert env["MALLOC_TRIM_THRESHOLD_"] == "131072"
    assert env["MALLOC_MMAP_THRESHOLD_"] == MALLOC_DEFAULTS["MALLOC_MMAP_THRESHOLD_"]


def test_rendered_config_passes_nginx_t(prepared):
    _, _, runtime = prepared
    conf = runtime / "nginx.conf"
    result = subprocess.run(
        [NGINX, "-t", "-c", str(conf), "-p", str(runtime)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


def test_nginx_t_catches_a_broken_config(prepared):
    # the check above can fail: the same config with an unfilled placeholder is refused
    _, _, runtime = prepared
    broken = runtime / "broken.conf"
    broken.write_text((runtime / "nginx.conf").read_text().replace("client_max_body_size 7m;",
                                                                   "client_max_body_size ${MAX_UPLOAD_MB}m;"))
    result = subprocess.run(
        [NGINX, "-t", "-c", str(broken), "-p", str(runtime)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode != 0


def test_kserve_arguments_set_what_they_name_and_nothing_else():
    env = {"MODEL_NAME": "old", "WORKERS": "3"}
    applied = kserve_arguments(["--model_name=resnet", "--model_dir=/mnt/models", "--http_port", "8080"], env)
    assert applied == {"MODEL_NAME": "resnet", "MODEL_PATH": "/mnt/models", "PORT": "8080", "WORKERS": "3"}
    assert kserve_arguments([], env) == env
    with pytest.raises(SystemExit) as refused:  # argparse's usage message on stderr, exit 2
        kserve_arguments(["--grpc_port=9000"], env)
    assert refused.value.code == 2
    with pytest.raises(SystemExit):
        kserve_arguments(["--http_port=eighty"], env)
