#!/usr/bin/env bash
# Runs the whole test suite. Builds dist/otelmig.pyz (the tests run it), puts
# the pinned dependencies and otelmig into .venv, then runs pytest, which
# starts its own throwaway PostgreSQL (or uses OTELMIG_TEST_URL).
# Extra arguments go to pytest: ./test.sh -k verify
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

stamp=$(cat requirements.lock requirements-dev.lock pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat .venv/.stamp 2>/dev/null)" != "$stamp" ]; then
    rm -rf .venv
    "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.lock -r requirements-dev.lock
    echo "$stamp" > .venv/.stamp
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
./build.sh
exec .venv/bin/python -m pytest "$@"
