"""The head schema contract (docs/schema.md), declared once.

verify compares the live catalog with this; the tests prove the migrations
produce exactly this, from an empty database and from the legacy layout.
Types are spelled as PostgreSQL's format_type() prints them and defaults as
pg_get_expr() prints them, so comparing needs no parsing.
"""

from typing import NamedTuple, Optional, Tuple

# spans.id may be an identity column or take its default from a sequence.
SEQUENCE_DEFAULT = "<identity or sequence>"

TEXT = "text"
TIMESTAMPTZ = "timestamp with time zone"
DOUBLE = "double precision"
INTEGER = "integer"
BIGINT = "bigint"
JSONB = "jsonb"
EMPTY_JSON = "'{}'::jsonb"


class Column(NamedTuple):
    name: str
    type: str
    nullable: bool
    default: Optional[str] = None


class Table(NamedTuple):
    name: str
    columns: Tuple[Column, ...]
    primary_key: str
    primary_key_columns: Tuple[str, ...]
    partitioned_by: Tuple[str, ...] = ()  # RANGE partition key columns; () for a plain table

    def column(self, name: str) -> Optional[Column]:
        return next((c for c in self.columns if c.name == name), None)


class Index(NamedTuple):
    name: str
    table: str
    keys: Tuple[str, ...]  # as pg_get_indexdef prints each key, plus " DESC"
    method: str = "btree"
    unique: bool = False


TRACES = Table("traces", (
    Column("trace_id", TEXT, False),
    Column("service_name", TEXT, False),
    Column("root_span_name", TEXT, True),
    Column("start_time", TIMESTAMPTZ, False),
    Column("end_time", TIMESTAMPTZ, True),
    Column("duration_ms", DOUBLE, True),
    Column("span_count", INTEGER, False, "0"),
    Column("environment", TEXT, True),
    Column("tenant_id", TEXT, True),
    Column("ingest_source", TEXT, True),
    Column("ingested_at", TIMESTAMPTZ, False, "now()"),
    Column("resource_attributes", JSONB, False, EMPTY_JSON),
    Column("trace_attributes", JSONB, False, EMPTY_JSON),
), "traces_pkey", ("trace_id",))

SPANS = Table("spans", (
    Column("id", BIGINT, False, SEQUENCE_DEFAULT),
    Column("trace_id", TEXT, False),
    Column("span_id", TEXT, False),
    Column("parent_span_id", TEXT, True),
    Column("name", TEXT, False),
    Column("kind", TEXT, True),
    Column("service_name", TEXT, False),
    Column("start_time", TIMESTAMPTZ, False),
    Column("end_time", TIMESTAMPTZ, True),
    Column("duration_ms", DOUBLE, True),
    Column("status_code", TEXT, True),
    Column("status_message", TEXT, True),
    Column("span_attributes", JSONB, False, EMPTY_JSON),
    Column("environment", TEXT, True),
    Column("tenant_id", TEXT, True),
    Column("created_at", TIMESTAMPTZ, False, "now()"),
), "spans_pkey", ("id", "start_time"), ("start_time",))

TABLES = (TRACES, SPANS)

INDEXES = (
    Index("ix_traces_service_start_time", "traces", ("service_name", "start_time DESC")),
    Index("ix_traces_start_time", "traces", ("start_time",)),  # retention deletes old traces by it
    Index("ix_spans_trace_id", "spans", ("trace_id",)),
    Index("ix_spans_span_id", "spans", ("span_id",)),
    Index("ix_spans_service_start_time", "spans", ("service_name", "start_time DESC")),
)



class Contract(NamedTuple):
    """A schema's tables and indexes: verify and adoption compare a catalog with one."""
    tables: Tuple[Table, ...]
    indexes: Tuple[Index, ...]


HEAD = Contract(TABLES, INDEXES)

VERSION_TABLE = "alembic_version"

# otelmig's record of what the baseline created and what it found (adopted) in
# this schema, so that a downgrade drops only what an upgrade created. A table
# rather than a COMMENT on each object: a comment is one free-text slot the
# operator may already use or overwrite, and "found" objects would need one
# too; a table is read with plain SQL in all three modes (online, --sql, plan)
# and is dumped and restored with the schema.
RECORD_TABLE = "otelmig_objects"

