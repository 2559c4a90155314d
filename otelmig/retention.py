"""The rows retention deletes one by one: spans older than the window that no
dropped partition took with it, and the traces left without spans.

maintain drops our partitions wholly older than the window first; what is
left older than the window's start is in partitions it keeps (the history
partition and the day that straddle the start, DEFAULT, a partition that is
not otelmig's or that another object needs). Those rows are deleted in
batches of BATCH, each its own transaction (short row locks, WAL in small
pieces, a writer never waits for more than one batch). Each batch is found
through ix_spans_service_start_time, one index range per service (a loose
scan), never by scanning the partition: a seq scan from the start would pass
over the rows the previous batches deleted, again and again.

Traces follow one rule (docs/retention-internals.md): a trace row is deleted
when it started before the window's start and no span of it is left, in any
partition. One whose spans are still inside the window (a trace that began
before the window's start and went on) is kept until they leave it: its last
span's start_time plus the window. Traces are read in pages in (start_time,
trace_id) order through ix_traces_start_time, so the ones kept are looked at
once per run.
"""

from typing import List, NamedTuple, Optional

from otelmig import db, partitions

BATCH = 5000  # rows per DELETE transaction


class KeptTraces(NamedTuple):
    deleted: int
    kept: int                # trace rows older than the window kept for their spans
    until: Optional[str]     # when the last of those can go (UTC text), None when none is kept


NO_TRACES_KEPT = KeptTraces(0, 0, None)


def _old_partitions(layout: partitions.Layout, window_start: partitions.Moment, dropping=()) -> List[str]:
    """The partitions (DEFAULT too) that can hold a row older than the window, but those being dropped."""
    found = []
    for p in layout.partitions:
        if p.name in dropping:
            continue
        if p.is_default or p.lower is None or p.lower_moment.epoch < window_start.epoch:
            found.append(p.name)
    return found


def _batch_sql(schema: str, table: str, key: str, window_sql: str) -> str:
    """DELETE of up to BATCH rows older than the window from one partition, found per service through the index."""
    part = "%s.%s" % (db.quote_ident(schema), db.quote_ident(table))
    return """WITH RECURSIVE services(name) AS (
  (SELECT service_name FROM ONLY {part} WHERE service_name IS NOT NULL ORDER BY service_name LIMIT 1)
  UNION ALL
  SELECT (SELECT s.service_name FROM ONLY {part} s WHERE s.service_name > services.name
          ORDER BY s.service_name LIMIT 1) FROM services WHERE services.name IS NOT NULL)
DELETE FROM ONLY {part} WHERE ctid = ANY (ARRAY(
  (SELECT o.ctid FROM services s CROSS JOIN LATERAL (
     SELECT t.ctid FROM ONLY {part} t WHERE t.service_name = s.name AND t.{key} < {ws} LIMIT {n}) o
   WHERE s.name IS NOT NULL LIMIT {n})
  UNION ALL
  (SELECT t.ctid FROM ONLY {part} t WHERE t.service_name IS NULL AND t.{key} < {ws} LIMIT {n})))""".format(
        part=part, key=key, ws=window_sql, n=BATCH)


def delete_old_spans(runner, layout: partitions.Layout, window_start: partitions.Moment) -> int:
    """Every span older than the window's start left in spans, in committed batches; the rows deleted."""
    window_sql = partitions.timestamptz_sql(window_start)
    key = db.quote_ident(layout.partitioning.key)
    total = 0
    for name in _old_partitions(layout, window_start):
        statement = _batch_sql(layout.schema, name, key, window_sql)
        while True:
            deleted = max(runner.run(lambda: runner.execute(statement), "deleting old spans from %s" % name), 0)
            total += deleted
            if deleted:
                runner.say("deleted %d span rows older than %s from %s (%d so far)"
                           % (deleted, window_start.text, name, total), level=1)
                runner.after_batch()
            if deleted == 0:
                break
    return total


def old_span_rows(conn, layout: partitions.Layout, window_start: partitions.Moment, dropping) -> int:
    """For --dry-run: the rows delete_old_spans would delete (a count of each partition's old rows)."""
    cursor = conn.cursor()
    key = db.quote_ident(layout.partitioning.key)
    total = 0
    for name in _old_partitions(layout, window_start, dropping):
        cursor.execute("select count(*) from only %s.%s where %s < %s" % (
            db.quote_ident(layout.schema), db.quote_ident(name), key, partitions.timestamptz_sql(window_start)))
        total += int(cursor.fetchone()[0])
    return total


