"""Adoption holds its promises on stores that differ from the legacy layout
(issue 10 items 1, 5, 6, 7; issue 11 item 2), each on a real server:
rollback drops only what the upgrade created; a partitioned spans is adopted;
incompatible stores are refused before anything changes; the version table is
not trusted blindly; the data guard needs no optional server feature."""

import os
import re

import pytest

from adoption_stores import (ADOPTED, ADOPT, REFUSE, group_store_sql, groups, readme_section, readme_table,
                             unique_name)
from conftest import catalog_snapshot, connect, insert_legacy_rows, load_legacy, run_cli, sql, table_rows
from helpers import (BASELINE, PSQL_SCRIPT_ERROR, SPAN_COLUMNS_LEGACY, head_names, one_line, psql_file, run_all,
                     shape as layout, verify_ok, write_sql)
from otelmig._version import HEAD_REVISION

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def columns_of(url, table, schema="otel"):
    return [r[0] for r in sql(url, "select attname::text from pg_attribute where attrelid = %s::regclass "
                                   "and attnum > 0 and not attisdropped order by attnum", ("%s.%s" % (schema, table),))]


def index_exists(url, name, schema="otel"):
    return sql(url, "select to_regclass(%s) is not null", ("%s.%s" % (schema, name),)) == [[True]]


def version_table_exists(url, schema="otel"):
    return sql(url, "select to_regclass(%s) is not null", ("%s.alembic_version" % schema,)) == [[True]]


# -- item 1: a downgrade drops only what the upgrade created --------------------

def operator_additions(url):
    """Before adoption the operator added a head-named column, filled it with
    history, and made their own index under a head name."""
    sql(url, "alter table otel.spans add column created_at timestamptz not null default now()")
    sql(url, "update otel.spans set created_at = timestamptz '2020-01-01' + id * interval '1 minute'")
    sql(url, "create index ix_spans_span_id on otel.spans (span_id)")


def test_rollback_keeps_what_the_operator_had_before_adoption(db_url):
    load_legacy(db_url, traces=50)
    operator_additions(db_url)
    history = sql(db_url, "select id, created_at from otel.spans order by id")
    assert run_cli("upgrade", url=db_url).code == 0
    verify_ok(db_url)
    result = run_cli("downgrade", "base", url=db_url)
    assert result.code == 0, result.err
    assert sql(db_url, "select id, created_at from otel.spans order by id") == history
    assert index_exists(db_url, "ix_spans_span_id")
    # what the upgrade created is gone: its other columns and indexes, its record
    assert "status_message" not in columns_of(db_url, "spans")
    assert "resource_attributes" not in columns_of(db_url, "traces")
    assert not index_exists(db_url, "ix_spans_trace_id")
    assert not index_exists(db_url, "otelmig_objects")
    assert "start_ts" in columns_of(db_url, "spans")


def test_rollback_of_a_fresh_store_returns_to_nothing(db_url):
    """Not the legacy layout (issue 22 item 7): what the baseline found was nothing."""
    assert run_cli("upgrade", url=db_url).code == 0
    assert run_cli("downgrade", "base", url=db_url).code == 0
    # the run history stays: the audit trail of these runs (docs/history.md)
    assert sql(db_url, "select tablename::text from pg_tables where schemaname = 'otel' order by 1") == [
        ["alembic_version"], ["otelmig_runs"]]


def forget_the_record(url):
    """What an otelmig from before the record left: the head, and no record."""
    sql(url, "drop table otel.otelmig_objects")


def test_store_adopted_without_a_record_refuses_rollback_naming_the_objects(db_url):
    load_legacy(db_url, traces=20)
    operator_additions(db_url)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    forget_the_record(db_url)
    before = catalog_snapshot(db_url)
    result = run_cli("downgrade", "base", url=db_url)
    assert result.code == 8, result.err
    assert one_line(result.err)
    for name in ("otel.spans.created_at", "otel.traces.resource_attributes", "otel.ix_spans_span_id",
                 "otel.ix_spans_trace_id"):
        assert name in result.err
    assert "--allow-data-loss" in result.err
    assert catalog_snapshot(db_url) == before
    assert sql(db_url, "select version_num from otel.alembic_version") == [[BASELINE]]
    result = run_cli("downgrade", "base", "--allow-data-loss", url=db_url)
    assert result.code == 0, result.err
    assert "created_at" not in columns_of(db_url, "spans") and not index_exists(db_url, "ix_spans_span_id")


