#!/usr/bin/env bash
# Every benchmark in --quick mode (CI: each finishes in well under 60 s; the numbers are
# printed and saved under bench/results/, not asserted).  Needs what scripts/test installs
# (flite for the test speech, the package with its extras) and matplotlib (a test
# extra); see bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
for script in micro latency capacity barge_in end_to_end webrtc_calls scaleout audio_api; do
    echo "== bench/${script}.py --quick"
    timeout 120 "$PY" "bench/${script}.py" --quick
done
