"""verify: the live catalog against the head contract (otelmig/schema.py).

One catalog round trip per kind (columns, indexes and constraints), never one
per column, so the cost does not grow with the data: it reads pg_catalog only.
The reader and the comparison are otelmig/catalog.py's (upgrade's checks use
them too); the state is otelmig/state.py's, the partition layout
otelmig/partitions.py's.
"""

import time
from typing import List, Optional

from otelmig import db, default_partition, drift, output, partitions, runlog, schema as contract
from otelmig._version import HEAD_REVISION
from otelmig.catalog import Problem, Report, compare, outliers, read_catalog, utc_text
from otelmig.state import assess, describe, fix_for, read_state, rejects_writes_gauge
from otelmig.errors import PROGRAM, ExitStatus, PendingError

# The JSON fields of a failed verify (cli adds exit_code, schema, message).
FAILURE_FIELDS = {"head": HEAD_REVISION, "database_revision": None, "ok": False, "problems": [], "extras": []}


def failure_prometheus(schema: str, status) -> str:
    return prometheus_text(schema, status, [], [])


def verify(settings, err, strict: bool = False) -> output.Result:
    started = time.monotonic()
    conn = db.connect(settings.conninfo, probe=True)
    try:
        state = read_state(conn, settings.schema)
        catalog = read_catalog(conn, settings.schema)
        report = with_write_checks(settings.schema, state, compare(settings.schema, catalog))
        report = with_unfinished_runs(conn, settings.schema, report)
        # A helper CHECK a stopped repair left rejects NULL inserts: a problem, whatever else holds.
        # So does an INVALID copy a stopped REINDEX CONCURRENTLY left (on a partition too, where nothing else sees it).
        left = drift.helpers_left(conn, settings.schema) + drift.reindex_copies(conn, settings.schema)
        named = {r.problem.object for r in left}  # a copy is a problem, not also an extra index
        report = report._replace(problems=report.problems + [r.problem for r in left],
                                 extras=[e for e in report.extras if e.object not in named])
        if catalog.kinds.get(contract.SPANS.name) == "p":
            report = with_partition_checks(conn, settings.schema, report)
        # The last run of the history (otelmig/runlog.py), as a fact: it never makes drift.
        report = report._replace(facts=dict(report.facts, last_run=runlog.last_run(conn, settings.schema)))
        # How many problems `repair` converges (otelmig/drift.py): the summary line names it.
        report = report._replace(facts=dict(report.facts, repairable=drift.repairable(settings.schema, report.problems,
                                                                                      catalog)))
    finally:
        db.close(conn)
    status, message = _verdict(settings, state, report, strict)
    return _result(settings, status, state, report, message, started)


def with_write_checks(schema: str, state, report: Report) -> Report:
    """What rejects writes, now or from a known moment (state.read_state found it):
    a leftover CHECK on the worker's tables is a problem, one on another table a
    note; a stamp the partitioned spans routes nowhere is a problem."""
    problems, extras = list(report.problems), list(report.extras)
    for left in state.leftovers:
        found = Problem("rejects_writes", "%s.%s.%s" % (schema, left.table, left.constraint),
                        "%s: %s" % (describe(schema, left), fix_for(schema, left)))
        (problems if left.worker_table else extras).append(found)
    if state.refused_rows:
        problems.append(Problem("rejects_writes", "%s.%s" % (schema, contract.SPANS.name),
                                "no partition takes a row stamped %s, and there is no DEFAULT partition: every "
                                "such insert fails; run `%s maintain`" % (" nor ".join(state.refused_rows), PROGRAM)))
    facts = dict(report.facts, rejects_writes_from=[left.as_dict() for left in state.leftovers])
    return report._replace(problems=problems, extras=extras, facts=facts)


# What a run that stopped part way left, found by what marks it as otelmig's:
# a trigger or function named otelmig_* whose comment is a run's key (revision
# 2's cutoff step), and an inheritance child of the plain spans named as
# revision 2 names its tables (its holding child, or a partition a stopped
# downgrade made a child). None of it rejects a write; the next upgrade or
# downgrade finishes or undoes it first.
_UNFINISHED_SQL = """
select coalesce(array(
  select 'trigger ' || t.tgname || ' on ' || t.tgrelid::regclass::text from pg_trigger t
  join pg_class c on c.oid = t.tgrelid join pg_namespace n on n.oid = c.relnamespace
  where n.nspname = %s and t.tgname::text like 'otelmig\\_%%' and not t.tgisinternal
  union all
  select 'function ' || p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace
  where n.nspname = %s and p.proname::text like 'otelmig\\_%%' and obj_description(p.oid, 'pg_proc') ~ '^-?[0-9]+$'
  union all
  select 'table ' || i.inhrelid::regclass::text || ' (an inheritance child of spans, its rows visible there)'
  from pg_inherits i join pg_class c on c.oid = i.inhparent join pg_namespace n on n.oid = c.relnamespace
  join pg_class k on k.oid = i.inhrelid
  where n.nspname = %s and c.relname = 'spans' and c.relkind = 'r'
    and k.relname::text ~ '^spans_(outliers|default|p[0-9]{8})$'
  order by 1), '{}')"""


