#!/usr/bin/env bash
# Install kerasrv as a systemd service on a bare-metal Debian/Ubuntu host. Run as root, from a
# checkout:  sudo systemd/install.sh   (then: systemctl enable --now kerasrv)
#
#   /opt/kerasrv                   the project (copied from this checkout; .venv, .run, .git left out)
#   /opt/kerasrv/.venv             its venv, made by scripts/install.sh (nginx and gcc from apt)
#   /etc/kerasrv/kerasrv.env       the configuration; installed only when absent, never overwritten
#   /etc/systemd/system/kerasrv.service
#
# Run it again to upgrade: the project files and the unit are replaced, the venv is reused (pip
# runs only when the requirements changed) and the configuration is kept. Environment passed
# through to scripts/install.sh: PYTHON, TF_PACKAGE (e.g. "tensorflow[and-cuda]==2.21.0" for GPUs).
set -euo pipefail

dest=/opt/kerasrv
user=kerasrv
config_dir=/etc/kerasrv
unit_dir=/etc/systemd/system
src=$(cd "$(dirname "$0")/.." && pwd)

if [ "$(id -u)" -ne 0 ]; then
    echo "systemd/install.sh: run as root (sudo $0)" >&2
    exit 1
fi
# the unprivileged service user must be able to read the project and its venv
umask 022

systemd_running() { [ -d /run/systemd/system ]; }
have_nginx() { command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; }
had_nginx=no
if have_nginx; then had_nginx=yes; fi

# 1. The project, in /opt/kerasrv.
if [ "$src" != "$dest" ]; then
    echo "install: copy $src to $dest"
    mkdir -p "$dest"
    tar --create --directory "$src" \
        --exclude=./.venv --exclude=./.run --exclude=./.git --exclude=./bench/work \
        --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache \
        . | tar --extract --directory "$dest" --no-same-owner
fi
# root-owned, readable (not writable) by everyone else, whatever the checkout's umask was
chown -R root:root "$dest"
chmod -R go+rX,go-w "$dest"

# 2. The service user: the unit runs everything as it (User=kerasrv).
if ! id -u "$user" >/dev/null 2>&1; then
    echo "install: create system user $user"
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin "$user"
fi

# 3. nginx, gcc and the venv: the same script as `make run` and the Docker image. And procps:
# the unit's ExecReload runs /bin/kill (on every standard install, but not in minimal images).
VENV="$dest/.venv" "$dest/scripts/install.sh"
if [ ! -x /bin/kill ]; then
    echo "install: apt-get install procps"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends procps >/dev/null
fi

# Debian's nginx package enables and starts its own nginx.service, which listens on port 80 and
# would keep kerasrv from binding it. kerasrv only needs the binary: stop that service if this
# script just installed it; otherwise leave it alone and warn.
if systemd_running; then
    if [ "$had_nginx" = no ] && systemctl is-enabled --quiet nginx.service 2>/dev/null; then
        echo "install: disable the nginx.service that the nginx package started (kerasrv runs its own nginx)"
        systemctl disable --now nginx.service
    elif systemctl is-active --quiet nginx.service 2>/dev/null; then
        echo "install: warning: nginx.service is running; it must not listen on kerasrv's PORT" \
            "(80 by default). If it does: systemctl disable --now nginx" >&2
    fi
fi

# 4. The configuration: a template the first time, never overwritten.
mkdir -p "$config_dir"
if [ -e "$config_dir/kerasrv.env" ]; then
    echo "install: keep $config_dir/kerasrv.env (the current template: $dest/systemd/kerasrv.env)"
else
    echo "install: create $config_dir/kerasrv.env"
    install -m 0644 "$dest/systemd/kerasrv.env" "$config_dir/kerasrv.env"
fi

# 5. The unit (local changes belong in a drop-in: systemctl edit kerasrv).
install -m 0644 "$dest/systemd/kerasrv.service" "$unit_dir/kerasrv.service"
if systemd_running; then
    systemctl daemon-reload
else
    echo "install: systemd is not running here; the unit is installed but not loaded" >&2
fi

cat <<EOF

kerasrv is installed in $dest.
  configure:  $config_dir/kerasrv.env   (MODEL_PATH, PORT, WORKERS, ...)
  start:      systemctl enable --now kerasrv
  after an upgrade or a configuration change: systemctl restart kerasrv
  logs:       journalctl -u kerasrv -f
  check:      curl http://127.0.0.1/health/ready    (200 once the model is loaded)
EOF
