"""Baseline: create the OTEL store, or adopt the one the old worker created.

Whatever this finds (nothing, the legacy runtime layout of
docs/legacy_schema.sql, or anything half way), it converges on the head
contract of docs/schema.md without losing a row: columns are renamed and added
in place (metadata-only on PostgreSQL 11+: no table rewrite), and the indexes
are built CONCURRENTLY on tables that hold rows, so writers never wait for them.
Operator additions (extra columns, indexes, views) are left alone.

It records in otel.otelmig_objects what it created and what it found (a
head-named column or index the operator had before adoption), and the
downgrade drops only what was created: it returns to the layout it found. A
store it created from nothing goes back to nothing (its tables are dropped;
while they hold rows only with --allow-data-loss); an adopted store's tables
are never dropped. A partitioned spans is adopted too: each index is created
ON ONLY the parent, built on each partition and attached.

Revision ID: 163d8f446eb9
Revises:
Create Date: 2026-11-25
"""

from typing import NamedTuple, Optional

from otelmig.db import quote_ident as quote, quote_literal
from otelmig.ddl import Effect, Guard, Lock, SchemaSQL, Refusal, RowCheck, Statement, index_steps
from otelmig import migration_api
from otelmig.schema import RECORD_TABLE

revision = "163d8f446eb9"
down_revision = None
branch_labels = None
depends_on = None

EMPTY_JSON = "'{}'::jsonb"

TRACES_DDL = """CREATE TABLE {traces} (
    trace_id            text PRIMARY KEY,
    service_name        text NOT NULL,
    root_span_name      text,
    start_time          timestamptz NOT NULL,
    end_time            timestamptz,
    duration_ms         double precision,
    span_count          integer NOT NULL DEFAULT 0,
    environment         text,
    tenant_id           text,
    ingest_source       text,
    ingested_at         timestamptz NOT NULL DEFAULT now(),
    resource_attributes jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    trace_attributes    jsonb NOT NULL DEFAULT '{{}}'::jsonb
)"""

SPANS_DDL = """CREATE TABLE {spans} (
    id              bigserial PRIMARY KEY,
    trace_id        text NOT NULL,
    span_id         text NOT NULL,
    parent_span_id  text,
    name            text NOT NULL,
    kind            text,
    service_name    text NOT NULL,
    start_time      timestamptz NOT NULL,
    end_time        timestamptz,
    duration_ms     double precision,
    status_code     text,
    status_message  text,
    span_attributes jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    environment     text,
    tenant_id       text,
    created_at      timestamptz NOT NULL DEFAULT now()
)"""

# The columns this revision converges on besides spans.id, frozen here (a later
# revision changes otelmig/schema.py, never this): (name, type, nullable,
# default), types and defaults as format_type()/pg_get_expr() print them.
# tests/test_adoption.py checks they equal otelmig/schema.py while this is the head.
COLUMNS = {
    "traces": (
        ("trace_id", "text", False, None),
        ("service_name", "text", False, None),
        ("root_span_name", "text", True, None),
        ("start_time", "timestamp with time zone", False, None),
        ("end_time", "timestamp with time zone", True, None),
        ("duration_ms", "double precision", True, None),
        ("span_count", "integer", False, "0"),
        ("environment", "text", True, None),
        ("tenant_id", "text", True, None),
        ("ingest_source", "text", True, None),
        ("ingested_at", "timestamp with time zone", False, "now()"),
        ("resource_attributes", "jsonb", False, EMPTY_JSON),
        ("trace_attributes", "jsonb", False, EMPTY_JSON),
    ),
    "spans": (
        ("trace_id", "text", False, None),
        ("span_id", "text", False, None),
        ("parent_span_id", "text", True, None),
        ("name", "text", False, None),
        ("kind", "text", True, None),
        ("service_name", "text", False, None),
        ("start_time", "timestamp with time zone", False, None),
        ("end_time", "timestamp with time zone", True, None),
        ("duration_ms", "double precision", True, None),
        ("status_code", "text", True, None),
        ("status_message", "text", True, None),
        ("span_attributes", "jsonb", False, EMPTY_JSON),
        ("environment", "text", True, None),
        ("tenant_id", "text", True, None),
        ("created_at", "timestamp with time zone", False, "now()"),
    ),
}

