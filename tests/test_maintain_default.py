"""maintain making day partitions while DEFAULT holds their rows (issue 19, item 6):
the DEFAULT partition replaced by a copy while writers go on
(otelmig/default_partition.py), every row kept and visible at every moment,
every write accepted, and every state a crash or a signal leaves repaired.
Real PostgreSQL throughout; what writers wait is measured by bench/writers.py."""

import datetime
import os
import signal
import threading
import time
import uuid

import pytest

from conftest import connect, run_cli, sql
from helpers import spawn, wait_for
from otelmig.ddl import AFTER_STATEMENT_ENV, CRASH_AFTER_ENV, HOOK_DIR_ENV

DAY = datetime.timedelta(days=1)
ROWS = 20000          # of the coming day in DEFAULT: well past maintain.DIRECT_MAX_BYTES
DEADLINE = 180
WORK_TABLES = ("spans_default_next", "spans_default_log")


def day_name(day):
    return "spans_p" + day.strftime("%Y%m%d")


@pytest.fixture(scope="module")
def big_default(server):
    """A store converted by `upgrade` (today to today + 7), then DEFAULT holding ROWS
    spans of today + 8, 50 of today + 60 and one at 'infinity'; a template database."""
    name = "md_" + uuid.uuid4().hex[:10]
    sql(server.admin_url, "CREATE DATABASE %s" % name)
    url = server.url(name)
    assert run_cli("upgrade", url=url).code == 0
    today = sql(url, "select (now() at time zone 'UTC')::date")[0][0]
    coming = today + 8 * DAY
    sql(url, "insert into otel.spans (trace_id, span_id, name, service_name, start_time) "
             "select 't' || g, 'd' || g, 'op', 'svc' || (g %% 7), %s::timestamptz + g * interval '4 s' "
             "from generate_series(1, %s) g", ("%s 00:00:00+00" % coming, ROWS))
    sql(url, "insert into otel.spans (trace_id, span_id, name, service_name, start_time) "
             "select 'f' || g, 'f' || g, 'op', 'svc', now() + interval '60 days' + g * interval '1 min' "
             "from generate_series(1, 50) g")
    sql(url, "insert into otel.spans (trace_id, span_id, name, service_name, start_time) "
             "values ('inf', 'inf', 'op', 'svc', 'infinity')")
    sql(url, "vacuum analyze otel.spans_default")
    assert sql(url, "select count(*) from otel.spans_default")[0][0] == ROWS + 51
    yield name, coming
    sql(server.admin_url, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)


def rows(url):
    """Every span as (id, start_time text, span_id, name), and where it is."""
    return sql(url, "select id, start_time::text, span_id, name, tableoid::regclass::text from otel.spans "
                    "order by id, start_time")


def fingerprint(url):
    """Every span (not where it is): count and a digest."""
    return tuple(sql(url, "select count(*), md5(coalesce(string_agg(id || '/' || start_time::text || '/' || span_id "
                          "|| '/' || name, ',' order by id, start_time), '')) from otel.spans")[0])


def leftovers(url):
    return sql(url, "select count(*) from otel.otelmig_objects where object_kind like 'maintain%%'")[0][0] + sql(
        url, "select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'otel' "
             "and c.relname = any(%s)", (list(WORK_TABLES),))[0][0] + sql(
        url, "select count(*) from pg_trigger t join pg_class c on c.oid = t.tgrelid "
             "where t.tgname like 'otelmig_log%%'")[0][0] + sql(
        url, "select count(*) from pg_proc where proname = 'spans_default_log_change'")[0][0]


def statements_of(url, *args):
    """The statements a maintain run executes (its -v lines that hold SQL), in order."""
    proc = spawn(url, "maintain", "-v", *args)
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    return [line[len("maintain: "):] for line in err.splitlines()
            if line.startswith("maintain: ") and line[len("maintain: "):][:2].isupper()]


def index_of(statements, start):
    """1-based number of the first statement that starts with `start`."""
    return next(n for n, s in enumerate(statements, 1) if s.startswith(start))


def writes_accepted(url, coming, tag):
    """The worker's writes, each its own transaction, all accepted: inserts stamped now,
    on the coming day, far ahead and at infinity; an update and a delete of DEFAULT rows."""
    for n, stamp in enumerate(["now()", "timestamptz '%s 12:00:00+00'" % coming, "now() + interval '90 days'",
                               "'infinity'"]):
        sql(url, "insert into otel.spans (trace_id, span_id, name, service_name, start_time) "
                 "values ('w', %s, 'op', 'svc', " + stamp + ")", ("%s-%d" % (tag, n),))
    sql(url, "update otel.spans set name = %s where span_id = 'd10'", ("updated-" + tag,))
    sql(url, "delete from otel.spans where span_id = %s", ("d%d" % (11 + len(tag)),))