# One page of traces older than the window, after the last one seen: each
# deleted when no span of it is left; for those kept, their newest span.
_TRACE_PAGE_SQL = """
WITH page AS (
  SELECT trace_id, start_time FROM {traces} WHERE start_time < {ws} AND {after}
  ORDER BY start_time, trace_id LIMIT {n}),
judged AS (
  SELECT p.trace_id, p.start_time, (SELECT max(s.start_time) FROM {spans} s WHERE s.trace_id = p.trace_id) AS last_span
  FROM page p),
gone AS (
  DELETE FROM {traces} t USING judged j WHERE t.trace_id = j.trace_id AND j.last_span IS NULL RETURNING 1),
last AS (SELECT trace_id, start_time FROM judged ORDER BY start_time DESC, trace_id DESC LIMIT 1)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM judged WHERE last_span IS NOT NULL),
       {kept_text}, {kept_epoch}, {page_end}, l.trace_id, (SELECT count(*) FROM judged)
FROM (SELECT max(last_span) AS m FROM judged) k LEFT JOIN last l ON true
"""


def _trace_page(schema: str, window_start: partitions.Moment, after: Optional[str]) -> str:
    return _TRACE_PAGE_SQL.format(
        traces="%s.traces" % db.quote_ident(schema), spans="%s.spans" % db.quote_ident(schema),
        ws=partitions.timestamptz_sql(window_start), n=BATCH,
        after="true" if after is None else "(start_time, trace_id) > (%s, %%s)" % after,
        kept_text=partitions.utc_text_sql("k.m"), kept_epoch=partitions.epoch_sql("k.m"),
        page_end=partitions.utc_text_sql("l.start_time"))


def delete_old_traces(runner, schema: str, window_start: partitions.Moment, window: int) -> KeptTraces:
    """The trace rule, page by page, each page its own transaction."""
    after, params = None, ()
    deleted = kept = 0
    newest_kept: Optional[partitions.Moment] = None
    while True:
        statement = _trace_page(schema, window_start, after)
        row = runner.run(lambda: runner.query(statement, params), "deleting old traces")
        gone, held, kept_text, kept_epoch, page_end, page_id, seen = row
        deleted, kept = deleted + gone, kept + held
        if kept_text is not None and (newest_kept is None or kept_epoch > newest_kept.epoch):
            newest_kept = partitions.moment_of(kept_text, kept_epoch)
        if gone:
            runner.say("deleted %d trace rows older than %s (%d so far)" % (gone, window_start.text, deleted),
                       level=1)
            runner.after_batch()
        if seen < BATCH:
            break
        after, params = partitions.timestamptz_sql(partitions.moment_of(page_end, 0.0)), (page_id,)
    until = None
    if newest_kept is not None:
        until = runner.read(lambda: _plus(runner.conn, newest_kept, window))
    return KeptTraces(deleted, kept, until)


# 294277-01-01 00:00:00 UTC, just past PostgreSQL's last timestamp.
_END_OF_TIME_EPOCH = 9224318016000.0


def _plus(conn, moment: partitions.Moment, seconds: int) -> str:
    """moment + seconds as UTC text; 'infinity' when that is past PostgreSQL's last timestamp (decided here,
    so that the server never computes an out-of-range value)."""
    if moment.epoch + seconds >= _END_OF_TIME_EPOCH:
        return "infinity"
    cursor = conn.cursor()
    cursor.execute("select %s from (select %s + make_interval(secs => %%s::float8) as u) x"
                   % (partitions.utc_text_sql("x.u"), partitions.timestamptz_sql(moment)), (seconds,))
    return partitions.shown(cursor.fetchone()[0])


def old_traces(conn, schema: str, window_start: partitions.Moment) -> int:
    """For --dry-run: the trace rows the rule would delete once the old spans are gone."""
    cursor = conn.cursor()
    ws = partitions.timestamptz_sql(window_start)
    cursor.execute("select count(*) from {s}.traces t where t.start_time < {ws} and not exists (select 1 from "
                   "{s}.spans x where x.trace_id = t.trace_id and x.start_time >= {ws})".format(
                       s=db.quote_ident(schema), ws=ws))
    return int(cursor.fetchone()[0])