PRIMARY_KEYS = {"traces": "trace_id", "spans": "id"}
# Legacy column -> head column, by table.
RENAMES = {
    "traces": (("start_ts", "start_time"), ("end_ts", "end_time")),
    "spans": (("start_ts", "start_time"), ("end_ts", "end_time"),
              ("status", "status_code"), ("attributes", "span_attributes")),
}
# Columns the head adds: (table, column, type, NOT NULL, default).
ADDED = (
    ("traces", "resource_attributes", "jsonb", True, EMPTY_JSON),
    ("traces", "trace_attributes", "jsonb", True, EMPTY_JSON),
    ("spans", "status_message", "text", False, None),
    ("spans", "created_at", "timestamptz", True, "now()"),
)
# In build order: the trace lookup the worker's readers wait for comes first.
INDEXES = (
    ("ix_spans_trace_id", "spans", "trace_id"),
    ("ix_traces_service_start_time", "traces", "service_name, start_time DESC"),
    ("ix_spans_span_id", "spans", "span_id"),
    ("ix_spans_service_start_time", "spans", "service_name, start_time DESC"),
)
# What "holds data" means for a column a downgrade drops. created_at is not
# counted: the database fills it (default now()), the worker never writes it.
# A column not listed holds data when it is not null.
DATA_PREDICATES = {
    ("traces", "resource_attributes"): "resource_attributes <> '{}'::jsonb",
    ("traces", "trace_attributes"): "trace_attributes <> '{}'::jsonb",
    ("spans", "created_at"): None,
}



class _Column(NamedTuple):
    name: str
    type: str
    nullable: bool
    default: Optional[str]


def _added(table: str):
    return [a for a in ADDED if a[0] == table]


def _rename_targets(table: str):
    return {new for _, new in RENAMES.get(table, ())}


def upgrade_steps(n: SchemaSQL):
    record = n.record_table()
    first = [Statement("CREATE SCHEMA IF NOT EXISTS %s" % n.q_schema, when="not %s" % n.schema_exists()),
             Statement(n.create_record_table(), when="%s is null" % n.regclass(RECORD_TABLE)),
             # The marker: from here on, every object this creates is recorded before it is created.
             n.record_step(revision, [("store", n.schema, "recorded")])]
    steps = []
    for table, ddl in (("traces", TRACES_DDL), ("spans", SPANS_DDL)):
        missing = "%s is null" % n.regclass(table)
        # A table created here has the head's names: to the downgrade they are renamed legacy columns.
        created = ([("table", table, "created")]
                   + [("column", "%s.%s" % (table, a[1]), "created") for a in _added(table)]
                   + [("column", "%s.%s" % (table, new), "renamed") for new in sorted(_rename_targets(table))])
        steps.append(n.record_step(revision, created, when=missing))
        steps.append(Statement(ddl.format(traces=n.table("traces"), spans=n.table("spans")), when=missing))
        steps += _rename_steps(n, table, RENAMES[table])
        steps += _added_column_steps(n, table)
    for index, table, keys in INDEXES:
        steps += index_steps(n, revision, index, table, keys)
    # Last: rarely needed, catalog-only repairs, each checked with one query;
    # after the first concurrent build has committed, so the renames' ACCESS
    # EXCLUSIVE locks are not held while they are checked.
    for table in ("traces", "spans"):
        steps += _converge_column_steps(n, table)
    return first + _records_first(n, steps)


def _records_first(n: SchemaSQL, steps):
    """The record steps describe the store as found (what is missing, what is
    there), so they can all run first, in the same transaction as what they
    describe; then the window in which the renames hold ACCESS EXCLUSIVE (up to
    the first concurrent index build, which commits) holds no record step."""
    is_record = [isinstance(step, Statement) and step.sql.startswith("INSERT INTO %s " % n.record_table())
                 for step in steps]
    return ([step for step, record in zip(steps, is_record) if record]
            + [step for step, record in zip(steps, is_record) if not record])


