"""Start the whole server: supervisord -> nginx + uWSGI (workers + batching mule).

`python -m app.launch` is the one entry point for `make run`, the tests, the container and the
systemd unit. It checks the configuration, prepares the runtime directory, renders nginx.conf
(nginx cannot read environment variables) and exports the values the other config files read,
so each setting is derived in one place (app/config.py) and nowhere else.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

from app import tls
from app.config import PROJECT_ROOT, ConfigError, Settings
from app.inference import wire

PAGE = 4096
FATAL_MARKER = "supervisor-fatal"
# glibc's malloc hands a freed block of more than 128 KB back to the kernel, so every request's
# body, pixels and tensors (and every batch's activations in TensorFlow) come back as fresh pages:
# ~480 page faults per MobileNetV2 request in a worker. These keep blocks up to 32 MiB (glibc's
# largest) in the heap for reuse; the environment overrides them (docs/architecture.md).
MALLOC_DEFAULTS = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


def ask_mule_to_reload(settings: Settings) -> None:
    """Tell the mule to load the version MODEL_PATH names now (it switches once that is warm)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.connect(str(settings.mule_socket))
            sock.send(bytes([wire.RELOAD]))
    except OSError as exc:
        print(f"kerasrv: could not ask the mule to reload the model: {exc}", file=sys.stderr, flush=True)


def render_nginx(template: str, values: dict[str, str]) -> str:
    """Fill ${NAME} placeholders; nginx's own $variables are left alone."""

    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"nginx.conf uses ${{{name}}}, which the launcher does not provide")
        return values[name]

    return re.sub(r"\$\{([A-Z_]+)\}", fill, template)


def service_user(settings: Settings) -> str:
    """uWSGI and the nginx workers never run as root when they need not.

    As root: KERASRV_USER if set (the image sets `kerasrv`); otherwise `nobody`, unless the
    project or the model sits where `nobody` cannot read it (say, under /root), in which case
    they stay root with a warning rather than fail to start.
    """
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    if os.environ.get("KERASRV_USER"):
        return os.environ["KERASRV_USER"]
    needed = [PROJECT_ROOT, settings.model_path, *filter(None, [settings.auth_tokens_file])]
    if all(_readable_by_others(path) for path in needed):
        return "nobody"
    print(
        f"kerasrv: warning: one of {', '.join(map(str, needed))} is not readable by other users;"
        " uWSGI runs as root. Set KERASRV_USER to a user that can read them.",
        file=sys.stderr,
    )
    return "root"


def _readable_by_others(path: Path) -> bool:
    """Every parent directory is enterable and the path itself readable by any user."""
    path = path.resolve()
    try:
        if not path.stat().st_mode & stat.S_IROTH:
            return False
        return all(parent.stat().st_mode & stat.S_IXOTH for parent in path.parents)
    except OSError:
        return False


