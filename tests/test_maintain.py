"""otelmig maintain: partitions ahead, retention, the DEFAULT partition, concurrent
runs, outputs and exit codes; and the partition checks of verify and plan.
Real PostgreSQL throughout; the layout is tests/partition_layout.py's."""

import datetime
import json
import re
import signal
import threading

import pytest

import partition_layout as layout
from conftest import catalog_snapshot, connect, load_legacy, run_cli, run_pyz, sql
from helpers import error_line, one_line, parse_prometheus, spawn, wait_for
from otelmig import partitions
from otelmig.lock import lock_keys
from otelmig.revisions import HEAD_REVISION

DAY = datetime.timedelta(days=1)


def day_names(first, last):
    return {layout.day_name(d) for d in layout.days(first, last)}


def json_of(result):
    assert result.out.strip(), result.err
    return json.loads(result.out)


def count(url, table):
    return sql(url, "select count(*) from %s" % table)[0][0]


def upgraded(url, legacy_traces: int = 0):
    """A store converted by revision 2 itself (`upgrade`); the server's today."""
    if legacy_traces:
        load_legacy(url, traces=legacy_traces)
    result = run_cli("upgrade", url=url)
    assert result.code == 0, result.err
    return layout.server_today(url)


# -- after a real upgrade ---------------------------------------------------------

def test_after_the_upgrade_maintain_has_nothing_to_do_and_then_keeps_days_ahead(db_url):
    today = upgraded(db_url)
    first = run_cli("maintain", "--format", "json", url=db_url)
    assert first.code == 0, first.err
    assert json_of(first)["created"] == [] and json_of(first)["dropped"] == []
    further = run_cli("maintain", "--ahead", "10", "--format", "json", url=db_url)
    assert further.code == 0, further.err
    assert set(json_of(further)["created"]) == day_names(today + 8 * DAY, today + 10 * DAY)
    assert run_cli("verify", url=db_url).code == 0


def test_after_the_upgrade_a_row_in_default_moves_into_its_new_day(db_url):
    today = upgraded(db_url)
    layout.insert_spans(db_url, ["now() + interval '9 days'", "now()"])
    assert count(db_url, "otel.spans_default") == 1
    result = run_cli("maintain", "--ahead", "10", "--format", "json", url=db_url)
    assert result.code == 0, result.err
    assert json_of(result)["moved_from_default"] == 1 and json_of(result)["default_rows"] == 0
    where = dict((span, part) for part, span in layout.partition_of_rows(db_url))
    assert where["s0"] == "otel." + layout.day_name(today + 9 * DAY)
    assert count(db_url, "otel.spans") == 2


def test_after_the_upgrade_old_history_rows_go_with_their_traces(db_url):
    """Issue 22 item 4: the conversion's cutoff is two days ahead, so the history
    partition straddles any window: its rows older than the window go by batched
    DELETE (the partition stays), and their traces with them, none orphaned."""
    upgraded(db_url, legacy_traces=50)
    assert count(db_url, "otel.spans") == 250
    sql(db_url, "insert into otel.spans (trace_id, span_id, name, service_name, start_time) "
                "values ('fresh', 'fresh', 'op', 'svc', now() - interval '1 day')")
    result = run_cli("maintain", "--retain", "14d", "--format", "json", url=db_url)
    assert result.code == 0, result.err
    payload = json_of(result)
    assert payload["dropped"] == [] and payload["span_rows_deleted"] == 250
    assert payload["trace_rows_deleted"] == 50 and payload["trace_rows_kept"] == 0
    assert [r[0] for r in sql(db_url, "select span_id from otel.spans")] == ["fresh"]
    assert count(db_url, "otel.traces") == 0
    assert "spans_history" in layout.partitions(db_url)
    assert run_cli("verify", url=db_url).code == 0


# -- creating ahead ---------------------------------------------------------------

def test_creates_the_coming_days_and_a_rerun_creates_nothing(db_url):
    today = layout.build(db_url, cutoff_offset=-1, ahead=2)
    result = run_cli("maintain", "--format", "json", url=db_url)
    assert result.code == 0, result.err
    payload = json_of(result)
    wanted = day_names(today + 3 * DAY, today + 7 * DAY)
    assert set(payload["created"]) == wanted
    assert payload["dropped"] == [] and payload["dry_run"] is False
    live = layout.partitions(db_url)
    assert day_names(today - DAY, today + 7 * DAY) | {"spans_history", "spans_default"} == set(live)
    layout.insert_spans(db_url, ["timestamptz '%s 23:59:59+00'" % (today + 7 * DAY),
                                 "timestamptz '%s 00:00:00+00'" % (today + 8 * DAY)])
    assert [p for p, _ in layout.partition_of_rows(db_url)] == ["otel." + layout.day_name(today + 7 * DAY),
                                                                "otel.spans_default"]
    again = run_cli("maintain", "--format", "json", url=db_url)
    assert again.code == 0 and json_of(again)["created"] == []
    assert set(layout.partitions(db_url)) == set(live)


def test_ahead_sets_how_many_days_and_the_new_partitions_carry_the_indexes(db_url):
    today = layout.build(db_url, cutoff_offset=0, ahead=0)
    result = run_cli("maintain", "--ahead", "10", "--format", "json", url=db_url)
    assert result.code == 0, result.err
    assert set(json_of(result)["created"]) == day_names(today + DAY, today + 10 * DAY)
    verify = run_cli("verify", "--format", "json", url=db_url)
    assert verify.code == 0, verify.out + verify.err
    indexes = sql(db_url, "select count(*) from pg_indexes where schemaname = 'otel' and tablename = %s",
                  (layout.day_name(today + 10 * DAY),))[0][0]
    assert indexes == 4  # the primary key's and the three contract indexes, attached


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Kolkata", "Pacific/Chatham"])
def test_the_sessions_time_zone_changes_nothing(db_url, zone):
    """pg_get_expr prints bounds in the session's TimeZone; days stay UTC days."""
    today = layout.build(db_url, cutoff_offset=-20, ahead=2)
    database = db_url.rsplit("/", 1)[1]
    sql(db_url, "alter database %s set timezone = '%s'" % (database, zone))
    result = run_cli("maintain", "--retain", "14d", "--format", "json", url=db_url)
    assert result.code == 0, result.err
    payload = json_of(result)
    assert set(payload["created"]) == day_names(today + 3 * DAY, today + 7 * DAY)
    assert set(payload["dropped"]) == day_names(today - 20 * DAY, today - 15 * DAY) | {"spans_history"}
    assert payload["newest_bound"] == "%sT00:00:00Z" % (today + 8 * DAY)
    verify = run_cli("verify", "--format", "json", url=db_url)
    assert verify.code == 0 and verify.json()["problems"] == [], verify.out