def _rename_steps(n: SchemaSQL, table: str, renames):
    steps = []
    for old, new in renames:
        both = "%s and %s" % (n.column_exists(table, old), n.column_exists(table, new))
        steps.append(Refusal(when=both, table=table, message=(
            "%s.%s has both %s and %s: merge them by hand (keep %s), then rerun"
            % (n.schema, table, old, new, new))))
        rename = "%s and not %s" % (n.column_exists(table, old), n.column_exists(table, new))
        steps.append(n.record_step(revision, [("column", "%s.%s" % (table, new), "renamed")], when=rename))
        steps.append(Statement("ALTER TABLE %s RENAME COLUMN %s TO %s" % (n.table(table), quote(old), quote(new)),
                               when=rename, table=table, lock=Lock.ACCESS_EXCLUSIVE))
    return steps


def _added_column_steps(n: SchemaSQL, table: str):
    """Add what is missing; record what was there; converge a column someone added by hand half way."""
    steps = []
    for _, column, sqltype, not_null, default in _added(table):
        exists = "%s is not null and %s" % (n.regclass(table), n.column_exists(table, column))
        missing = "%s is not null and not %s" % (n.regclass(table), n.column_exists(table, column))
        name = "%s.%s" % (table, column)
        spec = sqltype + (" NOT NULL" if not_null else "") + (" DEFAULT " + default if default else "")
        steps.append(n.record_step(revision, [("column", name, "found")], when=exists))
        steps.append(n.record_step(revision, [("column", name, "created")], when=missing))
        steps.append(Statement("ALTER TABLE %s ADD COLUMN IF NOT EXISTS %s %s" % (n.table(table), quote(column), spec),
                               when=missing, table=table, lock=Lock.ACCESS_EXCLUSIVE))
        if not_null:
            steps.append(Statement("ALTER TABLE %s ALTER COLUMN %s SET DEFAULT %s" % (n.table(table), quote(column), default),
                                   when="%s and not %s" % (exists, n.column_default_is(table, column, default)),
                                   table=table, lock=Lock.ACCESS_EXCLUSIVE))
            steps.append(Statement("UPDATE %s SET %s = DEFAULT WHERE %s IS NULL" % (n.table(table), quote(column), quote(column)),
                                   when=n.column_nullable(table, column), table=table, lock=Lock.ROW_EXCLUSIVE,
                                   effect=Effect.WRITES_ROWS))
            steps.append(Statement("ALTER TABLE %s ALTER COLUMN %s SET NOT NULL" % (n.table(table), quote(column)),
                                   when=n.column_nullable(table, column), table=table, lock=Lock.ACCESS_EXCLUSIVE,
                                   effect=Effect.SCANS))
    return steps


