"""plan: what an upgrade would do here, without writing anything.

It reads inside a READ ONLY transaction that is rolled back, evaluates each
pending step's catalog condition against this database's actual state (the
same SQL that the online run and --sql use), and lists the statements that
would run, the lock each takes, what it does to the table, and the table's
current row estimate and size.
"""

from otelmig import db, output
from otelmig._version import HEAD_REVISION
from otelmig.check import ensure_known, read_state
from otelmig.ddl import Names, has_rows
from otelmig.errors import ExitStatus
from otelmig.migrate import revisions_between

# reltuples is -1 until the table was first analyzed (0 with relpages 0 before
# PostgreSQL 14); the statistics system's live-row count is there from the first insert.
_TABLE_STATS_SQL = """
select case when c.reltuples > 0 or (c.reltuples = 0 and c.relpages > 0) then c.reltuples::bigint
            else s.n_live_tup end,
       pg_total_relation_size(c.oid)
from pg_class c left join pg_stat_all_tables s on s.relid = c.oid
where c.oid = to_regclass(%s)
"""


def plan(settings, out, err) -> int:
    conn = db.connect(settings.conninfo, autocommit=False, probe=True)
    try:
        cursor = conn.cursor()
        cursor.execute("SET TRANSACTION READ ONLY")
        state = read_state(conn, settings.schema)
        ensure_known(state)
        pending = [_plan_revision(cursor, settings.schema, script)
                   for script in revisions_between(settings, state.revision, HEAD_REVISION)]
    finally:
        conn.rollback()
        conn.close()
    status = ExitStatus.PENDING if pending else ExitStatus.OK
    payload = {"exit_code": int(status), "schema": settings.schema, "database_revision": state.revision,
               "head": HEAD_REVISION, "pending": pending}
    output.emit(settings, out, payload, _text(settings.schema, state.revision, pending))
    return int(status)


def _plan_revision(cursor, schema: str, script) -> dict:
    names = Names(schema)

    def scalar(sql, params=()):
        cursor.execute(sql, params)
        return cursor.fetchone()[0]

    statements = []
    for step in script.module.upgrade_steps(names):
        if step.when is not None and not scalar("select " + step.when):
            continue
        concurrently = bool(step.concurrent and scalar("select " + names.table_exists(step.table))
                            and has_rows(scalar, names, step.table))
        entry = {"sql": step.statement(concurrently), "table": "%s.%s" % (schema, step.table) if step.table else None,
                 "lock": step.lock_taken(concurrently) or "none", "effect": step.effect,
                 "outside_transaction": concurrently}
        if step.refuse:
            entry = {"refuse": step.refuse + (scalar("select " + step.detail) if step.detail else ""),
                     "table": entry["table"], "lock": "none", "effect": "stops the upgrade (exit 8)",
                     "sql": "", "outside_transaction": False}
        if step.table:
            stats = _table_stats(cursor, names, step.table)
            entry.update(rows_estimate=stats[0], size_bytes=stats[1])
        statements.append(entry)
    return {"revision": script.revision, "doc": (script.doc or "").strip(), "statements": statements}


def _table_stats(cursor, names: Names, table: str):
    cursor.execute(_TABLE_STATS_SQL, (names.table(table),))
    row = cursor.fetchone()
    if not row:
        return None, 0
    return (None if row[0] is None else int(row[0])), int(row[1])


def _text(schema: str, revision, pending) -> str:
    if not pending:
        return "plan: schema %s is at the head %s; nothing to do" % (schema, HEAD_REVISION)
    lines = ["plan: schema %s at %s; %d revision(s) pending" % (schema, revision or "base", len(pending))]
    for rev in pending:
        lines.append("")
        lines.append("revision %s: %s" % (rev["revision"], rev["doc"].splitlines()[0] if rev["doc"] else ""))
        for number, entry in enumerate(rev["statements"], 1):
            where = ""
            if "rows_estimate" in entry:
                rows = entry["rows_estimate"]
                where = " [%s: %s, %s]" % (entry["table"], "rows not estimated yet (never analyzed)" if rows is None
                                           else "~%d rows" % rows, _size(entry["size_bytes"]))
            if entry.get("refuse"):
                lines.append("  %2d. REFUSE: %s" % (number, entry["refuse"]))
                continue
            first = " ".join(entry["sql"].split())
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
