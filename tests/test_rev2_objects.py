"""Revision 2 and what an operator attached to otel.spans: each kind carried
over to the partitioned table or refused before any change.

One table, CASES, drives the parametrized test: a kind of object, the SQL
that puts one on an adopted legacy store, the outcome, and for a refusal the
name it must give, for a carry-over a check of the object's behaviour. The
kinds and outcomes are exactly those of docs/revision2-objects.md (asserted
below), so the document cannot promise a kind the matrix does not try.
"""

import datetime
import os
import re
import shutil
import tempfile
import uuid
from typing import Callable, NamedTuple, Optional, Tuple

import pg8000.dbapi
import pytest

from conftest import catalog_snapshot, connect, drop_database, load_legacy, run_cli, run_pyz, sql
from helpers import BASELINE, PSQL_SCRIPT_ERROR, one_line, psql_file, write_sql
from test_docs import markdown_tables, read
from otelmig.schema import SPANS_PARTITIONING as LAYOUT

HEAD = "826630e38563"
PROBE_COLUMNS = "(trace_id, span_id, name, kind, service_name, start_time)"


class Case(NamedTuple):
    kind: str                 # as docs/revision2-objects.md names it
    setup: Tuple[str, ...]    # SQL on the adopted store; {role}, {tablespace}, {tablespace_dir} filled in
    outcome: str              # 'carried' or 'refused'
    named: str = ""           # refused: what the refusal and plan must name
    holds: Optional[Callable] = None  # carried: holds(url, converted) asserts the object works on otel.spans
    since: int = 13           # the first PostgreSQL major that has this kind of object


# -- what a carried object must do ----------------------------------------------------------------

def probe(url, span_id, start_time, kind="SPAN_KIND_SERVER", role=None):
    """Insert one span through otel.spans (as `role` if given); the error text, or None."""
    conn = connect(url)
    try:
        cursor = conn.cursor()
        if role:
            cursor.execute("set role %s" % role)
        cursor.execute("insert into otel.spans %s values ('t-' || %%s, %%s, 'op', %%s, 'svc', %%s)" % PROBE_COLUMNS,
                       (span_id, span_id, kind, start_time))
        return None
    except pg8000.dbapi.DatabaseError as error:
        return str(error)
    finally:
        conn.close()


def probe_times(url, converted):
    """Where a row can land: today (the history partition after the conversion), and once
    converted a day partition the revision made, DEFAULT, and a day partition maintain made."""
    now = sql(url, "select now()")[0][0]
    if not converted:
        return {"today": now}
    cutoff = sql(url, "select substring(pg_get_expr(relpartbound, oid) from 'TO \\(''(.*)''\\)')::timestamptz "
                      "from pg_class where oid = 'otel.%s'::regclass" % LAYOUT.history)[0][0]
    result = run_cli("maintain", "--ahead", "12", url=url)
    assert result.code == 0, result.err
    later = now + datetime.timedelta(days=11)
    assert partition_of_time(url, later) == LAYOUT.day_partition(later.astimezone(datetime.timezone.utc).date())
    return {"today": now, "day partition": cutoff + datetime.timedelta(hours=1),
            "default": datetime.datetime(2999, 1, 1, tzinfo=datetime.timezone.utc), "made by maintain": later}


def partition_of_time(url, moment):
    return sql(url, "select c.relname::text from pg_class c join pg_inherits i on i.inhrelid = c.oid "
                    "where i.inhparent = 'otel.spans'::regclass and pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT' "
                    "and %s::timestamptz >= "
                    "coalesce(nullif(substring(pg_get_expr(c.relpartbound, c.oid) from 'FROM \\(''(.*)''\\) TO'), ''), "
                    "'-infinity')::timestamptz and %s::timestamptz < coalesce(substring(pg_get_expr(c.relpartbound, "
                    "c.oid) from 'TO \\(''(.*)''\\)'), 'infinity')::timestamptz", (moment, moment))[0][0]


def check_rejects_bad_kind(url, converted):
    for where, moment in probe_times(url, converted).items():
        tag = where.replace(" ", "-")
        assert probe(url, "good-" + tag, moment) is None, where
        error = probe(url, "bad-" + tag, moment, kind="bogus")
        assert error and "spans_kind_known" in error, (where, error)