def _converge_column_steps(n: SchemaSQL, table: str):
    """Catalog-only repairs towards the contract (otelmig.compat refuses, before
    any step, what these cannot repair): a nullable column the operator dropped
    is re-added (empty, which is the truth), NOT NULL is dropped where the
    contract allows null, and defaults become the contract's."""
    steps = []
    added = {a[1]: a for a in _added(table)}
    for name_, type_, nullable, default in COLUMNS[table]:
        column = _Column(name_, type_, nullable, default)
        exists = "%s is not null and %s" % (n.regclass(table), n.column_exists(table, column.name))
        name = "%s.%s" % (table, column.name)
        if column.nullable and column.name not in added:
            missing = "%s is not null and not %s" % (n.regclass(table), n.column_exists(table, column.name))
            for old in (o for o, new in RENAMES[table] if new == column.name):  # not renamed: it was not there
                missing += " and not %s" % n.column_exists(table, old)
            steps.append(n.record_step(revision, [("column", name, "created")], when=missing))
            steps.append(Statement("ALTER TABLE %s ADD COLUMN IF NOT EXISTS %s %s"
                                   % (n.table(table), quote(column.name), column.type), when=missing,
                                   table=table, lock=Lock.ACCESS_EXCLUSIVE))
        if column.nullable:
            steps.append(Statement("ALTER TABLE %s ALTER COLUMN %s DROP NOT NULL" % (n.table(table), quote(column.name)),
                                   when=n.column_not_null(table, column.name), table=table, lock=Lock.ACCESS_EXCLUSIVE))
        if column.default and not (column.name in added and not column.nullable):  # those: _added_column_steps
            steps.append(Statement("ALTER TABLE %s ALTER COLUMN %s SET DEFAULT %s"
                                   % (n.table(table), quote(column.name), column.default),
                                   when="%s and not %s" % (exists, n.column_default_is(table, column.name, column.default)),
                                   table=table, lock=Lock.ACCESS_EXCLUSIVE))
        elif not column.default:
            steps.append(Statement("ALTER TABLE %s ALTER COLUMN %s DROP DEFAULT" % (n.table(table), quote(column.name)),
                                   when="%s and %s" % (exists, n.column_has_default(table, column.name)),
                                   table=table, lock=Lock.ACCESS_EXCLUSIVE))
    return steps


def _droppable_columns():
    """(table, column, data predicate) for every contract column an upgrade may
    have created: those the head adds and nullable ones it re-added."""
    for table, columns in COLUMNS.items():
        added = {a[1] for a in _added(table)}
        for column, _, nullable, _ in columns:
            if column in added or nullable:
                default_predicate = "%s is not null" % quote(column)
                yield table, column, DATA_PREDICATES.get((table, column), default_predicate)


def downgrade_steps(n: SchemaSQL):
    # Lock out writers first, so that no row gains data between the check and the drop.
    steps = [Statement("LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE" % n.table(table), when=n.table_exists(table),
                       table=table, lock=Lock.SHARE_ROW_EXCLUSIVE) for table in ("traces", "spans")]
    # The conditions below read the record: make sure it exists (it is dropped at the end).
    steps.append(Statement(n.create_record_table(),
                           when="%s is null" % n.regclass(RECORD_TABLE)))
    unknown = "not %s" % n.record_kept()
    steps.append(_unknown_origin_guard(n, unknown))
    created = lambda kind, name: "(%s or %s)" % (n.recorded(kind, name, "created"), unknown)  # noqa: E731
    # The guard counts exactly the columns the DROP COLUMN steps below would drop.
    checks = tuple(RowCheck(t, c, p, when="%s and %s" % (n.column_exists(t, c), _column_owned(n, t, c, unknown)))
                   for t, c, p in _droppable_columns() if p)
    steps.append(_created_tables_refusal(n))
    steps.append(Refusal(row_checks=checks, guard=Guard.DATA_LOSS, message=(
        "downgrade would drop columns that hold data; rerun with --allow-data-loss to drop them: ")))
    # A table this created (from nothing) goes: the downgrade returns to what it found.
    # Spans first: the worker's rows point at traces.
    for table in ("spans", "traces"):
        steps.append(Statement("DROP TABLE IF EXISTS %s" % n.table(table), when=_created_table(n, table),
                               table=table, lock=Lock.ACCESS_EXCLUSIVE))
    for index, table, _ in INDEXES:
        steps.append(Statement("DROP INDEX IF EXISTS %s" % n.table(index),
                               when="%s and %s" % (n.table_exists(index), created("index", index)),
                               table=table, lock=Lock.ACCESS_EXCLUSIVE))
    for table, column, _ in _droppable_columns():
        steps.append(Statement("ALTER TABLE %s DROP COLUMN IF EXISTS %s" % (n.table(table), quote(column)),
                               when="%s and %s" % (n.column_exists(table, column), _column_owned(n, table, column, unknown)),
                               table=table, lock=Lock.ACCESS_EXCLUSIVE))
    for table, renames in RENAMES.items():
        for old, new in renames:
            steps.append(Statement("ALTER TABLE %s RENAME COLUMN %s TO %s" % (n.table(table), quote(new), quote(old)),
                                   when="%s and not %s and (%s or %s)" % (
                                  n.column_exists(table, new), n.column_exists(table, old),
                                  n.recorded("column", "%s.%s" % (table, new), "renamed"), unknown),
                                   table=table, lock=Lock.ACCESS_EXCLUSIVE))
    steps.append(Statement("DROP TABLE IF EXISTS %s" % n.record_table()))
    return steps


