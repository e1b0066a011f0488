#!/usr/bin/env bash
# The README's test command: install with the test extra and Debian's chromium (the HTML views' and
# report.html's browser tests open them in it), then run the suite (slow tests excluded).
set -euo pipefail
python -m pip install -q -e ".[test,train,bench,docs]"
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
            || export JAXDIAG_CHROMIUM_INSTALL="apt-get install -y chromium failed"
    else
        export JAXDIAG_CHROMIUM_INSTALL="not root or no apt-get: install Debian's chromium by hand"
    fi
fi
python -m pytest -q -m "not slow" -n 2 --dist loadfile "$@"