def converged(url, coming):
    """The coming day is a partition; DEFAULT is plain again (no CHECK, no trigger) with its index names;
    nothing of the promotion is left; verify finds no problem."""
    attached = sql(url, "select c.relname::text from pg_inherits i join pg_class c on c.oid = i.inhrelid "
                        "where i.inhparent = 'otel.spans'::regclass")
    assert day_name(coming) in [r[0] for r in attached]
    assert sql(url, "select pg_get_expr(relpartbound, 0) from pg_class where oid = 'otel.spans_default'::regclass"
               ) == [["DEFAULT"]]
    assert sql(url, "select count(*) from pg_constraint where conrelid = 'otel.spans_default'::regclass "
                    "and contype = 'c'")[0][0] == 0
    assert sql(url, "select count(*) from pg_trigger where tgrelid = 'otel.spans_default'::regclass")[0][0] == 0
    assert sorted(r[0] for r in sql(url, "select indexrelid::regclass::text from pg_index "
                                         "where indrelid = 'otel.spans_default'::regclass")) == [
        "otel.spans_default_pkey", "otel.spans_default_service_name_start_time_idx",
        "otel.spans_default_span_id_idx", "otel.spans_default_trace_id_idx"]
    assert leftovers(url) == 0
    result = run_cli("verify", "--format", "json", url=url)
    assert result.code == 0 and result.json()["problems"] == [], result.out


# -- the promotion ----------------------------------------------------------------------

def test_a_big_default_becomes_day_partitions_with_every_row_kept(big_default, copy_of):
    template, coming = big_default
    url = copy_of(template)
    before = rows(url)
    result = run_cli("maintain", "--ahead", "8", "--format", "json", url=url)
    assert result.code == 0, result.err
    payload = result.json()
    assert payload["created"] == [day_name(coming)] and payload["moved_from_default"] == ROWS
    assert payload["default_rows"] == 51
    after = rows(url)
    assert [r[:4] for r in after] == [r[:4] for r in before]  # every row, unchanged
    where = {r[2]: r[4] for r in after}
    assert where["d1"] == where["d%d" % ROWS] == "otel." + day_name(coming)
    assert where["f1"] == where["inf"] == "otel.spans_default"
    assert sql(url, "select origin from otel.otelmig_objects where object_kind = 'partition' and object_name = %s",
               (day_name(coming),)) == [["created"]]
    converged(url, coming)


FIRST_COPY = 'INSERT INTO "otel"."spans_p'
LAST_COPY = 'INSERT INTO "otel"."spans_default_next"'


@pytest.mark.parametrize("pause_after", [FIRST_COPY, LAST_COPY],
                         ids=["between the copies", "after the copy, before the replay"])
def test_writes_while_it_copies_are_all_in_the_result(big_default, copy_of, tmp_path, pause_after):
    """Inserts, updates (one moving a row out of DEFAULT, one moving a row to another
    day of DEFAULT) and deletes made while the copy runs (it holds ACCESS SHARE on
    DEFAULT only, so they go through): each is in the result, none undone, none lost."""
    template, coming = big_default
    k = index_of(statements_of(copy_of(template), "--ahead", "8"), pause_after)
    url = copy_of(template)
    proc = spawn(url, "maintain", "--ahead", "8", env={AFTER_STATEMENT_ENV: "%d:PAUSE" % k,
                                                       HOOK_DIR_ENV: str(tmp_path)})
    wait_for(lambda: os.path.exists(tmp_path / "paused"), "maintain to pause", DEADLINE)
    try:
        writes_accepted(url, coming, "p")
        sql(url, "update otel.spans set start_time = now() where span_id = 'd20'")  # out of DEFAULT
        sql(url, "update otel.spans set start_time = start_time + interval '50 days' where span_id = 'd21'")
        sql(url, "update otel.spans set name = 'renamed' where span_id = 'f1'")
        sql(url, "delete from otel.spans where span_id in ('d30', 'f2', 'inf')")
        expected = rows(url)
    finally:
        (tmp_path / "resume").touch()
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    assert [r[:4] for r in rows(url)] == [r[:4] for r in expected]
    where = {r[2]: r[4] for r in rows(url)}
    assert where["p-1"] == where["d1"] == "otel." + day_name(coming)
    assert where["d21"] == where["f1"] == "otel.spans_default"
    assert "d30" not in where and "inf" not in where
    converged(url, coming)