def check_rejects_negative_duration(url, converted):
    for where, moment in probe_times(url, converted).items():
        conn = connect(url)
        try:
            with pytest.raises(pg8000.dbapi.DatabaseError, match="spans_duration_positive"):
                conn.cursor().execute("insert into otel.spans (trace_id, span_id, name, service_name, start_time, "
                                      "duration_ms) values ('t', 'neg', 'op', 'svc', %s, -1)", (moment,))
        finally:
            conn.close()
    # NOT VALID it was, NOT VALID it stays: the old rows it never checked are still there
    assert sql(url, "select convalidated from pg_constraint where conrelid = 'otel.spans'::regclass "
                    "and conname = 'spans_duration_positive'") == [[False]]


def check_column_privileges(url, converted):
    role = sql(url, "select current_setting('otelmig_test.role')")[0][0]
    for where, moment in probe_times(url, converted).items():
        assert probe(url, "worker-" + where.replace(" ", "-"), moment, role=role) is None, where
    conn = connect(url)
    try:
        cursor = conn.cursor()
        cursor.execute("set role %s" % role)
        cursor.execute("select count(span_id) from otel.spans")
        with pytest.raises(pg8000.dbapi.DatabaseError, match="permission denied"):
            cursor.execute("select span_attributes from otel.spans")  # only the granted columns
    finally:
        conn.close()


def check_table_privileges(url, converted):
    role = sql(url, "select current_setting('otelmig_test.role')")[0][0]
    for where, moment in probe_times(url, converted).items():
        assert probe(url, "worker-" + where.replace(" ", "-"), moment, role=role) is None, where


def check_table_comment(url, converted):
    assert sql(url, "select obj_description('otel.spans'::regclass, 'pg_class')") == [["spans of every service"]]


def check_column_comment(url, converted):
    assert sql(url, "select col_description('otel.spans'::regclass, attnum) from pg_attribute "
                    "where attrelid = 'otel.spans'::regclass and attname = 'kind'") == [["OTLP span kind"]]


def check_constraint_comment(url, converted):
    assert sql(url, "select obj_description(oid, 'pg_constraint') from pg_constraint "
                    "where conrelid = 'otel.spans'::regclass and conname = 'spans_kind_known'") == [["kinds we know"]]
    check_rejects_bad_kind(url, converted)


def check_view(url, converted):
    """The view reads every row of otel.spans wherever it lands, keeps its oid
    (the view built on it still works), its options and its comment."""
    for where, moment in probe_times(url, converted).items():
        span_id = "view-%s-%s" % (where.replace(" ", "-"), uuid.uuid4().hex[:8])
        assert probe(url, span_id, moment) is None, where
        assert sql(url, "select count(*) from otel.recent_spans where span_id = %s", (span_id,)) == [[1]], where
    assert sql(url, "select count(*) from otel.recent_spans") == sql(url, "select count(*) from otel.spans")
    assert sql(url, "select * from otel.recent_count") == sql(url, "select count(*) from otel.spans")
    assert sql(url, "select reloptions::text, obj_description('otel.recent_spans'::regclass, 'pg_class') "
                    "from pg_class where oid = 'otel.recent_spans'::regclass") == [["{security_barrier=true}",
                                                                                    "the recent ones"]]
    reads = sql(url, "select distinct d.refobjid::regclass::text from pg_depend d join pg_rewrite r on r.oid = d.objid "
                     "where r.ev_class = 'otel.recent_spans'::regclass and d.refclassid = 'pg_class'::regclass "
                     "and d.refobjid <> 'otel.recent_spans'::regclass")
    assert reads == [["otel.spans"]], reads


def check_operator_index(url, converted):
    definition = sql(url, "select pg_get_indexdef('otel.ops_spans_tenant'::regclass)")[0][0]
    assert ("ON ONLY otel.spans" if converted else "ON otel.spans ") in definition, definition
    assert "(tenant_id)" in definition and "WHERE (tenant_id IS NOT NULL)" in definition, definition


