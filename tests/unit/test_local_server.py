"""The helpers every end-to-end test and the benchmark use to start and stop processes."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tools.local_server import descendants, kill_tree, wait_for


def alive(pid: int) -> bool:
    """Running, stopped or sleeping; not gone and not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_kill_tree_leaves_no_process_of_the_tree_behind():
    # a parent that restarts its child when it dies (as nginx's master does) and a grandchild:
    # killing the root alone would leave both children and the grandchild running
    root = subprocess.Popen(["bash", "-c", "bash -c 'sleep 600 & wait' & while :; do sleep 600; done"])

    def whole_tree() -> list[int] | None:
        found = descendants(root.pid)
        return found if len(found) >= 4 else None

    try:
        tree = wait_for(whole_tree, 30, "root, both children and the grandchild")
        kill_tree(root.pid)
        root.wait(30)
        wait_for(lambda: not any(alive(pid) for pid in tree), 30, "every process of the tree gone")
    finally:
        if root.poll() is None:
            root.kill()
            root.wait()
