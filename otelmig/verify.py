"""verify: the live catalog against the head contract (otelmig/schema.py).

One catalog round trip per kind (columns, indexes and constraints), never one
per column, so the cost does not grow with the data: it reads pg_catalog only.
"""

import time
from typing import Dict, List, NamedTuple, Optional

from otelmig import db, output, runlog, schema as contract
from otelmig._version import HEAD_REVISION
from otelmig.state import assess, read_state
from otelmig.errors import PROGRAM, ExitStatus, PendingError

# Nullable: 18 also sets attnotnull for a NOT NULL ... NOT VALID constraint (kept in
# pg_constraint, contype 'n'), which existing rows were never checked against.
_COLUMNS_SQL = """
select c.relname::text, c.relkind::text, a.attname::text, format_type(a.atttypid, a.atttypmod),
       not a.attnotnull or exists (select 1 from pg_constraint nn where nn.conrelid = c.oid and nn.contype = 'n'
                                   and not nn.convalidated and nn.conkey[1] = a.attnum),
       pg_get_expr(d.adbin, d.adrelid), a.attidentity::text,
       pg_get_userbyid(c.relowner)::text, pg_has_role(c.relowner, 'USAGE'),
       coalesce((select array_agg(pa.attname::text order by k.n)
                 from pg_partitioned_table pt
                 cross join lateral unnest(pt.partattrs::int2[]) with ordinality k(attnum, n)
                 join pg_attribute pa on pa.attrelid = pt.partrelid and pa.attnum = k.attnum
                 where pt.partrelid = c.oid), '{}')
from pg_class c
join pg_namespace n on n.oid = c.relnamespace
left join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
left join pg_attrdef d on d.adrelid = c.oid and d.adnum = a.attnum
where n.nspname = %s and c.relkind in ('r', 'p', 'v', 'm', 'f') and not c.relispartition
order by c.relname, a.attnum
"""

_INDEXES_SQL = """
select i.relname::text, t.relname::text, am.amname::text, x.indisunique, x.indisprimary, x.indisvalid,
       x.indisready, pg_get_expr(x.indpred, x.indrelid),
       array(select pg_get_indexdef(x.indexrelid, k, true)
                    || case when x.indoption[k - 1] & 1 = 1 then ' DESC' else '' end
             from generate_series(1, x.indnkeyatts) k order by k),
       coalesce((select conname::text from pg_constraint where conindid = x.indexrelid and contype = 'p'), '')
from pg_index x
join pg_class i on i.oid = x.indexrelid
join pg_class t on t.oid = x.indrelid
join pg_namespace n on n.oid = t.relnamespace
join pg_am am on am.oid = i.relam
where n.nspname = %s and not t.relispartition
order by i.relname
"""


class Problem(NamedTuple):
    kind: str
    object: str
    detail: str

    def as_dict(self) -> dict:
        return self._asdict()


class LiveColumn(NamedTuple):
    type: str
    nullable: bool
    default: str
    identity: str


class LiveIndex(NamedTuple):
    name: str
    table: str
    method: str
    unique: bool
    primary: bool
    valid: bool
    predicate: str
    keys: tuple
    constraint: str


class Relation(NamedTuple):
    kind: str             # relkind: 'r' table, 'p' partitioned table, ...
    owner: str
    ours_to_alter: bool   # the current role is the owner or a member of it
    partition_key: tuple  # column names, for a partitioned table


class LiveCatalog(NamedTuple):
    """What verify reads: partitions and their indexes are folded into their parent."""
    relations: Dict[str, Dict[str, LiveColumn]]  # relation -> column -> shape
    kinds: Dict[str, str]
    indexes: Dict[str, LiveIndex]
    details: Dict[str, Relation]


class Report(NamedTuple):
    problems: List[Problem]
    extras: List[Problem]
    legacy: bool
    facts: dict = {}  # what verify read besides the contract (DEFAULT rows, days ahead, outliers): JSON fields


