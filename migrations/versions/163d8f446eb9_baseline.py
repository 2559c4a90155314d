"""Baseline: create the OTEL store, or adopt the one the old worker created.

Whatever this finds (nothing, the legacy runtime layout of
spec/legacy_schema.sql, or anything half way), it converges on the head
contract of spec/schema.md without losing a row: columns are renamed and added
in place (metadata-only on PostgreSQL 11+: no table rewrite), and the indexes
are built CONCURRENTLY on tables that hold rows, so writers never wait for them.
Operator additions (extra columns, indexes, views) are left alone.

Downgrade returns to the legacy layout and never drops a table.

Revision ID: 163d8f446eb9
Revises:
Create Date: 2026-11-25
"""

from otelmig.db import quote_ident as quote
from otelmig.ddl import CONCURRENTLY, Names, Step
from otelmig import migration_api

revision = "163d8f446eb9"
down_revision = None
branch_labels = None
depends_on = None

AX = "ACCESS EXCLUSIVE"
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
# What "holds data" means for the columns a downgrade drops. created_at is not
# counted: the database fills it (default now()), the worker never writes it.
DATA_PREDICATES = {
    ("traces", "resource_attributes"): "resource_attributes <> '{}'::jsonb",
    ("traces", "trace_attributes"): "trace_attributes <> '{}'::jsonb",
    ("spans", "status_message"): "status_message is not null",
}


def upgrade_steps(n: Names):
    steps = [Step("CREATE SCHEMA IF NOT EXISTS %s" % n.q_schema, when="not %s" % n.schema_exists())]
    for table, ddl in (("traces", TRACES_DDL), ("spans", SPANS_DDL)):
        steps.append(Step(ddl.format(traces=n.table("traces"), spans=n.table("spans")),
                          when="%s is null" % n.regclass(table)))
        steps += _rename_steps(n, table, RENAMES[table])
        steps += _added_column_steps(n, table)
    for index, table, keys in INDEXES:
        steps.append(Step("DROP INDEX %sIF EXISTS %s" % (CONCURRENTLY, n.table(index)),
                          when=n.index_invalid(index), table=table, lock=AX, concurrent=True))
        steps.append(Step("CREATE INDEX %sIF NOT EXISTS %s ON %s (%s)"
                          % (CONCURRENTLY, quote(index), n.table(table), keys),
                          when="%s is null or %s" % (n.regclass(index), n.index_invalid(index)),
                          table=table, lock="SHARE",
                          effect="builds an index", concurrent=True))
    return steps


def _rename_steps(n: Names, table: str, renames):
    steps = []
    for old, new in renames:
        both = "%s and %s" % (n.column_exists(table, old), n.column_exists(table, new))
        steps.append(Step("", when=both, table=table, refuse=(
            "%s.%s has both %s and %s: merge them by hand (keep %s), then rerun"
            % (n.schema, table, old, new, new))))
        steps.append(Step("ALTER TABLE %s RENAME COLUMN %s TO %s" % (n.table(table), quote(old), quote(new)),
                          when="%s and not %s" % (n.column_exists(table, old), n.column_exists(table, new)),
                          table=table, lock=AX))
    return steps


def _added_column_steps(n: Names, table: str):
    """Add what is missing; converge a column someone added by hand half way."""
    steps = []
    for tbl, column, sqltype, not_null, default in ADDED:
        if tbl != table:
            continue
        exists = "%s is not null and %s" % (n.regclass(table), n.column_exists(table, column))
        spec = sqltype + (" NOT NULL" if not_null else "") + (" DEFAULT " + default if default else "")
        steps.append(Step("ALTER TABLE %s ADD COLUMN IF NOT EXISTS %s %s" % (n.table(table), quote(column), spec),
                          when="%s is not null and not %s" % (n.regclass(table), n.column_exists(table, column)),
                          table=table, lock=AX))
        if default:
            steps.append(Step("ALTER TABLE %s ALTER COLUMN %s SET DEFAULT %s" % (n.table(table), quote(column), default),
                              when="%s and not %s" % (exists, n.column_default_is(table, column, default)),
                              table=table, lock=AX))
        if not_null:
            steps.append(Step("UPDATE %s SET %s = DEFAULT WHERE %s IS NULL" % (n.table(table), quote(column), quote(column)),
                              when=n.column_nullable(table, column), table=table, lock="ROW EXCLUSIVE",
                              effect="writes rows"))
            steps.append(Step("ALTER TABLE %s ALTER COLUMN %s SET NOT NULL" % (n.table(table), quote(column)),
                              when=n.column_nullable(table, column), table=table, lock=AX,
                              effect="scans the table"))
    return steps


def downgrade_steps(n: Names):
    # Lock out writers first, so that no row gains data between the check and the drop.
    steps = [Step("LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE" % n.table(table), when=n.table_exists(table),
                  table=table, lock="SHARE ROW EXCLUSIVE") for table in ("traces", "spans")]
    guard = " or ".join(n.any_where(t, c, p) for (t, c), p in DATA_PREDICATES.items())
    detail = "concat_ws(', ', %s)" % ", ".join(
        "case when {count} > 0 then {count} || ' rows in {name}' end".format(
            count=n.count_where(t, c, p), name="%s.%s.%s" % (n.schema, t, c))
        for (t, c), p in DATA_PREDICATES.items())
    steps.append(Step("", when=guard, guard="data_loss", detail=detail, refuse=(
        "downgrade would drop columns that hold data; rerun with --allow-data-loss to drop them: ")))
    for index, table, _ in INDEXES:
        steps.append(Step("DROP INDEX IF EXISTS %s" % n.table(index), when=n.table_exists(index),
                          table=table, lock=AX))
    for table, column, *_ in ADDED:
        steps.append(Step("ALTER TABLE %s DROP COLUMN IF EXISTS %s" % (n.table(table), quote(column)),
                          when=n.column_exists(table, column), table=table, lock=AX))
    for table, renames in RENAMES.items():
        for old, new in renames:
            steps.append(Step("ALTER TABLE %s RENAME COLUMN %s TO %s" % (n.table(table), quote(new), quote(old)),
                              when="%s and not %s" % (n.column_exists(table, new), n.column_exists(table, old)),
                              table=table, lock=AX))
    return steps


def upgrade():
    migration_api.run(upgrade_steps)


def downgrade():
    migration_api.run(downgrade_steps)