def test_downgrade_of_a_stamped_legacy_store_drops_nothing_and_names_no_worker_column(db_url):
    """Stamped at the head over the legacy layout, with no record: the guard
    may only count what the downgrade would drop (nothing here), never the
    worker's own nullable columns (root_span_name, duration_ms, ...)."""
    load_legacy(db_url, traces=20)
    assert run_cli("stamp", "head", url=db_url).code == 0
    before = catalog_snapshot(db_url)
    rows = table_rows(db_url, "otel", "spans", SPAN_COLUMNS_LEGACY)
    result = run_cli("downgrade", "base", url=db_url)
    assert result.code == 0, result.err
    assert catalog_snapshot(db_url) == before
    assert table_rows(db_url, "otel", "spans", SPAN_COLUMNS_LEGACY) == rows
    assert sql(db_url, "select count(*) from otel.alembic_version") == [[0]]


def test_store_without_a_record_guard_names_only_columns_the_downgrade_drops(db_url):
    load_legacy(db_url, traces=20)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    forget_the_record(db_url)
    result = run_cli("downgrade", "base", url=db_url)
    assert result.code == 8
    for worker_column in ("root_span_name", "duration_ms", "parent_span_id", "tenant_id"):
        assert worker_column not in result.err, result.err


def test_rollback_data_guard_still_counts_rows_of_created_columns(db_url):
    load_legacy(db_url, traces=10)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    sql(db_url, "update otel.spans set status_message = 'boom' where id <= 3")
    result = run_cli("downgrade", "base", url=db_url)
    assert result.code == 8 and one_line(result.err) and "3 rows in otel.spans.status_message" in result.err


def test_sql_scripts_keep_what_the_operator_had(tmp_path, db_url):
    load_legacy(db_url, traces=20)
    operator_additions(db_url)
    history = sql(db_url, "select id, created_at from otel.spans order by id")
    up = psql_file(db_url, write_sql(tmp_path, "upgrade", "--sql"))
    assert up.returncode == 0, up.stderr
    verify_ok(db_url)
    assert sql(db_url, "select origin from otel.otelmig_objects where object_name = 'spans.created_at'") \
        == [["found"]]
    (tmp_path / "review.sql").unlink()
    down = psql_file(db_url, write_sql(tmp_path, "downgrade", "base", "--sql"))
    assert down.returncode == 0, down.stderr
    assert sql(db_url, "select id, created_at from otel.spans order by id") == history
    assert index_exists(db_url, "ix_spans_span_id") and not index_exists(db_url, "ix_spans_trace_id")


def test_sql_downgrade_refuses_a_store_without_a_record(tmp_path, db_url):
    load_legacy(db_url, traces=5)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    forget_the_record(db_url)
    down = psql_file(db_url, write_sql(tmp_path, "downgrade", "base", "--sql"))
    assert down.returncode == PSQL_SCRIPT_ERROR and "without a record" in down.stderr
    assert "otel.ix_spans_trace_id" in down.stderr
    assert index_exists(db_url, "ix_spans_trace_id")


def test_plan_shows_what_will_be_recorded_as_found(db_url):
    load_legacy(db_url, traces=5)
    operator_additions(db_url)
    result = run_cli("plan", "--format", "json", url=db_url)
    sqls = [s["sql"] for s in result.json()["pending"][0]["statements"]]
    assert any("'spans.created_at', 'found'" in s for s in sqls)
    assert any("'ix_spans_span_id', 'found'" in s for s in sqls)
    assert not any('ADD COLUMN IF NOT EXISTS "created_at"' in s for s in sqls)
    assert any("'ix_spans_trace_id', 'created'" in s for s in sqls)


# -- issue 11 item 2: the data guard needs no optional server feature ---------