def test_a_truncate_while_it_copies_stops_it_and_brings_nothing_back(big_default, copy_of, tmp_path):
    template, coming = big_default
    k = index_of(statements_of(copy_of(template), "--ahead", "8"), LAST_COPY)
    url = copy_of(template)
    proc = spawn(url, "maintain", "--ahead", "8", env={AFTER_STATEMENT_ENV: "%d:PAUSE" % k,
                                                       HOOK_DIR_ENV: str(tmp_path)})
    wait_for(lambda: os.path.exists(tmp_path / "paused"), "maintain to pause", DEADLINE)
    truncate = threading.Thread(target=sql, args=(url, "truncate otel.spans_default"))
    try:
        truncate.start()  # waits for the copy's transaction (ACCESS SHARE on DEFAULT)
        wait_for(lambda: sql(url, "select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
                                  "and query like 'truncate%%'")[0][0], "the TRUNCATE to wait")
    finally:
        (tmp_path / "resume").touch()
    _, err = proc.communicate(timeout=DEADLINE)
    truncate.join(DEADLINE)
    assert proc.returncode == 7, err
    assert "truncated" in err
    assert sql(url, "select count(*) from otel.spans_default")[0][0] == 0
    assert sql(url, "select count(*) from otel.spans where start_time >= %s", ("%s 00:00:00+00" % coming,))[0][0] == 0
    assert leftovers(url) == 0
    again = run_cli("maintain", "--ahead", "8", url=url)  # an empty DEFAULT: the day is made at once
    assert again.code == 0, again.err
    converged(url, coming)


def test_sigterm_while_it_copies_removes_what_it_made(big_default, copy_of, tmp_path):
    template, coming = big_default
    k = index_of(statements_of(copy_of(template), "--ahead", "8"), FIRST_COPY)
    url = copy_of(template)
    before = fingerprint(url)
    proc = spawn(url, "maintain", "--ahead", "8", env={AFTER_STATEMENT_ENV: "%d:TERM" % k})
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 143, err
    assert leftovers(url) == 0, err
    assert fingerprint(url) == before
    assert run_cli("maintain", "--ahead", "8", url=url).code == 0
    converged(url, coming)


def test_a_crash_at_every_statement_loses_nothing_and_the_next_run_converges(big_default, copy_of):
    """SIGKILL after each statement the run executes: every row stays visible in
    otel.spans, the worker's writes are accepted, verify names what is left, and
    the next maintain (one time `upgrade`) removes it and makes the day."""
    template, coming = big_default
    statements = statements_of(copy_of(template), "--ahead", "8")
    assert any(s.startswith("CREATE TRIGGER otelmig_log_change") for s in statements), statements
    left_behind = 0
    for k in range(1, len(statements) + 1):
        url = copy_of(template)
        before = fingerprint(url)
        crashed = spawn(url, "maintain", "--ahead", "8", env={CRASH_AFTER_ENV: str(k)})
        _, err = crashed.communicate(timeout=DEADLINE)
        assert crashed.returncode == -signal.SIGKILL, (k, err)
        assert fingerprint(url) == before, "a row is missing or changed after a crash at statement %d (%s)" % (
            k, statements[k - 1][:60])
        writes_accepted(url, coming, "k%d" % k)
        if leftovers(url):
            left_behind += 1
            problems = run_cli("verify", "--format", "json", url=url).json()["problems"]
            assert "maintain_leftover" in {p["kind"] for p in problems}, (k, problems)
        truth = fingerprint(url)
        repair = "upgrade" if k == len(statements) // 2 else "maintain"
        rerun = run_cli(repair, url=url)
        assert rerun.code == 0, (k, repair, rerun.err)
        if repair == "upgrade":
            assert leftovers(url) == 0, k
            rerun = run_cli("maintain", url=url)
            assert rerun.code == 0, (k, rerun.err)
        result = run_cli("maintain", "--ahead", "8", url=url)
        assert result.code == 0, (k, result.err)
        assert fingerprint(url) == truth, "rows changed by the run after a crash at statement %d" % k
        converged(url, coming)
    assert left_behind, "no crash point left anything behind: the matrix proves nothing"


def test_a_crash_while_it_replays_what_writers_changed_loses_none_of_it(big_default, copy_of, tmp_path):
    """Writers change DEFAULT after the copy; the run then crashes at each statement
    of the replay and at the swap's lock: their changes stay in otel.spans, and the
    next run carries them into the new partitions."""
    template, coming = big_default
    k = index_of(statements_of(copy_of(template), "--ahead", "8"), LAST_COPY)
    for j in range(1, 7):
        url = copy_of(template)
        hook = tmp_path / str(j)
        hook.mkdir()
        proc = spawn(url, "maintain", "--ahead", "8", env={AFTER_STATEMENT_ENV: "%d:PAUSE" % k,
                                                           HOOK_DIR_ENV: str(hook), CRASH_AFTER_ENV: str(k + j)})
        wait_for(lambda: os.path.exists(hook / "paused"), "maintain to pause", DEADLINE)
        try:
            writes_accepted(url, coming, "r%d" % j)
            sql(url, "update otel.spans set start_time = start_time + interval '50 days' where span_id = 'd21'")
            truth = fingerprint(url)
        finally:
            (hook / "resume").touch()
        _, err = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == -signal.SIGKILL, (j, err)
        assert fingerprint(url) == truth, "after a crash at replay statement %d" % j
        result = run_cli("maintain", "--ahead", "8", url=url)
        assert result.code == 0, (j, result.err)
        assert fingerprint(url) == truth, j
        converged(url, coming)