# otelmig's run history (otelmig/runlog.py, docs/history.md): one row per run of
# upgrade, downgrade/rollback, stamp, maintain and repair, by otelmig, by its --sql
# script under psql, or by plain `alembic`. Append-only: a row is opened when
# its run starts and closed once when it ends (or marked `unfinished` by a
# later run when its process died); no row is ever deleted by otelmig. Not part
# of any revision: it outlives `downgrade base`, as an audit trail should
# (`DROP TABLE {schema}.otelmig_runs` is the one command that removes it).
RUNS_TABLE = "otelmig_runs"
PG_LSN = "pg_lsn"
RUN_OUTCOMES = ("running", "ok", "refused", "failed", "interrupted", "unfinished")

RUNS = Table(RUNS_TABLE, (
    Column("run_id", TEXT, False),             # the run's trace id: 32 hex digits (TRACEPARENT's when given)
    Column("span_id", TEXT, False),            # the run's root span id: 16 hex digits
    Column("command", TEXT, False),            # upgrade, downgrade, rollback, stamp, maintain, repair
    Column("arguments", JSONB, False, "'[]'::jsonb"),  # the command line, redacted: never a password
    Column("via", TEXT, False),                # otelmig, psql (a --sql script), alembic
    Column("from_revision", TEXT, True),       # the revision the run found (under the migration lock)
    Column("to_revision", TEXT, True),         # the revision it left
    Column("outcome", TEXT, False),            # one of RUN_OUTCOMES
    Column("exit_code", INTEGER, True),
    Column("sqlstate", TEXT, True),            # the server's error code, when the server failed it
    Column("message", TEXT, True),             # the error line, redacted
    Column("started_at", TIMESTAMPTZ, False),  # the server's clock
    Column("ended_at", TIMESTAMPTZ, True),     # the server's clock; null while running or unfinished
    Column("lock_waits", INTEGER, False, "0"),  # lock waits that timed out or held the run up
    Column("lock_wait_seconds", DOUBLE, False, "0"),
    Column("retries", INTEGER, False, "0"),    # transactions retried after a lock timeout or a conflict
    Column("db_current_user", TEXT, True),
    Column("db_session_user", TEXT, True),
    Column("client_addr", TEXT, True),         # null over a Unix socket
    Column("application_name", TEXT, True),
    Column("os_user", TEXT, True),
    Column("os_host", TEXT, True),
    Column("otelmig_version", TEXT, True),
    Column("pyz_sha256", TEXT, True),          # of dist/otelmig.pyz when run from one
    Column("start_lsn", PG_LSN, True),         # the server's WAL insert position when the run started
    Column("commit_lsn", PG_LSN, True),        # ... once its last transaction had committed
    Column("wal_bytes", BIGINT, True),         # commit_lsn - start_lsn: WAL the server wrote meanwhile
), "otelmig_runs_pkey", ("run_id", "span_id"))

# Tables otelmig keeps for itself next to the contract's (not operator extras).
OWN_TABLES = (VERSION_TABLE, RECORD_TABLE, RUNS_TABLE)

# The layout the old worker created at runtime (docs/legacy_schema.sql):
# columns that only it has, by table. verify uses them to recognise it.
LEGACY_ONLY_COLUMNS = {
    "traces": ("start_ts", "end_ts"),
    "spans": ("start_ts", "end_ts", "status", "attributes"),
}

# Revision 2 (time-partitioned spans): the layout it converts otel.spans to
# and `otelmig maintain` keeps. One partition per UTC day, named by the day it
# holds; the table that held the rows before the conversion becomes the
# partition for everything before the cutoff (a UTC midnight); a DEFAULT
# partition takes any row no other partition does, so no insert is rejected.


class Partitioning(NamedTuple):
    table: str = "spans"
    key: str = "start_time"           # RANGE partition key (timestamptz)
    history: str = "spans_history"    # FOR VALUES FROM (MINVALUE) TO (cutoff)
    default: str = "spans_default"    # DEFAULT
    day_prefix: str = "spans_p"       # spans_pYYYYMMDD: FROM (day 00:00 UTC) TO (next day 00:00 UTC)
    ahead_days: int = 7               # upgrade and maintain keep partitions for today and this many days ahead

    def day_partition(self, day) -> str:
        """The partition for a datetime.date."""
        return "%s%s" % (self.day_prefix, day.strftime("%Y%m%d"))


SPANS_PARTITIONING = Partitioning()
# The revision that partitions spans. Its downgrade keeps its version row until the
# switch back is done and committed, so a store recorded at it (or above it) over a
# plain spans is one whose downgrade stopped, or one stamped there: upgrade starts
# below it (otelmig/state.py effective_revision). maintain records its partitions
# under it (a record under a revision above the store's would read as a partly
# applied upgrade).
PARTITIONING_REVISION = "826630e38563"
