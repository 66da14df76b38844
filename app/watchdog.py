"""supervisord event listener: when nginx or uWSGI fails for good, stop supervisord.

A server with half its processes is worse than none: exiting lets Docker, Kubernetes or
systemd restart the whole thing. The marker file tells app.launch to exit non-zero.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from app.launch import FATAL_MARKER


def main() -> None:
    marker = Path(os.environ["KERASRV_RUNTIME_DIR"]) / FATAL_MARKER
    while True:
        sys.stdout.write("READY\n")
        sys.stdout.flush()
        header = dict(token.split(":", 1) for token in sys.stdin.readline().split())
        payload = sys.stdin.read(int(header["len"]))
        if header.get("eventname") == "PROCESS_STATE_FATAL":
            print(f"kerasrv watchdog: {payload.strip()}: stopping everything", file=sys.stderr, flush=True)
            marker.touch()
            os.kill(os.getppid(), signal.SIGTERM)
        sys.stdout.write("RESULT 2\nOK")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
