"""WSGI entry point for uWSGI (`module = app.wsgi:application`), loaded in each worker after the fork.

uWSGI ignores SIGHUP in a worker while it loads the app (lazy-apps), yet a graceful stop
(SIGTERM -> gracefully_kill_them_all) sends each worker one SIGHUP and then waits for it without
a timeout. A worker still loading its model (INFERENCE_MODE=worker takes seconds) would never
hear it, and the whole server would hang until killed. So a worker that is stopped while it
loads ends at once, having taken no request: SIGHUP ends it while the app loads, and a stop
that began before this handler was in place is seen in the marker app.launch writes first.
uWSGI installs its own SIGHUP handler right after.
"""

import os
import signal


def _stopped_while_loading(signum: int, frame: object) -> None:
    os._exit(0)


signal.signal(signal.SIGHUP, _stopped_while_loading)

from app import create_app, metrics  # noqa: E402 - after the handler: the import is part of the load
from app.config import Settings  # noqa: E402

settings = Settings.from_env()
application = create_app(settings)
if settings.stop_marker.exists():
    os._exit(0)
metrics.PROCESS_STARTS.labels(settings.model_name, "worker").inc()