def read_catalog(conn, schema: str) -> LiveCatalog:
    cursor = conn.cursor()
    cursor.execute(_COLUMNS_SQL, (schema,))
    relations: Dict[str, Dict[str, LiveColumn]] = {}
    kinds: Dict[str, str] = {}
    details: Dict[str, Relation] = {}
    for table, kind, column, type_, nullable, default, identity, owner, ours, key in cursor.fetchall():
        kinds[table] = kind
        details[table] = Relation(kind, owner, bool(ours), tuple(key or ()))
        columns = relations.setdefault(table, {})
        if column is not None:
            columns[column] = LiveColumn(type_, nullable, default or "", identity or "")
    cursor.execute(_INDEXES_SQL, (schema,))
    indexes = {row[0]: LiveIndex(row[0], row[1], row[2], row[3], row[4], row[5] and row[6], row[7] or "",
                                 tuple(row[8]), row[9]) for row in cursor.fetchall()}
    return LiveCatalog(relations, kinds, indexes, details)


def compare(schema: str, catalog: LiveCatalog, wanted: contract.Contract = contract.HEAD) -> Report:
    """The catalog against a contract: the head's, or a revision's frozen one (adoption)."""
    relations, kinds, indexes = catalog.relations, catalog.kinds, catalog.indexes
    problems: List[Problem] = []
    extras: List[Problem] = []
    for table in wanted.tables:
        live = relations.get(table.name) if kinds.get(table.name) in ("r", "p") else None
        name = "%s.%s" % (schema, table.name)
        if live is None:
            problems.append(Problem("missing_table", name, "expected table %s, found none" % name))
            continue
        problems += _compare_columns(name, table, live)
        extras += [Problem("extra_column", "%s.%s" % (name, c), "column %s (%s) is not in the contract" % (c, col.type))
                   for c, col in live.items() if table.column(c) is None]
        key = catalog.details[table.name].partition_key if table.name in catalog.details else ()
        problems += _compare_partitioning(name, table, kinds.get(table.name), key)
        pk_problems, pk_notes = _compare_primary_key(schema, table, indexes, key)
        problems += pk_problems
        extras += pk_notes
    problems += _compare_indexes(schema, indexes, relations, wanted.indexes)
    expected_tables = {t.name for t in wanted.tables} | set(contract.OWN_TABLES)
    extras += [Problem("extra_relation", "%s.%s" % (schema, name), "%s is not in the contract" % _kind(kinds[name]))
               for name in sorted(relations) if name not in expected_tables]
    wanted_indexes = {i.name for i in wanted.indexes} | {t.primary_key for t in wanted.tables}
    extras += [Problem("extra_index", "%s.%s" % (schema, i.name), "index on %s (%s) is not in the contract"
                       % (i.table, ", ".join(i.keys)))
               for i in indexes.values() if i.name not in wanted_indexes and i.table not in contract.OWN_TABLES]
    legacy = any(col in relations.get(table, {}) for table, cols in contract.LEGACY_ONLY_COLUMNS.items()
                 for col in cols)
    return Report(problems, extras, legacy)


def _kind(relkind: str) -> str:
    return {"v": "view", "m": "materialized view", "f": "foreign table"}.get(relkind, "table")


def _compare_columns(name: str, table: contract.Table, live) -> List[Problem]:
    problems = []
    for column in table.columns:
        obj = "%s.%s" % (name, column.name)
        found = live.get(column.name)
        if found is None:
            problems.append(Problem("missing_column", obj, "expected %s, found none" % column.type))
            continue
        if found.type != column.type:
            problems.append(Problem("wrong_type", obj, "expected %s, found %s" % (column.type, found.type)))
        if found.nullable != column.nullable:
            problems.append(Problem("wrong_nullability", obj, "expected %s, found %s"
                                    % (_null(column.nullable), _null(found.nullable))))
        if not _default_matches(column.default, found):
            problems.append(Problem("wrong_default", obj, "expected %s, found %s"
                                    % (column.default or "no default", found.default or "no default")))
    return problems


def _compare_partitioning(name: str, table: contract.Table, kind, key) -> List[Problem]:
    if not table.partitioned_by or (kind == "p" and tuple(key) == table.partitioned_by):
        return []
    found = "partitioned by (%s)" % ", ".join(key) if kind == "p" else "a plain table"
    return [Problem("not_partitioned", name, "expected partitioned by range (%s), found %s: run `%s upgrade`"
                    % (", ".join(table.partitioned_by), found, PROGRAM))]


def _null(nullable: bool) -> str:
    return "null" if nullable else "not null"


