"""The time-partitioned spans layout of revision 2 (otelmig.schema.SPANS_PARTITIONING),
built by plain SQL over a baseline store, for the maintain tests.

Revision 2's own conversion (`upgrade`, used where the cutoff does not
matter) puts the history cutoff two days in the future; retention tests need
day partitions (and rows) in the past, so this builds the same layout with any
cutoff: `upgrade <baseline>`, this SQL, then `stamp <revision 2>` (recorded
over the layout revision 2 produces, as if the conversion had run weeks ago)
and `upgrade`: the revisions after it, when the head has moved on.
"""

import datetime

from conftest import run_cli, sql
from helpers import run_all
from otelmig.revisions import HEAD_REVISION

BASELINE = "163d8f446eb9"
PARTITIONED = "826630e38563"  # revision 2, whose layout this builds
UTC_MIDNIGHT = "%s 00:00:00+00"


def server_today(url) -> datetime.date:
    return sql(url, "select (now() at time zone 'UTC')::date")[0][0]


def day_name(day: datetime.date) -> str:
    return "spans_p" + day.strftime("%Y%m%d")


def days(first: datetime.date, last: datetime.date):
    """Every date from first to last, both included."""
    return [first + datetime.timedelta(days=n) for n in range((last - first).days + 1)]


def build(url, cutoff_offset: int = -3, ahead: int = 7, default: bool = True, schema: str = "otel"):
    """A baseline store converted to the partitioned layout: spans_history FROM
    (MINVALUE) TO (today + cutoff_offset days), one partition per day from the
    cutoff to today + ahead, a DEFAULT partition (unless default=False), and
    ix_traces_start_time; stamped at the head. Returns the server's today."""
    result = run_cli("upgrade", BASELINE, "--schema", schema, url=url)
    assert result.code == 0, result.err
    today = server_today(url)
    cutoff = today + datetime.timedelta(days=cutoff_offset)
    statements = _conversion(schema, cutoff)
    for day in days(cutoff, today + datetime.timedelta(days=ahead)):
        statements.append(create_day_sql(schema, day))
    if default:
        statements.append("CREATE TABLE {s}.spans_default PARTITION OF {s}.spans DEFAULT".format(s=schema))
    statements.append("CREATE INDEX ix_traces_start_time ON {s}.traces (start_time)".format(s=schema))
    run_all(url, statements)
    result = run_cli("stamp", PARTITIONED, "--schema", schema, url=url)
    assert result.code == 0, result.err
    if HEAD_REVISION != PARTITIONED:  # the revisions after revision 2 (a run only then: it writes the run history)
        result = run_cli("upgrade", "--schema", schema, url=url)
        assert result.code == 0, result.err
    return today


def _conversion(schema: str, cutoff: datetime.date):
    s = schema
    return [
        "ALTER TABLE {s}.spans RENAME TO spans_history".format(s=s),
        "ALTER TABLE {s}.spans_history DROP CONSTRAINT spans_pkey".format(s=s),
        "ALTER INDEX {s}.ix_spans_trace_id RENAME TO spans_history_trace_id_idx".format(s=s),
        "ALTER INDEX {s}.ix_spans_span_id RENAME TO spans_history_span_id_idx".format(s=s),
        "ALTER INDEX {s}.ix_spans_service_start_time RENAME TO spans_history_service_name_start_time_idx"
        .format(s=s),
        "CREATE TABLE {s}.spans (LIKE {s}.spans_history INCLUDING DEFAULTS) PARTITION BY RANGE (start_time)"
        .format(s=s),
        "ALTER TABLE {s}.spans ADD CONSTRAINT spans_pkey PRIMARY KEY (id, start_time)".format(s=s),
        "CREATE INDEX ix_spans_trace_id ON {s}.spans (trace_id)".format(s=s),
        "CREATE INDEX ix_spans_span_id ON {s}.spans (span_id)".format(s=s),
        "CREATE INDEX ix_spans_service_start_time ON {s}.spans (service_name, start_time DESC)".format(s=s),
        "ALTER SEQUENCE {s}.spans_id_seq OWNED BY {s}.spans.id".format(s=s),
        "ALTER TABLE {s}.spans ATTACH PARTITION {s}.spans_history FOR VALUES FROM (MINVALUE) TO ('{c}')"
        .format(s=s, c=UTC_MIDNIGHT % cutoff.isoformat()),
    ]