def test_data_guard_works_without_query_to_xml(server, db_url, tmp_path):
    """A server built without libxml cannot run query_to_xml; a role that may
    not execute it sees the same thing, on any server. Online and in --sql."""
    load_legacy(db_url, traces=10)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    role, password = unique_name("noxml"), "no-xml-pw"
    sql(db_url, "create role %s login password '%s'" % (role, password))
    sql(db_url, "revoke execute on function query_to_xml(text, boolean, boolean, text) from public")
    sql(db_url, "revoke execute on function xpath(text, xml, text[]) from public")
    try:
        sql(db_url, "grant all on schema otel to %s" % role)
        for table in ("traces", "spans", "alembic_version", "otelmig_objects"):
            sql(db_url, "alter table otel.%s owner to %s" % (table, role))
        sql(db_url, "alter sequence otel.spans_id_seq owner to %s" % role)
        url = server.url(db_url.rsplit("/", 1)[1], user=role, password=password)
        sql(db_url, "update otel.spans set status_message = 'x' where id = 1")
        result = run_cli("downgrade", "base", url=url)
        assert result.code == 8 and one_line(result.err) and "1 rows in otel.spans.status_message" in result.err, result.err
        script = psql_file(url, write_sql(tmp_path, "downgrade", "base", "--sql"))
        assert script.returncode == PSQL_SCRIPT_ERROR, script.stderr
        assert "1 rows in otel.spans.status_message" in script.stderr, script.stderr
        sql(db_url, "update otel.spans set status_message = null")
        result = run_cli("downgrade", "base", url=url)
        assert result.code == 0, result.err
    finally:
        sql(db_url, "grant execute on function query_to_xml(text, boolean, boolean, text) to public")
        sql(db_url, "grant execute on function xpath(text, xml, text[]) to public")
        sql(db_url, "reassign owned by %s to postgres" % role)
        sql(db_url, "drop owned by %s" % role)
        sql(server.admin_url, "drop role %s" % role)


def test_no_optional_server_feature_in_the_steps():
    for folder in ("otelmig", os.path.join("migrations", "versions")):
        for name in os.listdir(os.path.join(REPO, folder)):
            if name.endswith(".py"):
                text = open(os.path.join(REPO, folder, name)).read()
                assert "query_to_xml(" not in text and "xpath(" not in text, name


# -- item 5: a legacy spans partitioned by time ---------------------------------

PARTITIONED_SPANS = """
CREATE TABLE otel.spans (
    id BIGSERIAL, trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_span_id TEXT, name TEXT NOT NULL,
    kind TEXT, service_name TEXT NOT NULL, start_ts TIMESTAMPTZ NOT NULL, end_ts TIMESTAMPTZ,
    duration_ms DOUBLE PRECISION, status TEXT, attributes JSONB NOT NULL DEFAULT '{}'::jsonb,
    environment TEXT, tenant_id TEXT,
    PRIMARY KEY (id, start_ts)
) PARTITION BY RANGE (start_ts)"""
# The operator's layout takes a row stamped now (spans_later), as a store in service must: verify and check
# report a layout that rejects the worker's inserts (tests/test_check.py).
PARTITIONS = (("spans_2025", "2025-01-01", "2026-01-01"), ("spans_2026_01", "2026-01-01", "2026-02-01"),
              ("spans_2026_02", "2026-02-01", "2026-03-01"),  # stays empty
              ("spans_later", "2026-03-01", "2200-01-01"))


def load_partitioned_legacy(url, traces=200):
    load_legacy(url)
    statements = ["DROP TABLE otel.spans", PARTITIONED_SPANS]
    statements += ["CREATE TABLE otel.%s PARTITION OF otel.spans FOR VALUES FROM ('%s') TO ('%s')" % p
                   for p in PARTITIONS]
    run_all(url, statements)
    conn = connect(url)
    try:
        insert_legacy_rows(conn.cursor(), "otel", traces, 5, 7)
    finally:
        conn.close()
    sql(url, "insert into otel.spans (trace_id, span_id, name, service_name, start_ts) "
             "select md5('old' || g), substr(md5('o' || g), 1, 16), 'old', 'svc', "
             "timestamptz '2025-06-01' + g * interval '1 hour' from generate_series(1, 40) g")


