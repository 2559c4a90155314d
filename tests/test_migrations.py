"""The walkthrough's verification suite: the baseline creates, adopts and
converges, keeps every row, and round-trips, on a real PostgreSQL."""

import pytest

import signal

from conftest import catalog_snapshot, connect, load_legacy, run_cli, sql, table_rows
from helpers import (BASELINE, SPAN_COLUMNS_LEGACY, TRACE_COLUMNS_LEGACY, error_line, head_names, one_line, shape,
                     spawn, verify_ok, wait_for)
from otelmig import schema as contract
from otelmig.scripts import script_directory
from otelmig.settings import Settings
from otelmig.revisions import HEAD_REVISION


def test_single_head():
    scripts = script_directory(Settings(conninfo=None))
    assert list(scripts.get_heads()) == [HEAD_REVISION]
    assert [s.revision for s in scripts.walk_revisions()][0] == HEAD_REVISION


def test_fresh_upgrade_creates_the_contract(db_url):
    result = run_cli("upgrade", url=db_url)
    assert result.code == 0, result.err
    assert "applied %s" % HEAD_REVISION in result.err
    verify_ok(db_url)
    assert sql(db_url, "select version_num from otel.alembic_version") == [[HEAD_REVISION]]


def test_legacy_adoption_keeps_every_row(db_url):
    load_legacy(db_url, traces=2000, spans_per_trace=5)
    traces_before = table_rows(db_url, "otel", "traces", TRACE_COLUMNS_LEGACY)
    spans_before = table_rows(db_url, "otel", "spans", SPAN_COLUMNS_LEGACY)
    assert len(spans_before) == 10000
    result = run_cli("upgrade", url=db_url)
    assert result.code == 0, result.err
    verify_ok(db_url)
    assert table_rows(db_url, "otel", "traces", head_names(TRACE_COLUMNS_LEGACY)) == traces_before
    assert table_rows(db_url, "otel", "spans", head_names(SPAN_COLUMNS_LEGACY)) == spans_before
    defaults = sql(db_url, "select count(*) filter (where resource_attributes = '{}' and trace_attributes = '{}') "
                           "from otel.traces")
    assert defaults == [[2000]]
    assert sql(db_url, "select count(*) from otel.spans where created_at is null or status_message is not null") \
        == [[0]]


def test_fresh_and_adopted_end_in_the_same_schema(new_database, db_url):
    assert run_cli("upgrade", url=db_url).code == 0
    fresh = shape(db_url)
    adopted_url = new_database()
    load_legacy(adopted_url, traces=50)
    assert run_cli("upgrade", url=adopted_url).code == 0
    assert shape(adopted_url) == fresh


HALF_WAY = {
    "traces adopted, spans legacy": [
        "alter table otel.traces rename column start_ts to start_time",
        "alter table otel.traces rename column end_ts to end_time",
        "alter table otel.traces add column resource_attributes jsonb not null default '{}'::jsonb",
        "alter table otel.traces add column trace_attributes jsonb not null default '{}'::jsonb",
    ],
    "one column renamed by hand": ["alter table otel.spans rename column status to status_code"],
    "only traces present": ["drop table otel.spans"],
    "only spans present": ["drop table otel.traces"],
    "column added by hand, nullable, no default": [
        "alter table otel.spans add column created_at timestamptz",
        "alter table otel.traces add column trace_attributes jsonb",
    ],
    "one index already there": ["create index ix_spans_trace_id on otel.spans (trace_id)"],
}


@pytest.mark.parametrize("state", sorted(HALF_WAY))
def test_half_way_states_converge(db_url, state):
    load_legacy(db_url, traces=300)
    for statement in HALF_WAY[state]:
        sql(db_url, statement)
    counts = row_counts(db_url)
    result = run_cli("upgrade", url=db_url)
    assert result.code == 0, result.err
    verify_ok(db_url)
    after = row_counts(db_url)
    assert {t: after[t] for t in counts} == counts


def row_counts(url):
    tables = sql(url, "select tablename from pg_tables where schemaname = 'otel' and tablename <> 'alembic_version'")
    return {t: sql(url, "select count(*) from otel.%s" % t)[0][0] for (t,) in tables}


def test_both_old_and_new_column_is_refused_and_changes_nothing(db_url):
    load_legacy(db_url, traces=10)
    sql(db_url, "alter table otel.spans add column start_time timestamptz")
    before = catalog_snapshot(db_url)
    result = run_cli("upgrade", url=db_url)
    assert result.code == 8
    assert "has both start_ts and start_time" in result.err
    assert one_line(result.err), result.err
    assert catalog_snapshot(db_url) == before


