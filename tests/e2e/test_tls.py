"""HTTPS through the real stack: verified against its own certificate, TLS 1.2 and 1.3 only,
HTTP/2 by ALPN, the plain-HTTP redirect, and renewed certificates served without a restart."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import warnings
from pathlib import Path

import pytest
import requests

from tests.doubles import self_signed_cert
from tools.local_server import free_port, wait_for
from training.digits import heldout_split, render_png

V = ssl.TLSVersion


def handshake(port: int, cafile: Path, lowest: ssl.TLSVersion, highest: ssl.TLSVersion,
              alpn: list[str] | None = None) -> tuple[str, str | None]:
    """(TLS version, ALPN protocol) of a verified handshake. This client offers TLS 1.0 and 1.1
    too when asked (security level 0), so a refusal is the server's."""
    context = ssl.create_default_context(cafile=str(cafile))
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1 and TLSv1_1 are deprecated: that is the point
        context.minimum_version, context.maximum_version = lowest, highest
    if alpn:
        context.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return tls.version(), tls.selected_alpn_protocol()


def served_certificate(port: int) -> bytes:
    return ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", port)))


def der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def renew(cert: Path, key: Path, name: str) -> None:
    """Replace the pair the way cert-manager or certbot do: new files renamed over the old ones."""
    new_cert, new_key = self_signed_cert(cert.parent, name)
    os.replace(new_key, key)
    os.replace(new_cert, cert)


@pytest.fixture
def certificate(readable_dir):
    return self_signed_cert(readable_dir("kerasrv-tls-"))


def test_https_only_modern_tls_http2_redirect_and_reload_on_sighup(start_server, certificate):
    cert, key = certificate
    redirect = free_port()
    server = start_server({"TLS_CERT_FILE": str(cert), "TLS_KEY_FILE": str(key), "HTTP_REDIRECT_PORT": str(redirect),
                           "TLS_WATCH_S": "3600", "WORKERS": "1", "THREADS": "2"}, name="tls")
    assert server.url.startswith("https://")
    png = render_png(heldout_split()[2][0])
    answer = requests.post(f"{server.url}/predict", files={"image": ("d.png", png)}, verify=str(cert), timeout=30)
    assert answer.status_code == 200 and answer.headers["Strict-Transport-Security"] == "max-age=63072000"

    assert handshake(server.port, cert, V.TLSv1_2, V.TLSv1_3, ["h2", "http/1.1"]) == ("TLSv1.3", "h2")
    assert handshake(server.port, cert, V.TLSv1_2, V.TLSv1_2)[0] == "TLSv1.2"
    for old in (V.TLSv1, V.TLSv1_1):
        with pytest.raises(ssl.SSLError, match="alert protocol version"):  # the server's alert
            handshake(server.port, cert, old, old)

    moved = requests.get(f"http://127.0.0.1:{redirect}/health/live?x=1", allow_redirects=False, timeout=30)
    assert moved.status_code == 308 and moved.headers["Location"] == f"https://127.0.0.1:{server.port}/health/live?x=1"

    # a renewal and SIGHUP: the watch is off (TLS_WATCH_S=3600), so only the signal can reload
    mule = server.mule_pid()
    renew(cert, key, "renewed")
    assert served_certificate(server.port) != der(cert)
    server.process.send_signal(signal.SIGHUP)
    wait_for(lambda: served_certificate(server.port) == der(cert), 30, "the renewed certificate served")
    assert requests.get(f"{server.url}/health/ready", verify=str(cert), timeout=30).status_code == 200
    assert server.mule_pid() == mule  # a reload of nginx, not a restart


def test_a_renewed_certificate_is_picked_up_without_a_signal(start_server, certificate):
    cert, key = certificate
    server = start_server({"TLS_CERT_FILE": str(cert), "TLS_KEY_FILE": str(key), "TLS_WATCH_S": "1",
                           "WORKERS": "1", "THREADS": "2"}, name="tls-watch")
    renew(cert, key, "renewed")
    wait_for(lambda: served_certificate(server.port) == der(cert), 30, "the renewed certificate served")
    assert "the TLS certificate changed" in server.log(200_000)
