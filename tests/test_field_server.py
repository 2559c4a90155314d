"""Field conditions on the real server: role and database settings, the
server's own errors, a frozen migrator, unsupported majors (issue 10 items 3,
4 and 10's one-line errors; issue 11's version floor).

Every error here is raised by the real server; none is built by hand.
"""

import calendar
import contextlib
import datetime
import os
import re
import signal
import socket
import threading
import time
import urllib.parse
import uuid

import pg8000.dbapi
import pytest

from conftest import REPO, catalog_snapshot, connect, load_legacy, run_cli, sql, table_rows
from helpers import (DEADLINE_SECONDS, SPAN_COLUMNS_LEGACY, head_names, hold_access_share, one_line, spawn,
                     upgrade_blocked_on_spans, verify_ok, wait_for)

from otelmig import db, session, settings as settings_mod
from otelmig.errors import ExitStatus

# ---------------------------------------------------------------- helpers


def role_url(db_url: str, role: str, password: str) -> str:
    parts = urllib.parse.urlsplit(db_url)
    host = parts.netloc.rsplit("@", 1)[1]
    netloc = "%s:%s@%s" % (role, urllib.parse.quote(password, safe=""), host)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def database_of(url: str) -> str:
    return urllib.parse.urlsplit(url).path.lstrip("/")


@pytest.fixture
def owner(server, db_url):
    """A login role that owns the test database and, once loaded, the store: (name, url)."""
    name, password = "field_" + uuid.uuid4().hex[:10], "pw-" + uuid.uuid4().hex
    sql(server.admin_url, "create role %s login password '%s'" % (name, password))
    sql(server.admin_url, "alter database %s owner to %s" % (database_of(db_url), name))
    yield name, role_url(db_url, name, password)
    sql(db_url, "reassign owned by %s to current_user" % name)
    sql(server.admin_url, "alter database %s owner to current_user" % database_of(db_url))
    sql(db_url, "drop owned by %s" % name)
    sql(server.admin_url, "drop role %s" % name)


def load_owned_legacy(db_url: str, role: str, traces: int = 2000):
    load_legacy(db_url, traces=traces)
    sql(db_url, "alter schema otel owner to %s" % role)
    for table in ("traces", "spans"):
        sql(db_url, "alter table otel.%s owner to %s" % (table, role))


def server_major(url: str) -> int:
    return int(sql(url, "show server_version_num")[0][0]) // 10000


# ------------------------------------------ role and database settings (item 3)

# (ALTER ROLE or ALTER DATABASE, setting, value): each would break a session
# that trusts the server's defaults. The upgrade's first index build is held
# for a second (index_builds_held), longer than any timeout here.
HOSTILE = [
    ("role", "statement_timeout", "200ms"),
    ("database", "statement_timeout", "200ms"),
    ("role", "lock_timeout", "1ms"),
    ("role", "idle_in_transaction_session_timeout", "1ms"),
    ("database", "idle_in_transaction_session_timeout", "1ms"),
    ("role", "idle_session_timeout", "200ms"),
    ("role", "transaction_timeout", "200ms"),  # 1 ms could end the settings message itself (see HOSTILE_VALUE)
    ("role", "default_transaction_isolation", "serializable"),
    ("role", "default_transaction_deferrable", "on"),
    ("role", "search_path", "public"),
    ("role", "DateStyle", "SQL, DMY"),
    ("role", "IntervalStyle", "sql_standard"),
    ("role", "TimeZone", "Pacific/Chatham"),
    ("role", "bytea_output", "escape"),
    ("role", "client_encoding", "LATIN1"),
    ("role", "row_security", "off"),
    ("role", "standard_conforming_strings", "off"),
    ("role", "xmloption", "document"),
    ("role", "maintenance_work_mem", "1MB"),
]
SINCE = {"idle_session_timeout": 14, "transaction_timeout": 17}