def test_operator_additions_are_kept(db_url):
    load_legacy(db_url, traces=100)
    sql(db_url, "alter table otel.spans add column region text default 'eu'")
    sql(db_url, "create index ops_spans_tenant on otel.spans (tenant_id)")
    sql(db_url, "create view otel.error_spans as select id, trace_id from otel.spans where status = 'STATUS_CODE_ERROR'")
    assert run_cli("upgrade", url=db_url).code == 0
    assert sql(db_url, "select count(*) from otel.spans where region = 'eu'") == [[500]]
    assert sql(db_url, "select count(*) from pg_indexes where indexname = 'ops_spans_tenant'") == [[1]]
    assert sql(db_url, "select count(*) from otel.error_spans") == [[100]]
    report = verify_ok(db_url)
    extras = {e["object"] for e in report["extras"]}
    assert {"otel.spans.region", "otel.ops_spans_tenant", "otel.error_spans"} <= extras


def test_second_schema_is_untouched(db_url):
    load_legacy(db_url, schema="otel_staging", traces=20)
    before = catalog_snapshot(db_url, "otel_staging")
    rows = table_rows(db_url, "otel_staging", "spans", SPAN_COLUMNS_LEGACY)
    assert run_cli("upgrade", url=db_url).code == 0
    assert catalog_snapshot(db_url, "otel_staging") == before
    assert table_rows(db_url, "otel_staging", "spans", SPAN_COLUMNS_LEGACY) == rows
    # and it migrates independently, with its own version table
    assert run_cli("upgrade", "--schema", "otel_staging", url=db_url).code == 0
    verify_ok(db_url, "otel_staging")
    assert sql(db_url, "select version_num from otel_staging.alembic_version") == [[HEAD_REVISION]]


def test_upgrade_at_head_is_a_noop(db_url):
    load_legacy(db_url, traces=20)
    assert run_cli("upgrade", url=db_url).code == 0
    before = catalog_snapshot(db_url)
    xid_before = sql(db_url, "select pg_current_xact_id()")[0][0]
    result = run_cli("upgrade", url=db_url)
    assert result.code == 0
    assert "nothing to do" in result.out
    assert "applied" not in result.err
    assert catalog_snapshot(db_url) == before
    # nothing wrote but the run history (its row opened, then closed): our probe above and those two took xids
    assert int(sql(db_url, "select pg_current_xact_id()")[0][0]) == int(xid_before) + 1 + 2


def test_rollback_and_upgrade_round_trip_keeps_rows(db_url):
    load_legacy(db_url, traces=1000)
    legacy_shape = shape(db_url)
    spans_before = table_rows(db_url, "otel", "spans", SPAN_COLUMNS_LEGACY)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    result = run_cli("rollback", url=db_url)
    assert result.code == 0, result.err
    assert "reverted %s" % BASELINE in result.err
    assert shape(db_url) == legacy_shape  # the legacy layout, exactly
    assert table_rows(db_url, "otel", "spans", SPAN_COLUMNS_LEGACY) == spans_before
    assert run_cli("upgrade", url=db_url).code == 0
    verify_ok(db_url)
    assert table_rows(db_url, "otel", "spans", head_names(SPAN_COLUMNS_LEGACY)) == spans_before


def _tables(url, schema="otel"):
    return [t[0] for t in sql(url, "select tablename from pg_tables where schemaname = %s order by 1", (schema,))]


def test_downgrade_of_a_store_created_from_nothing_returns_to_nothing(db_url):
    """Issue 22 item 7: no legacy layout (start_ts, status, attributes) appears;
    only Alembic's (empty) version table stays, in the schema upgrade created."""
    assert run_cli("upgrade", url=db_url).code == 0
    assert run_cli("downgrade", "base", url=db_url).code == 0
    # the run history stays: it is the audit trail of these runs (docs/history.md)
    assert _tables(db_url) == ["alembic_version", "otelmig_runs"]
    assert sql(db_url, "select count(*) from otel.alembic_version") == [[0]]
    assert run_cli("upgrade", url=db_url).code == 0  # and it is made again from nothing
    verify_ok(db_url)


def test_downgrade_of_an_adopted_store_never_drops_a_table(db_url):
    load_legacy(db_url, traces=2)
    assert run_cli("upgrade", url=db_url).code == 0
    assert run_cli("downgrade", "base", url=db_url).code == 0
    assert _tables(db_url) == ["alembic_version", "otelmig_runs", "spans", "traces"]


def test_a_created_store_holding_rows_is_refused_not_dropped(db_url, pyz):
    from conftest import run_pyz
    assert run_cli("upgrade", url=db_url).code == 0
    sql(db_url, "insert into otel.traces (trace_id, service_name, start_time) values ('t1', 'svc', now())")
    sql(db_url, "insert into otel.spans (trace_id, span_id, name, service_name, start_time) "
                "values ('t1', 's1', 'n', 'svc', now())")
    before = catalog_snapshot(db_url)
    for run in (lambda: run_cli("downgrade", "base", url=db_url), lambda: run_pyz(pyz, "downgrade", "base", url=db_url)):
        result = run()  # each checked before the next runs
        assert result.code == 8 and one_line(result.err), result
        assert "created by otelmig" in result.err and "1 rows in otel.traces" in result.err, result.err
        assert "1 rows in otel.spans" in result.err and "--allow-data-loss" in result.err, result.err
        assert "nothing was changed" in result.err, result.err
        assert catalog_snapshot(db_url) == before, result.err
    allowed = run_cli("downgrade", "base", "--allow-data-loss", url=db_url)
    assert allowed.code == 0, allowed
    assert _tables(db_url) == ["alembic_version", "otelmig_runs"]


