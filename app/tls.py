"""HTTPS in nginx (TLS_CERT_FILE, TLS_KEY_FILE, HTTP_REDIRECT_PORT): what app.launch writes into
nginx.conf, and the watch that has nginx reload a renewed certificate.

TLS 1.2 and 1.3 only, forward-secret AEAD ciphers (Mozilla's "intermediate" set), HTTP/2 offered
by ALPN. A renewal (cert-manager, certbot) is picked up by a graceful nginx reload: at once on
SIGHUP to the server, or within TLS_WATCH_S of the files changing. A reload with a key that does not
match the certificate yet (one file copied, the other not) fails and keeps the old pair serving;
the next change reloads again.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from app.config import Settings

log = logging.getLogger(__name__)

PROTOCOLS = "TLSv1.2 TLSv1.3"
CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
))
INDENT = "\n        "


def nginx_values(settings: Settings) -> dict[str, str]:
    """The nginx.conf placeholders for TLS: all empty when it is off."""
    if settings.tls_cert_file is None:
        return {"LISTEN_OPTIONS": "", "TLS_DIRECTIVES": "", "REDIRECT_SERVER": ""}
    directives = [
        f'ssl_certificate "{settings.tls_cert_file}";',
        f'ssl_certificate_key "{settings.tls_key_file}";',
        f"ssl_protocols {PROTOCOLS};",
        f"ssl_ciphers {CIPHERS};",
        "ssl_prefer_server_ciphers off;",
        "ssl_session_cache shared:TLS:10m;",
        "ssl_session_timeout 1d;",
        "ssl_session_tickets off;",
        'add_header Strict-Transport-Security "max-age=63072000" always;',
    ]
    redirect = ""
    if settings.http_redirect_port:
        port = "" if settings.port == 443 else f":{settings.port}"
        redirect = (f"server {{{INDENT}listen {settings.host}:{settings.http_redirect_port};{INDENT}"
                    f"return 308 https://$host{port}$request_uri;\n    }}")
    return {"LISTEN_OPTIONS": " ssl http2", "TLS_DIRECTIVES": INDENT.join(directives), "REDIRECT_SERVER": redirect}


def reload_nginx(runtime: Path) -> None:
    """A graceful reload: new workers with the files as they are now, old ones finish their requests."""
    try:
        os.kill(int((runtime / "nginx.pid").read_text()), signal.SIGHUP)
    except (OSError, ValueError) as exc:
        log.warning("could not reload nginx: %s", exc)


def watch_certificate(settings: Settings, stop: threading.Event) -> None:
    """Reload nginx when the certificate or the key changes (run on a daemon thread)."""
    files = (settings.tls_cert_file, settings.tls_key_file)

    def identity() -> tuple:
        try:
            return tuple((st.st_ino, st.st_size, st.st_mtime_ns) for st in map(os.stat, files))
        except OSError:
            return ()

    seen = identity()
    while not stop.wait(settings.tls_watch_s):
        now = identity()
        if now and now != seen:
            seen = now
            print("kerasrv: the TLS certificate changed; reloading nginx", flush=True)
            reload_nginx(settings.runtime_dir)
