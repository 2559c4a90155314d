#!/usr/bin/env bash
# Runs the whole test suite. Builds dist/otelmig.pyz (the tests run it), puts
# the pinned dependencies and otelmig into .venv, then runs pytest, which
# starts its own throwaway PostgreSQL (or uses OTELMIG_TEST_URL).
# Extra arguments go to pytest: ./test.sh -k verify
#
# --jobs N runs the tests in N processes (pytest-xdist), each with its own
# throwaway cluster; default: one per core (nproc), 1 with OTELMIG_TEST_URL
# (one outside server is not shared). --jobs 1 runs them in this process
# (what --pdb needs).
#
# --pg LIST runs the tests that exercise what differs between PostgreSQL
# majors (marker `majors`, chosen in tests/conftest.py MAJORS; docs/ci.md) on
# each PostgreSQL in LIST, one cluster per major: a name from tools/pgbin.py
# (13, 14, 15, 16, 17, 18, 18-minimal), a comma list, `all` or `others` (all
# but the default 15). `-m db` after it runs every database-facing test
# instead. Fails if any of them fails.
# --pg-jobs N runs N majors at once (default 1), each in one process.
#   ./test.sh --pg 17 -k verify      ./test.sh --pg all -q      ./test.sh --pg others --pg-jobs 2
#   ./test.sh --pg 17 -m db          ./test.sh --jobs 1 --pdb -k verify
#
# --dev-db starts a throwaway development server instead (tests/devdb.py, the
# tests' own kind of cluster), prints `POSTGRES_URL=...` for an empty database
# and keeps it until Ctrl-C, which stops it and removes its files
# (docs/authoring.md).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

pg=""
pg_jobs=1
jobs=""
dev_db=""
pytest_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --pg) pg=${2:?"--pg needs a PostgreSQL: 17, 18-minimal, all, others or a comma list"}; shift 2 ;;
        --pg=*) pg=${1#--pg=}; shift ;;
        --pg-jobs) pg_jobs=${2:?"--pg-jobs needs a number"}; shift 2 ;;
        --jobs) jobs=${2:?"--jobs needs a number"}; shift 2 ;;
        --jobs=*) jobs=${1#--jobs=}; shift ;;
        --dev-db) dev_db=1; shift ;;
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
if [ -n "$dev_db" ]; then
    exec .venv/bin/python tests/devdb.py  # alembic and otelmig from .venv work on it; no build needed
fi
./build.sh
if [ -z "$pg" ]; then
    if [ -z "$jobs" ]; then
        jobs=$(nproc 2>/dev/null || echo 1)
        [ -z "${OTELMIG_TEST_URL:-}" ] || jobs=1
    fi
    # worksteal: each worker starts on its own half of the suite (module
    # fixtures stay on one worker) and takes over the other's tail when done.
    parallel=(-n 0)
    [ "$jobs" -le 1 ] || parallel=(-n "$jobs" --dist worksteal)
    exec .venv/bin/python -m pytest "${parallel[@]}" "${pytest_args[@]}"
fi

if [ -n "${OTELMIG_TEST_URL:-}" ]; then
    echo "test.sh: --pg starts its own servers; unset OTELMIG_TEST_URL" >&2
    exit 2
fi
read -r -a majors <<< "$(.venv/bin/python tools/pgbin.py names "$pg")"
.venv/bin/python tools/pgbin.py fetch "${majors[@]}" >/dev/null  # downloads are not part of any major's time
# One major's run, its output in $logs/$major.log and its summary line in $logs/$major.summary.
run_major() {
    local major=$1 log="$logs/$1.log" started rc outcome
    started=$(date +%s)
    set +e
    # its own --basetemp: two sessions at once must not share (or clean up) each other's tmp_path
    OTELMIG_TEST_PG=$major .venv/bin/python -m pytest -n 0 -m majors --basetemp "$logs/$major.tmp" "${pytest_args[@]}" \
        >"$log" 2>&1
    rc=$?
    set -e
    outcome=$(grep -E '(passed|failed|error|skipped|deselected|no tests ran).* in [0-9.]+s' "$log" | tail -1 \
        | sed -E 's/^=+ //; s/ =+$//')
    echo "PostgreSQL $major: exit $rc, $(( $(date +%s) - started ))s wall, ${outcome:-no pytest summary}" \
        >"$logs/$major.summary"
    return "$rc"
}

# --pg-jobs N (default 1) runs N majors at once, each on its own cluster and
# port: on 2 cores two sessions overlap one's subprocess start-ups with the
# other's server work (CI uses 2). Each major's output is printed whole when
# it ends, in the order they end.
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
# Stopped (TERM, INT): end the majors' runs too, not leave them running. A
# pytest process is killed outright: a TERM that lands while a test runs
# otelmig in-process is that command's interruption (a failed test), and the
# session would go on. Its clusters' watchers (tests/pgcluster.py) then stop
# the servers; the test's own otelmig subprocesses end with their server.
stop_runs() {
    local job child
    for job in $(jobs -p); do
        for child in $(pgrep -P "$job" 2>/dev/null || cat /proc/"$job"/task/*/children 2>/dev/null); do
            kill -KILL "$child" 2>/dev/null || true
        done
    done
}
trap 'trap - TERM INT; stop_runs; wait; exit 143' TERM INT
failed=0
running=0
for major in "${majors[@]}"; do
    if [ "$running" -ge "$pg_jobs" ]; then
        wait -n || failed=1
        running=$((running - 1))
    fi
    ( rc=0; run_major "$major" || rc=$?
      echo "=== PostgreSQL $major: the tests marked majors (or as -m says) ==="; cat "$logs/$major.log"
      exit "$rc" ) &
    running=$((running + 1))
done
while [ "$running" -gt 0 ]; do
    wait -n || failed=1
    running=$((running - 1))
done
summary=()
for major in "${majors[@]}"; do
    summary+=("$(cat "$logs/$major.summary" 2>/dev/null || echo "PostgreSQL $major: no result")")
done
echo "=== per major ==="
printf '%s\n' "${summary[@]}"
exit "$failed"