def check_index_comment(url, converted):
    check_operator_index(url, converted)
    assert sql(url, "select obj_description('otel.ops_spans_tenant'::regclass, 'pg_class')") == [["by tenant"]]


WORKER = ("create role {role}", "grant usage on schema otel to {role}",
          "grant usage on sequence otel.spans_id_seq to {role}",
          # the role's name where the checks can read it
          "alter database {database} set otelmig_test.role = '{role}'")
KIND_CHECK = "alter table otel.spans add constraint spans_kind_known check (kind in ('SPAN_KIND_SERVER', " \
             "'SPAN_KIND_CLIENT', 'SPAN_KIND_INTERNAL'))"
OPERATOR_INDEX = "create index ops_spans_tenant on otel.spans (tenant_id) where tenant_id is not null"
# a composite type with exactly the columns of spans, so that spans can be made a typed table of it
TYPE_OF_SPANS = ("do $shape$ begin execute (select 'create type otel.span_shape as (' || string_agg(quote_ident(attname) "
                 "|| ' ' || format_type(atttypid, atttypmod), ', ' order by attnum) || ')' from pg_attribute "
                 "where attrelid = 'otel.spans'::regclass and attnum > 0 and not attisdropped); end $shape$")
LONG_NAME = "ix_spans_tenant_service_environment_started_at_x"  # 49 bytes: 67 with spans_partitioned_

