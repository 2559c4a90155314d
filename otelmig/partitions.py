"""The partition layout of otel.spans, read from the catalog.

Bounds come from pg_get_expr(relpartbound), as pg_partman reads them: the
text `FOR VALUES FROM ('...') TO ('...')` (or MINVALUE / MAXVALUE, or
DEFAULT). The quoted values carry their UTC offset, so the server casts them
back to timestamptz exactly whatever the session's TimeZone; they are handed
to Python as naive UTC datetimes. Reads pg_catalog only (one query), plus, on
request, the DEFAULT partition's rows. Used by maintain, verify and plan, on
a plain pg8000 connection; imports no Alembic or SQLAlchemy.
"""

import datetime
import re
from typing import List, NamedTuple, Optional, Tuple

from otelmig import db
from otelmig.schema import SPANS_PARTITIONING, Partitioning

_UTC_TEXT = 'YYYY-MM-DD"T"HH24:MI:SS.US'

# One row per partition of the table, and one for the table itself (relkind,
# strategy, key). inhdetachpending exists from PostgreSQL 14 (the query names it
# only there). Day-named tables that are not partitions (a detach that finished
# before its DROP) come too: maintain finishes their retention.
_LAYOUT_SQL = """
with parent as (
  select c.oid, c.relkind::text as kind, pt.partstrat::text as strategy,
         coalesce((select array_agg(a.attname::text order by k.n)
                   from unnest(pt.partattrs::int2[]) with ordinality k(attnum, n)
                   join pg_attribute a on a.attrelid = c.oid and a.attnum = k.attnum), '{{}}') as key
  from pg_class c join pg_namespace n on n.oid = c.relnamespace
  left join pg_partitioned_table pt on pt.partrelid = c.oid
  where n.nspname = %s and c.relname = %s and c.relkind in ('r', 'p')
), parts as (
  select p.relname::text as name, p.relkind::text as kind, pg_get_expr(p.relpartbound, p.oid) as bound,
         {pending} as pending,
         case when p.reltuples > 0 or (p.reltuples = 0 and p.relpages > 0) then p.reltuples::bigint
              else s.n_live_tup end as estimate
  from parent join pg_inherits i on i.inhparent = parent.oid
  join pg_class p on p.oid = i.inhrelid left join pg_stat_all_tables s on s.relid = p.oid
)
select 'parent', parent.kind, parent.strategy, parent.key, null, null, null, false, null from parent
union all
select 'partition', name, kind, null, bound,
       to_char(lower_bound at time zone 'UTC', '{fmt}'), to_char(upper_bound at time zone 'UTC', '{fmt}'),
       pending, estimate
from parts cross join lateral (
  select (regexp_match(bound, 'FROM \\(''([^'']*)''\\)'))[1]::timestamptz as lower_bound,
         (regexp_match(bound, 'TO \\(''([^'']*)''\\)'))[1]::timestamptz as upper_bound) b
union all
select 'standalone', c.relname::text, null, null, null, null, null, false, null
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = %s and c.relkind = 'r' and not c.relispartition and c.relname::text ~ %s
"""


class Partition(NamedTuple):
    name: str
    bound: str                            # pg_get_expr(relpartbound): FOR VALUES ... / DEFAULT
    lower: Optional[datetime.datetime]    # naive UTC; None: MINVALUE (or the DEFAULT partition)
    upper: Optional[datetime.datetime]    # naive UTC; None: MAXVALUE (or the DEFAULT partition)
    detach_pending: bool = False          # a DETACH ... CONCURRENTLY that did not finish
    rows_estimate: Optional[int] = None

    @property
    def is_default(self) -> bool:
        return self.bound.strip().upper() == "DEFAULT"

    def covers(self, lower: datetime.datetime, upper: datetime.datetime) -> bool:
        """Holds the whole range [lower, upper)."""
        return not self.is_default and (self.lower is None or self.lower <= lower) and (
            self.upper is None or upper <= self.upper)

    def overlaps(self, lower: datetime.datetime, upper: datetime.datetime) -> bool:
        return not self.is_default and (self.lower is None or self.lower < upper) and (
            self.upper is None or lower < self.upper)


