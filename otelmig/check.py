"""check and current: the fast probe (init_db is otelmig.api's).

This module is on the hot path of every container start, so it imports pg8000
and otelmig's own small modules only: never Alembic, Mako or SQLAlchemy
(tests/test_check.py asserts it). The bundled head is a constant written at
build time (otelmig/_version.py); the state and its verdict are otelmig.state's.
"""

from otelmig._version import HEAD_REVISION
from otelmig.output import emit
from otelmig.state import assess, ensure_known, probe


def check(settings, out, err, wait: float = 0.0) -> int:
    state = probe(settings.conninfo, settings.schema, wait)
    error = assess(state)
    if error:
        error.details["database_revision"] = state.revision
        raise error
    emit(settings, out, {"exit_code": 0, "schema": settings.schema, "head": HEAD_REVISION,
                         "database_revision": state.revision},
         "ready: schema %s is at the head %s" % (settings.schema, HEAD_REVISION))
    return 0


def current(settings, out, err) -> int:
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
    emit(settings, out, payload, text)
    return 0