def unfinished_runs(conn, schema: str) -> List[str]:
    cursor = conn.cursor()
    cursor.execute(_UNFINISHED_SQL, (schema, schema, schema))
    return list(cursor.fetchone()[0])


def with_unfinished_runs(conn, schema: str, report: Report) -> Report:
    left = unfinished_runs(conn, schema)
    if not left:
        return report
    found = Problem("unfinished_run", "%s.%s" % (schema, contract.SPANS.name),
                    "a run stopped part way and left %s; none of it rejects a write: `%s upgrade` "
                    "finishes the revision (or `%s downgrade` undoes it), and either removes them first"
                    % ("; ".join(left), PROGRAM, PROGRAM))
    return report._replace(problems=report.problems + [found],
                           facts=dict(report.facts, unfinished_run=left))


def with_partition_checks(conn, schema: str, report: Report) -> Report:
    """A partitioned spans (otelmig.schema.SPANS_PARTITIONING): partitions for
    today and the coming days, no gaps, a DEFAULT partition, every parent index
    attached and valid on every partition (problems); rows in the DEFAULT
    partition (a note). Partitions carry the parent's columns by construction.
    A layout the operator made, which revision 2 adopted as found, is checked
    for gaps and unfinished detaches only: its partitions are the operator's."""

    layout = partitions.read_layout(conn, schema)
    if layout.problem():
        return report
    spans = "%s.%s" % (schema, layout.partitioning.table)
    fix = "run `%s maintain`" % PROGRAM
    if partitions.adopted_as_found(conn, schema, layout.partitioning):
        return Report(report.problems + _gap_problems(spans, layout) + _pending_problems(schema, layout, fix),
                      report.extras, report.legacy)
    decision = partitions.decide(layout, partitions.server_now(conn), layout.partitioning.ahead_days, None,
                                 partitions.read_ownership(conn, schema))
    problems = [Problem("missing_partition", "%s.%s" % (schema, new.name), "no partition holds %s to %s (today "
                        "and the next %d days need one; meanwhile rows go to the DEFAULT partition): %s"
                        % (new.lower, new.upper, layout.partitioning.ahead_days, fix)) for new in decision.create]
    problems += [Problem("missing_partition", spans, conflict) for conflict in decision.conflicts]
    problems += _gap_problems(spans, layout) + _pending_problems(schema, layout, fix)
    problems += [Problem("maintain_leftover", name, "left by a maintain that stopped while it made day partitions "
                         "out of the DEFAULT partition (%s; it rejects no write): the next maintain, upgrade or "
                         "downgrade removes it first" % what)
                 for name, what in default_partition.leftovers(conn, schema)]
    problems += [Problem("partition_index_missing", "%s.%s" % (schema, part), "lacks index %s of %s (never "
                         "attached, or invalid): create it on the partition and ALTER INDEX %s.%s ATTACH PARTITION "
                         "it" % (index, spans, schema, index))
                 for part, index in partitions.partitions_without_index(conn, schema)]
    extras = []
    facts = dict(report.facts, default_partition=None,
                 partitions_ahead_days=days_ahead(layout, partitions.server_now(conn)))
    if layout.default is None:
        problems.append(Problem("missing_default_partition", spans, "no DEFAULT partition: a row outside every "
                                "partition is rejected; CREATE TABLE %s.%s PARTITION OF %s DEFAULT"
                                % (schema, layout.partitioning.default, spans)))
    else:
        held = default_rows(conn, schema, layout.default.name, layout.partitioning.key)
        facts["default_partition"] = held
        if held["rows"]:
            extras.append(Problem("default_partition_rows", "%s.%s" % (schema, layout.default.name),
                                  "the DEFAULT partition holds %d row(s) no other partition covers, %s from %s to "
                                  "%s; `%s maintain` moves those of the coming days into their partitions "
                                  "and reports the rest" % (held["rows"], layout.partitioning.key, held["oldest"],
                                                            held["newest"], PROGRAM)))
    facts["outliers"] = outliers(conn, schema, layout.partitioning.ahead_days + 1)
    extras += outlier_notes(schema, facts["outliers"])
    return Report(report.problems + problems, report.extras + extras, report.legacy, facts)


