"""Production safety on the real cluster: replicas at once, lock budgets,
interruptions, failed concurrent builds."""

import contextlib
import random
import signal
import threading
import time

import pg8000.dbapi
import pytest

from conftest import catalog_snapshot, connect, load_legacy, run_cli, sql, table_rows
from helpers import (DEADLINE_SECONDS, SPAN_COLUMNS_LEGACY, error_line, head_names, hold_access_share, one_line,
                     spawn, upgrade_blocked_on_spans, verify_ok, wait_for_statement, wait_for_waiting_alter)
from otelmig import schema as contract
from otelmig.revisions import HEAD_REVISION


@pytest.mark.parametrize("legacy_traces", [0, 8000])
def test_eight_replicas_upgrade_at_once(db_url, legacy_traces):
    if legacy_traces:
        load_legacy(db_url, traces=legacy_traces, spans_per_trace=5)
        rows = table_rows(db_url, "otel", "spans", SPAN_COLUMNS_LEGACY)
    procs = [spawn(db_url, "upgrade") for _ in range(8)]
    results = [(p.wait(120), p.stdout.read(), p.stderr.read()) for p in procs]
    assert [r[0] for r in results] == [0] * 8, results
    assert sum("now at %s" % HEAD_REVISION in r[1] for r in results) == 1
    assert sum("nothing to do" in r[1] for r in results) == 7
    assert sql(db_url, "select count(*) from otel.alembic_version") == [[1]]
    verify_ok(db_url)
    if legacy_traces:
        assert table_rows(db_url, "otel", "spans", head_names(SPAN_COLUMNS_LEGACY)) == rows


def test_two_schemas_do_not_wait_on_each_other(db_url):
    holder = connect(db_url)
    from otelmig.lock import lock_keys
    holder.cursor().execute("select pg_advisory_lock(%s, %s)", lock_keys("otel"))
    try:
        # otel's lock is held throughout: had otel_b's upgrade needed it, it would
        # have given up after --lock-wait with 9 (no clock to read, no window to miss).
        other = run_cli("upgrade", "--schema", "otel_b", url=db_url, env={"OTELMIG_LOCK_WAIT": "1"})
        assert other.code == 0, other.err
        busy = run_cli("upgrade", url=db_url, env={"OTELMIG_LOCK_WAIT": "1"})
        assert busy.code == 9
        line = error_line(busy.err)
        assert "pid" in line and "application_name" in line, busy.err
        assert sql(db_url, "select to_regclass('otel.traces')") == [[None]]
    finally:
        holder.close()


def test_lock_timeout_keeps_readers_moving_then_finishes(db_url):
    load_legacy(db_url, traces=200)
    holder = connect(db_url, autocommit=False)
    holder.cursor().execute("select count(*) from otel.spans")  # ACCESS SHARE until commit
    proc = spawn(db_url, "upgrade", "--lock-timeout", "1")
    worst = measure_reads(db_url, seconds=4)
    holder.rollback()  # the long transaction ends: the upgrade can now finish
    holder.close()
    code = proc.wait(60)
    err = proc.stderr.read()
    assert code == 0, err
    assert "retrying" in err
    assert worst < 2.0, worst  # a reader never queued much longer than the lock timeout
    verify_ok(db_url)


def measure_reads(url, seconds):
    """The worst wait of a reader of either table while the upgrade retries."""
    conn = connect(url)
    cursor = conn.cursor()
    worst, deadline = 0.0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        for table in ("traces", "spans"):
            started = time.monotonic()
            cursor.execute("select count(*) from otel.%s" % table)
            worst = max(worst, time.monotonic() - started)
        time.sleep(0.05)
    conn.close()
    return worst


def test_lock_budget_exhausted_is_9_with_nothing_changed(db_url, monkeypatch):
    load_legacy(db_url, traces=50)
    before = catalog_snapshot(db_url)
    holder = connect(db_url, autocommit=False)
    holder.cursor().execute("select count(*) from otel.spans")
    # Only a safety net: should the budget not stop the upgrade, the reader ends
    # after this long, the upgrade then finishes (exit 0) and the test fails
    # instead of hanging. A 0.9 s budget never comes near it.
    release = threading.Timer(DEADLINE_SECONDS, holder.rollback)
    release.start()
    try:
        import otelmig.migrate
        monkeypatch.setattr(otelmig.migrate, "LOCK_BUDGET_FACTOR", 3)
        result = run_cli("upgrade", "--lock-timeout", "0.3", url=db_url)
    finally:
        release.cancel()
        release.join()
        holder.rollback()
        holder.close()
    assert result.code == 9, result
    assert "could not get a table lock in time" in error_line(result.err), result.err
    assert catalog_snapshot(db_url) == before
    assert sql(db_url, "select to_regclass('otel.alembic_version')") == [[None]]


def test_sigterm_rolls_back_releases_and_exits_143(db_url):
    load_legacy(db_url, traces=100)
    before = catalog_snapshot(db_url)
    with upgrade_blocked_on_spans(db_url) as proc:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(DEADLINE_SECONDS)
        err = proc.stderr.read()
    assert code == 143, err
    assert one_line(err) and "SIGTERM" in err, err
    assert catalog_snapshot(db_url) == before
    assert sql(db_url, "select count(*) from pg_locks where locktype = 'advisory'") == [[0]]
    assert run_cli("upgrade", url=db_url).code == 0


