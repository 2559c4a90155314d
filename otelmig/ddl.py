"""Steps: the unit a revision is written in.

A revision lists its work as steps of four types: a Statement (in the
revision's transaction), a Concurrent statement (outside it when its table
holds rows: index builds, validations, batched moves), a PerPartition
statement, and a Refusal. Each carries the catalog condition under which it
applies (SQL, so the same decision is made online, in the offline --sql
script and in `plan`) and what it costs (Lock, Effect). One list therefore
drives all three modes, and they cannot disagree: `decide` is the one place
that turns a step and the live catalog into statements to run, a refusal, or
nothing; offline.py renders each type as SQL that decides the same.

Conditions are plain catalog SQL. Two things cannot be plain SQL and have
their own fields, which each mode renders the same way:
- Refusal.row_checks: "does a column that may not exist hold data" needs the
  query text to be parsed only when the column exists (online: two queries;
  offline: EXECUTE in a DO block). No server feature beyond plpgsql is needed.
- PerPartition.for_each: the partitions are read from the catalog when the
  step runs (offline: psql's \\gexec).

Online, conditions are evaluated just before each step runs, so a rerun after
an interruption skips what is already done.
"""

import contextlib
import enum
import itertools
import os
import signal
import time
from typing import Callable, List, NamedTuple, Optional, Tuple, Union

from otelmig import run
from otelmig.db import quote_ident, quote_literal
from otelmig.errors import RefusedError
from otelmig.schema import RECORD_TABLE
from otelmig.settings import validate_schema

CONCURRENTLY = "{concurrently}"      # placeholder in index statements
PARTITION = "{partition}"            # for_each: the partition, schema-qualified and quoted
PARTITION_INDEX = "{partition_index}"  # for_each: our index on that partition, schema-qualified and quoted
PARTITION_INDEX_NAME = "{partition_index_name}"  # for_each: its name alone (CREATE INDEX takes no schema)
# The words that open the condition of a step that only finishes or undoes
# what a stopped run left: `plan` keeps such steps out of its summary.
STOPPED_RUN = "if a stopped run left "


class _Word(str, enum.Enum):
    """A str enum that renders as its value everywhere (%s, format, f-strings,
    JSON), on every Python: `plan` prints and serialises these fields as-is."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Lock(_Word):
    """The table lock a step takes, as PostgreSQL names it (NONE: it takes none)."""
    NONE = ""
    ACCESS_EXCLUSIVE = "ACCESS EXCLUSIVE"
    SHARE = "SHARE"
    SHARE_ROW_EXCLUSIVE = "SHARE ROW EXCLUSIVE"
    SHARE_UPDATE_EXCLUSIVE = "SHARE UPDATE EXCLUSIVE"
    ROW_EXCLUSIVE = "ROW EXCLUSIVE"


class Effect(_Word):
    """What a step does to its table, for `plan` and the README."""
    CATALOG_ONLY = "catalog only"
    SCANS = "scans the table"
    REWRITES = "rewrites the table"
    WRITES_ROWS = "writes rows"
    BUILDS_INDEX = "builds an index"


class Guard(_Word):
    """Which flag, if any, lifts a refusal."""
    NONE = ""
    DATA_LOSS = "data_loss"  # lifted by --allow-data-loss


class RowCheck(NamedTuple):
    """Whether table.column holds rows matching predicate, asked only when `when` holds."""
    table: str
    column: str
    predicate: str
    when: str  # SQL boolean: the column exists (and would be dropped)


class Statement(NamedTuple):
    """One statement, in the revision's transaction, when `when` holds."""
    sql: str
    when: Optional[str] = None    # SQL boolean; None: always
    table: Optional[str] = None   # the table it locks, unqualified
    lock: Lock = Lock.NONE        # the lock it takes on `table`
    effect: Effect = Effect.CATALOG_ONLY
    label: Optional[str] = None   # what a long statement (a DO block) does, for people: plan's text shows it
    condition: Optional[str] = None  # `when` in words ("if ..."), for plan's list of a revision not decided yet


class Concurrent(NamedTuple):
    """One statement that runs outside the revision's transaction when its
    table holds rows (CONCURRENTLY where the sql has the placeholder), and in
    the transaction, plainly, on an empty table: index builds and drops,
    constraint validation, batched moves that commit as they go."""
    sql: str                      # may hold {concurrently}
    when: Optional[str] = None
    table: Optional[str] = None
    lock: Lock = Lock.NONE        # the lock it takes when it runs in the transaction
    effect: Effect = Effect.CATALOG_ONLY
    label: Optional[str] = None
    condition: Optional[str] = None


