"""Drift at the head: what `otelmig repair` may converge, and what it must leave.

A store at the head can still differ from the contract (otelmig/schema.py):
someone dropped an index, a DEFAULT or a NOT NULL. verify reports it
(otelmig/catalog.py compare()), upgrade has nothing to do, so this module turns
each problem compare() finds into either steps (otelmig/ddl.py: catalog
conditioned, so a rerun or a run after a crash does only what is left, and
`plan` decides them the same way) or a refusal naming the fix. It never drops
anything of the operator's; what it adds is only what the contract declares:

- a missing index: built CONCURRENTLY (on a partitioned table: ON ONLY the
  parent, then one per partition built concurrently and attached); an INVALID
  one of the same name (a failed concurrent build) is rebuilt in place with
  REINDEX INDEX CONCURRENTLY, never dropped;
- a missing DEFAULT: SET DEFAULT (catalog only, a brief lock);
- a missing NOT NULL: CHECK (col IS NOT NULL) NOT VALID, VALIDATE (SHARE UPDATE
  EXCLUSIVE: writers go on while it scans), SET NOT NULL (which the validated
  CHECK lets skip its scan), then that helper CHECK dropped. NULLs refuse it.

Refused, nothing changed: a missing table or column, a wrong type, another
DEFAULT or a NOT NULL the contract does not have (the operator's), a missing
primary key (with duplicates, or on a partitioned table), another primary key
or index shape under a contract name, partition-layout problems (maintain's
job), and a store that is not at the head (upgrade's job).
"""

import re
from typing import List, NamedTuple, Optional

from otelmig import db, partitions, schema as contract
from otelmig._version import HEAD_REVISION
from otelmig.catalog import LiveCatalog, Problem, compare, read_catalog
from otelmig.ddl import (CONCURRENTLY, PARTITION, PARTITION_INDEX, PARTITION_INDEX_NAME, Catalog, Concurrent, Effect,
                         Lock, PerPartition, Planned, SchemaSQL, Statement, Step, decide, lock_taken,
                         sql_of)
from otelmig.errors import PROGRAM, NotInitialisedError, OtelmigError, PendingError, RefusedError
from otelmig.state import assess, read_state

NOT_NULL_HELPER = "otelmig_nn_%s_%s"  # the helper CHECK's name: table, column (cut to 63 bytes)


class Repair(NamedTuple):
    problem: Problem
    steps: List[Step]


class Survey(NamedTuple):
    """What `repair` found at the head: the repairs to run, and what it refuses (one clause each)."""
    revision: Optional[str]
    repairs: List[Repair]
    refusals: List[str]


# -- what each problem calls for -------------------------------------------------------

def split_object(schema: str, problem: Problem):
    """(table or index, column or None) from a problem's object `schema.name[.column]`."""
    parts = problem.object[len(schema) + 1:].split(".", 1)
    return parts[0], (parts[1] if len(parts) > 1 else None)


def classify(schema: str, problem: Problem, catalog: LiveCatalog):
    """(steps, None) when repair converges it, (None, why and the fix) when it refuses."""
    name, column = split_object(schema, problem)
    n = SchemaSQL(schema)
    table = next((t for t in contract.TABLES if t.name == name), None)
    wanted = table.column(column) if table and column else None
    if problem.kind == "repair_leftover" and wanted is not None:
        return [drop_helper_step(n, table.name, column)], None
    if problem.kind == "failed_reindex_copy":
        on = problem.detail.split(" ")[_COPY_TABLE_WORD]
        return [drop_copy_step(n, name, on[len(schema) + 1:])], None
    if problem.kind == "wrong_nullability" and wanted is not None and not wanted.nullable:
        return _not_null_steps(n, table.name, column), None
    if (problem.kind == "wrong_default" and wanted is not None and wanted.default not in (None, contract.SEQUENCE_DEFAULT)
            and not catalog.relations[table.name][column].default and not catalog.relations[table.name][column].identity):
        return _default_steps(n, table.name, wanted), None
    found = catalog.relations.get(table.name, {}).get(column) if wanted is not None else None
    if (problem.kind == "wrong_default" and found is not None and wanted.default == contract.SEQUENCE_DEFAULT
            and not found.default and not found.identity):
        return _sequence_default_steps(n, table.name, column), None  # refused below unless its sequence is owned
    index = next((i for i in contract.INDEXES if i.name == name), None)
    if problem.kind in ("missing_index", "invalid_index") and index is not None:
        return _index_steps(n, index, catalog.kinds.get(index.table) == "p"), None
    keyed = next((t for t in contract.TABLES if t.primary_key == name), None)
    if problem.kind == "missing_primary_key" and keyed is not None and catalog.kinds.get(keyed.name) == "r":
        return _primary_key_steps(n, keyed), None
    if problem.kind == "partition_index_missing":
        owner = next((i for i in contract.INDEXES if problem.detail.startswith("lacks index %s " % i.name)), None)
        if owner is not None:
            return _index_steps(n, owner, True), None
    return None, _refusal(schema, problem)