@contextlib.contextmanager
def index_builds_held(url, enabled=True, seconds=1.0):
    """An old snapshot that the upgrade's first concurrent index build waits
    for, released a second after the build is seen waiting: long enough for
    any short statement_timeout to end a session that kept it."""
    if not enabled:
        yield
        return
    holder = connect(url)  # immune to the database's settings under test
    holder.cursor().execute("set idle_in_transaction_session_timeout = 0; set statement_timeout = 0")
    holder.cursor().execute("begin isolation level repeatable read")
    holder.cursor().execute("select count(*) from pg_class")
    done = threading.Event()

    def release():
        deadline = time.monotonic() + 60
        while not done.is_set() and time.monotonic() < deadline:
            waiting = sql(url, "select count(*) from pg_stat_activity where query ilike 'CREATE INDEX CONCURRENTLY%%' "
                               "and wait_event_type = 'Lock'")
            if waiting[0][0]:
                done.wait(seconds)
                break
            time.sleep(0.02)
        holder.cursor().execute("rollback")
        holder.close()
    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(70)


def apply_setting(server, db_url, role, scope, name, value):
    target = "role %s" % role if scope == "role" else "database %s" % database_of(db_url)
    sql(server.admin_url, "alter %s set %s = '%s'" % (target, name, value))
    return lambda: sql(server.admin_url, "alter %s reset %s" % (target, name))


@pytest.mark.parametrize("scope,name,value", HOSTILE, ids=["%s-%s" % (s, n) for s, n, _ in HOSTILE])
def test_role_and_database_settings_do_not_break_any_command(server, db_url, owner, scope, name, value):
    if server_major(db_url) < SINCE.get(name, 0):
        pytest.skip("%s needs PostgreSQL %d+" % (name, SINCE[name]))
    role, url = owner
    load_owned_legacy(db_url, role)
    rows = table_rows(db_url, "otel", "spans", SPAN_COLUMNS_LEGACY)
    reset = apply_setting(server, db_url, role, scope, name, value)
    try:
        steps = [("plan", 5), ("upgrade", 0), ("verify", 0), ("check", 0), ("current", 0),
                 ("rollback", 0), ("upgrade", 0), ("stamp", 0)]
        for step, expected in steps:
            args = ["stamp", "head"] if step == "stamp" else [step]
            with index_builds_held(db_url, enabled=step == "upgrade"):
                result = run_cli(*args, url=url)
            assert result.code == expected, (step, result)
    finally:
        reset()
    verify_ok(db_url)
    assert table_rows(db_url, "otel", "spans", head_names(SPAN_COLUMNS_LEGACY)) == rows


@pytest.mark.parametrize("scope,source", [("role", "ALTER ROLE"), ("database", "ALTER DATABASE")])
def test_read_only_by_setting_is_a_refusal_naming_it(server, db_url, owner, scope, source):
    role, url = owner
    load_owned_legacy(db_url, role, traces=10)
    before = catalog_snapshot(db_url)
    reset = apply_setting(server, db_url, role, scope, "default_transaction_read_only", "on")
    try:
        for args in (["upgrade"], ["stamp", "head"]):
            result = run_cli(*args, url=url)
            assert result.code == 8, result
            assert one_line(result.err) and "default_transaction_read_only" in result.err and source in result.err
        assert run_cli("plan", url=url).code == 5  # reading still works
    finally:
        reset()
    assert catalog_snapshot(db_url) == before


def test_sessions_get_every_listed_setting_whatever_the_role_says(server, db_url, owner):
    """Each kind of session shows exactly the values of session.SETTINGS, with
    hostile values set on the role for every one of them."""
    role, url = owner
    major = server_major(db_url)
    for setting in session.SETTINGS:
        hostile = HOSTILE_VALUE.get(setting.name)
        if setting.since <= major and hostile:
            sql(server.admin_url, "alter role %s set %s = '%s'" % (role, setting.name, hostile))
    conninfo = settings_mod.resolve_conninfo(url, {})
    for purpose in (session.MIGRATION, session.LOCK, session.PROBE):
        conn = db.connect(conninfo, purpose=purpose, probe=purpose == session.PROBE)
        try:
            cursor = conn.cursor()
            expected = session.wanted(purpose, major, conninfo.connect_timeout)
            if purpose == session.PROBE:  # its transaction's isolation, set by BEGIN
                expected["transaction_isolation"] = expected.pop("default_transaction_isolation")
            assert expected and {name: live(cursor, name) for name in expected} == \
                {name: normalized(db_url, name, value) for name, value in expected.items()}, purpose
            sock = conn._usock  # the client's keepalive timings, as session._keep_alive set them
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
            for name, value in session.KEEPALIVE:
                if hasattr(socket, name):
                    assert sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, name)) == value
        finally:
            conn.close()