class PerPartition(NamedTuple):
    """One statement per leaf partition that `for_each` lists when the step runs."""
    sql: str                      # holds {partition}, {partition_index}, {partition_index_name}, maybe {concurrently}
    for_each: str                 # SQL returning (partition, index name, qualified index, display)
    when: Optional[str] = None
    table: Optional[str] = None
    lock: Lock = Lock.NONE
    effect: Effect = Effect.CATALOG_ONLY
    concurrent: bool = False      # as Concurrent, partition by partition
    label: Optional[str] = None
    condition: Optional[str] = None


class Refusal(NamedTuple):
    """Stop (exit 8) with `message` when `when` holds (and, with row checks,
    when one finds rows); the detail and the counts are appended."""
    message: str
    when: Optional[str] = None
    table: Optional[str] = None
    detail: Optional[str] = None  # SQL text expression appended to the message
    guard: Guard = Guard.NONE     # Guard.DATA_LOSS: lifted by --allow-data-loss
    row_checks: Tuple[RowCheck, ...] = ()


Step = Union[Statement, Concurrent, PerPartition, Refusal]


def runs_outside(step: Step) -> bool:
    """Whether the step leaves the revision's transaction (when its table holds rows)."""
    return isinstance(step, Concurrent) or (isinstance(step, PerPartition) and step.concurrent)


def sql_of(step: Step, concurrently: bool) -> str:
    return step.sql.replace(CONCURRENTLY, "CONCURRENTLY " if concurrently else "")


def lock_taken(step: Step, concurrently: bool) -> Lock:
    """A concurrent build or validation takes SHARE UPDATE EXCLUSIVE, whatever it would take in a transaction."""
    return Lock.SHARE_UPDATE_EXCLUSIVE if concurrently else step.lock


def is_lifted(step: Refusal, allow_data_loss: bool) -> bool:
    return step.guard == Guard.DATA_LOSS and allow_data_loss


class Planned(NamedTuple):
    """One statement `decide` chose to run."""
    sql: str
    concurrently: bool  # outside the transaction
    table: Optional[str]  # schema-qualified and quoted, for row estimates
    display: Optional[str]  # schema.table as people read it


class Decision(NamedTuple):
    statements: List[Planned]
    refusal: Optional[str] = None  # the message of a refusal that holds
    lifted: bool = False           # a refusal that --allow-data-loss lifted


class Catalog(NamedTuple):
    """How a mode asks the database: scalar(sql) -> first value, rows(sql) -> all rows."""
    scalar: Callable
    rows: Callable

    @classmethod
    def on_cursor(cls, cursor) -> "Catalog":
        """Asking through a DB-API cursor (plan, repair --dry-run)."""
        def scalar(sql):
            cursor.execute(sql)
            return cursor.fetchone()[0]

        def rows(sql):
            cursor.execute(sql)
            return cursor.fetchall()
        return cls(scalar, rows)

    @classmethod
    def on_connection(cls, connection) -> "Catalog":
        """Asking through a SQLAlchemy connection, inside its open transaction (the runs)."""
        return cls(lambda sql: connection.exec_driver_sql(sql).scalar(),
                   lambda sql: connection.exec_driver_sql(sql).fetchall())


def decide(step: Step, names: "SchemaSQL", ask: Catalog, allow_data_loss: bool = False) -> Decision:
    """The one decision, made the same way online and in plan; offline.py renders
    each type of step as SQL that decides the same (tests/test_revision_kit.py runs both)."""
    if step.when is not None and not ask.scalar("select " + step.when):
        return Decision([])
    if isinstance(step, Refusal):
        return _decide_refusal(step, names, ask, lifted=is_lifted(step, allow_data_loss))
    if isinstance(step, PerPartition):
        statements = []
        for partition, index_name, index, display in ask.rows(step.for_each):
            concurrently = bool(step.concurrent and has_rows_in(ask.scalar, partition))
            sql = fill_partition(sql_of(step, concurrently), partition, index_name, index)
            statements.append(Planned(sql, concurrently, partition, display))
        return Decision(statements)
    qualified = names.table(step.table) if step.table else None
    concurrently = bool(isinstance(step, Concurrent) and ask.scalar("select " + names.table_exists(step.table))
                        and has_rows_in(ask.scalar, qualified))
    display = "%s.%s" % (names.schema, step.table) if step.table else None
    return Decision([Planned(sql_of(step, concurrently), concurrently, qualified, display)])


