"""Settings read from environment variables: the one place that names them and their defaults.

Imported by the launcher, the Flask workers and the mule alike, so it must stay free of
TensorFlow (the uWSGI master and the workers never import it).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL = PROJECT_ROOT / "models" / "digits.keras"

PREPROCESS_MODES = ("unit", "symmetric", "caffe", "torch", "none")
RESIZE_MODES = ("stretch", "crop", "pad")
INFERENCE_MODES = ("mule", "worker")
MODEL_COMPILE_CHOICES = ("auto", "off")


class ConfigError(ValueError):
    """A configuration variable holds a value the server cannot run with."""


def _int(env: dict[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _int_or_auto(env: dict[str, str], name: str) -> int:
    """A count of at least 1, or `auto` (the default): 0, for the code that chooses it."""
    raw = env.get(name, "").strip().lower()
    if raw in ("", "auto"):
        return 0
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{name} must be auto or an integer >= 1, got {raw!r}")
    return int(raw)


def _choice(env: dict[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _flag(env: dict[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be on or off (1/0, true/false), got {value!r}")


def _origins(raw: str) -> tuple[str, ...]:
    """CORS_ORIGINS: `*`, or comma-separated origins such as https://app.example.com:8443."""
    origins = tuple(part.strip().rstrip("/") for part in raw.split(",") if part.strip())
    for origin in origins:
        if origin != "*" and not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?", origin):
            raise ConfigError(f"CORS_ORIGINS: {origin!r} is not '*' or an origin like https://app.example.com")
    return origins


def _readable_file(env: dict[str, str], name: str) -> Path | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    path = Path(raw).expanduser().resolve()
    if not path.is_file() or not os.access(path, os.R_OK):
        raise ConfigError(f"{name} {path} is not a readable file")
    return path


