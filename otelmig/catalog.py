"""The live catalog of a store, read in one round trip per kind, and compared
with a contract (otelmig/schema.py): what verify reports, what upgrade checks
after a revision and before its first change (otelmig/preflight.py,
otelmig/compat.py), and the spans stamped far ahead that plan and verify
count.

It reads pg_catalog only (and, for outliers, the newest spans through an
index or partition pruning), so the cost does not grow with the data.
"""

from typing import Dict, List, NamedTuple

from otelmig import db, schema as contract
from otelmig.errors import PROGRAM

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
                                    "`%s repair` rebuilds it" % PROGRAM))
        shape = (found.table, found.method, found.keys, found.unique, found.predicate)
        wanted = (index.table, index.method, index.keys, index.unique, "")
        if shape != wanted:
            problems.append(Problem("wrong_index", obj, "expected %s on %s (%s), found %s on %s (%s)%s"
                                    % (index.method, index.table, ", ".join(index.keys), found.method,
                                       found.table, ", ".join(found.keys),
                                       " where " + found.predicate if found.predicate else "")))
    return problems


def utc_text(text):
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
outlying as ((select t.id, t.{key} as at from services, since
              cross join lateral (select id, {key} from {spans} t where t.service_name = services.name
                                  and t.{key} >= since.at) t
              where services.name is not null)
             union all  -- rows without a service (a store that dropped the NOT NULL): one more index probe
             (select t.id, t.{key} from since cross join lateral (select id, {key} from {spans} t
                                  where t.service_name is null and t.{key} >= since.at) t))"""


def outliers(conn, schema: str, days: int, key: str = "start_time", loose: bool = False) -> dict:
    """Spans stamped at or after the UTC midnight `days` after the server's now:
    count, the moment, and the newest few (id and value, as UTC text)."""
    spans = "%s.%s" % (db.quote_ident(schema), db.quote_ident(contract.SPANS.name))
    source = (_LOOSE_SOURCE if loose else _PARTITIONED_SOURCE).format(key=db.quote_ident(key), spans=spans)
    cursor = conn.cursor()
    cursor.execute(_OUTLIERS_SQL.format(source=source, key=key), (days,))
    since, count, newest = cursor.fetchone()
    return {"since": utc_text(since), "count": int(count),
            "newest": [{"id": row["id"], key: utc_text(row[key])} for row in newest or ()]}
