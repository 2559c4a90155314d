"""Standbys that have caught up (issue 21 part 3, docs/operations.md, "Standbys"), on real
streaming standbys made with pg_basebackup -R (tests/standbys.py): one primary
with two standbys for the module (alpha, and beta which holds a slot), a fresh
database per test; a delayed standby is beta with recovery_min_apply_delay
set for the test, a stopped one is made (and removed) by its test."""

import importlib.util
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest

from otelmig import maintain as maintain_mod

import partition_layout
import pgcluster
from conftest import REPO, connect, drop_database, run_cli, run_pyz, sql
from helpers import BASELINE, DEADLINE_SECONDS, error_line, one_line, wait_for
from otelmig import replicas
from otelmig.errors import ExitStatus
from otelmig.revisions import HEAD_REVISION
from otelmig.settings import Settings
from standbys import Replicated

DELAY = 3.0  # seconds of recovery_min_apply_delay for the delayed standby
BOUND = 1.0  # seconds of replay lag the pause tests allow


@pytest.fixture(scope="module")
def replicated():
    group = Replicated()
    if group.basebackup is None:
        group.stop()
        if pgcluster.selected() == pgcluster.pgbin.DEFAULT:  # Debian's server package ships pg_basebackup
            pytest.fail("no pg_basebackup in %s nor on PATH: the default PostgreSQL %s must have one"
                        % (group.primary.bindir, pgcluster.pgbin.DEFAULT))
        pytest.skip("no pg_basebackup that can stream from PostgreSQL %s here: the standby tests need one"
                    % group.primary.major)
    try:
        group.start()
        alpha = group.add_standby("alpha")
        beta = group.add_standby("beta", slot="beta_slot")
        group.wait_streaming(alpha, beta)
        yield group
    finally:
        group.stop()


@pytest.fixture
def fresh(replicated):
    """A new database on the primary that both standbys have replayed; its URL on the primary."""
    name = "t_" + uuid.uuid4().hex[:12]
    admin = replicated.primary.url()
    sql(admin, "CREATE DATABASE %s" % name)
    replicated.wait_streaming(*replicated.standbys)
    yield replicated.primary.url(name)
    for standby in replicated.standbys:  # no test leaves a standby delayed or paused
        if standby.running:
            standby.set_delay(0)
            standby.configure("wal_receiver_status_interval")
            sql(standby.url(), "select pg_wal_replay_resume() where pg_is_wal_replay_paused()")
    drop_database(admin, name)


def standby(replicated, name):
    return next(s for s in replicated.standbys if s.name == name)


def on(standby_, primary_url: str) -> str:
    """The URL of the same database on a standby."""
    return standby_.url(primary_url.rsplit("/", 1)[1])


def version_on(url: str):
    if sql(url, "select to_regclass('otel.alembic_version')") == [[None]]:
        return None
    return sql(url, "select version_num from otel.alembic_version")[0][0]


# -- the flag and the variable ------------------------------------------------------------

NOWHERE = "postgresql://u@127.0.0.1:1/d"  # a usage error is found before connecting (else exit 3)


@pytest.mark.parametrize("argv, env, names", [
    (["upgrade", "--wait-replicas=soon"], {}, "--wait-replicas=300"),
    (["upgrade", "--wait-replicas", "head"], {}, "--wait-replicas=300"),
    (["rollback", "--wait-replicas=-5"], {}, "--wait-replicas=300"),
    (["upgrade", "--sql", "--wait-replicas"], {}, "--sql only prints a script"),
    (["check", "--wait-replicas"], {}, "--wait-replicas"),
    (["stamp", "head", "--wait-replicas=5"], {}, "--wait-replicas"),
    (["upgrade"], {"OTELMIG_WAIT_REPLICAS": "soon"}, "OTELMIG_WAIT_REPLICAS"),
    (["downgrade", "base"], {"OTELMIG_MAX_REPLICA_LAG": "-1"}, "OTELMIG_MAX_REPLICA_LAG"),
    (["maintain", "--dry-run", "--wait-replicas"], {}, "--dry-run changes nothing"),
])
def test_bad_wait_replicas_input_is_a_usage_error(argv, env, names):
    result = run_cli(*argv, url=NOWHERE, env=env)
    assert result.code == ExitStatus.USAGE and one_line(result.err) and names in result.err, result