CASES = [
    # -- carried over ---------------------------------------------------------------------------
    Case("check constraint", (KIND_CHECK,), "carried", holds=check_rejects_bad_kind),
    Case("check constraint NOT VALID",
         ("alter table otel.spans add constraint spans_duration_positive check (duration_ms >= 0) not valid",),
         "carried", holds=check_rejects_negative_duration),
    Case("column privileges", WORKER + (
        "grant insert %s, select (span_id) on otel.spans to {role}" % PROBE_COLUMNS,), "carried",
        holds=check_column_privileges),
    Case("table privileges", WORKER + ("grant insert, select on otel.spans to {role}",), "carried",
         holds=check_table_privileges),
    Case("comment on the table", ("comment on table otel.spans is 'spans of every service'",), "carried",
         holds=check_table_comment),
    Case("comment on a column", ("comment on column otel.spans.kind is 'OTLP span kind'",), "carried",
         holds=check_column_comment),
    Case("comment on a check constraint", (KIND_CHECK, "comment on constraint spans_kind_known on otel.spans is "
                                           "'kinds we know'"), "carried", holds=check_constraint_comment),
    Case("index", (OPERATOR_INDEX,), "carried", holds=check_operator_index),
    Case("comment on an index", (OPERATOR_INDEX, "comment on index otel.ops_spans_tenant is 'by tenant'"),
         "carried", holds=check_index_comment),
    # -- what reads or uses spans --------------------------------------------------------------
    Case("view", ("create view otel.recent_spans with (security_barrier) as select id, span_id from otel.spans",
                  "create view otel.recent_count as select count(*) from otel.recent_spans",
                  "comment on view otel.recent_spans is 'the recent ones'"), "carried", holds=check_view),
    Case("materialized view", ("create materialized view otel.span_total as select count(*) from otel.spans",),
         "refused", "materialized view otel.span_total"),
    Case("function with a BEGIN ATOMIC body",
         ("create function otel.count_spans() returns bigint language sql begin atomic "
          "select count(*) from otel.spans; end",), "refused", "function otel.count_spans()", since=14),
    Case("rule", ("create rule keep_spans as on delete to otel.spans do instead nothing",), "refused",
         "rule keep_spans on otel.spans"),
    Case("function of its row type",
         ("create function otel.every_span() returns setof otel.spans language sql as 'select * from otel.spans'",),
         "refused", "function otel.every_span()"),
    Case("column of its row type", ("create table otel.span_copies (copy otel.spans)",), "refused",
         "table column otel.span_copies.copy"),
    # -- constraints, triggers, policies, statistics -----------------------------------------------
    Case("foreign key of its own", ("alter table otel.spans add constraint spans_trace_fk foreign key (trace_id) "
                                    "references otel.traces (trace_id)",), "refused", "spans_trace_fk"),
    Case("foreign key referencing it", ("create table otel.span_links (span_id bigint references otel.spans (id))",),
         "refused", "otel.span_links (span_links_span_id_fkey)"),
    Case("exclusion constraint", ("alter table otel.spans add constraint spans_one_id exclude using btree (id with =)",),
         "refused", "spans_one_id"),
    Case("unique index", ("create unique index spans_uniq on otel.spans (span_id, id)",), "refused", "spans_uniq"),
    Case("check constraint NO INHERIT", ("alter table otel.spans add constraint spans_local check (id > 0) "
                                         "no inherit",), "refused", "spans_local"),
    Case("trigger", ("create function otel.keep() returns trigger language plpgsql as 'begin return new; end'",
                     "create trigger keep_it before insert on otel.spans for each row execute function otel.keep()"),
         "refused", "keep_it"),
    Case("policy (row level security off)", ("create policy by_tenant on otel.spans using (tenant_id = "
                                             "current_user)",), "refused", "by_tenant"),
    Case("row level security", ("alter table otel.spans enable row level security",), "refused",
         "row level security"),
    Case("row level security forced", ("alter table otel.spans force row level security",), "refused",
         "row level security forced"),
    Case("extended statistics", ("create statistics otel.spans_service_kind on service_name, kind from otel.spans",),
         "refused", "spans_service_kind"),
    # -- publications --------------------------------------------------------------------------
    Case("publication FOR TABLE", ("create publication {pub} for table otel.spans",), "refused", "{pub}"),
    Case("publication FOR ALL TABLES", ("create publication {pub} for all tables",), "refused", "{pub}"),
    Case("publication FOR TABLES IN SCHEMA", ("create publication {pub} for tables in schema otel",), "refused",
         "{pub}", since=15),
    # -- columns and inheritance ---------------------------------------------------------------------------
    Case("generated column", ("alter table otel.spans add column duration_s numeric "
                              "generated always as (duration_ms / 1000) stored",), "refused", "duration_s"),
    Case("identity column", ("alter table otel.spans add column seq_no bigint generated always as identity",),
         "refused", "seq_no"),
    Case("identity id", ("alter table otel.spans alter column id drop default",
                         "alter table otel.spans alter column id add generated by default as identity"),
         "refused", "identity column"),
    Case("sequence owned by a column", ("alter table otel.spans add column batch bigserial",), "refused",
         "otel.spans_batch_seq"),
    Case("inheritance child", ("create table otel.spans_archive () inherits (otel.spans)",), "refused",
         "otel.spans_archive"),
    Case("inheritance parent", ("create table otel.span_base ()", "alter table otel.spans inherit otel.span_base"),
         "refused", "otel.span_base"),
    # -- table settings ------------------------------------------------------------------------------
    Case("storage parameters", ("alter table otel.spans set (fillfactor = 90, autovacuum_vacuum_scale_factor = 0.01)",),
         "refused", "fillfactor=90"),
    Case("toast storage parameters", ("alter table otel.spans set (toast.autovacuum_enabled = false)",), "refused",
         "autovacuum_enabled=false"),
    Case("statistics target", ("alter table otel.spans alter column service_name set statistics 500",), "refused",
         "service_name 500"),
    Case("column options", ("alter table otel.spans alter column service_name set (n_distinct = 20)",), "refused",
         "n_distinct=20"),
    Case("replica identity", ("alter table otel.spans replica identity full",), "refused", "replica identity"),
    Case("unlogged", ("alter table otel.spans set unlogged",), "refused", "unlogged"),
    Case("tablespace", ("create tablespace {tablespace} location '{tablespace_dir}'",
                        "alter table otel.spans set tablespace {tablespace}"), "refused", "{tablespace}"),
    Case("index in a tablespace", ("create tablespace {tablespace} location '{tablespace_dir}'",
                                   "create index ix_spans_env on otel.spans (environment) tablespace {tablespace}"),
         "refused", "otel.ix_spans_env"),
    Case("typed table", (TYPE_OF_SPANS, "alter table otel.spans of otel.span_shape"), "refused", "span_shape"),
    Case("access method", ("create access method heap_again type table handler heap_tableam_handler",
                           "alter table otel.spans set access method heap_again"), "refused", "heap_again",
         since=15),
    # -- indexes and names -----------------------------------------------------------------------
    Case("invalid index", ("!create index concurrently ix_spans_broken on otel.spans ((1 / (id - 3)))",),
         "refused", "otel.ix_spans_broken"),
    Case("index name too long for the prefix", ("create index %s on otel.spans (tenant_id)" % LONG_NAME,),
         "refused", LONG_NAME),
    Case("two index names alike in their first 63 bytes once prefixed",
         ("create index %s on otel.spans (tenant_id)" % (LONG_NAME + "1"),
          "create index %s on otel.spans (environment)" % (LONG_NAME + "2")), "refused", LONG_NAME + "2"),
    Case("table named spans_history", ("create table otel.spans_history (note text)",), "refused",
         "otel.spans_history"),
    Case("view named spans_partitioned", ("create view otel.spans_partitioned as select 1 as one",), "refused",
         "otel.spans_partitioned"),
    Case("sequence named spans_default", ("create sequence otel.spans_default",), "refused", "otel.spans_default"),
    Case("type named spans_default", ("create type otel.spans_default as enum ('a')",), "refused", "spans_default"),
    Case("table named spans_outliers", ("create table otel.spans_outliers (note text)",), "refused",
         "otel.spans_outliers"),
    Case("table named like a day partition", ("create table otel.spans_p20991231 (note text)",), "refused",
         "otel.spans_p20991231"),
    Case("name spans_history_<index> taken", ("create table otel.spans_history_ix_spans_trace_id (note text)",),
         "refused", "otel.spans_history_ix_spans_trace_id"),
    Case("name spans_partitioned_<index> taken",
         ("create index spans_partitioned_ix_spans_span_id on otel.traces (service_name)",), "refused",
         "otel.spans_partitioned_ix_spans_span_id"),
    # Drift from the baseline's contract: the conversion would carry it into the head, whose
    # contract check refused it only after the scans and the switch (adversary finding F5).
    Case("contract column made nullable", ("alter table otel.spans alter column service_name drop not null",),
         "refused", "otel.spans.service_name"),
    Case("contract column of another type", ("alter table otel.spans alter column status_code type varchar(40)",),
         "refused", "otel.spans.status_code"),
    Case("contract default dropped", ("alter table otel.spans alter column created_at drop default",),
         "refused", "otel.spans.created_at"),
    Case("contract index dropped", ("drop index otel.ix_spans_trace_id",), "refused", "otel.ix_spans_trace_id"),
    Case("contract table dropped", ("drop table otel.traces",), "refused", "otel.traces"),
    Case("contract table replaced by a view",
         ("alter table otel.spans rename to spans_old", "create view otel.spans as select * from otel.spans_old"),
         "refused", "otel.spans"),
    Case("contract column of traces made nullable",
         ("alter table otel.traces alter column service_name drop not null",), "refused", "otel.traces.service_name"),
]