def _refusal(schema: str, problem: Problem) -> str:
    fixes = {
        "missing_table": "restore it from a backup (repair creates no table)",
        "missing_column": "restore it from a backup or add it as docs/schema.md declares it (repair adds no column)",
        "wrong_type": "converting a column rewrites the table: do it in a maintenance window",
        "wrong_nullability": "the NOT NULL is not the contract's: ALTER TABLE ... ALTER COLUMN ... DROP NOT NULL if "
                             "the worker's NULLs should be accepted (repair drops nothing)",
        "wrong_default": "the DEFAULT is not the contract's: ALTER TABLE ... ALTER COLUMN ... SET DEFAULT as "
                         "docs/schema.md declares (repair replaces nothing)",
        "wrong_index": "the index of that name is another (the operator's?): rename it, then rerun `%s repair`" % PROGRAM,
        "wrong_primary_key": "another primary key stands: repair replaces none",
        "missing_primary_key": "on a partitioned table a primary key is built under a lock on every partition: "
                               "ALTER TABLE ... ADD PRIMARY KEY in a maintenance window",
        "not_partitioned": "that is `%s upgrade`'s job" % PROGRAM,
    }
    fix = fixes.get(problem.kind, "repair does not handle %s" % problem.kind.replace("_", " "))
    return "%s (%s): %s" % (problem.object, problem.detail, fix)


def _default_steps(n: SchemaSQL, table: str, column: contract.Column) -> List[Step]:
    return [Statement("ALTER TABLE %s ALTER COLUMN %s SET DEFAULT %s" % (n.table(table), db.quote_ident(column.name),
                                                                     column.default),
                      when="not " + n.column_has_default(table, column.name), table=table,
                      lock=Lock.ACCESS_EXCLUSIVE)]


def sequence_name(table: str, column: str) -> str:
    """The sequence a serial column's DEFAULT takes from (PostgreSQL's own naming, as the migrations made it)."""
    return "%s_%s_seq" % (table, column)


def _sequence_default(schema: str, table: str, column: str) -> str:
    return "nextval(%s::regclass)" % db.quote_literal("%s.%s" % (schema, sequence_name(table, column)))


def _sequence_default_steps(n: SchemaSQL, table: str, column: str) -> List[Step]:
    return [Statement("ALTER TABLE %s ALTER COLUMN %s SET DEFAULT %s"
                      % (n.table(table), db.quote_ident(column), _sequence_default(n.schema, table, column)),
                      when="not " + n.column_has_default(table, column), table=table, lock=Lock.ACCESS_EXCLUSIVE)]


def _sequence_refusals(conn, schema: str, repairs: List[Repair]) -> List[str]:
    """A sequence DEFAULT is restored only from the sequence the column owns: otherwise the exact statements."""
    refusals, cursor = [], conn.cursor()
    for repair in list(repairs):
        if repair.problem.kind != "wrong_default" or "nextval(" not in repair.steps[0].sql:
            continue
        table, column = split_object(schema, repair.problem)
        sequence = "%s.%s" % (db.quote_ident(schema), db.quote_ident(sequence_name(table, column)))
        cursor.execute("select to_regclass(%s) is not null and to_regclass(%s) = "
                       "to_regclass(pg_get_serial_sequence(%s, %s))",
                       (sequence, sequence, "%s.%s" % (db.quote_ident(schema), db.quote_ident(table)), column))
        if not cursor.fetchone()[0]:
            repairs.remove(repair)
            refusals.append("%s has no DEFAULT and %s.%s is not a sequence it owns (pg_get_serial_sequence), so "
                            "repair restores none: ALTER SEQUENCE %s.%s OWNED BY %s.%s.%s (CREATE SEQUENCE it first, "
                            "starting past max(%s), if it is gone); ALTER TABLE %s.%s ALTER COLUMN %s SET DEFAULT %s; "
                            "then rerun `%s repair`"
                            % (repair.problem.object, schema, sequence_name(table, column), schema,
                               sequence_name(table, column), schema, table, column, column, schema, table, column,
                               _sequence_default(schema, table, column), PROGRAM))
    return refusals


