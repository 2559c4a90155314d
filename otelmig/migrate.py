"""upgrade, downgrade, rollback, stamp, history, heads: the Alembic commands.

Each is a plain function taking settings and streams. The Alembic Config is
built in code and handed an open connection; the URL never enters it.
"""

import contextlib
import functools
import random
import time
from typing import List, Optional

from otelmig import db, interrupt, output, preflight, progress, repair, session
from otelmig.revisions import HEAD_REVISION
from otelmig.state import assess, ensure_known, read_state
from otelmig.errors import (ConnectError, ExitStatus, NotInitialisedError, OtelmigError, RefusedError,
                            UnknownRevisionError, UsageError)
from otelmig.lock import MigrationLock
from otelmig.scripts import (alembic_config, engine_for, lock_timeout_ms, resolve_revision, revisions_between,
                             script_directory)

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
        state = read_state(lock.conn, settings.schema)
        engine = engine_for(settings.conninfo)
        connection = engine.connect()
        pid = connection.exec_driver_sql("select pg_backend_pid()").scalar()
        ours = not isinstance(assess(state), UnknownRevisionError)  # a newer otelmig's layout is not ours to repair
        try:
            # On SIGINT/SIGTERM, end our own backend so its transaction is
            # rolled back now, before the lock is released.
            with interrupt.cleanup_on_signal(lambda: lock.stop_backend(pid)):
                _prepare_session(connection, settings)
                if ours:
                    _repair_first(settings, err, connection)
                watch = functools.partial(progress.watch_index_build, settings.conninfo, pid, say)
                yield lock, state, connection, watch
                _restore_session(connection)
        except BaseException as exc:
            # A refusal or a usage error stops a run before it changes anything: nothing to repair.
            if ours and not isinstance(exc, (RefusedError, UsageError)):
                # Our session ends first: what it left is then a stopped run's (revision 2's
                # repair_steps keep what the converting session still holds).
                with contextlib.suppress(Exception):
                    connection.close()
                _repair_on_the_way_out(settings, err, engine)
            raise
        finally:
            with contextlib.suppress(Exception):
                connection.close()
            engine.dispose()


def _repair_first(settings, err, connection) -> None:
    """Before anything else: what an interrupted run left that could reject a write (otelmig/repair.py)."""
    done = []
    _run_with_retries(settings, err, connection, lambda: done.extend(repair.run_repairs(connection, settings.schema)))
    if done:
        output.progress(settings, err, "repaired what an interrupted run left (%d statement(s)); "
                        "it could have rejected writes" % len(done))
        for statement in done:
            output.progress(settings, err, "  " + statement.replace("\n", "\n      "), level=1)


# The repair on the way out of a failed run: a short lock budget (a container
# stopped with SIGTERM gets a grace period of seconds, not minutes).
EXIT_REPAIR_LOCK_TIMEOUT = 1.0  # seconds per attempt, so 6 s in all (LOCK_BUDGET_FACTOR)


def _repair_on_the_way_out(settings, err, engine) -> None:
    """A run that failed while alive removes, before it exits, whatever it left that
    could reject a future write, on a new connection (its own may have been ended)."""
    import dataclasses
    short = dataclasses.replace(settings, lock_timeout=min(settings.lock_timeout, EXIT_REPAIR_LOCK_TIMEOUT))
    try:
        with contextlib.closing(engine.connect()) as connection:
            _prepare_session(connection, short)
            _repair_first(short, err, connection)
    except Exception as exc:
        error = db.translate(exc) or exc
        output.progress(settings, err, "could not remove what this run left (%s); the next upgrade, downgrade "
                        "or maintain removes it first" % getattr(error, "message", str(error)))


def _prepare_session(connection, settings) -> None:
    """What the session list (otelmig/session.py) leaves to run time: the
    read-only refusal, the lock timeout and the index builds' memory."""
    _refuse_read_only(connection)
    connection.exec_driver_sql("SET lock_timeout = '%dms'" % lock_timeout_ms(settings))
    # Index builds sort in memory up to maintenance_work_mem; the server default
    # (64 MB) spills a million spans to disk. Raise it for this session only,
    # never lower what the operator configured.
    connection.exec_driver_sql(
        "select set_config('maintenance_work_mem', '%dMB', false) "
        "where pg_size_bytes(current_setting('maintenance_work_mem')) < %d"
        % (MAINTENANCE_WORK_MEM_MB, MAINTENANCE_WORK_MEM_MB * 1024 * 1024))
    connection.commit()