def test_new_partitions_belong_to_the_owner_of_spans(db_url):
    """As revision 2's partitions do: whoever runs maintain, a later downgrade or
    maintain by the owner of spans may drop them."""
    today = upgraded(db_url)
    role = "owner_" + db_url.rsplit("/", 1)[1]
    sql(db_url, "create role %s" % role)
    try:
        sql(db_url, "alter table otel.spans owner to %s" % role)
        result = run_cli("maintain", "--ahead", "8", "--format", "json", url=db_url)
        assert result.code == 0, result.err
        owner = sql(db_url, "select pg_get_userbyid(relowner)::text from pg_class where oid = to_regclass(%s)",
                    ("otel." + layout.day_name(today + 8 * DAY),))[0][0]
        assert owner == role
    finally:
        sql(db_url, "reassign owned by %s to current_user" % role)
        sql(db_url, "drop role %s" % role)


# -- rows in the DEFAULT partition ------------------------------------------------

def test_rows_in_the_default_partition_move_into_the_new_day(db_url):
    today = layout.build(db_url, cutoff_offset=-1, ahead=2)
    layout.insert_spans(db_url, ["now() + interval '5 days'", "now() + interval '6 days'", "now()",
                                 "now() + interval '60 days'"])
    assert count(db_url, "otel.spans_default") == 3
    result = run_cli("maintain", "--format", "json", url=db_url)
    assert result.code == 0, result.err
    payload = json_of(result)
    where = dict((span, part) for part, span in layout.partition_of_rows(db_url))
    assert where == {"s0": "otel." + layout.day_name(today + 5 * DAY),
                     "s1": "otel." + layout.day_name(today + 6 * DAY),
                     "s2": "otel." + layout.day_name(today), "s3": "otel.spans_default"}
    assert count(db_url, "otel.spans") == 4
    assert payload["moved_from_default"] == 2
    assert payload["default_rows"] == 1  # the row 60 days ahead: reported, never lost
    assert "1 row" in result.err and "default" in result.err


# -- retention ----------------------------------------------------------------------

def test_retain_drops_exactly_the_wholly_old_partitions_and_old_history(db_url):
    today = layout.build(db_url, cutoff_offset=-20, ahead=7)
    layout.insert_spans(db_url, ["now() - interval '25 days'", "now() - interval '17 days'",
                                 "now() - interval '14 days' + interval '1 hour'", "now()"])
    result = run_cli("maintain", "--retain", "14d", "--format", "json", url=db_url)
    assert result.code == 0, result.err
    payload = json_of(result)
    # a day is wholly older than 14 days when its end (next midnight) <= now() - 14 days
    expected = day_names(today - 20 * DAY, today - 15 * DAY) | {"spans_history"}
    assert set(payload["dropped"]) == expected
    live = set(layout.partitions(db_url))
    assert not (live & expected)
    assert day_names(today - 14 * DAY, today + 7 * DAY) <= live and "spans_default" in live
    assert sorted(span for _, span in layout.partition_of_rows(db_url)) == ["s2", "s3"]
    tables = {r[0] for r in sql(db_url, "select relname::text from pg_class c join pg_namespace n "
                                        "on n.oid = c.relnamespace where nspname = 'otel' and relkind = 'r'")}
    assert not (tables & expected)  # detached and dropped, not left behind
    assert sql(db_url, "select count(*) from pg_class where relname = 'spans_id_seq'")[0][0] == 1


def test_old_rows_of_partitions_that_straddle_the_window_go_and_the_rest_stays(db_url):
    """No span older than the window is left anywhere: the history partition (its
    cutoff inside the window) and the day that holds the window's start lose
    their old rows by batched DELETE; whole old partitions are dropped; no row
    inside the window goes."""
    today = layout.build(db_url, cutoff_offset=-5, ahead=7)
    layout.insert_spans(db_url, ["now() - interval '400 days'", "now() - interval '6 days'",
                                 "now() - interval '4 days' - interval '1 minute'",
                                 "now() - interval '4 days' + interval '1 minute'", "now()"])
    result = run_cli("maintain", "--retain", "14d", "--format", "json", url=db_url)
    assert result.code == 0, result.err
    assert json_of(result)["dropped"] == [] and json_of(result)["span_rows_deleted"] == 1  # the one 400 days old
    assert "spans_history" in layout.partitions(db_url)
    assert sorted(span for _, span in layout.partition_of_rows(db_url)) == ["s1", "s2", "s3", "s4"]
    shorter = run_cli("maintain", "--retain", "4d", "--format", "json", url=db_url)
    assert shorter.code == 0, shorter.err
    # now() - 4 days is past the cutoff (today - 5 days): all of history left the window, and the first day
    assert set(json_of(shorter)["dropped"]) == {"spans_history", layout.day_name(today - 5 * DAY)}
    straddling = layout.day_name(today - 4 * DAY)
    assert straddling in layout.partitions(db_url)  # ends after now() - 4 days: kept, its old rows deleted
    assert sorted(span for _, span in layout.partition_of_rows(db_url)) == ["s3", "s4"]
    assert json_of(shorter)["span_rows_deleted"] == 1  # s2, in the straddling day; s1 went with the history


