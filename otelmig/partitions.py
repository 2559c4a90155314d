"""The partition layout of otel.spans, read from the catalog, and what maintain,
verify and plan decide from it (decide(): the days to create, the partitions
retention drops, what is kept and why).

Bounds come from pg_get_expr(relpartbound, 0), as pg_partman reads them: the
text `FOR VALUES FROM ('...') TO ('...')` (or MINVALUE / MAXVALUE, or
DEFAULT). Relation 0 because a bound holds constants only: pg_get_expr with a
relation takes a lock on it, and waits behind whoever holds spans (a
maintain stuck there could not give up within its lock budget). The quoted
values carry their UTC offset, so the server casts them back to timestamptz
exactly whatever the session's TimeZone.

Every moment PostgreSQL accepts is a bound or a row here: 'infinity',
'-infinity', years past 9999, BC. Python's datetime holds years 1 to 9999, so
each moment comes from the server as exact UTC text (utc_text_sql) and is
handed to Python twice: `text` for people, and a naive UTC datetime for
decisions, clamped to datetime.min / datetime.max outside Python's range
(decisions are about days near the server's now, and keep their order). The
epoch (float, possibly +-inf) is for Prometheus.

Which partitions are otelmig's: those recorded in otel.otelmig_objects as
kind 'partition', origin 'created' (revision 2 records each it creates, and
maintain each it creates, before creating it). A store converted before that
record existed has no 'partition' row at all: there, the partitions attached
with exactly our names and bounds (spans_history FROM (MINVALUE) TO (a UTC
midnight), spans_default DEFAULT, spans_pYYYYMMDD FROM (that day 00:00 UTC)
TO (the next)) are adopted, and maintain records them on its next run. Any
other table is the operator's: never detached nor dropped.

Reads pg_catalog (one query), plus, on request, the DEFAULT partition's rows
and the record. Used by maintain, verify and plan, on a plain pg8000
connection; imports no Alembic or SQLAlchemy.
"""

import datetime
import re
from typing import FrozenSet, List, NamedTuple, Optional, Tuple

from otelmig import db
from otelmig.schema import PARTITIONING_REVISION, RECORD_TABLE, SPANS_PARTITIONING, Partitioning  # noqa: F401

PARTITION_KIND = "partition"
DETACHING_KIND = "detaching_partition"  # maintain began DETACH ... CONCURRENTLY of it: a stopped run's to finish
DAY = datetime.timedelta(days=1)


def utc_text_sql(moment: str) -> str:
    """SQL: a timestamptz as exact UTC text, whatever the session's settings:
    'YYYY-MM-DDTHH24:MI:SS.US' (more digits past 9999, ' BC' appended before
    year 1), or 'infinity' / '-infinity' (to_char has no text for those)."""
    return ("(case when {m} = 'infinity' then 'infinity' when {m} = '-infinity' then '-infinity' "
            "else to_char({m} at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') "
            "|| case when {m} < '0001-01-01 00:00:00+00' then ' BC' else '' end end)").format(m=moment)


def epoch_sql(moment: str) -> str:
    """SQL: seconds since 1970 as float8 (+-Infinity for +-infinity)."""
    return "extract(epoch from %s)::float8" % moment


# One row per partition of the table, and one for the table itself (relkind,
# strategy, key). inhdetachpending exists from PostgreSQL 14 (the query names it
# only there). Day-named tables that are not partitions (a detach that finished
# before its DROP, a promotion's copy, or the operator's) come too.
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
  select p.relname::text as name, p.relkind::text as kind, pg_get_expr(p.relpartbound, 0) as bound,
         {pending} as pending,
         case when p.reltuples > 0 or (p.reltuples = 0 and p.relpages > 0) then p.reltuples::bigint
              else s.n_live_tup end as estimate
  from parent join pg_inherits i on i.inhparent = parent.oid
  join pg_class p on p.oid = i.inhrelid left join pg_stat_all_tables s on s.relid = p.oid
)
select 'parent', parent.kind, parent.strategy, parent.key, null, null, null, null, null, false, null from parent
union all
select 'partition', name, kind, null, bound, {lower_text}, {upper_text}, {lower_epoch}, {upper_epoch},
       pending, estimate
from parts cross join lateral (
  select (regexp_match(bound, 'FROM \\(''([^'']*)''\\)'))[1]::timestamptz as lower_bound,
         (regexp_match(bound, 'TO \\(''([^'']*)''\\)'))[1]::timestamptz as upper_bound) b
