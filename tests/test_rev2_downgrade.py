"""Revision 2's downgrade (issue 19, item 5): nothing that could stop it is
found after its first change, no write made during it is lost or undone, no
row is ever missing from otel.spans, any interruption converges by rerunning
`downgrade` or `upgrade`, and names come back as they were. It also undoes a
partially upgraded store (interrupted before the switch) to the baseline's
layout exactly. docs/revision2-downgrade.md says what writers experience.
"""

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

import partition_layout
from conftest import REPO, catalog_snapshot, connect, load_legacy, run_cli, run_pyz, sql
from helpers import BASELINE, DEADLINE_SECONDS, error_line, one_line, spawn, verify_ok, wait_for, wait_for_statement
from otelmig.ddl import CRASH_AFTER_ENV, OnlineRunner, SchemaSQL
from otelmig.errors import RefusedError
from otelmig.revisions import HEAD_REVISION

# The revision these tests are about: they stop there, so a later head changes nothing they do.
REVISION2 = "826630e38563"

SPAN_ROW = "select id, span_id, name, start_time, tenant_id from otel.spans"


def revision2():
    import importlib.util
    path = os.path.join(REPO, "migrations", "versions", "826630e38563_partition_spans.py")
    spec = importlib.util.spec_from_file_location("revision2_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def converted_with_rows_in_days(url, traces=50, later=0, to=REVISION2):
    """A store converted by revision 2 (upgraded to `to`), in service: the legacy rows in the history partition,
    `later` spans in the day partitions of the three days before today (the
    conversion aged by partition_layout.age_conversion: a store converted
    days ago) and one in DEFAULT."""
    load_legacy(url, traces=traces)
    result = run_cli("upgrade", to, url=url)
    assert result.code == 0, result.err
    if later:
        first = partition_layout.age_conversion(url, days_ago=3 + revision2().MARGIN_DAYS)
        sql(url, "insert into otel.spans (trace_id, span_id, name, service_name, start_time) "
                 "select 'later', 'later-' || g, 'op', 'svc', timestamptz '%s 00:00:00+00' + g * (interval '3 days' / %s) "
                 "from generate_series(0, %s - 1) g" % (first.isoformat(), later, later))
    sql(url, "insert into otel.spans (trace_id, span_id, name, service_name, start_time) "
             "values ('late', 'late', 'op', 'svc', '2999-01-01')")
    sql(url, "analyze otel.spans")


def cutoff_sql():
    return ("(select substring(pg_get_expr(relpartbound, oid) from 'TO \\(''(.*)''\\)')::timestamptz "
            "from pg_class where oid = 'otel.spans_history'::regclass)")


def every_row(url):
    return sql(url, SPAN_ROW + " order by id")


def layout_of(url):
    """Everything the downgrade could change: relations, columns, indexes, constraints, record, version."""
    relations = sql(url, "select c.relname::text, c.relkind::text from pg_class c where c.relnamespace = "
                         "'otel'::regnamespace order by 1")
    constraints = sql(url, "select conrelid::regclass::text, conname::text, pg_get_constraintdef(oid) "
                           "from pg_constraint where connamespace = 'otel'::regnamespace order by 1, 2")
    inherits = sql(url, "select inhrelid::regclass::text, inhparent::regclass::text from pg_inherits i "
                        "join pg_class c on c.oid = i.inhrelid where c.relnamespace = 'otel'::regnamespace order by 1")
    record = sql(url, "select object_kind, object_name, origin, revision from otel.otelmig_objects order by 1, 2")
    version = sql(url, "select version_num from otel.alembic_version")
    return {"catalog": catalog_snapshot(url), "relations": relations, "constraints": constraints,
            "inherits": inherits, "record": record, "version": version}


def spans_is_plain(url):
    return sql(url, "select relkind::text from pg_class where oid = 'otel.spans'::regclass") == [["r"]]


# -- (a) everything that would stop it is refused before the first change ----------------

def test_objects_depending_on_the_partitioned_spans_are_refused_before_any_change(db_url, pyz):
    converted_with_rows_in_days(db_url, later=100)
    # a plain view on spans is carried back over the plain table (docs/revision2-objects.md), not refused
    sql(db_url, "create view otel.recent_spans as select * from otel.spans")
    setups = [
        ("function otel.span_total", ["create function otel.span_total() returns bigint language sql "
                                      "begin atomic select count(*) from otel.spans; end"]),
        ("otel.span_notes", ["create table otel.span_notes (id bigint, start_time timestamptz, "
                             "foreign key (id, start_time) references otel.spans (id, start_time))"]),
        ("triggers (drop them): keep_it", ["create function otel.keep() returns trigger language plpgsql as "
                                           "'begin return new; end'",
                                           "create trigger keep_it before insert on otel.spans "
                                           "for each row execute function otel.keep()"]),
        ("view otel.one_day", ["create view otel.one_day as select * from otel.spans_default"]),
    ]
    if int(sql(db_url, "show server_version_num")[0][0]) < 140000:  # BEGIN ATOMIC bodies are PostgreSQL 14+
        setups = [(expected, setup) for expected, setup in setups if expected != "function otel.span_total"]
    before, rows = layout_of(db_url), every_row(db_url)
    for expected, setup in setups:  # each added to the ones before: every one is named
        for statement in setup:
            sql(db_url, statement)
        before = layout_of(db_url)
        result = run_pyz(pyz, "downgrade", BASELINE, url=db_url)
        assert result.code == 8 and one_line(result.err) and expected in result.err, (expected, result.err)
        assert "nothing was changed" in result.err
        assert layout_of(db_url) == before and every_row(db_url) == rows
    for statement in ("drop view otel.one_day", "drop function if exists otel.span_total()",
                      "drop table otel.span_notes", "drop trigger keep_it on otel.spans"):
        sql(db_url, statement)
    assert run_pyz(pyz, "downgrade", BASELINE, url=db_url).code == 0
    assert spans_is_plain(db_url) and every_row(db_url) == rows
    assert sql(db_url, "select version_num from otel.alembic_version") == [[BASELINE]]
    assert sql(db_url, "select count(*) from otel.recent_spans") == sql(db_url, "select count(*) from otel.spans")
    assert sql(db_url, "select distinct c.relname::text from pg_depend d join pg_rewrite r on r.oid = d.objid "
                       "join pg_class c on c.oid = r.ev_class where d.refobjid = 'otel.spans'::regclass "
                       "and c.relname = 'recent_spans'") == [["recent_spans"]]


def test_spans_sharing_an_id_are_refused_before_any_change(db_url):
    converted_with_rows_in_days(db_url, later=100)
    sql(db_url, "insert into otel.spans (id, trace_id, span_id, name, service_name, start_time) "
                "select id, 'twin', 'twin', 'op', 'svc', %s + interval '1 hour' from otel.spans "
                "where span_id = 'later-1'" % cutoff_sql())
    shared = sql(db_url, "select id from otel.spans where span_id = 'twin'")[0][0]
    before, rows = layout_of(db_url), every_row(db_url)
    result = run_cli("downgrade", BASELINE, url=db_url)
    assert result.code == 8 and one_line(result.err), result.err
    assert "share an id" in result.err and str(shared) in result.err and "nothing was changed" in result.err
    assert layout_of(db_url) == before and every_row(db_url) == rows
    sql(db_url, "update otel.spans set id = nextval('otel.spans_id_seq') where span_id = 'twin'")
    rows = every_row(db_url)
    assert run_cli("downgrade", BASELINE, url=db_url).code == 0
    assert every_row(db_url) == rows and spans_is_plain(db_url)


# -- (c) writers during the downgrade: nothing lost, undone or hidden ------------------------

class Writer(threading.Thread):
    """Inserts, updates and deletes through otel.spans on its own connection,
    keeping what the table must hold afterwards; rows it never touches (the
    legacy ones and `watched`) are counted by a reader meanwhile."""

    def __init__(self, url, touchable, stop):
        super().__init__()
        self.url, self.touchable, self.stop = url, list(touchable), stop
        self.expected = {}  # id -> tenant_id (None: deleted)
        self.errors, self.waits, self.operations = [], [], 0

    def run(self):
        conn = connect(self.url)
        cursor = conn.cursor()
        pick = random.Random(19)
        try:
            while not self.stop.is_set():
                what = pick.random()
                started = time.monotonic()
                if what < 0.3:
                    cursor.execute("insert into otel.spans (trace_id, span_id, name, service_name, start_time, "
                                   "tenant_id) values ('w', 'w', 'op', 'svc', now(), 'inserted') returning id")
                    self.expected[cursor.fetchone()[0]] = "inserted"
                elif self.touchable:
                    span = self.touchable.pop(pick.randrange(len(self.touchable)))
                    if what < 0.65:
                        cursor.execute("update otel.spans set tenant_id = 'updated' where id = %s", (span,))
                        self.expected[span] = "updated" if cursor.rowcount == 1 else ("missing", cursor.rowcount)
                    else:
                        cursor.execute("delete from otel.spans where id = %s", (span,))
                        self.expected[span] = None if cursor.rowcount == 1 else ("missing", cursor.rowcount)
                self.waits.append(time.monotonic() - started)
                self.operations += 1
        except Exception as exc:  # a failed write is a lost write
            self.errors.append(exc)
        finally:
            conn.close()


class Reader(threading.Thread):
    """Counts the rows nobody writes, again and again: the count never changes."""

    def __init__(self, url, stop):
        super().__init__()
        self.url, self.stop, self.counts, self.errors = url, stop, set(), []

    def run(self):
        conn = connect(self.url)
        cursor = conn.cursor()
        try:
            while not self.stop.is_set():
                cursor.execute("select count(*) from otel.spans where trace_id = 'watched'")
                self.counts.add(cursor.fetchone()[0])
        except Exception as exc:
            self.errors.append(exc)
        finally:
            conn.close()


@contextlib.contextmanager
def writer_and_reader(url):
    touchable = [r[0] for r in sql(url, "select id from otel.spans where trace_id = 'later' order by id")]
    stop = threading.Event()
    writer, reader = Writer(url, touchable, stop), Reader(url, stop)
    writer.start(), reader.start()
    try:
        wait_for(lambda: writer.operations > 20, "the writer to start")
        yield writer, reader
        time.sleep(0.2)  # and a few writes after
    finally:
        stop.set()
        writer.join(), reader.join()


def assert_written_as_done(url, writer, before):
    """Row by row: each row the writer touched is as it left it; every other row as it was."""
    assert writer.errors == [], writer.errors
    assert not [v for v in writer.expected.values() if isinstance(v, tuple)], "a write found no row"
    found = {row[0]: row for row in every_row(url)}
    for span, tenant in writer.expected.items():
        if tenant is None:
            assert span not in found, "deleted span %s came back" % span
        else:
            assert span in found and found[span][4] == tenant, (span, tenant, found.get(span))
    untouched = [row for row in before if row[0] not in writer.expected]
    assert untouched == [found.get(row[0]) for row in untouched]
    assert len(found) == len(before) + sum(1 for v in writer.expected.values() if v == "inserted") \
        - sum(1 for v in writer.expected.values() if v is None)


def test_writes_during_the_downgrade_are_kept_row_by_row_and_no_row_is_hidden(db_url):
    converted_with_rows_in_days(db_url, later=60000)
    sql(db_url, "insert into otel.spans (trace_id, span_id, name, service_name, start_time) "
                "select 'watched', 'watched-' || g, 'op', 'svc', %s + g * interval '1 minute' "
                "from generate_series(1, 500) g" % cutoff_sql())
    watched = sql(db_url, "select count(*) from otel.spans where trace_id = 'watched'")[0][0]
    before = every_row(db_url)
    with writer_and_reader(db_url) as (writer, reader):
        started = writer.operations
        result = run_cli("downgrade", BASELINE, url=db_url)
        during = writer.operations - started
    assert result.code == 0, result.err
    assert during > 50, "the writer hardly ran during the downgrade: %d operations" % during
    assert reader.errors == [] and reader.counts == {watched}, (reader.errors, reader.counts)
    assert_written_as_done(db_url, writer, before)
    assert spans_is_plain(db_url) and sql(db_url, "select count(*) from pg_inherits where inhparent = "
                                                  "'otel.spans'::regclass") == [[0]]
    print("writer: %d operations, worst wait %.3fs" % (writer.operations, max(writer.waits)))


# -- (d) names come back --------------------------------------------------------------------

def test_index_names_survive_up_and_down(db_url):
    load_legacy(db_url, traces=20)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    long_name = "ops_" + "x" * 59  # 63 characters: its part on spans_history is named by PostgreSQL
    sql(db_url, "create index ops_kind on otel.spans (kind) where kind is not null")
    for _ in range(2):
        assert run_cli("upgrade", url=db_url).code == 0
        sql(db_url, "create index ops_on_history on otel.spans_history (environment)")
        sql(db_url, "create index ops_after on otel.spans (parent_span_id)")
        sql(db_url, "create index %s on otel.spans (tenant_id)" % long_name)
        result = run_cli("downgrade", BASELINE, url=db_url)
        assert result.code == 0, result.err
        indexes = dict(sql(db_url, "select indexname::text, indexdef from pg_indexes where tablename = 'spans' "
                                   "and schemaname = 'otel'"))
        assert sorted(indexes) == sorted(["ix_spans_service_start_time", "ix_spans_span_id", "ix_spans_trace_id",
                                          "spans_pkey", long_name, "ops_kind", "ops_on_history", "ops_after"])
        assert "WHERE (kind IS NOT NULL)" in indexes["ops_kind"]
        assert indexes["spans_pkey"].endswith("USING btree (id)")
        for index in ("ops_on_history", "ops_after", long_name):
            sql(db_url, "drop index otel.%s" % index)


def test_a_generated_column_is_moved_back_computed(db_url):
    converted_with_rows_in_days(db_url, later=50)
    sql(db_url, "alter table otel.spans add column label text generated always as (name || '@' || span_id) stored")
    rows = every_row(db_url)
    result = run_cli("downgrade", BASELINE, url=db_url)
    assert result.code == 0, result.err
    assert every_row(db_url) == rows
    assert sql(db_url, "select count(*) from otel.spans where label is distinct from name || '@' || span_id") == [[0]]


# -- (e) any interruption converges by downgrade or upgrade -------------------------------------

def interrupted_downgrade(url, how):
    """A downgrade stopped while it moves rows back: by a signal, or by the crash hook after statement k."""
    if how in ("SIGINT", "SIGTERM", "SIGKILL"):
        proc = spawn(url, "downgrade", BASELINE)
        wait_for_statement(url, "%$move$%")
        proc.send_signal(getattr(signal, how))
        proc.communicate(timeout=DEADLINE_SECONDS)
        expected = {"SIGINT": 130, "SIGTERM": 143, "SIGKILL": -signal.SIGKILL}[how]
        assert proc.returncode == expected, proc.returncode
        return
    environ = dict(os.environ, POSTGRES_URL=url, **{CRASH_AFTER_ENV: str(how)})
    proc = subprocess.run([sys.executable, "-m", "otelmig", "downgrade", BASELINE], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr)


def assert_converged(url, rows, rerun):
    result = run_cli(rerun, *([BASELINE] if rerun == "downgrade" else []), url=url)
    assert result.code == 0, result.err
    assert every_row(url) == rows
    assert sql(url, "select version_num from otel.alembic_version") == [[BASELINE if rerun == "downgrade"
                                                                           else HEAD_REVISION]]
    if rerun == "upgrade":
        verify_ok(url)
        assert run_cli("check", url=url).code == 0
    else:
        assert spans_is_plain(url)
        assert sql(url, "select count(*) from otel.otelmig_objects where revision = '%s'" % REVISION2) == [[0]]
        assert run_cli("upgrade", url=url).code == 0  # and up again from there
        assert every_row(url) == rows


@pytest.mark.parametrize("rerun", ["upgrade", "downgrade"])
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_a_signal_during_the_move_then_a_rerun_converges(db_url, how, rerun):
    converted_with_rows_in_days(db_url, later=150000)
    rows = every_row(db_url)
    interrupted_downgrade(db_url, how)
    assert spans_is_plain(db_url)
    left = sql(db_url, "select count(*) from otel.spans s where s.tableoid <> 'otel.spans'::regclass")[0][0]
    assert left > 0, "the downgrade ended before it was interrupted"
    assert every_row(db_url) == rows  # every row visible in otel.spans while the move is stopped
    assert_converged(db_url, rows, rerun)


@pytest.mark.parametrize("rerun", ["upgrade", "downgrade"])
def test_a_crash_after_each_statement_of_the_downgrade_then_a_rerun_converges(new_database, rerun):
    template = new_database()
    converted_with_rows_in_days(template, traces=20, later=25000)
    rows = every_row(template)
    ran = subprocess.run([sys.executable, "-m", "otelmig", "downgrade", BASELINE, "-v"], cwd=REPO,
                         env=dict(os.environ, POSTGRES_URL=template), capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    count = len([line for line in ran.stderr.splitlines() if line.startswith("  ") and not line.startswith("   ")])
    assert count >= 5, ran.stderr
    for k in range(1, count + 1):
        url = new_database()
        converted_with_rows_in_days(url, traces=20, later=25000)
        assert every_row(url) == rows
        interrupted_downgrade(url, k)
        assert every_row(url) == rows, "a row is missing from otel.spans after a crash at statement %d" % k
        assert_converged(url, rows, rerun)


# -- a partially upgraded store: the downgrade steps give back the baseline exactly -----------------

def run_downgrade_steps(url):
    conn = connect(url, autocommit=True)
    cursor = conn.cursor()

    def scalar(statement):
        cursor.execute(statement)
        return cursor.fetchone()[0]

    def rows(statement):
        cursor.execute(statement)
        return cursor.fetchall()
    runner = OnlineRunner(exec_scalar=scalar, exec_rows=rows, execute=cursor.execute,
                          outside=contextlib.nullcontext, names=SchemaSQL("otel"))
    try:
        runner.run(revision2().downgrade_steps(SchemaSQL("otel")))
    finally:
        conn.close()


def upgrade_statement_count(url):
    ran = subprocess.run([sys.executable, "-m", "otelmig", "upgrade", "-v"], cwd=REPO,
                         env=dict(os.environ, POSTGRES_URL=url), capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    logged = ran.stderr.split("applied %s" % BASELINE)[-1]
    return len([line for line in logged.splitlines() if line.startswith("  ") and not line.startswith("   ")])


def test_a_partial_upgrade_is_undone_to_the_baseline_layout(new_database):
    probe = new_database()
    load_legacy(probe, traces=30)
    assert run_cli("upgrade", BASELINE, url=probe).code == 0
    count = upgrade_statement_count(probe)
    assert count > 4
    seen = set()
    for k in range(1, count):  # the last statement is the switch: after it, the store is at the head
        url = new_database()
        load_legacy(url, traces=30)
        assert run_cli("upgrade", BASELINE, url=url).code == 0
        baseline, rows = layout_of(url), every_row(url)
        crashed = subprocess.run([sys.executable, "-m", "otelmig", "upgrade"], cwd=REPO, capture_output=True,
                                 env=dict(os.environ, POSTGRES_URL=url, **{CRASH_AFTER_ENV: str(k)}), text=True)
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
        if sql(url, "select version_num from otel.alembic_version") != [[BASELINE]]:
            continue
        seen.update(name for name, in sql(url, "select relname::text from pg_class where relname in "
                                               "('spans_partitioned', 'spans_history_pkey', 'ix_traces_start_time')"))
        run_downgrade_steps(url)
        assert layout_of(url) == baseline, "after a crash at statement %d of the upgrade" % k
        assert every_row(url) == rows
    # what a crash leaves committed before the switch (spans_partitioned commits with the switch only)
    assert {"spans_history_pkey", "ix_traces_start_time"} <= seen


def test_a_partial_upgrade_with_a_cutoff_check_and_held_outliers_is_undone(new_database):
    """The state the real conversion leaves when killed after its cutoff step:
    the hold trigger, the cutoff CHECK and its functions, future-dated rows
    held in otel.spans_outliers. The downgrade steps alone give back the
    baseline and every row, and a second pass finds nothing to do."""
    def at_baseline_with_outliers():
        url = new_database()
        load_legacy(url, traces=30)
        assert run_cli("upgrade", BASELINE, url=url).code == 0
        # future-dated rows (a clock set wrong on a client): the cutoff step holds them aside
        sql(url, "insert into otel.spans (trace_id, span_id, name, service_name, start_time) "
                 "select trace_id, span_id || '-late', name, service_name, now() + interval '40 days' "
                 "from otel.spans where id % 7 = 0")
        return url
    count = upgrade_statement_count(at_baseline_with_outliers())
    for k in range(1, count):
        url = at_baseline_with_outliers()
        baseline, rows = layout_of(url), every_row(url)
        crashed = subprocess.run([sys.executable, "-m", "otelmig", "upgrade"], cwd=REPO, capture_output=True,
                                 env=dict(os.environ, POSTGRES_URL=url, **{CRASH_AFTER_ENV: str(k)}), text=True)
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
        if sql(url, "select to_regclass('otel.spans_outliers') is not null")[0][0]:
            break
    else:
        pytest.fail("no crash point left rows held in otel.spans_outliers")
    assert sql(url, "select count(*) from only otel.spans_outliers")[0][0] > 0
    assert sql(url, "select count(*) from pg_constraint where conname = 'spans_history_range'")[0][0] == 1
    run_downgrade_steps(url)
    assert layout_of(url) == baseline
    assert every_row(url) == rows
    run_downgrade_steps(url)  # and again: nothing left to do
    assert layout_of(url) == baseline


def test_rows_an_older_downgrade_stranded_in_spans_partitioned_come_back(db_url):
    """The old downgrade's state (a): spans plain again, rows left in
    spans_partitioned's partitions; `upgrade` gathers them first."""
    # At the head: the version row stayed there (an older otelmig's downgrade stopped part way).
    converted_with_rows_in_days(db_url, later=300, to="head")
    rows = every_row(db_url)
    sql(db_url, "create table otel.stash as select * from otel.spans where tableoid <> 'otel.spans_history'::regclass")
    statements = [
            "delete from otel.spans where tableoid <> 'otel.spans_history'::regclass",
            "alter table otel.spans detach partition otel.spans_history",
            "alter sequence otel.spans_id_seq owned by otel.spans_history.id",
            "alter table otel.spans_history drop constraint spans_history_pkey",
            "alter table otel.spans rename constraint spans_pkey to spans_partitioned_pkey",
            "alter table otel.spans rename to spans_partitioned",
            "alter table otel.spans_history rename to spans",
            "alter table otel.spans add constraint spans_pkey primary key (id)"]
    for index in ("ix_spans_trace_id", "ix_spans_span_id", "ix_spans_service_start_time"):
        statements += ["alter index otel.%s rename to spans_partitioned_%s" % (index, index),
                       "alter index otel.spans_history_%s rename to %s" % (index, index)]
    for statement in statements + [
            "insert into otel.spans_partitioned select * from otel.stash",
            "drop table otel.stash"]:
        sql(db_url, statement)
    assert len(every_row(db_url)) < len(rows)  # hidden
    result = run_cli("upgrade", url=db_url)
    assert result.code == 0, result.err
    assert every_row(db_url) == rows
    verify_ok(db_url)


def test_what_was_set_on_the_partitioned_spans_comes_back_to_the_plain_one(db_url, pyz):
    """Column grants, column comments, row level security, replica identity and
    statistics targets set on the partitioned spans after the upgrade are on the
    plain spans after the downgrade: a worker granted INSERT on some columns
    only still writes (adversary finding F1)."""
    converted_with_rows_in_days(db_url, later=30)
    role = "colworker_%s" % random.randrange(10 ** 6)
    for statement in (
            "create role %s login password 'col-pw'" % role,
            "grant usage on schema otel to %s" % role,
            "grant usage on sequence otel.spans_id_seq to %s" % role,
            "grant insert (trace_id, span_id, name, service_name, start_time) on otel.spans to %s" % role,
            "comment on column otel.spans.name is 'span name, set after the upgrade'",
            "alter table otel.spans alter column service_name set statistics 321",
            "alter table otel.spans replica identity full",
            "alter table otel.spans enable row level security",
            "alter table otel.spans force row level security"):
        sql(db_url, statement)
    result = run_pyz(pyz, "downgrade", BASELINE, url=db_url)
    assert result.code == 0, result.err
    assert spans_is_plain(db_url)
    assert sql(db_url, "select has_column_privilege('%s', 'otel.spans', 'name', 'INSERT'), "
                       "has_column_privilege('%s', 'otel.spans', 'kind', 'INSERT')" % (role, role)) == [[True, False]]
    assert sql(db_url, "select col_description('otel.spans'::regclass, "
                       "(select attnum from pg_attribute where attrelid = 'otel.spans'::regclass and attname = 'name'))"
               ) == [["span name, set after the upgrade"]]
    assert sql(db_url, "select attstattarget from pg_attribute where attrelid = 'otel.spans'::regclass "
                       "and attname = 'service_name'") == [[321]]
    assert sql(db_url, "select relreplident::text, relrowsecurity, relforcerowsecurity from pg_class "
                       "where oid = 'otel.spans'::regclass") == [["f", True, True]]
    sql(db_url, "alter table otel.spans no force row level security")
    sql(db_url, "alter table otel.spans disable row level security")
    parts = urllib.parse.urlsplit(db_url)
    as_role = urllib.parse.urlunsplit(parts._replace(netloc="%s:col-pw@%s" % (role, parts.netloc.rsplit("@", 1)[1])))
    conn = connect(as_role, autocommit=True)
    try:
        cursor = conn.cursor()
        cursor.execute("select current_user")
        assert cursor.fetchone()[0] == role
        cursor.execute("insert into otel.spans (trace_id, span_id, name, service_name, start_time) "
                       "values ('col', 'col', 'op', 'svc', now())")
    finally:
        conn.close()


def test_column_options_and_index_and_constraint_comments_come_back_to_the_plain_spans(db_url, pyz):
    """A column's n_distinct options, a comment on an index and on the primary
    key (as an index and as a constraint) and on a CHECK set on the partitioned
    spans after the upgrade are on the plain spans after the downgrade
    (adversary finding F13: they were lost)."""
    converted_with_rows_in_days(db_url, later=30)
    for statement in (
            "alter table otel.spans alter column service_name set (n_distinct = -0.25, n_distinct_inherited = 500)",
            "alter table otel.spans alter column name set (n_distinct = 1234)",
            "alter table otel.spans add constraint name_not_empty check (name <> '') ",
            "comment on constraint name_not_empty on otel.spans is 'no empty names'",
            "comment on constraint spans_pkey on otel.spans is 'the pk, as a constraint'",
            "comment on index otel.spans_pkey is 'the pk, as an index'"):
        sql(db_url, statement)
    index = sql(db_url, "select c.relname from pg_index x join pg_class c on c.oid = x.indexrelid "
                        "where x.indrelid = 'otel.spans'::regclass and not x.indisprimary order by 1 limit 1")[0][0]
    sql(db_url, "comment on index otel.%s is 'a contract index'" % index)
    result = run_pyz(pyz, "downgrade", BASELINE, url=db_url)
    assert result.code == 0, result.err
    assert spans_is_plain(db_url)
    options = sql(db_url, "select attname, attoptions::text from pg_attribute where attrelid = 'otel.spans'::regclass "
                          "and attoptions is not null order by 1")
    assert options == [["name", "{n_distinct=1234}"],
                       ["service_name", "{n_distinct=-0.25,n_distinct_inherited=500}"]], options
    assert sql(db_url, "select obj_description(oid, 'pg_constraint') from pg_constraint "
                       "where conrelid = 'otel.spans'::regclass and conname in ('name_not_empty', 'spans_pkey') "
                       "order by conname") == [["no empty names"], ["the pk, as a constraint"]]
    assert sql(db_url, "select obj_description('otel.spans_pkey'::regclass, 'pg_class'), "
                       "obj_description('otel.%s'::regclass, 'pg_class')" % index) == [
        ["the pk, as an index", "a contract index"]]


def test_a_renamed_primary_key_and_a_unique_constraint_keep_their_comments(db_url, pyz):
    """The primary key renamed after the upgrade, with a comment on its index,
    and a UNIQUE constraint with comments on it and its index: the downgrade
    finishes (it stopped with an internal error, for ever) and the comments
    are on the plain spans (adversary pass 3, findings 1 and 3)."""
    converted_with_rows_in_days(db_url, later=30)
    for statement in (
            "alter table otel.spans rename constraint spans_pkey to spans_pk",
            "comment on index otel.spans_pk is 'the pk index'",
            'alter table otel.spans add constraint "Uniq Trace" unique (trace_id, span_id, start_time)',
            'comment on constraint "Uniq Trace" on otel.spans is \'unique, as a constraint\'',
            'comment on index otel."Uniq Trace" is \'unique, as an index\''):
        sql(db_url, statement)
    result = run_pyz(pyz, "downgrade", BASELINE, url=db_url)
    assert result.code == 0, result.err
    assert spans_is_plain(db_url)
    assert sql(db_url, "select obj_description('otel.spans_pkey'::regclass, 'pg_class'), "
                       "obj_description('otel.\"Uniq Trace\"'::regclass, 'pg_class')") == [
        ["the pk index", "unique, as an index"]]
    assert sql(db_url, "select obj_description(oid, 'pg_constraint') from pg_constraint "
                       "where conrelid = 'otel.spans'::regclass and contype = 'u'") == [["unique, as a constraint"]]


def test_a_check_constraint_comes_back_when_the_history_partition_was_dropped(db_url, pyz):
    """The history partition gone (retention dropped it): the plain spans made in
    its place keeps the CHECK constraints of the partitioned spans, with their
    comments, instead of losing them silently (adversary pass 3, finding 2)."""
    converted_with_rows_in_days(db_url, later=30)
    for statement in (
            "alter table otel.spans detach partition otel.spans_history",
            "drop table otel.spans_history",
            "alter table otel.spans add constraint duration_not_negative check (duration_ms >= 0)",
            "comment on constraint duration_not_negative on otel.spans is 'no negative durations'"):
        sql(db_url, statement)
    result = run_pyz(pyz, "downgrade", BASELINE, url=db_url)
    assert result.code == 0, result.err
    assert spans_is_plain(db_url)
    assert sql(db_url, "select pg_get_constraintdef(oid), obj_description(oid, 'pg_constraint') from pg_constraint "
                       "where conrelid = 'otel.spans'::regclass and conname = 'duration_not_negative'") == [
        ["CHECK ((duration_ms >= (0)::double precision))", "no negative durations"]]


def test_the_rollback_reports_its_row_move_as_progress(db_url, pyz):
    """The move back prints how many rows it has moved as it goes (issue 22
    item 6): the server's NOTICE per batch, at most one line a
    MOVE_PROGRESS_EVERY seconds, and the total once the move is done."""
    converted_with_rows_in_days(db_url, later=3 * revision2().BATCH_ROWS)
    result = run_pyz(pyz, "rollback", url=db_url)  # from revision 2: undoes it
    assert result.code == 0, result.err
    moved = [line for line in result.err.splitlines() if line.startswith("moved ") and "rows back into" in line]
    assert moved, result.err
    assert moved[-1] == "moved %d rows back into otel.spans in all" % (3 * revision2().BATCH_ROWS + 1), result.err


def test_a_partitioned_spans_given_to_another_owner_goes_back_owned_so(db_url, pyz):
    """ALTER TABLE spans OWNER TO ... after the upgrade (it re-owns the id
    sequence with it): the downgrade gives the plain spans that owner, where it
    stopped with an internal error in the switch-back (adversary finding F10)."""
    converted_with_rows_in_days(db_url, later=30)
    role = "new_owner_%d" % random.randrange(10 ** 6)
    sql(db_url, "create role %s" % role)
    sql(db_url, "grant create on schema otel to %s" % role)
    sql(db_url, "alter table otel.spans owner to %s" % role)
    rows = every_row(db_url)
    result = run_pyz(pyz, "downgrade", BASELINE, url=db_url)
    assert result.code == 0, result.err
    assert spans_is_plain(db_url) and every_row(db_url) == rows
    assert sql(db_url, "select pg_get_userbyid(relowner)::text from pg_class where oid = 'otel.spans'::regclass") == [
        [role]]