def test_retain_36h_drops_by_the_hour(db_url):
    today = layout.build(db_url, cutoff_offset=-4, ahead=1)
    window_start = sql(db_url, "select now() - interval '36 hours'")[0][0]
    result = run_cli("maintain", "--retain", "36h", "--format", "json", url=db_url)
    assert result.code == 0, result.err
    ends = {layout.day_name(d): datetime.datetime.combine(d + DAY, datetime.time(), datetime.timezone.utc)
            for d in layout.days(today - 4 * DAY, today + DAY)}
    assert set(json_of(result)["dropped"]) == {n for n, end in ends.items() if end <= window_start} | {"spans_history"}


def test_old_traces_are_deleted_in_batches(db_url):
    layout.build(db_url, cutoff_offset=-1, ahead=7)
    layout.insert_traces(db_url, 12001, "interval '30 days'", prefix="old")
    layout.insert_traces(db_url, 10, "interval '1 day'", prefix="new")
    result = run_cli("maintain", "--retain", "14d", "-v", "--format", "json", url=db_url)
    assert result.code == 0, result.err
    assert json_of(result)["trace_rows_deleted"] == 12001
    assert count(db_url, "otel.traces") == 10
    batches = [line for line in result.err.splitlines() if line.startswith("maintain: deleted")]
    assert len(batches) == 3, result.err  # 5000 + 5000 + 2001, each its own transaction


def test_a_partition_a_view_depends_on_is_kept_and_named(db_url):
    today = layout.build(db_url, cutoff_offset=-20, ahead=7)
    kept = layout.day_name(today - 16 * DAY)
    sql(db_url, "create view public.audit as select * from otel.%s" % kept)
    result = run_cli("maintain", "--retain", "14d", "--format", "json", url=db_url)
    assert result.code == 7, result
    payload = json_of(result)
    assert kept not in payload["dropped"] and layout.day_name(today - 17 * DAY) in payload["dropped"]
    assert kept in layout.partitions(db_url)
    line = error_line(result.err)
    assert kept in line and "audit" in line


def test_a_history_that_owns_the_id_sequence_is_kept(db_url):
    layout.build(db_url, cutoff_offset=-20, ahead=7)
    sql(db_url, "alter sequence otel.spans_id_seq owned by otel.spans_history.id")
    result = run_cli("maintain", "--retain", "14d", "--format", "json", url=db_url)
    assert result.code == 7, result
    assert "spans_history" not in json_of(result)["dropped"]
    assert "spans_history" in layout.partitions(db_url)
    assert "OWNED BY otel.spans.id" in error_line(result.err)
    layout.insert_spans(db_url, ["now()"])  # the id default still works


def test_tables_named_like_day_partitions_do_not_confuse_it(db_url):
    """A standalone table whose name is no real day, and one in the way of a coming day."""
    today = layout.build(db_url, cutoff_offset=-20, ahead=2)
    sql(db_url, "create table otel.spans_p20261399 (x int)")
    blocker = layout.day_name(today + 4 * DAY)
    sql(db_url, "create table otel.%s (x int)" % blocker)
    result = run_cli("maintain", "--retain", "14d", "--format", "json", url=db_url)
    assert result.code == 7, result
    payload = json_of(result)
    assert blocker not in payload["created"] and layout.day_name(today + 5 * DAY) in payload["created"]
    assert blocker in error_line(result.err)
    assert sql(db_url, "select to_regclass('otel.spans_p20261399') is not null")[0][0]


# -- a half-done run converges -------------------------------------------------------

def test_a_partition_detached_but_not_dropped_is_dropped_on_rerun(db_url):
    """Ours (recorded): a run stopped between a concurrent DETACH and the DROP."""
    today = layout.build(db_url, cutoff_offset=-20, ahead=7)
    assert run_cli("maintain", url=db_url).code == 0  # records the layout's partitions as otelmig's
    old = layout.day_name(today - 18 * DAY)
    # what maintain's concurrent detach leaves when it stops before its drop: its record, then the detach
    sql(db_url, "insert into otel.otelmig_objects (revision, object_kind, object_name, origin) "
                "values (%s, %s, %s, 'recorded')", (HEAD_REVISION, partitions.DETACHING_KIND, old))
    sql(db_url, "alter table otel.spans detach partition otel.%s" % old)  # a crash after DETACH
    result = run_cli("maintain", "--retain", "14d", "--format", "json", url=db_url)
    assert result.code == 0, result.err
    assert old in json_of(result)["dropped"]
    assert sql(db_url, "select to_regclass('otel.%s') is null" % old)[0][0]
    assert sql(db_url, "select count(*) from otel.otelmig_objects where object_name = %s", (old,))[0][0] == 0


def test_a_pending_concurrent_detach_is_finalized(db_url):
    """Without a DEFAULT partition maintain detaches CONCURRENTLY; a run killed
    while that waits leaves the partition 'detach pending': the rerun finalizes it."""
    if sql(db_url, "select current_setting('server_version_num')::int")[0][0] < 140000:
        pytest.skip("DETACH ... CONCURRENTLY is PostgreSQL 14+; on 13 maintain detaches plainly")
    today = layout.build(db_url, cutoff_offset=-20, ahead=7, default=False)
    old = layout.day_name(today - 18 * DAY)
    holder = connect(db_url, autocommit=False)  # an old snapshot the detach must wait for
    holder.cursor().execute("set transaction isolation level repeatable read")
    holder.cursor().execute("select count(*) from otel.spans")
    detacher = connect(db_url)
    cursor = detacher.cursor()
    cursor.execute("select pg_backend_pid()")
    backend = cursor.fetchone()[0]
    failure = []
    thread = threading.Thread(target=_detach_catching, args=(detacher, old, failure))
    thread.start()
    wait_for(lambda: sql(db_url, "select count(*) from pg_inherits where inhdetachpending and "
                                 "inhrelid = to_regclass('otel.%s')" % old)[0][0], "the detach to be pending")
    sql(db_url, "select pg_cancel_backend(%s)", (backend,))
    thread.join(60)
    holder.rollback()
    holder.close()
    detacher.close()
    assert failure, "the detach was expected to be cancelled"
    result = run_cli("maintain", "--retain", "14d", "--format", "json", url=db_url)
    assert result.code == 0, result.err
    assert old in json_of(result)["dropped"]
    assert sql(db_url, "select to_regclass('otel.%s') is null" % old)[0][0]


