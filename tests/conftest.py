"""Fixtures: one real PostgreSQL per test session, a fresh database per test.

The session starts its own throwaway cluster (tests/pgcluster.py; the major
is OTELMIG_TEST_PG's, default 15) unless OTELMIG_TEST_URL names a server (a
superuser URL); the cluster is always stopped at the end. Tests that talk to a
server are marked `db` (pytest -m db): ./test.sh --pg N re-runs just those.
"""

import io
import json
import os
import pathlib
import random
import subprocess
import sys
import uuid
from typing import NamedTuple

import pg8000.dbapi
import pytest

from otelmig import redact, settings as settings_mod
from otelmig.cli import main

sys.path.insert(0, os.path.dirname(__file__))
from pgcluster import Cluster, bindir, selected  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYZ = os.path.join(REPO, "dist", "otelmig.pyz")
LEGACY_SQL = os.path.join(REPO, "docs", "legacy_schema.sql")  # the tests load exactly the documented layout
TEST_URL_ENV = "OTELMIG_TEST_URL"


class Server(NamedTuple):
    cluster: object  # Cluster, or None for OTELMIG_TEST_URL
    admin_url: str

    def url(self, database: str, **kwargs) -> str:
        if self.cluster is not None:
            return self.cluster.url(database, **kwargs)
        base = self.admin_url.rsplit("/", 1)[0]
        return "%s/%s" % (base, database)


# A test using one of these talks to a PostgreSQL server; it gets the `db` marker.
# Tests that start a Cluster themselves carry @pytest.mark.db explicitly.
DB_FIXTURES = frozenset({"server", "db_url", "new_database", "tls_cluster"})


def pytest_collection_modifyitems(items):
    for item in items:
        if DB_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.db)


def pytest_report_header(config):
    if os.environ.get(TEST_URL_ENV):
        return "postgresql: %s" % TEST_URL_ENV
    try:
        return "postgresql: %s (%s)" % (selected(), bindir())
    except RuntimeError as error:  # the db tests will fail on it; the others still run
        return "postgresql: %s" % error


@pytest.fixture(scope="session")
def server():
    if os.environ.get(TEST_URL_ENV):
        yield Server(None, os.environ[TEST_URL_ENV])
        return
    cluster = Cluster().start()
    try:
        yield Server(cluster, cluster.url("postgres"))
    finally:
        cluster.stop()


def connect(url: str, autocommit: bool = True):
    info = settings_mod.resolve_conninfo(url, {})
    conn = pg8000.dbapi.Connection(user=info.user, host=info.host, port=info.port, database=info.database,
                                   password=info.password, ssl_context=False)
    conn.autocommit = autocommit
    return conn


def sql(url: str, statement: str, params=()):
    """Run one statement; return all rows (or None)."""
    conn = connect(url)
    try:
        cursor = conn.cursor()
        cursor.execute(statement, params)
        return [list(row) for row in cursor.fetchall()] if cursor.description else None
    finally:
        conn.close()


@pytest.fixture
def db_url(server):
    """A fresh, empty database for this test; dropped afterwards."""
    name = "t_" + uuid.uuid4().hex[:12]
    sql(server.admin_url, "CREATE DATABASE %s" % name)
    yield server.url(name)
    drop_database(server.admin_url, name)


@pytest.fixture
def new_database(server):
    """More fresh databases on demand (new_database() -> url), each under a unique
    name (tests may run side by side on one server), all dropped afterwards."""
    made = []

    def make() -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        sql(server.admin_url, "CREATE DATABASE %s" % name)
        made.append(name)
        return server.url(name)
    yield make
    for name in made:
        drop_database(server.admin_url, name)


def drop_database(admin_url: str, name: str):
    try:
        sql(admin_url, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)
    except pg8000.dbapi.DatabaseError as error:
        if "42601" not in str(error):
            raise
        # PostgreSQL 12 (kept only to test that otelmig refuses it) has no WITH (FORCE).
        sql(admin_url, "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s", (name,))
        sql(admin_url, "DROP DATABASE IF EXISTS %s" % name)


def load_legacy(url: str, schema: str = "otel", traces: int = 0, spans_per_trace: int = 5, seed: int = 7):
    """The old worker's layout (spec/legacy_schema.sql) with generated rows."""
    with open(LEGACY_SQL) as handle:
        ddl = handle.read().replace("otel.", "%s." % schema).replace("SCHEMA IF NOT EXISTS otel",
                                                                      "SCHEMA IF NOT EXISTS %s" % schema)
    conn = connect(url)
    try:
        cursor = conn.cursor()
        ddl = "\n".join(line.split("--", 1)[0] for line in ddl.splitlines())
        for statement in ddl.split(";"):
            if statement.strip():
                cursor.execute(statement)
        if traces:
            insert_legacy_rows(cursor, schema, traces, spans_per_trace, seed)
    finally:
        conn.close()