# Hostile role values: 1 ms for timeouts, except those that govern the
# session's first message until its own SET replaces them (statement_timeout,
# transaction_timeout, idle_session_timeout: 1 ms cancelled that message on a
# loaded CI machine; docs/operations.md says a timeout shorter than one round
# trip ends the session), and the opposite of ours elsewhere.
HOSTILE_VALUE = {"statement_timeout": "200ms", "lock_timeout": "1ms", "idle_in_transaction_session_timeout": "1ms",
                 "idle_session_timeout": "1s", "transaction_timeout": "1s", "client_connection_check_interval": "0",
                 "tcp_keepalives_idle": "1000", "tcp_keepalives_interval": "1000", "tcp_keepalives_count": "99",
                 "tcp_user_timeout": "0", "default_transaction_isolation": "serializable", "search_path": "public",
                 "row_security": "on", "standard_conforming_strings": "off", "DateStyle": "SQL, DMY",
                 "client_encoding": "LATIN1", "TimeZone": "Asia/Kolkata", "IntervalStyle": "sql_standard",
                 "timezone_abbreviations": "India"}


def live(cursor, name):
    cursor.execute("select current_setting(%s)", (name,))
    return cursor.fetchone()[0]


def normalized(url, name, value):
    """How the server shows `value` for `name` (units normalised)."""
    conn = connect(url, autocommit=False)
    try:
        cursor = conn.cursor()
        cursor.execute("select set_config(%s, %s, true)", (name, value))
        return cursor.fetchone()[0]
    finally:
        conn.rollback()
        conn.close()


# ---------------------------------------------- time: every session in UTC (issue 19 item 2)

TIME_SETTINGS = {"TimeZone": "UTC", "DateStyle": "ISO, YMD", "IntervalStyle": "postgres",
                 "timezone_abbreviations": "Default"}


def dst_zone_ahead(url, days: int = 4) -> str:
    """A POSIX zone, UTC-3, whose daylight time (UTC-2) starts at local midnight
    `days` after the server's UTC today: inside the days revision 2 and maintain
    make partitions for, whatever the date the suite runs on."""
    day = sql(url, "select (now() at time zone 'UTC')::date + %s::int", (days,))[0][0]
    julian = day.timetuple().tm_yday - (1 if calendar.isleap(day.year) and day.month > 2 else 0)  # Jn skips Feb 29
    return "AAA3BBB,J%d/0,J%d/0" % (julian, (julian + 60 - 1) % 365 + 1)


@pytest.mark.parametrize("scope", ["role", "database"])
def test_every_session_is_utc_whatever_the_role_or_database_says(server, db_url, owner, scope):
    role, url = owner
    hostile = {"TimeZone": dst_zone_ahead(db_url), "DateStyle": "SQL, DMY", "IntervalStyle": "iso_8601",
               "timezone_abbreviations": "India"}
    resets = [apply_setting(server, db_url, role, scope, name, value) for name, value in hostile.items()]
    try:
        conninfo = settings_mod.resolve_conninfo(url, {})
        for purpose in (session.MIGRATION, session.LOCK, session.PROBE):
            conn = db.connect(conninfo, purpose=purpose, probe=purpose == session.PROBE)
            try:
                assert {name: live(conn.cursor(), name) for name in TIME_SETTINGS} == TIME_SETTINGS, purpose
            finally:
                conn.close()
    finally:
        for reset in resets:
            reset()