union all
select 'standalone', c.relname::text, null, null, null, null, null, null, null, false, null
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = %s and c.relkind = 'r' and not c.relispartition and c.relname::text ~ %s
"""


class Moment(NamedTuple):
    """A moment from the server: naive UTC datetime (clamped), text for people, epoch, and utc_text_sql's text."""
    at: datetime.datetime
    text: str
    epoch: float
    exact: str


def parse_utc(text: Optional[str]) -> Optional[datetime.datetime]:
    """utc_text_sql's text as a naive UTC datetime; before year 1 (BC,
    '-infinity') datetime.min, after 9999 ('infinity') datetime.max."""
    if text is None:
        return None
    if text == "-infinity" or text.endswith(" BC"):
        return datetime.datetime.min
    if text == "infinity" or int(text.split("-", 1)[0]) > 9999:
        return datetime.datetime.max
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f")


def shown(text: Optional[str]) -> Optional[str]:
    """utc_text_sql's text for people and JSON: '2026-12-07T00:00:00Z' ('...Z BC'), 'infinity'."""
    if text is None or text in ("infinity", "-infinity"):
        return text
    moment, bc = (text[:-3], " BC") if text.endswith(" BC") else (text, "")
    return moment.split(".", 1)[0] + "Z" + bc


def moment_of(text: Optional[str], epoch: Optional[float]) -> Optional[Moment]:
    return None if text is None else Moment(parse_utc(text), shown(text), epoch, text)


class Partition(NamedTuple):
    name: str
    bound: str                            # pg_get_expr(relpartbound): FOR VALUES ... / DEFAULT
    lower: Optional[datetime.datetime]    # naive UTC (clamped); None: MINVALUE (or the DEFAULT partition)
    upper: Optional[datetime.datetime]    # naive UTC (clamped); None: MAXVALUE (or the DEFAULT partition)
    detach_pending: bool = False          # a DETACH ... CONCURRENTLY that did not finish
    rows_estimate: Optional[int] = None
    lower_moment: Optional[Moment] = None  # the exact bound (text, epoch); None as lower
    upper_moment: Optional[Moment] = None

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

    def is_day(self, partitioning: Partitioning = SPANS_PARTITIONING) -> bool:
        """Named spans_pYYYYMMDD and bounded by exactly that UTC day."""
        day = day_of(self.name, partitioning)
        return day is not None and self.lower == midnight(day) and self.upper == midnight(day) + DAY

    def is_history(self, partitioning: Partitioning = SPANS_PARTITIONING) -> bool:
        """spans_history FROM (MINVALUE) TO (a UTC midnight)."""
        return (self.name == partitioning.history and self.lower is None and self.upper is not None
                and "MINVALUE" in self.bound.upper() and self.upper.time() == datetime.time()
                and self.upper not in (datetime.datetime.min, datetime.datetime.max))


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

    def named(self, name: str) -> Optional[Partition]:
        return next((p for p in self.partitions if p.name == name), None)

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

    def finite_moments(self) -> List[Moment]:
        found = [m for p in self.ranged for m in (p.lower_moment, p.upper_moment) if m is not None]
        return sorted(found, key=lambda m: m.epoch)

    def finite_bounds(self) -> List[datetime.datetime]:
        return [m.at for m in self.finite_moments()]

    def oldest_moment(self) -> Optional[Moment]:
        moments = self.finite_moments()
        return moments[0] if moments else None

    def newest_moment(self) -> Optional[Moment]:
        moments = self.finite_moments()
        return moments[-1] if moments else None

    def oldest_bound(self) -> Optional[datetime.datetime]:
        moment = self.oldest_moment()
        return moment.at if moment else None

    def newest_bound(self) -> Optional[datetime.datetime]:
        moment = self.newest_moment()
        return moment.at if moment else None

    def start(self) -> Optional[datetime.datetime]:
        """Where the partitions' span begins: the lowest lower bound (a MINVALUE
        partition's upper bound, as nothing below it can be missing); None
        without any ranged partition."""
        starts = [p.upper if p.lower is None else p.lower for p in self.ranged]
        starts = [s for s in starts if s is not None]
        return min(starts) if starts else None


def midnight(day: datetime.date) -> datetime.datetime:
    return datetime.datetime.combine(day, datetime.time())


def day_pattern(partitioning: Partitioning = SPANS_PARTITIONING) -> str:
    return "^%s[0-9]{8}$" % re.escape(partitioning.day_prefix)


def day_of(name: str, partitioning: Partitioning = SPANS_PARTITIONING) -> Optional[datetime.date]:
    """The day a day partition's name says, or None when it is not one."""
    if not re.fullmatch(day_pattern(partitioning)[1:-1], name):
        return None
    digits = name[len(partitioning.day_prefix):]
    try:
        return datetime.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