def _decide_refusal(step: Refusal, names: "SchemaSQL", ask: Catalog, lifted: bool) -> Decision:
    detail = ask.scalar("select " + step.detail) if step.detail else ""
    if step.row_checks:
        found = [(check, rows_matching(ask.scalar, names, check)) for check in step.row_checks]
        detail += ", ".join("%d rows in %s.%s.%s" % (count, names.schema, check.table, check.column)
                            for check, count in found if count)
        if not detail:
            return Decision([])
    return Decision([], step.message + (detail or ""), lifted=lifted)


def fill_partition(sql: str, partition: str, index_name: str, index: str) -> str:
    return sql.replace(PARTITION_INDEX_NAME, index_name).replace(PARTITION_INDEX, index).replace(PARTITION, partition)


def rows_matching(scalar: Callable, names: "SchemaSQL", check: RowCheck) -> int:
    """Rows where check.predicate holds; 0 when check.when does not (the column may be absent).
    Stops at the first row unless there is one: counting then names the amount."""
    if not scalar("select " + check.when):
        return 0
    table = names.table(check.table)
    if not scalar("select exists (select 1 from %s where %s)" % (table, check.predicate)):
        return 0
    return int(scalar("select count(*) from %s where %s" % (table, check.predicate)))


def has_rows_in(scalar: Callable, qualified_table: str) -> bool:
    return bool(scalar("select exists (select 1 from %s limit 1)" % qualified_table))


RECORD_DDL = """CREATE TABLE IF NOT EXISTS {record} (
    object_kind text NOT NULL,
    object_name text NOT NULL,
    origin      text NOT NULL CHECK (origin IN ('created', 'found', 'renamed', 'recorded')),
    revision    text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (object_kind, object_name)
)"""