def test_only_the_commands_that_change_something_take_the_flag():
    for command in ("upgrade", "downgrade", "rollback", "maintain", "check", "stamp", "verify"):
        listed = "--wait-replicas" in run_cli(command, "--help").out
        assert listed == (command in ("upgrade", "downgrade", "rollback", "maintain")), command
    assert "\n  10   --wait-replicas" in run_cli("--help").out  # the exit code, in the top-level help


def test_the_variable_is_ignored_by_commands_that_do_not_wait():
    """OTELMIG_WAIT_REPLICAS may be set for a whole deploy: check and the --sql script run as before."""
    env = {"OTELMIG_WAIT_REPLICAS": "60"}
    assert run_cli("check", url=NOWHERE, env=env).code == ExitStatus.UNREACHABLE
    assert run_cli("upgrade", "--sql", env=env).code == 0


def test_no_standby_no_wait(db_url):
    """The suite's own server has no standby and holds no slot: nothing to wait for."""
    result = run_cli("upgrade", "--wait-replicas=5", url=db_url)
    assert result.code == 0 and "standbys: none" in result.out, result
    assert run_cli("rollback", "--wait-replicas", "--format", "json", url=db_url).json()["replicas"]["standbys"] == []


# -- waiting after the change ------------------------------------------------------------

@pytest.mark.db
def test_upgrade_waits_until_every_standby_has_replayed_it(replicated, fresh):
    result = run_cli("upgrade", "--wait-replicas=%d" % DEADLINE_SECONDS, "--format", "json", url=fresh)
    assert result.code == 0, result.err
    report = result.json()["replicas"]
    by_name = {s["name"]: s for s in report["standbys"]}
    assert set(by_name) == {"alpha", "beta"}
    assert all(s["caught_up"] and s["lag_bytes"] == 0 and s["connected"] for s in by_name.values())
    assert by_name["beta"]["slot"] == "beta_slot" and by_name["alpha"]["slot"] is None
    assert by_name["alpha"]["client_addr"] == "127.0.0.1"
    for name in ("alpha", "beta"):  # what it said holds: each has the head now
        assert version_on(on(standby(replicated, name), fresh)) == HEAD_REVISION


@pytest.mark.db
def test_a_delayed_standby_is_waited_for_at_least_its_delay(replicated, fresh, pyz):
    assert run_cli("upgrade", BASELINE, "--wait-replicas=%d" % DEADLINE_SECONDS, url=fresh).code == 0
    beta = standby(replicated, "beta")
    beta.set_delay(DELAY)
    # No WAL reaches beta when its delay ends; still the primary learns of its replay then, not at
    # its next periodic reply (a minute here): the wait ends with the replay.
    beta.configure("wal_receiver_status_interval", "60s")
    started = time.monotonic()
    result = run_pyz(pyz, "upgrade", "--wait-replicas=%d" % DEADLINE_SECONDS, "--format", "json", url=fresh)
    elapsed = time.monotonic() - started
    assert result.code == 0, result.err
    assert version_on(on(beta, fresh)) == HEAD_REVISION  # replayed by the time the command returned
    assert elapsed >= DELAY, elapsed
    assert result.json()["replicas"]["waited_seconds"] < DELAY + 20, result.json()
    lines = [line for line in result.err.splitlines() if line.startswith("replicas: ")]
    assert any(line.startswith("replicas: waiting up to") for line in lines), result.err
    assert any(line.startswith("replicas: beta (127.0.0.1, slot beta_slot): ") and "bytes behind" in line
               for line in lines), result.err
    assert lines[-1].startswith("replicas: beta (127.0.0.1, slot beta_slot) has replayed it after"), result.err


