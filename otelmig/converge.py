"""repair: converge the live schema at the head on the contract (drift's fix).

verify names the drift, upgrade has nothing to do at the head: this command
runs what otelmig/drift.py decides, under the migration lock like upgrade
(what an interrupted run left is repaired first, otelmig/repair.py), each
step in its own short transaction under the lock budget (--lock-timeout,
retried, exit 9 once spent) or, for an index build, CONCURRENTLY outside one.
Everything it refuses is refused before its first change (exit 8).
"""

from typing import List

from otelmig import db, drift, migration_session, output, repair
from otelmig._version import HEAD_REVISION
from otelmig.errors import PROGRAM, BusyError

# The JSON fields of a failed repair (cli adds exit_code, schema, message).
FAILURE_FIELDS = {"head": HEAD_REVISION, "database_revision": None, "repaired": []}


def repair_drift(settings, err, dry_run: bool = False) -> output.Result:
    if dry_run:
        return _dry_run(settings)
    with migration_session.migration_session(settings, err) as (lock, state, connection, watch):
        raw = connection.connection.dbapi_connection
        found = drift.survey(raw, settings.schema)
        raw.rollback()
        if found.refusals:
            raise drift.refusal_error(found)
        done = [_converge(settings, err, connection, watch, item) for item in found.repairs]
    return _result(settings, found, done, dry_run=False)


def _dry_run(settings) -> output.Result:
    conn = db.read_only_connection(settings.conninfo)
    try:
        found = drift.survey(conn, settings.schema)
        if found.refusals:
            raise drift.refusal_error(found)
        listed = [drift.statements(conn, settings.schema, item.steps) for item in found.repairs]
    finally:
        db.close(conn)
    return _result(settings, found, [[s["sql"] for s in statements] for statements in listed], dry_run=True)


def _converge(settings, err, connection, watch, item: drift.Repair) -> List[str]:
    """One problem's steps, each in its own transaction (or concurrently, outside one), retried on a lock timeout."""
    ran: List[str] = []
    output.progress(settings, err, "repair: %s %s" % (item.problem.kind, item.problem.object))
    runner = repair.runner_on(connection, settings.schema, lambda line: _ran(settings, err, ran, line), watch=watch)
    for step in item.steps:
        def attempt(step=step):
            runner.run_step(step)
            connection.commit()
        try:
            migration_session.run_with_retries(settings, err, connection, attempt)
        except Exception as exc:
            if db.is_conflict(exc):  # the budget is spent: say what stays done
                raise _busy(settings, item, exc) from None
            raise
    return ran


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


def _result(settings, found: drift.Survey, done: List[List[str]], dry_run: bool) -> output.Result:
    repaired = [dict(drift.found_problem(item.problem), statements=statements)
                for item, statements in zip(found.repairs, done)]
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