class SchemaSQL:
    """SQL text for one target schema: its objects' names (always quoted), the
    catalog conditions steps are written with, and the record's statements."""

    def __init__(self, schema: str):
        self.schema = validate_schema(schema)  # never trust a name that reaches SQL text
        self.q_schema = quote_ident(schema)

    def table(self, name: str) -> str:
        return "%s.%s" % (self.q_schema, quote_ident(name))

    def schema_exists(self) -> str:
        return "exists (select 1 from pg_namespace where nspname = %s)" % quote_literal(self.schema)

    def regclass(self, name: str) -> str:
        return "to_regclass(%s)" % quote_literal(self.table(name))

    def table_exists(self, name: str) -> str:
        return "%s is not null" % self.regclass(name)

    def is_partitioned(self, name: str) -> str:
        return "exists (select 1 from pg_class where oid = %s and relkind = 'p')" % self.regclass(name)

    def column_exists(self, table: str, column: str) -> str:
        return ("exists (select 1 from pg_attribute where attrelid = %s and attname = %s "
                "and attnum > 0 and not attisdropped)" % (self.regclass(table), quote_literal(column)))

    def column_nullable(self, table: str, column: str) -> str:
        return ("exists (select 1 from pg_attribute where attrelid = %s and attname = %s "
                "and not attnotnull and not attisdropped)" % (self.regclass(table), quote_literal(column)))

    def column_not_null(self, table: str, column: str) -> str:
        return ("exists (select 1 from pg_attribute where attrelid = %s and attname = %s "
                "and attnotnull and not attisdropped)" % (self.regclass(table), quote_literal(column)))

    def column_default_is(self, table: str, column: str, default: str) -> str:
        return ("exists (select 1 from pg_attrdef d join pg_attribute a on a.attrelid = d.adrelid "
                "and a.attnum = d.adnum where d.adrelid = %s and a.attname = %s "
                "and pg_get_expr(d.adbin, d.adrelid) = %s)"
                % (self.regclass(table), quote_literal(column), quote_literal(default)))

    def column_has_default(self, table: str, column: str) -> str:
        return ("exists (select 1 from pg_attrdef d join pg_attribute a on a.attrelid = d.adrelid "
                "and a.attnum = d.adnum where d.adrelid = %s and a.attname = %s)"
                % (self.regclass(table), quote_literal(column)))

    def index_invalid(self, name: str) -> str:
        """A plain index left INVALID by a failed concurrent build (a partitioned
        index is also invalid until every partition has one attached: not this)."""
        return ("exists (select 1 from pg_index x join pg_class i on i.oid = x.indexrelid "
                "where x.indexrelid = %s and not x.indisvalid and i.relkind = 'i')" % self.regclass(name))

    # -- the record of what the baseline created (see schema.RECORD_TABLE) --

    def record_table(self) -> str:
        return self.table(RECORD_TABLE)

    def recorded(self, kind: str, name: str, origin: str) -> str:
        """SQL: the record says `origin` for this object. Only valid once the record table exists."""
        return ("exists (select 1 from %s where object_kind = %s and object_name = %s and origin = %s)"
                % (self.record_table(), quote_literal(kind), quote_literal(name), quote_literal(origin)))

    def create_record_table(self) -> str:
        """The record table (schema.RECORD_TABLE): every revision may be the first
        to need it (a store adopted before it existed), so each creates it if missing."""
        return RECORD_DDL.format(record=self.record_table())

    def record_step(self, revision: str, objects, when: Optional[str] = None,
                    condition: Optional[str] = None) -> "Statement":
        """The step that records objects (kind, name, origin), labelled for `plan`."""
        label = "record " + ", ".join("%s %s as %s" % (kind, name, origin) for kind, name, origin in objects)
        return Statement(self.record(revision, objects), when=when, label=label, condition=condition)

    def is_bookkeeping(self, sql: str) -> bool:
        """Whether a statement only keeps otelmig's own record (creates it, or
        inserts into it): `plan` folds these into one line per revision."""
        return sql == self.create_record_table() or sql.startswith("INSERT INTO %s " % self.record_table())

    def record_kept(self) -> str:
        """SQL: this store's adoption was recorded from its start (the marker row)."""
        return self.recorded("store", self.schema, "recorded")

    def record(self, revision: str, objects) -> str:
        """INSERT statement for (kind, name, origin) rows; an object already recorded keeps its first origin."""
        values = ", ".join("(%s, %s, %s, %s)" % (quote_literal(revision), quote_literal(kind), quote_literal(name),
                                                 quote_literal(origin)) for kind, name, origin in objects)
        return ("INSERT INTO %s (revision, object_kind, object_name, origin) VALUES %s "
                "ON CONFLICT (object_kind, object_name) DO NOTHING" % (self.record_table(), values))

    # -- partitions --

    def partitions_without(self, table: str, index: str, state: str) -> str:
        """for_each query: leaf partitions of `table` that have no index attached to
        the partitioned index `index`, with our index name on each; `state` picks
        those whose index of that name is: 'missing or invalid', 'invalid', or
        'any' (to attach: by then the build before it made it valid; listing
        them all lets `plan` show the attach too)."""
        ours = "to_regclass(format('%%I.%%I', pn.nspname, %s))" % self._partition_index_name(index)
        valid = "(select x.indisvalid from pg_index x where x.indexrelid = %s)" % ours
        where = {"missing or invalid": "%s is null or not %s" % (ours, valid),
                 "invalid": "%s is not null and not %s" % (ours, valid),
                 "any": "true"}[state]
        return ("select format('%%I.%%I', pn.nspname, pc.relname), format('%%I', %s), "
                "format('%%I.%%I', pn.nspname, %s), pn.nspname || '.' || pc.relname "
                "from pg_inherits h join pg_class pc on pc.oid = h.inhrelid "
                "join pg_namespace pn on pn.oid = pc.relnamespace "
                "where h.inhparent = %s and pc.relkind = 'r' "
                "and not exists (select 1 from pg_inherits hi join pg_index xi on xi.indexrelid = hi.inhrelid "
                "where hi.inhparent = %s and xi.indrelid = pc.oid) and (%s) order by 1"
                % (self._partition_index_name(index), self._partition_index_name(index), self.regclass(table),
                   self.regclass(index), where))

    @staticmethod
    def _partition_index_name(index: str) -> str:
        return "left(pc.relname || '_' || %s, 63)" % quote_literal(index)


# -- step builders revisions share --

