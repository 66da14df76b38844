#!/usr/bin/env bash
# Install what kerasrv needs on Debian/Ubuntu: nginx and build tools from apt (when root), and a
# Python venv with the pinned packages. Used by `make run`, `make test`, CI and the Dockerfile.
#   scripts/install.sh          runtime only
#   scripts/install.sh dev      plus tests, lint, training and benchmark tools, and from apt
#                               iproute2 (ss), stress-ng, wrk, h2load, chromium, promtool, the shell linter,
#                               and mmdebstrap, podman and systemd-nspawn for the image and systemd tests
# Environment: VENV (default .venv), PYTHON (default python3), TF_PACKAGE (e.g. "tensorflow[and-cuda]==2.21.0"
# for the GPU build instead of tensorflow-cpu).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv=${VENV:-$root/.venv}
python=${PYTHON:-python3}
profile=${1:-runtime}

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v gcc >/dev/null 2>&1 || missing+=(gcc libc6-dev)  # uWSGI builds from source
pyver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
"$python" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    || missing+=("python${pyver}-dev")
"$python" -c 'import ensurepip' >/dev/null 2>&1 || missing+=("python${pyver}-venv")
if [ "$profile" = dev ]; then
    command -v ss >/dev/null 2>&1 || missing+=(iproute2)          # tests count requests waiting at the mule
    command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
    command -v stress-ng >/dev/null 2>&1 || missing+=(stress-ng)  # make test-stress
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)              # load for the throughput test and bench/
    command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client) # open-loop load: overload tests, make reliability
    [ -x /usr/bin/chromium ] || missing+=(chromium)                # the live view's browser test
    # the image test: builds the Dockerfile (podman) on a bookworm base it makes (mmdebstrap) and
    # runs the image's CMD in its filesystem (systemd-nspawn)
    command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
    command -v podman >/dev/null 2>&1 || missing+=(podman)
    command -v systemd-nspawn >/dev/null 2>&1 || missing+=(systemd-container)
fi

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "install: apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "install: missing ${missing[*]}; install them (as root: apt-get install ${missing[*]}) and run again" >&2
        exit 1
    fi
fi

if [ "$profile" = dev ] && ! command -v promtool >/dev/null 2>&1 && [ ! -x "$venv/bin/promtool" ]; then
    # the tests check /metrics with promtool; Debian ships it inside the prometheus server's
    # package, so take the one binary out of the .deb instead of installing a daemon
    echo "install: promtool from Debian's prometheus package"
    scratch=$(mktemp -d)
    (cd "$scratch" && { apt-get download -qq prometheus 2>/dev/null || { apt-get update -qq && apt-get download -qq prometheus; }; } \
        && dpkg-deb -x prometheus_*.deb extracted)
    mkdir -p "$venv/bin"
    cp "$scratch/extracted/usr/bin/promtool" "$venv/bin/promtool"
    rm -rf "$scratch"
fi

requirements=("$root/requirements.txt")
[ "$profile" = dev ] && requirements+=("$root/requirements-dev.txt")
stamp="$venv/.kerasrv-installed-$profile"
digest=$(cat "${requirements[@]}" | sha256sum | cut -c1-16)${TF_PACKAGE:+-gpu}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ]; then
    exit 0
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --upgrade pip
args=()
for file in "${requirements[@]}"; do args+=(-r "$file"); done
if [ -n "${TF_PACKAGE:-}" ]; then
    # same pins, but the CUDA build of TensorFlow
    grep -v '^tensorflow-cpu' "$root/requirements.txt" > "$venv/requirements-gpu.txt"
    args=(-r "$venv/requirements-gpu.txt" "$TF_PACKAGE" "${args[@]:2}")
fi
echo "install: pip install into $venv ($profile)"
"$venv/bin/pip" install --quiet --disable-pip-version-check "${args[@]}"
echo "$digest" > "$stamp"