def not_null_helper(table: str, column: str) -> str:
    return (NOT_NULL_HELPER % (table, column)).encode("utf-8")[:63].decode("utf-8", "ignore")


def helper_definitions(column: str) -> List[str]:
    """pg_get_constraintdef() of repair's helper CHECK, NOT VALID or validated: its name alone is not enough."""
    # As ruleutils quotes it: the contract's columns are plain lower-case names, printed bare.
    shown = column if re.fullmatch(r"[a-z_][a-z0-9_]*", column) else db.quote_ident(column)
    check = "CHECK ((%s IS NOT NULL))" % shown
    return [check, check + " NOT VALID"]


def drop_helper_step(n: SchemaSQL, table: str, column: str) -> Statement:
    """Drops repair's helper CHECK (matched by name and expression), whatever state a stopped run left it in."""
    helper = not_null_helper(table, column)
    defs = ", ".join(map(db.quote_literal, helper_definitions(column)))
    return Statement("ALTER TABLE %s DROP CONSTRAINT IF EXISTS %s" % (n.table(table), db.quote_ident(helper)),
                     when="exists (select 1 from pg_constraint where conrelid = %s and conname = %s and "
                          "pg_get_constraintdef(oid) in (%s))" % (n.regclass(table), db.quote_literal(helper), defs),
                     table=table, lock=Lock.ACCESS_EXCLUSIVE)


def _constraint(n: SchemaSQL, table: str, name: str, validated: Optional[bool] = None) -> str:
    state = "" if validated is None else " and %sconvalidated" % ("" if validated else "not ")
    return ("exists (select 1 from pg_constraint where conrelid = %s and conname = %s%s)"
            % (n.regclass(table), db.quote_literal(name), state))


def _not_null_steps(n: SchemaSQL, table: str, column: str) -> List[Step]:
    """The PG12+ way to a NOT NULL on a big table without a long ACCESS EXCLUSIVE scan."""
    helper, qualified, col = not_null_helper(table, column), n.table(table), db.quote_ident(column)
    nullable = n.column_nullable(table, column)
    return [
        Statement("ALTER TABLE %s ADD CONSTRAINT %s CHECK (%s IS NOT NULL) NOT VALID" % (qualified, db.quote_ident(helper), col),
                  when="%s and not %s" % (nullable, _constraint(n, table, helper)), table=table,
                  lock=Lock.ACCESS_EXCLUSIVE),
        Statement("ALTER TABLE %s VALIDATE CONSTRAINT %s" % (qualified, db.quote_ident(helper)),
                  when="%s and %s" % (nullable, _constraint(n, table, helper, validated=False)), table=table,
                  lock=Lock.SHARE_UPDATE_EXCLUSIVE, effect=Effect.SCANS),
        Statement("ALTER TABLE %s ALTER COLUMN %s SET NOT NULL" % (qualified, col), when=nullable, table=table,
                  lock=Lock.ACCESS_EXCLUSIVE, label="SET NOT NULL (the validated CHECK spares its scan)"),
        Statement("ALTER TABLE %s DROP CONSTRAINT IF EXISTS %s" % (qualified, db.quote_ident(helper)),
                  when="not %s and %s" % (nullable, _constraint(n, table, helper)), table=table,
                  lock=Lock.ACCESS_EXCLUSIVE),
    ]


