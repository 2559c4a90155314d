"""otelmig repair: drift at the head converged on the contract (issue 22, item 5),
on a real server: what it rebuilds and restores, what it refuses with nothing
changed, its dry run, its rerun, writers during an index build, and what
verify and plan say about it. The main case runs dist/otelmig.pyz."""

import threading
import time

import pg8000.dbapi
import pytest

from conftest import catalog_snapshot, connect, load_legacy, run_cli, run_pyz, sql
from helpers import BASELINE, error_line, one_line
from otelmig import drift
from otelmig.revisions import HEAD_REVISION, KNOWN_REVISIONS


def legacy_at_head(url):
    load_legacy(url, traces=50)
    assert run_cli("upgrade", url=url).code == 0


@pytest.fixture
def head_url(template_database, new_database):
    """The legacy store with rows, upgraded to the head (a copy of one made once)."""
    return new_database(template=template_database("repair: legacy 50 at head", legacy_at_head))


def run_all(url, *statements):
    for statement in statements:
        sql(url, statement)


def shape(url):
    """The schema's shape, constraints (a helper CHECK) included."""
    found = catalog_snapshot(url)
    found["constraints"] = [tuple(r) for r in sql(url, """
        select conrelid::regclass::text, conname, pg_get_constraintdef(oid), convalidated from pg_constraint
        where connamespace = 'otel'::regnamespace and conrelid <> 'otel.otelmig_runs'::regclass order by 1, 2""")]
    found["invalid"] = [r[0] for r in sql(url, """
        select i.relname::text from pg_index x join pg_class i on i.oid = x.indexrelid
        where i.relnamespace = 'otel'::regnamespace and not x.indisvalid order by 1""")]
    return found


def verify(url):
    return run_cli("verify", "--format", "json", url=url)


def statements_of(result):
    return [s for item in result.json()["repaired"] for s in item["statements"]]


# -- the main case, through the bundle ------------------------------------------------

def test_a_dropped_index_is_rebuilt_by_the_pyz_and_a_rerun_has_nothing_to_repair(head_url, pyz):
    before = shape(head_url)
    run_all(head_url, "drop index otel.ix_spans_span_id", "drop index otel.ix_traces_start_time")
    found = run_pyz(pyz, "verify", url=head_url)
    assert found.code == 7
    assert "run `otelmig.pyz repair`" in found.err and one_line(found.err), found.err
    assert run_pyz(pyz, "upgrade", url=head_url).code == 0  # upgrade has nothing to do: that was the gap

    done = run_pyz(pyz, "repair", "--format", "json", url=head_url)
    assert done.code == 0, done.err
    assert {item["object"] for item in done.json()["repaired"]} == {"otel.ix_spans_span_id",
                                                                    "otel.ix_traces_start_time"}
    # the partition holding the rows is built concurrently (an empty one plainly: nothing to wait for)
    assert any("CREATE INDEX CONCURRENTLY IF NOT EXISTS" in s and "spans_history" in s for s in statements_of(done)), \
        statements_of(done)
    assert run_pyz(pyz, "verify", url=head_url).code == 0
    assert shape(head_url)["indexes"] == [row for row in before["indexes"]] or \
        {r[0] for r in shape(head_url)["indexes"]} >= {r[0] for r in before["indexes"] if r[0].startswith("ix_")}
    assert shape(head_url)["invalid"] == []

    again = run_pyz(pyz, "repair", url=head_url)
    assert again.code == 0 and "nothing to repair" in again.out, again
    ran = sql(head_url, "select outcome, exit_code from otel.otelmig_runs where command = 'repair' order by started_at")
    assert ran == [["ok", 0], ["ok", 0]]


# -- what it rebuilds and restores -----------------------------------------------------

def test_an_invalid_index_left_by_a_failed_concurrent_build_is_reindexed_not_dropped(head_url):
    sql(head_url, "drop index otel.ix_traces_start_time")
    writer = connect(head_url, autocommit=False)  # a writer's open transaction: the build waits for it
    writer.cursor().execute("insert into otel.traces (trace_id, service_name, start_time) values ('w', 's', now())")
    builder = connect(head_url)
    builder.cursor().execute("set statement_timeout = '1s'")
    with pytest.raises(pg8000.dbapi.DatabaseError, match="57014"):  # canceled: statement timeout
        builder.cursor().execute("create index concurrently ix_traces_start_time on otel.traces (start_time)")
    builder.close()
    writer.rollback()
    writer.close()
    assert shape(head_url)["invalid"] == ["ix_traces_start_time"]

    done = run_cli("repair", "--format", "json", url=head_url)
    assert done.code == 0, done.err
    assert statements_of(done) == ['REINDEX INDEX CONCURRENTLY "otel"."ix_traces_start_time"']
    assert shape(head_url)["invalid"] == []
    assert verify(head_url).code == 0


def test_an_index_on_only_the_partitioned_parent_gets_one_per_partition_built_and_attached(head_url):
    run_all(head_url, "drop index otel.ix_spans_trace_id",
            "create index ix_spans_trace_id on only otel.spans (trace_id)")
    kinds = {p["kind"] for p in verify(head_url).json()["problems"]}
    assert kinds == {"invalid_index", "partition_index_missing"}
    done = run_cli("repair", "--format", "json", url=head_url)
    assert done.code == 0, done.err
    assert any(s.startswith("ALTER INDEX") and "ATTACH PARTITION" in s for s in statements_of(done))
    assert verify(head_url).code == 0 and shape(head_url)["invalid"] == []