def test_a_leftover_trigger_whose_log_was_dropped_accepts_writes(big_default, copy_of):
    template, coming = big_default
    k = index_of(statements_of(copy_of(template), "--ahead", "8"), FIRST_COPY)  # the triggers are committed
    url = copy_of(template)
    crashed = spawn(url, "maintain", "--ahead", "8", env={CRASH_AFTER_ENV: str(k)})
    crashed.communicate(timeout=DEADLINE)
    assert crashed.returncode == -signal.SIGKILL
    sql(url, "drop table otel.spans_default_log")  # an operator tidying up by hand
    writes_accepted(url, coming, "x")
    truth = fingerprint(url)
    result = run_cli("maintain", "--ahead", "8", url=url)
    assert result.code == 0, result.err
    assert fingerprint(url) == truth
    converged(url, coming)


# -- when DEFAULT is not replaced ---------------------------------------------------------

def test_a_default_a_view_reads_is_not_replaced_and_its_rows_stay(big_default, copy_of):
    template, coming = big_default
    url = copy_of(template)
    sql(url, "create view public.default_rows as select * from otel.spans_default")
    before = rows(url)
    result = run_cli("maintain", "--ahead", "8", "--format", "json", url=url)
    assert result.code == 7, result.err
    assert day_name(coming) not in result.json()["created"]
    assert "default_rows" in result.err and "view" in result.err
    assert rows(url) == before and leftovers(url) == 0


def test_a_big_default_otelmig_did_not_make_is_not_replaced(big_default, copy_of):
    template, coming = big_default
    url = copy_of(template)
    sql(url, "delete from otel.otelmig_objects where object_kind = 'partition' and object_name = 'spans_default'")
    before = rows(url)
    result = run_cli("maintain", "--ahead", "8", url=url)
    assert result.code == 7, result.err
    assert "not otelmig's" in result.err
    assert rows(url) == before and leftovers(url) == 0
    assert sql(url, "select to_regclass('otel.spans_default') is not null")[0][0]


# -- the small DEFAULT: one short transaction per day -------------------------------------

def test_inserts_for_the_day_being_made_wait_and_land_in_it(db_url):
    """The field's rejection: an insert routed to DEFAULT with the partition list
    from before the attach is refused (23514). A reader of DEFAULT holds the run
    at its lock for a while, a writer inserts rows of that day all along: the run
    holds writers off spans for its short transaction, so none is rejected and
    every row lands in the new day."""
    assert run_cli("upgrade", url=db_url).code == 0
    today = sql(db_url, "select (now() at time zone 'UTC')::date")[0][0]
    coming = today + 8 * DAY
    sql(db_url, "insert into otel.spans (trace_id, span_id, name, service_name, start_time) "
                "values ('t', 'old', 'op', 'svc', %s)", ("%s 06:00:00+00" % coming,))
    reader = connect(db_url, autocommit=False)
    reader.cursor().execute("select count(*) from otel.spans_default")
    failures, done, stop = [], [], threading.Event()

    def write():
        conn = connect(db_url)
        while not stop.is_set():
            try:
                conn.cursor().execute("insert into otel.spans (trace_id, span_id, name, service_name, start_time) "
                                      "values ('t', %s, 'op', 'svc', %s)", ("w%d" % len(done),
                                                                           "%s 07:00:00+00" % coming))
                done.append(1)
            except Exception as exc:  # the rejection this test is about
                failures.append(str(exc))
                conn = connect(db_url)
            time.sleep(0.005)
        conn.close()
    writer = threading.Thread(target=write)
    try:
        proc = spawn(db_url, "maintain", "--ahead", "8", "--lock-timeout", "30")
        wait_for(lambda: sql(db_url, "select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
                                     "and query like 'LOCK TABLE%%spans_default%%'")[0][0],
                 "maintain to wait for the DEFAULT partition", DEADLINE)
        writer.start()
        wait_for(lambda: len(done) >= 30, "the writer to insert while maintain waits")
    finally:
        reader.rollback()
        reader.close()
    _, err = proc.communicate(timeout=DEADLINE)
    time.sleep(0.2)
    stop.set()
    writer.join(DEADLINE)
    assert proc.returncode == 0, err
    assert failures == []
    assert {r[0] for r in sql(db_url, "select tableoid::regclass::text from otel.spans")} == {
        "otel." + day_name(coming)}
    assert sql(db_url, "select count(*) from otel.spans")[0][0] == len(done) + 1