def test_partitioned_spans_is_adopted_with_every_row(db_url):
    load_partitioned_legacy(db_url)
    before = table_rows(db_url, "otel", "spans", SPAN_COLUMNS_LEGACY)
    assert len(before) == 1040
    result = run_cli("upgrade", url=db_url)
    assert result.code == 0, result.err
    assert table_rows(db_url, "otel", "spans", head_names(SPAN_COLUMNS_LEGACY)) == before
    report = verify_ok(db_url)
    assert report["extras"] == []  # partitioned by start_time with the key (id, start_time): the head's own
    for index in ("ix_spans_trace_id", "ix_spans_span_id", "ix_spans_service_start_time"):
        relkind, valid, attached = sql(db_url, """
            select c.relkind::text, x.indisvalid, (select count(*) from pg_inherits where inhparent = c.oid)
            from pg_class c join pg_index x on x.indexrelid = c.oid where c.oid = %s::regclass""",
                                       ("otel." + index,))[0]
        assert (relkind, valid, attached) == ("I", True, len(PARTITIONS))
    assert sql(db_url, "select count(*) from otel.spans where created_at is null") == [[0]]
    assert run_cli("check", url=db_url).code == 0
    # and back: the indexes the upgrade created go, every row stays
    assert run_cli("downgrade", "base", url=db_url).code == 0
    assert table_rows(db_url, "otel", "spans", SPAN_COLUMNS_LEGACY) == before
    assert not index_exists(db_url, "ix_spans_trace_id")


def test_partitioned_plan_sums_the_partitions_and_lists_each(db_url):
    load_partitioned_legacy(db_url)
    sql(db_url, "analyze")
    result = run_cli("plan", "--format", "json", url=db_url)
    statements = result.json()["pending"][0]["statements"]
    renames = [s for s in statements if "RENAME COLUMN" in s["sql"] and s["table"] == "otel.spans"]
    assert renames and renames[0]["rows_estimate"] == 1040 and renames[0]["size_bytes"] > 0
    on_only = [s for s in statements if " ON ONLY " in s["sql"]]
    assert len(on_only) == 3
    builds = [s for s in statements if s["sql"].startswith("CREATE INDEX") and "ix_spans_trace_id" in s["sql"]
              and " ON ONLY " not in s["sql"]]
    assert sorted(s["table"] for s in builds) == ["otel." + p[0] for p in PARTITIONS]
    concurrent = {s["table"]: s["outside_transaction"] for s in builds}
    assert concurrent == {"otel.spans_2025": True, "otel.spans_2026_01": True, "otel.spans_2026_02": False,
                          "otel.spans_later": False}
    attaches = [s["sql"] for s in statements if "ATTACH PARTITION" in s["sql"]]
    assert len(attaches) == 3 * len(PARTITIONS)
    assert 'ALTER INDEX "otel"."ix_spans_trace_id" ATTACH PARTITION otel.spans_2025_ix_spans_trace_id' in attaches
    text = run_cli("plan", url=db_url).out
    assert "~1040 rows" in text


def test_partitioned_sql_script_reaches_the_head(tmp_path, db_url):
    load_partitioned_legacy(db_url, traces=30)
    before = table_rows(db_url, "otel", "spans", SPAN_COLUMNS_LEGACY)
    result = psql_file(db_url, write_sql(tmp_path, "upgrade", "--sql"))
    assert result.returncode == 0, result.stderr
    verify_ok(db_url)
    assert table_rows(db_url, "otel", "spans", head_names(SPAN_COLUMNS_LEGACY)) == before


def test_partitioned_rerun_after_a_partition_build_failed(db_url):
    """A partition's concurrent build that failed (INVALID) is dropped and rebuilt, then attached."""
    load_partitioned_legacy(db_url, traces=20)
    assert run_cli("upgrade", url=db_url).code == 0
    sql(db_url, "delete from otel.alembic_version")
    sql(db_url, "alter index otel.ix_spans_trace_id rename to ix_spans_trace_id_old")
    sql(db_url, "drop index otel.ix_spans_trace_id_old")
    sql(db_url, "create index ix_spans_trace_id on only otel.spans (trace_id)")
    sql(db_url, "create index spans_2025_ix_spans_trace_id on otel.spans_2025 (trace_id)")
    sql(db_url, "update pg_index set indisvalid = false "
                "where indexrelid = 'otel.spans_2025_ix_spans_trace_id'::regclass")
    sql(db_url, "insert into otel.alembic_version values ('%s')" % HEAD_REVISION)
    # a partitioned index with partitions not attached is not valid: verify says so
    report = run_cli("verify", "--format", "json", url=db_url)
    assert report.code == 7
    assert [(p["kind"], p["object"]) for p in report.json()["problems"]] == [("invalid_index", "otel.ix_spans_trace_id")]
    sql(db_url, "delete from otel.alembic_version")
    result = run_cli("upgrade", url=db_url)
    assert result.code == 0, result.err
    verify_ok(db_url)


