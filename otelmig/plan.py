"""plan: what an upgrade would do here, without writing anything.

It reads inside a READ ONLY transaction that is rolled back, evaluates each
step of the first pending revision's catalog condition against this database's
actual state (the same SQL that the online run and --sql use), and lists the
statements that would run, the lock each takes, what it does to the table, and
the table's current row estimate and size; a later revision's statements come
with their conditions in words (decided when it runs). plan_text turns that
into the summary and the text a DBA signs off.
"""

from otelmig import db, drift, output, partitions, plan_text, schema as contract
from otelmig._version import HEAD_REVISION
from otelmig.catalog import outliers, read_catalog
from otelmig.state import ensure_known, read_state, schema_missing
from otelmig.ddl import (STOPPED_RUN, Catalog, PerPartition, Refusal, SchemaSQL, decide, fill_partition, lock_taken,
                         runs_outside, sql_of)
from otelmig.errors import PROGRAM, ExitStatus, NotInitialisedError
from otelmig.scripts import revisions_between

# reltuples is -1 until the table was first analyzed (0 with relpages 0 before
# PostgreSQL 14); the statistics system's live-row count is there from the
# first insert. A partitioned table holds no rows itself: its partitions'
# (pg_partition_tree, every level) are summed.
_TABLE_STATS_SQL = """
select sum(case when c.reltuples > 0 or (c.reltuples = 0 and c.relpages > 0) then c.reltuples::bigint
                else s.n_live_tup end)::bigint,
       coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint, count(*)
from pg_class c left join pg_stat_all_tables s on s.relid = c.oid
where c.relkind not in ('p', 'I')
  and c.oid in (select to_regclass(%s) union all select relid from pg_partition_tree(to_regclass(%s)))
"""




# The JSON fields of a failed plan (cli adds exit_code, schema, message).
FAILURE_FIELDS = {"head": HEAD_REVISION, "database_revision": None}


def plan(settings, err) -> output.Result:
    conn = db.read_only_connection(settings.conninfo)
    try:
        cursor = conn.cursor()
        state = read_state(conn, settings.schema)
        ensure_known(state)
        if not state.schema_exists and state.other_stores:  # a typo in --schema: no plan for a second store
            raise NotInitialisedError(schema_missing(state))
        scripts = revisions_between(settings, state.effective_revision, HEAD_REVISION)
        # Only the first pending revision sees the catalog it will run on; the
        # conditions of the later ones depend on what the earlier ones do.
        pending = [_plan_revision(conn, cursor, settings.schema, script, first=True) if number == 0
                   else _outline_revision(cursor, settings.schema, script, guarded=not conn.autocommit)
                   for number, script in enumerate(scripts)]
        maintenance = None if pending else maintain_preview(conn, settings.schema)
        repairs = None if pending else drift.preview(conn, settings.schema)
        outlying = conversion_outliers(conn, state) if pending else None
        _too_many_outliers(settings.schema, pending, scripts, outlying)
    finally:
        db.close(conn)
    status = ExitStatus.PENDING if pending else ExitStatus.OK
    payload = {"exit_code": int(status), "schema": settings.schema, "database_revision": state.revision,
               "head": HEAD_REVISION, "pending": pending}
    if pending:
        payload["summary"] = plan_text.summarize(settings.schema, pending, outlying)
    text = plan_text.render(settings.schema, state.revision, pending, payload.get("summary"),
                            verbose=settings.verbosity > 0)
    if outlying is not None:
        payload["outliers"] = outlying
        text += "\n" + plan_text.outliers_text(settings.schema, outlying)
    if maintenance is not None:
        payload["maintain"] = maintenance
        text += "\n" + plan_text.maintain_text(maintenance)
    if repairs and (repairs["repairs"] or repairs["refusals"]):  # drift at the head: what `repair` would do
        payload["repair"] = repairs
        text += "\n" + drift.preview_text(repairs)
    message = ("%d revision(s) pending; review above, then run `%s upgrade`" % (len(pending), PROGRAM)
               if pending else "")
    return output.Result(int(status), payload, text, message=message)


