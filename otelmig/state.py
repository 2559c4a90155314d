"""The shared state model: what a database holds, read in two round trips, and
the verdict on it (ready, or the error `check` would exit with): at the head,
and whether the worker can write now (assess_writes).

Used by check, current, init_db (otelmig.api), plan, verify and the migration
commands. Like check, it imports pg8000 and otelmig's own small modules only:
never Alembic, Mako or SQLAlchemy (tests/test_check.py asserts it).
"""

import time
from typing import NamedTuple, Optional, Tuple

from otelmig import db, schema as contract
from otelmig._version import HEAD_REVISION, KNOWN_REVISIONS
from otelmig.errors import PROGRAM, ExitStatus, NotInitialisedError, OtelmigError, PendingError, UnknownRevisionError
from otelmig.session import server_major
from otelmig.settings import ENV_SCHEMA

UPGRADE_HINT = "run `%s upgrade`" % PROGRAM
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
                      order by 1), '{}'),
       {writes}, {leftovers}, pg_is_in_recovery()
from (select 1) one left join pg_namespace n on n.nspname = %s
"""

# Which of "now" and "an hour from now" a spans partitioned by RANGE on its
# timestamptz key (the head's layout) routes to no partition: no range holds
# it and there is no DEFAULT partition (null when spans is not so partitioned).
# A partition a DETACH ... CONCURRENTLY is taking away (14+) holds nothing.
# pg_get_expr(relpartbound, 0): a bound holds constants only, and with the
# partition's oid pg_get_expr would lock it (waiting behind a lock on spans).
_WRITES_SQL = """(select array(select m.label from (values (1, 'now', now()), (2, 'an hour from now',
                                                                   now() + interval '1 hour')) m(n, label, at)
               where not exists (
                 select 1 from pg_inherits i join pg_class p on p.oid = i.inhrelid
                 cross join lateral (select pg_get_expr(p.relpartbound, 0) as bound) e
                 where i.inhparent = sp.oid and {attached}
                   and (e.bound = 'DEFAULT'
                        or ((e.bound ~ '^FOR VALUES FROM \\(MINVALUE\\)'
                             or (regexp_match(e.bound, '^FOR VALUES FROM \\(''([^'']*)''\\)'))[1]::timestamptz <= m.at)
                            and (e.bound ~ ' TO \\(MAXVALUE\\)$'
                                 or m.at < (regexp_match(e.bound, ' TO \\(''([^'']*)''\\)$'))[1]::timestamptz))))
               order by m.n)
        from pg_class sp join pg_partitioned_table pt on pt.partrelid = sp.oid
        join pg_attribute ka on ka.attrelid = sp.oid and ka.attnum = pt.partattrs[0]
        where sp.relnamespace = n.oid and sp.relname::text = %s and pt.partstrat = 'r' and pt.partnatts = 1
          and ka.attname::text = %s and ka.atttypid = 'timestamptz'::regtype)"""

# CHECK constraints of the schema's tables that bound a timestamptz column from
# above by a constant (`col < '...'`, `col <= '...'`, or the mirror forms): the
# contract declares none, and each starts rejecting writes at its constant
# (an interrupted revision 2 leaves spans_history_range on a plain spans). One
# on a partition whose range ends at or before the constant rejects nothing
# routed to it. Read as JSON, the moment as UTC text and epoch: a year past
# 9999, BC or -infinity parse nowhere in Python.
_LEFTOVERS_SQL = """(select coalesce(json_agg(json_build_object(
            'table', l.relname, 'constraint', l.conname, 'column', l.col,
            'moment', (l.at at time zone 'UTC')::text || case when isfinite(l.at) then ' UTC' else '' end,
            'epoch', case when isfinite(l.at) then extract(epoch from l.at)::float8 end,
            'soon', l.at <= now() + interval '1 hour', 'worker_table', l.worker)
            order by l.at, l.relname, l.conname), '[]')
        from (select t.oid, t.relname::text as relname, k.conname::text as conname, b.col, min(b.at) as at,
                     t.relname::text = any(%s::text[]) or exists (
                       select 1 from pg_partition_ancestors(t.oid) a join pg_class ac on ac.oid = a.relid
                       where ac.relnamespace = n.oid and ac.relname::text = any(%s::text[])) as worker
              from pg_constraint k join pg_class t on t.oid = k.conrelid
              cross join lateral (
                select m[1] as quoted, m[3]::timestamptz as at
                from regexp_matches(pg_get_constraintdef(k.oid), %s, 'g') m
                union all
                select m[3], m[1]::timestamptz from regexp_matches(pg_get_constraintdef(k.oid), %s, 'g') m) q
              cross join lateral (select case when q.quoted like '"%%'
                                              then replace(substr(q.quoted, 2, length(q.quoted) - 2), '""', '"')
                                              else q.quoted end as col, q.at) b
              join pg_attribute a on a.attrelid = t.oid and a.attname::text = b.col and a.attnum > 0
                                 and a.atttypid = 'timestamptz'::regtype
              where t.relnamespace = n.oid and t.relkind in ('r', 'p') and k.contype = 'c' and b.at <> 'infinity'
              group by t.oid, t.relname, k.conname, b.col) l
        where not exists (
          select 1 from pg_inherits pi join pg_class pc on pc.oid = pi.inhrelid
          join pg_partitioned_table ppt on ppt.partrelid = pi.inhparent and ppt.partstrat = 'r' and ppt.partnatts = 1
          join pg_attribute pa on pa.attrelid = pi.inhparent and pa.attnum = ppt.partattrs[0]
          where pi.inhrelid = l.oid and pa.attname::text = l.col
            and (regexp_match(pg_get_expr(pc.relpartbound, 0), ' TO \\(''([^'']*)''\\)$'))[1]::timestamptz
                <= l.at))"""
_IDENT = r'("(?:[^"]|"")+"|[[:alpha:]_][[:alnum:]_$]*)'
_CONSTANT = r"'([^']*)'::(?:timestamp with time zone|timestamp without time zone|date)"
_BELOW = r"%s\s*(<=?)\s*%s" % (_IDENT, _CONSTANT)   # col < '...'
_ABOVE = r"%s\s*(>=?)\s*%s" % (_CONSTANT, _IDENT)   # '...' > col
_SPANS = contract.SPANS_PARTITIONING
_HEAD_COLUMNS = [(t.name, c.name) for t in contract.TABLES for c in t.columns]
_PARTITIONED = [t.name for t in contract.TABLES if t.partitioned_by]


class Leftover(NamedTuple):
    """A CHECK that bounds a timestamptz column from above by a constant: from
    `moment` on, it rejects every row written with that column at or past it."""
    table: str
    constraint: str
    column: str
    moment: str            # UTC text, e.g. '2026-12-04 00:00:00 UTC', '56890-01-01 00:00:00 UTC', '-infinity'
    epoch: Optional[float]  # seconds since 1970; None for -infinity
    soon: bool             # the moment is at most an hour from the server's now (or past)
    worker_table: bool     # on traces or spans (or one of their partitions): the worker's writes

    def as_dict(self) -> dict:
        return self._asdict()


class DbState(NamedTuple):
    schema: str
    schema_exists: bool
    tables: Tuple[str, ...]
    revision: Optional[str]               # None when there is no row, or several
    missing_columns: Tuple[str, ...] = ()  # head columns an existing table lacks, "table.column"
    version_rows: Tuple[str, ...] = ()     # every row of the version table
    unpartitioned: Tuple[str, ...] = ()    # tables the head partitions, found plain
    refused_rows: Tuple[str, ...] = ()     # "now", "an hour from now": stamps the partitioned spans routes nowhere
    leftovers: Tuple[Leftover, ...] = ()   # CHECKs that reject writes from a moment on
    in_recovery: bool = False              # a standby: what it holds is what it has replayed so far
    other_stores: Tuple[str, ...] = ()     # when the schema does not exist: schemas here with a version table

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
    def partitioning_undone(self) -> bool:
        """Recorded at or above the partitioning revision over a plain spans, below the
        head: that revision's downgrade stopped after its switch back (it keeps its version
        row until it is done), or the store was stamped there. At the head this is
        unmigrated_at_head."""
        if self.unmigrated_at_head or not self.unpartitioned or self.revision not in KNOWN_REVISIONS:
            return False
        return KNOWN_REVISIONS.index(self.revision) >= KNOWN_REVISIONS.index(contract.PARTITIONING_REVISION)

    @property
    def effective_revision(self) -> Optional[str]:
        """Where the migrations start: base for a store stamped at the head but never
        migrated; below the partitioning revision for a store whose partitioning was
        undone (its upgrade, which first finishes a stopped downgrade, runs again)."""
        if self.unmigrated_at_head:
            return None
        if self.partitioning_undone:
            return KNOWN_REVISIONS[KNOWN_REVISIONS.index(contract.PARTITIONING_REVISION) - 1]
        return self.revision


def read_state(conn, schema: str) -> DbState:
    """Schema, tables, missing head columns and revision in two round trips, reading nothing else."""
    cursor = conn.cursor()
    wanted = [t.name for t in contract.TABLES] + [contract.VERSION_TABLE]
    worker_tables = [t.name for t in contract.TABLES]
    cursor.execute(_state_sql(conn), (wanted, [t for t, _ in _HEAD_COLUMNS], [c for _, c in _HEAD_COLUMNS],
                                      _PARTITIONED, _SPANS.table, _SPANS.key, worker_tables, worker_tables,
                                      _BELOW, _ABOVE, schema))
    schema_exists, tables, missing_columns, unpartitioned, refused, leftovers, in_recovery = cursor.fetchone()
    rows: Tuple[str, ...] = ()
    if contract.VERSION_TABLE in tables:
        cursor.execute("select version_num from %s.%s order by 1" % (db.quote_ident(schema), contract.VERSION_TABLE))
        rows = tuple(row[0] for row in cursor.fetchall())
    revision = rows[0] if len(rows) == 1 else None
    others: Tuple[str, ...] = ()
    if not schema_exists:  # a typo in --schema? the stores this database does hold (a second round trip, rare)
        cursor.execute("select n.nspname::text from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                       "where c.relname = %s and c.relkind in ('r', 'p') order by 1", (contract.VERSION_TABLE,))
        others = tuple(row[0] for row in cursor.fetchall())
    return DbState(schema, bool(schema_exists), tuple(tables), revision, tuple(missing_columns or ()), rows,
                   tuple(unpartitioned or ()), tuple(refused or ()), tuple(Leftover(**item) for item in leftovers or ()),
                   bool(in_recovery), others)


def _state_sql(conn) -> str:
    """The state query for this server's major (inhdetachpending is 14+)."""
    major = server_major(conn.parameter_statuses.get("server_version", "")) or 0
    attached = "not i.inhdetachpending" if major >= 14 else "true"
    writes = _WRITES_SQL.replace("{attached}", attached)
    return _STATE_SQL.replace("{writes}", writes).replace("{leftovers}", _LEFTOVERS_SQL)