def test_data_loss_guard_refuses_then_allows(db_url):
    load_legacy(db_url, traces=30)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    sql(db_url, "update otel.spans set status_message = 'boom' where id <= 7")
    sql(db_url, "update otel.traces set resource_attributes = '{\"k\": 1}' where trace_id in "
                "(select trace_id from otel.traces order by trace_id limit 3)")
    before = catalog_snapshot(db_url)
    refused = run_cli("rollback", url=db_url)
    assert refused.code == 8 and one_line(refused.err), refused
    assert "7 rows in otel.spans.status_message" in refused.err
    assert "3 rows in otel.traces.resource_attributes" in refused.err
    assert "--allow-data-loss" in refused.err
    assert catalog_snapshot(db_url) == before
    assert sql(db_url, "select version_num from otel.alembic_version") == [[BASELINE]]
    allowed = run_cli("rollback", "--allow-data-loss", url=db_url)
    assert allowed.code == 0, allowed.err
    assert sql(db_url, "select count(*) from otel.alembic_version") == [[0]]
    assert sql(db_url, "select count(*) from otel.spans") == [[150]]


def test_indexes_are_valid_and_match_contract(db_url):
    load_legacy(db_url, traces=500)
    assert run_cli("upgrade", url=db_url).code == 0
    rows = sql(db_url, """select c.relname, x.indisvalid from pg_index x join pg_class c on c.oid = x.indexrelid
                          join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'otel'""")
    valid = {name: ok for name, ok in rows}
    for index in contract.INDEXES:
        assert valid[index.name] is True


def test_build_time_constants_match_the_revisions():
    """check runs without Alembic on constants; they must be the scripts' truth."""
    from otelmig._version import HEAD_REVISION, KNOWN_REVISIONS
    scripts = script_directory(Settings(conninfo=None))
    assert list(scripts.get_heads()) == [HEAD_REVISION]
    assert tuple(reversed([s.revision for s in scripts.walk_revisions()])) == KNOWN_REVISIONS


def test_downgrade_base_checks_the_whole_path_before_the_first_change(db_url, pyz):
    """Issue 22 item 3: the baseline's data-loss refusal stops `downgrade base` at
    the head before revision 2 moves a row (exit 8, nothing changed)."""
    from conftest import run_pyz
    load_legacy(db_url, traces=20)
    assert run_cli("upgrade", url=db_url).code == 0
    sql(db_url, "update otel.spans set status_message = 'boom' where id <= 4")
    before = catalog_snapshot(db_url)
    for run in (lambda: run_cli("downgrade", "base", url=db_url), lambda: run_pyz(pyz, "downgrade", "base", url=db_url)):
        result = run()  # each checked before the next runs
        assert result.code == 8 and one_line(result.err), result
        assert "nothing was changed" in result.err and BASELINE in result.err, result.err
        assert "4 rows in otel.spans.status_message" in result.err and "--allow-data-loss" in result.err, result.err
        assert catalog_snapshot(db_url) == before
        assert sql(db_url, "select version_num from otel.alembic_version") == [[HEAD_REVISION]]


def _store_whose_baseline_downgrade_waits_on_traces(url):
    """At the head, with ix_traces_start_time the operator's (found, so revision 2's
    downgrade never touches traces) and a writer's open transaction on traces:
    revision 2 reverts, then the baseline's LOCK TABLE traces waits."""
    load_legacy(url, traces=5)
    sql(url, "create index ix_traces_start_time on otel.traces (start_ts)")
    assert run_cli("upgrade", url=url).code == 0
    writer = connect(url, autocommit=False)
    writer.cursor().execute("update otel.traces set root_span_name = root_span_name where false")
    return writer


def test_downgrade_stopped_part_way_names_where_the_database_is(db_url):
    writer = _store_whose_baseline_downgrade_waits_on_traces(db_url)
    try:
        result = run_cli("downgrade", "base", "--lock-timeout", "0.3", url=db_url)
    finally:
        writer.rollback()
        writer.close()
    assert result.code == 9, result
    assert error_line(result.err).endswith("the downgrade stopped part way: schema otel is now at %s (was %s)"
                                           % (BASELINE, HEAD_REVISION)), result.err
    assert sql(db_url, "select version_num from otel.alembic_version") == [[BASELINE]]


def test_downgrade_interrupted_part_way_names_where_the_database_is(db_url):
    writer = _store_whose_baseline_downgrade_waits_on_traces(db_url)
    try:
        proc = spawn(db_url, "downgrade", "base", "--lock-timeout", "60")
        wait_for(lambda: sql(db_url, "select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
                                     "and query ilike 'LOCK TABLE%%traces%%'")[0][0], "the baseline to wait")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        writer.rollback()
        writer.close()
    assert proc.returncode == 143, err
    assert "now at %s (was %s)" % (BASELINE, HEAD_REVISION) in error_line(err), err
    assert sql(db_url, "select version_num from otel.alembic_version") == [[BASELINE]]