class Layout(NamedTuple):
    schema: str
    table_kind: Optional[str]            # 'p' partitioned, 'r' plain, None missing
    strategy: Optional[str]              # 'r' range, 'l' list, 'h' hash
    key: Tuple[str, ...]
    partitions: Tuple[Partition, ...]    # ordered by lower bound, the DEFAULT last
    standalone_days: Tuple[str, ...]     # day-named tables that are not partitions
    partitioning: Partitioning = SPANS_PARTITIONING

    @property
    def partitioned(self) -> bool:
        return self.table_kind == "p"

    @property
    def default(self) -> Optional[Partition]:
        return next((p for p in self.partitions if p.is_default), None)

    @property
    def ranged(self) -> List[Partition]:
        return [p for p in self.partitions if not p.is_default]

    def problem(self) -> Optional[str]:
        """Why this is not the layout maintain keeps (None when it is)."""
        table = "%s.%s" % (self.schema, self.partitioning.table)
        wanted = "PARTITION BY RANGE (%s)" % self.partitioning.key
        if self.table_kind is None:
            return "%s does not exist" % table
        if not self.partitioned:
            return "%s is a plain table, not partitioned (%s)" % (table, wanted)
        if self.strategy != "r" or self.key != (self.partitioning.key,):
            return "%s is partitioned by %s (%s), not %s" % (
                table, {"l": "LIST", "h": "HASH"}.get(self.strategy or "", "RANGE"), ", ".join(self.key), wanted)
        return None

    def gaps(self) -> List[Tuple[datetime.datetime, datetime.datetime]]:
        """Ranges between two partitions that no partition holds (rows there land in DEFAULT)."""
        found = []
        ordered = sorted((p for p in self.ranged if p.lower is not None), key=lambda p: p.lower)
        for before, after in zip(ordered, ordered[1:]):
            if before.upper is not None and before.upper < after.lower:
                found.append((before.upper, after.lower))
        return found

    def covering(self, lower: datetime.datetime, upper: datetime.datetime) -> Optional[Partition]:
        return next((p for p in self.ranged if p.covers(lower, upper)), None)

    def overlapping(self, lower: datetime.datetime, upper: datetime.datetime) -> List[Partition]:
        return [p for p in self.ranged if p.overlaps(lower, upper)]

    def finite_bounds(self) -> List[datetime.datetime]:
        return sorted(b for p in self.ranged for b in (p.lower, p.upper) if b is not None)

    def oldest_bound(self) -> Optional[datetime.datetime]:
        bounds = self.finite_bounds()
        return bounds[0] if bounds else None

    def newest_bound(self) -> Optional[datetime.datetime]:
        bounds = self.finite_bounds()
        return bounds[-1] if bounds else None


def day_pattern(partitioning: Partitioning = SPANS_PARTITIONING) -> str:
    return "^%s[0-9]{8}$" % re.escape(partitioning.day_prefix)


def day_of(name: str, partitioning: Partitioning = SPANS_PARTITIONING) -> Optional[datetime.date]:
    """The day a day partition's name says, or None when it is not one."""
    if not re.fullmatch(day_pattern(partitioning)[1:-1], name):
        return None
    try:
        return datetime.datetime.strptime(name[len(partitioning.day_prefix):], "%Y%m%d").date()
    except ValueError:
        return None


def server_major(conn) -> int:
    cursor = conn.cursor()
    cursor.execute("select current_setting('server_version_num')::int / 10000")
    return int(cursor.fetchone()[0])


def read_layout(conn, schema: str, partitioning: Partitioning = SPANS_PARTITIONING) -> Layout:
    pending = "i.inhdetachpending" if server_major(conn) >= 14 else "false"
    cursor = conn.cursor()
    cursor.execute(_LAYOUT_SQL.format(pending=pending, fmt=_UTC_TEXT),
                   (schema, partitioning.table, schema, day_pattern(partitioning)))
    kind = strategy = None
    key: Tuple[str, ...] = ()
    parts, standalone = [], []
    for row_type, name, kind_or_strategy, row_key, bound, lower, upper, detaching, estimate in cursor.fetchall():
        if row_type == "parent":
            kind, strategy, key = name, kind_or_strategy, tuple(row_key or ())
        elif row_type == "partition":
            parts.append(Partition(name, bound or "", _utc(lower), _utc(upper), bool(detaching),
                                   None if estimate is None else int(estimate)))
        else:
            standalone.append(name)
    parts.sort(key=lambda p: (p.is_default, p.lower is not None, p.lower or datetime.datetime.min))
    return Layout(schema, kind, strategy, key, tuple(parts), tuple(sorted(standalone)), partitioning)