def assess(state: DbState) -> Optional[OtelmigError]:
    """The verdict on a state: an error to raise, or None when ready."""
    s = state.schema
    if len(state.version_rows) > 1:
        return _several_rows(state)
    if not state.schema_exists:
        return NotInitialisedError(schema_missing(state))
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


def schema_missing(state: DbState) -> str:
    """A schema that does not exist may be a typo: ask, rather than suggest an
    upgrade that would create a second, empty store beside the real one."""
    s = state.schema
    line = "schema %s does not exist in this database: is %s the intended schema (--schema, %s)?" % (s, s, ENV_SCHEMA)
    if state.other_stores:
        where = ("store here is in schema %s" % state.other_stores[0] if len(state.other_stores) == 1
                 else "stores here are in schemas %s" % ", ".join(state.other_stores))
        return line + " otelmig's %s; `%s upgrade` would create a new, empty store in %s" % (where, PROGRAM, s)
    return line + " If it is, %s to create the store there" % UPGRADE_HINT


WRITES_HINT = "run `%s maintain` (it creates today's and the coming days' partitions)" % PROGRAM
LEFTOVER_HINT = "run `%s upgrade` (or `downgrade`), which removes it before anything else" % PROGRAM


def assess_writes(state: DbState) -> Optional[OtelmigError]:
    """Whether the worker can write now (exit 7 when not): the partitioned spans
    routes a row stamped now and one an hour ahead somewhere, and no CHECK on
    traces or spans (or their partitions) rejects such rows within the hour."""
    s = state.schema
    if state.refused_rows:
        return OtelmigError("%s.%s accepts no row stamped %s: no partition holds it and there is no DEFAULT "
                            "partition, so every such insert fails: %s"
                            % (s, _SPANS.table, " nor ".join(state.refused_rows), WRITES_HINT), ExitStatus.DRIFT)
    soon = [left for left in state.leftovers if left.worker_table and left.soon]
    if soon:
        return OtelmigError("%s, so the worker's inserts fail: %s" % (describe(s, soon[0]), LEFTOVER_HINT),
                            ExitStatus.DRIFT)
    return None