def utc_day_bounds(url):
    """(partition, lower, upper) of each day partition, the bounds as UTC text."""
    conn = connect(url)
    try:
        cursor = conn.cursor()
        cursor.execute("set timezone = 'UTC'")
        cursor.execute("select c.relname::text, (regexp_match(b, 'FROM \\(''([^'']*)''\\)'))[1]::timestamptz::text, "
                       "(regexp_match(b, 'TO \\(''([^'']*)''\\)'))[1]::timestamptz::text "
                       "from pg_inherits i join pg_class c on c.oid = i.inhrelid "
                       "cross join lateral pg_get_expr(c.relpartbound, c.oid) b "
                       "where i.inhparent = 'otel.spans'::regclass and c.relname ~ '^spans_p[0-9]{8}$' order by 1")
        return [tuple(row) for row in cursor.fetchall()]
    finally:
        conn.close()


def assert_utc_midnight_days(bounds):
    assert len(bounds) >= 6, bounds
    for name, lower, upper in bounds:
        day = datetime.datetime.strptime(name[len("spans_p"):], "%Y%m%d").date()
        assert (lower, upper) == ("%s 00:00:00+00" % day, "%s 00:00:00+00" % (day + datetime.timedelta(days=1))), \
            (name, lower, upper)


@pytest.mark.parametrize("scope", ["role", "database"])
def test_upgrade_makes_utc_midnight_days_under_a_zone_that_changes_ahead(server, db_url, owner, scope):
    """A daylight-saving change inside the window, a day-first DateStyle and
    another IntervalStyle and abbreviation set, on the role or the database:
    every day partition still holds one UTC day."""
    role, url = owner
    load_owned_legacy(db_url, role, traces=50)
    hostile = {"TimeZone": dst_zone_ahead(db_url), "DateStyle": "SQL, DMY", "IntervalStyle": "sql_standard",
               "timezone_abbreviations": "India"}
    resets = [apply_setting(server, db_url, role, scope, name, value) for name, value in hostile.items()]
    try:
        assert run_cli("upgrade", url=url).code == 0
        assert run_cli("verify", url=url).code == 0
        assert run_cli("check", url=url).code == 0
    finally:
        for reset in resets:
            reset()
    assert_utc_midnight_days(utc_day_bounds(db_url))