@pytest.mark.db
def test_lag_lines_are_one_per_standby_per_change(replicated, fresh):
    """A standby whose position does not move is reported once, however long the wait."""
    beta = standby(replicated, "beta")
    beta.set_delay(DELAY)
    result = run_cli("upgrade", "--wait-replicas=%d" % DEADLINE_SECONDS, url=fresh)
    assert result.code == 0, result.err
    assert result.out.splitlines()[-1].startswith("standbys: all 2 have replayed "), result.out
    behind = [line for line in result.err.splitlines() if line.startswith("replicas: beta") and "behind" in line]
    # The lag moves at most a few times while the delay holds the replay back (the upgrade's own WAL
    # arrives at once); with a line per look (every 0.2 s for 3 s) there would be 15.
    assert 1 <= len(behind) <= 4, result.err


@pytest.mark.db
def test_a_stopped_standby_that_holds_a_slot_times_out(replicated, fresh):
    gamma = replicated.add_standby("gamma", slot="gamma_slot")
    try:
        replicated.wait_streaming(gamma)
        gamma.stop()
        started = time.monotonic()
        result = run_cli("upgrade", "--wait-replicas=2", "--format", "json", url=fresh)
        assert time.monotonic() - started >= 2
        assert result.code == ExitStatus.REPLICAS_BEHIND == 10, result.err
        line = error_line(result.err)
        assert "slot gamma_slot (not connected)" in line and "bytes behind" in line, line
        assert "alpha" not in line and "beta" not in line, line  # only those behind are named
        assert "the change itself is committed" in line and "now at %s" % HEAD_REVISION in line, line
        payload = result.json()
        assert payload["exit_code"] == 10 and payload["database_revision"] == HEAD_REVISION
        stopped = [s for s in payload["replicas"]["standbys"] if s["name"] == "gamma_slot"]
        assert stopped and not stopped[0]["connected"] and stopped[0]["lag_bytes"] > 0
        assert run_cli("current", "--format", "json", url=fresh).json()["is_head"]  # it stays committed

        # A slot holder that is not connected never holds a row move back.
        conn = connect(fresh, autocommit=False)
        try:
            said = []
            throttle = replicas.ReplayThrottle(conn, BOUND, said.append)
            sql(fresh, "create table moved (id int)")
            for batch in range(4):  # batches that write, and (idle) ones that do not
                conn.cursor().execute("insert into moved select generate_series(1, 500)" if batch % 2 else "select 1")
                conn.commit()
                time.sleep(0.5)
                assert throttle.pause() < 1.0, (said, throttle.marks)
        finally:
            conn.close()
    finally:
        replicated.remove(gamma)
    result = run_cli("rollback", "--wait-replicas=%d" % DEADLINE_SECONDS, "--format", "json", url=fresh)
    assert result.code == 0, result.err
    assert {s["name"] for s in result.json()["replicas"]["standbys"]} == {"alpha", "beta"}


@pytest.mark.db
def test_a_role_that_cannot_see_the_standbys_is_refused_before_any_change(replicated):
    admin = replicated.primary.url()
    role, name = "plain_" + uuid.uuid4().hex[:8], "t_" + uuid.uuid4().hex[:12]
    sql(admin, "CREATE ROLE %s LOGIN PASSWORD 'plain-pw'" % role)
    sql(admin, "CREATE DATABASE %s OWNER %s" % (name, role))
    url = replicated.primary.url(name, user=role, password="plain-pw")
    try:
        result = run_cli("upgrade", "--wait-replicas=%d" % DEADLINE_SECONDS, url=url)
        assert result.code == ExitStatus.REFUSED and one_line(result.err), result.err
        assert "GRANT pg_monitor TO %s" % role in result.err and "nothing was changed" in result.err
        assert "alpha" in result.err and "beta" in result.err
        assert sql(url, "select to_regnamespace('otel')") == [[None]]  # nothing changed
        assert run_cli("upgrade", url=url).code == 0  # without the flag it needs no such grant
        sql(admin, "GRANT pg_monitor TO %s" % role)
        result = run_cli("rollback", "--wait-replicas=%d" % DEADLINE_SECONDS, url=url)
        assert result.code == 0, result.err
    finally:
        drop_database(admin, name)
        sql(admin, "DROP ROLE %s" % role)


