"""Helpers shared by several test modules.

They live here, not in a test module, because importing one test module from
another makes pytest see that module's tests and fixtures twice. Fixtures are
in conftest.py; this module holds plain functions and constants only.
"""

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time

from conftest import REPO, catalog_snapshot, connect, run_cli, sql
from otelmig.revisions import KNOWN_REVISIONS
from otelmig.settings import resolve_conninfo
from pgcluster import bindir

# The first revision: it creates or adopts the store. Tests of adoption and
# of its downgrade stop there, so a rollback undoes exactly it.
BASELINE = KNOWN_REVISIONS[0]

# A loaded 2-core machine can stall a process for seconds: a wait for a
# condition gives up only after this long (it returns as soon as it holds).
DEADLINE_SECONDS = 60

TRACE_COLUMNS_LEGACY = ["trace_id", "service_name", "root_span_name", "start_ts", "end_ts", "duration_ms",
                        "span_count", "environment", "tenant_id", "ingest_source", "ingested_at"]
SPAN_COLUMNS_LEGACY = ["id", "trace_id", "span_id", "parent_span_id", "name", "kind", "service_name", "start_ts",
                       "end_ts", "duration_ms", "status", "attributes::text", "environment", "tenant_id"]
RENAMED = {"start_ts": "start_time", "end_ts": "end_time", "status": "status_code",
           "attributes::text": "span_attributes::text"}


def head_names(columns):
    """The legacy column list under the head's names."""
    return [RENAMED.get(c, c) for c in columns]


def verify_ok(url, schema="otel"):
    result = run_cli("verify", "--format", "json", "--schema", schema, url=url)
    assert result.code == 0, result.out + result.err
    assert result.json()["problems"] == []
    return result.json()


def shape(url, schema="otel"):
    """Columns (name, type, nullability, default) and indexes, order-free."""
    snap = catalog_snapshot(url, schema)
    columns = sorted((t, c, ty, nn, (d or "").replace('"%s".' % schema, "").replace("%s." % schema, ""))
                     for t, c, ty, nn, d in snap["columns"])
    return {"columns": [c for c in columns if not c[0].startswith("alembic_version")],
            "indexes": sorted(i for i in snap["indexes"] if not i[0].startswith("alembic_version"))}


def one_line(text: str) -> bool:
    """The promise for bad input: exactly one line on stderr, no traceback."""
    return len(text.strip().splitlines()) == 1 and "Traceback" not in text


def error_line(err: str) -> str:
    """The one `otelmig: ...` (`otelmig.pyz: ...` from the pyz) error line that ends a failed run which printed
    progress first (waiting, retrying); no traceback."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith(("otelmig: ", "otelmig.pyz: "))]  # as run
    assert len(errors) == 1 and err.strip().endswith(errors[0]), err
    return errors[0]


def run_all(url, statements):
    """Run each statement in one connection (autocommit: each its own transaction)."""
    conn = connect(url)
    try:
        cursor = conn.cursor()
        for statement in statements:
            cursor.execute(statement)
    finally:
        conn.close()


def parse_prometheus(text):
    """{'metric{label="value"}': number} of a Prometheus text exposition; every line must parse."""
    metrics = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        match = re.fullmatch(r'([a-z_]+\{[a-z_]+="[^"]*"\}) (-?[0-9.e+]+)', line)
        assert match, line
        metrics[match.group(1)] = float(match.group(2))
    return metrics


def wait_for(condition, what: str, timeout: float = DEADLINE_SECONDS, interval: float = 0.05):
    """condition()'s first truthy value; AssertionError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(interval)


# -- offline scripts ------------------------------------------------------------

# psql's exit status when a statement of a script fails under ON_ERROR_STOP
# (psql's manual, "Exit Status"); 1 and 2 mean psql itself or the connection failed.
PSQL_SCRIPT_ERROR = 3


def psql_file(url: str, path: str) -> subprocess.CompletedProcess:
    info = resolve_conninfo(url, {})
    psql = shutil.which("psql") or os.path.join(bindir(), "psql")
    env = dict(os.environ, PGPASSWORD=info.password)
    return subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", info.host, "-p", str(info.port),
                           "-U", info.user, "-d", info.database, "-f", path],
                          env=env, capture_output=True, text=True)


def write_sql(tmp_path, *args) -> str:
    """`otelmig ARGS` (an offline --sql run) written to a file; its path."""
    result = run_cli(*args, env={"POSTGRES_URL": "postgresql://nobody:never@127.0.0.1:1/none"})
    assert result.code == 0, result.err
    assert "never" not in result.out
    path = tmp_path / "review.sql"
    path.write_text(result.out)
    return str(path)


# -- otelmig as a separate process, and what it waits for ------------------------

def spawn(url, *args, env=None):
    environ = dict(os.environ, POSTGRES_URL=url, **(env or {}))
    return subprocess.Popen([sys.executable, "-m", "otelmig"] + list(args), cwd=REPO, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def statement_running(url, pattern) -> bool:
    rows = sql(url, "select count(*) from pg_stat_activity where application_name = 'otelmig' "
                    "and state = 'active' and query ilike %s", (pattern,))
    return bool(rows[0][0])


def wait_for_statement(url, pattern, timeout=DEADLINE_SECONDS):
    """Returns once otelmig runs a statement like pattern (polled often: it may be short)."""
    wait_for(lambda: statement_running(url, pattern), "otelmig to run " + pattern, timeout, interval=0.005)


def wait_for_waiting_alter(url, timeout=DEADLINE_SECONDS):
    wait_for(lambda: sql(url, "select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
                              "and query ilike 'ALTER TABLE%%'")[0][0],
             "the upgrade to wait for its lock", timeout)


def hold_access_share(url):
    """An open transaction that has read spans: a rename of spans must wait for it."""
    holder = connect(url, autocommit=False)
    holder.cursor().execute("select count(*) from otel.spans")
    return holder


@contextlib.contextmanager
def upgrade_blocked_on_spans(url):
    """An `upgrade` subprocess whose rename of spans waits behind a reader's open
    transaction; the reader ends when the block does."""
    holder = hold_access_share(url)
    try:
        proc = spawn(url, "upgrade", "--lock-timeout", "30")
        wait_for_waiting_alter(url)
        yield proc
    finally:
        holder.rollback()
        holder.close()