def _index_steps(n: SchemaSQL, index: contract.Index, partitioned: bool) -> List[Step]:
    keys, name, table = ", ".join(index.keys), n.table(index.name), index.table
    missing = "%s is null" % n.regclass(index.name)
    if not partitioned:
        return [
            # A failed concurrent build's INVALID index is rebuilt where it stands, never dropped.
            Concurrent("REINDEX INDEX %s%s" % (CONCURRENTLY, name), when=n.index_invalid(index.name), table=table,
                       lock=Lock.SHARE, effect=Effect.BUILDS_INDEX),
            Concurrent("CREATE INDEX %sIF NOT EXISTS %s ON %s (%s)" % (CONCURRENTLY, db.quote_ident(index.name),
                                                                      n.table(table), keys),
                       when=missing, table=table, lock=Lock.SHARE, effect=Effect.BUILDS_INDEX),
        ]
    return [
        Statement("CREATE INDEX IF NOT EXISTS %s ON ONLY %s (%s)" % (db.quote_ident(index.name), n.table(table), keys),
                  when=missing, table=table, lock=Lock.SHARE),
        PerPartition("REINDEX INDEX %s%s" % (CONCURRENTLY, PARTITION_INDEX),
                     for_each=n.partitions_without(table, index.name, "invalid"), table=table, lock=Lock.SHARE,
                     effect=Effect.BUILDS_INDEX, concurrent=True),
        PerPartition("CREATE INDEX %sIF NOT EXISTS %s ON %s (%s)" % (CONCURRENTLY, PARTITION_INDEX_NAME, PARTITION, keys),
                     for_each=n.partitions_without(table, index.name, "missing or invalid"), table=table,
                     lock=Lock.SHARE, effect=Effect.BUILDS_INDEX, concurrent=True),
        PerPartition("ALTER INDEX %s ATTACH PARTITION %s" % (name, PARTITION_INDEX),
                     for_each=n.partitions_without(table, index.name, "any"), table=table,
                     lock=Lock.ACCESS_EXCLUSIVE),
    ]


def _primary_key_steps(n: SchemaSQL, table: contract.Table) -> List[Step]:
    """A plain table's: its unique index built concurrently, then made the constraint (catalog only)."""
    index, columns = db.quote_ident(table.primary_key), ", ".join(map(db.quote_ident, table.primary_key_columns))
    no_key = "not exists (select 1 from pg_constraint where conrelid = %s and contype = 'p')" % n.regclass(table.name)
    return [
        Concurrent("REINDEX INDEX %s%s" % (CONCURRENTLY, n.table(table.primary_key)),
                   when="%s and %s" % (no_key, n.index_invalid(table.primary_key)), table=table.name,
                   lock=Lock.SHARE, effect=Effect.BUILDS_INDEX),
        Concurrent("CREATE UNIQUE INDEX %sIF NOT EXISTS %s ON %s (%s)" % (CONCURRENTLY, index, n.table(table.name),
                                                                         columns),
                   when="%s and %s is null" % (no_key, n.regclass(table.primary_key)), table=table.name,
                   lock=Lock.SHARE, effect=Effect.BUILDS_INDEX),
        Statement("ALTER TABLE %s ADD CONSTRAINT %s PRIMARY KEY USING INDEX %s" % (n.table(table.name), index, index),
                  when=no_key, table=table.name, lock=Lock.ACCESS_EXCLUSIVE),
    ]


# Columns first (a primary key or an index may need them), then the indexes.
_ORDER = {"wrong_default": 0, "wrong_nullability": 1, "missing_primary_key": 2}


def repairable(schema: str, problems: List[Problem], catalog: LiveCatalog) -> int:
    """How many of verify's problems `repair` converges (NULLs it would find aside)."""
    return sum(1 for problem in problems if classify(schema, problem, catalog)[0] is not None)


# -- reading the store ---------------------------------------------------------------

def survey(conn, schema: str) -> Survey:
    """Everything repair decides before its first change, read on a pg8000 connection."""
    state = read_state(conn, schema)
    _refuse_unless_at_head(state)
    catalog = read_catalog(conn, schema)
    problems = compare(schema, catalog).problems + partition_index_problems(conn, schema, catalog)
    repairs, refusals, seen = [], [], set()
    for problem in sorted(problems, key=lambda p: _ORDER.get(p.kind, 3)):
        steps, refusal = classify(schema, problem, catalog)
        if steps is None:
            refusals.append(refusal)
        elif tuple(steps) not in seen:  # an index's two problems (parent invalid, a partition without) are one repair
            seen.add(tuple(steps))
            repairs.append(Repair(problem, steps))
    # What a run that stopped left goes first: a NOT NULL still missing is redone after it, from its ADD.
    # A stopped REINDEX's copy goes before any REINDEX (which would leave another, _ccnew1, if it stopped too).
    repairs = [r for r in helpers_left(conn, schema) + reindex_copies(conn, schema)
               if tuple(r.steps) not in seen] + repairs
    refusals += (_null_refusals(conn, schema, repairs) + _duplicate_refusals(conn, schema, repairs)
                 + _sequence_refusals(conn, schema, repairs)
                 + _foreign_helper_refusals(conn, schema, repairs) + _partition_name_refusals(conn, schema, catalog)
                 + layout_refusals(conn, schema, catalog))
    return Survey(state.revision, repairs, refusals)


