#!/usr/bin/env bash
# Runs the whole test suite. Builds dist/otelmig.pyz (the tests run it), puts
# the pinned dependencies and otelmig into .venv, then runs pytest, which
# starts its own throwaway PostgreSQL (or uses OTELMIG_TEST_URL).
# Extra arguments go to pytest: ./test.sh -k verify
#
# --pg LIST runs only the database-facing tests (marker `db`) on each
# PostgreSQL in LIST, one cluster per major, one after another: a name from
# tools/pgbin.py (13, 14, 15, 16, 17, 18, 18-minimal), a comma list, `all` or
# `others` (all but the default 15). Fails if any of them fails.
#   ./test.sh --pg 17 -k verify      ./test.sh --pg all -q
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

pg=""
pytest_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --pg) pg=${2:?"--pg needs a PostgreSQL: 17, 18-minimal, all, others or a comma list"}; shift 2 ;;
        --pg=*) pg=${1#--pg=}; shift ;;
        *) pytest_args+=("$1"); shift ;;
    esac
done

stamp=$(cat requirements.lock requirements-dev.lock pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat .venv/.stamp 2>/dev/null)" != "$stamp" ]; then
    rm -rf .venv
    "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.lock -r requirements-dev.lock
    echo "$stamp" > .venv/.stamp
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
./build.sh
if [ -z "$pg" ]; then
    exec .venv/bin/python -m pytest "${pytest_args[@]}"
fi

if [ -n "${OTELMIG_TEST_URL:-}" ]; then
    echo "test.sh: --pg starts its own servers; unset OTELMIG_TEST_URL" >&2
    exit 2
fi
read -r -a majors <<< "$(.venv/bin/python tools/pgbin.py names "$pg")"
.venv/bin/python tools/pgbin.py fetch "${majors[@]}" >/dev/null  # downloads are not part of any major's time
summary=()
failed=0
for major in "${majors[@]}"; do
    echo "=== PostgreSQL $major: database-facing tests ==="
    log=$(mktemp)
    started=$(date +%s)
    set +e
    OTELMIG_TEST_PG=$major .venv/bin/python -m pytest -m db "${pytest_args[@]}" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    outcome=$(grep -E '(passed|failed|error|skipped|deselected|no tests ran).* in [0-9.]+s' "$log" | tail -1 \
        | sed -E 's/^=+ //; s/ =+$//')
    rm -f "$log"
    summary+=("PostgreSQL $major: exit $rc, $(( $(date +%s) - started ))s wall, ${outcome:-no pytest summary}")
    [ "$rc" -eq 0 ] || failed=1
done
echo "=== per major ==="
printf '%s\n' "${summary[@]}"
exit "$failed"
