"""Revision 2's upgrade (issue 19, items 1-3): the cutoff, outlying rows, time.

- No state an interrupted conversion leaves rejects a write once the
  revision's repair_steps ran (a crash after every statement, then repair,
  then rows stamped now, +3 and +30 days go in), every row stays visible, and
  every object the upgrade made was recorded before it existed.
- The cutoff is the server's clock only (the UTC midnight MARGIN_DAYS after
  now): outlying rows (far future, 'infinity', year 56890) are moved into the
  partitioned spans, '-infinity' and BC rows stay in the history; too many of
  them is a refusal that names some and the fix, nothing changed.
- Every bound is a UTC midnight whatever TimeZone (one with a daylight-saving
  change ahead, a half-hour one), DateStyle, IntervalStyle and
  timezone_abbreviations the database or the psql session running `--sql` has.
"""

import contextlib
import datetime
import importlib.util
import os
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import REPO, catalog_snapshot, connect, load_legacy, run_cli, run_pyz, sql
from helpers import BASELINE, write_sql
from otelmig.ddl import CRASH_AFTER_ENV, OnlineRunner, SchemaSQL, Statement
from otelmig.schema import RECORD_TABLE, SPANS_PARTITIONING as LAYOUT
from otelmig.settings import resolve_conninfo
from pgcluster import bindir

REVISION_FILE = os.path.join(REPO, "migrations", "versions", "826630e38563_partition_spans.py")
MIDNIGHT = datetime.time(0, 0)