def create_day_sql(schema: str, day: datetime.date) -> str:
    return "CREATE TABLE {s}.{n} PARTITION OF {s}.spans FOR VALUES FROM ('{a}') TO ('{b}')".format(
        s=schema, n=day_name(day), a=UTC_MIDNIGHT % day.isoformat(),
        b=UTC_MIDNIGHT % (day + datetime.timedelta(days=1)).isoformat())


def insert_spans(url, start_times, schema: str = "otel"):
    """One span per SQL timestamptz expression (e.g. "now() - interval '20 days'")."""
    for number, when in enumerate(start_times):
        sql(url, "insert into {s}.spans (trace_id, span_id, name, service_name, start_time) "
                 "values ('t{n}', 's{n}', 'op', 'svc', {w})".format(s=schema, n=number, w=when))


def insert_traces(url, count: int, age_sql: str, prefix: str = "t", schema: str = "otel"):
    sql(url, "insert into {s}.traces (trace_id, service_name, start_time) "
             "select '{p}' || g, 'svc', now() - {a} from generate_series(1, %s) g".format(s=schema, p=prefix, a=age_sql),
        (count,))


def partitions(url, schema: str = "otel"):
    """name -> bound (pg_get_expr) of every partition of spans."""
    rows = sql(url, "select c.relname::text, pg_get_expr(c.relpartbound, c.oid) from pg_inherits i "
                    "join pg_class c on c.oid = i.inhrelid where i.inhparent = to_regclass(%s)",
               ("%s.spans" % schema,))
    return dict((name, bound) for name, bound in rows)


def partition_of_rows(url, schema: str = "otel"):
    """(partition, span_id) of every span."""
    return [tuple(r) for r in sql(url, "select tableoid::regclass::text, span_id from %s.spans order by 2" % schema)]


def age_conversion(url, days_ago: int, schema: str = "otel") -> datetime.date:
    """Make a store converted by revision 2's real upgrade today look as if it
    had been converted `days_ago` days before its cutoff: spans_history ends
    that many days earlier and a day partition of revision 2's own (recorded
    as created, as revision 2 records its partitions) takes each of those
    days. Rows can then be written into day partitions with past stamps, as a
    store in service has them (a row stamped after the real cutoff is a
    future-dated outlier). Needs no row of the history in those days.
    Returns the new cutoff."""
    bound = partitions(url, schema)["spans_history"]
    cutoff = sql(url, "select (%s::timestamptz at time zone 'UTC')::date",
                 (bound.split("TO ('")[1].split("')")[0],))[0][0]
    earlier = cutoff - datetime.timedelta(days=days_ago)
    statements = [
        "ALTER TABLE {s}.spans DETACH PARTITION {s}.spans_history".format(s=schema),
        "ALTER TABLE {s}.spans ATTACH PARTITION {s}.spans_history FOR VALUES FROM (MINVALUE) TO ('{c}')"
        .format(s=schema, c=UTC_MIDNIGHT % earlier.isoformat())]
    for day in days(earlier, cutoff - datetime.timedelta(days=1)):
        statements.append("INSERT INTO {s}.otelmig_objects (revision, object_kind, object_name, origin) "
                          "VALUES ('826630e38563', 'partition', '{n}', 'created')".format(s=schema, n=day_name(day)))
        statements.append(create_day_sql(schema, day))
    run_all(url, statements)
    return earlier