def day_name(day: datetime.date, partitioning: Partitioning = SPANS_PARTITIONING) -> str:
    """spans_pYYYYMMDD, the year always four digits (strftime does not pad years before 1000 everywhere)."""
    return "%s%04d%02d%02d" % (partitioning.day_prefix, day.year, day.month, day.day)


def server_major(conn) -> int:
    cursor = conn.cursor()
    cursor.execute("select current_setting('server_version_num')::int / 10000")
    return int(cursor.fetchone()[0])


def read_layout(conn, schema: str, partitioning: Partitioning = SPANS_PARTITIONING) -> Layout:
    pending = "i.inhdetachpending" if server_major(conn) >= 14 else "false"
    cursor = conn.cursor()
    cursor.execute(_LAYOUT_SQL.format(pending=pending, lower_text=utc_text_sql("lower_bound"),
                                      upper_text=utc_text_sql("upper_bound"), lower_epoch=epoch_sql("lower_bound"),
                                      upper_epoch=epoch_sql("upper_bound")),
                   (schema, partitioning.table, schema, day_pattern(partitioning)))
    kind = strategy = None
    key: Tuple[str, ...] = ()
    parts, standalone = [], []
    for (row_type, name, kind_or_strategy, row_key, bound, lower, upper, lower_epoch, upper_epoch, detaching,
         estimate) in cursor.fetchall():
        if row_type == "parent":
            kind, strategy, key = name, kind_or_strategy, tuple(row_key or ())
        elif row_type == "partition":
            parts.append(Partition(name, bound or "", parse_utc(lower), parse_utc(upper), bool(detaching),
                                   None if estimate is None else int(estimate), moment_of(lower, lower_epoch),
                                   moment_of(upper, upper_epoch)))
        else:
            standalone.append(name)
    parts.sort(key=lambda p: (p.is_default, p.lower is not None, p.lower or datetime.datetime.min))
    return Layout(schema, kind, strategy, key, tuple(parts), tuple(sorted(standalone)), partitioning)


def server_now(conn) -> datetime.datetime:
    """The server's clock, naive UTC: every decision uses it, never this machine's."""
    cursor = conn.cursor()
    cursor.execute("select %s" % utc_text_sql("now()"))
    return parse_utc(cursor.fetchone()[0])


def utc_literal(moment: datetime.datetime) -> str:
    """A timestamptz literal for SQL, in UTC (a moment Python holds: years 1 to 9999)."""
    return "'%04d-%02d-%02d %02d:%02d:%02d+00'" % (moment.year, moment.month, moment.day, moment.hour,
                                                  moment.minute, moment.second)


# The start of a retention window, on the server: now() minus the window, or
# PostgreSQL's earliest timestamp when the window reaches further back (every
# window the grammar accepts works: 999999w is 19,000 years).
_WINDOW_SQL = """
select {text}, {epoch} from (
  select case when extract(epoch from now()) - %s::float8 > extract(epoch from timestamptz '4714-11-24 00:00:00+00 BC')
              then now() - make_interval(secs => %s::float8)
              else timestamptz '4714-11-24 00:00:00+00 BC' end as ws) w
"""


def window_start(conn, seconds: float) -> Moment:
    """now() - seconds on the server, as a Moment (its text is exact; `at` is clamped)."""
    cursor = conn.cursor()
    cursor.execute(_WINDOW_SQL.format(text=utc_text_sql("ws"), epoch=epoch_sql("ws")), (seconds, seconds))
    text, epoch = cursor.fetchone()
    return moment_of(text, epoch)


def timestamptz_sql(moment: Moment) -> str:
    """A Moment back as a timestamptz literal, exact (the text utc_text_sql gave)."""
    if moment.exact in ("infinity", "-infinity"):
        return "'%s'::timestamptz" % moment.exact
    text, bc = (moment.exact[:-3], " BC") if moment.exact.endswith(" BC") else (moment.exact, "")
    return "'%s+00%s'::timestamptz" % (text.replace("T", " "), bc)


class DefaultRows(NamedTuple):
    rows: int
    oldest: Optional[Moment]
    newest: Optional[Moment]


