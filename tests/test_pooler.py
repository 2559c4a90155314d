"""Behind PgBouncer (Debian's 1.18), in session, transaction and statement mode,
in front of the suite's PostgreSQL: the read-only commands work in every mode,
migrations work through session pooling and refuse (exit 8, nothing changed,
no lock) through transaction pooling, and nothing otelmig sets or locks stays
on a pooled server connection."""

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

import pg8000.dbapi
import pytest

import otelmig
from conftest import REPO, catalog_snapshot, connect, load_legacy, run_cli, run_pyz, sql
from otelmig import db, pooler, settings as settings_mod
from otelmig._version import HEAD_REVISION
from helpers import BASELINE, DEADLINE_SECONDS, verify_ok, wait_for
from pgbouncer import PgBouncer, scram_secrets

REFUSED = 8
MIGRATIONS = [("upgrade",), ("downgrade", "base"), ("rollback",), ("stamp", "head"), ("maintain",), ("repair",)]
READ_ONLY = [("check",), ("current",), ("verify",), ("plan",), ("history",)]
# (pool_mode, pool_size, server_round_robin): LIFO is PgBouncer's default order;
# round robin (FIFO) moves consecutive transactions to other server connections.
TRANSACTION_POOLS = [("transaction", 1, False), ("transaction", 4, False), ("transaction", 4, True),
                     ("statement", 4, False)]
SESSION_POOL = ("session", 20, False)


@pytest.fixture(scope="session")
def bouncers(server):
    """bouncers(mode, pool_size, round_robin) -> a PgBouncer in front of the
    suite's server, started on first use; every one is stopped at the end."""
    info = settings_mod.resolve_conninfo(server.admin_url, {})
    secret = sql(server.admin_url, "select rolpassword from pg_authid where rolname = current_user")[0][0]
    # SCRAM pass-through needs the secret; a server with md5 passwords gets the password itself.
    auth = scram_secrets([(info.user, secret if secret.startswith("SCRAM-SHA-256$") else info.password)])
    started = {}

    def get(mode, pool_size, round_robin=False, extra=""):
        key = (mode, pool_size, round_robin, extra)
        if key not in started:
            started[key] = PgBouncer(info.host, info.port, auth, mode, pool_size, round_robin, extra).start()
        return started[key]
    try:
        yield get
    finally:
        for bouncer in started.values():
            bouncer.stop()


def through(bouncer, url: str) -> str:
    """The same database, user and password as `url`, through the pooler."""
    info = settings_mod.resolve_conninfo(url, {})
    return bouncer.url(info.database, info.user, info.password)


# One statement (statement pooling allows no transaction) that returns once
# `servers` server connections have run it (a backend shows its last statement,
# active or idle): it waits while the others are still running, so the pooler
# must open that many (or after 60 s; the test then fails on what it checks).
# A fixed pg_sleep overlapped only if no thread stalled longer than the sleep.
WARM_STATEMENT = """DO $$
DECLARE deadline timestamptz := clock_timestamp() + interval '60 seconds';
BEGIN
    LOOP
        PERFORM pg_stat_clear_snapshot();
        EXIT WHEN clock_timestamp() > deadline OR (SELECT count(*) FROM pg_stat_activity
                  WHERE query LIKE '%otelmig-warm-{tag}%') >= {servers};
        PERFORM pg_sleep(0.01);
    END LOOP;
END $$ /* otelmig-warm-{tag} */"""


