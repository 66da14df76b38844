"""Overload in open loop: the short version of `make reliability`'s cases (bench/reliability.py).

MobileNetV2 on a 224x224 photo keeps the capacity near a hundred requests a second on 2 cores,
so 10x is an arrival rate one asyncio client can keep (bench/open_loop.py). Capacity is measured
first, closed loop (wrk), on the same server; each case then checks what the issue asks: excess
shed as fast 503s, goodput kept, the accepted answered in time, quick answers again soon after.
"""

from __future__ import annotations

import pytest

from bench.reliability import capacity, overload, photo_224, served


@pytest.fixture(scope="module")
def loaded(mobilenet_path):
    body = photo_224()
    with served(mobilenet_path, "overload") as server:
        yield server, body, capacity(server.url, body)


@pytest.mark.parametrize("factor", [2, 10])
def test_overload_is_shed_fast_and_goodput_kept(loaded, factor):
    server, body, rps = loaded
    case = overload(server, body, rps, factor, seconds=6)
    print(case.name, case.figures)
    assert case.passed, (case.checks, case.figures)