def days_ahead(layout, now) -> Optional[int]:
    """How many whole UTC days after today the partitions hold without a break
    (0: today only; None: not even today). Counted up to MAX_DAYS_AHEAD."""
    import datetime
    day = datetime.datetime.combine(now.date(), datetime.time())
    held = -1
    while held < MAX_DAYS_AHEAD and layout.covering(day, day + datetime.timedelta(days=1)) is not None:
        held += 1
        day += datetime.timedelta(days=1)
    return None if held < 0 else held


MAX_DAYS_AHEAD = 366

# Every value as UTC text, never a timestamp for Python to parse: a span in year
# 56890, BC or at infinity is a row like any other here.
_DEFAULT_ROWS_SQL = """
select count(*), (min({key}) at time zone 'UTC')::text, (max({key}) at time zone 'UTC')::text from {table}
"""


def default_rows(conn, schema: str, default: str, key: str) -> dict:
    """Rows in the DEFAULT partition: count, oldest and newest (a scan of what it holds, meant to be little)."""
    cursor = conn.cursor()
    cursor.execute(_DEFAULT_ROWS_SQL.format(key=db.quote_ident(key), table="%s.%s" % (
        db.quote_ident(schema), db.quote_ident(default))))
    rows, oldest, newest = cursor.fetchone()
    return {"rows": int(rows), "oldest": utc_text(oldest), "newest": utc_text(newest)}



def outlier_notes(schema: str, found: dict) -> List[Problem]:
    if not found["count"]:
        return []
    shown = ", ".join("id %s at %s" % (row["id"], row["start_time"]) for row in found["newest"])
    return [Problem("outlying_rows", "%s.%s" % (schema, contract.SPANS.name),
                    "%d span(s) stamped at or after %s (past the days partitions are kept for), newest: %s; they "
                    "stay queryable (check the writer's clock and units)" % (found["count"], found["since"], shown))]


def _gap_problems(spans: str, layout) -> List[Problem]:
    return [Problem("partition_gap", spans, "no partition holds %s to %s: rows there go to the DEFAULT partition, "
                    "or are rejected without one" % gap) for gap in layout.gaps()]


def _pending_problems(schema: str, layout, fix: str) -> List[Problem]:
    return [Problem("partition_detach_pending", "%s.%s" % (schema, p.name), "a DETACH ... CONCURRENTLY did not "
                    "finish: %s (it finalizes it)" % fix) for p in layout.ranged if p.detach_pending]


def _verdict(settings, state, report: Report, strict: bool):
    error = assess(state)
    problems = report.problems
    if error is not None and error.exit_status == ExitStatus.NOT_INITIALISED:
        if report.legacy:
            return error.exit_status, ("schema %s holds the legacy runtime layout (start_ts, status, attributes, "
                                       "no migrations recorded): run `%s upgrade` to adopt it"
                                       % (settings.schema, PROGRAM))
        if state.unpartitioned:  # recorded at the head over the layout before it (stamped)
            return error.exit_status, error.message
        if state.revision is not None:  # at head, a table is missing: that is drift
            error = None
        else:
            return error.exit_status, error.message
    rejecting = [p for p in problems if p.kind == "rejects_writes"]
    if error is not None:
        kind = "pending_revision" if isinstance(error, PendingError) else "unknown_revision"
        problems.insert(0, Problem(kind, "%s.%s" % (settings.schema, contract.VERSION_TABLE),
                                   "expected %s, found %s" % (HEAD_REVISION, state.revision)))
        if not (rejecting and isinstance(error, PendingError)):
            return error.exit_status, error.message
    if rejecting:  # before anything else: the worker's inserts fail, or will
        return ExitStatus.DRIFT, "%s; see the report" % rejecting[0].detail
    if problems or (strict and report.extras):
        counted = problems + (report.extras if strict else [])
        return ExitStatus.DRIFT, ("schema %s differs from the head contract: %d problem(s)%s; see the report%s"
                                  % (settings.schema, len(counted), " (--strict counts extras)" if strict else "",
                                     _repair_hint(report.facts.get("repairable", 0), len(counted))))
    return ExitStatus.OK, ""


def _repair_hint(repairable: int, problems: int) -> str:
    if not repairable:
        return ""
    if repairable == problems:
        return "; run `%s repair` to fix %s" % (PROGRAM, "it" if problems == 1 else "them")
    return "; `%s repair` fixes %d of them once the others are fixed" % (PROGRAM, repairable)


