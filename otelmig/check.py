"""check and current: the fast probe (init_db is otelmig.api's).

This module is on the hot path of every container start, so it imports pg8000
and otelmig's own small modules only: never Alembic, Mako or SQLAlchemy
(tests/test_check.py asserts it). The bundled head is a constant written at
build time (otelmig/_version.py); the state and its verdict are otelmig.state's.

Ready means the worker can write now: at the head (state.assess), and a row
stamped now and one an hour ahead find a partition and pass every CHECK
(state.assess_writes). Both come from the same catalog round trip.

On a standby, ready means it has replayed the head: what it lacks may still
be in the WAL it has to replay, so `--wait` also waits for that.
"""

import time

from otelmig._version import HEAD_REVISION
from otelmig.errors import ExitStatus, NotInitialisedError
from otelmig.output import Result, progress
from otelmig.state import (assess, assess_writes, describe, ensure_known, fix_for, probe, rejects_writes_gauge,
                           schema_missing)

# The JSON fields of a failed check or current (cli adds exit_code, schema, message).
FAILURE_FIELDS = {"head": HEAD_REVISION, "database_revision": None}
# What a standby may still receive from its primary's WAL: the schema, the head, the partitions.
REPLAY_MAY_BRING = (ExitStatus.NOT_INITIALISED, ExitStatus.PENDING, ExitStatus.DRIFT)
STANDBY_POLL_SECONDS = 0.25
STANDBY_NOTE = ("; this server is a standby, which holds what it has replayed of its primary so far: upgrade "
                "and maintain run on the primary, and `check --wait SECONDS` waits for the standby to replay them")


def check(settings, err, wait: float = 0.0) -> Result:
    deadline = time.monotonic() + wait
    state, error = _look(settings, err, wait)
    while error and state.in_recovery and error.exit_status in REPLAY_MAY_BRING and time.monotonic() < deadline:
        time.sleep(min(STANDBY_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        state, error = _look(settings, err, max(0.0, deadline - time.monotonic()))
    leftovers = [left.as_dict() for left in state.leftovers]
    if error:
        if state.in_recovery and error.exit_status in REPLAY_MAY_BRING:
            error.args = (error.message + STANDBY_NOTE,)
        error.details["database_revision"] = state.revision
        error.details["rejects_writes_from"] = leftovers
        raise error
    standby = " (a standby: it has replayed the head)" if state.in_recovery else ""
    text = ["ready: schema %s is at the head %s%s" % (settings.schema, HEAD_REVISION, standby)]
    text += ["warning: %s: %s" % (describe(settings.schema, left), fix_for(settings.schema, left))
             for left in state.leftovers]
    return Result(0, {"exit_code": 0, "schema": settings.schema, "head": HEAD_REVISION,
                      "database_revision": state.revision, "rejects_writes_from": leftovers},
                  "\n".join(text), prometheus_text(settings.schema, ExitStatus.OK, state.leftovers))


def _look(settings, err, wait: float):
    """The state (connecting within `wait`, a line per retry) and the verdict on it."""
    state = probe(settings.conninfo, settings.schema, wait, say=lambda line: progress(settings, err, "check: " + line))
    return state, assess(state) or assess_writes(state)


def failure_prometheus(schema: str, status) -> str:
    return prometheus_text(schema, status, ())


def prometheus_text(schema: str, status, leftovers) -> str:
    """Readiness, and the earliest moment a leftover CHECK starts rejecting writes
    (only when there is one: alert on `otelmig_rejects_writes_from_timestamp_seconds - time() < 86400`)."""
    label = '{schema="%s"}' % schema
    lines = ["# HELP otelmig_check_ready 1 when the worker can write now.",
             "# TYPE otelmig_check_ready gauge",
             "otelmig_check_ready%s %d" % (label, 1 if status == ExitStatus.OK else 0),
             "# HELP otelmig_check_exit_code Exit code of the last check.",
             "# TYPE otelmig_check_exit_code gauge",
             "otelmig_check_exit_code%s %d" % (label, int(status))]
    lines += rejects_writes_gauge(label, leftovers)
    lines += ["# HELP otelmig_check_timestamp_seconds When the last check ran.",
              "# TYPE otelmig_check_timestamp_seconds gauge",
              "otelmig_check_timestamp_seconds%s %.3f" % (label, time.time())]
    return "\n".join(lines) + "\n"


def current(settings, err) -> Result:
    """The database's revision and whether it is the head (exit 0 even when behind)."""
    state = probe(settings.conninfo, settings.schema)
    ensure_known(state)
    if not state.schema_exists and state.other_stores:  # a typo in --schema beside a store is not "no revision"
        raise NotInitialisedError(schema_missing(state), details={"database_revision": None})
    is_head = state.revision == HEAD_REVISION
    payload = {"exit_code": 0, "schema": settings.schema, "head": HEAD_REVISION,
               "database_revision": state.revision, "is_head": is_head}
    if state.revision is None:
        text = "%s: no revision (not initialised)" % settings.schema
    else:
        text = "%s: %s%s" % (settings.schema, state.revision, " (head)" if is_head else " (behind head %s)" % HEAD_REVISION)
    return Result(0, payload, text)