def warm(pooled_url: str, servers: int) -> None:
    """Make the pooler open up to `servers` server connections to this database
    (clients busy at once), so a round-robin pool has somewhere else to move a
    transaction."""
    statement = WARM_STATEMENT.format(tag=uuid.uuid4().hex, servers=servers)
    # Nobody disconnects before all have run it: in session pooling a disconnect
    # resets the server connection (DISCARD ALL), which then shows another statement.
    all_done = threading.Barrier(servers)

    def busy():
        conn = connect(pooled_url)
        try:
            conn.cursor().execute(statement)
            all_done.wait(DEADLINE_SECONDS)
        finally:
            conn.close()
    threads = [threading.Thread(target=busy) for _ in range(servers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def advisory_locks(direct_url: str) -> list:
    return sql(direct_url, "select pid, objid from pg_locks where locktype = 'advisory'")


def spawn(*args, env):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES", "OTEL"))}
    environ.update(env)
    return subprocess.Popen([sys.executable, "-m", "otelmig"] + list(args), cwd=REPO, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- the wire protocol: reads in every pool mode ----------------------------------------------

@pytest.mark.parametrize("mode,size,round_robin", TRANSACTION_POOLS + [SESSION_POOL])
def test_read_only_commands_and_init_db_in_every_pool_mode(bouncers, db_url, mode, size, round_robin):
    pooled = through(bouncers(mode, size, round_robin), db_url)
    warm(pooled, min(size, 4))
    fresh = {args[0]: run_cli(*args, "--format", "json", url=pooled).code for args in READ_ONLY}
    assert fresh == {"check": 4, "current": 0, "verify": 4, "plan": 5, "history": 0}, fresh
    planned = run_cli("plan", url=pooled)  # pending: its one stderr line, and no driver warning beside it
    assert planned.code == 5 and one_line(planned.err).endswith("upgrade`"), planned.err
    assert run_cli("upgrade", url=db_url).code == 0  # direct
    for args in READ_ONLY:
        result = run_cli(*args, url=pooled)
        assert result.code == 0, (args, result)
    assert HEAD_REVISION in run_cli("current", url=pooled).out
    assert otelmig.init_db(url=pooled) is None


def test_parameterized_statements_survive_round_robin_transaction_pooling(bouncers, db_url):
    """pg8000 alone splits a statement with parameters into three round trips;
    a round-robin transaction pooler runs them on different server connections."""
    pooled = through(bouncers("transaction", 4, True), db_url)
    warm(pooled, 4)
    conninfo = settings_mod.resolve_conninfo(pooled, {})
    plain = pg8000.dbapi.Connection(user=conninfo.user, host=conninfo.host, port=conninfo.port,
                                    database=conninfo.database, password=conninfo.password)
    plain.autocommit = True
    try:
        with pytest.raises(pg8000.dbapi.DatabaseError, match="prepared statement"):
            plain.cursor().execute("select %s::int + 1", (41,))  # the failure our connection avoids
    finally:
        plain.close()
    ours = db.connect(conninfo)
    try:
        cursor = ours.cursor()
        for value in range(20):
            cursor.execute("select %s::int + 1, %s::text", (value, "x%d" % value))
            assert cursor.fetchone() == [value + 1, "x%d" % value]
        with pytest.raises(pg8000.dbapi.DatabaseError, match="division by zero"):
            cursor.execute("select 1 / %s::int", (0,))
        cursor.execute("select %s::int", (7,))  # the connection is still usable after an error
        assert cursor.fetchone() == [7]
    finally:
        ours.close()


# --- detection ---------------------------------------------------------------------------------

def evidence(url: str):
    conninfo = settings_mod.resolve_conninfo(url, {})
    conn = db.connect(conninfo)
    try:
        return pooler.transaction_pooling_evidence(conn, lambda: db.connect(conninfo))
    finally:
        conn.close()


@pytest.mark.parametrize("mode,size,round_robin", TRANSACTION_POOLS)
def test_detects_transaction_and_statement_pooling(bouncers, db_url, mode, size, round_robin):
    pooled = through(bouncers(mode, size, round_robin), db_url)
    for servers in (1, size):  # one idle server connection, then several
        warm(pooled, servers)
        for _ in range(5):
            assert evidence(pooled), (mode, size, round_robin, servers)


@pytest.mark.parametrize("round_robin", [False, True])
@pytest.mark.parametrize("workers,pause", [(5, 0.0), (1, 0.03)])
def test_detects_transaction_pooling_while_other_clients_use_the_pool(bouncers, db_url, round_robin, workers, pause):
    """Workers keep the pool busy (back-to-back statements) or use it lightly
    (one every 30 ms) while otelmig checks, again and again."""
    pooled = through(bouncers("transaction", 4, round_robin), db_url)
    stop = threading.Event()

    def worker():
        conn = connect(pooled)
        try:
            while not stop.is_set():
                conn.cursor().execute("select 1")
                time.sleep(pause)
        finally:
            conn.close()
    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    try:
        found = [evidence(pooled) for _ in range(40)]
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    misses = [i for i, f in enumerate(found) if not f]
    assert not misses, (len(misses), len(found))


def test_session_pooling_and_direct_are_not_transaction_pooling(bouncers, db_url):
    assert evidence(through(bouncers(*SESSION_POOL), db_url)) is None
    conninfo = settings_mod.resolve_conninfo(db_url, {})
    conn = db.connect(conninfo)
    try:
        def no_second_connection():
            raise AssertionError("a direct connection needs no second connection to tell")
        assert pooler.transaction_pooling_evidence(conn, no_second_connection) is None
    finally:
        conn.close()


# --- migrations through transaction pooling: refused, nothing changed, no lock -----------------

@pytest.mark.parametrize("mode,size,round_robin", TRANSACTION_POOLS)
def test_every_migration_command_refuses_through_transaction_pooling(bouncers, db_url, mode, size, round_robin):
    pooled = through(bouncers(mode, size, round_robin), db_url)
    assert run_cli("upgrade", url=db_url).code == 0  # direct: at the head, so each command has work
    before = catalog_snapshot(db_url)
    for args in MIGRATIONS:
        result = run_cli(*args, url=pooled, env={"OTELMIG_LOCK_WAIT": "5"})
        assert result.code == REFUSED, (args, result)
        line = one_line(result.err)
        assert "transaction-pooling" in line and "OTELMIG_MIGRATION_URL" in line and "nothing was changed" in line
        assert "maintain" in line and "repair" in line, line  # every command that takes the lock is named
        assert advisory_locks(db_url) == []
    assert catalog_snapshot(db_url) == before
    assert sql(db_url, "select version_num from otel.alembic_version") == [[HEAD_REVISION]]
    result = run_cli("upgrade", "--format", "json", url=pooled)
    assert result.code == REFUSED
    assert result.json()["exit_code"] == REFUSED and result.json()["pooling"] == "transaction"
    # The check runs before any session setting: none reached the pool's server connections.
    expected = sql(db_url, SERVER_DEFAULTS_SQL)[0]
    for _ in range(2 * size):
        assert sql(pooled, SERVER_DEFAULTS_SQL)[0] == expected


def test_concurrent_upgrades_through_transaction_pooling_all_refuse(bouncers, db_url):
    load_legacy(db_url, traces=200)
    before = catalog_snapshot(db_url)
    pooled = through(bouncers("transaction", 4, False), db_url)
    procs = [spawn("upgrade", env={"POSTGRES_URL": pooled}) for _ in range(6)]
    results = [(p.wait(120), p.stdout.read(), p.stderr.read()) for p in procs]
    assert [r[0] for r in results] == [REFUSED] * 6, results
    assert all("transaction-pooling" in one_line(r[2]) for r in results)
    assert catalog_snapshot(db_url) == before
    assert advisory_locks(db_url) == []


# --- migrations through session pooling: as direct ---------------------------------------------

def test_concurrent_upgrades_through_session_pooling_all_succeed(bouncers, db_url):
    load_legacy(db_url, traces=2000)
    pooled = through(bouncers(*SESSION_POOL), db_url)
    procs = [spawn("upgrade", env={"POSTGRES_URL": pooled}) for _ in range(6)]
    results = [(p.wait(180), p.stdout.read(), p.stderr.read()) for p in procs]
    assert [r[0] for r in results] == [0] * 6, results
    assert sum("now at %s" % HEAD_REVISION in r[1] for r in results) == 1
    assert sql(db_url, "select count(*) from otel.alembic_version") == [[1]]
    verify_ok(db_url)
    assert advisory_locks(db_url) == []
    assert run_cli("rollback", url=pooled).code == 0
    assert run_cli("stamp", "head", url=pooled).code == 0
    assert run_cli("downgrade", "base", url=pooled).code == 0
    assert run_cli("upgrade", url=pooled).code == 0
    verify_ok(pooled)


SERVER_DEFAULTS_SQL = ("select current_setting('lock_timeout'), current_setting('maintenance_work_mem'), "
                       "current_setting('client_connection_check_interval', true), current_setting('search_path'), "
                       "current_setting('statement_timeout'), current_setting('idle_in_transaction_session_timeout'), "
                       "current_setting('default_transaction_read_only'), "
                       "(select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid())")


def test_nothing_otelmig_sets_reaches_the_next_client(bouncers, db_url):
    """Session pooling with two server connections (otelmig uses both): after
    an upgrade and a rollback, two clients at once get both, as a new client
    of the server would find them."""
    load_legacy(db_url, traces=50)
    expected = sql(db_url, SERVER_DEFAULTS_SQL)[0]
    pooled = through(bouncers("session", 2, False), db_url)
    for args in (("upgrade", "--lock-timeout", "2"), ("rollback",), ("upgrade",), ("check",), ("plan",)):
        assert run_cli(*args, url=pooled).code == 0, args
    clients = [connect(pooled) for _ in range(2)]
    try:
        server_backends = sql(db_url, "select pid from pg_stat_activity where datname = current_database() "
                                      "and pid <> pg_backend_pid() order by 1")
        seen = []
        for client in clients:
            cursor = client.cursor()
            cursor.execute("select pg_backend_pid(), " + SERVER_DEFAULTS_SQL[len("select "):])
            pid, *settings = cursor.fetchone()
            seen.append([pid])
            assert settings == expected, settings
        assert sorted(seen) == server_backends  # both of the pool's server connections, the ones otelmig used
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_upgrade_through_session_pooling_leaves_no_lock(bouncers, db_url, sig):
    load_legacy(db_url, traces=100)
    before = catalog_snapshot(db_url)
    pooled = through(bouncers(*SESSION_POOL), db_url)
    holder = connect(db_url, autocommit=False)  # direct: holds spans so the upgrade's ALTER waits
    holder.cursor().execute("select count(*) from otel.spans")
    try:
        proc = spawn("upgrade", "--lock-timeout", "30", env={"POSTGRES_URL": pooled})
        wait_for(lambda: sql(db_url, "select count(*) from pg_stat_activity where wait_event_type = 'Lock' "
                                     "and query ilike 'ALTER TABLE%%'")[0][0], "the upgrade's ALTER waiting")
        lock_holder = advisory_locks(db_url)
        assert len(lock_holder) == 1  # the migration lock, on a pooled server connection
        proc.send_signal(sig)
        code = proc.wait(DEADLINE_SECONDS)
    finally:
        holder.rollback()
        holder.close()
    assert code == (-9 if sig == signal.SIGKILL else 143), proc.stderr.read()
    wait_for(lambda: advisory_locks(db_url) == [], "the migration lock's release")
    # The lock's server connection went back to the pool, reset by PgBouncer
    # (DISCARD ALL releases advisory locks), not closed.
    (lock_pid, _), = lock_holder
    assert sql(db_url, "select state, query from pg_stat_activity where pid = %s", (lock_pid,)) == \
        [["idle", "DISCARD ALL"]]
    assert catalog_snapshot(db_url) == before
    assert run_cli("upgrade", url=pooled).code == 0
    verify_ok(pooled)
    assert advisory_locks(db_url) == []


@pytest.mark.parametrize("connect_timeout,query_wait_timeout", [(2, 60), (30, 2)])
def test_session_pool_too_small_for_a_migration_is_3_with_nothing_changed(bouncers, db_url, connect_timeout,
                                                                           query_wait_timeout):
    """One server connection: the check's second connection waits for it until
    its connect timeout, or until PgBouncer's query_wait_timeout cuts it."""
    load_legacy(db_url, traces=10)
    before = catalog_snapshot(db_url)
    bouncer = bouncers("session", 1, False, "query_wait_timeout = %d" % query_wait_timeout)
    pooled = through(bouncer, db_url) + "?connect_timeout=%d" % connect_timeout
    result = run_cli("upgrade", url=pooled)
    assert result.code == 3, result
    line = one_line(result.err)
    assert "no second server connection" in line and "pool_size" in line and "nothing was changed" in line
    assert catalog_snapshot(db_url) == before
    assert advisory_locks(db_url) == []


# --- the migration URL --------------------------------------------------------------------------

def test_migration_url_sends_migrations_direct_and_reads_through_the_pooler(bouncers, db_url):
    pooled = through(bouncers("transaction", 4, False), db_url)
    nowhere = "postgresql://nobody:secret@127.0.0.1:1/nothing"
    env = {"POSTGRES_URL": pooled, "OTELMIG_MIGRATION_URL": db_url}
    assert run_cli("upgrade", env=env).code == 0
    assert run_cli("check", env=dict(env, OTELMIG_MIGRATION_URL=nowhere)).code == 0  # reads ignore it
    assert run_cli("downgrade", BASELINE, env=env).code == 0  # the layout before partitioning
    assert run_cli("plan", env=env).code == 5
    assert run_cli("stamp", "head", env=env).code == 0
    assert run_cli("verify", env=env).code == 4  # stamped, never migrated: "run upgrade", seen through the pooler
    assert run_cli("downgrade", "base", env=env).code == 0
    # The variable is what migrations use: pointed at the pooler they refuse, --url still wins.
    swapped = {"POSTGRES_URL": db_url, "OTELMIG_MIGRATION_URL": pooled}
    assert run_cli("upgrade", env=swapped).code == REFUSED
    assert run_cli("upgrade", "--url", db_url, env=swapped).code == 0
    assert run_cli("check", env=swapped).code == 0


# --- the built pyz ------------------------------------------------------------------------------

def test_pyz_through_the_pooler(bouncers, db_url, pyz):
    transaction = through(bouncers("transaction", 4, True), db_url)
    session = through(bouncers(*SESSION_POOL), db_url)
    warm(transaction, 4)
    assert run_pyz(pyz, "check", url=transaction).code == 4
    refused = run_pyz(pyz, "upgrade", url=transaction)
    assert refused.code == REFUSED and "OTELMIG_MIGRATION_URL" in one_line(refused.err), refused
    assert run_pyz(pyz, "upgrade", url=transaction, env={"OTELMIG_MIGRATION_URL": session}).code == 0
    for args in READ_ONLY:
        assert run_pyz(pyz, *args, url=transaction).code == 0, args
    password = urllib.parse.unquote(urllib.parse.urlsplit(db_url).password)
    assert password not in refused.out + refused.err
    assert advisory_locks(db_url) == []