def _refuse_unless_at_head(state) -> None:
    error = assess(state)
    if error is None:
        return
    if isinstance(error, NotInitialisedError) and state.revision == HEAD_REVISION and not state.unpartitioned:
        return  # at the head, a table or column missing: drift, refused by name below
    if isinstance(error, (PendingError, NotInitialisedError)):
        raise RefusedError("repair changes nothing here: %s; repair works on a store at the head: run `%s upgrade` "
                           "first" % (error.message, PROGRAM))
    raise error  # several version rows, a revision a newer otelmig wrote: their own exit codes


def partition_index_problems(conn, schema: str, catalog: LiveCatalog) -> List[Problem]:
    if catalog.kinds.get(contract.SPANS.name) != "p":
        return []
    return [Problem("partition_index_missing", "%s.%s" % (schema, part), "lacks index %s of %s.%s"
                    % (index, schema, contract.SPANS.name))
            for part, index in partitions.partitions_without_index(conn, schema)]


_HELPERS_SQL = """select c.conrelid::regclass::text, c.conname::text, pg_get_constraintdef(c.oid)
from pg_constraint c join pg_namespace n on n.oid = c.connamespace
where n.nspname = %s and c.contype = 'c' and c.conname::text like 'otelmig\\_nn\\_%%' and c.conislocal order by 2"""


def _helper_constraints(conn, schema: str):
    """(table, column, name, is repair's) for each CHECK named like repair's helper on a contract column."""
    wanted = {not_null_helper(t.name, c.name): (t.name, c.name) for t in contract.TABLES for c in t.columns}
    cursor = conn.cursor()
    cursor.execute(_HELPERS_SQL, (schema,))
    found = []
    for _, name, definition in cursor.fetchall():
        if name in wanted:
            table, column = wanted[name]
            found.append((table, column, name, definition in helper_definitions(column)))
    return found


def helpers_left(conn, schema: str) -> List[Repair]:
    """Repair's NOT NULL helper CHECKs (by name and expression) that a run that stopped left: each rejects
    every NULL insert, so the next run drops it first (a NOT NULL still missing is then redone from its ADD)."""
    return [Repair(Problem("repair_leftover", "%s.%s.%s" % (schema, table, column),
                           "a NOT NULL helper CHECK %s left by a repair that stopped: it rejects every insert of "
                           "a NULL %s; run `%s repair`, which drops it" % (name, column, PROGRAM)),
                   [drop_helper_step(SchemaSQL(schema), table, column)])
            for table, column, name, ours in _helper_constraints(conn, schema) if ours]


# Relations in a partition's schema under the name repair gives a contract index on it
# (<partition>_<index>, cut to 63 bytes) that are not that index: another shape, another
# table, not an index. CREATE INDEX IF NOT EXISTS would skip it and the ATTACH fail.
_PARTITION_NAME_SQL = """select format('%I.%I', pn.nspname, c.relname), pn.nspname || '.' || pc.relname
from pg_inherits h join pg_class pc on pc.oid = h.inhrelid join pg_namespace pn on pn.oid = pc.relnamespace
join pg_class c on c.relnamespace = pn.oid and c.relname = left(pc.relname || '_' || %s, 63)
left join pg_index x on x.indexrelid = c.oid
where h.inhparent = to_regclass(%s) and pc.relkind = 'r'
  and not exists (select 1 from pg_inherits hi join pg_index xi on xi.indexrelid = hi.inhrelid
                  where hi.inhparent = to_regclass(%s) and xi.indrelid = pc.oid)
  and (x.indrelid is distinct from pc.oid or x.indisunique
       or regexp_replace(pg_get_indexdef(c.oid), '^.* USING ', '') <> %s)
order by 1"""