# Where default_transaction_read_only came from (pg_settings.source), for the fix.
_READ_ONLY_SOURCES = {"database": "ALTER DATABASE ... SET", "user": "ALTER ROLE ... SET",
                      "database user": "ALTER ROLE ... IN DATABASE ... SET",
                      "configuration file": "the server configuration"}


def _refuse_read_only(connection) -> None:
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


def _final_revision(connection, schema: str) -> Optional[str]:
    from otelmig.schema import VERSION_TABLE
    connection.rollback()
    return connection.exec_driver_sql("select max(version_num) from %s.%s"
                                      % (db.quote_ident(schema), VERSION_TABLE)).scalar()


def _final_revision_or_none(connection, schema: str) -> Optional[str]:
    """The version row, or None where the version table is gone (a downgrade to base drops it)."""
    from otelmig.schema import VERSION_TABLE
    connection.rollback()
    exists = connection.exec_driver_sql("select to_regclass(%s) is not null" % db.quote_literal(
        "%s.%s" % (db.quote_ident(schema), VERSION_TABLE))).scalar()
    return _final_revision(connection, schema) if exists else None


def _restore_session(connection) -> None:
    connection.rollback()
    connection.exec_driver_sql("RESET lock_timeout")
    connection.commit()


def _run_with_retries(settings, err, connection, action) -> None:
    """Run a migration command; when its transaction was rolled back by a
    conflict (a lock timeout 55P03, a deadlock, a serialization failure), retry
    it (see LOCK_*). With -v, a failing statement is printed whole (the error
    line names only its start)."""
    from alembic.util import CommandError

    deadline = time.monotonic() + LOCK_BUDGET_FACTOR * settings.lock_timeout
    attempt = 0
    while True:
        wait = min(settings.lock_timeout, FIRST_LOCK_TIMEOUT * LOCK_TIMEOUT_GROWTH ** attempt)
        _set_lock_timeout(connection, wait)
        try:
            return action()
        except CommandError as exc:  # e.g. `upgrade base` from the head
            raise UsageError("%s; see `otelmig history`" % exc) from None
        except Exception as exc:
            if not db.is_conflict(exc) or time.monotonic() >= deadline:
                _print_failed_statement(settings, err, exc)
                raise
            reason = "waited %.2fs for its lock" % wait if db.is_lock_timeout(exc) else db.server_message(exc)
        pause = random.uniform(*RETRY_PAUSE)
        output.progress(settings, err, "a table is busy (%s); retrying in %.2fs"
                        % (reason, pause), level=0 if attempt % 20 == 0 else 1)
        time.sleep(pause)
        attempt += 1


def _print_failed_statement(settings, err, exc) -> None:
    statement = db.failed_statement(exc)
    if statement:
        output.progress(settings, err, "failed statement: %s" % statement, level=1)


def _set_lock_timeout(connection, seconds: float) -> None:
    connection.rollback()
    connection.exec_driver_sql("SET lock_timeout = '%dms'" % max(1, int(seconds * 1000)))
    connection.commit()


def _applied_reporter(settings, err, applied: List[dict]):
    started = [time.monotonic()]

    def on_version_apply(ctx, step, heads, run_args):
        now = time.monotonic()
        verb = "applied" if step.is_upgrade else "reverted"
        applied.append({"revision": step.up_revision_id, "direction": "up" if step.is_upgrade else "down",
                        "seconds": round(now - started[0], 3)})
        output.progress(settings, err, "%s %s %s in %.2fs" % (verb, step.up_revision_id,
                                                            _short_doc(step), now - started[0]))
        started[0] = now
    return on_version_apply


def _short_doc(step) -> str:
    doc = (getattr(step.up_revision, "doc", None) or "").strip().splitlines()
    return "(%s)" % doc[0].rstrip(".") if doc else ""