def _default_matches(expected, found: LiveColumn) -> bool:
    if expected == contract.SEQUENCE_DEFAULT:
        return bool(found.identity) or found.default.startswith("nextval(")
    return (expected or "") == found.default and not found.identity


def _compare_primary_key(schema: str, table: contract.Table, indexes, partition_key=()):
    """(problems, notes). A partitioned table's primary key must include the
    partition key (PostgreSQL's rule), so there the contract's key followed by
    partition key columns is accepted, and reported as a note (an extra)."""
    obj = "%s.%s" % (schema, table.primary_key)
    primary = [i for i in indexes.values() if i.table == table.name and i.primary]
    if not primary:
        return [Problem("missing_primary_key", obj, "expected primary key (%s) on %s.%s, found none"
                        % (", ".join(table.primary_key_columns), schema, table.name))], []
    found = primary[0]
    wanted = table.primary_key_columns
    if found.constraint == table.primary_key and found.keys == wanted:
        return [], []
    extended = (partition_key and found.constraint == table.primary_key and found.keys[:len(wanted)] == wanted
                and set(found.keys[len(wanted):]) <= set(partition_key))
    if extended:
        return [], [Problem("partitioned_primary_key", obj, "primary key (%s): the contract's (%s) plus the "
                            "partition key, as PostgreSQL requires on a partitioned table"
                            % (", ".join(found.keys), ", ".join(wanted)))]
    return [Problem("wrong_primary_key", obj, "expected %s (%s), found %s (%s)"
                    % (table.primary_key, ", ".join(wanted), found.constraint, ", ".join(found.keys)))], []


def _compare_indexes(schema: str, indexes, relations, wanted) -> List[Problem]:
    problems = []
    for index in wanted:
        obj = "%s.%s" % (schema, index.name)
        found = indexes.get(index.name)
        if found is None:
            if index.table in relations:
                problems.append(Problem("missing_index", obj, "expected %s on %s (%s), found none"
                                        % (index.method, index.table, ", ".join(index.keys))))
            continue
        if not found.valid:
            problems.append(Problem("invalid_index", obj, "index is INVALID (a failed concurrent build, or a partition "
                                    "without its index attached): "
                                    "rerun `%s upgrade` to rebuild it" % PROGRAM))
        shape = (found.table, found.method, found.keys, found.unique, found.predicate)
        wanted = (index.table, index.method, index.keys, index.unique, "")
        if shape != wanted:
            problems.append(Problem("wrong_index", obj, "expected %s on %s (%s), found %s on %s (%s)%s"
                                    % (index.method, index.table, ", ".join(index.keys), found.method,
                                       found.table, ", ".join(found.keys),
                                       " where " + found.predicate if found.predicate else "")))
    return problems


# The JSON fields of a failed verify (cli adds exit_code, schema, message).
FAILURE_FIELDS = {"head": HEAD_REVISION, "database_revision": None, "ok": False, "problems": [], "extras": []}


def failure_prometheus(schema: str, status) -> str:
    return prometheus_text(schema, status, [], [])


def verify(settings, err, strict: bool = False) -> output.Result:
    started = time.monotonic()
    conn = db.connect(settings.conninfo, probe=True)
    try:
        state = read_state(conn, settings.schema)
        catalog = read_catalog(conn, settings.schema)
        report = with_write_checks(settings.schema, state, compare(settings.schema, catalog))
        report = with_unfinished_runs(conn, settings.schema, report)
        if catalog.kinds.get(contract.SPANS.name) == "p":
            report = with_partition_checks(conn, settings.schema, report)
        # The last run of the history (otelmig/runlog.py), as a fact: it never makes drift.
        report = report._replace(facts=dict(report.facts, last_run=runlog.last_run(conn, settings.schema)))
    finally:
        db.close(conn)
    status, message = _verdict(settings, state, report, strict)
    return _result(settings, status, state, report, message, started)