def _partition_name_refusals(conn, schema: str, catalog: LiveCatalog) -> List[str]:
    """An index (or anything) of the operator's under the name repair builds a contract index with on a
    partition: refused before the first change, rather than an ATTACH that fails and a parent left INVALID."""
    if catalog.kinds.get(contract.SPANS.name) != "p":
        return []
    refusals, cursor = [], conn.cursor()
    for index in (i for i in contract.INDEXES if i.table == contract.SPANS.name):
        qualified = lambda name: "%s.%s" % (db.quote_ident(schema), db.quote_ident(name))  # noqa: E731
        cursor.execute(_PARTITION_NAME_SQL, (index.name, qualified(index.table), qualified(index.name),
                                             "%s (%s)" % (index.method, ", ".join(index.keys))))
        refusals += ["%s on %s is not the index %s that repair builds there under that name (%s (%s)): rename "
                     "it (ALTER INDEX %s RENAME TO ...), then rerun `%s repair`"
                     % (found, partition, index.name, index.method, ", ".join(index.keys), found, PROGRAM)
                     for found, partition in cursor.fetchall()]
    return refusals


# What a REINDEX CONCURRENTLY that stopped leaves, INVALID and still updated by every write:
# <index>_ccnew (then _ccnew1, ...), its new copy, when it stopped before the swap; <index>_ccold, the
# old index, when it stopped after (the new one then has the name). The index's name is cut so that the
# whole fits in 63 bytes (PostgreSQL's ChooseRelationName). PostgreSQL's REINDEX page: drop either.
# A copy is known by what it is, not by the names otelmig gives (PostgreSQL names a day partition's
# indexes itself): an INVALID index so named beside an index of the same definition on the same table,
# which is a contract index or primary key, or a partition's index of one. One that a session of this
# database holds in SHARE UPDATE EXCLUSIVE is the copy of a REINDEX at work (it keeps that lock on both
# indexes through all its transactions), not a leftover: left to it. A query's ACCESS SHARE on every
# index of its table is not. Nor is one on a table where an index is being built (CREATE INDEX or REINDEX,
# as far as this role may see): it may be that build's own index, which an operator may well name so.
_COPIES_SQL = """select c.relname::text, t.relname::text, o.relname::text, ox.indisprimary,
       coalesce(p.relname::text, ''), coalesce(pt.relname::text, ''), coalesce(px.indisprimary, false)
from pg_index x join pg_class c on c.oid = x.indexrelid join pg_class t on t.oid = x.indrelid
join pg_namespace n on n.oid = c.relnamespace
join pg_index ox on ox.indrelid = x.indrelid and ox.indexrelid <> x.indexrelid and ox.indkey = x.indkey
     and ox.indclass = x.indclass and ox.indcollation = x.indcollation and ox.indoption = x.indoption
     and ox.indisunique = x.indisunique
     and coalesce(pg_get_expr(ox.indexprs, ox.indrelid), '') = coalesce(pg_get_expr(x.indexprs, x.indrelid), '')
     and coalesce(pg_get_expr(ox.indpred, ox.indrelid), '') = coalesce(pg_get_expr(x.indpred, x.indrelid), '')
join pg_class o on o.oid = ox.indexrelid and o.relam = c.relam
left join pg_inherits h on h.inhrelid = o.oid
left join pg_class p on p.oid = h.inhparent
left join pg_index px on px.indexrelid = p.oid
left join pg_class pt on pt.oid = px.indrelid
where n.nspname = %s and c.relkind = 'i' and not x.indisvalid and c.relname ~ '_cc(new|old)[0-9]*$'
  and not exists (select 1 from pg_locks l where l.locktype = 'relation' and l.relation = c.oid
                  and l.mode = 'ShareUpdateExclusiveLock' and l.granted and l.pid <> pg_backend_pid()
                  and l.database = (select oid from pg_database where datname = current_database()))
  and not exists (select 1 from pg_stat_progress_create_index b where b.relid = x.indrelid
                  and b.pid <> pg_backend_pid())
order by 1, 3"""
_COPY_TABLE_WORD = 6  # the table's word (schema.table) in a failed_reindex_copy's detail (classify reads it back)


def _named_as_copy_of(copy: str, original: str) -> bool:
    suffix = re.search(r"_cc(new|old)[0-9]*$", copy).group(0)
    return copy == original.encode("utf-8")[:63 - len(suffix)].decode("utf-8", "ignore") + suffix


def _is_contract_index(table: str, index: str, primary: bool) -> bool:
    """A contract index of a contract table, or its primary key."""
    if table not in {t.name for t in contract.TABLES}:
        return False
    return primary or any(i.table == table and i.name == index for i in contract.INDEXES)