def upgrade(settings, err, revision: str = "head") -> output.Result:
    from alembic import command

    if revision.startswith("-"):
        raise UsageError("`upgrade %s` goes backwards: use `otelmig rollback %s`" % (revision, revision[1:]))
    target = resolve_revision(settings, revision, None) if revision != "head" else HEAD_REVISION
    if target is None:
        raise UsageError("`upgrade %s` goes nowhere: to go back, use `otelmig downgrade %s`" % (revision, revision))
    applied: List[dict] = []
    with migration_session(settings, err) as (lock, state, connection, watch):
        ensure_known(state)
        if not state.schema_exists:
            connection.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS %s" % db.quote_ident(settings.schema))
            connection.commit()
        _preflight(settings, connection, revisions_between(settings, state.effective_revision, target))
        config = alembic_config(settings, connection, on_version_apply=_applied_reporter(settings, err, applied),
                                log=_step_logger(settings, err), watch_index_build=watch,
                                head=HEAD_REVISION, check_head_contract=preflight.contract_check(settings.schema))

        def action():
            if state.unmigrated_at_head:
                _forget_version(connection, settings.schema)
            command.upgrade(config, target)
        _run_with_retries(settings, err, connection, action)
        final = _final_revision(connection, settings.schema)
    return _report(settings, "upgrade", state.revision, final, applied)


def _preflight(settings, connection, pending) -> None:
    preflight.refuse_conflicts(connection.connection.dbapi_connection, settings.schema,
                               [script.module for script in pending])
    connection.rollback()


def _forget_version(connection, schema: str) -> None:
    """A version row at the head over a layout never migrated: start from base
    (the revisions' steps check the catalog, so re-running them adopts it)."""
    from otelmig.schema import VERSION_TABLE
    connection.exec_driver_sql("DELETE FROM %s.%s" % (db.quote_ident(schema), VERSION_TABLE))


def downgrade(settings, err, revision: str, allow_data_loss: bool = False) -> output.Result:
    from alembic import command

    applied: List[dict] = []
    with migration_session(settings, err) as (lock, state, connection, watch):
        ensure_known(state)
        target = resolve_revision(settings, revision, state.revision)
        if state.revision is None:
            if target is not None:
                raise NotInitialisedError("schema %s has no recorded revision: nothing to downgrade"
                                          % settings.schema)
            # Already at base (a rerun of a downgrade that finished): only what an
            # interrupted upgrade of the baseline left is undone, so the layout found comes back.
            _run_with_retries(settings, err, connection, lambda: _undo_partly_applied(
                settings, err, connection, None, allow_data_loss, watch, applied))
            return _report(settings, "downgrade", None, _final_revision_or_none(connection, settings.schema),
                           applied)
        config = alembic_config(settings, connection, on_version_apply=_applied_reporter(settings, err, applied),
                                log=_step_logger(settings, err), allow_data_loss=allow_data_loss,
                                watch_index_build=watch)
        _refuse_along_the_path(settings, connection, state.revision, target, allow_data_loss)
        _run_with_retries(settings, err, connection, lambda: _undo_partly_applied(
            settings, err, connection, state.revision, allow_data_loss, watch, applied))
        with _naming_where_it_stopped(settings, connection, state.revision):
            _run_with_retries(settings, err, connection, lambda: command.downgrade(config, target or "base"))
        final = _final_revision(connection, settings.schema)
    return _report(settings, "downgrade", state.revision, final, applied)


def _refuse_along_the_path(settings, connection, current, target, allow_data_loss: bool) -> None:
    """Every refusal of every revision the downgrade reverts, asked of the live
    catalog before the first change, so a downgrade across several revisions
    does not revert some and then stop. A refusal whose condition needs what an
    earlier step of the path makes is asked again when its step comes."""
    from otelmig.ddl import Catalog, Refusal, SchemaSQL, decide

    names = SchemaSQL(settings.schema)
    ask = Catalog(lambda sql: connection.exec_driver_sql(sql).scalar(),
                  lambda sql: connection.exec_driver_sql(sql).fetchall())
    for script in reversed(revisions_between(settings, target, current)):  # newest first, as they run
        for step in script.module.downgrade_steps(names):
            if not isinstance(step, Refusal):
                continue
            try:
                decision = decide(step, names, ask, allow_data_loss)
            except Exception as exc:
                if db.translate(exc) is None:
                    raise
                connection.rollback()  # a condition that can only be asked in its turn: asked then
                continue
            if decision.refusal and not decision.lifted:
                connection.rollback()
                raise RefusedError("downgrade to %s refused before its first change, nothing was changed: revision "
                                   "%s would stop it: %s" % (target or "base", script.revision, decision.refusal))
    connection.rollback()


