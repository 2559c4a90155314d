"""repair: converge the live schema at the head on the contract (drift's fix).

verify names the drift, upgrade has nothing to do at the head: this command
runs what otelmig/drift.py decides, under the migration lock like upgrade
(what an interrupted run left is repaired first, otelmig/repair.py), each
step in its own short transaction under the lock budget (--lock-timeout,
retried, exit 9 once spent) or, for an index build, CONCURRENTLY outside one.
Everything it refuses is refused before its first change (exit 8).
"""

import io
from typing import List

from otelmig import db, drift, migration_session, output, repair
from otelmig._version import HEAD_REVISION
from otelmig.ddl import SchemaSQL
from otelmig.errors import PROGRAM, BusyError, ExitStatus, Interrupted, OtelmigError

# The JSON fields of a failed repair (cli adds exit_code, schema, message).
FAILURE_FIELDS = {"head": HEAD_REVISION, "database_revision": None, "repaired": []}


def repair_drift(settings, err, dry_run: bool = False) -> output.Result:
    if dry_run:
        return _dry_run(settings)
    with migration_session.migration_session(settings, err) as (lock, state, connection, watch):
        raw = connection.connection.dbapi_connection
        found = drift.survey(raw, settings.schema)
        raw.rollback()
        done: List[dict] = []
        if found.refusals:
            # A helper CHECK a stopped run left rejects NULL inserts: dropped even when the rest is refused.
            left = [item for item in found.repairs if item.problem.kind == "repair_leftover"]
            _converge_all(settings, err, connection, watch, left, done)
            raise drift.refusal_error(found, cleaned=[_helper_of(settings.schema, item) for item in left])
        _converge_all(settings, err, connection, watch, found.repairs, done)
    return _result(settings, found, done, dry_run=False)


def _converge_all(settings, err, connection, watch, repairs: List[drift.Repair], done: List[dict]) -> None:
    """Each repair in turn; a failure names what stays done (and JSON lists it under "repaired")."""
    for item in repairs:
        try:
            statements = _converge(settings, err, connection, watch, item)
        except Interrupted:  # SIGINT/SIGTERM: our backend was ended; the helper is dropped on a new connection
            _drop_helper_after_failure(settings, None, item)
            raise
        except Exception as exc:
            raise _stopped(settings, connection, item, done, exc) from None
        done.append(dict(drift.found_problem(item.problem), statements=statements))


def _dry_run(settings) -> output.Result:
    conn = db.read_only_connection(settings.conninfo)
    try:
        found = drift.survey(conn, settings.schema)
        if found.refusals:
            raise drift.refusal_error(found)
        listed = [dict(drift.found_problem(item.problem),
                       statements=[s["sql"] for s in drift.statements(conn, settings.schema, item.steps)])
                  for item in found.repairs]
    finally:
        db.close(conn)
    return _result(settings, found, listed, dry_run=True)


def _converge(settings, err, connection, watch, item: drift.Repair) -> List[str]:
    """One problem's steps, each in its own transaction (or concurrently, outside one), retried on a lock timeout."""
    ran: List[str] = []
    output.progress(settings, err, "repair: %s %s" % (item.problem.kind, item.problem.object))
    runner = repair.runner_on(connection, settings.schema, lambda line: _ran(settings, err, ran, line), watch=watch)
    for step in item.steps:
        def attempt(step=step, mark=len(ran)):
            del ran[mark:]  # a step retried after a lock timeout is listed once, as its last try ran it
            runner.run_step(step)
            connection.commit()
        migration_session.run_with_retries(settings, err, connection, attempt)
    return ran


