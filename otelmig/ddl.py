"""Steps: the unit a revision is written in.

A revision lists its work as Steps: a statement, the catalog condition under
which it applies (SQL, so the same decision is made online, in the offline
--sql script and in `plan`), and what it costs (lock level, effect). One list
therefore drives all three modes, and they cannot disagree.

Online, conditions are evaluated just before each step runs, so a rerun after
an interruption skips what is already done.
"""

import contextlib
from typing import Callable, List, NamedTuple, Optional

from otelmig.db import quote_ident, quote_literal
from otelmig.errors import RefusedError

CONCURRENTLY = "{concurrently}"  # placeholder in index statements


class Step(NamedTuple):
    sql: str                      # may hold {concurrently}
    when: Optional[str] = None    # SQL boolean; None: always
    table: Optional[str] = None   # the table it locks, unqualified
    lock: str = ""                # the lock it takes on `table`
    effect: str = "catalog only"  # catalog only | scans the table | rewrites the table | builds an index
    concurrent: bool = False      # index DDL: CONCURRENTLY, outside the transaction, when the table has rows
    refuse: Optional[str] = None  # a guard: when `when` holds, refuse (exit 8) with this message + detail
    detail: Optional[str] = None  # SQL text expression appended to the refusal message
    guard: str = ""               # "data_loss": lifted by --allow-data-loss

    def statement(self, concurrently: bool) -> str:
        return self.sql.replace(CONCURRENTLY, "CONCURRENTLY " if concurrently else "")

    def lock_taken(self, concurrently: bool) -> str:
        if self.concurrent and concurrently:
            return "SHARE UPDATE EXCLUSIVE"
        return self.lock


class Names:
    """SQL fragments for one target schema; identifiers always quoted."""

    def __init__(self, schema: str):
        from otelmig.settings import validate_schema
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

    def column_exists(self, table: str, column: str) -> str:
        return ("exists (select 1 from pg_attribute where attrelid = %s and attname = %s "
                "and attnum > 0 and not attisdropped)" % (self.regclass(table), quote_literal(column)))

    def column_nullable(self, table: str, column: str) -> str:
        return ("exists (select 1 from pg_attribute where attrelid = %s and attname = %s "
                "and not attnotnull and not attisdropped)" % (self.regclass(table), quote_literal(column)))

    def column_default_is(self, table: str, column: str, default: str) -> str:
        return ("exists (select 1 from pg_attrdef d join pg_attribute a on a.attrelid = d.adrelid "
                "and a.attnum = d.adnum where d.adrelid = %s and a.attname = %s "
                "and pg_get_expr(d.adbin, d.adrelid) = %s)"
                % (self.regclass(table), quote_literal(column), quote_literal(default)))

    def index_invalid(self, name: str) -> str:
        return ("exists (select 1 from pg_index where indexrelid = %s and not indisvalid)"
                % self.regclass(name))

    def any_where(self, table: str, column: str, predicate: str) -> str:
        """Whether a row satisfies predicate (stops at the first); false when the column is absent."""
        query = "select exists (select 1 from %s where %s) as c" % (self.table(table), predicate)
        return self._if_column(table, column, query, "boolean", "false")

    def count_where(self, table: str, column: str, predicate: str) -> str:
        """Rows of table where predicate holds; 0 when the column is absent."""
        query = "select count(*) as c from %s where %s" % (self.table(table), predicate)
        return self._if_column(table, column, query, "bigint", "0")

    def _if_column(self, table: str, column: str, query: str, sql_type: str, otherwise: str) -> str:
        """query's one value, or `otherwise` when the column does not exist.

        query_to_xml parses its query only when called, and CASE calls it only
        when the column exists, so this is plain SQL that never fails on a
        half-way layout (usable in a condition, offline and in plan).
        """
        return ("(case when %s then (xpath('/row/c/text()', query_to_xml(%s, false, true, '')))[1]::text::%s "
                "else %s end)" % (self.column_exists(table, column), quote_literal(query), sql_type, otherwise))


def has_rows(conn_exec, names: Names, table: str) -> bool:
    return bool(conn_exec("select exists (select 1 from %s limit 1)" % names.table(table)))


class OnlineRunner:
    """Runs steps on the connection Alembic gives a revision.

    exec_scalar(sql) runs a query and returns the first column of the first row;
    execute(sql) runs a statement; outside() is a context manager that ends the
    revision's transaction and runs its body with the driver in autocommit
    (see migration_api.outside_transaction: Alembic's autocommit_block leaves
    a transaction open on pg8000); watch() wraps a concurrent index build
    (progress on stderr).
    """

    def __init__(self, exec_scalar: Callable, execute: Callable, outside: Callable, names: Names,
                 allow_data_loss: bool = False, log: Callable = lambda line: None,
                 watch: Callable = contextlib.nullcontext):
        self.exec_scalar, self.execute, self.outside = exec_scalar, execute, outside
        self.names, self.allow_data_loss, self.log, self.watch = names, allow_data_loss, log, watch

    def run(self, steps: List[Step]) -> None:
        for step in steps:
            if step.when is not None and not self.exec_scalar("select " + step.when):
                continue
            if step.refuse:
                if step.guard == "data_loss" and self.allow_data_loss:
                    self.log("  --allow-data-loss: " + step.refuse)
                    continue
                detail = self.exec_scalar("select " + step.detail) if step.detail else ""
                raise RefusedError(step.refuse + detail)
            if step.concurrent and has_rows(self.exec_scalar, self.names, step.table):
                with self.outside(), self.watch():
                    self._execute(step, concurrently=True)
            else:
                self._execute(step, concurrently=False)

    def _execute(self, step: Step, concurrently: bool) -> None:
        sql = step.statement(concurrently)
        self.log("  " + sql)
        self.execute(sql)
