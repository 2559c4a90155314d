"""Fixtures: one real PostgreSQL per test session, a fresh database per test.

The session (each xdist worker's) starts its own throwaway cluster
(tests/pgcluster.py; the major is OTELMIG_TEST_PG's, default 15) unless
OTELMIG_TEST_URL names a server (a superuser URL); the cluster is always
stopped at the end. Tests that talk to a server are marked `db` (pytest -m
db); those in MAJORS below also `majors`, what ./test.sh --pg N runs.
"""

import datetime
import io
import json
import os
import pathlib
import random
import subprocess
import sys
import time
import urllib.parse
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
        # OTELMIG_TEST_URL's server: its host and port, the role asked for (a test's own role logs in as itself)
        parts = urllib.parse.urlsplit(self.admin_url)
        netloc, user, password = parts.netloc, kwargs.pop("user", None), kwargs.pop("password", None)
        if user is not None:
            netloc = "%s:%s@%s" % (urllib.parse.quote(user, safe=""), urllib.parse.quote(password or "", safe=""),
                                   netloc.rsplit("@", 1)[-1])
        kwargs.pop("host", None)
        query = urllib.parse.urlencode(kwargs) if kwargs else parts.query
        return urllib.parse.urlunsplit((parts.scheme, netloc, "/" + database, query, ""))


# A test using one of these talks to a PostgreSQL server; it gets the `db` marker.
# Tests that start a Cluster themselves carry @pytest.mark.db explicitly.
DB_FIXTURES = frozenset({"server", "db_url", "new_database", "template_database", "tls_cluster"})