# Revision 2's cutoff: the UTC midnight this many days after the server's now
# (MARGIN_DAYS in migrations/versions/826630e38563_partition_spans.py); rows
# stamped at or after it are the conversion's outliers.
CONVERSION_MARGIN_DAYS = 2


def conversion_outliers(conn, state):
    """Before the conversion of a plain spans (the head partitions it): the rows
    it will treat as outliers, read through the service/start index (legacy
    stores name the column start_ts). None when there is no such conversion ahead."""
    spans = contract.SPANS.name
    if spans not in state.unpartitioned:
        return None
    key = "start_ts" if "%s.start_time" % spans in state.missing_columns else "start_time"
    return outliers(conn, state.schema, CONVERSION_MARGIN_DAYS, key=key, loose=True)


def maintain_preview(conn, schema: str):
    """What `otelmig maintain` (default --ahead, no --retain) would do now, when
    spans is partitioned; None when it is not. Reads the catalog only."""
    layout = partitions.read_layout(conn, schema)
    if not layout.partitioned or layout.problem() or partitions.adopted_as_found(conn, schema):
        return None  # maintain would refuse: nothing of its to show
    decision = partitions.decide(layout, partitions.server_now(conn), layout.partitioning.ahead_days, None,
                                 partitions.read_ownership(conn, schema))
    return {"create": [new.name for new in decision.fill + decision.create], "finalize": decision.finalize,
            "conflicts": decision.conflicts, "ahead_days": layout.partitioning.ahead_days,
            "partitions": len(layout.partitions)}


def _plan_revision(conn, cursor, schema: str, script, first: bool) -> dict:
    names = SchemaSQL(schema)
    ask = Catalog.on_cursor(cursor)
    statements = _preflight_entries(conn, schema, script) if first else []
    for step in script.module.upgrade_steps(names):
        decision = decide(step, names, ask)
        if decision.refusal:
            table = "%s.%s" % (schema, step.table) if step.table else None
            statements.append({"refuse": decision.refusal, "table": table, "lock": "none",
                               "effect": "stops the upgrade (exit 8)", "sql": "", "outside_transaction": False})
            continue
        for planned in decision.statements:
            entry = _entry(names, step, planned.sql, planned.concurrently, planned.display)
            if planned.table:
                entry.update(_table_stats(cursor, planned.table))
            statements.append(entry)
    return {"revision": script.revision, "doc": (script.doc or "").strip(), "statements": statements}


def _outline_revision(cursor, schema: str, script, guarded: bool) -> dict:
    """A revision after the first pending one: every statement it may run, each
    with its condition in words, decided when the revision runs (the earlier
    ones change what it finds). Sizes are this database's now; a statement per
    partition is listed once per partition there now."""
    names = SchemaSQL(schema)
    statements = []
    for step in script.module.upgrade_steps(names):
        if isinstance(step, Refusal):
            statements += _refusal_holding_now(cursor, names, step, script.revision, guarded) or []
            continue
        outside = runs_outside(step)
        for sql, table, display in _each_statement(cursor, names, step, outside, guarded):
            entry = _entry(names, step, sql, outside, display)
            entry["conditional"] = step.when is not None
            if step.when is not None:
                entry["condition"] = step.condition or "if its catalog condition holds then"
            if table:
                entry.update(_table_stats(cursor, table))
            statements.append(entry)
    return {"revision": script.revision, "doc": (script.doc or "").strip(), "statements": statements,
            "decided": False}


def _refusal_holding_now(cursor, names: SchemaSQL, step: Refusal, revision: str, guarded: bool) -> list:
    """A later revision's refusal, asked of the catalog as it is now: named when
    it holds now (the revisions before it may still change that; plan says so),
    [] when it does not hold now, None when it cannot be asked yet (a column
    the earlier revisions have yet to make: their run decides it)."""
    if guarded:
        cursor.execute("savepoint otelmig_plan")
    try:
        refusal = decide(step, names, Catalog.on_cursor(cursor)).refusal
        if guarded:
            cursor.execute("release savepoint otelmig_plan")
    except Exception:
        if guarded:
            cursor.execute("rollback to savepoint otelmig_plan")
        return None
    if not refusal:
        return []
    return [_later_refusal(refusal, "%s.%s" % (names.schema, step.table) if step.table else None, revision)]