def prepare(settings: Settings, env: dict[str, str]) -> dict[str, str]:
    """Create the runtime directory and nginx.conf; return the environment for supervisord."""
    runtime = settings.runtime_dir
    for sub in ("", "nginx", "nginx/body", "nginx/temp"):
        (runtime / sub).mkdir(parents=True, exist_ok=True)
    (runtime / FATAL_MARKER).unlink(missing_ok=True)
    # prometheus_client's per-process files (app/metrics.py): empty at each start, as it requires
    metrics_dir = runtime / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir()
    settings.stop_marker.unlink(missing_ok=True)
    shutil.rmtree(settings.batch_costs_dir, ignore_errors=True)  # each start times its model afresh
    settings.batch_costs_dir.mkdir()
    user = service_user(settings)
    if os.geteuid() == 0:
        # the unprivileged uWSGI creates its sockets and metrics files here
        shutil.chown(runtime, user=user)
        shutil.chown(metrics_dir, user=user)
        shutil.chown(settings.batch_costs_dir, user=user)
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if nginx is None:
        raise ConfigError("nginx is not installed: run `make install` as root, or `apt-get install nginx`")
    values = {
        "HOST": settings.host,
        "PORT": str(settings.port),
        "RUNTIME_DIR": str(runtime),
        "STATIC_DIR": str(PROJECT_ROOT / "app" / "static"),
        "MAX_UPLOAD_MB": str(settings.max_upload_mb),
        "PROXY_TIMEOUT_S": str(settings.proxy_timeout_s),
        "LOG_FORMAT": settings.log_format,
        **tls.nginx_values(settings),
        "RATE_LIMIT_ZONE": f"limit_req_zone $kerasrv_limit_key zone=per_client:10m rate={settings.rate_limit_rps}r/s;"
        if settings.rate_limit_rps else "",
        "RATE_LIMIT": f"limit_req zone=per_client burst={settings.rate_limit_burst} nodelay;"
        if settings.rate_limit_rps else "",
        "USER_DIRECTIVE": f"user {user} {grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name};"
        if os.geteuid() == 0 else "",
    }
    template = (PROJECT_ROOT / "nginx.conf").read_text()
    (runtime / "nginx.conf").write_text(render_nginx(template, values))
    shared_bytes = settings.n_slots * settings.slot_bytes
    derived = {
        "KERASRV_ROOT": str(PROJECT_ROOT),
        "KERASRV_RUNTIME_DIR": str(runtime),
        "KERASRV_BIN": str(Path(sys.executable).parent),
        "KERASRV_PYTHON": sys.executable,
        "KERASRV_NGINX": nginx,
        "KERASRV_USER": user,
        "KERASRV_WORKERS": str(settings.workers),
        "KERASRV_THREADS": str(settings.threads),
        "KERASRV_LISTEN": str(settings.listen_backlog),
        "KERASRV_HARAKIRI": str(settings.harakiri_s),
        "KERASRV_SHAREDAREA_PAGES": str(-(-shared_bytes // PAGE)),
        # caches of Keras and matplotlib, writable by the unprivileged service user
        "KERAS_HOME": str(runtime / "keras"),
        "MPLCONFIGDIR": str(runtime / "matplotlib"),
        # the workers and the mule read the same settings back from the same variables
        "RUNTIME_DIR": str(runtime),
        "MODEL_PATH": str(settings.model_path),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    env = {**MALLOC_DEFAULTS, **env, **derived}
    env.pop("KERASRV_MULE", None)
    if settings.inference_mode == "mule":
        env["KERASRV_MULE"] = "1"  # uwsgi.ini starts the mule only when this is set
    return env


def _pipe_if_socket(fd: int) -> int | None:
    """supervisord.conf logs to /dev/stdout and /dev/stderr, which Linux cannot open on a socket
    (ENXIO), as systemd's journal gives us. Then hand supervisord a pipe, relayed by a thread."""
    if not stat.S_ISSOCK(os.fstat(fd).st_mode):
        return None
    read_end, write_end = os.pipe()

    def relay() -> None:
        while chunk := os.read(read_end, 65536):
            os.write(fd, chunk)

    threading.Thread(target=relay, name=f"relay-{fd}", daemon=True).start()
    return write_end


def kserve_arguments(argv: list[str], env: dict[str, str]) -> dict[str, str]:
    """The environment with KServe's predictor arguments applied: its ServingRuntimes pass
    `--model_name={{.Name}} --model_dir=/mnt/models --http_port=8080`. Everything else is set by
    environment variables only; an unknown argument stops the launch with a usage message."""
    parser = argparse.ArgumentParser(prog="python -m app.launch", description="Serve a Keras model"
                                     " (settings: environment variables, see README.md).")
    parser.add_argument("--model_name", help="MODEL_NAME")
    parser.add_argument("--model_dir", help="MODEL_PATH")
    parser.add_argument("--http_port", type=int, help="PORT")
    args = parser.parse_args(argv)
    given = {"MODEL_NAME": args.model_name, "MODEL_PATH": args.model_dir,
             "PORT": None if args.http_port is None else str(args.http_port)}
    return {**env, **{name: value for name, value in given.items() if value is not None}}


def main() -> int:
    env = kserve_arguments(sys.argv[1:], dict(os.environ))
    try:
        settings = Settings.from_env(env)
        env = prepare(settings, env)
    except ConfigError as exc:
        print(f"kerasrv: configuration error: {exc}", file=sys.stderr)
        return 2
    print(
        f"kerasrv: serving {settings.model_name} ({settings.model_path}) on port {settings.port},"
        f" {settings.workers} workers x {settings.threads} threads, mode {settings.inference_mode}",
        file=sys.stderr, flush=True,
    )
    supervisord = Path(sys.executable).parent / "supervisord"
    child = subprocess.Popen(
        [str(supervisord), "--nodaemon", "-c", str(PROJECT_ROOT / "supervisord.conf")], env=env,
        stdout=_pipe_if_socket(1), stderr=_pipe_if_socket(2),
    )

    def forward(signum, _frame):
        settings.stop_marker.touch()
        child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, forward)
    # SIGHUP re-reads what can change without a restart (the TLS certificate, the model version);
    # supervisord's own SIGHUP would restart every process. Without TLS nginx has nothing to
    # re-read, and a reload would close every idle keep-alive connection: a client's request
    # crossing that close on the wire fails.
    def reread(_signum, _frame):
        if settings.tls_cert_file is not None:
            tls.reload_nginx(settings.runtime_dir)
        if settings.inference_mode == "mule":
            ask_mule_to_reload(settings)

    signal.signal(signal.SIGHUP, reread)
    stop_watching = threading.Event()
    if settings.tls_cert_file is not None:
        threading.Thread(target=tls.watch_certificate, args=(settings, stop_watching), daemon=True).start()
    code = child.wait()
    stop_watching.set()
    if (settings.runtime_dir / FATAL_MARKER).exists():
        print("kerasrv: a process failed for good; exiting so that it is restarted", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