def test_defaults_and_not_nulls_are_restored_through_a_validated_check_that_is_then_dropped(head_url):
    before = shape(head_url)
    run_all(head_url, "alter table otel.traces alter column span_count drop default",
            "alter table otel.traces alter column service_name drop not null",
            "alter table otel.spans alter column name drop not null")
    assert verify(head_url).code == 7
    done = run_cli("repair", "-v", "--format", "json", url=head_url)
    assert done.code == 0, done.err
    ran = statements_of(done)
    for helper_name in ("otelmig_nn_traces_service_name", "otelmig_nn_spans_name"):
        helper = [s for s in ran if helper_name in s and "DROP" not in s]
        assert [s.split(" ")[3] for s in helper] == ["ADD", "VALIDATE"], ran
    assert any("SET NOT NULL" in s for s in ran) and any("DROP CONSTRAINT IF EXISTS" in s for s in ran)
    assert any("SET DEFAULT 0" in s for s in ran)
    assert shape(head_url) == before  # the helper CHECKs are gone
    assert verify(head_url).code == 0


def test_a_missing_primary_key_on_a_plain_table_is_built_concurrently(head_url):
    before = shape(head_url)
    sql(head_url, "alter table otel.traces drop constraint traces_pkey")
    done = run_cli("repair", "--format", "json", url=head_url)
    assert done.code == 0, done.err
    assert any("CREATE UNIQUE INDEX CONCURRENTLY" in s for s in statements_of(done))
    assert shape(head_url) == before and verify(head_url).code == 0


def test_writers_keep_writing_while_the_index_builds(head_url):
    sql(head_url, "insert into otel.spans (trace_id, span_id, name, service_name, start_time) "
                  "select 't' || g, 's' || g, 'op', 'svc', now() - (g % 3600) * interval '1 second' "
                  "from generate_series(1, 300000) g")
    sql(head_url, "drop index otel.ix_spans_service_start_time")
    stop, written, rejected = threading.Event(), [0], []

    def write():
        conn = connect(head_url)
        while not stop.is_set():
            try:
                conn.cursor().execute("insert into otel.spans (trace_id, span_id, name, service_name, start_time) "
                                      "values ('w', 'w', 'op', 'svc', now())")
                written[0] += 1
            except Exception as error:  # counted: the test asserts there are none
                rejected.append(str(error))
        conn.close()
    thread = threading.Thread(target=write)
    thread.start()
    try:
        time.sleep(0.2)
        at_start = written[0]
        done = run_cli("repair", url=head_url)
    finally:
        stop.set()
        thread.join()
    assert done.code == 0, done.err
    assert rejected == [] and written[0] > at_start
    assert verify(head_url).code == 0


def test_dry_run_lists_what_it_would_run_and_changes_nothing(head_url):
    sql(head_url, "drop index otel.ix_spans_span_id")
    before = shape(head_url)
    shown = run_cli("repair", "--dry-run", url=head_url)
    assert shown.code == 0, shown.err
    assert "would repair missing_index otel.ix_spans_span_id" in shown.out
    assert "CREATE INDEX IF NOT EXISTS \"ix_spans_span_id\" ON ONLY" in shown.out
    assert shape(head_url) == before
    assert sql(head_url, "select count(*) from otel.otelmig_runs where command = 'repair'")[0][0] == 0


def test_plan_shows_what_repair_would_do(head_url):
    clean = run_cli("plan", "--format", "json", url=head_url)
    assert clean.code == 0 and "repair" not in clean.json()
    sql(head_url, "alter table otel.traces alter column span_count drop default")
    shown = run_cli("plan", "--format", "json", url=head_url)
    assert shown.code == 0
    assert [r["object"] for r in shown.json()["repair"]["repairs"]] == ["otel.traces.span_count"]
    assert "SET DEFAULT 0" in shown.json()["repair"]["repairs"][0]["statements"][0]["sql"]
    assert "repair (`otelmig repair`" in run_cli("plan", url=head_url).out


# -- what it refuses, nothing changed ----------------------------------------------------

REFUSED = [
    ("wrong_type", ["alter table otel.spans alter column kind type varchar(20)"], "otel.spans.kind", "maintenance window"),
    ("missing_column", ["alter table otel.spans drop column status_message"], "otel.spans.status_message", "backup"),
    ("missing_table", ["drop table otel.traces"], "otel.traces", "backup"),
    ("extra_not_null", ["alter table otel.spans alter column kind set not null"], "otel.spans.kind", "DROP NOT NULL"),
    ("other_default", ["alter table otel.traces alter column span_count set default 1"], "otel.traces.span_count",
     "SET DEFAULT"),
    ("duplicates", ["alter table otel.traces drop constraint traces_pkey",
                    "insert into otel.traces (trace_id, service_name, start_time) "
                    "select trace_id, service_name, start_time from otel.traces limit 2"],
     "otel.traces", "2 value(s) of (trace_id) occur more than once"),
    ("partitions", ["drop table otel.spans_p%s" % "{last_day}"], "otel.spans partitions", "maintain"),
]


@pytest.mark.parametrize("case, statements, named, fix", REFUSED, ids=[r[0] for r in REFUSED])
def test_what_it_cannot_repair_safely_is_named_and_refused_with_nothing_changed(head_url, case, statements, named,
                                                                                 fix):
    last_day = sql(head_url, "select to_char(now() at time zone 'UTC' + interval '7 days', 'YYYYMMDD')")[0][0]
    run_all(head_url, *[s.format(last_day=last_day) for s in statements + ["drop index otel.ix_spans_span_id"]])
    before = shape(head_url)
    refused = run_cli("repair", url=head_url)
    assert refused.code == 8, refused
    assert one_line(refused.err) and named in refused.err and fix in refused.err, refused.err
    assert "nothing" in refused.err.lower() and "Traceback" not in refused.err
    assert shape(head_url) == before  # not even the index it could have built


def test_nulls_refuse_the_not_null_naming_the_column_the_count_and_the_fix(head_url):
    run_all(head_url, "alter table otel.spans alter column name drop not null",
            "insert into otel.spans (trace_id, span_id, service_name, start_time) "
            "select 'n', 'n' || g, 'svc', now() from generate_series(1, 3) g")
    before = shape(head_url)
    refused = run_cli("repair", url=head_url)
    assert refused.code == 8 and one_line(refused.err), refused
    assert "otel.spans.name holds 3 NULL(s)" in refused.err and "WHERE name IS NULL" in refused.err
    assert shape(head_url) == before
    assert "run `otelmig repair`" in verify(head_url).err  # verify sends them here; repair says what to do first