# -- the store each case starts from ---------------------------------------------------------------

@pytest.fixture(scope="module")
def adopted_template(server):
    """A legacy store with rows, adopted by the baseline: each case copies it (CREATE DATABASE ... TEMPLATE)."""
    name = "tmpl_" + uuid.uuid4().hex[:12]
    sql(server.admin_url, "CREATE DATABASE %s" % name)
    url = server.url(name)
    load_legacy(url, traces=30)
    assert run_cli("upgrade", BASELINE, url=url).code == 0
    yield name
    drop_database(server.admin_url, name)


@pytest.fixture
def store(server, adopted_template):
    """(url, names to fill the setup SQL with) of a fresh copy; what the case made outside it is dropped after."""
    token = uuid.uuid4().hex[:10]
    database = "t_" + token
    sql(server.admin_url, "CREATE DATABASE %s TEMPLATE %s" % (database, adopted_template))
    directory = tempfile.mkdtemp(prefix="otelmig-ts-")
    os.chmod(directory, 0o700)
    if os.geteuid() == 0:  # the test cluster runs as postgres then (tests/pgcluster.py)
        shutil.chown(directory, "postgres", "postgres")
    names = {"role": "worker_" + token, "pub": "pub_" + token, "tablespace": "ts_" + token,
             "tablespace_dir": directory, "database": database}
    yield server.url(database), names
    drop_database(server.admin_url, database)
    sql(server.admin_url, "DROP TABLESPACE IF EXISTS %s" % names["tablespace"])
    sql(server.admin_url, "DROP ROLE IF EXISTS %s" % names["role"])
    shutil.rmtree(directory, ignore_errors=True)