def insert_legacy_rows(cursor, schema: str, traces: int, spans_per_trace: int, seed: int):
    # Server-side generation: thousands of rows in one statement each.
    cursor.execute("select setseed(%s)", (seed / 100.0,))
    cursor.execute("""
        insert into {s}.traces (trace_id, service_name, root_span_name, start_ts, end_ts, duration_ms, span_count,
                                environment, tenant_id, ingest_source)
        select md5('t' || g), 'svc-' || (g %% 20), 'GET /' || g, timestamptz '2026-01-01' + g * interval '1 second',
               timestamptz '2026-01-01' + g * interval '1 second' + interval '250 ms', 250.0, %s,
               case when g %% 3 = 0 then 'prod' end, 'tenant-' || (g %% 4), 'otlp'
        from generate_series(1, %s) g""".format(s=schema), (spans_per_trace, traces))
    cursor.execute("""
        insert into {s}.spans (trace_id, span_id, parent_span_id, name, kind, service_name, start_ts, end_ts,
                               duration_ms, status, attributes, environment, tenant_id)
        select md5('t' || g), substr(md5('s' || g || '.' || k), 1, 16),
               case when k > 1 then substr(md5('s' || g || '.' || (k - 1)), 1, 16) end,
               'op-' || k, 'SPAN_KIND_SERVER', 'svc-' || (g %% 20),
               timestamptz '2026-01-01' + g * interval '1 second' + k * interval '1 ms',
               case when k %% 7 <> 0 then timestamptz '2026-01-01' + g * interval '1 second' + k * interval '2 ms' end,
               k * 1.5, case when k %% 5 = 0 then 'STATUS_CODE_ERROR' else 'STATUS_CODE_OK' end,
               jsonb_build_object('http.route', '/r/' || k, 'n', g), 'prod', 'tenant-' || (g %% 4)
        from generate_series(1, %s) g, generate_series(1, %s) k""".format(s=schema), (traces, spans_per_trace))


class Result(NamedTuple):
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


def run_cli(*args, env=None, url=None) -> Result:
    """otelmig in-process, as a command line would run it."""
    environ = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root")}
    if url:
        environ[settings_mod.ENV_URL] = url
    environ.update(env or {})
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), env=environ, out=out, err=err)
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def pyz() -> pathlib.Path:
    """The built dist/otelmig.pyz (./test.sh builds it before pytest; built here
    only when missing). The one pyz fixture: every module that runs the pyz uses it."""
    if not os.path.exists(PYZ):
        subprocess.run([os.path.join(REPO, "build.sh")], check=True, cwd=REPO)
    return pathlib.Path(PYZ)


def run_pyz(pyz_path, *args, url=None, env=None, python=None, timeout=120) -> Result:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES", "OTEL"))}
    if url:
        environ[settings_mod.ENV_URL] = url
    environ.update(env or {})
    proc = subprocess.run([python or sys.executable, pyz_path] + list(args), capture_output=True, text=True,
                          env=environ, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def table_rows(url: str, schema: str, table: str, columns) -> list:
    return sql(url, "select %s from %s.%s order by 1" % (", ".join(columns), schema, table))


def catalog_snapshot(url: str, schema: str = "otel") -> dict:
    """Everything about a schema's shape that migrations could touch. The run
    history (otelmig_runs) is left out: no revision touches it, every run of a
    migration command writes it, and it outlives a rollback (tests/test_history.py)."""
    columns = sql(url, """
        select c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid)
        from pg_attribute a join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
        left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
        where n.nspname = %s and a.attnum > 0 and not a.attisdropped and c.relkind in ('r', 'p', 'v', 'i', 'I')
          and c.relname not in ('otelmig_runs', 'otelmig_runs_pkey')
        order by 1, 2""", (schema,))
    indexes = sql(url, "select indexname, indexdef from pg_indexes where schemaname = %s "
                       "and tablename <> 'otelmig_runs' order by 1", (schema,))
    return {"columns": [tuple(r) for r in columns], "indexes": [tuple(r) for r in indexes]}


@pytest.fixture(autouse=True)
def _fresh_redactor():
    """Secrets registered by one test must not mask another test's output."""
    redact.forget_all()
    yield


@pytest.fixture
def rng():
    return random.Random(1234)