def test_a_store_behind_the_head_is_refused_upgrade_first(db_url):
    first = KNOWN_REVISIONS[0]
    assert first != HEAD_REVISION and run_cli("upgrade", first, url=db_url).code == 0
    before = shape(db_url)
    refused = run_cli("repair", url=db_url)
    assert refused.code == 8 and one_line(refused.err), refused
    assert "behind the head" in refused.err and "upgrade` first" in refused.err
    assert shape(db_url) == before


def test_an_empty_database_is_refused_upgrade_first(db_url):
    refused = run_cli("repair", url=db_url)
    assert refused.code == 8 and "upgrade` first" in refused.err and one_line(refused.err), refused


def test_verify_names_repair_only_for_what_it_repairs(head_url):
    sql(head_url, "alter table otel.spans alter column kind type varchar(20)")
    found = verify(head_url)
    assert found.code == 7 and "repair" not in found.err
    sql(head_url, "drop index otel.ix_spans_span_id")
    assert "`otelmig repair` fixes 1 of them once the others are fixed" in verify(head_url).err


def test_a_reader_holding_the_table_past_the_lock_budget_is_exit_9_with_nothing_changed(head_url):
    sql(head_url, "alter table otel.traces alter column span_count drop default")
    before = shape(head_url)
    reader = connect(head_url, autocommit=False)
    reader.cursor().execute("select count(*) from otel.traces")  # ACCESS SHARE until it ends
    try:
        started = time.monotonic()
        busy = run_cli("repair", "--lock-timeout", "0.3", url=head_url)
        took = time.monotonic() - started
    finally:
        reader.rollback()
        reader.close()
    assert busy.code == 9 and "repair stopped at wrong_default otel.traces.span_count" in error_line(busy.err), busy
    assert took < 10  # 6 x --lock-timeout, then it gives up
    assert shape(head_url) == before
    assert run_cli("repair", url=head_url).code == 0 and verify(head_url).code == 0


def test_a_step_retried_after_lock_timeouts_is_listed_once(head_url):
    """A reader holds the table through repair's first tries: the step is retried and listed once, as it ran
    (it was listed once per try; adversary pass 4, finding 2)."""
    sql(head_url, "alter table otel.traces alter column span_count drop default")
    reader = connect(head_url, autocommit=False)
    reader.cursor().execute("select count(*) from otel.traces")  # ACCESS SHARE until it ends

    def release():
        time.sleep(1.0)
        reader.rollback()
    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        done = run_cli("repair", "--lock-timeout", "5", "--format", "json", "-v", url=head_url)
    finally:
        thread.join(10)
        reader.close()
    assert done.code == 0 and "retrying" in done.err, done
    ran = statements_of(done)
    assert len(ran) == len(set(ran)) and [s for s in ran if "SET DEFAULT" in s], ran
    assert verify(head_url).code == 0


def test_a_refusal_in_json_lists_each_refusal(head_url):
    run_all(head_url, "alter table otel.spans alter column kind type varchar(20)",
            "alter table otel.spans drop column status_message")
    refused = run_cli("repair", "--format", "json", url=head_url)
    assert refused.code == 8
    payload = refused.json()
    assert payload["exit_code"] == 8 and payload["repaired"] == [] and len(payload["refusals"]) == 2
    assert one_line(refused.err)


def test_a_helper_check_left_by_a_repair_that_stopped_is_dropped_by_the_next(head_url):
    before = shape(head_url)
    sql(head_url, "alter table otel.spans add constraint otelmig_nn_spans_name check (name is not null)")
    left = verify(head_url)  # the contract holds, but the helper is a leftover of ours: named, repair's to drop
    assert left.code == 7 and "run `otelmig repair`" in left.err, left
    assert [p["kind"] for p in left.json()["problems"]] == ["repair_leftover"], left.out
    done = run_cli("repair", "--format", "json", url=head_url)
    assert done.code == 0, done.err
    assert statements_of(done) == ['ALTER TABLE "otel"."spans" DROP CONSTRAINT IF EXISTS "otelmig_nn_spans_name"']
    assert shape(head_url) == before


def test_dry_run_of_a_not_null_lists_every_step_it_would_take(head_url):
    sql(head_url, "alter table otel.traces alter column service_name drop not null")
    shown = run_cli("repair", "--dry-run", "--format", "json", url=head_url)
    assert shown.code == 0, shown.err
    words = [s.split(" ")[3] for s in statements_of(shown)]
    assert words == ["ADD", "VALIDATE", "ALTER", "DROP"], statements_of(shown)


def test_an_invalid_partition_index_left_by_a_failed_build_is_reindexed_then_attached(head_url):
    run_all(head_url, "drop index otel.ix_spans_trace_id",
            "create index ix_spans_trace_id on only otel.spans (trace_id)")
    writer = connect(head_url, autocommit=False)  # holds the concurrent build up until its timeout
    writer.cursor().execute("insert into otel.spans (trace_id, span_id, name, service_name, start_time) "
                            "values ('w', 'w', 'op', 'svc', now())")
    builder = connect(head_url)
    builder.cursor().execute("set statement_timeout = '1s'")
    with pytest.raises(pg8000.dbapi.DatabaseError, match="57014"):
        builder.cursor().execute("create index concurrently spans_history_ix_spans_trace_id "
                                 "on otel.spans_history (trace_id)")
    builder.close()
    writer.rollback()
    writer.close()
    assert "spans_history_ix_spans_trace_id" in shape(head_url)["invalid"]
    done = run_cli("repair", "--format", "json", url=head_url)
    assert done.code == 0, done.err
    ran = statements_of(done)
    assert 'REINDEX INDEX CONCURRENTLY otel.spans_history_ix_spans_trace_id' in ran, ran
    assert not any(s.startswith("DROP") for s in ran)
    assert verify(head_url).code == 0 and shape(head_url)["invalid"] == []