@contextlib.contextmanager
def _naming_where_it_stopped(settings, connection, before: Optional[str]):
    """A downgrade that fails after reverting some revisions says where the database is now."""
    try:
        yield
    except OtelmigError as error:
        _add_where_it_stopped(settings, connection, before, error)
        raise
    except Exception as exc:
        error = db.translate(exc)
        if error is None:
            raise
        _add_where_it_stopped(settings, connection, before, error)
        raise error from exc


def _add_where_it_stopped(settings, connection, before, error: OtelmigError) -> None:
    try:
        now = _final_revision(connection, settings.schema)
    except Exception:
        return  # the connection is gone; the next command reads the revision
    if now != before:
        error.args = ("%s; the downgrade stopped part way: schema %s is now at %s (was %s)"
                      % (error.message, settings.schema, now or "base", before or "base"),) + error.args[1:]


def _undo_partly_applied(settings, err, connection, current, allow_data_loss, watch, applied) -> None:
    """A revision above the version row whose upgrade stopped part way left objects:
    its downgrade steps remove them first, so the downgrade returns the layout found."""
    for revision in repair.undo_partly_applied(connection, settings.schema, current, _step_logger(settings, err),
                                                allow_data_loss, watch):
        applied.append({"revision": revision, "direction": "down", "seconds": 0.0, "partly_applied": True})
        output.progress(settings, err, "reverted what the interrupted upgrade of %s had done (its version row was "
                        "never written)" % revision)


def stamp(settings, err, revision: str) -> output.Result:
    from alembic import command

    with migration_session(settings, err) as (lock, state, connection, watch):
        ensure_known(state)
        if not state.schema_exists:
            raise NotInitialisedError("schema %s does not exist: run `otelmig.pyz upgrade` instead of stamp"
                                      % settings.schema)
        target = resolve_revision(settings, revision, state.revision) if revision != "head" else HEAD_REVISION
        config = alembic_config(settings, connection)
        _run_with_retries(settings, err, connection, lambda: command.stamp(config, target or "base", purge=True))
        connection.commit()
        final = _final_revision(connection, settings.schema)
    return _report(settings, "stamp", state.revision, final, [])


def _report(settings, verb: str, before: Optional[str], after: Optional[str], applied) -> output.Result:
    payload = {"exit_code": 0, "schema": settings.schema, "from_revision": before,
               "database_revision": after, "head": HEAD_REVISION, "applied": applied}
    if before == after and not applied:
        text = "%s: schema %s already at %s; nothing to do" % (verb, settings.schema, after or "base")
    else:
        text = "%s: schema %s now at %s (was %s)" % (verb, settings.schema, after or "base", before or "base")
    return output.Result(0, payload, text)


def _step_logger(settings, err):
    return lambda line: output.progress(settings, err, line, level=1)


def heads(settings, err) -> output.Result:
    revisions = list(script_directory(settings).get_heads())
    return output.Result(0, {"exit_code": 0, "schema": settings.schema, "heads": revisions}, "\n".join(revisions))


def history(settings, err) -> output.Result:
    scripts = script_directory(settings)
    current = _current_or_none(settings, err)
    rows = []
    for script in reversed(list(scripts.walk_revisions())):  # oldest first
        rows.append({"revision": script.revision, "down_revision": script.down_revision,
                     "doc": script.doc, "is_head": script.is_head, "is_current": script.revision == current})
    lines = ["%s %s%s%s" % ("*" if r["is_current"] else " ", r["revision"], " (head)" if r["is_head"] else "",
                            " " + r["doc"] if r["doc"] else "") for r in rows]
    return output.Result(0, {"exit_code": 0, "schema": settings.schema, "database_revision": current,
                             "revisions": rows}, "\n".join(lines))


def _current_or_none(settings, err) -> Optional[str]:
    """history marks the current revision when the database answers quickly."""
    from otelmig.state import probe
    import dataclasses

    quick = dataclasses.replace(settings.conninfo, connect_timeout=min(settings.conninfo.connect_timeout or 3.0, 3.0))
    try:
        return probe(quick, settings.schema).revision
    except ConnectError as exc:
        output.progress(settings, err, "history: could not read the database's revision, so none is marked "
                        "current: %s" % exc.message)
        return None
