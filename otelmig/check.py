"""check, current and init_db: the fast probe.

This module is on the hot path of every container start, so it imports pg8000
and otelmig's own small modules only: never Alembic, Mako or SQLAlchemy
(tests/test_check.py asserts it). The bundled head is a constant written at
build time (otelmig/_version.py).
"""

import time
from typing import NamedTuple, Optional, Tuple

from otelmig import db, schema as contract
from otelmig._version import HEAD_REVISION, KNOWN_REVISIONS
from otelmig.errors import NotInitialisedError, OtelmigError, PendingError, UnknownRevisionError
from otelmig.output import emit

UPGRADE_HINT = "run `otelmig.pyz upgrade`"
_STATE_SQL = """
select n.oid is not null,
       coalesce(array(select c.relname::text from pg_class c
                      where c.relnamespace = n.oid and c.relkind in ('r', 'p')
                        and c.relname::text = any(%s::text[])
                      order by 1), '{}')
from (select 1) one left join pg_namespace n on n.nspname = %s
"""


class DbState(NamedTuple):
    schema: str
    schema_exists: bool
    tables: Tuple[str, ...]
    revision: Optional[str]

    @property
    def has_version_table(self) -> bool:
        return contract.VERSION_TABLE in self.tables

    @property
    def missing_tables(self) -> Tuple[str, ...]:
        return tuple(t.name for t in contract.TABLES if t.name not in self.tables)


def read_state(conn, schema: str) -> DbState:
    """Schema, tables and revision in two round trips, reading nothing else."""
    cursor = conn.cursor()
    wanted = [t.name for t in contract.TABLES] + [contract.VERSION_TABLE]
    cursor.execute(_STATE_SQL, (wanted, schema))
    schema_exists, tables = cursor.fetchone()
    revision = None
    if contract.VERSION_TABLE in tables:
        cursor.execute("select version_num from %s.%s" % (db.quote_ident(schema), contract.VERSION_TABLE))
        rows = cursor.fetchall()
        revision = rows[0][0] if rows else None
    return DbState(schema, bool(schema_exists), tuple(tables), revision)


def assess(state: DbState) -> Optional[OtelmigError]:
    """The verdict on a state: an error to raise, or None when ready."""
    s = state.schema
    if not state.schema_exists:
        return NotInitialisedError("schema %s does not exist: %s" % (s, UPGRADE_HINT))
    if not state.has_version_table or state.revision is None:
        if state.tables:
            return NotInitialisedError(
                "schema %s holds tables (%s) but no migration was ever recorded (legacy layout?): %s to adopt them"
                % (s, ", ".join(t for t in state.tables if t != contract.VERSION_TABLE), UPGRADE_HINT))
        return NotInitialisedError("schema %s has no version table: %s" % (s, UPGRADE_HINT))
    if state.revision not in KNOWN_REVISIONS:
        return UnknownRevisionError(
            "schema %s is at revision %s, which this build does not know (a newer otelmig ran?): "
            "use that otelmig or a newer one" % (s, state.revision))
    if state.revision != HEAD_REVISION:
        return PendingError("schema %s is at %s, behind the head %s: %s"
                            % (s, state.revision, HEAD_REVISION, UPGRADE_HINT))
    if state.missing_tables:
        return NotInitialisedError("schema %s is at the head but table(s) %s are missing: run `otelmig.pyz verify`"
                                   % (s, ", ".join(state.missing_tables)))
    return None


def probe(conninfo, schema: str, wait: float = 0.0) -> DbState:
    """Connect (retrying an unreachable server until `wait` runs out) and read the state."""
    deadline = time.monotonic() + wait
    while True:
        remaining = deadline - time.monotonic()
        try:
            conn = db.connect(conninfo, timeout=_attempt_timeout(conninfo, remaining, wait), probe=True)
            break
        except db.ConnectFailed as exc:
            remaining = deadline - time.monotonic()
            if not exc.retryable or remaining <= 0:
                raise
            time.sleep(min(0.5, remaining))
    try:
        return read_state(conn, schema)
    finally:
        conn.close()


def _attempt_timeout(conninfo, remaining: float, wait: float) -> Optional[float]:
    """Each attempt may use what is left of --wait (a short floor), at most connect_timeout."""
    if not wait:
        return conninfo.connect_timeout
    return max(0.2, min(conninfo.connect_timeout or remaining, remaining))


def ensure_known(state: DbState) -> None:
    """Refuse (exit 6) to touch a database that a newer otelmig migrated."""
    error = assess(state)
    if isinstance(error, UnknownRevisionError):
        raise error


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


class SchemaNotReady(RuntimeError):
    """Raised by init_db(); exit_code is the one `otelmig check` would return."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def init_db(url: Optional[str] = None, schema: Optional[str] = None) -> None:
    """The worker's fail-fast start-up check: validates, never creates or alters."""
    import os
    from otelmig import settings as settings_mod
    from otelmig.redact import redact

    try:
        schema_name = settings_mod.validate_schema(
            schema or os.environ.get(settings_mod.ENV_SCHEMA, settings_mod.DEFAULT_SCHEMA))
        conninfo = settings_mod.resolve_conninfo(url, os.environ)
        error = assess(probe(conninfo, schema_name))
    except Exception as exc:  # the worker gets our error type, never a driver's
        error = db.translate(exc)
        if error is None:
            raise
    if error:
        raise SchemaNotReady(redact(error.message), int(error.exit_status))