def test_the_set_not_null_after_the_validated_check_scans_no_partition(head_url):
    """The server's own word (DEBUG1) that SET NOT NULL skipped its scan, for the parent and every partition,
    running the statements repair decides (drift.survey, drift.statements) in its order."""
    sql(head_url, "alter table otel.spans alter column name drop not null")
    conn = connect(head_url)
    try:
        found = drift.survey(conn, "otel")
        assert [r.problem.kind for r in found.repairs] == ["wrong_nullability"] and found.refusals == []
        cursor = conn.cursor()
        for statement in drift.statements(conn, "otel", found.repairs[0].steps):
            if "SET NOT NULL" in statement["sql"]:
                cursor.execute("SET client_min_messages = debug1")
                conn.notices.clear()
            cursor.execute(statement["sql"])
            cursor.execute("RESET client_min_messages")
        proved = [n[b"M"].decode() for n in conn.notices if b"sufficient to prove" in n.get(b"M", b"")]
    finally:
        conn.close()
    partitions = sql(head_url, "select count(*) from pg_inherits where inhparent = 'otel.spans'::regclass")[0][0]
    assert len(proved) == 1 + partitions, proved
    assert verify(head_url).code == 0


# -- a failed or killed NOT NULL repair leaves nothing that rejects writes --------------

NULL_TRACE = ("insert into otel.traces (trace_id, service_name, start_time, span_count) "
              "values ('%s', null, now(), 0)")


def helpers(url):
    return [tuple(r) for r in sql(url, "select conname::text, convalidated from pg_constraint "
                                       "where conname::text like 'otelmig\\_nn\\_%%' order by 1")]


def test_a_not_null_repair_whose_validate_meets_a_null_drops_its_helper_and_says_what_stayed_done(head_url):
    """A writer's NULL lands while the repair waits for a reader's lock: the VALIDATE fails. The helper CHECK
    (which would reject every NULL insert from then on) is dropped; the SET DEFAULT before it is named as done."""
    run_all(head_url, "alter table otel.traces alter column span_count drop default",
            "alter table otel.traces alter service_name drop not null")
    reader = connect(head_url, autocommit=False)
    reader.cursor().execute("select 1 from otel.traces limit 1")

    def release():
        time.sleep(3)
        reader.rollback()
    releaser = threading.Thread(target=release)

    def write():
        time.sleep(0.5)  # queued behind repair's lock request, in between its retries
        sql(head_url, NULL_TRACE % "writer")
    writer = threading.Thread(target=write)
    releaser.start()
    writer.start()
    try:
        failed = run_cli("repair", "--lock-timeout", "1", "--format", "json", url=head_url)
    finally:
        writer.join()
        releaser.join()
        reader.close()
    assert failed.code == 8, failed
    line = error_line(failed.err)
    assert "nothing changed" not in line and "otel.traces.span_count" in line and "stay" in line, line
    assert "otelmig_nn_traces_service_name" in line and "dropped" in line, line
    assert [item["object"] for item in failed.json()["repaired"]] == ["otel.traces.span_count"], failed.out
    assert helpers(head_url) == []
    sql(head_url, NULL_TRACE % "after")  # the operator's nullable column takes NULLs again
    assert verify(head_url).code == 7  # the NOT NULL drift is still there (with NULLs: repair refuses it)


def test_a_helper_left_not_valid_by_a_killed_run_is_named_by_verify_and_dropped_by_the_next_repair(head_url):
    run_all(head_url, "alter table otel.traces alter service_name drop not null", NULL_TRACE % "before",
            # what a run killed between its ADD and its VALIDATE leaves
            "alter table otel.traces add constraint otelmig_nn_traces_service_name "
            "check (service_name is not null) not valid")
    found = verify(head_url)
    assert found.code == 7 and "run `otelmig repair`" in found.err, found.err
    assert any("otelmig_nn_traces_service_name" in p["detail"] for p in found.json()["problems"]), found.out
    refused = run_cli("repair", url=head_url)
    assert refused.code == 8 and "1 NULL(s)" in refused.err, refused
    assert "dropped" in refused.err and "otelmig_nn_traces_service_name" in refused.err, refused.err
    assert helpers(head_url) == []
    sql(head_url, NULL_TRACE % "after")


def test_a_helper_left_not_valid_with_no_nulls_is_finished(head_url):
    before = shape(head_url)
    run_all(head_url, "alter table otel.traces alter service_name drop not null",
            "alter table otel.traces add constraint otelmig_nn_traces_service_name "
            "check (service_name is not null) not valid")
    done = run_cli("repair", url=head_url)
    assert done.code == 0, done
    assert shape(head_url) == before and verify(head_url).code == 0


def test_exit_9_after_some_repairs_lists_what_stays_done(head_url):
    run_all(head_url, "alter table otel.traces alter column span_count drop default",
            "alter table otel.spans alter column created_at drop default")
    reader = connect(head_url, autocommit=False)
    reader.cursor().execute("select count(*) from otel.spans")  # holds spans, not traces
    try:
        busy = run_cli("repair", "--lock-timeout", "0.3", "--format", "json", url=head_url)
    finally:
        reader.rollback()
        reader.close()
    assert busy.code == 9, busy
    assert [item["object"] for item in busy.json()["repaired"]] == ["otel.traces.span_count"], busy.out
    assert "what stays done: wrong_default otel.traces.span_count" in error_line(busy.err), busy.err
    assert run_cli("repair", url=head_url).code == 0 and verify(head_url).code == 0