def revision_module():
    spec = importlib.util.spec_from_file_location("rev2_under_test", REVISION_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REV2 = revision_module()


# -- helpers -----------------------------------------------------------------------

def utc_sql(url, statement, params=()):
    """A query read in UTC and ISO, whatever the database's own settings."""
    conn = connect(url)
    try:
        cursor = conn.cursor()
        cursor.execute("set timezone = 'UTC'")
        cursor.execute("set datestyle = 'ISO, YMD'")
        cursor.execute(statement, params)
        return [list(row) for row in cursor.fetchall()] if cursor.description else None
    finally:
        conn.close()


def bounds(url):
    """{partition: (from, to)} as UTC text; None for MINVALUE, 'DEFAULT' for the default partition."""
    rows = utc_sql(url, """
        select c.relname::text, pg_get_expr(c.relpartbound, c.oid)
        from pg_inherits i join pg_class c on c.oid = i.inhrelid
        where i.inhparent = 'otel.spans'::regclass order by 1""")
    found = {}
    for name, bound in rows:
        if bound == "DEFAULT":
            found[name] = "DEFAULT"
            continue
        low, high = bound.split("FROM (")[1].split(") TO (")
        found[name] = tuple(None if v == "MINVALUE" else v.strip("'") for v in (low, high.rstrip(")")))
    return found


def utc_today(url):
    return utc_sql(url, "select (now() at time zone 'UTC')::date")[0][0]


def as_utc(text):
    """'2026-12-04 00:00:00+00' -> datetime; the offset must be +00."""
    assert text.endswith("+00"), text
    return datetime.datetime.strptime(text[:-3], "%Y-%m-%d %H:%M:%S")


def assert_day_layout(url):
    """History up to the UTC midnight MARGIN_DAYS after today; one partition per
    UTC day from there to today + AHEAD_DAYS, each named by its day; DEFAULT."""
    found = bounds(url)
    today = utc_today(url)
    cutoff = datetime.datetime.combine(today + datetime.timedelta(days=REV2.MARGIN_DAYS), MIDNIGHT)
    assert found.pop(LAYOUT.default) == "DEFAULT"
    low, high = found.pop(LAYOUT.history)
    assert low is None and as_utc(high) == cutoff, (high, cutoff)
    days = [today + datetime.timedelta(days=d) for d in range(REV2.MARGIN_DAYS, REV2.AHEAD_DAYS + 1)]
    assert sorted(found) == [LAYOUT.day_partition(day) for day in days], sorted(found)
    for day in days:
        low, high = found[LAYOUT.day_partition(day)]
        start = datetime.datetime.combine(day, MIDNIGHT)
        assert (as_utc(low), as_utc(high)) == (start, start + datetime.timedelta(days=1)), (day, low, high)


def insert_span(cursor, span_id, start_time_sql):
    cursor.execute("insert into otel.spans (trace_id, span_id, name, service_name, start_time) "
                   "values ('t-' || %%s, %%s, 'op', 'svc-1', %s)" % start_time_sql, (span_id, span_id))


def insert_legacy_span(url, span_id, when_sql, column="start_ts"):
    sql(url, "insert into otel.spans (trace_id, span_id, name, service_name, %s) "
             "values ('t-' || %%s, %%s, 'op', 'svc-3', %s)" % (column, when_sql), (span_id, span_id))


def where_is(url, span_id):
    return sql(url, "select tableoid::regclass::text from otel.spans where span_id = %s", (span_id,))[0][0]


def runner_on(conn, schema="otel"):
    """OnlineRunner on an autocommit pg8000 connection: each statement its own transaction."""
    def scalar(statement):
        cursor = conn.cursor()
        cursor.execute(statement)
        return cursor.fetchone()[0]

    def rows(statement):
        cursor = conn.cursor()
        cursor.execute(statement)
        return cursor.fetchall()

    return OnlineRunner(exec_scalar=scalar, exec_rows=rows, execute=lambda s: conn.cursor().execute(s),
                        outside=contextlib.nullcontext, names=SchemaSQL(schema))


def run_repair(url):
    conn = connect(url)
    try:
        runner_on(conn).run(REV2.repair_steps(SchemaSQL("otel")))
    finally:
        conn.close()


def otelmig_process(url, *args, env=None):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES", "OTEL"))}
    environ.update(POSTGRES_URL=url, **(env or {}))
    return subprocess.run([sys.executable, "-m", "otelmig", *args], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=300)


def clone(server, template_url):
    name = "t_clone_%d" % len(CLONES)
    template = resolve_conninfo(template_url, {}).database
    sql(server.admin_url, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)
    sql(server.admin_url, "CREATE DATABASE %s TEMPLATE %s" % (name, template))
    CLONES.append(name)
    return server.url(name)


CLONES = []


@pytest.fixture
def clones(server):
    yield lambda template_url: clone(server, template_url)
    while CLONES:
        sql(server.admin_url, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % CLONES.pop())


def recorded(url):
    if sql(url, "select to_regclass('otel.%s')" % RECORD_TABLE) == [[None]]:
        return set()
    return {tuple(r) for r in sql(url, "select object_kind, object_name, origin from otel.%s" % RECORD_TABLE)}


def objects_of_the_revision(url):
    """What this revision makes that exists now: (kind, name) as the record names it."""
    made = set()
    if sql(url, "select to_regclass('otel.%s')" % REV2.HISTORY_PKEY) != [[None]]:
        made.add(("index", REV2.HISTORY_PKEY))
    if sql(url, "select to_regclass('otel.spans_outliers')") != [[None]]:
        made.add(("table", "spans_outliers"))
    parent = sql(url, "select coalesce(to_regclass('otel.%s'), case when exists (select 1 from pg_class where "
                      "oid = to_regclass('otel.spans') and relkind = 'p') then 'otel.spans'::regclass end)"
                      % REV2.NEW_PARENT)[0][0]
    if parent:
        for (name,) in sql(url, "select inhrelid::regclass::text from pg_inherits where inhparent = %s::regclass",
                           (parent,)):
            made.add(("partition", name.split(".", 1)[1]))
    return made


# -- 1: an interrupted conversion, then the repair ------------------------------------

def test_after_a_crash_at_any_statement_the_repair_leaves_nothing_that_rejects_a_write(db_url, clones):
    load_legacy(db_url, traces=300)
    insert_legacy_span(db_url, "far-future", "timestamptz '2099-03-01 12:00+00'")
    insert_legacy_span(db_url, "ahead-3d", "now() + interval '3 days'")
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    total = sql(db_url, "select count(*) from otel.spans")[0][0]
    cutoff_left_behind = 0
    for k in range(1, 80):
        url = clones(db_url)
        crashed = otelmig_process(url, "upgrade", env={CRASH_AFTER_ENV: str(k)})
        if crashed.returncode == 0:
            break
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
        plain_with_cutoff = sql(url, "select exists (select 1 from pg_constraint where conname = %s "
                                     "and conrelid = 'otel.spans'::regclass) and exists (select 1 from pg_class "
                                     "where oid = 'otel.spans'::regclass and relkind = 'r')",
                                (REV2.CUTOFF_CHECK,))[0][0]
        cutoff_left_behind += plain_with_cutoff
        what = "killed after statement %d" % k
        # Every row stays visible through otel.spans, repaired or not.
        assert sql(url, "select count(*) from otel.spans")[0][0] == total, what
        # What the revision made was recorded before it existed.
        kinds = {(kind, name) for kind, name, origin in recorded(url) if origin == "created"}
        assert objects_of_the_revision(url) <= kinds, (what, objects_of_the_revision(url) - kinds)
        run_repair(url)
        run_repair(url)  # idempotent
        conn = connect(url)
        try:
            cursor = conn.cursor()
            column = "start_time" if sql(url, "select count(*) from pg_attribute where attname = 'start_time' "
                                              "and attrelid = 'otel.spans'::regclass")[0][0] else "start_ts"
            for offset in ("0", "3", "30"):
                cursor.execute("insert into otel.spans (trace_id, span_id, name, service_name, %s) values "
                               "('w', %%s, 'op', 'svc-1', now() + make_interval(days => %s))" % (column, offset),
                               ("w" + offset,))
        finally:
            conn.close()
        assert sql(url, "select count(*) from otel.spans")[0][0] == total + 3, what
        assert sql(url, "select to_regclass('otel.spans_outliers')") == [[None]], what
        # ... and the interrupted upgrade, rerun, converges.
        rerun = otelmig_process(url, "upgrade")
        assert rerun.returncode == 0, (what, rerun.stderr)
        assert sql(url, "select count(*) from otel.spans")[0][0] == total + 3, what
        assert where_is(url, "far-future") == "otel." + LAYOUT.default, what
    else:
        pytest.fail("the upgrade never finished")
    assert cutoff_left_behind, "no crash point left the cutoff CHECK on a plain spans: the matrix proves nothing"


def test_the_upgrade_records_what_it_creates(db_url):
    load_legacy(db_url, traces=50)
    insert_legacy_span(db_url, "far-future", "timestamptz '2099-03-01 12:00+00'")
    assert run_cli("upgrade", url=db_url).code == 0
    record = recorded(db_url)
    assert ("index", REV2.HISTORY_PKEY, "created") in record
    partitions = sql(db_url, "select c.relname::text from pg_inherits i join pg_class c on c.oid = i.inhrelid "
                             "where i.inhparent = 'otel.spans'::regclass")
    assert len(partitions) >= 3
    for (name,) in partitions:
        assert ("partition", name, "created") in record, name
    # the holding table is gone, and so is its record
    assert not [r for r in record if r[1] == "spans_outliers"]


# -- 3: outliers --------------------------------------------------------------------

def test_outlying_rows_do_not_move_the_cutoff_and_land_in_the_partitioned_spans(db_url, pyz):
    load_legacy(db_url, traces=100)
    assert run_pyz(pyz, "upgrade", BASELINE, url=db_url).code == 0
    for span_id, when in [("y2099", "timestamptz '2099-01-01 00:00+00'"), ("inf", "'infinity'"),
                          ("y56890", "timestamptz '56890-01-01 00:00+00'"), ("ahead5", "now() + interval '5 days'"),
                          ("minf", "'-infinity'"), ("bc", "timestamptz '0044-03-15 12:00+00 BC'"),
                          ("today", "now()")]:
        insert_legacy_span(db_url, span_id, when, column="start_time")
    before = sql(db_url, "select count(*) from otel.spans")[0][0]
    result = run_pyz(pyz, "upgrade", url=db_url)
    assert result.code == 0, result.err
    assert_day_layout(db_url)
    assert sql(db_url, "select count(*) from otel.spans")[0][0] == before
    assert where_is(db_url, "y2099") == "otel." + LAYOUT.default
    assert where_is(db_url, "inf") == "otel." + LAYOUT.default
    assert where_is(db_url, "y56890") == "otel." + LAYOUT.default
    ahead = utc_sql(db_url, "select ((now() + interval '5 days') at time zone 'UTC')::date")[0][0]
    assert where_is(db_url, "ahead5") == "otel." + LAYOUT.day_partition(ahead)
    for span_id in ("minf", "bc", "today"):
        assert where_is(db_url, span_id) == "otel." + LAYOUT.history, span_id
    assert sql(db_url, "select to_regclass('otel.spans_outliers')") == [[None]]
    assert sql(db_url, "select count(*) from pg_constraint where conname = %s", (REV2.CUTOFF_CHECK,)) == [[0]]


def test_too_many_outliers_is_a_refusal_that_names_rows_and_the_fix(db_url):
    load_legacy(db_url, traces=20)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    sql(db_url, "insert into otel.spans (trace_id, span_id, name, service_name, start_time) "
                "select 'x', 'x' || g, 'op', 'svc-' || (g %% 3), timestamptz '2099-01-01 00:00+00' + g * interval '1 s' "
                "from generate_series(1, %d) g" % (REV2.MAX_OUTLIERS + 1))
    snapshot = catalog_snapshot(db_url)
    plan = run_cli("plan", url=db_url)
    assert "REFUSE" in plan.out and "2099-01-01" in plan.out, plan.out + plan.err
    result = run_cli("upgrade", url=db_url)
    assert result.code == 8, result.err
    assert "2099-01-01 00:00:01" in result.err and "id " in result.err, result.err
    assert "delete" in result.err.lower() and "rerun" in result.err, result.err
    assert catalog_snapshot(db_url) == snapshot
    assert sql(db_url, "select count(*) from pg_constraint where conname = %s", (REV2.CUTOFF_CHECK,)) == [[0]]


# -- 2: time, whatever the session --------------------------------------------------

def dst_zone_ahead(url):
    """A POSIX zone (UTC-3, UTC-2 in summer) whose summer starts in 3 days and ends in 6, by Julian day."""
    doy = utc_sql(url, "select extract(doy from now() at time zone 'UTC')::int")[0][0]
    start, end = ((doy + 2) % 365) + 1, ((doy + 5) % 365) + 1
    return "AAA3BBB,J%d/2,J%d/2" % (start, end)


SESSION_SETTINGS = {"DateStyle": "SQL, DMY", "IntervalStyle": "sql_standard", "timezone_abbreviations": "India"}


def test_bounds_are_utc_midnights_under_the_databases_dst_zone_and_styles(db_url):
    load_legacy(db_url, traces=50)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    database = resolve_conninfo(db_url, {}).database
    zone = dst_zone_ahead(db_url)
    for name, value in dict(SESSION_SETTINGS, TimeZone=zone).items():
        sql(db_url, "ALTER DATABASE %s SET %s = '%s'" % (database, name, value))
    assert sql(db_url, "show timezone") == [[zone]]  # the server takes the rule form
    result = run_cli("upgrade", url=db_url)
    assert result.code == 0, result.err
    assert_day_layout(db_url)


# Asia/Kolkata with the Default abbreviations: 'IST' read back means Israel, not India.
@pytest.mark.parametrize("zone, abbreviations", [("Asia/Kolkata", "Default"), ("dst", "India")])
def test_the_sql_script_under_psql_sessions_zone_and_styles_gives_utc_midnights(db_url, tmp_path, zone,
                                                                                  abbreviations):
    load_legacy(db_url, traces=50)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    zone = dst_zone_ahead(db_url) if zone == "dst" else zone
    path = write_sql(tmp_path, "upgrade", "--sql")
    settings = dict(SESSION_SETTINGS, timezone_abbreviations=abbreviations)
    options = " ".join("-c %s=%s" % (k, v.replace(" ", "\\ ")) for k, v in settings.items())
    applied = psql_with(db_url, path, PGTZ=zone, PGOPTIONS=options)
    assert applied.returncode == 0, applied.stderr
    assert_day_layout(db_url)


def psql_with(url, path, **env):
    info = resolve_conninfo(url, {})
    psql = shutil.which("psql") or os.path.join(bindir(), "psql")
    environ = dict(os.environ, PGPASSWORD=info.password, **env)
    return subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", info.host, "-p", str(info.port),
                           "-U", info.user, "-d", info.database, "-f", path], env=environ, capture_output=True,
                          text=True)