def _result(settings, status, state, report, message, started) -> output.Result:
    problems, extras = report.problems, report.extras
    payload = {"exit_code": int(status), "schema": settings.schema, "ok": status == ExitStatus.OK,
               "head": HEAD_REVISION, "database_revision": state.revision,
               "problems": [p.as_dict() for p in problems], "extras": [p.as_dict() for p in extras],
               "seconds": round(time.monotonic() - started, 4)}
    payload.update(report.facts)
    if message:
        payload["message"] = message
    return output.Result(int(status), payload, _text(settings.schema, status, problems, extras, report.facts),
                         prometheus_text(settings.schema, status, problems, extras, state.leftovers, report.facts),
                         message)


def _text(schema: str, status, problems, extras, facts=None) -> str:
    lines = []
    if status == ExitStatus.OK:
        lines.append("ok: schema %s matches the head contract" % schema)
    facts = facts or {}
    if "partitions_ahead_days" in facts:
        ahead = facts["partitions_ahead_days"]
        lines.append("partitions: %s" % ("none holds today" if ahead is None else
                                         "today and the next %d day(s)" % ahead))
    if facts.get("last_run"):
        lines.append("last run: %s" % runlog.describe_run(facts["last_run"]))
    rows = [("problem", p) for p in problems] + [("extra", p) for p in extras]
    if rows:
        width_kind = max(len(p.kind) for _, p in rows)
        width_obj = max(len(p.object) for _, p in rows)
        lines.append("%-7s  %-*s  %-*s  %s" % ("", width_kind, "kind", width_obj, "object", "detail"))
        for label, p in rows:
            lines.append("%-7s  %-*s  %-*s  %s" % (label, width_kind, p.kind, width_obj, p.object, p.detail))
    return "\n".join(lines)


def prometheus_text(schema: str, status, problems, extras, leftovers=(), facts=None) -> str:
    label = '{schema="%s"}' % schema
    facts = facts or {}
    gauges = rejects_writes_gauge(label, leftovers)
    if facts.get("default_partition") is not None:
        gauges += ["# HELP otelmig_verify_default_rows Rows in the DEFAULT partition of spans.",
                   "# TYPE otelmig_verify_default_rows gauge",
                   "otelmig_verify_default_rows%s %d" % (label, facts["default_partition"]["rows"])]
    if facts.get("partitions_ahead_days") is not None:
        gauges += ["# HELP otelmig_verify_partition_days_ahead Whole UTC days after today partitions hold.",
                   "# TYPE otelmig_verify_partition_days_ahead gauge",
                   "otelmig_verify_partition_days_ahead%s %d" % (label, facts["partitions_ahead_days"])]
    last = facts.get("last_run")
    if last and last.get("exit_code") is not None:
        gauges += ["# HELP otelmig_last_run_exit_code Exit code of the last recorded run (upgrade, downgrade, "
                   "stamp, maintain).",
                   "# TYPE otelmig_last_run_exit_code gauge",
                   "otelmig_last_run_exit_code%s %d" % (label, last["exit_code"])]
    if "outliers" in facts:
        gauges += ["# HELP otelmig_verify_outlying_rows Spans stamped past the days partitions are kept for.",
                   "# TYPE otelmig_verify_outlying_rows gauge",
                   "otelmig_verify_outlying_rows%s %d" % (label, facts["outliers"]["count"])]
    lines = [
        "# HELP otelmig_verify_ok 1 when the schema matches the head contract.",
        "# TYPE otelmig_verify_ok gauge",
        "otelmig_verify_ok%s %d" % (label, 1 if status == ExitStatus.OK else 0),
        "# HELP otelmig_verify_problems Problems found by the last verify.",
        "# TYPE otelmig_verify_problems gauge",
        "otelmig_verify_problems%s %d" % (label, len(problems)),
        "# HELP otelmig_verify_extras Operator additions beyond the contract.",
        "# TYPE otelmig_verify_extras gauge",
        "otelmig_verify_extras%s %d" % (label, len(extras)),
        "# HELP otelmig_verify_exit_code Exit code of the last verify.",
        "# TYPE otelmig_verify_exit_code gauge",
        "otelmig_verify_exit_code%s %d" % (label, int(status)),
        "# HELP otelmig_verify_timestamp_seconds When the last verify ran.",
        "# TYPE otelmig_verify_timestamp_seconds gauge",
        "otelmig_verify_timestamp_seconds%s %.3f" % (label, time.time()),
    ] + gauges
    return "\n".join(lines) + "\n"