def _detach_catching(conn, name, failure):
    try:
        conn.cursor().execute("alter table otel.spans detach partition otel.%s concurrently" % name)
    except Exception as exc:  # the cancel we send
        failure.append(exc)


# -- dry run, concurrency, outputs -----------------------------------------------------

def test_dry_run_lists_and_changes_nothing(db_url):
    today = layout.build(db_url, cutoff_offset=-20, ahead=2)
    layout.insert_spans(db_url, ["now() + interval '5 days'"])
    layout.insert_traces(db_url, 7, "interval '30 days'")
    before = (catalog_snapshot(db_url), layout.partition_of_rows(db_url), count(db_url, "otel.traces"))
    result = run_cli("maintain", "--retain", "14d", "--dry-run", "--format", "json", url=db_url)
    assert result.code == 0, result.err
    payload = json_of(result)
    assert payload["dry_run"] is True
    assert set(payload["created"]) == day_names(today + 3 * DAY, today + 7 * DAY)
    assert set(payload["dropped"]) == day_names(today - 20 * DAY, today - 15 * DAY) | {"spans_history"}
    assert payload["trace_rows_deleted"] == 7
    after = (catalog_snapshot(db_url), layout.partition_of_rows(db_url), count(db_url, "otel.traces"))
    assert after == before
    text = run_cli("maintain", "--retain", "14d", "--dry-run", url=db_url)
    assert text.code == 0
    assert "would create %s" % layout.day_name(today + 7 * DAY) in text.out
    assert "would drop spans_history" in text.out
    assert (catalog_snapshot(db_url), layout.partition_of_rows(db_url), count(db_url, "otel.traces")) == before


def test_two_runs_at_once_both_succeed_and_create_each_partition_once(db_url):
    today = upgraded(db_url)
    # Both start while another otelmig holds the migration lock, so they run at once once it is free.
    holder = connect(db_url)
    holder.cursor().execute("select pg_advisory_lock(%s, %s)", lock_keys("otel"))
    try:
        procs = [spawn(db_url, "maintain", "--ahead", "12", "--format", "json") for _ in range(2)]
        wait_for(lambda: sql(db_url, "select count(*) >= 2 from pg_stat_activity where datname = current_database() "
                                     "and query like 'select pg_try_advisory_lock%%'")[0][0],
                 "both runs to wait for the migration lock")
    finally:
        holder.close()
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    created = [json.loads(out)["created"] for out, _ in outputs]
    assert sorted(created[0] + created[1]) == sorted(day_names(today + 8 * DAY, today + 12 * DAY))
    assert all("Traceback" not in err and "waiting for the migration lock" in err for _, err in outputs)
    assert day_names(today + 3 * DAY, today + 12 * DAY) <= set(layout.partitions(db_url))


def test_text_output_names_what_was_done(db_url):
    today = layout.build(db_url, cutoff_offset=-20, ahead=6)
    result = run_cli("maintain", "--retain", "14d", url=db_url)
    assert result.code == 0, result.err
    assert "created %s" % layout.day_name(today + 7 * DAY) in result.out
    assert "dropped %s" % layout.day_name(today - 15 * DAY) in result.out
    assert "rows in the default partition: 0" in result.out


def test_prometheus_output(db_url):
    today = layout.build(db_url, cutoff_offset=-20, ahead=6)
    result = run_cli("maintain", "--retain", "14d", "--format", "prometheus", url=db_url)
    assert result.code == 0, result.err
    metrics = parse_prometheus(result.out)
    label = '{schema="otel"}'
    assert metrics["otelmig_maintain_exit_code" + label] == 0
    assert metrics["otelmig_maintain_created" + label] == 1
    assert metrics["otelmig_maintain_dropped" + label] == 7  # six days and the history
    assert metrics["otelmig_maintain_partitions" + label] == len(layout.partitions(db_url))
    assert metrics["otelmig_maintain_default_rows" + label] == 0
    newest = datetime.datetime.combine(today + 8 * DAY, datetime.time(), datetime.timezone.utc).timestamp()
    oldest = datetime.datetime.combine(today - 14 * DAY, datetime.time(), datetime.timezone.utc).timestamp()
    assert metrics["otelmig_maintain_newest_bound_timestamp_seconds" + label] == newest
    assert metrics["otelmig_maintain_oldest_bound_timestamp_seconds" + label] == oldest


def test_the_pyz_upgrades_and_maintains(db_url, pyz):
    assert run_pyz(pyz, "upgrade", url=db_url).code == 0
    today = layout.server_today(db_url)
    result = run_pyz(pyz, "maintain", "--ahead", "9", "--retain", "30d", "--format", "json", url=db_url)
    assert result.code == 0, result.err
    assert set(json.loads(result.out)["created"]) == day_names(today + 8 * DAY, today + 9 * DAY)
    bad = run_pyz(pyz, "maintain", "--retain", "10x", url=db_url)
    assert bad.code == 2 and one_line(bad.err)


# -- exit codes -------------------------------------------------------------------------

BAD_INPUT = [("--retain", "0"), ("--retain", "-3d"), ("--retain", "10x"), ("--retain", "14"),
             ("--retain", "0d"), ("--ahead", "-1"), ("--ahead", "x"), ("--ahead", "1000")]