def index_steps(n: "SchemaSQL", revision: str, index: str, table: str, keys: str):
    """A plain table: build concurrently (when it has rows). A partitioned one:
    the index ON ONLY the parent (catalog only), then one built on each leaf
    partition (concurrently when it has rows) and attached; the parent index is
    valid once every partition has one attached."""
    partitioned = n.is_partitioned(table)
    missing_or_invalid = "(%s is null or %s)" % (n.regclass(index), n.index_invalid(index))
    shown, on = "%s.%s" % (n.schema, index), "%s.%s" % (n.schema, table)
    missing_words = "if %s has no valid index %s" % (on, index)
    return [
        # An INVALID index is a failed build, not the operator's: the one rebuilt in its place is ours.
        n.record_step(revision, [("index", index, "found")],
                      when="%s and not %s" % (n.table_exists(index), n.index_invalid(index)),
                      condition="if a valid index %s exists already" % shown),
        n.record_step(revision, [("index", index, "created")], when=missing_or_invalid, condition=missing_words),
        Concurrent("DROP INDEX %sIF EXISTS %s" % (CONCURRENTLY, n.table(index)),
                   when=n.index_invalid(index), table=table, lock=Lock.ACCESS_EXCLUSIVE,
                   condition="if %s is INVALID (a failed build)" % shown),
        Concurrent("CREATE INDEX %sIF NOT EXISTS %s ON %s (%s)" % (CONCURRENTLY, quote_ident(index), n.table(table), keys),
                   when="%s and not %s" % (missing_or_invalid, partitioned),
                   table=table, lock=Lock.SHARE, effect=Effect.BUILDS_INDEX,
                   condition="%s and is not partitioned" % missing_words),
        Statement("CREATE INDEX IF NOT EXISTS %s ON ONLY %s (%s)" % (quote_ident(index), n.table(table), keys),
                  when="%s is null and %s" % (n.regclass(index), partitioned), table=table, lock=Lock.SHARE,
                  condition="if %s has no index %s and is partitioned" % (on, index)),
        PerPartition("DROP INDEX %sIF EXISTS %s" % (CONCURRENTLY, PARTITION_INDEX),
                     when=partitioned, for_each=n.partitions_without(table, index, "invalid"),
                     table=table, lock=Lock.ACCESS_EXCLUSIVE, concurrent=True,
                     condition="if %s is partitioned: each partition whose %s is INVALID" % (on, index)),
        PerPartition("CREATE INDEX %sIF NOT EXISTS %s ON %s (%s)" % (CONCURRENTLY, PARTITION_INDEX_NAME, PARTITION, keys),
                     when=partitioned, for_each=n.partitions_without(table, index, "missing or invalid"),
                     table=table, lock=Lock.SHARE, effect=Effect.BUILDS_INDEX, concurrent=True,
                     condition="if %s is partitioned: each partition without a valid %s" % (on, index)),
        PerPartition("ALTER INDEX %s ATTACH PARTITION %s" % (n.table(index), PARTITION_INDEX),
                     when=partitioned, for_each=n.partitions_without(table, index, "any"),
                     table=table, lock=Lock.ACCESS_EXCLUSIVE,
                     condition="if %s is partitioned: each partition's index not attached yet" % on),
    ]


@contextlib.contextmanager
def outside_transaction(bind):
    """Run the body with no transaction open, for CREATE INDEX CONCURRENTLY.

    Alembic's autocommit_block() asks SQLAlchemy for the isolation level
    first, and on pg8000 that query opens a transaction, so the concurrent build
    then fails with SQLSTATE 25001. Here the driver connection itself commits
    the revision's work so far and switches to autocommit; the revision's
    version row is written in a new transaction after the body.
    """
    driver_conn = bind.connection.dbapi_connection
    driver_conn.commit()
    driver_conn.autocommit = True
    cursor = driver_conn.cursor()
    cursor.execute("show lock_timeout")
    saved = cursor.fetchone()[0]
    # A concurrent build's SHARE UPDATE EXCLUSIVE lock queues no reader or
    # writer, but the build waits for every older transaction to end, and
    # lock_timeout would cut that wait and leave an INVALID index. So it waits
    # (its progress is reported), unbounded.
    cursor.execute("SET lock_timeout = 0")
    try:
        yield
    finally:
        cursor.execute("select set_config('lock_timeout', %s, false)", (saved,))
        driver_conn.autocommit = False


