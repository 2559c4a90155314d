"""upgrade, downgrade, rollback, stamp, history, heads: the Alembic commands.

Each is a plain function taking settings and streams. The Alembic Config is
built in code and handed an open connection; the URL never enters it.
"""

import contextlib
import time
from typing import List, Optional

from otelmig import db, interrupt, output, preflight, replicas, repair
from otelmig.ddl import Catalog, Refusal, SchemaSQL, decide
from otelmig.revisions import HEAD_REVISION
from otelmig.schema import VERSION_TABLE
from otelmig.state import ensure_known, probe
from otelmig.errors import PROGRAM, ConnectError, NotInitialisedError, OtelmigError, RefusedError, UsageError
from otelmig.migration_session import (  # noqa: F401  (the lock budget and the session, named here too)
    FIRST_LOCK_TIMEOUT, LOCK_BUDGET_FACTOR, LOCK_TIMEOUT_GROWTH, MAINTENANCE_WORK_MEM_MB, RETRY_PAUSE,
    migration_session, prepare_session as _prepare_session, run_with_retries as _run_with_retries)
from otelmig.scripts import alembic_config, resolve_revision, revisions_between, script_directory


def _final_revision(connection, schema: str) -> Optional[str]:
    connection.rollback()
    return connection.exec_driver_sql("select max(version_num) from %s.%s"
                                      % (db.quote_ident(schema), VERSION_TABLE)).scalar()


def _final_revision_or_none(connection, schema: str) -> Optional[str]:
    """The version row, or None where the version table is gone (a downgrade to base drops it)."""
    connection.rollback()
    exists = connection.exec_driver_sql("select to_regclass(%s) is not null" % db.quote_literal(
        "%s.%s" % (db.quote_ident(schema), VERSION_TABLE))).scalar()
    return _final_revision(connection, schema) if exists else None


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
        raise UsageError("`upgrade %s` goes backwards: use `%s rollback %s`" % (revision, PROGRAM, revision[1:]))
    target = resolve_revision(settings, revision, None) if revision != "head" else HEAD_REVISION
    if target is None:
        raise UsageError("`upgrade %s` goes nowhere: to go back, use `%s downgrade %s`" % (revision, PROGRAM, revision))
    applied: List[dict] = []
    replicas.refuse_unseen_standbys(settings)
    with migration_session(settings, err) as (lock, state, connection, watch):
        ensure_known(state)
        if not state.schema_exists:
            connection.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS %s" % db.quote_ident(settings.schema))
            connection.commit()
            # Said, not asked: `upgrade` is how a store is first made, and a typo in --schema shows here.
            output.progress(settings, err, "schema %s did not exist: created it, with a new, empty store%s"
                            % (settings.schema, "" if not state.other_stores else " (otelmig's store here is in "
                               "schema %s)" % ", ".join(state.other_stores)))
        _preflight(settings, connection, revisions_between(settings, state.effective_revision, target))
        config = alembic_config(settings, connection, on_version_apply=_applied_reporter(settings, err, applied),
                                log=_step_logger(settings, err), watch_index_build=watch,
                                head=HEAD_REVISION, check_head_contract=preflight.contract_check(settings.schema))

        def action():
            if state.effective_revision != state.revision:
                _restart_from(connection, settings.schema, state.effective_revision)
            command.upgrade(config, target)
        _run_with_retries(settings, err, connection, action)
        final = _final_revision(connection, settings.schema)
    return replicas.after_change(settings, err, _report(settings, "upgrade", state.revision, final, applied),
                                 "the upgrade")


def _preflight(settings, connection, pending) -> None:
    preflight.refuse_conflicts(connection.connection.dbapi_connection, settings.schema,
                               [script.module for script in pending])
    connection.rollback()


def _restart_from(connection, schema: str, revision: Optional[str]) -> None:
    """A version row above what the layout holds (stamped at the head over a layout
    never migrated: from base; a partitioning whose downgrade stopped: from below it):
    the revisions' steps check the catalog, so re-running them converges."""
    table = "%s.%s" % (db.quote_ident(schema), VERSION_TABLE)
    connection.exec_driver_sql("DELETE FROM %s" % table)
    if revision is not None:
        connection.exec_driver_sql("INSERT INTO %s (version_num) VALUES (%s)" % (table, db.quote_literal(revision)))


def downgrade(settings, err, revision: str, allow_data_loss: bool = False) -> output.Result:
    from alembic import command

    applied: List[dict] = []
    replicas.refuse_unseen_standbys(settings)
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
        with _naming_where_it_stopped(settings, connection, lock, state.revision):
            _run_with_retries(settings, err, connection, lambda: command.downgrade(config, target or "base"))
        final = _final_revision(connection, settings.schema)
    return replicas.after_change(settings, err, _report(settings, "downgrade", state.revision, final, applied),
                                 "the downgrade")


def _refuse_along_the_path(settings, connection, current, target, allow_data_loss: bool) -> None:
    """Every refusal of every revision the downgrade reverts, asked of the live
    catalog before the first change, so a downgrade across several revisions
    does not revert some and then stop. A refusal whose condition needs what an
    earlier step of the path makes is asked again when its step comes."""
    names = SchemaSQL(settings.schema)
    ask = Catalog.on_connection(connection)
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
def _naming_where_it_stopped(settings, connection, lock, before: Optional[str]):
    """A downgrade that fails (or is interrupted) after reverting some revisions
    says where the database is now."""
    try:
        yield
    except OtelmigError as error:
        _add_where_it_stopped(settings, connection, lock, before, error)
        raise
    except Exception as exc:
        error = db.translate(exc)
        if error is None:
            raise
        _add_where_it_stopped(settings, connection, lock, before, error)
        raise error from exc
    except BaseException as exc:  # Interrupted: cli reports the signal, with this note
        if interrupt.received:
            _add_where_it_stopped(settings, connection, lock, before, exc)
        raise


def _add_where_it_stopped(settings, connection, lock, before, error: BaseException) -> None:
    now = _revision_now(settings, connection, lock)
    if now is not _UNKNOWN and now != before:
        note = ("; the downgrade stopped part way: schema %s is now at %s (was %s)"
                % (settings.schema, now or "base", before or "base"))
        error.where_it_stopped = note  # cli adds it to the signal's line too
        error.args = ("%s%s" % (error.args[0] if error.args else "", note),) + error.args[1:]


_UNKNOWN = object()


def _revision_now(settings, connection, lock):
    """The version row, read on the migration connection or, when a signal ended
    that one's backend, on the lock's; _UNKNOWN when neither answers."""
    try:
        return _final_revision(connection, settings.schema)
    except Exception:
        pass
    try:
        cursor = lock.conn.cursor()
        cursor.execute("select max(version_num) from %s.%s" % (db.quote_ident(settings.schema), VERSION_TABLE))
        return cursor.fetchone()[0]
    except Exception:
        return _UNKNOWN  # the next command reads the revision


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
            raise NotInitialisedError("schema %s does not exist: run `%s upgrade` instead of stamp"
                                      % (settings.schema, PROGRAM))
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
    import dataclasses

    quick = dataclasses.replace(settings.conninfo, connect_timeout=min(settings.conninfo.connect_timeout or 3.0, 3.0))
    try:
        return probe(quick, settings.schema).revision
    except ConnectError as exc:
        # A warning, not a failure: the list is this build's (exit 0, docs/operations.md).
        output.progress(settings, err, "%s: warning: could not read the database's revision, so none is marked "
                        "current: %s" % (PROGRAM, exc.message))
        return None