def test_settings_table_in_docs_mirrors_the_list():
    with open(os.path.join(REPO, "docs", "operations.md")) as handle:
        readme = handle.read()
    section = readme.split("## Server settings otelmig sets for itself", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| `")]
    table = [tuple(cell.strip().strip("`") for cell in row[:5]) for row in rows]

    def shown(value):
        return {None: "not set", session.IDLE: "OTELMIG_IDLE_TIMEOUT", session.PROBE_WAIT: "connect timeout",
                session.RUNTIME: "set at run time"}.get(value, value)
    expected = [(s.name, shown(s.migration), shown(s.lock), shown(s.probe), "%d+" % s.since)
                for s in session.SETTINGS]
    assert table == expected


def test_lock_connection_survives_idle_session_timeout(server, db_url, owner):
    """The lock's connection is idle for the whole migration: a role's
    idle_session_timeout must not end it (and with it the migration lock)."""
    if server_major(db_url) < 14:
        pytest.skip("idle_session_timeout needs PostgreSQL 14+")
    role, url = owner
    load_owned_legacy(db_url, role, traces=50)
    sql(server.admin_url, "alter role %s set idle_session_timeout = '300ms'" % role)
    with upgrade_blocked_on_spans(url) as proc:
        # Five times the role's bound: the lock must be held all along.
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            held = sql(db_url, "select count(*) from pg_locks where locktype = 'advisory' and granted")
            assert held == [[1]], "the migration lock was lost while the upgrade waited"
            time.sleep(0.1)
    assert proc.wait(60) == 0, proc.stderr.read()
    verify_ok(db_url)


# ----------------------------------------------------------- a frozen migrator (item 4)

def migrator_lock_on_spans(url):
    """(pid, granted, state) of an otelmig backend's lock on otel.spans, or None."""
    rows = sql(url, "select l.pid, l.granted, a.state from pg_locks l join pg_stat_activity a on a.pid = l.pid "
                    "where l.relation = 'otel.spans'::regclass and a.application_name = 'otelmig' "
                    "and l.mode = 'AccessExclusiveLock'")
    return tuple(rows[0]) if rows else None


def freeze_holding_spans(url, proc):
    """SIGSTOP the upgrade at a moment when its backend holds ACCESS EXCLUSIVE
    on spans, idle in its transaction. Deterministic: the migrator waits for
    spans behind our reader, is stopped, then the reader ends, so its ALTER
    completes while the process sleeps. (If that attempt's lock_timeout ran out
    first, its transaction was rolled back: continue it and try again.)"""
    for _ in range(30):
        holder = hold_access_share(url)
        wait_for(lambda: (migrator_lock_on_spans(url) or (0, True))[1] is False, "the ALTER to wait on spans")
        os.kill(proc.pid, signal.SIGSTOP)
        holder.rollback()
        holder.close()
        state = wait_for(lambda: _settled(url), "the stopped migrator's backend to settle")
        if state == "holding":
            return
        os.kill(proc.pid, signal.SIGCONT)
    raise AssertionError("never caught the migrator holding spans")


def _settled(url):
    lock = migrator_lock_on_spans(url)
    if lock and lock[1] and lock[2] == "idle in transaction":
        return "holding"
    if not lock:
        aborted = sql(url, "select count(*) from pg_stat_activity where application_name = 'otelmig' "
                           "and state = 'idle in transaction (aborted)'")
        if aborted[0][0]:
            return "rolled back"
    return None


def test_frozen_migrator_releases_the_store_within_the_idle_bound(db_url):
    load_legacy(db_url, traces=200)
    rows = table_rows(db_url, "otel", "spans", SPAN_COLUMNS_LEGACY)
    proc = spawn(db_url, "upgrade", "--lock-timeout", "30", env={session.ENV_IDLE_TIMEOUT: "2"})
    try:
        freeze_holding_spans(db_url, proc)
        # A reader of spans now queues behind the frozen migrator's lock; the
        # server ends that session after 2 s idle. 60 s is only a safety net.
        reader = connect(db_url)
        reader.cursor().execute("set statement_timeout = '60s'")  # raises if the lock is never released
        reader.cursor().execute("select count(*) from otel.spans")
        reader.close()
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    code = proc.wait(60)
    err = proc.stderr.read()
    assert code == 3, err
    assert one_line(err) and "idle_in_transaction_session_timeout" in err
    assert run_cli("upgrade", url=db_url).code == 0
    verify_ok(db_url)
    assert table_rows(db_url, "otel", "spans", head_names(SPAN_COLUMNS_LEGACY)) == rows


# ------------------------------------------------ the server's errors (item 3, item 10)

def provoke(url, scenario):
    """Run a scenario on the real server; return the driver error it raises."""
    try:
        scenario(url)
    except pg8000.dbapi.Error as exc:
        return exc
    raise AssertionError("the server raised nothing")


def statement_timeout(url):
    conn = connect(url)
    conn.cursor().execute("set statement_timeout = '10ms'")
    conn.cursor().execute("select pg_sleep(5)")


def cancelled(url):
    connect(url).cursor().execute("select pg_cancel_backend(pg_backend_pid()), pg_sleep(5)")


def terminated(url):
    connect(url).cursor().execute("select pg_terminate_backend(pg_backend_pid())")


def idle_in_transaction(url):
    conn = connect(url, autocommit=False)
    cursor = conn.cursor()
    cursor.execute("set idle_in_transaction_session_timeout = '50ms'")
    cursor.execute("select pg_backend_pid()")
    pid = cursor.fetchone()[0]
    wait_for(lambda: sql(url, "select count(*) from pg_stat_activity where pid = %s", (pid,)) == [[0]],
             "the idle session to end")
    cursor.execute("select 1")


def lock_not_available(url):
    sql(url, "create table t (id int)")
    holder = connect(url, autocommit=False)
    holder.cursor().execute("lock table t")
    conn = connect(url)
    conn.cursor().execute("set lock_timeout = '10ms'")
    conn.cursor().execute("select * from t")


def serialization_failure(url):
    sql(url, "create table t (id int)")
    a, b = connect(url, autocommit=False), connect(url, autocommit=False)
    for conn in (a, b):
        conn.cursor().execute("set transaction isolation level serializable")
        conn.cursor().execute("select count(*) from t")
        conn.cursor().execute("insert into t values (1)")
    a.commit()
    b.commit()


def deadlock(url):
    sql(url, "create table t (id int primary key); insert into t values (1), (2)")
    a, b = connect(url, autocommit=False), connect(url, autocommit=False)
    a.cursor().execute("update t set id = id where id = 1")
    b.cursor().execute("update t set id = id where id = 2")
    errors = []

    def a_waits():
        try:
            a.cursor().execute("update t set id = id where id = 2")
        except pg8000.dbapi.DatabaseError as exc:
            errors.append(exc)
    thread = threading.Thread(target=a_waits)
    thread.start()
    wait_for(lambda: sql(url, "select count(*) from pg_locks where not granted and locktype = 'transactionid'")
             != [[0]], "a to wait")
    try:
        b.cursor().execute("update t set id = id where id = 1")
    except pg8000.dbapi.DatabaseError as exc:
        errors.append(exc)
    b.rollback()
    thread.join(30)
    raise errors[0]


def read_only(url):
    conn = connect(url, autocommit=False)
    conn.cursor().execute("set transaction read only")
    conn.cursor().execute("create table t (id int)")


def unique_violation(url):
    sql(url, "create table t (id int primary key); insert into t values (1)")
    sql(url, "insert into t values (1)")


def index_row_too_large(url):
    sql(url, "create table t (v text); create index on t (v)")
    sql(url, "insert into t select string_agg(md5(g::text), '') from generate_series(1, 400) g")


def undefined_table(url):
    sql(url, "select * from no_such_table")


# (scenario, SQLSTATE, exit status, words the line must hold). A session the
# server ends (57P01, 25P03) reaches pg8000 as a closed socket, without its
# SQLSTATE: Linux drops the server's last message when our next statement
# meets the closed connection.
LOST = None
SERVER_ERRORS = [
    (statement_timeout, "57014", ExitStatus.UNREACHABLE, ["statement timeout", "rerun"]),
    (cancelled, "57014", ExitStatus.UNREACHABLE, ["cancel", "rerun"]),
    (terminated, LOST, ExitStatus.UNREACHABLE, ["pg_terminate_backend", "rerun"]),
    (idle_in_transaction, LOST, ExitStatus.UNREACHABLE, ["idle_in_transaction_session_timeout", "rerun"]),
    (lock_not_available, "55P03", ExitStatus.BUSY, ["lock", "--lock-timeout"]),
    (serialization_failure, "40001", ExitStatus.BUSY, ["concurrent", "retry"]),
    (deadlock, "40P01", ExitStatus.BUSY, ["deadlock", "retry"]),
    (read_only, "25006", ExitStatus.REFUSED, ["read-only", "primary"]),
    (unique_violation, "23505", ExitStatus.REFUSED, ["duplicate", "fix the rows"]),
    (index_row_too_large, "54000", ExitStatus.REFUSED, ["index row", "fix the rows"]),
    (undefined_table, "42P01", ExitStatus.INTERNAL, ["bug", "no_such_table"]),
]


@pytest.mark.parametrize("scenario,code,status,words", SERVER_ERRORS, ids=[(e[1] or "lost") + "-" + e[0].__name__
                                                                          for e in SERVER_ERRORS])
def test_each_server_error_is_one_line_with_its_exit_code(db_url, scenario, code, status, words):
    exc = provoke(db_url, scenario)
    assert db.sqlstate(exc) == code
    error = db.translate(exc)
    assert error is not None and error.exit_status == status, error
    assert one_line(error.message), error.message
    if code:
        assert "SQLSTATE %s" % code in error.message
    for word in words:
        assert word.lower() in error.message.lower(), (word, error.message)


def test_a_failed_long_statement_is_named_by_its_start_only(db_url):
    """SQLAlchemy puts the whole statement in its error; our line keeps its start."""
    from otelmig.scripts import engine_for
    engine = engine_for(settings_mod.resolve_conninfo(db_url, {}))
    statement = "select pg_sleep(5) /* %s */" % ("a long comment " * 400)
    with engine.connect() as connection:
        connection.exec_driver_sql("set statement_timeout = '10ms'")
        with pytest.raises(Exception) as caught:
            connection.exec_driver_sql(statement)
    error = db.translate(caught.value)
    assert error.exit_status == ExitStatus.UNREACHABLE
    assert "in: select pg_sleep(5)" in error.message and len(error.message) < 600, error.message
    engine.dispose()


def test_cancelled_migration_is_3_then_a_rerun_completes(db_url):
    load_legacy(db_url, traces=50)
    with upgrade_blocked_on_spans(db_url) as proc:
        sql(db_url, "select pg_cancel_backend(pid) from pg_stat_activity where wait_event_type = 'Lock' "
                    "and query ilike 'ALTER TABLE%%'")
        code = proc.wait(DEADLINE_SECONDS)
        err = proc.stderr.read()
    assert code == 3, err
    assert one_line(err) and "cancel" in err and "SQLSTATE 57014" in err and "ALTER TABLE" in err
    assert run_cli("upgrade", url=db_url).code == 0
    verify_ok(db_url)


def test_verbose_prints_the_failed_statement_whole(db_url):
    """The error line names the statement by its start; -v prints it whole."""
    load_legacy(db_url, traces=50)
    holder = hold_access_share(db_url)
    try:
        proc = spawn(db_url, "upgrade", "-v", "--lock-timeout", "30")
        wait_for(lambda: (migrator_lock_on_spans(db_url) or (0, True))[1] is False, "the ALTER to wait on spans")
        sql(db_url, "select pg_cancel_backend(pid) from pg_locks where relation = 'otel.spans'::regclass "
                    "and not granted")
        code = proc.wait(DEADLINE_SECONDS)
        err = proc.stderr.read()
    finally:
        holder.rollback()
        holder.close()
    assert code == 3, err
    failed = [line for line in err.splitlines() if line.startswith("failed statement: ")]
    assert len(failed) == 1 and re.search(r'ALTER TABLE "otel"\."spans" RENAME COLUMN "\w+" TO "\w+"$', failed[0]), err
    assert err.splitlines()[-1].startswith("otelmig: the server cancelled our statement")


def test_connection_limit_is_3_naming_the_limit_with_nothing_changed(server, db_url, owner):
    role, url = owner
    load_owned_legacy(db_url, role, traces=10)
    before = catalog_snapshot(db_url)
    sql(server.admin_url, "alter role %s connection limit 1" % role)
    result = run_cli("upgrade", url=url)
    assert result.code == 3, result
    assert one_line(result.err) and "CONNECTION LIMIT" in result.err
    assert catalog_snapshot(db_url) == before


# ------------------------------------------------------ supported majors (issue 11.1)

@pytest.mark.parametrize("version", ["12.22 (Debian 12.22-1.pgdg120+1)", "9.6.24", "10.23", "11.22", "", "x"])
def test_servers_older_than_13_are_refused(version):
    error = session.unsupported(session.server_major(version), version)
    assert error is not None and error.exit_status == ExitStatus.REFUSED
    assert "not supported" in error.message and "13" in error.message and "nothing was changed" in error.message


@pytest.mark.parametrize("version", ["13.0", "15.14 (Debian 15.14-0+deb12u1)", "17.2", "18devel", "18beta1"])
def test_servers_13_and_newer_are_accepted(version):
    assert session.unsupported(session.server_major(version), version) is None


def test_the_live_server_version_is_read_from_the_startup_packet(db_url):
    conn = db.connect(settings_mod.resolve_conninfo(db_url, {}))
    try:
        major = session.server_major(conn.parameter_statuses["server_version"])
    finally:
        conn.close()
    assert major == server_major(db_url) and session.unsupported(major, "") is None


# ------------------------------------ nothing leaks through a transaction pooler

PGBOUNCER = "/usr/sbin/pgbouncer"


@pytest.fixture
def bouncer(server):
    """PgBouncer in transaction mode with ONE server connection per database:
    every client after us gets the very session our probes used."""
    import shutil
    import subprocess
    import tempfile
    from pgcluster import free_port
    if server.cluster is None or not os.path.exists(PGBOUNCER):
        pytest.skip("needs the suite's own cluster and Debian's pgbouncer")
    root = tempfile.mkdtemp(prefix="otelmig-bouncer-")
    port = free_port()
    with open(os.path.join(root, "users.txt"), "w") as handle:
        handle.write('"postgres" "%s"\n' % server.cluster.password.replace('"', '""'))
    with open(os.path.join(root, "pgbouncer.ini"), "w") as handle:
        handle.write("[databases]\n* = host=127.0.0.1 port=%d\n[pgbouncer]\nlisten_addr = 127.0.0.1\n"
                     "listen_port = %d\nauth_type = scram-sha-256\nauth_file = %s/users.txt\n"
                     "pool_mode = transaction\ndefault_pool_size = 1\nunix_socket_dir =\nlogfile = %s/log\n"
                     % (server.cluster.port, port, root, root))
    prefix = []
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        prefix = ["runuser", "-u", "postgres", "--"]
        for name in ("", "users.txt", "pgbouncer.ini"):
            shutil.chown(os.path.join(root, name), "postgres")
    proc = subprocess.Popen(prefix + [PGBOUNCER, os.path.join(root, "pgbouncer.ini")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _listening(port), "pgbouncer to listen")
        yield port
    finally:
        proc.terminate()
        proc.wait(DEADLINE_SECONDS)
        shutil.rmtree(root, ignore_errors=True)


def _listening(port):
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def pooled(db_url, port):
    parts = urllib.parse.urlsplit(db_url)
    netloc = "%s@127.0.0.1:%d" % (parts.netloc.rsplit("@", 1)[0], port)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query="sslmode=disable"))