def test_an_operators_check_named_like_the_helper_is_kept_and_a_not_null_needing_the_name_is_refused(head_url):
    sql(head_url, "alter table otel.traces add constraint otelmig_nn_traces_service_name check (service_name <> '')")
    kept = run_cli("repair", url=head_url)
    assert kept.code == 0 and "nothing to repair" in kept.out, kept
    assert helpers(head_url) == [("otelmig_nn_traces_service_name", True)]
    sql(head_url, "alter table otel.traces alter service_name drop not null")
    before = shape(head_url)
    refused = run_cli("repair", url=head_url)
    assert refused.code == 8 and one_line(refused.err), refused
    assert "otelmig_nn_traces_service_name" in refused.err and "rename it" in refused.err, refused.err
    assert shape(head_url) == before


def test_an_operators_index_under_the_partition_index_name_is_refused_before_any_change_then_renamed(head_url):
    run_all(head_url, "drop index otel.ix_spans_trace_id",
            "create index spans_history_ix_spans_trace_id on otel.spans_history (span_id)")
    before = shape(head_url)
    refused = run_cli("repair", url=head_url)
    assert refused.code == 8 and one_line(refused.err), refused
    assert "otel.spans_history_ix_spans_trace_id" in refused.err and "rename it" in refused.err, refused.err
    assert shape(head_url) == before  # not even the parent's ON ONLY index
    sql(head_url, "alter index otel.spans_history_ix_spans_trace_id rename to ops_history_span_id")
    done = run_cli("repair", url=head_url)
    assert done.code == 0, done
    assert verify(head_url).code == 0 and shape(head_url)["invalid"] == []


def stop_a_reindex(url, index):
    """A REINDEX INDEX CONCURRENTLY that stops (statement timeout while a writer's transaction is open): it
    leaves its INVALID copy, <index>_ccnew."""
    table = sql(url, "select indrelid::regclass::text from pg_index where indexrelid = 'otel.%s'::regclass" % index)
    writer = connect(url, autocommit=False)
    # a day partition's rows are stamped from its lower bound; any other table takes now()
    at = ("coalesce((select (regexp_match(pg_get_expr(relpartbound, oid), 'FROM \\(''([^'']+)''\\)'))[1]::timestamptz "
          "from pg_class where oid = '%s'::regclass), now())" % table[0][0])
    writer.cursor().execute("insert into %s (trace_id, span_id, name, service_name, start_time) "
                            "values ('w', 'w', 'op', 'svc', %s)" % (table[0][0], at) if "spans" in table[0][0] else
                            "insert into otel.traces (trace_id, service_name, start_time) values ('w', 's', now())")
    builder = connect(url)
    builder.cursor().execute("set statement_timeout = '1s'")
    with pytest.raises(pg8000.dbapi.DatabaseError, match="57014"):
        builder.cursor().execute("reindex index concurrently otel.%s" % index)
    builder.close()
    writer.rollback()
    writer.close()


@pytest.mark.parametrize("index", ["ix_traces_start_time", "spans_history_ix_spans_trace_id"])
def test_the_invalid_copy_a_stopped_reindex_left_is_dropped_concurrently(head_url, index):
    # an operator's index that only looks like a copy: valid, so kept
    sql(head_url, "create index ix_traces_service_start_time_ccnew on otel.traces (service_name)")
    before = shape(head_url)
    stop_a_reindex(head_url, index)
    assert shape(head_url)["invalid"] == [index + "_ccnew"]
    found = verify(head_url)  # on a partition nothing else sees it
    assert found.code == 7 and "run `otelmig repair`" in found.err, found
    assert [p["object"] for p in found.json()["problems"]] == ["otel.%s_ccnew" % index], found.out
    done = run_cli("repair", "--format", "json", url=head_url)
    assert done.code == 0, done
    assert 'DROP INDEX CONCURRENTLY IF EXISTS "otel"."%s_ccnew"' % index in statements_of(done), done.out
    assert shape(head_url) == before  # the operator's look-alike stays
    assert verify(head_url).code == 0


def stop_a_reindex_after_its_swap(url, index):
    """A REINDEX INDEX CONCURRENTLY cancelled after it swapped in its new index, while it waits for a reader
    before marking the old one dead: the old one stays, INVALID, as <index>_ccold (the new one has the name)."""
    table = sql(url, "select indrelid::regclass::text from pg_index where indexrelid = 'otel.%s'::regclass" % index)[0][0]
    old_snapshot = connect(url, autocommit=False)  # the REINDEX waits for it just before its swap
    old_snapshot.cursor().execute("set transaction isolation level repeatable read")
    old_snapshot.cursor().execute("select 1")
    builder = connect(url)
    cursor = builder.cursor()
    cursor.execute("select pg_backend_pid()")
    pid, failed = cursor.fetchone()[0], []

    def reindex():
        try:
            builder.cursor().execute("reindex index concurrently otel.%s" % index)
        except pg8000.dbapi.DatabaseError as exc:
            failed.append(exc)
    thread = threading.Thread(target=reindex, daemon=True)
    thread.start()
    reader = connect(url, autocommit=False)
    try:
        wait_for_phase(url, pid, "waiting for old snapshots")
        reader.cursor().execute("select 1 from %s limit 1" % table)  # ACCESS SHARE until its end, no snapshot kept
        old_snapshot.rollback()
        wait_for_phase(url, pid, "waiting for readers before marking dead")
        sql(url, "select pg_cancel_backend(%d)" % pid)
        thread.join(30)
        assert failed and "57014" in str(failed[0]), failed
    finally:
        reader.rollback()
        for conn in (reader, old_snapshot, builder):
            conn.close()


def wait_for_phase(url, pid, phase, seconds=30):
    deadline = time.monotonic() + seconds
    while sql(url, "select phase from pg_stat_progress_create_index where pid = %d" % pid) != [[phase]]:
        assert time.monotonic() < deadline, "the REINDEX never reached %r" % phase
        time.sleep(0.02)


