"""WSGI entry point for uWSGI (`module = app.wsgi:application`), loaded in each worker after the fork.

uWSGI ignores SIGHUP in a worker while it loads the app (lazy-apps), yet a graceful stop
(SIGTERM -> gracefully_kill_them_all) sends each worker one SIGHUP and then waits for it without
a timeout. A worker still loading its model (INFERENCE_MODE=worker takes seconds) would never
hear it and the whole server would hang until killed. So while the app loads, SIGHUP ends the
worker at once: it has not taken a request yet, so nothing is lost. uWSGI installs its own
handler right after.
"""

import os
import signal

from app import create_app


def _stopped_while_loading(signum: int, frame: object) -> None:
    os._exit(0)


signal.signal(signal.SIGHUP, _stopped_while_loading)
application = create_app()
