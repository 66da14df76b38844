"""bench.run.measure_kind: a server that dies in the middle of a row is started once more and that
row measured anew; a second death, or an error from a server still alive, ends the kind."""

from __future__ import annotations

import argparse

import pytest

from bench import run


class FakeServer:
    def __init__(self) -> None:
        self.command = ["fake-server"]
        self.dead = False
        self.stopped = False

    def alive(self) -> bool:
        return not self.dead

    def log(self, size: int = 0) -> str:
        return "Signal (11) received."

    def stop(self) -> int:
        self.stopped = True
        return -11 if self.dead else 0


@pytest.fixture
def servers(monkeypatch) -> list[FakeServer]:
    started: list[FakeServer] = []

    def start_server(kind, args, probe):
        started.append(FakeServer())
        return started[-1]

    monkeypatch.setattr(run, "start_server", start_server)
    return started


def measured_by(servers: list[FakeServer], deaths: dict[tuple[int, int], Exception], rows: list) -> object:
    """A measure_row that raises deaths[(server index, concurrency)], killing that server unless
    the exception is a ValueError (an error from a server still alive)."""

    def measure_row(server, concurrency, args, ceiling, load, *, kind, bodies, problems):
        key = (servers.index(server), concurrency)
        if key in deaths:
            server.dead = not isinstance(deaths[key], ValueError)
            raise deaths[key]
        rows.append(key)
        return {"concurrency": concurrency}

    return measure_row


def measure(servers, monkeypatch, deaths) -> tuple[dict, list]:
    rows: list = []
    monkeypatch.setattr(run, "measure_row", measured_by(servers, deaths, rows))
    result = run.measure_kind("triton", argparse.Namespace(concurrency=[1, 16, 64]), None, None, [b"body"])
    return result, rows


def test_a_server_that_dies_is_started_again_and_its_row_measured_anew(servers, monkeypatch):
    result, rows = measure(servers, monkeypatch, {(0, 16): ConnectionError("refused")})
    assert rows == [(0, 1), (1, 16), (1, 64)]
    assert [row["concurrency"] for row in result["rows"]] == [1, 16, 64]
    assert len(servers) == 2 and all(server.stopped for server in servers)
    assert len(result["problems"]) == 1 and "c=16: the server died (ConnectionError: refused)" in result["problems"][0]
    assert result["crash_log"] == "Signal (11) received."
    assert result["exit_code"] == 0


def test_a_second_death_ends_the_kind(servers, monkeypatch):
    result, rows = measure(servers, monkeypatch, {(0, 16): ConnectionError("refused"), (1, 64): OSError("gone")})
    assert rows == [(0, 1), (1, 16)]
    assert result["problems"][-1] == "aborted: OSError: gone"
    assert len(servers) == 2 and result["exit_code"] == -11


def test_an_error_from_a_live_server_is_not_retried(servers, monkeypatch):
    result, rows = measure(servers, monkeypatch, {(0, 16): ValueError("bad answer")})
    assert rows == [(0, 1)]
    assert result["problems"] == ["aborted: ValueError: bad answer"]
    assert len(servers) == 1