@pytest.mark.parametrize("index", ["ix_traces_start_time", "spans_history_ix_spans_trace_id"])
def test_the_old_index_a_reindex_stopped_after_its_swap_left_is_dropped_concurrently(head_url, index):
    sql(head_url, "create index ix_traces_service_start_time_ccold on otel.traces (service_name)")  # valid: kept
    before = shape(head_url)
    stop_a_reindex_after_its_swap(head_url, index)
    assert shape(head_url)["invalid"] == [index + "_ccold"]
    found = verify(head_url)
    assert found.code == 7 and "run `otelmig repair`" in found.err, found
    assert [p["object"] for p in found.json()["problems"]] == ["otel.%s_ccold" % index], found.out
    assert "the old index, after the new one took its name" in found.out, found.out
    assert "otel.%s_ccold" % index not in [e["object"] for e in found.json()["extras"]], found.out  # named once
    done = run_cli("repair", "--format", "json", url=head_url)
    assert done.code == 0, done
    assert statements_of(done) == ['DROP INDEX CONCURRENTLY IF EXISTS "otel"."%s_ccold"' % index], done.out
    assert shape(head_url) == before
    assert verify(head_url).code == 0


def day_partition_index(url, parent_index="ix_spans_trace_id"):
    """The index PostgreSQL named on the first day partition for a contract index (spans_pYYYYMMDD_..._idx)."""
    found = sql(url, """select c.relname::text from pg_inherits h join pg_class c on c.oid = h.inhrelid
        join pg_index x on x.indexrelid = c.oid join pg_class t on t.oid = x.indrelid
        where h.inhparent = 'otel.%s'::regclass and t.relname ~ '^spans_p[0-9]{8}$'
        order by t.relname limit 1""" % parent_index)
    assert found, "no index of %s on a day partition" % parent_index
    return found[0][0]


@pytest.mark.parametrize("stop,suffix", [(stop_a_reindex, "_ccnew"), (stop_a_reindex_after_its_swap, "_ccold")],
                         ids=["before-swap", "after-swap"])
@pytest.mark.parametrize("which", ["day partition index", "traces_pkey", "spans_history_pkey"])
def test_a_stopped_reindex_copy_of_a_day_partition_index_or_a_primary_key_is_dropped(head_url, stop, suffix, which):
    """Copies are known by what they are (an INVALID index named as PostgreSQL names a copy, with its
    original's definition, of a contract index or a partition of one, a primary key included), not only
    by the names otelmig gives: PostgreSQL names a day partition's indexes itself (adversary finding F1, F2)."""
    index = day_partition_index(head_url) if which == "day partition index" else which
    before = shape(head_url)
    stop(head_url, index)
    assert shape(head_url)["invalid"] == [index + suffix]
    found = verify(head_url)
    assert found.code == 7 and "run `otelmig repair`" in found.err, found
    assert "otel.%s%s" % (index, suffix) in [p["object"] for p in found.json()["problems"]], found.out
    done = run_cli("repair", "--format", "json", url=head_url)
    assert done.code == 0, done
    assert [s for s in statements_of(done) if "DROP INDEX" in s and index + suffix in s], done.out
    assert shape(head_url) == before
    assert verify(head_url).code == 0


def test_an_invalid_look_alike_with_another_definition_is_the_operators_and_kept(head_url):
    """An operator's failed build named like a copy, but not of that index's definition: kept (finding F4)."""
    sql(head_url, "insert into otel.traces (trace_id, service_name, start_time) values ('d1', 'dup', now()), "
                  "('d2', 'dup', now())")
    with pytest.raises(pg8000.dbapi.DatabaseError, match="23505"):
        sql(head_url, "create unique index concurrently ix_traces_start_time_ccold on otel.traces ((service_name))")
    assert shape(head_url)["invalid"] == ["ix_traces_start_time_ccold"]
    found = verify(head_url)
    assert found.code == 0 and not found.json()["problems"], found  # an extra index of the operator's, no more
    done = run_cli("repair", url=head_url)
    assert done.code == 0 and "DROP" not in done.out, done
    assert shape(head_url)["invalid"] == ["ix_traces_start_time_ccold"]


def test_a_copy_is_named_and_dropped_while_a_reader_holds_the_table(head_url):
    """A query planned on the table locks each of its indexes, the INVALID copy too (ACCESS SHARE): that is
    not a REINDEX at work, so the copy is still named and dropped (adversary pass 2, finding 5)."""
    stop_a_reindex_after_its_swap(head_url, "ix_traces_start_time")
    reader = connect(head_url, autocommit=False)
    try:
        reader.cursor().execute("select count(*) from otel.traces where trace_id = 'x'")
        assert sql(head_url, "select count(*) from pg_locks where relation = 'otel.ix_traces_start_time_ccold'::regclass")[0][0]
        found = verify(head_url)
        assert found.code == 7 and [p["object"] for p in found.json()["problems"]] == \
            ["otel.ix_traces_start_time_ccold"], found
    finally:
        reader.rollback()
        reader.close()
    assert run_cli("repair", url=head_url).code == 0
    assert shape(head_url)["invalid"] == [] and verify(head_url).code == 0