def with_write_checks(schema: str, state, report: Report) -> Report:
    """What rejects writes, now or from a known moment (state.read_state found it):
    a leftover CHECK on the worker's tables is a problem, one on another table a
    note; a stamp the partitioned spans routes nowhere is a problem."""
    from otelmig.state import describe, fix_for
    problems, extras = list(report.problems), list(report.extras)
    for left in state.leftovers:
        found = Problem("rejects_writes", "%s.%s.%s" % (schema, left.table, left.constraint),
                        "%s: %s" % (describe(schema, left), fix_for(schema, left)))
        (problems if left.worker_table else extras).append(found)
    if state.refused_rows:
        problems.append(Problem("rejects_writes", "%s.%s" % (schema, contract.SPANS.name),
                                "no partition takes a row stamped %s, and there is no DEFAULT partition: every "
                                "such insert fails; run `%s maintain`" % (" nor ".join(state.refused_rows), PROGRAM)))
    facts = dict(report.facts, rejects_writes_from=[left.as_dict() for left in state.leftovers])
    return report._replace(problems=problems, extras=extras, facts=facts)


# What a run that stopped part way left, found by what marks it as otelmig's:
# a trigger or function named otelmig_* whose comment is a run's key (revision
# 2's cutoff step), and an inheritance child of the plain spans named as
# revision 2 names its tables (its holding child, or a partition a stopped
# downgrade made a child). None of it rejects a write; the next upgrade or
# downgrade finishes or undoes it first.
_UNFINISHED_SQL = """
select coalesce(array(
  select 'trigger ' || t.tgname || ' on ' || t.tgrelid::regclass::text from pg_trigger t
  join pg_class c on c.oid = t.tgrelid join pg_namespace n on n.oid = c.relnamespace
  where n.nspname = %s and t.tgname::text like 'otelmig\\_%%' and not t.tgisinternal
  union all
  select 'function ' || p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace
  where n.nspname = %s and p.proname::text like 'otelmig\\_%%' and obj_description(p.oid, 'pg_proc') ~ '^-?[0-9]+$'
  union all
  select 'table ' || i.inhrelid::regclass::text || ' (an inheritance child of spans, its rows visible there)'
  from pg_inherits i join pg_class c on c.oid = i.inhparent join pg_namespace n on n.oid = c.relnamespace
  join pg_class k on k.oid = i.inhrelid
  where n.nspname = %s and c.relname = 'spans' and c.relkind = 'r'
    and k.relname::text ~ '^spans_(outliers|default|p[0-9]{8})$'
  order by 1), '{}')"""


def unfinished_runs(conn, schema: str) -> List[str]:
    cursor = conn.cursor()
    cursor.execute(_UNFINISHED_SQL, (schema, schema, schema))
    return list(cursor.fetchone()[0])


def with_unfinished_runs(conn, schema: str, report: Report) -> Report:
    left = unfinished_runs(conn, schema)
    if not left:
        return report
    found = Problem("unfinished_run", "%s.%s" % (schema, contract.SPANS.name),
                    "a run stopped part way and left %s; none of it rejects a write: `%s upgrade` "
                    "finishes the revision (or `%s downgrade` undoes it), and either removes them first"
                    % ("; ".join(left), PROGRAM, PROGRAM))
    return report._replace(problems=report.problems + [found],
                           facts=dict(report.facts, unfinished_run=left))


