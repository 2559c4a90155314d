"""The session every command that changes the store runs in (upgrade, downgrade,
rollback, stamp: otelmig/migrate.py; maintain: otelmig/maintain.py): the
migration lock, a connection set up for DDL, what an interrupted run left
repaired first and on the way out of a failing one (otelmig/repair.py), and
the lock budget its transactions are retried under.
"""

import contextlib
import functools
import random
import time
from typing import Optional

from otelmig import db, interrupt, output, progress, replicas, repair, run, runlog, session
from otelmig.errors import PROGRAM, RefusedError, UnknownRevisionError, UsageError
from otelmig.lock import MigrationLock
from otelmig.scripts import engine_for, lock_timeout_ms
from otelmig.state import assess, read_state

# Lock waits. While an ALTER waits for its lock, every reader and writer of
# that table queues behind it, for as long as the attempt lasts. So attempts
# are short and nearly back to back: a queued ALTER gets the lock the moment
# the query ahead of it ends, and short attempts catch that moment without
# holding the writers up for a whole long query (bench/README.md: at 10M
# spans, growth 1.5 let the writer wait 342 ms; 1.1 keeps attempts short for
# ~10 tries). They grow slowly, up to --lock-timeout each, to outlast a holder
# that never pauses.
FIRST_LOCK_TIMEOUT = 0.1     # seconds, the first attempt's wait
LOCK_TIMEOUT_GROWTH = 1.1    # each later attempt waits this much longer, up to --lock-timeout
LOCK_BUDGET_FACTOR = 6       # give up (exit 9) after this many times --lock-timeout
RETRY_PAUSE = (0.005, 0.03)  # seconds between attempts, jittered
MAINTENANCE_WORK_MEM_MB = 256  # at least this much for our index builds


@contextlib.contextmanager
def migration_session(settings, err):
    """The migration lock, then a SQLAlchemy connection set up for DDL."""
    say = lambda line: output.progress(settings, err, line)  # noqa: E731
    session.idle_timeout()  # a malformed OTELMIG_IDLE_TIMEOUT is exit 2 before anything happens
    with MigrationLock(settings.conninfo, settings.schema, settings.lock_wait, say) as lock:
        runlog.open_history(lock, settings.schema, say)  # the run's row, on the lock's connection
        state = read_state(lock.conn, settings.schema)
        engine = engine_for(settings.conninfo)
        connection = engine.connect()
        pid = connection.exec_driver_sql("select pg_backend_pid()").scalar()
        replicas.relay_pause_notices(connection.connection.dbapi_connection, say)  # a row move's pause lines
        ours = not isinstance(assess(state), UnknownRevisionError)  # a newer otelmig's layout is not ours to repair
        try:
            # On SIGINT/SIGTERM, end our own backend so its transaction is
            # rolled back now, before the lock is released.
            with interrupt.cleanup_on_signal(lambda: lock.stop_backend(pid)):
                prepare_session(connection, settings)
                if ours:
                    repair_first(settings, err, connection)
                watch = functools.partial(progress.watch_index_build, settings.conninfo, pid, say)
                yield lock, state, connection, watch
                restore_session(connection)
        except BaseException as exc:
            # A refusal or a usage error stops a run before it changes anything: nothing to repair.
            if ours and not isinstance(exc, (RefusedError, UsageError)):
                # Our session ends first: what it left is then a stopped run's (revision 2's
                # repair_steps keep what the converting session still holds).
                with contextlib.suppress(Exception):
                    connection.close()
                repair_on_the_way_out(settings, err, engine)
            raise
        finally:
            with contextlib.suppress(Exception):
                connection.close()
            engine.dispose()


def repair_first(settings, err, connection) -> None:
    """Before anything else: what an interrupted run left that could reject a write (otelmig/repair.py)."""
    done = []
    run_with_retries(settings, err, connection, lambda: done.extend(repair.run_repairs(connection, settings.schema)))
    if done:
        output.progress(settings, err, "undid what an interrupted run left (%d statement(s)); "
                        "see -v for each" % len(done))
        for statement in done:
            output.progress(settings, err, "  " + statement.replace("\n", "\n      "), level=1)