def test_probes_through_transaction_pooling_leak_no_setting(db_url, bouncer):
    assert run_cli("upgrade", url=db_url).code == 0
    names = [s.name for s in session.SETTINGS if s.name != "client_encoding"] + ["transaction_isolation"]
    query = "select " + ", ".join("current_setting('%s', true)" % name for name in names)
    before = sql(db_url, query)
    url = pooled(db_url, bouncer)
    for args, expected in ((["check"], 0), (["verify"], 0), (["current"], 0), (["plan"], 0)):
        result = run_cli(*args, url=url)
        assert result.code == expected, (args, result)
    # The next client of the pool's one server connection sees the server's defaults.
    assert sql(url, query) == before


@pytest.mark.parametrize("major", [13, 14, 15, 16, 17, 18])
def test_each_major_gets_only_the_settings_it_knows(major):
    newer = {"idle_session_timeout": 14, "client_connection_check_interval": 14, "transaction_timeout": 17}
    for purpose in (session.MIGRATION, session.LOCK, session.PROBE):
        message = session.settings_message(purpose, major, 10)
        for name, since in newer.items():
            if major < since:
                assert name not in message, (purpose, major, name)
    assert ("transaction_timeout" in session.settings_message(session.MIGRATION, major)) == (major >= 17)
    assert ("idle_session_timeout" in session.settings_message(session.LOCK, major)) == (major >= 14)


def test_the_live_server_accepts_its_settings_message(db_url):
    """What each purpose sends, on this server's major, runs (and for 13 too: a subset)."""
    conninfo = settings_mod.resolve_conninfo(db_url, {})
    for purpose in (session.MIGRATION, session.LOCK, session.PROBE):
        for major in sorted({13, server_major(db_url)}):
            conn = db.connect(conninfo, purpose=purpose)
            try:
                if purpose == session.PROBE:
                    conn.cursor().execute("rollback")
                conn.cursor().execute(session.settings_message(purpose, major, 5))
            finally:
                conn.close()


@pytest.mark.parametrize("value", ["soon", "-1", "0"])
def test_a_malformed_idle_bound_is_2_before_anything(db_url, monkeypatch, value):
    load_legacy(db_url, traces=10)
    before = catalog_snapshot(db_url)
    monkeypatch.setenv(session.ENV_IDLE_TIMEOUT, value)
    result = run_cli("upgrade", url=db_url)
    assert result.code == 2 and one_line(result.err) and session.ENV_IDLE_TIMEOUT in result.err, result
    assert catalog_snapshot(db_url) == before