def set_up(url, case, names):
    for statement in case.setup:
        expected_to_fail = statement.startswith("!")  # e.g. a concurrent build that fails leaves an INVALID index
        statement = statement.lstrip("!").format(**names)
        if expected_to_fail:
            with pytest.raises(pg8000.dbapi.DatabaseError):
                sql(url, statement)
        else:
            sql(url, statement)


def unchanged_state(url):
    """What a refused upgrade must leave as it found: the catalog's shape, the version, the plain table."""
    return {"catalog": catalog_snapshot(url),
            "version": sql(url, "select version_num from otel.alembic_version"),
            "spans": sql(url, "select relkind::text from pg_class where oid = 'otel.spans'::regclass"),
            "constraints": sql(url, "select conname::text from pg_constraint where conrelid = 'otel.spans'::regclass "
                                    "order by 1"),
            "record": sql(url, "select count(*) from otel.otelmig_objects")}


def refusal_line(text, named):
    lines = [line for line in text.splitlines() if "REFUSE" in line]
    assert any(named in line for line in lines), text
    return lines


@pytest.mark.parametrize("case", CASES, ids=[c.kind for c in CASES])
def test_each_kind_is_carried_over_or_refused_before_any_change(store, case):
    url, names = store
    major = int(sql(url, "show server_version_num")[0][0]) // 10000
    if major < case.since:  # the object cannot exist there, so neither can what it would break
        pytest.skip("%s does not exist before PostgreSQL %d" % (case.kind, case.since))
    set_up(url, case, names)
    if case.outcome == "refused":
        named = case.named.format(**names)
        before = unchanged_state(url)
        result = run_cli("upgrade", url=url)
        assert result.code == 8 and one_line(result.err) and named in result.err, (case.kind, result.err)
        assert unchanged_state(url) == before
        plan = run_cli("plan", url=url)
        refusal_line(plan.out, named)
        return
    assert case.outcome == "carried"
    case.holds(url, converted=False)  # the check itself holds on the plain table
    result = run_cli("upgrade", url=url)
    assert result.code == 0, result.err
    assert sql(url, "select relkind::text from pg_class where oid = 'otel.spans'::regclass") == [["p"]]
    case.holds(url, converted=True)
    result = run_cli("downgrade", BASELINE, url=url)
    assert result.code == 0, result.err
    assert sql(url, "select relkind::text from pg_class where oid = 'otel.spans'::regclass") == [["r"]]
    case.holds(url, converted=False)


def test_a_check_constraint_is_on_every_partition_present_and_future(store):
    url, names = store
    set_up(url, CASES[0], names)
    assert run_cli("upgrade", url=url).code == 0
    assert run_cli("maintain", "--ahead", "12", url=url).code == 0
    without = sql(url, "select c.relname::text from pg_inherits i join pg_class c on c.oid = i.inhrelid "
                       "where i.inhparent = 'otel.spans'::regclass and not exists (select 1 from pg_constraint k "
                       "where k.conrelid = c.oid and k.conname = 'spans_kind_known') order by 1")
    assert without == []
    assert len(sql(url, "select 1 from pg_inherits where inhparent = 'otel.spans'::regclass")) >= 12


def test_the_built_pyz_refuses_a_materialized_view_and_plan_names_it(pyz, store):
    url, names = store
    set_up(url, next(c for c in CASES if c.kind == "materialized view"), names)
    result = run_pyz(pyz, "upgrade", url=url)
    assert result.code == 8 and one_line(result.err) and "materialized view otel.span_total" in result.err, result.err
    assert "otel.span_total" in " ".join(refusal_line(run_pyz(pyz, "plan", url=url).out, "span_total"))
    sql(url, "drop materialized view otel.span_total")
    result = run_pyz(pyz, "upgrade", url=url)
    assert result.code == 0, result.err