# The repair on the way out of a failed run: a short lock budget (a container
# stopped with SIGTERM gets a grace period of seconds, not minutes).
EXIT_REPAIR_LOCK_TIMEOUT = 1.0  # seconds per attempt, so 6 s in all (LOCK_BUDGET_FACTOR)


def repair_on_the_way_out(settings, err, engine) -> None:
    """A run that failed while alive removes, before it exits, whatever it left that
    could reject a future write, on a new connection (its own may have been ended)."""
    import dataclasses
    short = dataclasses.replace(settings, lock_timeout=min(settings.lock_timeout, EXIT_REPAIR_LOCK_TIMEOUT))
    try:
        with contextlib.closing(engine.connect()) as connection:
            prepare_session(connection, short)
            repair_first(short, err, connection)
    except Exception as exc:
        error = db.translate(exc) or exc
        output.progress(settings, err, "could not remove what this run left (%s); the next upgrade, downgrade "
                        "or maintain removes it first" % getattr(error, "message", str(error)))


def prepare_session(connection, settings) -> None:
    """What the session list (otelmig/session.py) leaves to run time: the
    read-only refusal, the lock timeout and the index builds' memory."""
    refuse_read_only(connection)
    connection.exec_driver_sql("SET lock_timeout = '%dms'" % lock_timeout_ms(settings))
    # Index builds sort in memory up to maintenance_work_mem; the server default
    # (64 MB) spills a million spans to disk. Raise it for this session only,
    # never lower what the operator configured.
    connection.exec_driver_sql(
        "select set_config('maintenance_work_mem', '%dMB', false) "
        "where pg_size_bytes(current_setting('maintenance_work_mem')) < %d"
        % (MAINTENANCE_WORK_MEM_MB, MAINTENANCE_WORK_MEM_MB * 1024 * 1024))
    connection.exec_driver_sql(replicas.session_bound_sql(settings))  # a row move's pause reads it
    connection.commit()


# Where default_transaction_read_only came from (pg_settings.source), for the fix.
_READ_ONLY_SOURCES = {"database": "ALTER DATABASE ... SET", "user": "ALTER ROLE ... SET",
                      "database user": "ALTER ROLE ... IN DATABASE ... SET",
                      "configuration file": "the server configuration"}


def refuse_read_only(connection) -> None:
    """default_transaction_read_only is the operator's (session.SETTINGS never
    overrides it): a read-only session or a standby is refused, nothing changed."""
    read_only, standby, source = connection.exec_driver_sql(
        "select current_setting('transaction_read_only') = 'on', pg_is_in_recovery(), "
        "(select source from pg_settings where name = 'default_transaction_read_only')").one()
    connection.rollback()
    if standby:
        raise RefusedError("the database is read-only: this server is a standby (in recovery); nothing was "
                           "changed: run against the primary")
    if read_only:
        raise RefusedError("the database is read-only for this session: default_transaction_read_only is on "
                           "(set by %s); nothing was changed: run as a role that may write, or set it off there"
                           % _READ_ONLY_SOURCES.get(source, source))


def restore_session(connection) -> None:
    connection.rollback()
    connection.exec_driver_sql("RESET lock_timeout")
    connection.commit()


