"""--record-trace: the run's own trace, written into the store it migrated.

After a successful upgrade to the head, the run's spans (otelmig/run.py) go
into {schema}.spans and one row into {schema}.traces, so the team's trace UI
shows the store's own migrations. Only the contract's columns are written
(otelmig/schema.py TRACES and SPANS), by name; at the head spans is
partitioned by day (revision 2), and rows stamped now go to today's
partition (or DEFAULT). Two runs of one pipeline share a trace id
(TRACEPARENT): the second adds its spans to the trace's row.

Like the history and the export, it never changes the outcome: a failure is
one warning line on stderr.
"""

import datetime
import json

from otelmig import db, run as run_model, session
from otelmig.runlog import describe_error
from otelmig.revisions import HEAD_REVISION
from otelmig.schema import SPANS, TRACES

KINDS = {run_model.KIND_INTERNAL: "SPAN_KIND_INTERNAL", run_model.KIND_CLIENT: "SPAN_KIND_CLIENT"}
STATUSES = {run_model.STATUS_UNSET: "STATUS_CODE_UNSET", run_model.STATUS_OK: "STATUS_CODE_OK",
            run_model.STATUS_ERROR: "STATUS_CODE_ERROR"}
INGEST_SOURCE = "otelmig"


def _utc(nanoseconds: int) -> str:
    moment = datetime.datetime.fromtimestamp(nanoseconds / 1e9, datetime.timezone.utc)
    return moment.isoformat()


def span_rows(run_, service_name: str) -> list:
    rows = []
    for span in run_.spans:
        end = span.end_ns or span.start_ns
        attributes = {key: value for key, value in span.attributes.items()}
        if span.events:
            attributes["otelmig.events"] = [{"name": name, "time": _utc(at), "attributes": values}
                                            for name, at, values in span.events]
        rows.append({"trace_id": run_.trace_id, "span_id": span.span_id, "parent_span_id": span.parent_id,
                     "name": span.name, "kind": KINDS.get(span.kind, "SPAN_KIND_INTERNAL"),
                     "service_name": service_name, "start_time": _utc(span.start_ns), "end_time": _utc(end),
                     "duration_ms": (end - span.start_ns) / 1e6, "status_code": STATUSES[span.status],
                     "status_message": span.status_message or None, "span_attributes": attributes})
    return rows


def _columns(table, rows) -> list:
    """The contract's columns the rows fill (the store's own defaults do the rest)."""
    return [c for c in table.columns if c.name in rows[0]]


def _insert_spans_sql(schema: str, rows) -> str:
    columns = _columns(SPANS, rows)
    names = ", ".join(db.quote_ident(c.name) for c in columns)
    return ("insert into %s.%s (%s) select %s from jsonb_to_recordset(%%s::jsonb) as r(%s)"
            % (db.quote_ident(schema), db.quote_ident(SPANS.name), names,
               ", ".join("r.%s" % db.quote_ident(c.name) for c in columns),
               ", ".join("%s %s" % (db.quote_ident(c.name), c.type) for c in columns)))


def _upsert_trace_sql(schema: str) -> str:
    table = "%s.%s" % (db.quote_ident(schema), db.quote_ident(TRACES.name))
    return ("insert into %s (trace_id, service_name, root_span_name, start_time, end_time, duration_ms, span_count, "
            "ingest_source, resource_attributes, trace_attributes) "
            "values (%%s, %%s, %%s, %%s::timestamptz, %%s::timestamptz, %%s, %%s, %%s, %%s::jsonb, %%s::jsonb) "
            "on conflict (trace_id) do update set span_count = %s.span_count + excluded.span_count, "
            "end_time = greatest(%s.end_time, excluded.end_time), "
            "duration_ms = extract(epoch from greatest(%s.end_time, excluded.end_time) "
            "- least(%s.start_time, excluded.start_time)) * 1000"
            % ((table,) + (db.quote_ident(TRACES.name),) * 4))


def record(settings, err, run_, service_name: str = "otelmig") -> None:
    """A finisher (otelmig/run.py): only after a successful upgrade that left the store at the head."""
    if run_.outcome != run_model.OK or run_.command != "upgrade" or not run_.spans:
        return
    try:
        _record(settings, run_, service_name)
    except Exception as exc:
        err.write("warning: --record-trace: the run's trace was not written into %s.%s: %s; the run's outcome "
                  "stands\n" % (settings.schema, SPANS.name, describe_error(exc)))


def _record(settings, run_, service_name: str) -> None:
    conn = db.connect(settings.conninfo, autocommit=False, purpose=session.LOCK)
    try:
        cursor = conn.cursor()
        cursor.execute("select max(version_num) from %s.alembic_version" % db.quote_ident(settings.schema))
        if cursor.fetchone()[0] != HEAD_REVISION:
            conn.rollback()
            return  # the contract's columns are the head's: a store below it is not written
        rows = span_rows(run_, service_name)
        root = run_.root
        cursor.execute(_insert_spans_sql(settings.schema, rows), (json.dumps(rows, default=str),))
        duration = ((root.end_ns or root.start_ns) - root.start_ns) / 1e6
        cursor.execute(_upsert_trace_sql(settings.schema), (
            run_.trace_id, service_name, root.name, _utc(root.start_ns), _utc(root.end_ns or root.start_ns),
            duration, len(rows), INGEST_SOURCE, json.dumps({"service.name": service_name}),
            json.dumps({"otelmig.run_id": run_.trace_id, "otelmig.command": run_.command})))
        conn.commit()
    finally:
        db.close(conn)