@pytest.mark.parametrize("flag, value", BAD_INPUT, ids=["%s=%s" % pair for pair in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(db_url, flag, value):
    layout.build(db_url, cutoff_offset=-20, ahead=2)
    before = catalog_snapshot(db_url)
    result = run_cli("maintain", flag, value, url=db_url)
    assert result.code == 2, result
    assert one_line(result.err) and flag in result.err
    assert catalog_snapshot(db_url) == before


def test_refuses_an_empty_database(db_url):
    result = run_cli("maintain", "--format", "json", url=db_url)
    assert result.code == 4, result
    assert one_line(result.err) and "upgrade" in result.err
    assert json_of(result)["exit_code"] == 4


def test_refuses_a_revision_it_does_not_know(db_url):
    layout.build(db_url)
    sql(db_url, "update otel.alembic_version set version_num = 'ffffffffffff'")
    before = catalog_snapshot(db_url)
    result = run_cli("maintain", "--retain", "1d", url=db_url)
    assert result.code == 6, result
    assert one_line(result.err)
    assert catalog_snapshot(db_url) == before


def test_refuses_a_store_stamped_at_the_head_over_a_plain_spans(db_url):
    assert run_cli("upgrade", layout.BASELINE, url=db_url).code == 0
    assert run_cli("stamp", "head", url=db_url).code == 0  # at the head, but spans is a plain table
    before = catalog_snapshot(db_url)
    result = run_cli("maintain", "--retain", "1d", url=db_url)
    assert result.code == 4, result
    assert one_line(result.err) and "partitions of table spans" in result.err and "upgrade" in result.err
    assert catalog_snapshot(db_url) == before


def test_refuses_a_spans_partitioned_another_way(db_url):
    # Migrated to the head, then spans swapped for one with every head column, partitioned by another key.
    assert run_cli("upgrade", url=db_url).code == 0
    for statement in ("alter table otel.spans rename to spans_old",
                      "create table otel.spans (like otel.spans_old including defaults) partition by range (created_at)",
                      "create table otel.spans_all partition of otel.spans default"):
        sql(db_url, statement)
    before = catalog_snapshot(db_url)
    result = run_cli("maintain", "--retain", "1d", "--format", "json", url=db_url)
    assert result.code == 7, result
    line = error_line(result.err)
    assert "RANGE (created_at)" in line and "RANGE (start_time)" in line and "verify" in line
    assert json_of(result)["exit_code"] == 7
    assert catalog_snapshot(db_url) == before


def test_refuses_a_spans_the_operator_partitioned_before_otelmig(db_url):
    today = layout.build(db_url, cutoff_offset=-20, ahead=2)
    sql(db_url, "insert into otel.otelmig_objects (revision, object_kind, object_name, origin) "
                "values ('826630e38563', 'partitioning', 'spans', 'found')")
    before = catalog_snapshot(db_url)
    for args in (["--retain", "14d"], ["--dry-run"]):
        result = run_cli("maintain", *args, url=db_url)
        assert result.code == 7, result
        assert "operator" in error_line(result.err)
    assert catalog_snapshot(db_url) == before
    assert "maintain" not in json_of(run_cli("plan", "--format", "json", url=db_url))
    assert layout.day_name(today + 2 * DAY) in layout.partitions(db_url)


def test_refuses_a_store_behind_the_head(db_url):
    assert run_cli("upgrade", layout.BASELINE, url=db_url).code == 0
    result = run_cli("maintain", url=db_url)
    assert result.code == 5, result
    assert one_line(result.err) and "upgrade" in result.err


def test_a_lock_held_on_spans_is_exit_9_and_nothing_changes(db_url):
    layout.build(db_url, cutoff_offset=-1, ahead=2)
    before = set(layout.partitions(db_url))
    holder = connect(db_url, autocommit=False)
    holder.cursor().execute("lock table otel.spans in access exclusive mode")
    try:
        result = run_cli("maintain", "--lock-timeout", "0.2", url=db_url)
    finally:
        holder.rollback()
        holder.close()
    assert result.code == 9, result
    line = error_line(result.err)
    assert "stayed locked" in line and "--lock-timeout" in line
    assert set(layout.partitions(db_url)) == before


def test_sigterm_while_creating_rolls_back_and_exits_143(db_url):
    today = layout.build(db_url, cutoff_offset=-1, ahead=2)
    before = set(layout.partitions(db_url))
    holder = connect(db_url, autocommit=False)
    holder.cursor().execute("lock table otel.spans_default in access share mode")
    holder.cursor().execute("select count(*) from otel.spans_default")
    try:
        proc = spawn(db_url, "maintain", "--lock-timeout", "30")
        wait_for(lambda: sql(db_url, "select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
                                     "and query like 'LOCK TABLE%%spans_default%%'")[0][0],
                 "maintain to wait for the DEFAULT partition")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        holder.rollback()
        holder.close()
    assert proc.returncode == 143, err
    assert one_line(err) and "SIGTERM" in err
    assert set(layout.partitions(db_url)) == before
    assert sql(db_url, "select to_regclass('otel.%s') is null" % layout.day_name(today + 3 * DAY))[0][0]


# -- verify and plan know the partitions ------------------------------------------------

def test_verify_reports_missing_days_gaps_and_default_rows(db_url):
    today = layout.build(db_url, cutoff_offset=-3, ahead=7)
    assert run_cli("verify", url=db_url).code == 0
    sql(db_url, "drop table otel.%s" % layout.day_name(today - DAY))          # a gap
    sql(db_url, "drop table otel.%s" % layout.day_name(today + 7 * DAY))      # a missing coming day
    layout.insert_spans(db_url, ["now() + interval '30 days'"])              # a row in DEFAULT
    result = run_cli("verify", "--format", "json", url=db_url)
    assert result.code == 7, result.out
    payload = json_of(result)
    kinds = {(p["kind"], p["object"]) for p in payload["problems"]}
    assert ("missing_partition", "otel." + layout.day_name(today + 7 * DAY)) in kinds
    assert any(k == "partition_gap" for k, _ in kinds)
    assert "default_partition_rows" in {e["kind"] for e in payload["extras"]}


def test_verify_leaves_an_operators_own_layout_its_days_but_not_its_gaps(db_url):
    """Revision 2 adopts a spans the operator partitioned as found: its partitions are the operator's."""
    today = layout.build(db_url, cutoff_offset=-3, ahead=7)
    sql(db_url, "insert into otel.otelmig_objects (revision, object_kind, object_name, origin) "
                "values ('826630e38563', 'partitioning', 'spans', 'found')")
    sql(db_url, "drop table otel.%s" % layout.day_name(today + 7 * DAY))
    sql(db_url, "drop table otel.spans_default")
    assert run_cli("verify", url=db_url).code == 0
    sql(db_url, "drop table otel.%s" % layout.day_name(today - DAY))  # a gap (today's day stays: writes go on)
    payload = json_of(run_cli("verify", "--format", "json", url=db_url))
    assert [p["kind"] for p in payload["problems"]] == ["partition_gap"]


def test_verify_reports_a_partition_without_its_index(db_url):
    today = layout.build(db_url, cutoff_offset=-1, ahead=7)
    sql(db_url, "drop index otel.ix_spans_span_id")
    sql(db_url, "create index ix_spans_span_id on only otel.spans (span_id)")
    part = layout.day_name(today)
    sql(db_url, "create index p_span on otel.%s (span_id)" % part)
    sql(db_url, "alter index otel.ix_spans_span_id attach partition otel.p_span")
    payload = json_of(run_cli("verify", "--format", "json", url=db_url))
    problems = {(p["kind"], p["object"]) for p in payload["problems"]}
    assert ("partition_index_missing", "otel.%s" % layout.day_name(today + DAY)) in problems
    assert ("partition_index_missing", "otel.%s" % part) not in problems


def test_plan_says_what_maintain_would_create(db_url):
    today = upgraded(db_url)
    sql(db_url, "drop table otel.%s" % layout.day_name(today + 7 * DAY))
    before = catalog_snapshot(db_url)
    result = run_cli("plan", "--format", "json", url=db_url)
    assert result.code == 0, result.err
    assert json_of(result)["maintain"]["create"] == [layout.day_name(today + 7 * DAY)]
    text = run_cli("plan", url=db_url).out
    assert "maintain would create %s" % layout.day_name(today + 7 * DAY) in text
    assert catalog_snapshot(db_url) == before


# -- whose tables: only otelmig's are dropped (issue 19 item 6) --------------------------

def recorded_partitions(url):
    return {r[0] for r in sql(url, "select object_name from otel.otelmig_objects where object_kind = 'partition' "
                                   "and origin = 'created'")}


def test_retention_drops_only_what_otelmig_recorded_and_says_what_it_kept(db_url):
    """Tables named like our days that otelmig did not make: one the operator
    attached in place of a day retention dropped (restored from an archive, say),
    one put in place of ours after dropping ours by hand, one never attached."""
    today = layout.build(db_url, cutoff_offset=-20, ahead=7)
    assert run_cli("maintain", "--retain", "19d", url=db_url).code == 0  # records ours; drops the history and day -20
    restored, replaced = layout.day_name(today - 20 * DAY), layout.day_name(today - 18 * DAY)
    sql(db_url, "drop table otel.%s" % replaced)
    assert run_cli("maintain", "--retain", "17d", url=db_url).code == 0  # sees it gone: forgets it, fills no day so old
    for day in (today - 20 * DAY, today - 18 * DAY):
        sql(db_url, "create table otel.%s (like otel.spans including defaults)" % layout.day_name(day))
        sql(db_url, "alter table otel.spans attach partition otel.%s for values from ('%s 00:00:00+00') to "
                    "('%s 00:00:00+00')" % (layout.day_name(day), day, day + DAY))
    layout.insert_spans(db_url, ["timestamptz '%s 06:00:00+00'" % (today - 18 * DAY),
                                 "timestamptz '%s 06:00:00+00'" % (today - 20 * DAY), "now()"])
    aside = layout.day_name(today - 30 * DAY)  # the operator's, never attached
    sql(db_url, "create table otel.%s as select 1 as kept" % aside)
    result = run_cli("maintain", "--retain", "14d", "--format", "json", url=db_url)
    assert result.code == 0, result.err
    payload = json_of(result)
    assert not {restored, replaced, aside} & set(payload["dropped"])
    assert layout.day_name(today - 17 * DAY) in payload["dropped"]
    assert {restored, replaced} <= set(layout.partitions(db_url))
    assert sql(db_url, "select count(*) from otel.%s" % aside)[0][0] == 1
    kept = " ".join(payload["kept"])
    assert "otel.%s" % replaced in kept and "not made by otelmig" in kept and "otel.%s" % aside in kept
    assert [span for _, span in layout.partition_of_rows(db_url)] == ["s2"]  # their old rows deleted, tables kept
    text = run_cli("maintain", "--retain", "14d", url=db_url).out
    assert "kept otel.%s" % replaced in text


def test_a_day_the_operator_detached_is_theirs_and_never_dropped(db_url):
    """A recorded day partition someone detached from spans (set aside with its
    rows) is no longer a partition of otelmig's: retention keeps it and says
    so; only a detach maintain recorded itself is finished by a drop
    (adversary finding F11)."""
    today = layout.build(db_url, cutoff_offset=-20, ahead=7)
    assert run_cli("maintain", url=db_url).code == 0  # records ours
    aside = layout.day_name(today - 18 * DAY)
    layout.insert_spans(db_url, ["timestamptz '%s 06:00:00+00'" % (today - 18 * DAY)])
    sql(db_url, "alter table otel.spans detach partition otel.%s" % aside)
    result = run_cli("maintain", "--retain", "14d", "--format", "json", url=db_url)
    assert result.code == 0, result.err
    payload = json_of(result)
    assert aside not in payload["dropped"]
    assert sql(db_url, "select count(*) from otel.%s" % aside) == [[1]]
    kept = " ".join(payload["kept"])
    assert "otel.%s" % aside in kept and "detached" in kept, kept


def test_a_store_converted_before_the_record_has_exactly_its_own_partitions_adopted(db_url):
    today = layout.build(db_url, cutoff_offset=-20, ahead=7)
    odd = layout.day_name(today - 10 * DAY)  # the operator's: our name, not our bounds
    sql(db_url, "drop table otel.%s" % odd)
    sql(db_url, "create table otel.%s partition of otel.spans for values from ('%s 00:00:00+00') to "
                "('%s 12:00:00+00')" % (odd, today - 10 * DAY, today - 10 * DAY))
    sql(db_url, "create table otel.half_day partition of otel.spans for values from ('%s 12:00:00+00') to "
                "('%s 00:00:00+00')" % (today - 10 * DAY, today - 9 * DAY))
    result = run_cli("maintain", "--format", "json", url=db_url)
    assert result.code == 0, result.err
    ours = day_names(today - 20 * DAY, today + 7 * DAY) - {odd} | {"spans_history", "spans_default"}
    assert set(json_of(result)["adopted"]) == ours == recorded_partitions(db_url)
    # Once partitions are recorded, a table of the operator's with our name and bounds is not adopted.
    late = layout.day_name(today - 19 * DAY)
    sql(db_url, "drop table otel.%s" % late)
    assert run_cli("maintain", "--retain", "18d", url=db_url).code == 0  # forgets it (and fills no day that old)
    sql(db_url, layout.create_day_sql("otel", today - 19 * DAY))
    dropped = json_of(run_cli("maintain", "--retain", "5d", "--format", "json", url=db_url))["dropped"]
    assert odd not in dropped and "half_day" not in dropped and late not in dropped
    assert layout.day_name(today - 17 * DAY) in dropped and layout.day_name(today - 6 * DAY) in dropped
    assert {odd, "half_day", late} <= set(layout.partitions(db_url))
    assert not {"spans_history", layout.day_name(today - 20 * DAY)} & set(layout.partitions(db_url))


def test_every_partition_it_creates_is_recorded_whatever_the_crash(db_url):
    """A crash after any statement leaves no table of its making unrecorded (the
    record and the table are one transaction, the record first); a rerun converges."""
    from helpers import spawn
    from otelmig.ddl import CRASH_AFTER_ENV
    today = upgraded(db_url)
    made = day_names(today + 8 * DAY, today + 9 * DAY)
    k = 0
    while True:
        k += 1
        proc = spawn(db_url, "maintain", "--ahead", "9", env={CRASH_AFTER_ENV: str(k)})
        _, err = proc.communicate(timeout=120)
        present = {r[0] for r in sql(db_url, "select relname::text from pg_class c join pg_namespace n on "
                                             "n.oid = c.relnamespace where nspname = 'otel' and relkind = 'r' "
                                             "and relname::text = any(%s)", (sorted(made),))}
        assert present <= recorded_partitions(db_url), (k, present)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, err
    assert k > 5 and made <= set(layout.partitions(db_url)) <= recorded_partitions(db_url) | {"spans_default"} | made


# -- retention: nothing older than the window left, nothing inside it gone ----------------

def test_no_span_older_than_the_window_is_left_anywhere(db_url):
    today = layout.build(db_url, cutoff_offset=-20, ahead=7)
    layout.insert_spans(db_url, ["now() - interval '30 days'", "'-infinity'", "timestamptz '0044-03-15 00:00:00+00 BC'",
                                 "now() - interval '16 days'", "now() - interval '14 days' - interval '1 second'",
                                 "now() - interval '14 days' + interval '1 minute'", "now()", "'infinity'"])
    first = run_cli("maintain", "--retain", "14d", "--format", "json", url=db_url)
    assert first.code == 0, first.err
    assert "spans_history" in json_of(first)["dropped"]
    assert sorted(span for _, span in layout.partition_of_rows(db_url)) == ["s5", "s6", "s7"]
    # With the history gone, late rows older than every partition land in DEFAULT: the next run deletes them.
    layout.insert_spans(db_url, ["now() - interval '40 days'", "'-infinity'", "now() - interval '1 hour'"])
    assert count(db_url, "otel.spans_default") >= 2
    second = run_cli("maintain", "--retain", "14d", "--format", "json", url=db_url)
    assert second.code == 0, second.err
    assert json_of(second)["span_rows_deleted"] == 2
    left = sql(db_url, "select count(*) from otel.spans where start_time < now() - interval '14 days'")[0][0]
    assert left == 0
    assert sql(db_url, "select count(*) from otel.spans")[0][0] == 4  # s5, s6, s7 and the late one an hour old


def test_a_trace_goes_only_with_its_spans_and_the_output_says_what_was_kept(db_url):
    """Issue 22 item 4. The rule: a trace row goes when it started before the window
    and no span of it is left; one whose spans are still inside the window stays
    until they leave it, and the output says how many and until when."""
    layout.build(db_url, cutoff_offset=-20, ahead=7)
    sql(db_url, "insert into otel.traces (trace_id, service_name, start_time) values "
                "('gone', 'svc', now() - interval '20 days'), ('long', 'svc', now() - interval '15 days'), "
                "('bare', 'svc', now() - interval '30 days'), ('new', 'svc', now())")
    sql(db_url, "insert into otel.spans (trace_id, span_id, name, service_name, start_time) values "
                "('gone', 'g1', 'op', 'svc', now() - interval '20 days'), "
                "('long', 'l1', 'op', 'svc', now() - interval '15 days'), "
                "('long', 'l2', 'op', 'svc', timestamptz '%s 06:00:00+00'), "
                "('new', 'n1', 'op', 'svc', now())" % layout.server_today(db_url))
    result = run_cli("maintain", "--retain", "14d", "--format", "json", url=db_url)
    assert result.code == 0, result.err
    payload = json_of(result)
    assert sorted(r[0] for r in sql(db_url, "select trace_id from otel.traces")) == ["long", "new"]
    assert sorted(r[0] for r in sql(db_url, "select span_id from otel.spans")) == ["l2", "n1"]
    assert payload["trace_rows_deleted"] == 2 and payload["trace_rows_kept"] == 1
    assert payload["trace_rows_kept_until"] == "%sT06:00:00Z" % (layout.server_today(db_url) + 14 * DAY)
    text = run_cli("maintain", "--retain", "14d", url=db_url).out
    assert "kept 1 trace rows" in text and "%sT06:00:00Z" % (layout.server_today(db_url) + 14 * DAY) in text
    orphans = sql(db_url, "select count(*) from otel.spans s where not exists (select 1 from otel.traces t "
                          "where t.trace_id = s.trace_id)")[0][0]
    assert orphans == 0


def test_rows_left_in_default_for_past_days_are_moved_into_place_or_dropped_by_retention(db_url):
    """Issue 19 item 6: a past day without a partition (a gap, or days maintain did not
    run for): its rows in DEFAULT get that day's partition, or go with retention."""
    today = layout.build(db_url, cutoff_offset=-10, ahead=7)
    assert run_cli("maintain", url=db_url).code == 0
    for gap in (3, 8):
        sql(db_url, "drop table otel.%s" % layout.day_name(today - gap * DAY))
    layout.insert_spans(db_url, ["timestamptz '%s 12:00:00+00'" % (today - 3 * DAY),
                                 "timestamptz '%s 12:00:00+00'" % (today - 8 * DAY)])
    assert count(db_url, "otel.spans_default") == 2
    result = run_cli("maintain", "--retain", "5d", "--format", "json", url=db_url)
    assert result.code == 0, result.err
    payload = json_of(result)
    assert layout.day_name(today - 3 * DAY) in payload["created"]
    assert layout.day_name(today - 8 * DAY) not in payload["created"]  # wholly older than the window
    assert layout.partition_of_rows(db_url) == [("otel." + layout.day_name(today - 3 * DAY), "s0")]
    assert payload["default_rows"] == 0
    assert run_cli("verify", url=db_url).code == 0


# -- every value the --retain grammar accepts works (issue 19 item 6) ---------------------

def _retain_values(rng, n):
    for _ in range(n):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 6)))
        yield rng.choice(["", " ", "  "]) + digits + rng.choice("hdw") + rng.choice(["", " "])