# -- item 6: incompatible stores are refused before anything changes -----------

def assert_refused_unchanged(url, result, names):
    assert result.code == 8, result.err
    assert one_line(result.err), result.err
    for name in names:
        assert name in result.err, (name, result.err)
    assert "fix:" in result.err


@pytest.mark.parametrize("change,names", [
    ("alter table otel.spans alter column attributes drop default, "
     "alter column attributes type json using attributes::json", ["otel.spans.attributes", "jsonb"]),
    ("create index ix_spans_trace_id on otel.spans using hash (trace_id)", ["otel.ix_spans_trace_id", "hash"]),
    ("create index ix_spans_span_id on otel.spans (span_id, trace_id)", ["otel.ix_spans_span_id"]),
    ("create unique index ix_spans_span_id on otel.spans (span_id)", ["otel.ix_spans_span_id"]),
    ("alter table otel.spans drop column name", ["otel.spans.name", "NOT NULL"]),
    ("alter table otel.spans add column created_at text", ["otel.spans.created_at", "text"]),
    ("alter table otel.traces alter column service_name drop not null", ["otel.traces.service_name"]),
    ("alter table otel.traces drop constraint traces_pkey", ["otel.traces", "primary key"]),
    ("alter table otel.spans add column start_time timestamptz not null default now()",
     ["otel.spans.start_time", "has both start_ts and start_time"]),
])
def test_incompatible_store_is_refused_naming_each_conflict(db_url, change, names):
    load_legacy(db_url, traces=10)
    sql(db_url, change)
    before = catalog_snapshot(db_url)
    rows = table_rows(db_url, "otel", "spans", ["id", "span_id"])
    result = run_cli("upgrade", url=db_url)
    assert_refused_unchanged(db_url, result, names)
    assert catalog_snapshot(db_url) == before and not version_table_exists(db_url)
    assert table_rows(db_url, "otel", "spans", ["id", "span_id"]) == rows
    plan = run_cli("plan", url=db_url)
    assert "REFUSE: " + names[0] in plan.out
    summary = plan.out.split("\nrevision ", 1)[0]  # the summary names the refusal too
    assert re.search(r"\n    revision \w+, [^\n]*: refuses; listed below\n", summary), summary


def test_several_conflicts_are_named_in_one_line(db_url):
    load_legacy(db_url, traces=3)
    sql(db_url, "alter table otel.spans drop column name")
    sql(db_url, "create index ix_spans_trace_id on otel.spans using hash (trace_id)")
    result = run_cli("upgrade", "--format", "json", url=db_url)
    assert result.code == 8
    assert {c["object"] for c in result.json()["conflicts"]} == {"otel.spans.name", "otel.ix_spans_trace_id"}


def test_a_dropped_nullable_column_is_added_back(db_url):
    load_legacy(db_url, traces=10)
    sql(db_url, "alter table otel.spans drop column kind")
    assert run_cli("upgrade", url=db_url).code == 0
    verify_ok(db_url)
    assert run_cli("downgrade", "base", url=db_url).code == 0
    assert "kind" not in columns_of(db_url, "spans")  # it was not there before: the rollback took it away


def test_contract_is_verified_before_the_version_row(db_url):
    """A non-index relation under an index's name: CREATE INDEX IF NOT EXISTS
    skips it; the contract check after the last step catches it (exit 7)."""
    load_legacy(db_url, traces=5)
    sql(db_url, "create table otel.ix_spans_span_id (x int)")
    result = run_cli("upgrade", url=db_url)
    assert result.code == 7, result.err
    assert "ix_spans_span_id" in result.err and one_line(result.err)
    assert sql(db_url, "select count(*) from otel.alembic_version") == [[0]]
    assert run_cli("check", url=db_url).code == 4