def _stopped(settings, connection, item: drift.Repair, done: List[dict], exc: BaseException) -> OtelmigError:
    """The error of a repair that failed at `item`: its helper CHECK (if any) dropped, what stays done named."""
    helper = _drop_helper_after_failure(settings, connection, item)
    error = (_busy(settings, item, exc) if db.is_conflict(exc)
             else db.translate(exc) or OtelmigError("internal error (a bug in otelmig): %s: %s; rerun with "
                                                    "--traceback and report it" % (type(exc).__name__, exc),
                                                    ExitStatus.INTERNAL))
    stayed = ", ".join("%s %s" % (d["kind"], d["object"]) for d in done) or "nothing (no repair before it)"
    message = "%s; repair stopped at %s %s%s; what stays done: %s" % (
        error.message.replace("that step was rolled back, the repairs before it stay done; ", ""),
        item.problem.kind, item.problem.object, helper, stayed)
    details = dict(getattr(error, "details", {}) or {}, repaired=list(done))
    return type(error)(message, error.exit_status, details=details)


def _helper_of(schema: str, item: drift.Repair) -> str:
    return drift.not_null_helper(*drift.split_object(schema, item.problem))


def _drop_helper_after_failure(settings, connection, item: drift.Repair) -> str:
    """A NOT NULL's helper CHECK must not outlive a failed run (it would reject every NULL insert): dropped on
    the session's connection, or a new one when that one is gone. Says what became of it."""
    table, column = drift.split_object(settings.schema, item.problem)
    if item.problem.kind not in ("wrong_nullability", "repair_leftover") or column is None:
        return ""
    helper = _helper_of(settings.schema, item)
    step = drift.drop_helper_step(SchemaSQL(settings.schema), table, column)
    if connection is not None:
        try:
            connection.rollback()
            migration_session.run_with_retries(settings, io.StringIO(), connection, lambda: (
                repair.runner_on(connection, settings.schema, lambda line: None).run_step(step), connection.commit()))
            return " (its helper CHECK %s was dropped)" % helper
        except Exception:
            pass  # the session is gone or still busy: a new connection, once
    try:
        conn = db.connect(settings.conninfo)
        try:
            cursor = conn.cursor()
            cursor.execute("set lock_timeout = '%dms'" % max(1, int(settings.lock_timeout * 1000)))
            cursor.execute("select %s" % step.when)
            if cursor.fetchone()[0]:
                cursor.execute(step.sql)
        finally:
            db.close(conn)
        return " (its helper CHECK %s was dropped)" % helper
    except Exception as exc:
        return (" (its helper CHECK %s could not be dropped: %s; it rejects NULL inserts until the next "
                "`%s repair` drops it)" % (helper, db.server_message(exc), PROGRAM))


def _busy(settings, item: drift.Repair, exc: BaseException) -> BusyError:
    return BusyError("repair stopped at %s %s: %s for %gs (6 x --lock-timeout): %s; that step was rolled back, "
                     "the repairs before it stay done; rerun `%s repair` later (it does only what is left) or raise "
                     "--lock-timeout" % (item.problem.kind, item.problem.object,
                                         "a table stayed locked" if db.is_lock_timeout(exc) else "a conflict persisted",
                                         migration_session.LOCK_BUDGET_FACTOR * settings.lock_timeout,
                                         db.server_message(exc), PROGRAM))


def _ran(settings, err, ran: List[str], line: str) -> None:
    ran.append(line.strip())
    output.progress(settings, err, line, level=1)


def _result(settings, found: drift.Survey, repaired: List[dict], dry_run: bool) -> output.Result:
    payload = {"exit_code": 0, "schema": settings.schema, "head": HEAD_REVISION,
               "database_revision": found.revision, "dry_run": dry_run, "repaired": repaired}
    return output.Result(0, payload, _text(settings.schema, repaired, dry_run))


def _text(schema: str, repaired: List[dict], dry_run: bool) -> str:
    if not repaired:
        return "repair: nothing to repair: schema %s matches the head contract" % schema
    verb = "would repair" if dry_run else "repaired"
    lines = []
    for item in repaired:
        lines.append("%s %s %s (%s)" % (verb, item["kind"], item["object"], item["detail"]))
        lines += ["  %s" % " ".join(sql.split()) for sql in item["statements"]]
    return "\n".join(lines)