def fix_for(schema: str, leftover: Leftover) -> str:
    """otelmig removes such a CHECK from its own tables; one on another table is the operator's."""
    if leftover.worker_table:
        return LEFTOVER_HINT
    return ("if it is not meant to, ALTER TABLE %s.%s DROP CONSTRAINT %s"
            % (schema, db.quote_ident(leftover.table), db.quote_ident(leftover.constraint)))


def describe(schema: str, leftover: Leftover) -> str:
    """One clause naming a leftover CHECK and the moment it rejects writes from."""
    return ("CHECK %s on %s.%s rejects every row with %s at or after %s"
            % (leftover.constraint, schema, leftover.table, leftover.column, leftover.moment))


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


RETRY_PAUSE = 0.5  # seconds between attempts of check --wait


def probe(conninfo, schema: str, wait: float = 0.0, say=None) -> DbState:
    """Connect (retrying an unreachable server until `wait` runs out, each retry
    told to `say`) and read the state."""
    deadline = time.monotonic() + wait
    while True:
        remaining = deadline - time.monotonic()
        try:
            conn = db.connect(conninfo, timeout=_attempt_timeout(conninfo, remaining, wait), probe=True)
            break
        except db.ConnectFailed as exc:
            remaining = deadline - time.monotonic()
            if not exc.retryable or not wait:
                raise
            if remaining <= 0:
                exc.args = ("gave up after %s s waiting for the database: %s" % (_seconds(wait), exc.message),)
                raise
            if say:
                say("waiting for the database to accept connections (%s); %.1f s left"
                    % (exc.message.split(";")[0], remaining))
            time.sleep(min(RETRY_PAUSE, remaining))
    try:
        return read_state(conn, schema)
    finally:
        db.close(conn)


def _seconds(value: float) -> str:
    return ("%.1f" % value).rstrip("0").rstrip(".")


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


def rejects_writes_gauge(label: str, leftovers) -> list:
    """The Prometheus gauge of the earliest leftover (check's and verify's); -Inf for a bound at -infinity."""
    if not leftovers:
        return []
    first = leftovers[0]  # state orders them by moment
    value = "-Inf" if first.epoch is None else "%.3f" % first.epoch
    return ["# HELP otelmig_rejects_writes_from_timestamp_seconds When a leftover CHECK starts rejecting writes.",
            "# TYPE otelmig_rejects_writes_from_timestamp_seconds gauge",
            "otelmig_rejects_writes_from_timestamp_seconds%s %s" % (label, value)]