def default_rows(conn, layout: Layout) -> DefaultRows:
    """Rows in the DEFAULT partition, the oldest and newest start_time. It
    should be empty or nearly; counting it is a scan of what it holds."""
    if layout.default is None:
        return DefaultRows(0, None, None)
    key = db.quote_ident(layout.partitioning.key)
    cursor = conn.cursor()
    cursor.execute("select m.n, {lo}, {hi}, {lo_e}, {hi_e} from (select count(*) as n, min({k}) as lo, "
                   "max({k}) as hi from {s}.{t}) m".format(
                       lo=utc_text_sql("m.lo"), hi=utc_text_sql("m.hi"), lo_e=epoch_sql("m.lo"),
                       hi_e=epoch_sql("m.hi"), k=key, s=db.quote_ident(layout.schema),
                       t=db.quote_ident(layout.default.name)))
    row = cursor.fetchone()
    rows, oldest, newest, oldest_epoch, newest_epoch = row
    return DefaultRows(int(rows), moment_of(oldest, oldest_epoch), moment_of(newest, newest_epoch))


def default_has_rows(conn, layout: Layout) -> bool:
    """Whether the DEFAULT partition holds any row: one row read, never a scan."""
    if layout.default is None:
        return False
    cursor = conn.cursor()
    cursor.execute("select exists (select 1 from %s.%s)"
                   % (db.quote_ident(layout.schema), db.quote_ident(layout.default.name)))
    return bool(cursor.fetchone()[0])


def record_exists(conn, schema: str) -> bool:
    cursor = conn.cursor()
    cursor.execute("select to_regclass(%s) is not null", ("%s.%s" % (db.quote_ident(schema), RECORD_TABLE),))
    return bool(cursor.fetchone()[0])


def adopted_as_found(conn, schema: str, partitioning: Partitioning = SPANS_PARTITIONING) -> bool:
    """Whether revision 2 found spans partitioned by the operator and left it as it
    was (recorded 'found' in otelmig's record table): then the operator keeps its
    partitions, and verify does not ask for otelmig's days ahead or DEFAULT."""
    if not record_exists(conn, schema):
        return False
    cursor = conn.cursor()
    cursor.execute("select exists (select 1 from %s.%s where object_kind = 'partitioning' and object_name = %%s "
                   "and origin = 'found')" % (db.quote_ident(schema), RECORD_TABLE), (partitioning.table,))
    return bool(cursor.fetchone()[0])


# -- whose partitions ------------------------------------------------------------------

# Kinds of the record for what a DEFAULT promotion (otelmig/default_partition.py)
# makes while it runs: each recorded before it is made, all removed by its
# repair if the run stops (kind 'partition' once a table is attached).
WORK_TABLE_KIND = "maintain_table"
WORK_KINDS = (WORK_TABLE_KIND, "maintain_function", "maintain_trigger")


class Ownership(NamedTuple):
    """What the record says is otelmig's."""
    recorded: FrozenSet[str]      # partitions recorded as created (kind 'partition')
    any_recorded: bool            # the record names any partition at all (else: a store converted before it did)
    work: FrozenSet[str]          # tables a DEFAULT promotion made and has not finished with
    detaching: FrozenSet[str] = frozenset()  # partitions maintain began to detach (kind DETACHING_KIND)


NOTHING_RECORDED = Ownership(frozenset(), False, frozenset())


def read_ownership(conn, schema: str) -> Ownership:
    if not record_exists(conn, schema):
        return NOTHING_RECORDED
    cursor = conn.cursor()
    cursor.execute("select object_kind, object_name, origin from %s.%s where object_kind in (%%s, %%s, %%s)"
                   % (db.quote_ident(schema), RECORD_TABLE), (PARTITION_KIND, WORK_TABLE_KIND, DETACHING_KIND))
    rows = cursor.fetchall()
    partitions = [(name, origin) for kind, name, origin in rows if kind == PARTITION_KIND]
    return Ownership(frozenset(name for name, origin in partitions if origin == "created"), bool(partitions),
                     frozenset(name for kind, name, _ in rows if kind == WORK_TABLE_KIND),
                     frozenset(name for kind, name, _ in rows if kind == DETACHING_KIND))


def adoptable(layout: Layout, ownership: Ownership) -> List[str]:
    """In a store converted before partitions were recorded: the partitions
    attached with exactly our names and bounds (see the module's docstring)."""
    if ownership.any_recorded:
        return []
    spec = layout.partitioning
    return [p.name for p in layout.partitions
            if p.is_day(spec) or p.is_history(spec) or (p.is_default and p.name == spec.default)]


# -- deciding ------------------------------------------------------------------------

MAX_FILL_DAYS = 366  # past days without a partition are made back this far at most


class NewPartition(NamedTuple):
    name: str
    lower: datetime.datetime
    upper: datetime.datetime