def _later_refusal(message: str, table, revision: str) -> dict:
    return {"refuse": message, "table": table, "lock": "none", "effect": "stops the upgrade (exit 8)", "sql": "",
            "outside_transaction": False, "conditional": True,
            "condition": "if still so when revision %s runs (it is now)" % revision}


def _too_many_outliers(schema: str, pending: list, scripts: list, outlying) -> None:
    """The conversion's own refusal of more outliers than it moves reads start_time, which a legacy store
    gets from the baseline: not askable before it ran. plan counted them (on start_ts): named here."""
    later = {script.revision: script for script in scripts[1:]}
    script = later.get(contract.PARTITIONING_REVISION)
    limit = getattr(script.module, "MAX_OUTLIERS", None) if script else None
    if outlying is None or limit is None or outlying["count"] <= limit:
        return
    outlying["refused_over"] = limit  # outliers_text says so, not that the conversion keeps them
    rev = next(rev for rev in pending if rev["revision"] == script.revision)
    rev["statements"].insert(0, _later_refusal(
        "%d span(s) in %s.spans are stamped at or after the cutoff %s, more than the %d its conversion moves "
        "under its short ACCESS EXCLUSIVE lock; delete them or correct their start time, then run the upgrade"
        % (outlying["count"], schema, outlying["since"], limit), "%s.spans" % schema, script.revision))


def _entry(names: SchemaSQL, step, sql: str, concurrently: bool, display) -> dict:
    entry = {"sql": sql, "table": display, "lock": lock_taken(step, concurrently) or "none", "effect": step.effect,
             "outside_transaction": concurrently, "bookkeeping": names.is_bookkeeping(sql)}
    if step.label:
        entry["label"] = step.label
    if step.condition and step.condition.startswith(STOPPED_RUN):
        entry["after_stopped_run"] = True
    return entry


def _each_statement(cursor, names: SchemaSQL, step, outside: bool, guarded: bool):
    """(sql, qualified table, shown table) of each statement the step may run:
    a per-partition step once per partition of its table now (none on a plain
    table), the names filled as the run fills them."""
    if not isinstance(step, PerPartition):
        qualified = names.table(step.table) if step.table else None
        return [(sql_of(step, outside), qualified, "%s.%s" % (names.schema, step.table) if step.table else None)]
    # The query reads the catalog only; should it fail on a catalog an earlier
    # revision has yet to shape, plan still lists the statement, once, in words.
    # A savepoint keeps plan's READ ONLY transaction usable; behind statement
    # pooling plan reads in autocommit (db.read_only_connection), with no
    # transaction to keep and none allowed to open.
    if guarded:
        cursor.execute("savepoint otelmig_plan")
    try:
        cursor.execute(step.for_each)
        found = cursor.fetchall()
        if guarded:
            cursor.execute("release savepoint otelmig_plan")
    except Exception:
        if guarded:
            cursor.execute("rollback to savepoint otelmig_plan")
        words = "<each partition of %s.%s>" % (names.schema, step.table)
        return [(fill_partition(sql_of(step, outside), words, words + "_index", words + "_index"), None, None)]
    return [(fill_partition(sql_of(step, outside), partition, index_name, index), partition, display)
            for partition, index_name, index, display in found]


def _preflight_entries(conn, schema: str, script) -> list:
    """The compatibility conflicts `upgrade` would refuse before its first step (otelmig.compat)."""
    check = getattr(script.module, "preflight", None)
    if check is None:
        return []
    return [{"refuse": conflict.line(), "table": None, "lock": "none", "effect": "stops the upgrade (exit 8)",
             "sql": "", "outside_transaction": False}
            for conflict in check(read_catalog(conn, schema), schema)]


def _table_stats(cursor, qualified_table: str) -> dict:
    """rows_estimate and size_bytes of the table now; created_by_plan when it does not exist yet."""
    cursor.execute(_TABLE_STATS_SQL, (qualified_table, qualified_table))
    row = cursor.fetchone()
    if not row or not row[2]:
        return {"rows_estimate": None, "size_bytes": 0, "created_by_plan": True}
    return {"rows_estimate": None if row[0] is None else int(row[0]), "size_bytes": int(row[1])}
