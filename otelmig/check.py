"""check and current: the fast probe (init_db is otelmig.api's).

This module is on the hot path of every container start, so it imports pg8000
and otelmig's own small modules only: never Alembic, Mako or SQLAlchemy
(tests/test_check.py asserts it). The bundled head is a constant written at
build time (otelmig/_version.py); the state and its verdict are otelmig.state's.

Ready means the worker can write now: at the head (state.assess), and a row
stamped now and one an hour ahead find a partition and pass every CHECK
(state.assess_writes). Both come from the same catalog round trip.
"""

import time

from otelmig._version import HEAD_REVISION
from otelmig.errors import ExitStatus, NotInitialisedError
from otelmig.output import Result, progress
from otelmig.state import assess, assess_writes, describe, ensure_known, fix_for, probe, schema_missing

# The JSON fields of a failed check or current (cli adds exit_code, schema, message).
FAILURE_FIELDS = {"head": HEAD_REVISION, "database_revision": None}


def check(settings, err, wait: float = 0.0) -> Result:
    state = probe(settings.conninfo, settings.schema, wait, say=lambda line: progress(settings, err, "check: " + line))
    error = assess(state) or assess_writes(state)
    leftovers = [left.as_dict() for left in state.leftovers]
    if error:
        error.details["database_revision"] = state.revision
        error.details["rejects_writes_from"] = leftovers
        raise error
    text = ["ready: schema %s is at the head %s" % (settings.schema, HEAD_REVISION)]
    text += ["warning: %s: %s" % (describe(settings.schema, left), fix_for(settings.schema, left))
             for left in state.leftovers]
    return Result(0, {"exit_code": 0, "schema": settings.schema, "head": HEAD_REVISION,
                      "database_revision": state.revision, "rejects_writes_from": leftovers},
                  "\n".join(text), prometheus_text(settings.schema, ExitStatus.OK, state.leftovers))


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


def rejects_writes_gauge(label: str, leftovers) -> list:
    """The gauge of the earliest leftover (shared with verify); -Inf for a bound at -infinity."""
    if not leftovers:
        return []
    first = leftovers[0]  # state orders them by moment
    value = "-Inf" if first.epoch is None else "%.3f" % first.epoch
    return ["# HELP otelmig_rejects_writes_from_timestamp_seconds When a leftover CHECK starts rejecting writes.",
            "# TYPE otelmig_rejects_writes_from_timestamp_seconds gauge",
            "otelmig_rejects_writes_from_timestamp_seconds%s %s" % (label, value)]


def current(settings, err) -> Result:
    """The database's revision and whether it is the head (exit 0 even when behind)."""
    state = probe(settings.conninfo, settings.schema)
    ensure_known(state)
    if not state.schema_exists:  # a typo in --schema is not "no revision"
        raise NotInitialisedError(schema_missing(state), details={"database_revision": None})
    is_head = state.revision == HEAD_REVISION
    payload = {"exit_code": 0, "schema": settings.schema, "head": HEAD_REVISION,
               "database_revision": state.revision, "is_head": is_head}
    if state.revision is None:
        text = "%s: no revision (not initialised)" % settings.schema
    else:
        text = "%s: %s%s" % (settings.schema, state.revision, " (head)" if is_head else " (behind head %s)" % HEAD_REVISION)
    return Result(0, payload, text)