def test_every_refusal_is_named_at_once_not_one_per_rerun(pyz, store):
    """A store with objects of several refused kinds: one upgrade names them all
    in its one line (adversary finding F7: the operator fixed one, reran, and was
    told the next), and plan lists the same."""
    url, names = store
    kinds = ("materialized view", "invalid index", "table named spans_history")
    for kind in kinds:
        set_up(url, next(c for c in CASES if c.kind == kind), names)
    before = unchanged_state(url)
    result = run_pyz(pyz, "upgrade", url=url)
    assert result.code == 8 and one_line(result.err), result.err
    for kind in kinds:
        named = next(c for c in CASES if c.kind == kind).named.format(**names)
        assert named in result.err, (named, result.err)
        refusal_line(run_pyz(pyz, "plan", url=url).out, named)
    assert unchanged_state(url) == before


def test_each_drift_fix_works_as_printed_in_a_schema_that_needs_quoting(db_url, pyz):
    """The fix each drift refusal prints is SQL that runs as printed, here in a
    schema named "order" (a keyword), and the rerun then converts: a NOT NULL
    column with its default dropped, a contract index renamed, a default
    changed (adversary pass 3, findings 5 and 6)."""
    load_legacy(db_url, schema='"order"', traces=20)  # SQL text: the keyword quoted
    assert run_pyz(pyz, "upgrade", BASELINE, "--schema", "order", url=db_url).code == 0
    for statement in ('alter table "order".spans drop column created_at',
                      'alter index "order".ix_spans_trace_id rename to ix_spans_trace_id_v2',
                      'alter table "order".traces alter column span_count set default 1'):
        sql(db_url, statement)
    result = run_pyz(pyz, "upgrade", "--schema", "order", url=db_url)
    assert result.code == 8 and one_line(result.err), result.err
    fixes = re.findall(r"\(fix: (.*?), then rerun\)", result.err)
    assert len(fixes) == 3, result.err
    for fix in fixes:  # each is one statement, run as printed
        sql(db_url, fix)
    result = run_pyz(pyz, "upgrade", "--schema", "order", url=db_url)
    assert result.code == 0, result.err
    assert run_pyz(pyz, "verify", "--strict", "--schema", "order", url=db_url).code == 0


@pytest.mark.parametrize("long_name", [LONG_NAME, "ix_spans_ténant_sérvice_énvironment_stârted_ät"],
                         ids=["ascii", "multibyte"])
def test_the_renames_for_long_index_names_run_as_printed_even_for_names_alike(db_url, long_name):
    """Two of the operator's index names too long for the partitions' prefix, alike in their first bytes: each
    gets its own suggested name (finding F6: both were told the same one), the renames run as printed, one
    after the other, and the rerun converts."""
    load_legacy(db_url, traces=5)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    sql(db_url, 'create index "%s1" on otel.spans (tenant_id)' % long_name)
    sql(db_url, 'create index "%s2" on otel.spans (environment)' % long_name)
    result = run_cli("upgrade", url=db_url)
    assert result.code == 8 and one_line(result.err), result.err
    renames = re.findall(r"e\.g\. (ALTER INDEX .*? RENAME TO .*?)\)", result.err)
    assert len(renames) == 2 and len(set(r.split(" RENAME TO ")[1] for r in renames)) == 2, result.err
    for rename in renames:
        sql(db_url, rename)
    assert run_cli("upgrade", url=db_url).code == 0
    assert run_cli("verify", url=db_url).code == 0


