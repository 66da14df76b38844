"""Faults under load and hostile input: the short version of `make reliability`'s cases (bench/reliability.py).

Eight clients post a photo while a process is killed or hung, the model file is deleted or the
runtime directory's disk fills up. Each case checks that the clients saw only 200s and 503s (or
a dropped connection where the process holding it died), that only 200s come again, and that
nothing stayed wedged. The demo model keeps it quick: a respawned mule is back in seconds.
"""

from __future__ import annotations

import os
import signal

import pytest

from app.config import PROJECT_ROOT
from bench import reliability
from bench.reliability import Case, fault, photo_224, served, signal_one

MODEL = PROJECT_ROOT / "models" / "digits.keras"


@pytest.fixture(scope="module")
def body() -> bytes:
    return photo_224()


@pytest.fixture(scope="module")
def server():
    with served(MODEL, "faults") as running:
        yield running


def check(case: Case) -> None:
    print(case.name, case.figures)
    assert case.passed, (case.checks, case.figures)


def test_kill_the_mule(server, body):
    check(fault(server, body, "kill -9 the mule", signal_one(lambda: [server.mule_pid()], signal.SIGKILL)))
    # the new mule warmed up beside a flood of 503s: it took its batch limit from the first one's timings
    assert "a respawn times nothing" in server.log(tail=10**9)


def test_kill_a_worker(server, body):
    check(fault(server, body, "kill -9 a worker", signal_one(server.worker_pids, signal.SIGKILL)))


def test_kill_an_nginx_worker(server, body):
    check(fault(server, body, "kill -9 an nginx worker",
                signal_one(lambda: reliability.nginx_workers(server), signal.SIGKILL)))


def test_hang_the_mule_for_five_seconds(server, body):
    check(fault(server, body, "SIGSTOP the mule 5 s", reliability.stop_mule_for(server, 5)))


def test_kill_the_uwsgi_master(body):
    check(reliability.master_killed(MODEL, body))


def test_delete_the_model_file(body):
    check(reliability.model_deleted(MODEL, body))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting the small tmpfs that fills up needs root")
def test_fill_the_runtime_directorys_disk(body):
    check(reliability.disk_full(MODEL, body))


def test_hostile_input_gets_json_errors_and_memory_stays_bounded(server, body):
    check(reliability.hostile_input(server, body, seconds=10))