def with_partition_checks(conn, schema: str, report: Report) -> Report:
    """A partitioned spans (otelmig.schema.SPANS_PARTITIONING): partitions for
    today and the coming days, no gaps, a DEFAULT partition, every parent index
    attached and valid on every partition (problems); rows in the DEFAULT
    partition (a note). Partitions carry the parent's columns by construction.
    A layout the operator made, which revision 2 adopted as found, is checked
    for gaps and unfinished detaches only: its partitions are the operator's."""
    from otelmig import default_partition, partitions

    layout = partitions.read_layout(conn, schema)
    if layout.problem():
        return report
    spans = "%s.%s" % (schema, layout.partitioning.table)
    fix = "run `%s maintain`" % PROGRAM
    if partitions.adopted_as_found(conn, schema, layout.partitioning):
        return Report(report.problems + _gap_problems(spans, layout) + _pending_problems(schema, layout, fix),
                      report.extras, report.legacy)
    decision = partitions.decide(layout, partitions.server_now(conn), layout.partitioning.ahead_days, None,
                                 partitions.read_ownership(conn, schema))
    problems = [Problem("missing_partition", "%s.%s" % (schema, new.name), "no partition holds %s to %s (today "
                        "and the next %d days need one; meanwhile rows go to the DEFAULT partition): %s"
                        % (new.lower, new.upper, layout.partitioning.ahead_days, fix)) for new in decision.create]
    problems += [Problem("missing_partition", spans, conflict) for conflict in decision.conflicts]
    problems += _gap_problems(spans, layout) + _pending_problems(schema, layout, fix)
    problems += [Problem("maintain_leftover", name, "left by a maintain that stopped while it made day partitions "
                         "out of the DEFAULT partition (%s; it rejects no write): the next maintain, upgrade or "
                         "downgrade removes it first" % what)
                 for name, what in default_partition.leftovers(conn, schema)]
    problems += [Problem("partition_index_missing", "%s.%s" % (schema, part), "lacks index %s of %s (never "
                         "attached, or invalid): create it on the partition and ALTER INDEX %s.%s ATTACH PARTITION "
                         "it" % (index, spans, schema, index))
                 for part, index in partitions.partitions_without_index(conn, schema)]
    extras = []
    facts = dict(report.facts, default_partition=None,
                 partitions_ahead_days=days_ahead(layout, partitions.server_now(conn)))
    if layout.default is None:
        problems.append(Problem("missing_default_partition", spans, "no DEFAULT partition: a row outside every "
                                "partition is rejected; CREATE TABLE %s.%s PARTITION OF %s DEFAULT"
                                % (schema, layout.partitioning.default, spans)))
    else:
        held = default_rows(conn, schema, layout.default.name, layout.partitioning.key)
        facts["default_partition"] = held
        if held["rows"]:
            extras.append(Problem("default_partition_rows", "%s.%s" % (schema, layout.default.name),
                                  "the DEFAULT partition holds %d row(s) no other partition covers, %s from %s to "
                                  "%s; `%s maintain` moves those of the coming days into their partitions "
                                  "and reports the rest" % (held["rows"], layout.partitioning.key, held["oldest"],
                                                            held["newest"], PROGRAM)))
    facts["outliers"] = outliers(conn, schema, layout.partitioning.ahead_days + 1)
    extras += outlier_notes(schema, facts["outliers"])
    return Report(report.problems + problems, report.extras + extras, report.legacy, facts)


def days_ahead(layout, now) -> Optional[int]:
    """How many whole UTC days after today the partitions hold without a break
    (0: today only; None: not even today). Counted up to MAX_DAYS_AHEAD."""
    import datetime
    day = datetime.datetime.combine(now.date(), datetime.time())
    held = -1
    while held < MAX_DAYS_AHEAD and layout.covering(day, day + datetime.timedelta(days=1)) is not None:
        held += 1
        day += datetime.timedelta(days=1)
    return None if held < 0 else held


MAX_DAYS_AHEAD = 366

# Every value as UTC text, never a timestamp for Python to parse: a span in year
# 56890, BC or at infinity is a row like any other here.
_DEFAULT_ROWS_SQL = """
select count(*), (min({key}) at time zone 'UTC')::text, (max({key}) at time zone 'UTC')::text from {table}
"""


def default_rows(conn, schema: str, default: str, key: str) -> dict:
    """Rows in the DEFAULT partition: count, oldest and newest (a scan of what it holds, meant to be little)."""
    cursor = conn.cursor()
    cursor.execute(_DEFAULT_ROWS_SQL.format(key=db.quote_ident(key), table="%s.%s" % (
        db.quote_ident(schema), db.quote_ident(default))))
    rows, oldest, newest = cursor.fetchone()
    return {"rows": int(rows), "oldest": _utc_text(oldest), "newest": _utc_text(newest)}


def _utc_text(text):
    return None if text is None else text if text in ("infinity", "-infinity") else text + " UTC"


# Spans stamped at or after a UTC midnight `days` ahead of the server's now: on a
# partitioned spans, partition pruning reads only the partitions past it and the
# DEFAULT one; on a plain one, a loose scan of ix_spans_service_start_time (one
# index range per service, as revision 2 finds its newest row), never the table.
_OUTLIERS_SQL = """
with recursive since(at) as (select date_trunc('day', now() at time zone 'UTC') at time zone 'UTC'
                                    + make_interval(days => %s)),
{source}
select ((select at from since) at time zone 'UTC')::text, count(*),
       (select coalesce(json_agg(json_build_object('id', f.id, '{key}', f.shown) order by f.at desc), '[]')
        from (select o.id, o.at, (o.at at time zone 'UTC')::text as shown from outlying o
              order by o.at desc limit 5) f)
from outlying
"""
_PARTITIONED_SOURCE = """outlying as (select t.id, t.{key} as at from {spans} t, since where t.{key} >= since.at)"""
_LOOSE_SOURCE = """services(name) as (
  (select service_name from {spans} order by service_name limit 1)
  union all
  select (select s.service_name from {spans} s where s.service_name > services.name order by s.service_name limit 1)
  from services where services.name is not null),
outlying as (select t.id, t.{key} as at from services, since
             cross join lateral (select id, {key} from {spans} t where t.service_name = services.name
                                 and t.{key} >= since.at) t
             where services.name is not null)"""


