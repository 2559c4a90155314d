"""check and current: the fast probe (init_db is otelmig.api's).

This module is on the hot path of every container start, so it imports pg8000
and otelmig's own small modules only: never Alembic, Mako or SQLAlchemy
(tests/test_check.py asserts it). The bundled head is a constant written at
build time (otelmig/_version.py); the state and its verdict are otelmig.state's.
"""

from otelmig._version import HEAD_REVISION
from otelmig.output import Result
from otelmig.state import assess, ensure_known, probe

# The JSON fields of a failed check or current (cli adds exit_code, schema, message).
FAILURE_FIELDS = {"head": HEAD_REVISION, "database_revision": None}


def check(settings, err, wait: float = 0.0) -> Result:
    state = probe(settings.conninfo, settings.schema, wait)
    error = assess(state)
    if error:
        error.details["database_revision"] = state.revision
        raise error
    return Result(0, {"exit_code": 0, "schema": settings.schema, "head": HEAD_REVISION,
                      "database_revision": state.revision},
                  "ready: schema %s is at the head %s" % (settings.schema, HEAD_REVISION))


def current(settings, err) -> Result:
    """The database's revision and whether it is the head (exit 0 even when behind)."""
    state = probe(settings.conninfo, settings.schema)
    ensure_known(state)
    is_head = state.revision == HEAD_REVISION
    payload = {"exit_code": 0, "schema": settings.schema, "head": HEAD_REVISION,
               "database_revision": state.revision, "is_head": is_head}
    if state.revision is None:
        text = "%s: no revision (not initialised)" % settings.schema
    else:
        text = "%s: %s%s" % (settings.schema, state.revision, " (head)" if is_head else " (behind head %s)" % HEAD_REVISION)
    return Result(0, payload, text)