def test_the_retain_grammar_as_a_property(rng):
    """Every string of the documented grammar parses to n x its unit (or is exit 2 when
    n is 0); everything else is exit 2; nothing raises anything else."""
    from otelmig.errors import UsageError
    from otelmig.maintain import parse_retain
    unit = {"h": 3600, "d": 86400, "w": 604800}
    for text in _retain_values(rng, 3000):
        number, letter = int(text.strip()[:-1]), text.strip()[-1]
        if number == 0:
            with pytest.raises(UsageError):
                parse_retain(text)
        else:
            assert parse_retain(text) == number * unit[letter], text
    for text in ["", "d", "1", "1dd", "-1d", "+1d", "1.5d", "1e3d", "1234567d", "1 d", "1D", "1m", "1s", "٣d",
                 "1d2h", "0x10d", "\x00", "1\nd"] + ["".join(rng.choice("0123456789hdw -+.x") for _ in range(
                     rng.randint(1, 9))) for _ in range(2000)]:
        try:
            parsed = parse_retain(text)
        except UsageError:
            continue
        assert re.fullmatch(r"\s*[0-9]{1,6}[hdw]\s*", text) and parsed > 0, text


def test_every_window_the_grammar_accepts_has_a_start_on_the_server(db_url, rng):
    from otelmig import partitions
    from otelmig.maintain import parse_retain
    conn = connect(db_url, autocommit=False)  # one transaction: one now() for every window
    try:
        values = ["1h", "999999h", "999999d", "999999w", "52w", "100000w"] + list(_retain_values(rng, 200))
        starts = []
        for text in values:
            seconds = parse_retain(text) if text.strip()[:-1].lstrip("0") else None
            if seconds is None:
                continue
            start = partitions.window_start(conn, seconds)
            starts.append((seconds, start.epoch))
            assert start.text, text
    finally:
        conn.close()
    starts.sort()
    assert all(a[1] >= b[1] for a, b in zip(starts, starts[1:]))  # a longer window starts no later
    assert min(epoch for _, epoch in starts) == -210866803200.0   # 4714-11-24 BC, PostgreSQL's first day