def outliers(conn, schema: str, days: int, key: str = "start_time", loose: bool = False) -> dict:
    """Spans stamped at or after the UTC midnight `days` after the server's now:
    count, the moment, and the newest few (id and value, as UTC text)."""
    spans = "%s.%s" % (db.quote_ident(schema), db.quote_ident(contract.SPANS.name))
    source = (_LOOSE_SOURCE if loose else _PARTITIONED_SOURCE).format(key=db.quote_ident(key), spans=spans)
    cursor = conn.cursor()
    cursor.execute(_OUTLIERS_SQL.format(source=source, key=key), (days,))
    since, count, newest = cursor.fetchone()
    return {"since": _utc_text(since), "count": int(count),
            "newest": [{"id": row["id"], key: _utc_text(row[key])} for row in newest or ()]}


def outlier_notes(schema: str, found: dict) -> List[Problem]:
    if not found["count"]:
        return []
    shown = ", ".join("id %s at %s" % (row["id"], row["start_time"]) for row in found["newest"])
    return [Problem("outlying_rows", "%s.%s" % (schema, contract.SPANS.name),
                    "%d span(s) stamped at or after %s (past the days partitions are kept for), newest: %s; they "
                    "stay queryable (check the writer's clock and units)" % (found["count"], found["since"], shown))]


def _gap_problems(spans: str, layout) -> List[Problem]:
    return [Problem("partition_gap", spans, "no partition holds %s to %s: rows there go to the DEFAULT partition, "
                    "or are rejected without one" % gap) for gap in layout.gaps()]


def _pending_problems(schema: str, layout, fix: str) -> List[Problem]:
    return [Problem("partition_detach_pending", "%s.%s" % (schema, p.name), "a DETACH ... CONCURRENTLY did not "
                    "finish: %s (it finalizes it)" % fix) for p in layout.ranged if p.detach_pending]


def _verdict(settings, state, report: Report, strict: bool):
    error = assess(state)
    problems = report.problems
    if error is not None and error.exit_status == ExitStatus.NOT_INITIALISED:
        if report.legacy:
            return error.exit_status, ("schema %s holds the legacy runtime layout (start_ts, status, attributes, "
                                       "no migrations recorded): run `%s upgrade` to adopt it"
                                       % (settings.schema, PROGRAM))
        if state.unpartitioned:  # recorded at the head over the layout before it (stamped)
            return error.exit_status, error.message
        if state.revision is not None:  # at head, a table is missing: that is drift
            error = None
        else:
            return error.exit_status, error.message
    rejecting = [p for p in problems if p.kind == "rejects_writes"]
    if error is not None:
        kind = "pending_revision" if isinstance(error, PendingError) else "unknown_revision"
        problems.insert(0, Problem(kind, "%s.%s" % (settings.schema, contract.VERSION_TABLE),
                                   "expected %s, found %s" % (HEAD_REVISION, state.revision)))
        if not (rejecting and isinstance(error, PendingError)):
            return error.exit_status, error.message
    if rejecting:  # before anything else: the worker's inserts fail, or will
        return ExitStatus.DRIFT, "%s; see the report" % rejecting[0].detail
    if problems or (strict and report.extras):
        counted = problems + (report.extras if strict else [])
        return ExitStatus.DRIFT, ("schema %s differs from the head contract: %d problem(s)%s; see the report"
                                  % (settings.schema, len(counted), " (--strict counts extras)" if strict else ""))
    return ExitStatus.OK, ""