# What differs between PostgreSQL majors, and the tests that exercise it: they
# get the `majors` marker, and `./test.sh --pg N` (CI: every supported major but
# the default) runs just them; the default major runs every test. An entry is a
# test (every parameter of it), one parameter of it (`name[id]`) or a module;
# each says why that test depends on the major. An entry that matches no test
# of a collected module fails the run (a renamed test must not drop out
# silently). docs/ci.md explains the choice.
MAJORS = [
    # repair: concurrent builds, REINDEX CONCURRENTLY, partitioned indexes attached, SET NOT NULL
    # proved by a validated CHECK (the server's debug line), each as the major does it
    ("tests/test_repair_drift.py::test_a_dropped_index_is_rebuilt_by_the_pyz_and_a_rerun_has_nothing_to_repair",
     "a concurrent build through the pyz, per major"),
    ("tests/test_repair_drift.py::test_an_invalid_partition_index_left_by_a_failed_build_is_reindexed_then_attached",
     "REINDEX INDEX CONCURRENTLY and ATTACH PARTITION of an index"),
    ("tests/test_repair_drift.py::test_the_set_not_null_after_the_validated_check_scans_no_partition",
     "SET NOT NULL skipping its scan (12+) and the DEBUG1 line saying so"),
    ("tests/test_repair_drift.py::test_a_not_null_repair_whose_validate_meets_a_null_drops_its_helper_and_says_what_stayed_done",
     "a VALIDATE that fails, the failure path on a new connection"),
    # the server itself
    ("tests/test_majors.py", "written for the majors: the build switch, NOT NULL NOT VALID (18), reltuples before 14"),
    ("tests/test_tls.py", "TLS comes with the build (the minimal 18 has none: the refusal is what is tested there)"),
    ("tests/test_field_server.py::test_the_live_server_version_is_read_from_the_startup_packet",
     "server_version as each major reports it"),
    # settings that exist from some major on (session.SETTINGS: idle_session_timeout,
    # client_connection_check_interval 14+, transaction_timeout 17+)
    ("tests/test_field_server.py::test_sessions_get_every_listed_setting_whatever_the_role_says",
     "which settings each kind of session sets depends on the major"),
    ("tests/test_field_server.py::test_the_live_server_accepts_its_settings_message",
     "the settings message names only settings the major has (an unknown one is an error)"),
    ("tests/test_field_server.py::test_role_and_database_settings_do_not_break_any_command[role-idle_session_timeout]",
     "idle_session_timeout is 14+"),
    ("tests/test_field_server.py::test_role_and_database_settings_do_not_break_any_command[role-transaction_timeout]",
     "transaction_timeout is 17+ (skipped before)"),
    ("tests/test_field_server.py::test_lock_connection_survives_idle_session_timeout",
     "idle_session_timeout (14+) against the lock's idle connection"),
    ("tests/test_field_server.py::test_frozen_migrator_releases_the_store_within_the_idle_bound",
     "how the server ends an idle transaction and what the client then sees"),
    ("tests/test_field_server.py::test_every_session_is_utc_whatever_the_role_or_database_says",
     "TimeZone, DateStyle, IntervalStyle, timezone_abbreviations against each build's own time zone data"),
    ("tests/test_field_server.py::test_upgrade_makes_utc_midnight_days_under_a_zone_that_changes_ahead",
     "revision 2's day bounds under a POSIX zone, read back from each major's relpartbound"),
    ("tests/test_field_server.py::test_probes_through_transaction_pooling_leak_no_setting",
     "the major's settings list, through PgBouncer"),
    # the server's own errors
    ("tests/test_field_server.py::test_each_server_error_is_one_line_with_its_exit_code",
     "SQLSTATEs and how a major ends a session (57P01, 25P03) as the driver sees them"),
    ("tests/test_field_server.py::test_connection_limit_is_3_naming_the_limit_with_nothing_changed",
     "the server's connection-limit error"),
    ("tests/test_field_server.py::test_read_only_by_setting_is_a_refusal_naming_it",
     "pg_db_role_setting, read to name where default_transaction_read_only comes from"),
    ("tests/test_cli.py::test_read_only_database_is_8", "read-only transaction error (25006)"),
    ("tests/test_cli.py::test_role_without_privilege_is_8", "privilege errors and has_*_privilege on each major"),
    # concurrent index builds, their progress view, invalid indexes
    ("tests/test_production.py::test_concurrent_helper_really_runs_outside_a_transaction",
     "CREATE INDEX CONCURRENTLY outside a transaction"),
    ("tests/test_production.py::test_failed_concurrent_build_is_repaired", "an INVALID index (pg_index.indisvalid)"),
    ("tests/test_production.py::test_concurrent_build_outwaits_an_old_snapshot",
     "which snapshots a concurrent build waits for changed in 14"),
    ("tests/test_production.py::test_long_index_builds_report_progress",
     "pg_stat_progress_create_index, its columns and phases"),
    ("tests/test_production.py::test_index_builds_get_memory_but_never_less", "maintenance_work_mem"),
    ("tests/test_production.py::test_lock_budget_exhausted_is_9_with_nothing_changed", "lock_timeout's error (55P03)"),
    ("tests/test_production.py::test_sigterm_rolls_back_releases_and_exits_143",
     "pg_locks' advisory rows after an interrupted run"),
    # both revisions on a legacy store, online, offline (psql) and planned
    ("tests/test_migrations.py", "adoption and the round trip of every revision, rows kept, indexes valid"),
    ("tests/test_offline_plan.py", "the offline scripts under psql, and plan's reading of reltuples and locks"),
    ("tests/test_adoption.py::test_adoption_matrix", "the catalog reads that compare what is found with the contract"),
    ("tests/test_adoption.py::test_data_guard_works_without_query_to_xml", "a build without libxml (the minimal 18)"),
    ("tests/test_adoption.py::test_check_reads_the_head_columns_in_one_query", "check's one catalog query"),
    ("tests/test_adoption.py::test_a_member_of_the_owning_role_adopts", "role membership (pg_has_role)"),
    ("tests/test_adoption.py::test_partitioned_spans_is_adopted_with_every_row",
     "an operator's partitioned spans: pg_inherits, pg_partitioned_table"),
    ("tests/test_adoption.py::test_partitioned_plan_sums_the_partitions_and_lists_each", "the same, through plan"),
    ("tests/test_authors.py::test_plain_alembic_matches_otelmig[legacy]", "plain Alembic's own path on each major"),
    # revision 2: the conversion, its catalog reads, downgrade and maintain
    ("tests/test_partitioning.py", "revision 2's conversion: ATTACH, privileges, identity, plan's locks and scans"),
    ("tests/test_rev2_objects.py::test_each_kind_is_carried_over_or_refused_before_any_change",
     "the operator-object matrix reads the catalog per kind of object"),
    ("tests/test_rev2_objects.py::test_the_offline_script_refuses_as_online_does", "the same refusals, in SQL"),
    ("tests/test_rev2_downgrade.py::test_a_partial_upgrade_is_undone_to_the_baseline_layout",
     "the downgrade from each partial conversion reads the half-done layout from the catalog (it stands for the "
     "crash matrices, which run on 15 only: the same catalog reads after every statement, a minute each)"),
    ("tests/test_rev2_downgrade.py::test_index_names_survive_up_and_down", "index names through ATTACH and back"),
    ("tests/test_rev2_downgrade.py::test_a_generated_column_is_moved_back_computed",
     "generated columns (attgenerated; 18 adds virtual ones)"),
    ("tests/test_rev2_downgrade.py::test_objects_depending_on_the_partitioned_spans_are_refused_before_any_change",
     "pg_depend, read to refuse a downgrade"),
    ("tests/test_rev2_cutoff.py::test_the_upgrade_records_what_it_creates", "otelmig_objects, from the catalog"),
    ("tests/test_rev2_cutoff.py::test_bounds_are_utc_midnights_under_the_databases_dst_zone_and_styles",
     "partition bounds under the database's zone and styles"),
    ("tests/test_rev2_cutoff.py::test_too_many_outliers_is_a_refusal_that_names_rows_and_the_fix",
     "timestamps far out (infinity, BC) as each major prints them (the kit's walk of them through every revision, "
     "a minute, runs on 15 only)"),
    ("tests/test_maintain.py::test_creates_the_coming_days_and_a_rerun_creates_nothing", "CREATE TABLE ... PARTITION OF"),
    ("tests/test_maintain.py::test_ahead_sets_how_many_days_and_the_new_partitions_carry_the_indexes",
     "partition indexes attached to the parent's"),
    ("tests/test_maintain.py::test_retain_drops_exactly_the_wholly_old_partitions_and_old_history",
     "DETACH PARTITION ... CONCURRENTLY on 14+, plain DETACH on 13"),
    ("tests/test_maintain.py::test_a_pending_concurrent_detach_is_finalized", "pg_inherits.inhdetachpending (14+)"),
    ("tests/test_maintain.py::test_a_partition_detached_but_not_dropped_is_dropped_on_rerun",
     "the rerun after a detach"),
    ("tests/test_maintain.py::test_rows_in_the_default_partition_move_into_the_new_day", "DEFAULT partition rows"),
    ("tests/test_maintain.py::test_after_the_upgrade_maintain_has_nothing_to_do_and_then_keeps_days_ahead",
     "revision 2 then maintain, on one store"),
    ("tests/test_leftovers.py::test_downgrade_across_revisions_checks_the_whole_path_before_the_first_change",
     "the downgrade's checks across both revisions"),
    ("tests/test_revision_kit.py::test_upgrade_walks_every_revision_from_base", "the kit's walk up"),
    ("tests/test_revision_kit.py::test_downgrade_walks_every_revision_back_to_base", "the kit's walk down"),
    ("tests/test_revision_kit.py::test_offline_script_matches_online", "each revision's offline SQL under psql"),
    ("tests/test_revision_kit.py::test_plan_lists_the_statements_the_upgrade_runs",
     "plan's statements match what each major ran"),
    # verify, check and plan on a converted store: they read the catalog
    ("tests/test_verify.py", "verify's catalog reads: each kind of drift, extras, outliers, read-only role"),
    ("tests/test_check.py", "check's catalog reads, partition bounds, and a server still starting up"),
    # the shipped file, end to end
    ("tests/test_pyz_db.py::test_pyz_adopts_and_round_trips_on_each_python[13]",
     "the built pyz, adopt and round trip (the Python is not what varies here)"),
]