def test_sigint_exits_130(db_url):
    load_legacy(db_url, traces=10)
    with upgrade_blocked_on_spans(db_url) as proc:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(DEADLINE_SECONDS)
    assert code == 130 and "SIGINT" in proc.stderr.read()


def hold_old_snapshot(url):
    """An old snapshot elsewhere: a concurrent index build must wait for it."""
    holder = connect(url, autocommit=False)
    holder.cursor().execute("begin isolation level repeatable read")
    holder.cursor().execute("select count(*) from pg_class")
    return holder


# (how to hold the upgrade mid-statement, the statement it is then running)
KILL_MOMENTS = [(hold_access_share, "ALTER TABLE%%spans%%RENAME%%"),
                (hold_old_snapshot, "CREATE INDEX CONCURRENTLY%%"),
                (None, None), (None, None)]


def test_sigkill_at_random_moments_then_rerun(db_url):
    """SIGKILL mid-transaction, mid concurrent build and at random times, then a plain rerun."""
    load_legacy(db_url, traces=6000, spans_per_trace=5)
    rows = table_rows(db_url, "otel", "spans", SPAN_COLUMNS_LEGACY)
    rng = random.Random(42)
    for hold, statement in KILL_MOMENTS:
        holder = hold(db_url) if hold else None
        proc = spawn(db_url, "upgrade", "--lock-timeout", "30")
        if statement:
            wait_for_statement(db_url, statement)
        else:
            time.sleep(rng.uniform(0.3, 0.8))
        proc.kill()
        proc.wait(DEADLINE_SECONDS)
        if holder:
            holder.rollback()
            holder.close()
    result = spawn(db_url, "upgrade")
    assert result.wait(120) == 0, result.stderr.read()
    verify_ok(db_url)
    assert table_rows(db_url, "otel", "spans", head_names(SPAN_COLUMNS_LEGACY)) == rows


def test_connection_cut_is_3_and_rerun_succeeds(db_url):
    load_legacy(db_url, traces=50)
    with upgrade_blocked_on_spans(db_url) as proc:
        sql(db_url, "select pg_terminate_backend(pid) from pg_stat_activity where wait_event_type = 'Lock' "
                    "and query ilike 'ALTER TABLE%%'")
        code = proc.wait(DEADLINE_SECONDS)
        err = proc.stderr.read()
    assert code == 3, err
    assert one_line(err), err
    assert run_cli("upgrade", url=db_url).code == 0
    verify_ok(db_url)


def test_failed_concurrent_build_is_repaired(db_url):
    load_legacy(db_url, traces=100)
    # Duplicate span ids make a UNIQUE concurrent build fail and leave an INVALID index
    # under one of our names, exactly what an interrupted CREATE INDEX CONCURRENTLY leaves.
    sql(db_url, "update otel.spans set span_id = 'dup' where id <= 2")
    with pytest.raises(pg8000.dbapi.DatabaseError, match="23505"):  # unique_violation
        sql(db_url, "create unique index concurrently ix_spans_span_id on otel.spans (span_id)")
    assert sql(db_url, "select indisvalid from pg_index where indexrelid = 'otel.ix_spans_span_id'::regclass") \
        == [[False]]
    result = run_cli("upgrade", "-v", url=db_url)
    assert result.code == 0, result.err
    assert "DROP INDEX CONCURRENTLY" in result.err
    verify_ok(db_url)


def test_concurrent_helper_really_runs_outside_a_transaction(db_url):
    """CREATE INDEX CONCURRENTLY fails with 25001 inside a transaction: on a
    table with rows, our build is concurrent, and it succeeds."""
    load_legacy(db_url, traces=100)
    result = run_cli("upgrade", "-v", url=db_url)
    assert result.code == 0, result.err
    assert result.err.count("CREATE INDEX CONCURRENTLY") == len(contract.INDEXES)
    assert result.err.count("CREATE UNIQUE INDEX CONCURRENTLY") == 1  # the partitioned primary key's, on the old table


@contextlib.contextmanager
def writing(url, stop=None):
    """A worker inserting a span every 10 ms; yields the list of insert latencies."""
    stop = stop or threading.Event()
    latencies = []

    def writer():
        conn = connect(url)
        cursor = conn.cursor()
        n = 0
        while not stop.is_set():
            n += 1
            started = time.monotonic()
            insert_span(cursor, "w%d" % n)
            latencies.append(time.monotonic() - started)
            time.sleep(0.01)
        conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        yield latencies
    finally:
        stop.set()
        thread.join()


def test_writers_are_not_blocked_by_index_builds(db_url):
    load_legacy(db_url, traces=20000, spans_per_trace=5)
    with writing(db_url) as latencies:
        result = run_cli("upgrade", url=db_url)
    assert result.code == 0, result.err
    verify_ok(db_url)
    assert max(latencies) < 1.0, max(latencies)
    assert sql(db_url, "select count(*) from otel.spans where trace_id = 'w'") == [[len(latencies)]]