def drop_copy_step(n: SchemaSQL, copy: str, table: str) -> Concurrent:
    return Concurrent("DROP INDEX %sIF EXISTS %s" % (CONCURRENTLY, n.table(copy)), when=n.index_invalid(copy),
                      table=table, lock=Lock.ACCESS_EXCLUSIVE)


def reindex_copies(conn, schema: str) -> List[Repair]:
    """INVALID copies a stopped REINDEX CONCURRENTLY left of a contract index or primary key, or of a
    partition's index of one (repair's own REINDEX, one it would run, or the operator's): a failed copy,
    never the operator's index, so dropped (concurrently). Anything else is the operator's (_COPIES_SQL)."""
    cursor = conn.cursor()
    cursor.execute(_COPIES_SQL, (schema,))
    found, seen = [], set()
    for copy, table, original, primary, parent, parent_table, parent_primary in cursor.fetchall():
        if copy in seen or not _named_as_copy_of(copy, original):
            continue
        if not (_is_contract_index(table, original, primary) or _is_contract_index(parent_table, parent,
                                                                                    parent_primary)):
            continue
        seen.add(copy)
        found.append(_copy_repair(schema, copy, table, original))
    return found


def _copy_repair(schema: str, copy: str, table: str, original: str) -> Repair:
    left = "left: the old index, after the new one took its name" if "_ccold" in copy else "left"
    detail = ("an INVALID copy of %s on %s.%s that a REINDEX CONCURRENTLY which stopped %s (it slows every write "
              "and is carried by rollback); run `%s repair`, which drops it" % (original, schema, table, left, PROGRAM))
    return Repair(Problem("failed_reindex_copy", "%s.%s" % (schema, copy), detail),
                  [drop_copy_step(SchemaSQL(schema), copy, table)])


def _foreign_helper_refusals(conn, schema: str, repairs: List[Repair]) -> List[str]:
    """A CHECK the operator named like repair's helper, with another expression: kept, and in a NOT NULL's way."""
    needed = {repair.problem.object for repair in repairs if repair.problem.kind == "wrong_nullability"}
    return ["%s.%s has a CHECK named %s that is not repair's (col IS NOT NULL): repair keeps it and needs that "
            "name to restore the NOT NULL of %s: rename it (ALTER TABLE %s.%s RENAME CONSTRAINT %s TO ...), then "
            "rerun `%s repair`" % (schema, table, name, column, schema, table, name, PROGRAM)
            for table, column, name, ours in _helper_constraints(conn, schema)
            if not ours and "%s.%s.%s" % (schema, table, column) in needed]


def _null_refusals(conn, schema: str, repairs: List[Repair]) -> List[str]:
    """A NOT NULL is refused while the column holds NULLs: which, how many, and what to do."""
    refusals, cursor = [], conn.cursor()
    for repair in list(repairs):
        if repair.problem.kind != "wrong_nullability":
            continue
        table, column = split_object(schema, repair.problem)
        cursor.execute("select count(*) from %s.%s where %s is null"
                       % (db.quote_ident(schema), db.quote_ident(table), db.quote_ident(column)))
        nulls = int(cursor.fetchone()[0])
        if nulls:
            repairs.remove(repair)
            refusals.append("%s holds %d NULL(s) and the contract makes it NOT NULL: set those rows' %s "
                            "(UPDATE %s.%s SET %s = ... WHERE %s IS NULL) or delete them, then rerun `%s repair`"
                            % (repair.problem.object, nulls, column, schema, table, column, column, PROGRAM))
    return refusals


def _duplicate_refusals(conn, schema: str, repairs: List[Repair]) -> List[str]:
    """A primary key is refused while its columns hold duplicates (or NULLs): how many, and what to do."""
    refusals, cursor = [], conn.cursor()
    for repair in list(repairs):
        if repair.problem.kind != "missing_primary_key":
            continue
        table = next(t for t in contract.TABLES if "%s.%s" % (schema, t.primary_key) == repair.problem.object)
        columns = ", ".join(map(db.quote_ident, table.primary_key_columns))
        cursor.execute("select count(*) from (select 1 from %s.%s group by %s having count(*) > 1) d"
                       % (db.quote_ident(schema), db.quote_ident(table.name), columns))
        duplicated = int(cursor.fetchone()[0])
        if duplicated:
            repairs.remove(repair)
            refusals.append("%s.%s has no primary key and %d value(s) of (%s) occur more than once: remove the "
                            "duplicates (keep one row of each), then rerun `%s repair`"
                            % (schema, table.name, duplicated, ", ".join(table.primary_key_columns), PROGRAM))
    return refusals


