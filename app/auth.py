"""Bearer tokens (AUTH_TOKENS_FILE): every route but the health probes (and /metrics, if
METRICS_OPEN) wants `Authorization: Bearer <token>`.

The file is read again whenever it changes (a rotated Kubernetes Secret swaps a symlink, so the
check follows it), on the next request, by each worker: no restart, no request dropped. A file
that vanishes or cannot be read keeps the last tokens that could be. Every accepted token is
compared in constant time, so the time taken says nothing about which tokens exist.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from pathlib import Path

from flask import Flask, request

from app.errors import ApiError

log = logging.getLogger(__name__)

OPEN_ROUTES = frozenset({"/health/live", "/health/ready"})
SCHEME = "Bearer "


def read_tokens(path: Path) -> tuple[bytes, ...]:
    """One token per line; blank lines and lines starting with # are left out."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return tuple(line.strip().encode() for line in lines if line.strip() and not line.lstrip().startswith("#"))


class TokenFile:
    """The accepted tokens, re-read when the file's identity (inode, size, mtime) changes."""

    def __init__(self, path: Path):
        """`path` was found readable by Settings.from_env; a failure here is a real error."""
        self.path = path
        self._lock = threading.Lock()
        self._seen = self._identity()
        self._tokens = read_tokens(path)

    def _identity(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return st.st_ino, st.st_size, st.st_mtime_ns

    def tokens(self) -> tuple[bytes, ...]:
        try:
            identity = self._identity()
            if identity != self._seen:
                with self._lock:
                    self._tokens, self._seen = read_tokens(self.path), identity
                log.info("AUTH_TOKENS_FILE changed: %d tokens accepted now", len(self._tokens))
        except OSError as exc:
            log.warning("AUTH_TOKENS_FILE %s unreadable (%s); the last tokens read stay in force", self.path, exc)
        return self._tokens

    def accepts(self, given: bytes) -> bool:
        matched = False
        for token in self.tokens():  # no early exit: every comparison is made
            matched |= hmac.compare_digest(given, token)
        return matched


def install(app: Flask, tokens: TokenFile, metrics_open: bool) -> None:
    open_routes = OPEN_ROUTES | ({"/metrics"} if metrics_open else set())

    @app.before_request
    def _require_token() -> None:
        rule = request.url_rule.rule if request.url_rule else None
        if rule in open_routes or request.method == "OPTIONS":  # CORS preflights carry no credentials
            return
        if not bearer_accepted(tokens, request.headers.get("Authorization", "")):
            raise ApiError(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required",
                           headers={"WWW-Authenticate": 'Bearer realm="kerasrv"'})


def bearer_accepted(tokens: TokenFile, header: str) -> bool:
    """Whether an Authorization header carries an accepted bearer token."""
    return header.startswith(SCHEME) and tokens.accepts(header[len(SCHEME):].encode())