def insert_span(cursor, span_id):
    """A worker that writes whichever layout it finds (the start column was renamed)."""
    for column in ("start_ts", "start_time"):
        try:
            cursor.execute("insert into otel.spans (trace_id, span_id, name, service_name, %s) "
                           "values ('w', %%s, 'w', 'w', now())" % column, (span_id,))
            return
        except Exception as exc:
            if "42703" not in str(exc):  # undefined column: try the other name
                raise
    raise AssertionError("neither layout accepted the insert")


def test_long_index_builds_report_progress(db_url, monkeypatch):
    import otelmig.progress
    monkeypatch.setattr(otelmig.progress, "INTERVAL_SECONDS", 0.05)
    load_legacy(db_url, traces=60000, spans_per_trace=5)
    result = run_cli("upgrade", url=db_url)
    assert result.code == 0, result.err
    assert "building otel.ix_spans" in result.err and "%" in result.err


def test_statements_may_outlast_connect_timeout(db_url):
    """connect_timeout bounds connecting only: a DDL that waits longer still completes."""
    load_legacy(db_url, traces=50)
    holder = connect(db_url, autocommit=False)
    holder.cursor().execute("select count(*) from otel.spans")
    url = db_url + "?connect_timeout=1"
    proc = spawn(url, "upgrade", "--lock-timeout", "20")
    wait_for_waiting_alter(db_url)
    time.sleep(2.0)  # the ALTER has now waited longer than connect_timeout
    holder.rollback()
    holder.close()
    assert proc.wait(60) == 0, proc.stderr.read()
    verify_ok(db_url)


def test_concurrent_build_outwaits_an_old_snapshot(db_url):
    """A long transaction elsewhere makes CREATE INDEX CONCURRENTLY wait; lock_timeout
    must not cut that wait (which would leave an INVALID index)."""
    load_legacy(db_url, traces=2000)
    sql(db_url, "create table public.unrelated (x int)")
    holder = connect(db_url, autocommit=False)
    holder.cursor().execute("begin isolation level repeatable read")
    holder.cursor().execute("select count(*) from public.unrelated")
    proc = spawn(db_url, "upgrade", "--lock-timeout", "0.5")
    wait_for_statement(db_url, "CREATE INDEX CONCURRENTLY%%")
    time.sleep(2.0)
    holder.rollback()
    holder.close()
    assert proc.wait(60) == 0
    err = proc.stderr.read()
    assert "retrying" not in err, err
    verify_ok(db_url)


def test_sigterm_during_check_wait_is_prompt():
    """A server that accepts but never answers: SIGTERM still ends `check --wait` at once."""
    import socket
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    silent.settimeout(DEADLINE_SECONDS)
    try:
        # Each attempt would sit out a 120 s connect timeout, the whole wait 300 s:
        # ending within the 60 s below is "at once" by a wide margin either way.
        url = "postgresql://u@127.0.0.1:%d/d?connect_timeout=120" % silent.getsockname()[1]
        proc = spawn(url, "check", "--wait", "300")
        try:
            accepted, _ = silent.accept()  # otelmig is connecting: its handler is installed by now
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(DEADLINE_SECONDS)
            err = proc.stderr.read()
            accepted.close()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert code == 143, err
        assert one_line(err) and "SIGTERM" in err, err
    finally:
        silent.close()


@pytest.mark.parametrize("configured, expected", [(None, "256MB"), ("1GB", "1GB")])
def test_index_builds_get_memory_but_never_less(server, db_url, configured, expected):
    from otelmig.migrate import _prepare_session
    from otelmig.scripts import engine_for
    from otelmig.settings import Settings, resolve_conninfo
    if configured:
        sql(server.admin_url, "alter database %s set maintenance_work_mem = '%s'"
            % (db_url.rsplit("/", 1)[1], configured))
    engine = engine_for(resolve_conninfo(db_url, {}))
    with engine.connect() as connection:
        _prepare_session(connection, Settings(conninfo=None))
        assert connection.exec_driver_sql("show maintenance_work_mem").scalar() == expected
        assert connection.exec_driver_sql("show lock_timeout").scalar() == "5s"
    engine.dispose()


def test_writer_barely_waits_while_long_reads_hold_the_table(db_url):
    """Readers that keep spans locked for 3 s at a time: the rename must slip into
    a gap between them, not queue the writer behind it for a whole read."""
    load_legacy(db_url, traces=200)
    stop = threading.Event()

    def long_reader():
        conn = connect(db_url)
        while not stop.is_set():
            conn.cursor().execute("select pg_sleep(3) from otel.spans limit 1")
            time.sleep(0.05)
        conn.close()

    reader = threading.Thread(target=long_reader)
    reader.start()
    try:
        with writing(db_url, stop) as latencies:
            time.sleep(0.5)
            result = run_cli("upgrade", url=db_url)
    finally:
        stop.set()
        reader.join()
    assert result.code == 0, result.err
    assert max(latencies) < 1.5, max(latencies)
    assert sql(db_url, "select count(*) from otel.spans where trace_id = 'w'") == [[len(latencies)]]