def test_the_copy_of_a_reindex_still_running_is_left_to_it(head_url):
    """A REINDEX CONCURRENTLY still at work (here waiting for a reader before it marks the old index dead) has
    its copy: not a leftover, so neither reported nor dropped; the REINDEX then finishes (finding F5)."""
    index = "ix_traces_start_time"
    old_snapshot = connect(head_url, autocommit=False)
    old_snapshot.cursor().execute("set transaction isolation level repeatable read")
    old_snapshot.cursor().execute("select 1")
    builder = connect(head_url)
    cursor = builder.cursor()
    cursor.execute("select pg_backend_pid()")
    pid, failed = cursor.fetchone()[0], []

    def reindex():
        try:
            builder.cursor().execute("reindex index concurrently otel.%s" % index)
        except pg8000.dbapi.DatabaseError as exc:
            failed.append(exc)
    thread = threading.Thread(target=reindex, daemon=True)
    thread.start()
    reader = connect(head_url, autocommit=False)
    try:
        wait_for_phase(head_url, pid, "waiting for old snapshots")
        reader.cursor().execute("select 1 from otel.traces limit 1")
        old_snapshot.rollback()
        wait_for_phase(head_url, pid, "waiting for readers before marking dead")
        assert shape(head_url)["invalid"] == [index + "_ccold"]
        found = verify(head_url)
        assert found.code == 0 and not found.json()["problems"], found
        dry = run_cli("repair", "--dry-run", url=head_url)
        assert "_ccold" not in dry.out, dry
    finally:
        reader.rollback()
        thread.join(30)
        for conn in (reader, old_snapshot, builder):
            conn.close()
    assert not failed and shape(head_url)["invalid"] == [], failed


def test_an_invalid_index_that_is_not_a_copy_of_a_contract_index_is_kept(head_url):
    stop_a_reindex(head_url, "ix_traces_start_time")
    sql(head_url, "alter index otel.ix_traces_start_time_ccnew rename to ops_ix_ccnew")
    done = run_cli("repair", url=head_url)
    assert "ops_ix_ccnew" in shape(head_url)["invalid"] and "DROP" not in done.out, done


@pytest.mark.parametrize("stop,copy", [(stop_a_reindex, "_ccnew"), (stop_a_reindex_after_its_swap, "_ccold")])
@pytest.mark.parametrize("index", ["ix_spans_span_id", "spans_pkey"])
def test_upgrade_says_drop_for_a_stopped_reindex_copy_on_the_plain_spans(db_url, stop, copy, index):
    """One fix, DROP, that works as printed; a primary key's copy (a unique index) is not also told to be
    recreated on the partitioned table as the operator's unique index (finding F2)."""
    first = KNOWN_REVISIONS[0]
    assert run_cli("upgrade", first, url=db_url).code == 0
    stop(db_url, index)
    refused = run_cli("upgrade", url=db_url)
    assert refused.code == 8 and index + copy in refused.err, refused
    assert "ends in _ccnew or _ccold" in refused.err and "DROP INDEX CONCURRENTLY that one" in refused.err, refused.err
    assert "unique indexes besides the primary key" not in refused.err, refused.err
    sql(db_url, "drop index concurrently otel.%s%s" % (index, copy))
    assert run_cli("upgrade", url=db_url).code == 0


@pytest.mark.parametrize("index,drop", [("ix_traces_start_time", "drop index otel.ix_traces_start_time"),
                                        ("traces_pkey", "alter table otel.traces drop constraint traces_pkey")])
def test_a_copy_whose_original_was_dropped_is_known_once_repair_built_it_again(head_url, index, drop):
    """The REINDEX stopped, then the operator dropped the index: with no original beside it, an INVALID index
    so named could be the operator's own build, so it is kept; repair builds the original, then the copy is
    known (verify names it) and the next repair drops it. Repair's dry run lists what the run does."""
    stop_a_reindex(head_url, index)
    sql(head_url, drop)
    copy = 'DROP INDEX CONCURRENTLY IF EXISTS "otel"."%s_ccnew"' % index
    dry = run_cli("repair", "--dry-run", "--format", "json", url=head_url)
    first = run_cli("repair", "--format", "json", url=head_url)
    assert first.code == 0 and statements_of(first) == statements_of(dry) and copy not in statements_of(first), \
        (dry.out, first.out)
    found = verify(head_url)
    assert found.code == 7 and [p["object"] for p in found.json()["problems"]] == ["otel.%s_ccnew" % index], found
    second = run_cli("repair", "--format", "json", url=head_url)
    assert second.code == 0 and statements_of(second) == [copy], second.out
    assert shape(head_url)["invalid"] == [] and verify(head_url).code == 0


def test_an_invalid_index_on_the_partitioned_spans_is_never_taken_for_a_copy(head_url):
    """A REINDEX leaves its copies on partitions, never on the partitioned parent: an operator's ON ONLY index
    there (INVALID until each partition has one) is theirs, and DROP INDEX CONCURRENTLY could not drop it
    anyway (adversary pass 4, finding 3)."""
    sql(head_url, "create index ix_spans_trace_id_ccnew on only otel.spans (trace_id)")
    assert "ix_spans_trace_id_ccnew" in shape(head_url)["invalid"]
    found = verify(head_url)
    assert "otel.ix_spans_trace_id_ccnew" not in [p["object"] for p in found.json()["problems"]], found.out
    dry = run_cli("repair", "--dry-run", url=head_url)
    assert "DROP" not in dry.out, dry


def test_an_index_being_built_concurrently_under_a_copys_name_is_left_to_its_build(head_url):
    """An operator building a copy of a contract index by hand under a name PostgreSQL gives copies: while the
    build runs its index is INVALID, beside an index of the same definition, and holds no lock of its own;
    verify and repair leave it to the build, which then finishes (adversary pass 4, finding 1)."""
    old_snapshot = connect(head_url, autocommit=False)  # holds the build at "waiting for old snapshots"
    old_snapshot.cursor().execute("set transaction isolation level repeatable read")
    old_snapshot.cursor().execute("select 1")
    builder = connect(head_url)
    cursor = builder.cursor()
    cursor.execute("select pg_backend_pid()")
    pid, failed = cursor.fetchone()[0], []

    def build():
        try:
            builder.cursor().execute("create index concurrently ix_traces_start_time_ccnew on otel.traces (start_time)")
        except pg8000.dbapi.DatabaseError as exc:
            failed.append(exc)
    thread = threading.Thread(target=build, daemon=True)
    thread.start()
    try:
        wait_for_phase(head_url, pid, "waiting for old snapshots")
        assert shape(head_url)["invalid"] == ["ix_traces_start_time_ccnew"]
        found = verify(head_url)
        assert found.code == 0 and not found.json()["problems"], found
        dry = run_cli("repair", "--dry-run", url=head_url)
        assert dry.code == 0 and "DROP" not in dry.out, dry
    finally:
        old_snapshot.rollback()
        thread.join(30)
        for conn in (old_snapshot, builder):
            conn.close()
    assert not failed and shape(head_url)["invalid"] == [], failed
    assert run_cli("repair", url=head_url).code == 0 and "ix_traces_start_time_ccnew" in \
        [r[0] for r in sql(head_url, "select relname::text from pg_class where relname like 'ix_traces%'")]