def test_a_suggested_rename_is_a_name_not_taken(db_url):
    """The name suggested for an index name too long for the prefix is free in the schema: when the first
    choice is taken (here by a table), another is told, and it runs as printed (adversary pass 2, finding 1)."""
    load_legacy(db_url, traces=5)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    sql(db_url, "create index %s on otel.spans (tenant_id)" % LONG_NAME)

    def suggested():
        result = run_cli("upgrade", url=db_url)
        assert result.code == 8, result
        return re.findall(r"e\.g\. (ALTER INDEX .*? RENAME TO (.*?))\)", result.err)
    [(_, first)] = suggested()
    sql(db_url, "create table otel.%s (a int)" % first)
    [(_, second)] = suggested()
    assert second != first
    # the names the partitions' indexes will take from it must be free too (adversary pass 3, finding 1)
    sql(db_url, "create table otel.spans_partitioned_%s (a int)" % second)
    [(rename, third)] = suggested()
    assert third not in (first, second)
    sql(db_url, rename)
    assert run_cli("upgrade", url=db_url).code == 0


def test_the_offline_script_refuses_as_online_does(store, tmp_path):
    url, names = store
    set_up(url, next(c for c in CASES if c.kind == "generated column"), names)
    before = unchanged_state(url)
    result = psql_file(url, write_sql(tmp_path, "upgrade", "--sql"))
    assert result.returncode == PSQL_SCRIPT_ERROR and "generated columns: duration_s" in result.stderr, result.stderr
    assert unchanged_state(url) == before


def test_the_document_lists_exactly_the_kinds_the_matrix_tries():
    rows = markdown_tables(read("revision2-objects.md"))["What happens to each kind of object"]
    documented = sorted((row["kind"].replace("`", ""), row["outcome"]) for row in rows)
    assert documented == sorted((case.kind, case.outcome) for case in CASES)


@pytest.mark.parametrize("direction", ["upgrade", "downgrade"])
def test_a_view_this_role_may_not_replace_is_refused_before_any_change(server, store, pyz, direction):
    """The tables' owner (no superuser) runs otelmig; another role owns a view
    on spans in its own schema. CREATE OR REPLACE VIEW would fail in the
    switch, after the scans (adversary finding F2): refused up front instead,
    plan says REFUSE, and once the owner may replace it, it is carried."""
    url, names = store
    owner, analyst = names["role"], "analyst_" + names["database"][2:]
    database = names["database"]
    setup = ["create role %s login password 'owner-pw'" % owner, "create role %s" % analyst,
             "grant create on database %s to %s" % (database, owner),
             "alter schema otel owner to %s" % owner,
             "create schema a authorization %s" % analyst,
             "grant usage on schema otel to %s" % analyst]
    setup += ["alter table otel.%s owner to %s" % (t, owner) for t in ("traces", "spans", "alembic_version",
                                                                       "otelmig_objects")]
    setup += ["alter sequence otel.spans_id_seq owner to %s" % owner]
    for statement in setup:
        sql(url, statement)
    as_owner = server.url(database, user=owner, password="owner-pw")
    if direction == "downgrade":
        assert run_pyz(pyz, "upgrade", url=as_owner).code == 0
    sql(url, "grant select on otel.spans to %s" % analyst)
    sql(url, "set role %s; create view a.v_spans as select id, start_time, service_name from otel.spans; reset role"
        % analyst)
    try:
        before = unchanged_state(url)
        if direction == "upgrade":
            planned = run_pyz(pyz, "plan", url=as_owner)
            assert "REFUSE" in planned.out and "a.v_spans" in planned.out, planned.out
            result = run_pyz(pyz, "upgrade", url=as_owner)
        else:
            result = run_pyz(pyz, "downgrade", BASELINE, url=as_owner)
        assert result.code == 8 and one_line(result.err), result.err
        assert "a.v_spans" in result.err and analyst in result.err, result.err
        assert unchanged_state(url) == before
        sql(url, "grant %s to %s" % (analyst, owner))
        result = run_pyz(pyz, direction, *([BASELINE] if direction == "downgrade" else []), url=as_owner)
        assert result.code == 0, result.err
        assert sql(url, "select count(*) from a.v_spans") == sql(url, "select count(*) from otel.spans")
    finally:
        sql(url, "drop schema a cascade")
        sql(url, "drop owned by %s" % analyst)
        sql(url, "drop role %s" % analyst)
        sql(url, "reassign owned by %s to current_user" % owner)