def _created_table(n: SchemaSQL, table: str) -> str:
    """SQL: the record says this revision created the table (never guessed: a store
    adopted before the record existed keeps its tables)."""
    return "%s and %s" % (n.table_exists(table), n.recorded("table", table, "created"))


def _created_tables_refusal(n: SchemaSQL) -> Refusal:
    """The tables this created hold the worker's rows since: dropping them loses
    those rows, so the operator decides (the message says how)."""
    keys = {"traces": "trace_id", "spans": "id"}
    checks = tuple(RowCheck(table, keys[table], "true", when=_created_table(n, table)) for table in ("traces", "spans"))
    return Refusal(row_checks=checks, guard=Guard.DATA_LOSS, message=(
        "schema %s's tables were created by otelmig (an upgrade of an empty schema), and a downgrade to base "
        "removes them, but they hold rows; copy the rows elsewhere first (pg_dump -t), or rerun with "
        "--allow-data-loss to drop them with their rows: " % n.schema))


def _column_owned(n: SchemaSQL, table: str, column: str, unknown: str) -> str:
    """SQL: the downgrade drops this column. Recorded as created; or, on a store
    adopted before the record existed (`unknown`), a column the baseline adds."""
    recorded = n.recorded("column", "%s.%s" % (table, column), "created")
    if (table, column) in {(a[0], a[1]) for a in ADDED}:
        return "(%s or %s)" % (recorded, unknown)
    return recorded


def _unknown_origin_guard(n: SchemaSQL, unknown: str) -> Refusal:
    """A store adopted before otelmig kept its record: whether the operator had
    these objects before cannot be known, so the downgrade does not guess."""
    objects = ["case when %s then %s end" % (n.column_exists(t, c), quote_literal("column %s.%s.%s" % (n.schema, t, c)))
               for t, c, *_ in ADDED]
    objects += ["case when %s then %s end" % (n.table_exists(i), quote_literal("index %s.%s" % (n.schema, i)))
                for i, *_ in INDEXES]
    listed = "concat_ws(', ', %s)" % ", ".join(objects)
    return Refusal(when="%s and %s <> ''" % (unknown, listed), guard=Guard.DATA_LOSS, detail=listed, message=(
        "schema %s was adopted without a record of what it held before (an older otelmig), so the downgrade "
        "cannot tell the operator's objects from its own; drop or keep them by hand, or rerun with "
        "--allow-data-loss to drop them all: " % n.schema))


def frozen_contract():
    """What this revision converges on, as otelmig.schema declares a contract
    (the head's may differ: a later revision changes it, never this)."""
    from otelmig import schema
    tables = tuple(schema.Table(table, tuple(schema.Column(*column) for column in columns), table + "_pkey",
                                (PRIMARY_KEYS[table],))
                   for table, columns in COLUMNS.items())
    spans_id = schema.Column("id", "bigint", False, schema.SEQUENCE_DEFAULT)
    tables = tuple(t._replace(columns=(spans_id,) + t.columns) if t.name == "spans" else t for t in tables)
    indexes = tuple(schema.Index(index, table, tuple(keys.split(", "))) for index, table, keys in INDEXES)
    return schema.Contract(tables, indexes)


def preflight(catalog, schema: str):
    """Conflicts that make what this would adopt incompatible (see otelmig.compat); run before any step."""
    from otelmig.compat import adoption_conflicts
    return adoption_conflicts(catalog, schema, RENAMES, {(a[0], a[1]) for a in ADDED}, frozen_contract())


def upgrade():
    migration_api.run(upgrade_steps)


def downgrade():
    migration_api.run(downgrade_steps)
