"""plan: what an upgrade would do here, without writing anything.

It reads inside a READ ONLY transaction that is rolled back, evaluates each
pending step's catalog condition against this database's actual state (the
same SQL that the online run and --sql use), and lists the statements that
would run, the lock each takes, what it does to the table, and the table's
current row estimate and size.
"""

from otelmig import db, drift, output, partitions, schema as contract
from otelmig._version import HEAD_REVISION
from otelmig.catalog import outliers, read_catalog
from otelmig.state import ensure_known, read_state, schema_missing
from otelmig.ddl import Catalog, SchemaSQL, Refusal, decide, lock_taken, runs_outside, sql_of
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
                   else _outline_revision(settings.schema, script)
                   for number, script in enumerate(scripts)]
        maintenance = None if pending else maintain_preview(conn, settings.schema)
        repairs = None if pending else drift.preview(conn, settings.schema)
        outlying = conversion_outliers(conn, state) if pending else None
    finally:
        db.close(conn)
    status = ExitStatus.PENDING if pending else ExitStatus.OK
    payload = {"exit_code": int(status), "schema": settings.schema, "database_revision": state.revision,
               "head": HEAD_REVISION, "pending": pending}
    text = _text(settings.schema, state.revision, pending)
    if outlying is not None:
        payload["outliers"] = outlying
        text += "\n" + _outliers_text(settings.schema, outlying)
    if maintenance is not None:
        payload["maintain"] = maintenance
        text += "\n" + _maintain_text(maintenance)
    if repairs and (repairs["repairs"] or repairs["refusals"]):  # drift at the head: what `repair` would do
        payload["repair"] = repairs
        text += "\n" + drift.preview_text(repairs)
    return output.Result(int(status), payload, text)


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


def _outliers_text(schema: str, found: dict) -> str:
    if not found["count"]:
        return "outliers: no span in %s.spans is stamped at or after %s (the conversion's cutoff)" % (
            schema, found["since"])
    key = next((k for k in found["newest"][0] if k != "id"), "start_time") if found["newest"] else "start_time"
    shown = ", ".join("id %s at %s" % (row["id"], row[key]) for row in found["newest"])
    return ("outliers: %d span(s) in %s.spans stamped at or after %s (the conversion's cutoff): the conversion "
            "keeps them, queryable, outside its day partitions; newest: %s" % (found["count"], schema, found["since"],
                                                                               shown))


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


def _maintain_text(preview: dict) -> str:
    lines = ["maintain (today and %d days ahead; drops only with --retain, see `%s maintain --retain "
             "DURATION --dry-run`):" % (preview["ahead_days"], PROGRAM)]
    lines += ["  maintain would create %s" % name for name in preview["create"]]
    lines += ["  maintain would finish detaching %s" % name for name in preview["finalize"]]
    lines += ["  maintain cannot: %s" % conflict for conflict in preview["conflicts"]]
    if len(lines) == 1:
        lines.append("  nothing to create: the partitions of the coming days exist")
    return "\n".join(lines)


def _plan_revision(conn, cursor, schema: str, script, first: bool) -> dict:
    names = SchemaSQL(schema)

    def scalar(sql):
        cursor.execute(sql)
        return cursor.fetchone()[0]

    def rows(sql):
        cursor.execute(sql)
        return cursor.fetchall()

    statements = _preflight_entries(conn, schema, script) if first else []
    for step in script.module.upgrade_steps(names):
        decision = decide(step, names, Catalog(scalar, rows))
        if decision.refusal:
            table = "%s.%s" % (schema, step.table) if step.table else None
            statements.append({"refuse": decision.refusal, "table": table, "lock": "none",
                               "effect": "stops the upgrade (exit 8)", "sql": "", "outside_transaction": False})
            continue
        for planned in decision.statements:
            entry = {"sql": planned.sql, "table": planned.display, "lock": lock_taken(step, planned.concurrently)
                     or "none", "effect": step.effect, "outside_transaction": planned.concurrently}
            if step.label:
                entry["label"] = step.label
            if planned.table:
                entry.update(zip(("rows_estimate", "size_bytes"), _table_stats(cursor, planned.table)))
            statements.append(entry)
    return {"revision": script.revision, "doc": (script.doc or "").strip(), "statements": statements}


def _outline_revision(schema: str, script) -> dict:
    """A revision after the first pending one: every statement it may run,
    each decided by its catalog condition when the revision runs."""
    statements = [{"sql": sql_of(step, runs_outside(step)), "lock": lock_taken(step, runs_outside(step)) or "none",
                   "effect": step.effect, "outside_transaction": runs_outside(step),
                   "table": "%s.%s" % (schema, step.table) if step.table else None, "conditional": step.when is not None,
                   **({"label": step.label} if step.label else {})}
                  for step in script.module.upgrade_steps(SchemaSQL(schema)) if not isinstance(step, Refusal)]
    return {"revision": script.revision, "doc": (script.doc or "").strip(), "statements": statements,
            "decided": False}


def _preflight_entries(conn, schema: str, script) -> list:
    """The compatibility conflicts `upgrade` would refuse before its first step (otelmig.compat)."""
    check = getattr(script.module, "preflight", None)
    if check is None:
        return []
    return [{"refuse": conflict.line(), "table": None, "lock": "none", "effect": "stops the upgrade (exit 8)",
             "sql": "", "outside_transaction": False}
            for conflict in check(read_catalog(conn, schema), schema)]


def _table_stats(cursor, qualified_table: str):
    cursor.execute(_TABLE_STATS_SQL, (qualified_table, qualified_table))
    row = cursor.fetchone()
    if not row or not row[2]:
        return None, 0
    return (None if row[0] is None else int(row[0])), int(row[1])


def _text(schema: str, revision, pending) -> str:
    if not pending:
        return "plan: schema %s is at the head %s; nothing to do" % (schema, HEAD_REVISION)
    lines = ["plan: schema %s at %s; %d revision(s) pending" % (schema, revision or "base", len(pending))]
    for rev in pending:
        lines.append("")
        lines.append("revision %s: %s" % (rev["revision"], rev["doc"].splitlines()[0] if rev["doc"] else ""))
        if rev.get("decided") is False:
            lines.append("  (after the revisions above; a statement marked * runs only if its condition holds then)")
        for number, entry in enumerate(rev["statements"], 1):
            where = ""
            if "rows_estimate" in entry:
                rows = entry["rows_estimate"]
                where = " [%s: %s, %s]" % (entry["table"], "rows not estimated yet (never analyzed)" if rows is None
                                           else "~%d rows" % rows, _size(entry["size_bytes"]))
            if entry.get("refuse"):
                lines.append("  %2d. REFUSE: %s" % (number, entry["refuse"]))
                continue
            words = entry["sql"].split()
            shown = "%s: %s" % (words[0], entry["label"]) if entry.get("label") else " ".join(words)
            first = ("* " if entry.get("conditional") else "") + shown
            lines.append("  %2d. %s" % (number, first if len(first) <= 110 else first[:107] + "..."))
            lines.append("      lock: %s; %s%s%s" % (entry["lock"], entry["effect"],
                                                   "; outside a transaction" if entry["outside_transaction"] else "",
                                                   where))
    return "\n".join(lines)


def _size(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return "%d %s" % (size, unit) if unit == "B" else "%.1f %s" % (size, unit)
        size /= 1024.0
    return str(size)
