#!/usr/bin/env bash
# `make test-stress`: evidence that the suite does not flake. The whole suite FULL_RUNS times in a
# row (default 5), then the mule protocol, batching and end-to-end tests STRESSED_RUNS times
# (default 3) while stress-ng keeps every core busy. Stops at the first failure.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=${VENV:-$root/.venv}/bin/python
full_runs=${FULL_RUNS:-5}
stressed_runs=${STRESSED_RUNS:-3}
started=$SECONDS

for run in $(seq "$full_runs"); do
    echo "test-stress: whole suite, run $run of $full_runs"
    "$python" -m pytest -q -p no:cacheprovider tests
done

cores=$(nproc)
stress-ng --cpu "$cores" --timeout 3h --quiet &
hog=$!
trap 'kill "$hog" 2>/dev/null || true; wait "$hog" 2>/dev/null || true' EXIT
for run in $(seq "$stressed_runs"); do
    echo "test-stress: protocol, batching and e2e tests beside $cores busy CPU hogs, run $run of $stressed_runs"
    "$python" -m pytest -q -p no:cacheprovider tests/unit/test_mule_protocol.py tests/unit/test_batching.py
    "$python" -m pytest -q -p no:cacheprovider -m e2e tests
done
echo "test-stress: $full_runs whole runs and $stressed_runs stressed runs passed in $(( (SECONDS - started) / 60 )) min"
