# kerasrv: nginx + uWSGI (workers + batching mule) under supervisord, started by `python -m app.launch`.
#
#   docker build -t kerasrv .                                                  # CPU (tensorflow-cpu)
#   docker build -t kerasrv:gpu --build-arg TF_PACKAGE='tensorflow[and-cuda]==2.21.0' .
#   docker run -p 80:80 kerasrv                                                # the bundled demo model
#   docker run -p 80:80 -v $PWD/models:/models -e MODEL_PATH=/models/x.keras kerasrv
#
# Every setting is an environment variable (see app/config.py and README.md). A graceful stop waits
# for in-flight requests (up to REQUEST_TIMEOUT_MS + 10 s; supervisord gives each program 60 s):
# allow more than Docker's default 10 s, e.g. `docker run --stop-timeout 90` or `docker stop -t 90`
# (Kubernetes: terminationGracePeriodSeconds), as systemd/kerasrv.service does.
FROM debian:bookworm-slim

# Empty: tensorflow-cpu from requirements.txt. For the GPU image, e.g. "tensorflow[and-cuda]==2.21.0"
# (scripts/install.sh swaps it in, with the same pins for everything else).
ARG TF_PACKAGE=

# Python from Debian (the same python3.11 as the base of `make run` on bookworm). The same install
# as `make run`: scripts/install.sh apt-installs nginx, gcc, libc6-dev and the Python headers
# (uWSGI builds from source) and pip-installs the pinned requirements into the venv. Copied on its
# own first so that this layer is rebuilt only when the requirements or the script change. The
# build tools are purged in the same layer, once uWSGI is built; libpython3.11, which uWSGI links
# to, is marked manual first, or --auto-remove would take it with python3.11-dev.
COPY requirements.txt requirements-dev.txt /app/
COPY scripts/install.sh /app/scripts/install.sh
# Unpinned apt packages on purpose: bookworm's security updates should reach a rebuilt image.
# hadolint ignore=DL3008
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates; \
    TF_PACKAGE="${TF_PACKAGE}" VENV=/opt/venv PIP_NO_CACHE_DIR=1 bash /app/scripts/install.sh; \
    apt-mark manual libpython3.11; \
    apt-get purge -y --auto-remove gcc libc6-dev python3.11-dev; \
    rm -rf /var/lib/apt/lists/* /root/.cache; \
    /opt/venv/bin/uwsgi --version; \
    /usr/sbin/nginx -v; \
    useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin kerasrv

# As root, app.launch runs uWSGI and the nginx workers as this user; supervisord and the nginx
# master stay root (port 80). RUNTIME_DIR holds the sockets, pid files and the rendered nginx.conf.
ENV KERASRV_USER=kerasrv \
    PORT=80 \
    HOST=0.0.0.0 \
    RUNTIME_DIR=/run/kerasrv \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

# The project itself, with the same uwsgi.ini, supervisord.conf and nginx.conf as `make run`, and
# the bundled demo model (models/digits.keras, the default MODEL_PATH).
COPY . /app
WORKDIR /app

EXPOSE 80

# app.launch forwards SIGTERM to supervisord, which stops nginx with QUIT and uWSGI with TERM
# (both graceful: in-flight requests finish).
STOPSIGNAL SIGTERM

# Ready once the model is loaded and warmed up (503 before). No curl in the slim image: urllib
# raises (exit 1) on an error status or no answer. The start period covers TensorFlow's import
# and the warm-up of every batch size; a success ends it early.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('PORT', '80'), timeout=4)"]

CMD ["/opt/venv/bin/python", "-m", "app.launch"]