def test_a_member_of_the_owning_role_adopts(server, db_url, other_owner):
    """Ownership is refused only when the migrating role cannot act as the owner."""
    owner, migrator, password = other_owner
    load_legacy(db_url, traces=10)
    name = db_url.rsplit("/", 1)[1]
    run_all(db_url, ["alter table otel.%s owner to %s" % (t, owner) for t in ("traces", "spans")]
            + ["alter sequence otel.spans_id_seq owner to %s" % owner,
               "alter schema otel owner to %s" % migrator, "grant create on database %s to %s" % (name, migrator),
               "grant create on schema otel to %s" % owner])  # revision 2: partitions owned as spans is
    url = server.url(name, user=migrator, password=password)
    try:
        refused = run_cli("upgrade", url=url)
        assert refused.code == 8 and one_line(refused.err) and "owned by role %s" % owner in refused.err, refused
        sql(db_url, "grant %s to %s" % (owner, migrator))
        result = run_cli("upgrade", url=url)
        assert result.code == 0, result.err
        verify_ok(db_url)
    finally:
        run_all(db_url, ["drop owned by %s cascade" % r for r in (owner, migrator)])


# -- item 7: the version table is not trusted blindly ---------------------------

@pytest.mark.parametrize("version_schema", ["otel", "public"])
def test_stamped_but_never_migrated_store_is_adopted(db_url, version_schema):
    load_legacy(db_url, traces=30)
    sql(db_url, "create table %s.alembic_version (version_num varchar(32) primary key)" % version_schema)
    sql(db_url, "insert into %s.alembic_version values ('%s')" % (version_schema, HEAD_REVISION))
    before = table_rows(db_url, "otel", "spans", SPAN_COLUMNS_LEGACY)
    check = run_cli("check", url=db_url)
    assert check.code == 4, check.out + check.err
    assert "upgrade" in check.err
    if version_schema == "otel":
        assert "spans.start_time" in check.err
    verified = run_cli("verify", url=db_url)
    assert verified.code == 4 and one_line(verified.err) and "upgrade" in verified.err, verified
    plan = run_cli("plan", "--format", "json", url=db_url)
    assert plan.code == 5 and plan.json()["pending"], plan.out
    result = run_cli("upgrade", url=db_url)
    assert result.code == 0, result.err
    assert "applied %s" % HEAD_REVISION in result.err
    verify_ok(db_url)
    assert table_rows(db_url, "otel", "spans", head_names(SPAN_COLUMNS_LEGACY)) == before
    assert run_cli("check", url=db_url).code == 0
    if version_schema == "public":  # not ours: left as it was
        assert sql(db_url, "select version_num from public.alembic_version") == [[HEAD_REVISION]]


def test_check_reads_the_head_columns_in_one_query(db_url):
    """The column check is folded into read_state's first query: still two round trips."""
    from otelmig import state as state_mod

    assert run_cli("upgrade", url=db_url).code == 0
    conn = connect(db_url)
    executed = []
    real_cursor = conn.cursor

    def counting_cursor():
        cursor = real_cursor()
        real_execute = cursor.execute
        cursor.execute = lambda *a, **k: (executed.append(a[0]), real_execute(*a, **k))[1]
        return cursor
    conn.cursor = counting_cursor
    try:
        state = state_mod.read_state(conn, "otel")
    finally:
        conn.close()
    assert state.missing_columns == () and len(executed) == 2
    sql(db_url, "alter table otel.spans rename column created_at to created")
    assert run_cli("check", url=db_url).code == 4


def test_several_version_rows_get_one_verdict_everywhere(db_url):
    load_legacy(db_url, traces=5)
    assert run_cli("upgrade", url=db_url).code == 0
    sql(db_url, "insert into otel.alembic_version values ('aaaa0000other')")
    before = catalog_snapshot(db_url)
    for first, second in ((HEAD_REVISION, "aaaa0000other"), ("aaaa0000other", HEAD_REVISION)):
        # the same two rows, stored in the other order: a first-row reader would now differ
        sql(db_url, "truncate otel.alembic_version")
        sql(db_url, "insert into otel.alembic_version values (%s), (%s)", (first, second))
        assert sql(db_url, "select version_num from otel.alembic_version") == [[first], [second]]
        for command in (["check"], ["current"], ["verify"], ["upgrade"], ["plan"], ["rollback"], ["stamp", "head"]):
            result = run_cli(*command, url=db_url)
            assert result.code == 6, (command, result.out, result.err)
            assert "aaaa0000other" in result.err and HEAD_REVISION in result.err, (command, result.err)
            assert "DELETE FROM otel.alembic_version WHERE version_num <> '%s'" % HEAD_REVISION in result.err
            assert one_line(result.err), (command, result.err)
    assert catalog_snapshot(db_url) == before
    assert sorted(sql(db_url, "select version_num from otel.alembic_version")) == sorted([[HEAD_REVISION],
                                                                                         ["aaaa0000other"]])