def _in_selection(nodeid: str, entry: str) -> bool:
    return nodeid == entry or nodeid.startswith(entry + "[") or nodeid.startswith(entry + "::")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if DB_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.db)
    # A module collected whole must hold every entry naming it; with node ids
    # on the command line (tests/x.py::name) only those were collected.
    narrowed = any("::" in arg for arg in config.args)
    modules = set() if narrowed else {item.nodeid.split("::", 1)[0] for item in items}
    problems = []
    for entry, _reason in MAJORS:
        chosen = [item for item in items if _in_selection(item.nodeid, entry)]
        if not chosen and entry.split("::", 1)[0] in modules:
            problems.append("%s matches no test" % entry)
        for item in chosen:
            if item.get_closest_marker("db"):  # a test without a server has nothing that varies by major
                item.add_marker(pytest.mark.majors)
            elif "::" in entry:
                problems.append("%s talks to no server" % item.nodeid)
    if problems:
        raise pytest.UsageError("tests/conftest.py MAJORS: " + "; ".join(problems))


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
    # ISO dates: pg8000 reads any other DateStyle wrongly (day and month), also on a server (OTELMIG_TEST_URL)
    # or a role set to another; each test that needs a session's own DateStyle sets it.
    conn = pg8000.dbapi.Connection(user=info.user, host=info.host, port=info.port, database=info.database,
                                   password=info.password, ssl_context=False,
                                   startup_params={"DateStyle": "ISO, YMD"})
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
    create_database(server.admin_url, name)
    yield server.url(name)
    drop_database(server.admin_url, name)