@pytest.mark.db
def test_the_variable_turns_the_wait_on(replicated, fresh):
    result = run_cli("upgrade", "--format", "json", url=fresh, env={"OTELMIG_WAIT_REPLICAS": "60"})
    assert result.code == 0 and len(result.json()["replicas"]["standbys"]) == 2, result.err
    result = run_cli("rollback", "--format", "json", url=fresh, env={"OTELMIG_WAIT_REPLICAS": ""})
    assert result.code == 0 and "replicas" not in result.json(), result.err


# -- check against a standby --------------------------------------------------------------

@pytest.mark.db
def test_check_on_a_standby_is_ready_once_it_has_replayed_the_head(replicated, fresh):
    beta = standby(replicated, "beta")
    on_beta = on(beta, fresh)
    beta.set_delay(DELAY)
    assert run_cli("upgrade", url=fresh).code == 0
    result = run_cli("check", url=on_beta)  # nothing of it replayed yet: not even the schema
    assert result.code == ExitStatus.NOT_INITIALISED and one_line(result.err), result.err
    assert "this server is a standby, which holds what it has replayed" in result.err
    started = time.monotonic()
    result = run_cli("check", "--wait", str(DEADLINE_SECONDS), url=on_beta)
    assert result.code == 0, result.err
    assert result.out.startswith("ready: schema otel is at the head %s (a standby: it has replayed the head)"
                                 % HEAD_REVISION), result.out
    assert time.monotonic() - started > 0.5  # it waited for the replay, it did not find it there

    # The version row of a second revision, not replayed yet, is not ready either.
    assert run_cli("rollback", "--wait-replicas=%d" % DEADLINE_SECONDS, url=fresh).code == 0
    assert run_cli("upgrade", url=fresh).code == 0
    result = run_cli("check", url=on_beta)
    assert result.code == ExitStatus.PENDING and "standby" in result.err, result.err
    assert run_cli("check", "--wait", str(DEADLINE_SECONDS), url=on_beta).code == 0


@pytest.mark.db
def test_check_wait_on_a_standby_gives_up_at_its_deadline(replicated, fresh):
    beta = standby(replicated, "beta")
    beta.set_delay(DEADLINE_SECONDS)  # far beyond the wait
    assert run_cli("upgrade", url=fresh).code == 0
    started = time.monotonic()
    result = run_cli("check", "--wait", "1", url=on(beta, fresh))
    assert result.code == ExitStatus.NOT_INITIALISED and one_line(result.err), result.err
    assert 1.0 <= time.monotonic() - started < DEADLINE_SECONDS


# -- pausing a row move --------------------------------------------------------------------

def _resume_later(standby_, seconds: float, resumed: list):
    def resume():
        time.sleep(seconds)
        resumed.append(time.time())
        sql(standby_.url(), "select pg_wal_replay_resume()")
    thread = threading.Thread(target=resume)
    thread.start()
    return thread


RESUME_AFTER = 3.0  # seconds of a stopped replay on alpha, well past BOUND