def _result(settings, status, state, report, message, started) -> output.Result:
    problems, extras = report.problems, report.extras
    payload = {"exit_code": int(status), "schema": settings.schema, "ok": status == ExitStatus.OK,
               "head": HEAD_REVISION, "database_revision": state.revision,
               "problems": [p.as_dict() for p in problems], "extras": [p.as_dict() for p in extras],
               "seconds": round(time.monotonic() - started, 4)}
    payload.update(report.facts)
    if message:
        payload["message"] = message
    return output.Result(int(status), payload, _text(settings.schema, status, problems, extras, report.facts),
                         prometheus_text(settings.schema, status, problems, extras, state.leftovers, report.facts),
                         message)


def _text(schema: str, status, problems, extras, facts=None) -> str:
    lines = []
    if status == ExitStatus.OK:
        lines.append("ok: schema %s matches the head contract" % schema)
    facts = facts or {}
    if "partitions_ahead_days" in facts:
        ahead = facts["partitions_ahead_days"]
        lines.append("partitions: %s" % ("none holds today" if ahead is None else
                                         "today and the next %d day(s)" % ahead))
    if facts.get("last_run"):
        lines.append("last run: %s" % runlog.describe_run(facts["last_run"]))
    rows = [("problem", p) for p in problems] + [("extra", p) for p in extras]
    if rows:
        width_kind = max(len(p.kind) for _, p in rows)
        width_obj = max(len(p.object) for _, p in rows)
        lines.append("%-7s  %-*s  %-*s  %s" % ("", width_kind, "kind", width_obj, "object", "detail"))
        for label, p in rows:
            lines.append("%-7s  %-*s  %-*s  %s" % (label, width_kind, p.kind, width_obj, p.object, p.detail))
    return "\n".join(lines)


def prometheus_text(schema: str, status, problems, extras, leftovers=(), facts=None) -> str:
    from otelmig.check import rejects_writes_gauge
    label = '{schema="%s"}' % schema
    facts = facts or {}
    gauges = rejects_writes_gauge(label, leftovers)
    if facts.get("default_partition") is not None:
        gauges += ["# HELP otelmig_verify_default_rows Rows in the DEFAULT partition of spans.",
                   "# TYPE otelmig_verify_default_rows gauge",
                   "otelmig_verify_default_rows%s %d" % (label, facts["default_partition"]["rows"])]
    if facts.get("partitions_ahead_days") is not None:
        gauges += ["# HELP otelmig_verify_partition_days_ahead Whole UTC days after today partitions hold.",
                   "# TYPE otelmig_verify_partition_days_ahead gauge",
                   "otelmig_verify_partition_days_ahead%s %d" % (label, facts["partitions_ahead_days"])]
    last = facts.get("last_run")
    if last and last.get("exit_code") is not None:
        gauges += ["# HELP otelmig_last_run_exit_code Exit code of the last recorded run (upgrade, downgrade, "
                   "stamp, maintain).",
                   "# TYPE otelmig_last_run_exit_code gauge",
                   "otelmig_last_run_exit_code%s %d" % (label, last["exit_code"])]
    if "outliers" in facts:
        gauges += ["# HELP otelmig_verify_outlying_rows Spans stamped past the days partitions are kept for.",
                   "# TYPE otelmig_verify_outlying_rows gauge",
                   "otelmig_verify_outlying_rows%s %d" % (label, facts["outliers"]["count"])]
    lines = [
        "# HELP otelmig_verify_ok 1 when the schema matches the head contract.",
        "# TYPE otelmig_verify_ok gauge",
        "otelmig_verify_ok%s %d" % (label, 1 if status == ExitStatus.OK else 0),
        "# HELP otelmig_verify_problems Problems found by the last verify.",
        "# TYPE otelmig_verify_problems gauge",
        "otelmig_verify_problems%s %d" % (label, len(problems)),
        "# HELP otelmig_verify_extras Operator additions beyond the contract.",
        "# TYPE otelmig_verify_extras gauge",
        "otelmig_verify_extras%s %d" % (label, len(extras)),
        "# HELP otelmig_verify_exit_code Exit code of the last verify.",
        "# TYPE otelmig_verify_exit_code gauge",
        "otelmig_verify_exit_code%s %d" % (label, int(status)),
        "# HELP otelmig_verify_timestamp_seconds When the last verify ran.",
        "# TYPE otelmig_verify_timestamp_seconds gauge",
        "otelmig_verify_timestamp_seconds%s %.3f" % (label, time.time()),
    ] + gauges
    return "\n".join(lines) + "\n"