def _utc(text: Optional[str]) -> Optional[datetime.datetime]:
    return None if text is None else datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f")


def server_now(conn) -> datetime.datetime:
    """The server's clock, naive UTC: every decision uses it, never this machine's."""
    cursor = conn.cursor()
    cursor.execute("select to_char(now() at time zone 'UTC', '%s')" % _UTC_TEXT)
    return _utc(cursor.fetchone()[0])


def utc_literal(moment: datetime.datetime) -> str:
    """A timestamptz literal for SQL, in UTC."""
    return "'%s+00'" % moment.strftime("%Y-%m-%d %H:%M:%S")


def default_rows(conn, layout: Layout) -> Tuple[int, Optional[datetime.datetime], Optional[datetime.datetime]]:
    """(rows, oldest start_time, newest start_time) in the DEFAULT partition. It
    should be empty or nearly; counting it is a scan of what it holds."""
    if layout.default is None:
        return 0, None, None
    cursor = conn.cursor()
    cursor.execute("select count(*), to_char(min({k}) at time zone 'UTC', '{f}'), "
                   "to_char(max({k}) at time zone 'UTC', '{f}') from {s}.{t}".format(
                       k=db.quote_ident(layout.partitioning.key), f=_UTC_TEXT, s=db.quote_ident(layout.schema),
                       t=db.quote_ident(layout.default.name)))
    rows, oldest, newest = cursor.fetchone()
    return int(rows), _utc(oldest), _utc(newest)


def default_has_rows(conn, layout: Layout) -> bool:
    """Whether the DEFAULT partition holds any row: one row read, never a scan."""
    if layout.default is None:
        return False
    cursor = conn.cursor()
    cursor.execute("select exists (select 1 from %s.%s)"
                   % (db.quote_ident(layout.schema), db.quote_ident(layout.default.name)))
    return bool(cursor.fetchone()[0])


def adopted_as_found(conn, schema: str, partitioning: Partitioning = SPANS_PARTITIONING) -> bool:
    """Whether revision 2 found spans partitioned by the operator and left it as it
    was (recorded 'found' in otelmig's record table): then the operator keeps its
    partitions, and verify does not ask for otelmig's days ahead or DEFAULT."""
    from otelmig.schema import RECORD_TABLE
    cursor = conn.cursor()
    cursor.execute("select to_regclass(%s) is not null", ("%s.%s" % (db.quote_ident(schema), RECORD_TABLE),))
    if not cursor.fetchone()[0]:
        return False
    cursor.execute("select exists (select 1 from %s.%s where object_kind = 'partitioning' and object_name = %%s "
                   "and origin = 'found')" % (db.quote_ident(schema), RECORD_TABLE), (partitioning.table,))
    return bool(cursor.fetchone()[0])


# Partitions that lack one of the parent's indexes (an index created ON ONLY the
# parent and never attached to this partition, or an invalid one).
_UNINDEXED_SQL = """
select p.relname::text, pi.relname::text
from pg_inherits ip
join pg_class p on p.oid = ip.inhrelid and p.relkind = 'r'
join pg_index px on px.indrelid = ip.inhparent
join pg_class pi on pi.oid = px.indexrelid
where ip.inhparent = to_regclass(%s)
  and not exists (select 1 from pg_inherits ii join pg_index xi on xi.indexrelid = ii.inhrelid
                  where ii.inhparent = px.indexrelid and xi.indrelid = p.oid and xi.indisvalid and xi.indisready)
order by 1, 2
"""


def partitions_without_index(conn, schema: str, partitioning: Partitioning = SPANS_PARTITIONING):
    """[(partition, parent index)] for every index of the parent a partition lacks."""
    cursor = conn.cursor()
    cursor.execute(_UNINDEXED_SQL, ("%s.%s" % (db.quote_ident(schema), db.quote_ident(partitioning.table)),))
    return [tuple(row) for row in cursor.fetchall()]