@pytest.mark.db
def test_the_python_pause_holds_batches_while_a_standby_lags(replicated, fresh):
    sql(fresh, "create table moved (id int, pad text)")
    conn = connect(fresh, autocommit=False)
    said, batches = [], []

    def batch():  # one committed batch of a row move of our own
        conn.cursor().execute("insert into moved select g, repeat('x', 100) from generate_series(1, 500) g")
        conn.commit()
        batches.append(time.time())
    try:
        throttle = replicas.ReplayThrottle(conn, BOUND, said.append)
        batch()
        assert throttle.pause() < 1.0 and said == []  # every standby keeps up: no pause
        alpha = standby(replicated, "alpha")
        sql(alpha.url(), "select pg_wal_replay_pause()")
        stopped, resumed = time.time(), []
        thread = _resume_later(alpha, RESUME_AFTER, resumed)
        pauses = []
        while len(batches) < 12:
            time.sleep(0.2)
            batch()
            pauses.append(throttle.pause())
        thread.join()
        long_pauses = [i for i, paused in enumerate(pauses) if paused >= 1.5]
        assert long_pauses, pauses
        first = long_pauses[0]
        # it paused only once alpha was more than the bound behind, and went on only once alpha replayed
        assert batches[first + 1] - stopped >= BOUND, (batches, pauses, stopped)
        assert batches[first + 2] > resumed[0], (batches, pauses, resumed)
        assert said and said[0].startswith("pausing the batches while standbys replay: alpha (127.0.0.1)"), said
        assert "OTELMIG_MAX_REPLICA_LAG" in said[0] and "beta" not in said[0]
        assert replicas.ReplayThrottle(conn, 0, said.append).pause() == 0.0  # 0: never
    finally:
        sql(standby(replicated, "alpha").url(), "select pg_wal_replay_resume()")
        conn.close()


def _batches_block(count: int) -> str:
    """A DO block of our own: `count` committed batches, the pause after each."""
    return "\n".join([
        "DO $batches$",
        "DECLARE n int;",
        "BEGIN",
        "  FOR n IN 1 .. %d LOOP" % count,
        "    PERFORM pg_sleep(0.2);",
        "    INSERT INTO moved SELECT g, repeat('x', 100) FROM generate_series(1, 500) g;",
        "    INSERT INTO batches VALUES (n, extract(epoch from clock_timestamp()));",
        "    COMMIT;",
    ] + replicas.pause_lines("    ") + [
        "  END LOOP;",
        "END",
        "$batches$"])


@pytest.mark.db
def test_the_plpgsql_pause_holds_batches_while_a_standby_lags(replicated, fresh):
    sql(fresh, "create table moved (id int, pad text)")
    sql(fresh, "create table batches (n int, at float8)")
    conn = connect(fresh)
    alpha = standby(replicated, "alpha")
    try:
        conn.cursor().execute(replicas.session_bound_sql(Settings(conninfo=None, max_replica_lag=BOUND)))
        sql(alpha.url(), "select pg_wal_replay_pause()")
        stopped, resumed = time.time(), []
        thread = _resume_later(alpha, RESUME_AFTER, resumed)
        conn.cursor().execute(_batches_block(12))
        thread.join()
        at = [row[1] for row in sql(fresh, "select n, at from batches order by n")]
        assert len(at) == 12
        gaps = [i for i in range(1, len(at)) if at[i] - at[i - 1] >= 1.5]
        assert gaps, at
        assert at[gaps[0] - 1] - stopped >= BOUND and at[gaps[0]] > resumed[0], (at, stopped, resumed)
        notices = [str(notice) for notice in conn.notices]
        assert any("otelmig: pausing the batches while standbys replay: alpha (127.0.0.1)" in n for n in notices), \
            notices

        # 0: no pause at all, with alpha's replay stopped the whole time
        sql(fresh, "truncate batches")
        conn.cursor().execute("select set_config('otelmig.max_replica_lag', '0', false)")
        sql(alpha.url(), "select pg_wal_replay_pause()")
        conn.cursor().execute(_batches_block(12))
        at = [row[1] for row in sql(fresh, "select n, at from batches order by n")]
        assert max(at[i] - at[i - 1] for i in range(1, len(at))) < 1.5, at
    finally:
        sql(alpha.url(), "select pg_wal_replay_resume()")
        conn.close()


# -- revision 2's rollback: its batched move back pauses too ---------------------------------

MOVED_ROWS = 30000  # several of revision 2's batches (BATCH_ROWS) to move back into the plain spans