def _buckets(raw: str, max_batch: int) -> tuple[int, ...]:
    """Batch sizes the model is compiled and warmed for; each batch is padded up to one.

    Default: 1, 2, 3, 4, 6, 8, 12, 16, ... (steps of 1.5x or 1.33x), so padding wastes at most a
    third of a batch while a handful of shapes covers everything up to MAX_BATCH_SIZE.
    """
    if raw.strip():
        try:
            sizes = sorted({int(part) for part in raw.split(",") if part.strip()})
        except ValueError:
            raise ConfigError(f"BATCH_BUCKETS must be comma-separated integers, got {raw!r}") from None
        if not sizes or sizes[0] < 1:
            raise ConfigError("BATCH_BUCKETS must hold positive integers")
        sizes = [s for s in sizes if s < max_batch]
    else:
        sizes, power = [], 1
        while power < max_batch:
            sizes.append(power)
            if power >= 2 and power * 3 // 2 < max_batch:
                sizes.append(power * 3 // 2)
            power *= 2
    return tuple(sorted({*sizes, max_batch}))


@dataclass(frozen=True)
class Settings:
    """Every tunable of the server; see the configuration table in README.md."""

    host: str = "0.0.0.0"
    port: int = 8080
    model_path: Path = DEMO_MODEL
    model_name: str = "digits"
    model_version: int = 0  # 0: the highest complete version
    model_settle_s: int = 2
    model_poll_s: int = 0  # 0: no polling
    labels_path: Path | None = None
    preprocess: str = "unit"
    resize_mode: str = "stretch"
    inference_mode: str = "mule"
    workers: int = 4
    threads: int = 4
    max_upload_mb: int = 10
    max_image_pixels: int = 50_000_000
    max_inputs_per_request: int = 64
    max_string_bytes: int = 1024
    default_top_k: int = 5
    max_batch_size: int = 16
    batch_timeout_ms: int = 0
    batch_autotune: bool = True
    batch_buckets: tuple[int, ...] = field(default=(1, 2, 3, 4, 6, 8, 12, 16))
    max_queue_rows: int = 256
    model_concurrency: int = 0  # 0: auto, as many as served more under live load (concurrency.py)
    model_thread_spinning: bool = False
    model_threads: int = 0  # 0: TensorFlow's default, one per core
    model_compile: str = "auto"  # auto: XLA at the batch sizes where warm-up timed it faster
    request_timeout_ms: int = 30_000
    slot_mb: int = 8
    listen_backlog: int = 128
    runtime_dir: Path = PROJECT_ROOT / ".run"
    log_level: str = "info"
    log_format: str = "text"
    auth_tokens_file: Path | None = None
    metrics_open: bool = False
    cors_origins: tuple[str, ...] = ()
    rate_limit_rps: int = 0
    rate_limit_burst: int = 20
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    http_redirect_port: int = 0
    tls_watch_s: int = 5

    @property
    def n_slots(self) -> int:
        """One shared-memory slot per worker thread: no allocator and no lock needed."""
        return self.workers * self.threads

    @property
    def slot_bytes(self) -> int:
        return self.slot_mb * 1024 * 1024

    @property
    def mule_socket(self) -> Path:
        return self.runtime_dir / "mule.sock"

    @property
    def batch_costs_dir(self) -> Path:
        """Where a mule keeps its measured batch costs for the next one (app/inference/batch_costs.py)."""
        return self.runtime_dir / "batch-costs"

    @property
    def stop_marker(self) -> Path:
        """Written by app.launch before it passes a stop on (see app/wsgi.py)."""
        return self.runtime_dir / "stopping"

    @property
    def harakiri_s(self) -> int:
        """uWSGI kills a worker stuck this long: past the app's own deadline, so the app answers 504 first."""
        return self.request_timeout_ms // 1000 + 10

    @property
    def proxy_timeout_s(self) -> int:
        """nginx gives up on uWSGI after this: past harakiri, so nginx never cuts a live answer."""
        return self.harakiri_s + 5

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        model_path = Path(env.get("MODEL_PATH", "").strip() or DEMO_MODEL).expanduser()
        if not model_path.is_absolute():
            model_path = (Path.cwd() / model_path).resolve()
        # the file name without its extension ("resnet-v1.5.keras" -> "resnet-v1.5"); a SavedModel directory has none
        stem = model_path.name if model_path.is_dir() else model_path.stem
        labels_raw = env.get("LABELS_PATH", "").strip()
        if labels_raw:
            labels_path: Path | None = Path(labels_raw).expanduser().resolve()
        else:
            beside = model_path.parent / f"{stem}.labels.txt"
            labels_path = beside if beside.is_file() else None
        max_batch = _int(env, "MAX_BATCH_SIZE", 16, minimum=1)
        runtime_raw = env.get("RUNTIME_DIR", "").strip()
        tls_cert, tls_key = _readable_file(env, "TLS_CERT_FILE"), _readable_file(env, "TLS_KEY_FILE")
        if (tls_cert is None) != (tls_key is None):
            raise ConfigError("TLS_CERT_FILE and TLS_KEY_FILE go together: set both or neither")
        redirect_port = _int(env, "HTTP_REDIRECT_PORT", 0)
        if redirect_port and tls_cert is None:
            raise ConfigError("HTTP_REDIRECT_PORT redirects to HTTPS: it needs TLS_CERT_FILE and TLS_KEY_FILE")
        return cls(
            host=env.get("HOST", "").strip() or "0.0.0.0",
            port=_int(env, "PORT", 8080, minimum=1),
            model_path=model_path,
            model_name=env.get("MODEL_NAME", "").strip() or stem,
            model_version=_int(env, "MODEL_VERSION", 0),
            model_settle_s=_int(env, "MODEL_SETTLE_S", 2),
            model_poll_s=_int(env, "MODEL_POLL_S", 0),
            labels_path=labels_path,
            preprocess=_choice(env, "PREPROCESS", "unit", PREPROCESS_MODES),
            resize_mode=_choice(env, "RESIZE_MODE", "stretch", RESIZE_MODES),
            inference_mode=_choice(env, "INFERENCE_MODE", "mule", INFERENCE_MODES),
            workers=_int(env, "WORKERS", 4, minimum=1),
            threads=_int(env, "THREADS", 4, minimum=1),
            max_upload_mb=_int(env, "MAX_UPLOAD_MB", 10, minimum=1),
            max_image_pixels=_int(env, "MAX_IMAGE_PIXELS", 50_000_000, minimum=1),
            max_inputs_per_request=_int(env, "MAX_INPUTS_PER_REQUEST", 64, minimum=1),
            max_string_bytes=_int(env, "MAX_STRING_BYTES", 1024, minimum=1),
            default_top_k=_int(env, "DEFAULT_TOP_K", 5, minimum=1),
            max_batch_size=max_batch,
            batch_timeout_ms=_int(env, "BATCH_TIMEOUT_MS", 0),
            batch_autotune=_flag(env, "BATCH_AUTOTUNE", True),
            batch_buckets=_buckets(env.get("BATCH_BUCKETS", ""), max_batch),
            max_queue_rows=_int(env, "MAX_QUEUE_ROWS", 256, minimum=1),
            model_concurrency=_int_or_auto(env, "MODEL_CONCURRENCY"),
            model_thread_spinning=_flag(env, "MODEL_THREAD_SPINNING", False),
            model_threads=_int(env, "MODEL_THREADS", 0),
            model_compile=_choice(env, "MODEL_COMPILE", "auto", MODEL_COMPILE_CHOICES),
            request_timeout_ms=_int(env, "REQUEST_TIMEOUT_MS", 30_000, minimum=1),
            slot_mb=_int(env, "SLOT_MB", 8, minimum=1),
            listen_backlog=_int(env, "LISTEN_BACKLOG", 128, minimum=1),
            runtime_dir=Path(runtime_raw).resolve() if runtime_raw else PROJECT_ROOT / ".run",
            log_level=_choice(env, "LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
            log_format=_choice(env, "LOG_FORMAT", "text", ("text", "json")),
            auth_tokens_file=_readable_file(env, "AUTH_TOKENS_FILE"),
            metrics_open=_flag(env, "METRICS_OPEN", False),
            cors_origins=_origins(env.get("CORS_ORIGINS", "")),
            rate_limit_rps=_int(env, "RATE_LIMIT_RPS", 0),
            rate_limit_burst=_int(env, "RATE_LIMIT_BURST", 20),
            tls_cert_file=tls_cert,
            tls_key_file=tls_key,
            http_redirect_port=redirect_port,
            tls_watch_s=_int(env, "TLS_WATCH_S", 5, minimum=1),
        )
