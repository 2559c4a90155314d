"""The shared state model: what a database holds, read in two round trips, and
the verdict on it (ready, or the error `check` would exit with).

Used by check, current, init_db (otelmig.api), plan, verify and the migration
commands. Like check, it imports pg8000 and otelmig's own small modules only:
never Alembic, Mako or SQLAlchemy (tests/test_check.py asserts it).
"""

import time
from typing import NamedTuple, Optional, Tuple

from otelmig import db, schema as contract
from otelmig._version import HEAD_REVISION, KNOWN_REVISIONS
from otelmig.errors import NotInitialisedError, OtelmigError, PendingError, UnknownRevisionError

UPGRADE_HINT = "run `otelmig.pyz upgrade`"
# One round trip for the schema, its tables and the head's columns that an
# existing table lacks (a version row over a layout that was never migrated);
# catalog lookups by name only, no table is read.
_STATE_SQL = """
select n.oid is not null,
       coalesce(array(select c.relname::text from pg_class c
                      where c.relnamespace = n.oid and c.relkind in ('r', 'p')
                        and c.relname::text = any(%s::text[])
                      order by 1), '{}'),
       coalesce(array(select w.t || '.' || w.c from unnest(%s::text[], %s::text[]) w(t, c)
                      join pg_class c on c.relnamespace = n.oid and c.relname::text = w.t and c.relkind in ('r', 'p')
                      where not exists (select 1 from pg_attribute a where a.attrelid = c.oid
                                        and a.attname::text = w.c and a.attnum > 0 and not a.attisdropped)
                      order by 1), '{}'),
       coalesce(array(select c.relname::text from pg_class c
                      where c.relnamespace = n.oid and c.relkind = 'r' and c.relname::text = any(%s::text[])
                      order by 1), '{}')
from (select 1) one left join pg_namespace n on n.nspname = %s
"""
_HEAD_COLUMNS = [(t.name, c.name) for t in contract.TABLES for c in t.columns]
_PARTITIONED = [t.name for t in contract.TABLES if t.partitioned_by]


class DbState(NamedTuple):
    schema: str
    schema_exists: bool
    tables: Tuple[str, ...]
    revision: Optional[str]               # None when there is no row, or several
    missing_columns: Tuple[str, ...] = ()  # head columns an existing table lacks, "table.column"
    version_rows: Tuple[str, ...] = ()     # every row of the version table
    unpartitioned: Tuple[str, ...] = ()    # tables the head partitions, found plain

    @property
    def has_version_table(self) -> bool:
        return contract.VERSION_TABLE in self.tables

    @property
    def missing_tables(self) -> Tuple[str, ...]:
        return tuple(t.name for t in contract.TABLES if t.name not in self.tables)

    @property
    def unmigrated_at_head(self) -> bool:
        """Recorded at the head over a layout that is not the head's (stamped, never migrated)."""
        return self.revision == HEAD_REVISION and bool(self.missing_tables or self.missing_columns
                                                       or self.unpartitioned)

    @property
    def effective_revision(self) -> Optional[str]:
        """Where the migrations start: base for a store stamped but never migrated."""
        return None if self.unmigrated_at_head else self.revision


def read_state(conn, schema: str) -> DbState:
    """Schema, tables, missing head columns and revision in two round trips, reading nothing else."""
    cursor = conn.cursor()
    wanted = [t.name for t in contract.TABLES] + [contract.VERSION_TABLE]
    cursor.execute(_STATE_SQL, (wanted, [t for t, _ in _HEAD_COLUMNS], [c for _, c in _HEAD_COLUMNS], _PARTITIONED,
                                schema))
    schema_exists, tables, missing_columns, unpartitioned = cursor.fetchone()
    rows: Tuple[str, ...] = ()
    if contract.VERSION_TABLE in tables:
        cursor.execute("select version_num from %s.%s order by 1" % (db.quote_ident(schema), contract.VERSION_TABLE))
        rows = tuple(row[0] for row in cursor.fetchall())
    revision = rows[0] if len(rows) == 1 else None
    return DbState(schema, bool(schema_exists), tuple(tables), revision, tuple(missing_columns or ()), rows,
                   tuple(unpartitioned or ()))


def assess(state: DbState) -> Optional[OtelmigError]:
    """The verdict on a state: an error to raise, or None when ready."""
    s = state.schema
    if len(state.version_rows) > 1:
        return _several_rows(state)
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
    if state.unmigrated_at_head:
        missing = (["table " + t for t in state.missing_tables] + ["column " + c for c in state.missing_columns]
                   + ["partitions of table " + t for t in state.unpartitioned])
        return NotInitialisedError(
            "schema %s is recorded at the head but lacks %s%s (stamped over a layout that was never migrated?): "
            "%s to adopt it" % (s, ", ".join(missing[:6]), ", ..." if len(missing) > 6 else "", UPGRADE_HINT))
    return None


def _several_rows(state: DbState) -> OtelmigError:
    """Alembic's table holds one row per head; otelmig has one head. Other rows
    are another application's (a shared version table): never guess which."""
    rows = ", ".join(state.version_rows)
    table = "%s.%s" % (state.schema, contract.VERSION_TABLE)
    ours = [r for r in state.version_rows if r in KNOWN_REVISIONS]
    if len(ours) == 1:
        fix = "delete the rows that are not otelmig's (DELETE FROM %s WHERE version_num <> '%s')" % (table, ours[0])
    else:
        fix = "keep only otelmig's row (one of %s) and delete the others" % ", ".join(KNOWN_REVISIONS)
    error = UnknownRevisionError("%s holds %d rows (%s), otelmig keeps exactly one: %s, then rerun"
                                 % (table, len(state.version_rows), rows, fix))
    error.details["version_rows"] = list(state.version_rows)
    return error


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
        db.close(conn)


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