class Decision(NamedTuple):
    """What maintain would do now; plan and verify show it, maintain does it."""
    create: List[NewPartition]   # today to today + ahead: days no partition holds
    drop: List[str]              # our attached partitions wholly older than the window
    finalize: List[str]          # our concurrent detaches left pending (then dropped when old)
    drop_detached: List[str]     # our day tables detached already, wholly older than the window
    conflicts: List[str]         # what keeps a coming day from being created
    window_start: Optional[datetime.datetime]
    fill: List[NewPartition] = []     # past days inside the partitions' span that no partition holds
    kept: List[str] = []              # tables retention leaves, and why
    adopt: List[str] = []             # partitions to record as otelmig's (a store converted before the record)


def decide(layout: Layout, now: datetime.datetime, ahead_days: int,
           window: Optional[datetime.datetime], ownership: Ownership = NOTHING_RECORDED) -> Decision:
    """Pure: from the layout, the server's now and the record, what to create,
    drop and keep. `window` is the start of the retention window (None: no
    retention); datetime.min when it lies before year 1 (then nothing is dropped
    whole: only rows are deleted, exactly, by the server)."""
    spec = layout.partitioning
    adopt = adoptable(layout, ownership)
    ours = ownership.recorded | frozenset(adopt)
    create, conflicts = _coming_days(layout, now.date(), ahead_days, ownership.work)
    fill = _past_days(layout, now.date(), window, ownership.work)
    finalize = [p.name for p in layout.ranged if p.detach_pending and p.name in ours]
    drop, drop_detached, kept = [], [], []
    if window is not None and window > datetime.datetime.min:
        for p in layout.ranged:
            if p.upper is None or p.upper > window:
                continue
            if p.name not in ours:
                kept.append("kept %s.%s: not made by otelmig (not recorded in %s.%s), so never dropped; its "
                            "rows older than the window are deleted" % (layout.schema, p.name, layout.schema,
                                                                        RECORD_TABLE))
            elif p.detach_pending:
                drop_detached.append(p.name)
            else:
                drop.append(p.name)
        for name in layout.standalone_days:
            day = day_of(name, spec)
            if name in ownership.work or day is None or midnight(day) + DAY > window:
                continue
            if name in ours and name in ownership.detaching:  # maintain's own detach, stopped before its drop
                drop_detached.append(name)
            elif name in ours:
                kept.append("kept %s.%s: otelmig made it, but it was detached from %s.%s by hand (maintain records "
                            "its own detaches), so its rows are set aside: never dropped; drop it yourself when "
                            "they are no longer needed" % (layout.schema, name, layout.schema, spec.table))
            else:
                kept.append("kept %s.%s: not a partition of %s.%s and not made by otelmig: left as it is"
                            % (layout.schema, name, layout.schema, spec.table))
    return Decision(create, drop, finalize, drop_detached, conflicts, window, fill, kept, adopt)


def _coming_days(layout: Layout, today: datetime.date, ahead_days: int, work: FrozenSet[str]):
    create, conflicts = [], []
    spec = layout.partitioning
    for offset in range(ahead_days + 1):
        day = today + offset * DAY
        lower = midnight(day)
        upper = lower + DAY
        if layout.covering(lower, upper) is not None:
            continue
        name = day_name(day, spec)
        overlapping = layout.overlapping(lower, upper)
        if name in layout.standalone_days and name not in work:
            conflicts.append("%s.%s exists but is not a partition of %s.%s: attach it or drop it"
                             % (layout.schema, name, layout.schema, spec.table))
        elif overlapping or any(p.name == name for p in layout.partitions):
            conflicts.append("day %s cannot get a partition of its own: %s already holds part of it"
                             % (day, ", ".join(p.name for p in overlapping) or name))
        else:
            create.append(NewPartition(name, lower, upper))
    return create, conflicts


def _past_days(layout: Layout, today: datetime.date, window: Optional[datetime.datetime], work: FrozenSet[str]):
    """Days before today, inside the span the partitions cover (from the lowest
    bound on), that no partition holds: a gap, or days maintain did not run
    for; rows of such a day wait in DEFAULT. Not those wholly older than the
    retention window, nor further back than MAX_FILL_DAYS; a day some
    partition holds part of, or whose name a table of the operator has, is
    the operator's layout and is left."""
    start = layout.start()
    if start is None or layout.default is None:
        return []
    first = max(start, midnight(today) - MAX_FILL_DAYS * DAY)
    if window is not None:
        first = max(first, datetime.datetime.combine(window.date(), datetime.time()))
    found = []
    day = first.date() if first.time() == datetime.time() else first.date() + DAY
    while day < today:
        lower, upper = midnight(day), midnight(day) + DAY
        name = day_name(day, layout.partitioning)
        if (not layout.overlapping(lower, upper) and layout.named(name) is None
                and (name not in layout.standalone_days or name in work)):
            found.append(NewPartition(name, lower, upper))
        day += DAY
    return found


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