@pytest.mark.parametrize("value", ["999999d", "999999w", "999999h", "000001h"])
def test_extreme_windows_work(db_url, value):
    layout.build(db_url, cutoff_offset=-20, ahead=7)
    layout.insert_spans(db_url, ["now() - interval '30 days'", "now()"])
    for args in (["--dry-run"], []):
        result = run_cli("maintain", "--retain", value, "--format", "json", *args, url=db_url)
        assert result.code == 0, result.err
        assert json_of(result)["window_start"]
    left = count(db_url, "otel.spans")
    assert left == (1 if value == "000001h" else 2)


# -- every timestamp PostgreSQL accepts (issue 19 items 3 and 6) --------------------------

def test_timestamps_past_9999_before_year_1_and_infinite_go_through_every_command(db_url):
    layout.build(db_url, cutoff_offset=-3, ahead=7)
    sql(db_url, "create table otel.far_ahead partition of otel.spans for values from ('20000-01-01 00:00:00+00') "
                "to ('infinity')")
    layout.insert_spans(db_url, ["'infinity'", "'-infinity'", "timestamptz '56890-01-01 00:00:00+00'",
                                 "timestamptz '0044-03-15 00:00:00+00 BC'", "timestamptz '10000-06-01 00:00:00+00'",
                                 "now()", "timestamptz '30000-01-01 00:00:00+00'"])
    for args in (["maintain"], ["maintain", "--retain", "14d"], ["maintain", "--dry-run", "--retain", "2w"],
                 ["plan"], ["verify"], ["check"]):
        for fmt in ("text", "json", "prometheus") if args[0] in ("maintain", "verify") else ("text", "json"):
            result = run_cli(*args, "--format", fmt, url=db_url)
            assert result.code in (0, 7), (args, fmt, result)
            assert "internal error" not in result.err and "Traceback" not in result.err, (args, result.err)
    payload = json_of(run_cli("maintain", "--format", "json", url=db_url))
    assert payload["newest_bound"] == "infinity"
    assert payload["default_rows"] == 2  # infinity and 10000-06-01: past every day, kept, queryable
    assert count(db_url, "otel.spans") == 5  # the -infinity and BC rows went with the window