def test_a_stopped_reindex_copy_with_a_long_name_is_told_only_drop(db_url):
    """The copy of an operator's index whose name is too long for the partitions' prefix: the original is told
    a rename, the copy only DROP (it was told both; adversary pass 2)."""
    long_name = "ix_spans_tenant_service_environment_started_ab"  # 46 bytes: too long by one
    assert run_cli("upgrade", KNOWN_REVISIONS[0], url=db_url).code == 0
    sql(db_url, "create index %s on otel.spans (tenant_id)" % long_name)
    stop_a_reindex(db_url, long_name)
    refused = run_cli("upgrade", url=db_url)
    assert refused.code == 8, refused
    too_long = refused.err.split("index names too long", 1)[1].split("; and ", 1)[0]
    assert long_name + " (rename it" in too_long and long_name + "_ccnew" not in too_long, refused.err
    assert "then rerun: otel.%s_ccnew" % long_name in refused.err, refused.err


def test_a_dropped_sequence_default_of_spans_id_is_restored_from_its_owned_sequence(head_url):
    before = shape(head_url)
    assert sql(head_url, "select pg_get_serial_sequence('otel.spans', 'id')") == [["otel.spans_id_seq"]]
    sql(head_url, "alter table otel.spans alter column id drop default")
    done = run_cli("repair", "--format", "json", url=head_url)
    assert done.code == 0, done
    assert any("SET DEFAULT nextval(" in s and "spans_id_seq" in s for s in statements_of(done)), done.out
    assert shape(head_url) == before and verify(head_url).code == 0
    sql(head_url, "insert into otel.spans (trace_id, span_id, name, service_name, start_time) "
                  "values ('d', 'd', 'op', 'svc', now())")


def test_a_dropped_spans_id_default_without_its_owned_sequence_is_refused_with_the_statement(head_url):
    run_all(head_url, "alter table otel.spans alter column id drop default",
            "alter sequence otel.spans_id_seq owned by none")
    before = shape(head_url)
    refused = run_cli("repair", url=head_url)
    assert refused.code == 8 and one_line(refused.err), refused
    assert "otel.spans.id" in refused.err and "has no DEFAULT" in refused.err, refused.err
    assert "SET DEFAULT nextval('otel.spans_id_seq'::regclass)" in refused.err, refused.err
    assert "is not the contract's" not in refused.err
    assert shape(head_url) == before


def test_rollback_after_a_stopped_partitioned_repair_sends_to_repair_not_maintain(head_url):
    # what a repair killed after its ON ONLY step leaves: a parent index no partition has a part of
    run_all(head_url, "drop index otel.ix_spans_trace_id",
            "create index ix_spans_trace_id on only otel.spans (trace_id)")
    refused = run_cli("downgrade", BASELINE, url=head_url)
    assert refused.code == 8 and "ix_spans_trace_id" in refused.err, refused
    assert "finish them with otelmig repair" in refused.err and "maintain" not in refused.err, refused.err
    assert run_cli("repair", url=head_url).code == 0 and run_cli("downgrade", BASELINE, url=head_url).code == 0


# After statement N of the NOT NULL (1 ADD, 2 VALIDATE, 3 SET NOT NULL, 4 DROP), before its commit.
NOT_NULL_STEPS = [1, 2, 3, 4]


@pytest.mark.parametrize("after", NOT_NULL_STEPS)
def test_a_not_null_repair_killed_at_any_step_leaves_what_verify_names_and_the_next_run_converges(head_url, pyz,
                                                                                                  after):
    before = shape(head_url)
    sql(head_url, "alter table otel.traces alter service_name drop not null")
    killed = run_pyz(pyz, "repair", url=head_url, env={"OTELMIG_TEST_CRASH_AFTER_STATEMENT": str(after)})
    assert killed.code == -9, killed
    left = verify(head_url)
    assert left.code == 7 and "run `otelmig repair`" in left.err, left  # a helper left is named, never hidden
    if helpers(head_url):
        assert "repair_leftover" in {p["kind"] for p in left.json()["problems"]}, left.out
    assert run_pyz(pyz, "repair", url=head_url).code == 0
    assert shape(head_url) == before and verify(head_url).code == 0


@pytest.mark.parametrize("after", NOT_NULL_STEPS)
def test_a_not_null_repair_interrupted_at_any_step_leaves_no_helper(head_url, pyz, after):
    sql(head_url, "alter table otel.traces alter service_name drop not null")
    stopped = run_pyz(pyz, "repair", url=head_url, env={"OTELMIG_TEST_AFTER_STATEMENT": "%d:TERM" % after})
    assert stopped.code == 143, stopped
    assert helpers(head_url) == []
    nullable = sql(head_url, "select not attnotnull from pg_attribute "
                             "where attrelid = 'otel.traces'::regclass and attname = 'service_name'")[0][0]
    if nullable:  # the SET NOT NULL did not commit: the operator's nullable column takes NULLs
        sql(head_url, NULL_TRACE % "after")
        assert run_pyz(pyz, "repair", url=head_url).code == 8 and helpers(head_url) == []  # NULLs: refused
    else:
        assert run_pyz(pyz, "repair", url=head_url).code == 0 and verify(head_url).code == 0