# -- the matrix -------------------------------------------------------------------

def expected_name(case):
    if case.shape == "owned by another role":
        return "otel.%s" % case.table
    if case.kind == "index":
        return "otel.%s" % case.name
    return "otel.%s.%s" % (case.table, case.name)


@pytest.fixture
def other_owner(server):
    """Roles for the ownership shape: the tables' owner, and a migrator that is not a member."""
    owner, migrator, password = unique_name("owner"), unique_name("migrator"), "migrator-pw"
    sql(server.admin_url, "create role %s" % owner)
    sql(server.admin_url, "create role %s login password '%s'" % (migrator, password))
    yield owner, migrator, password
    for role in (owner, migrator):
        sql(server.admin_url, "drop role if exists %s" % role)


GROUPS = groups()


def rows_as_found(url, found=None):
    """table -> its rows over the columns it has now (found=None) or had when
    `found` was read: every row kept, in the columns the store had. A column a
    later revision adds (the head moves on) is not what adoption is about; a
    found column that is gone raises here, naming it."""
    rows = {}
    for table in ADOPTED.tables:
        if found is None:
            columns = [r[0] for r in sql(url, """select attname from pg_attribute where attrelid = to_regclass(%s)
                                                 and attnum > 0 and not attisdropped order by attnum""",
                                         ("otel.%s" % table.name,))]
        else:
            columns = found[table.name]["columns"]
        values = sql(url, "select %s from otel.%s order by 1" % (", ".join('"%s"' % c for c in columns), table.name))
        rows[table.name] = {"columns": columns, "rows": values}
    return rows


@pytest.mark.parametrize("key", sorted(GROUPS), ids=lambda key: "-".join(key).replace(" ", "_"))
def test_adoption_matrix(server, new_database, other_owner, key):
    kind, shape, outcome = key
    cases = GROUPS[key]
    url = new_database()
    run_all(url, group_store_sql(kind, shape, cases))
    run_url = url
    if shape == "owned by another role":
        owner, migrator, password = other_owner
        name = url.rsplit("/", 1)[1]
        run_all(url, ["alter table otel.%s owner to %s" % (t.name, owner) for t in ADOPTED.tables]
                + ["alter schema otel owner to %s" % migrator, "grant create on database %s to %s" % (name, migrator),
                   "grant create on schema otel to %s" % owner])
        run_url = server.url(name, user=migrator, password=password)
    before = catalog_snapshot(url)
    found = layout(url)
    rows = rows_as_found(url)
    result = run_cli("upgrade", url=run_url)
    try:
        if outcome == REFUSE:
            assert_refused_unchanged(url, result, sorted({expected_name(c) for c in cases}))
            assert catalog_snapshot(url) == before and not version_table_exists(url)
            return
        assert result.code == 0, result.err
        verify_ok(url)
        assert rows_as_found(url, rows) == rows
        if outcome == ADOPT:  # found, so kept: the downgrade returns exactly to what was found
            assert run_cli("downgrade", "base", url=run_url).code == 0
            assert layout(url) == found
    finally:
        if shape == "owned by another role":
            run_all(url, ["drop owned by %s cascade" % r for r in other_owner[:2]])


def test_baseline_converges_on_its_frozen_contract(db_url):
    """The baseline's frozen contract (what adoption compares with) is what its upgrade produces."""
    from otelmig.verify import compare, read_catalog

    load_legacy(db_url, traces=5)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    conn = connect(db_url)
    try:
        report = compare("otel", read_catalog(conn, "otel"), ADOPTED)
    finally:
        conn.close()
    assert report.problems == [] and report.extras == []


def test_docs_show_the_matrix():
    text = open(os.path.join(REPO, "docs", "revisions.md")).read()
    assert readme_section(text) == readme_table(), "run: .venv/bin/python tests/adoption_stores.py"