class OnlineRunner:
    """Runs steps on the connection Alembic gives a revision.

    exec_scalar(sql) runs a query and returns the first column of the first row;
    exec_rows(sql) returns all rows; execute(sql) runs a statement; outside()
    is a context manager that ends the revision's transaction and runs its
    body with the driver in autocommit (see outside_transaction above:
    Alembic's autocommit_block leaves a transaction open on pg8000); watch()
    wraps a concurrent index build (progress on stderr).
    """

    def __init__(self, exec_scalar: Callable, execute: Callable, outside: Callable, names: SchemaSQL,
                 allow_data_loss: bool = False, log: Callable = lambda line: None,
                 watch: Callable = contextlib.nullcontext, exec_rows: Optional[Callable] = None):
        self.ask = Catalog(exec_scalar, exec_rows or (lambda sql: []))
        self.execute, self.outside = execute, outside
        self.names, self.allow_data_loss, self.log, self.watch = names, allow_data_loss, log, watch

    def run(self, steps: List[Step]) -> None:
        for number, step in enumerate(steps):
            try:
                self.run_step(step)
            except RefusedError as refused:
                raise self._with_the_refusals_after(refused, steps[number + 1:]) from None

    def _with_the_refusals_after(self, refused: RefusedError, rest: List[Step]) -> RefusedError:
        """A refusal, joined by those of the Refusal steps right after it: they only
        read the catalog, so the operator learns every group at once instead of
        fixing one and rerunning into the next."""
        more = []
        for step in itertools.takewhile(lambda s: isinstance(s, Refusal), rest):
            decision = decide(step, self.names, self.ask, self.allow_data_loss)
            if decision.refusal and not decision.lifted:
                more.append(decision.refusal)
        if not more:
            return refused
        return RefusedError("; and ".join([refused.message] + more), details=refused.details)

    def run_step(self, step: Step) -> None:
        decision = decide(step, self.names, self.ask, self.allow_data_loss)
        if decision.lifted:
            self.log("  --allow-data-loss: " + decision.refusal)
        elif decision.refusal:
            raise RefusedError(decision.refusal)
        for planned in decision.statements:
            if planned.concurrently:
                with self.outside(), self.watch():
                    self._execute(planned.sql)
            else:
                self._execute(planned.sql)

    def _execute(self, sql: str) -> None:
        # -v: one statement per line indented by two, its further lines by six,
        # so a reader (tests/test_revision_kit.py) can tell statements apart.
        self.log("  " + sql.replace("\n", "\n      "))
        with run.statement_span(sql):  # a CLIENT span when the run is traced (otelmig/run.py)
            self.execute(sql)
        crash_point_for_tests()


# TEST-ONLY hooks for the revision kit and the interruption tests
# (tests/test_revision_kit.py, tests/test_leftovers.py), inert when unset (the
# only cost is two environment lookups per statement); never set them outside
# the tests. Statements are counted over the whole process, inside the
# revision's transaction or outside it.
# - OTELMIG_TEST_CRASH_AFTER_STATEMENT=k: SIGKILL right after the k-th
#   statement, so the kit can show that a rerun converges after a crash at
#   every step boundary.
# - OTELMIG_TEST_AFTER_STATEMENT=k:ACTION: after the k-th statement, TERM or
#   INT sends this process that signal (a live run interrupted there, which
#   cleans up before it exits); PAUSE creates the file $OTELMIG_TEST_HOOK_DIR/
#   paused and waits until $OTELMIG_TEST_HOOK_DIR/resume exists, so a test can
#   take a lock at exactly that point.
CRASH_AFTER_ENV = "OTELMIG_TEST_CRASH_AFTER_STATEMENT"
AFTER_STATEMENT_ENV = "OTELMIG_TEST_AFTER_STATEMENT"
HOOK_DIR_ENV = "OTELMIG_TEST_HOOK_DIR"
_statements_executed = [0]


def crash_point_for_tests() -> None:
    crash_after = os.environ.get(CRASH_AFTER_ENV)
    hook = os.environ.get(AFTER_STATEMENT_ENV)
    if not crash_after and not hook:
        return
    _statements_executed[0] += 1
    if crash_after and _statements_executed[0] == int(crash_after):
        os.kill(os.getpid(), signal.SIGKILL)
    if hook:
        at, _, action = hook.partition(":")
        if _statements_executed[0] == int(at):
            _hook_action(action)


def _hook_action(action: str) -> None:
    if action in ("TERM", "INT"):
        os.kill(os.getpid(), getattr(signal, "SIG" + action))
        time.sleep(1)  # the handler runs at once and raises; this is not reached
        return
    if action == "PAUSE":
        directory = os.environ[HOOK_DIR_ENV]
        open(os.path.join(directory, "paused"), "w").close()
        while not os.path.exists(os.path.join(directory, "resume")):
            time.sleep(0.01)