def retrying(settings, attempt, set_timeout, on_retry, stop, longest: Optional[float] = None):
    """The one retry loop of every command that changes the store (upgrade,
    downgrade, stamp, maintain): `attempt()` runs with a lock timeout that
    starts at FIRST_LOCK_TIMEOUT and grows by LOCK_TIMEOUT_GROWTH up to
    --lock-timeout (and `longest`), set by `set_timeout(seconds)`; a conflict
    (a lock timeout 55P03, a deadlock, a serialization failure) rolls it back
    and it runs again after a short jittered pause, until LOCK_BUDGET_FACTOR x
    --lock-timeout is spent. `on_retry(tries, reason, pause, exc)` reports a
    retry; `stop(exc, budget_spent)` sees the failure that ends the loop (it
    may raise its own error instead). Each lock wait and retry goes to the run
    record (otelmig/run.py)."""
    deadline = time.monotonic() + LOCK_BUDGET_FACTOR * settings.lock_timeout
    tries = 0
    while True:
        wait = min(settings.lock_timeout, longest or settings.lock_timeout,
                   FIRST_LOCK_TIMEOUT * LOCK_TIMEOUT_GROWTH ** tries)
        set_timeout(wait)
        try:
            return attempt()
        except Exception as exc:
            if db.is_lock_timeout(exc):
                run.lock_waited("table lock", wait, {"db.response.status_code": db.LOCK_NOT_AVAILABLE})
            if not db.is_conflict(exc) or time.monotonic() >= deadline:
                stop(exc, db.is_conflict(exc))
                raise
            reason = "waited %.2fs for its lock" % wait if db.is_lock_timeout(exc) else db.server_message(exc)
            failed = exc
        pause = random.uniform(*RETRY_PAUSE)
        run.retried(tries + 1, reason, db.sqlstate(failed), pause)
        on_retry(tries, reason, pause, failed)
        time.sleep(pause)
        tries += 1


def run_with_retries(settings, err, connection, action) -> None:
    """Run a migration command, retried on a conflict (retrying). With -v, a
    failing statement is printed whole (the error line names only its start),
    and a retry's line names the session holding the lock."""
    from alembic.util import CommandError

    def attempt():
        try:
            return action()
        except CommandError as exc:  # e.g. `upgrade base` from the head
            raise UsageError("%s; see `%s history`" % (exc, PROGRAM)) from None

    def on_retry(tries, reason, pause, exc):
        level = 0 if tries % 20 == 0 else 1
        if settings.verbosity >= level:  # only for a line that is printed: the retries are tight
            reason = _lock_holder(connection, settings.schema, db.failed_statement(exc)) + reason
        output.progress(settings, err, "a table is busy (%s); retrying in %.2fs" % (reason, pause), level=level)

    return retrying(settings, attempt, lambda wait: set_lock_timeout(connection, wait), on_retry,
                    lambda exc, budget_spent: print_failed_statement(settings, err, exc))


# The sessions holding a lock on a relation of the schema, longest-running transaction first.
_HOLDERS_SQL = """
select n.nspname || '.' || c.relname, l.pid, coalesce(a.application_name, ''), coalesce(a.state, 'unknown'),
       extract(epoch from now() - coalesce(a.xact_start, a.state_change, now()))
from pg_locks l join pg_class c on c.oid = l.relation join pg_namespace n on n.oid = c.relnamespace
left join pg_stat_activity a on a.pid = l.pid
where l.granted and l.locktype = 'relation' and n.nspname = %s and c.relkind in ('r', 'p', 'v', 'm')
  and l.pid <> pg_backend_pid()
order by a.xact_start nulls last, 1
"""


def _lock_holder(connection, schema: str, statement: Optional[str]) -> str:
    """`schema.table held by pid N (application_name 'x', state, for S s): ` for the
    session the operator would look for (the table of the failed statement first);
    empty when none is seen (it ended meanwhile) or the catalog cannot be read."""
    try:
        connection.rollback()
        rows = connection.exec_driver_sql(_HOLDERS_SQL, (schema,)).fetchall()
        connection.rollback()
    except Exception:  # a courtesy: the retry goes on without it
        with contextlib.suppress(Exception):
            connection.rollback()
        return ""
    plain = (statement or "").replace('"', "")
    named = [row for row in rows if row[0] in plain]
    if not (named or rows):
        return ""
    table, pid, application, state, seconds = (named or rows)[0]
    return ("%s held by pid %d (application_name '%s', %s for %.1f s): "
            % (table, pid, application, state, float(seconds or 0)))


def print_failed_statement(settings, err, exc) -> None:
    statement = db.failed_statement(exc)
    if statement:
        output.progress(settings, err, "failed statement: %s" % statement, level=1)


def set_lock_timeout(connection, seconds: float) -> None:
    connection.rollback()
    connection.exec_driver_sql("SET lock_timeout = '%dms'" % max(1, int(seconds * 1000)))
    connection.commit()