def layout_refusals(conn, schema: str, catalog: LiveCatalog) -> List[str]:
    """Partition-layout problems: `otelmig maintain`'s job, never repair's."""
    if catalog.kinds.get(contract.SPANS.name) != "p":
        return []
    layout = partitions.read_layout(conn, schema)
    if layout.problem() or partitions.adopted_as_found(conn, schema, layout.partitioning):
        return []  # compare() names a wrong layout; the operator's own partitions are theirs
    decision = partitions.decide(layout, partitions.server_now(conn), layout.partitioning.ahead_days, None,
                                 partitions.read_ownership(conn, schema))
    found = ["no partition holds %s" % new.name for new in decision.fill + decision.create]
    found += ["no DEFAULT partition"] if layout.default is None else []
    found += ["a gap from %s to %s" % gap for gap in layout.gaps()]
    found += ["%s's DETACH CONCURRENTLY is pending" % p.name for p in layout.ranged if p.detach_pending]
    if not found:
        return []
    return ["%s.%s partitions: %s: that is `%s maintain`'s job (run it, then rerun `%s repair`)"
            % (schema, contract.SPANS.name, ", ".join(found[:4]) + (", ..." if len(found) > 4 else ""),
               PROGRAM, PROGRAM)]


def refusal_error(found: Survey, cleaned: Optional[List[str]] = None) -> RefusedError:
    """The refusal; `cleaned` names what it dropped first (helper CHECKs a stopped run left), never hidden."""
    if cleaned:
        return RefusedError("repair dropped what a repair that stopped left (%s) and changes nothing else: %s"
                            % (", ".join(cleaned), "; ".join(found.refusals)), details={"refusals": found.refusals})
    return RefusedError("repair changes nothing here: %s" % "; ".join(found.refusals),
                        details={"refusals": found.refusals})


# -- what it would run: repair --dry-run and plan ---------------------------------------

def statements(conn, schema: str, steps: List[Step]) -> List[dict]:
    """The statements the steps would run now, decided as the run decides them (ddl.decide)."""
    ask, names, listed = Catalog.on_cursor(conn.cursor()), SchemaSQL(schema), []
    for step in steps:
        chosen = decide(step, names, ask).statements
        if not chosen and listed and isinstance(step, Statement):
            # Its condition holds once the steps listed before it ran (a NOT NULL's VALIDATE after its ADD).
            chosen = [Planned(sql_of(step, False), False, names.table(step.table), "%s.%s" % (schema, step.table))]
        for planned in chosen:
            listed.append({"sql": planned.sql, "table": planned.display, "outside_transaction": planned.concurrently,
                           "lock": str(lock_taken(step, planned.concurrently) or "none"), "effect": str(step.effect)})
    return listed


def preview(conn, schema: str) -> Optional[dict]:
    """What `otelmig repair` would do now (plan shows it); None when the store is not at the head."""
    try:
        found = survey(conn, schema)
    except OtelmigError:
        return None  # not at the head: upgrade's plan is what plan shows
    return {"repairs": [dict(found_problem(repair.problem), statements=statements(conn, schema, repair.steps))
                        for repair in found.repairs], "refusals": found.refusals}


def found_problem(problem: Problem) -> dict:
    return {"kind": problem.kind, "object": problem.object, "detail": problem.detail}


def preview_text(shown: dict) -> str:
    lines = ["repair (`%s repair`: drift from the head contract):" % PROGRAM]
    for repair in shown["repairs"]:
        lines.append("  %s %s: %s" % (repair["kind"], repair["object"], repair["detail"]))
        lines += ["    %s  [lock: %s; %s%s]" % (s["sql"], s["lock"], s["effect"],
                                                 "; outside a transaction" if s["outside_transaction"] else "")
                  for s in repair["statements"]]
    lines += ["  repair refuses: %s" % refusal for refusal in shown["refusals"]]
    if len(lines) == 1:
        lines.append("  nothing to repair")
    return "\n".join(lines)