@pytest.fixture
def copy_of(server):
    """copy_of(template) -> URL of a fresh copy of a template database (CREATE
    DATABASE ... TEMPLATE: a store built once per module, copied per case);
    each copy is dropped afterwards."""
    made = []

    def copy(template: str) -> str:
        name = "cp_" + uuid.uuid4().hex[:10]
        sql(server.admin_url, "CREATE DATABASE %s TEMPLATE %s" % (name, template))
        made.append(name)
        return server.url(name)
    yield copy
    for name in made:
        sql(server.admin_url, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)


@pytest.fixture
def new_database(server):
    """More fresh databases on demand (new_database() -> url), each under a unique
    name (tests may run side by side on one server), all dropped afterwards.
    new_database(template=NAME) copies a prepared one (template_database)."""
    made = []

    def make(template: str = None) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        create_database(server.admin_url, name, template)
        made.append(name)
        return server.url(name)
    yield make
    for name in made:
        drop_database(server.admin_url, name)


@pytest.fixture(scope="session")
def template_database(server):
    """template_database(key, prepare) -> the name of a database that prepare(url)
    filled, once per session and UTC day (a store at the head has day partitions
    from today on), to copy with new_database(template=...): CREATE DATABASE ...
    TEMPLATE copies files, faster than loading rows and migrating again. Copy it;
    never change it. Dropped at the end."""
    made = {}

    def get(key: str, prepare) -> str:
        day = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
        if (key, day) not in made:
            name = "tpl_" + uuid.uuid4().hex[:12]
            create_database(server.admin_url, name)
            prepare(server.url(name))
            # A copy needs the template to have no session: end any left (a pool's).
            sql(server.admin_url, "select pg_terminate_backend(pid) from pg_stat_activity "
                                  "where datname = %s and pid <> pg_backend_pid()", (name,))
            made[(key, day)] = name
        return made[(key, day)]
    yield get
    for name in made.values():
        drop_database(server.admin_url, name)


def create_database(admin_url: str, name: str, template: str = None):
    statement = "CREATE DATABASE %s" % name + (" TEMPLATE %s" % template if template else "")
    deadline = time.monotonic() + 60
    while True:
        try:
            sql(admin_url, statement)
            return
        except pg8000.dbapi.DatabaseError as error:
            # 55006: the template's last session is still ending (its client already closed it)
            if not template or "55006" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


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
