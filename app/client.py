"""A Python client for kerasrv, and a command line that sends a folder of images through it.

    python -m app.client http://host:8080 photos/ --concurrency 8 --top-k 3 --out results.jsonl

Sends every image (files, folders, or `-` for one image on stdin), shows progress, retries a 503
after its Retry-After, and prints a summary: count, errors, requests/s, p50/p99 latency. In
Python, `Client(url).predict(image_bytes)` is the same call the README's examples use.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import requests

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


class ServerError(Exception):
    """The server answered with an error; `status` and `code` are its HTTP status and stable code."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code = status, code


@dataclass
class Client:
    """One server; safe to share between threads (one requests.Session per thread)."""

    url: str
    token: str | None = None
    retries: int = 5  # how many 503s (each after its Retry-After) before giving up
    timeout: float = 60.0
    verify: str | bool = True  # a CA bundle path for a self-signed certificate
    _local: threading.local = field(default_factory=threading.local, repr=False)

    def predict(self, image: bytes, top_k: int | None = None) -> list[dict]:
        """The best classes for one encoded image: [{"label", "index", "score"}, ...]."""
        params = {"top_k": top_k} if top_k else None
        return self._post("/predict", data=image, params=params,
                          headers={"Content-Type": "application/octet-stream"})["predictions"]

    def predict_instances(self, instances: list) -> list:
        """Raw model outputs for JSON rows (tensors, or {input name: value} for several inputs)."""
        return self._post("/predict", json={"instances": instances})["predictions"]

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.verify = self.verify
            if self.token:
                session.headers["Authorization"] = f"Bearer {self.token}"
        return session

    def _post(self, path: str, **kwargs) -> dict:
        response = self._session().post(self.url.rstrip("/") + path, timeout=self.timeout, **kwargs)
        for _ in range(self.retries):
            if response.status_code != 503:
                break
            time.sleep(_retry_after(response))
            response = self._session().post(self.url.rstrip("/") + path, timeout=self.timeout, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text[:200], "code": "not_json"}
        if response.status_code != 200:
            raise ServerError(response.status_code, body.get("code", "error"), body.get("error", ""))
        return body


def _retry_after(response: requests.Response) -> float:
    try:
        return min(30.0, max(0.05, float(response.headers.get("Retry-After", "1"))))
    except ValueError:
        return 1.0


def find_images(sources: list[str]) -> Iterator[tuple[str, bytes | Path]]:
    """(name, path or bytes) for each image: files as given, folders walked (sorted), `-` = stdin."""
    for source in sources:
        if source == "-":
            yield "-", sys.stdin.buffer.read()
            continue
        path = Path(source)
        if path.is_dir():
            for found in sorted(path.rglob("*")):
                if found.is_file() and found.suffix.lower() in IMAGE_SUFFIXES:
                    yield str(found), found
        elif path.is_file():
            yield str(path), path
        else:
            raise SystemExit(f"{source}: no such file or folder")


@dataclass
class Summary:
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0

    def line(self, seconds: float) -> str:
        count = len(self.latencies_ms) + self.errors
        if not self.latencies_ms:
            return f"{count} sent, {self.errors} errors"
        ordered = sorted(self.latencies_ms)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        return (f"{count} sent, {self.errors} errors, {count / seconds:.1f} req/s,"
                f" p50 {statistics.median(ordered):.1f} ms, p99 {p99:.1f} ms")


def run(args: argparse.Namespace) -> int:
    client = Client(args.url, token=args.token or os.environ.get("KERASRV_TOKEN"), retries=args.retries,
                    verify=args.cacert or True)
    images = list(find_images(args.sources))
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    summary, started, done = Summary(), time.perf_counter(), 0

    def one(name: str, image: bytes | Path) -> dict:
        data = image.read_bytes() if isinstance(image, Path) else image
        began = time.perf_counter()
        try:
            result = {"file": name, "predictions": client.predict(data, args.top_k)}
        except (ServerError, requests.RequestException) as exc:
            result = {"file": name, "error": str(exc)}
        result["ms"] = round((time.perf_counter() - began) * 1000, 2)
        return result

    try:
        with ThreadPoolExecutor(args.concurrency) as pool:
            for future in as_completed([pool.submit(one, name, image) for name, image in images]):
                result = future.result()
                if "error" in result:
                    summary.errors += 1
                else:
                    summary.latencies_ms.append(result["ms"])
                out.write(json.dumps(result) + "\n")
                done += 1
                if not args.quiet:
                    print(f"\r{done}/{len(images)}", end="", file=sys.stderr, flush=True)
    finally:
        if out is not sys.stdout:
            out.close()
    if not args.quiet:
        print(file=sys.stderr)
    print(summary.line(time.perf_counter() - started), file=sys.stderr)
    return 1 if summary.errors else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.client", description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the server, e.g. http://localhost:8080")
    parser.add_argument("sources", nargs="+", help="image files, folders, or - for stdin")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    parser.add_argument("--top-k", type=int, default=None, help="classes per image (server default if unset)")
    parser.add_argument("--out", help="write one JSON line per image here (default: stdout)")
    parser.add_argument("--retries", type=int, default=5, help="retries of a 503 after Retry-After (default 5)")
    parser.add_argument("--token", help="bearer token (or KERASRV_TOKEN)")
    parser.add_argument("--cacert", help="CA certificate to verify an https:// server with")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
