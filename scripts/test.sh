#!/usr/bin/env bash
# The README's test command: install with the test extra, then run the suite (slow tests excluded).
set -euo pipefail
python -m pip install -q -e ".[test,train,bench]"
python -m pytest -q -m "not slow" -n 2 "$@"