def test_plain_alembic_under_the_databases_dst_zone_and_styles_gives_utc_midnights(db_url):
    load_legacy(db_url, traces=50)
    insert_legacy_span(db_url, "y2099", "timestamptz '2099-01-01 00:00+00'")
    database = resolve_conninfo(db_url, {}).database
    for name, value in dict(SESSION_SETTINGS, TimeZone=dst_zone_ahead(db_url)).items():
        sql(db_url, "ALTER DATABASE %s SET %s = '%s'" % (database, name, value))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES", "OTEL"))}
    env.update(POSTGRES_URL=db_url, PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    proc = subprocess.run(["alembic", "upgrade", "head"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert_day_layout(db_url)
    assert where_is(db_url, "y2099") == "otel." + LAYOUT.default


def test_outliers_that_arrive_after_the_refusal_stop_the_cutoff_step_with_nothing_changed(db_url):
    """The refusal counts before any change; rows written after it are counted
    again under the cutoff step's lock, and an excess rolls that step back."""
    load_legacy(db_url, traces=20)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    sql(db_url, "insert into otel.spans (trace_id, span_id, name, service_name, start_time) "
                "select 'x', 'x' || g, 'op', 'svc-' || (g %% 3), timestamptz '2099-01-01 00:00+00' + g * interval '1 s' "
                "from generate_series(1, %d) g" % (REV2.MAX_OUTLIERS + 1))
    n = SchemaSQL("otel")
    snapshot = catalog_snapshot(db_url)
    conn = connect(db_url)
    try:
        runner_on(conn).run([Statement(n.create_record_table())])
        with pytest.raises(Exception) as raised:
            runner_on(conn).run([REV2._cutoff_step(n, REV2.Layout(n))])
    finally:
        conn.close()
    assert "54000" in str(raised.value) and "more than %d rows" % REV2.MAX_OUTLIERS in str(raised.value)
    assert catalog_snapshot(db_url) == snapshot
    assert sql(db_url, "select count(*) from otel.spans where start_time >= '2099-01-01 00:00+00'") == [[REV2.MAX_OUTLIERS + 1]]


def test_a_held_row_moved_back_before_the_cutoff_during_the_run_lands_in_the_history(db_url):
    """A writer that corrects the start_time of a row the cutoff step held
    aside (a future-dated span fixed to now) while the run goes on: the switch
    puts the row in the history partition, not in DEFAULT (where the attach
    of the history would fail on it: adversary finding F3)."""
    load_legacy(db_url, traces=20)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    for span_id, when in [("y2099", "timestamptz '2099-01-01 00:00+00'"), ("ahead9", "now() + interval '9 days'")]:
        insert_legacy_span(db_url, span_id, when, column="start_time")
    before = sql(db_url, "select count(*) from otel.spans")[0][0]
    steps = REV2.upgrade_steps(SchemaSQL("otel"))
    cutoff_at = [i for i, step in enumerate(steps) if (getattr(step, "label", "") or "").startswith("the cutoff")]
    assert len(cutoff_at) == 1
    conn = connect(db_url)
    try:
        runner_on(conn).run(steps[:cutoff_at[0] + 1])
        assert sql(db_url, "select count(*) from only otel.spans_outliers")[0][0] == 2
        # the writer's correction, through otel.spans as a worker would make it
        sql(db_url, "update otel.spans set start_time = now() - interval '1 hour' where span_id = 'y2099'")
        runner_on(conn).run(steps[cutoff_at[0] + 1:])
    finally:
        conn.close()
    assert sql(db_url, "select relkind::text from pg_class where oid = 'otel.spans'::regclass") == [["p"]]
    assert sql(db_url, "select count(*) from otel.spans")[0][0] == before
    assert where_is(db_url, "y2099") == "otel." + LAYOUT.history
    ahead = utc_sql(db_url, "select ((now() + interval '9 days') at time zone 'UTC')::date")[0][0]
    assert where_is(db_url, "ahead9") in ("otel." + LAYOUT.day_partition(ahead), "otel." + LAYOUT.default)


def test_plan_counts_every_outlier_the_conversion_holds_a_null_service_included(db_url):
    """plan reports the rows the conversion will hold aside, found per service
    through the index: rows without a service_name (a store that dropped the
    NOT NULL) are outliers too (adversary finding F5)."""
    load_legacy(db_url, traces=20)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    sql(db_url, "alter table otel.spans alter column service_name drop not null")
    sql(db_url, "insert into otel.spans (trace_id, span_id, name, service_name, start_time) "
                "select 't', 'nulls-' || g, 'op', null, now() + interval '5 days' from generate_series(1, 3) g")
    insert_legacy_span(db_url, "named", "now() + interval '6 days'", column="start_time")
    result = run_cli("plan", "--format", "json", url=db_url)
    assert result.code == 5, result.err
    assert '"count": 4' in result.out, result.out