def _converted_with_rows_in_days(url):
    """A store converted by revision 2 (as tests/test_rev2_downgrade.py makes one), at revision 2
    whichever revision is the head: rows in the day partitions of past days, which the rollback
    (of revision 2) moves back into spans batch by batch."""
    assert run_cli("upgrade", REVISION2, "--wait-replicas=%d" % DEADLINE_SECONDS, url=url).code == 0
    first = partition_layout.age_conversion(url, days_ago=5)
    sql(url, "insert into otel.spans (trace_id, span_id, name, service_name, start_time) "
             "select 'later', 'later-' || g, 'op', 'svc', timestamptz '%s 00:00:00+00' + g * (interval '3 days' / %d) "
             "from generate_series(0, %d - 1) g" % (first.isoformat(), MOVED_ROWS, MOVED_ROWS))


REVISION2 = "826630e38563"


def revision2():
    spec = importlib.util.spec_from_file_location(
        "revision2_for_standbys", os.path.join(REPO, "migrations", "versions", "826630e38563_partition_spans.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pausing(url) -> bool:
    """otelmig's session sleeps in a pause (pg_sleep, outside any lock: nothing else of the move sleeps
    while no other session holds the tables)."""
    return bool(sql(url, "select count(*) from pg_stat_activity where application_name = 'otelmig' "
                         "and wait_event = 'PgSleep'")[0][0])


def _spawn_pyz(pyz_path, url, *args, env=None):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES", "OTEL"))}
    environ.update(env or {}, POSTGRES_URL=url)
    return subprocess.Popen([sys.executable, str(pyz_path)] + list(args), env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.db
def test_the_rollback_moves_rows_back_pausing_while_a_standby_lags(replicated, fresh, pyz):
    _converted_with_rows_in_days(fresh)
    alpha = standby(replicated, "alpha")
    later = "select count(*) from only otel.spans where trace_id = 'later'"
    sql(alpha.url(), "select pg_wal_replay_pause()")
    try:
        # a bound below a batch's own time: from the second batch on, alpha is past it while it replays nothing
        rollback = _spawn_pyz(pyz, fresh, "downgrade", BASELINE, env={"OTELMIG_MAX_REPLICA_LAG": "0.05"})
        wait_for(lambda: _pausing(fresh) or rollback.poll() is not None, "the rollback to pause")
        time.sleep(2.0)
        assert rollback.poll() is None and _pausing(fresh), "the move went on while alpha replayed nothing"
        moved_so_far = sql(fresh, later)[0][0]
        assert 0 < moved_so_far < MOVED_ROWS  # committed batches, and batches still to come
    finally:
        sql(alpha.url(), "select pg_wal_replay_resume()")
    out, err = rollback.communicate(timeout=DEADLINE_SECONDS)
    assert rollback.returncode == 0, err
    pauses = [line for line in err.splitlines() if line.startswith("pausing the batches while standbys replay: ")]
    # a line when a batch's pause starts (then one per 10 s of it): at most one per batch here
    assert pauses and len(pauses) <= MOVED_ROWS // revision2().BATCH_ROWS, err
    assert "alpha (127.0.0.1) " in pauses[0] and "(the bound is 0.05s, OTELMIG_MAX_REPLICA_LAG)" in pauses[0], err
    assert version_on(fresh) == BASELINE
    assert sql(fresh, later) == [[MOVED_ROWS]]
    assert sql(fresh, "select count(*) from pg_inherits where inhparent = 'otel.spans'::regclass") == [[0]]


@pytest.mark.db
def test_the_rollback_does_not_pause_with_a_bound_of_zero(replicated, fresh):
    _converted_with_rows_in_days(fresh)
    alpha = standby(replicated, "alpha")
    sql(alpha.url(), "select pg_wal_replay_pause()")  # stopped for the whole rollback
    try:
        result = run_cli("rollback", url=fresh, env={"OTELMIG_MAX_REPLICA_LAG": "0"})
        assert result.code == 0, result.err
        assert "pausing" not in result.err, result.err
        assert sql(fresh, "select count(*) from only otel.spans where trace_id = 'later'") == [[MOVED_ROWS]]
    finally:
        sql(alpha.url(), "select pg_wal_replay_resume()")


# -- maintain ------------------------------------------------------------------------------

AHEAD_ROWS = 20000  # past maintain.DIRECT_MAX_BYTES in DEFAULT: the day is made by the copy (promotion)


@pytest.mark.db
def test_maintain_moving_rows_out_of_default_pauses_while_a_standby_lags(replicated, fresh, pyz):
    """maintain's copy of DEFAULT's rows into a new day and its retention deletes
    are batches too: after each one it waits while a connected standby lags
    past OTELMIG_MAX_REPLICA_LAG, as the rollback's move does (issue 21 part 3)."""
    assert run_cli("upgrade", url=fresh).code == 0
    # rows of a day past the partitions made (today + 7): they wait in DEFAULT until maintain makes their day
    sql(fresh, "insert into otel.spans (trace_id, span_id, name, service_name, start_time) "
               "select 'ahead', 'ahead-' || g, 'op', 'svc', date_trunc('day', now() at time zone 'UTC') "
               "at time zone 'UTC' + interval '9 days 12 hours' from generate_series(1, %d) g" % AHEAD_ROWS)
    in_default = "select count(*) from only otel.spans_default"
    assert sql(fresh, in_default) == [[AHEAD_ROWS]]
    assert sql(fresh, "select pg_total_relation_size('otel.spans_default')")[0][0] > maintain_mod.DIRECT_MAX_BYTES
    alpha = standby(replicated, "alpha")
    sql(alpha.url(), "select pg_wal_replay_pause()")
    try:
        # a bound below the time between two batches: from the second batch on, alpha is past it
        maintain = _spawn_pyz(pyz, fresh, "maintain", "--ahead", "10", env={"OTELMIG_MAX_REPLICA_LAG": "0.001"})
        time.sleep(3.0)
        assert maintain.poll() is None, "maintain went on while alpha replayed nothing"
        assert sql(fresh, in_default) == [[AHEAD_ROWS]]  # not swapped in yet
    finally:
        sql(alpha.url(), "select pg_wal_replay_resume()")
    out, err = maintain.communicate(timeout=DEADLINE_SECONDS)
    assert maintain.returncode == 0, err
    pauses = [line for line in err.splitlines() if "pausing the batches while standbys replay: " in line]
    assert pauses and "alpha (127.0.0.1) " in pauses[0], err
    assert "(the bound is 0.001s, OTELMIG_MAX_REPLICA_LAG)" in pauses[0], err
    assert sql(fresh, in_default) == [[0]]
    assert sql(fresh, "select count(*) from otel.spans where trace_id = 'ahead'") == [[AHEAD_ROWS]]


@pytest.mark.db
def test_maintain_waits_for_the_standbys(replicated, fresh):
    assert run_cli("upgrade", "--wait-replicas=%d" % DEADLINE_SECONDS, url=fresh).code == 0
    beta = standby(replicated, "beta")
    beta.set_delay(DELAY)
    started = time.monotonic()
    # three more days ahead than the upgrade made: maintain has something to write
    result = run_cli("maintain", "--ahead", "10", "--wait-replicas=%d" % DEADLINE_SECONDS, "--format", "json",
                     url=fresh)
    assert result.code == 0, result.err
    report = result.json()["replicas"]
    assert {s["name"] for s in report["standbys"]} == {"alpha", "beta"}
    assert all(s["caught_up"] for s in report["standbys"]), report
    assert time.monotonic() - started >= DELAY  # it waited for beta's delayed replay
    beta.set_delay(0)
    result = run_cli("maintain", "--ahead", "10", "--wait-replicas=%d" % DEADLINE_SECONDS, url=fresh)
    assert result.code == 0 and result.out.splitlines()[-1].startswith("standbys: all 2 have replayed"), result
