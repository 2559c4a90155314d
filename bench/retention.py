#!/usr/bin/env python3
"""Retention: `otelmig maintain --retain` dropping one old day of spans against DELETE (issue 13).

Run by hand, not in CI, from the repository root (builds dist/otelmig.pyz if missing):

    python3 bench/retention.py [--spans 1000000] [--other-spans 50000] [--runs 3]

It starts a throwaway PostgreSQL cluster (tests/pgcluster.py plus BENCH_CONF of
bench/common.py; 127.0.0.1 only; always stopped) and builds database `ret_src`
at head, time-partitioned: `otelmig.pyz upgrade` on an empty database, then,
because a fresh conversion has no day partitions in the past (everything
before its cutoff is one history partition), it replaces the empty
spans_history by one ending AGE + 4 days ago and creates a day partition
(spans_pYYYYMMDD, CREATE TABLE ... PARTITION OF, so the partitioned indexes
reach it) for every day from there on: the layout of a store converted a
while ago and kept by maintain since. It loads SPANS spans (traces of 10 spans,
JSON attributes, 20 services) into the day AGE days ago, OTHER-SPANS into each
of the AGE - 1 younger days (from noon on, so that no row lies between a
midnight and the window's edge), one otel.traces row per trace, VACUUM
ANALYZE, CHECKPOINT.

Each round makes two fresh copies (CREATE DATABASE ... TEMPLATE ret_src
STRATEGY FILE_COPY) and runs, alternating which goes first, while a writer
inserts a span every 10 ms (autocommit, one transaction per insert, now():
today's partition) from PRE seconds before until POST after:

  maintain  `python3 dist/otelmig.pyz maintain --retain <AGE-1>d`: drops every
            partition wholly older than the window (the big day, the empty
            older ones, the empty history) and deletes the traces older than it;
  delete    the same rows the DELETE way, on the SAME partitioned layout (an
            identical copy), by `psql -f`: DELETE FROM otel.spans WHERE
            start_time < <the day after the big day, 00:00 UTC>, then the same
            for otel.traces (each timed by psql's \\timing).

If the pyz has no `maintain` (or its head is not revision 2), a STAND-IN
replaces what is missing, and the report says so: the partitioned layout is
then built by SQL from the baseline (bench/retention.py's STAND_IN_LAYOUT), and
maintain by `psql -f` of ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY +
DROP TABLE for each of those partitions and one DELETE of the old traces.

Reports medians over the rounds: wall time of each and DELETE / maintain
(target >= 100); otel.spans on disk after (pg_total_relation_size summed over
its partitions) and otel.traces; WAL written during the operation
(pg_current_wal_lsn before and after; the writer's few inserts included);
the writer's worst / p99 / median insert during each (target worst <= 250 ms)
and inserts lost.
"""

import argparse
import datetime
import os
import re
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import adopt  # noqa: E402  (explain_stalls, print_stalls)
import common  # noqa: E402
from common import log  # noqa: E402

BASELINE = "163d8f446eb9"
PARTITION_REVISION = "826630e38563"
SPANS_PER_TRACE = 10

# Revision 2's layout built from an empty baseline store, for as long as the
# pyz has no revision 2 (see the brief of issue 13): otel.spans partitioned by
# range on start_time, spans_pkey (id, start_time), the contract indexes on the
# parent, the id sequence owned by the new spans.id, a DEFAULT partition, and
# ix_traces_start_time. Day partitions and the history are added afterwards.
STAND_IN_LAYOUT = """
CREATE TABLE otel.spans_new (LIKE otel.spans INCLUDING DEFAULTS INCLUDING IDENTITY) PARTITION BY RANGE (start_time);
ALTER SEQUENCE otel.spans_id_seq OWNED BY NONE;
DROP TABLE otel.spans;
ALTER TABLE otel.spans_new RENAME TO spans;
ALTER TABLE otel.spans ADD CONSTRAINT spans_pkey PRIMARY KEY (id, start_time);
CREATE INDEX ix_spans_trace_id ON otel.spans (trace_id);
CREATE INDEX ix_spans_span_id ON otel.spans (span_id);
CREATE INDEX ix_spans_service_start_time ON otel.spans (service_name, start_time DESC);
ALTER SEQUENCE otel.spans_id_seq OWNED BY otel.spans.id;
CREATE TABLE otel.spans_default PARTITION OF otel.spans DEFAULT;
CREATE INDEX ix_traces_start_time ON otel.traces (start_time);
"""

SPANS_SIZE = """select coalesce(sum(pg_total_relation_size(relid)), 0)::bigint
                from pg_partition_tree('otel.spans') where isleaf"""


def midnight(day: datetime.date) -> str:
    return day.isoformat() + " 00:00:00+00"


def day_name(day: datetime.date) -> str:
    return "spans_p" + day.strftime("%Y%m%d")


# --------------------------------------------------------------------------- building the source

def capabilities(python: str, pyz: str) -> dict:
    head = subprocess.run([python, pyz, "heads"], capture_output=True, text=True, check=True).stdout.split()
    has_maintain = subprocess.run([python, pyz, "maintain", "--help"], capture_output=True).returncode == 0
    return {"head": head[0] if head else "", "maintain": has_maintain}


def run_script(cluster, database, text):
    conn = common.connect(cluster, database)
    try:
        cursor = conn.cursor()
        for statement in text.split(";"):
            if statement.strip():
                cursor.execute(statement)
    finally:
        conn.close()


def build_layout(cluster, database, python, pyz, shiv_root, stand_in_layout, today, age) -> dict:
    """At head (or the stand-in layout), with day partitions from age + 4 days ago to today + 7."""
    common.run_measured([python, pyz, "upgrade"], env=common.pyz_env(cluster, database, shiv_root))
    if stand_in_layout:
        run_script(cluster, database, STAND_IN_LAYOUT)
    first = today - datetime.timedelta(days=age + 4)
    statements = []
    if common.sql(cluster, database, "select to_regclass('otel.spans_history') is not null")[0][0]:
        statements += ["ALTER TABLE otel.spans DETACH PARTITION otel.spans_history", "DROP TABLE otel.spans_history"]
    statements.append("CREATE TABLE otel.spans_history PARTITION OF otel.spans FOR VALUES FROM (MINVALUE) TO ('%s')"
                      % midnight(first))
    day = first
    while day <= today + datetime.timedelta(days=7):
        statements.append("CREATE TABLE IF NOT EXISTS otel.%s PARTITION OF otel.spans FOR VALUES FROM ('%s') TO ('%s')"
                          % (day_name(day), midnight(day), midnight(day + datetime.timedelta(days=1))))
        day += datetime.timedelta(days=1)
    run_script(cluster, database, ";\n".join(statements))
    return {"first_day": first.isoformat()}


def load(cluster, database, today, age, spans, other_spans) -> dict:
    started = time.monotonic()
    conn = common.connect(cluster, database)
    try:
        cursor = conn.cursor()
        cursor.execute("select setseed(0.42)")
        big_day = today - datetime.timedelta(days=age)
        trace = 1
        chunk = 20000  # traces per statement
        big_traces = spans // SPANS_PER_TRACE
        for low in range(0, big_traces, chunk):
            n = min(chunk, big_traces - low)
            # The whole day, in trace order: chunk i covers its share of the 24 h.
            start = "%s 00:00:00+00" % big_day.isoformat()
            start_offset = 86400.0 * low / big_traces
            cursor.execute("select (%s::timestamptz + %s * interval '1 s')::text", (start, start_offset))
            common.load_window(cursor, trace, n, cursor.fetchone()[0], 86400.0 * n / big_traces)
            trace += n
            log("  %d of %d spans on %s (%.0fs)" % ((low + n) * SPANS_PER_TRACE, big_traces * SPANS_PER_TRACE,
                                                    big_day, time.monotonic() - started))
        for back in range(age - 1, 0, -1):
            n = other_spans // SPANS_PER_TRACE
            day = today - datetime.timedelta(days=back)
            if n:
                common.load_window(cursor, trace, n, "%s 12:00:00+00" % day.isoformat(), 12 * 3600.0 - 60)
                trace += n
        log("  %d spans on each of the %d younger days (%.0fs)" % (other_spans, age - 1, time.monotonic() - started))
        common.insert_traces(cursor, common.HEAD_COLUMNS)
        cursor.execute("VACUUM ANALYZE otel.spans")
        cursor.execute("VACUUM ANALYZE otel.traces")
        cursor.execute("CHECKPOINT")
    finally:
        conn.close()
    return {"seconds": time.monotonic() - started, "big_day": big_day.isoformat()}


# --------------------------------------------------------------------------- one operation under the writer

def snapshot(cluster, database, edge: str) -> dict:
    row = common.sql(cluster, database, """
        select (%s), pg_total_relation_size('otel.traces'),
               (select count(*) from otel.spans where start_time < %%s::timestamptz),
               (select count(*) from otel.spans),
               (select count(*) from otel.traces where start_time < %%s::timestamptz),
               (select count(*) from pg_partition_tree('otel.spans') where isleaf)""" % SPANS_SIZE, (edge, edge))[0]
    return {"spans_bytes": row[0], "traces_bytes": row[1], "spans_old": row[2], "spans": row[3], "traces_old": row[4],
            "partitions": row[5]}


def run_under_writer(cluster, database, argv, env, args, edge, prefix="w") -> dict:
    """argv under the writer (span ids PREFIX...: one prefix per run on the same copy); a failure is raised."""
    before = snapshot(cluster, database, edge)
    stop = threading.Event()
    origin = time.perf_counter()
    writer = common.Writer(cluster, database, args.writer_interval, stop, origin, prefix=prefix)
    writer.column = "start_time"
    monitor = common.Monitor(cluster, database, stop, origin)
    wal_since = "select pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)::bigint"
    run = common.run_under_load(
        cluster, database, argv, env, [writer, monitor], stop, origin, args.pre_seconds, args.post_seconds,
        args.timeout, at_start=lambda: common.sql(cluster, database, "select pg_current_wal_lsn()::text")[0][0],
        at_end=lambda lsn: common.sql(cluster, database, wal_since, (lsn,))[0][0])
    result = run["result"]
    if result.code != 0:
        raise RuntimeError("exit %d: %s\n%s%s" % (result.code, " ".join(argv), result.out[-2000:], result.err[-3000:]))
    durations = common.parse_log(run["log"])["durations"]
    return {
        "wall": result.wall, "out": result.out[-6000:], "err": result.err[-6000:],
        "psql_times": [float(t) / 1e3 for t in re.findall(r"^Time: ([\d.]+) ms", result.out, re.M)],
        "wal_bytes": run["after"], "before": before, "after": snapshot(cluster, database, edge),
        # Every statement of otelmig's session (log_min_duration_statement = 0 on the maintain copy).
        "otelmig_timeline": timeline(run["log"], run["epoch_start"], run["epoch_end"]),
        "otelmig_statements": [(ms, text) for app, ms, text in durations if app == "otelmig"],
        "otelmig_statements_s": sum(ms for app, ms, _ in durations if app == "otelmig") / 1e3,
        "writer": writer.figures(cluster, database, run["start"], run["end"]),
        "stalls": adopt.explain_stalls(writer.samples, monitor.samples, run["start"]),
    }


def timeline(log_text: str, epoch_start: float, epoch_end: float) -> dict:
    """Where otelmig's wall time went, from the server log's timestamps (%m) of its statements:
    before the first one (start-up, imports, connecting), between the first and the last, after the last;
    and the largest gaps between one statement's end and the next one's."""
    ends = []
    for line in log_text.splitlines():
        match = re.match(r"^(\S+ \S+) UTC \[\d+\] (\S*): LOG:  duration: ([\d.]+) ms  (?:statement|execute [^:]*): ?(.*)",
                         line)
        if match and match.group(2) == "otelmig":
            at = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(
                tzinfo=datetime.timezone.utc).timestamp()
            ends.append((at, float(match.group(3)) / 1e3, match.group(4)[:100]))
    if not ends:
        return {}
    starts = [(at - seconds, at, text) for at, seconds, text in ends]
    gaps = sorted(((b[0] - a[1], b[2]) for a, b in zip(starts, starts[1:])), reverse=True)[:5]
    return {"before_first_s": starts[0][0] - epoch_start, "first_to_last_s": starts[-1][1] - starts[0][0],
            "after_last_s": epoch_end - starts[-1][1], "statements": len(starts),
            "in_statements_s": sum(seconds for _, seconds, _ in ends),
            "largest_gaps": [(round(g, 3), text) for g, text in gaps]}


def stand_in_maintain_script(path, cluster, database, edge) -> None:
    """What maintain --retain does, by hand: detach (concurrently) and drop each partition wholly before the edge."""
    old = common.sql(cluster, database, """
        select c.relname from pg_partition_tree('otel.spans') t join pg_class c on c.oid = t.relid
        where t.isleaf and pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
          and (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']+)''\\)'))[1]::timestamptz <= %s::timestamptz
        order by 1""", (edge,))
    # PostgreSQL refuses DETACH ... CONCURRENTLY while a DEFAULT partition
    # exists (revision 2 has one), so it is the plain DETACH then, under a
    # short lock_timeout: it takes ACCESS EXCLUSIVE on the parent for a moment.
    has_default = common.sql(cluster, database, "select to_regclass('otel.spans_default') is not null")[0][0]
    with open(path, "w") as handle:
        handle.write("\\timing on\nSET lock_timeout = '1s';\n")
        for (name,) in old:
            handle.write("ALTER TABLE otel.spans DETACH PARTITION otel.%s%s;\n"
                         % (name, "" if has_default else " CONCURRENTLY"))
            handle.write("DROP TABLE otel.%s;\n" % name)
        handle.write("DELETE FROM otel.traces WHERE start_time < '%s';\n" % edge)


# --------------------------------------------------------------------------- main

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spans", type=int, default=1000000, help="spans in the old day that is dropped")
    parser.add_argument("--other-spans", type=int, default=50000, help="spans on each younger day")
    parser.add_argument("--age", type=int, default=6, help="the big day is this many days ago (window: age-1 days)")
    parser.add_argument("--runs", type=int, default=3, help="rounds of (maintain, delete), each on fresh copies")
    parser.add_argument("--stand-in", action="store_true", help="use the stand-in maintain even if the pyz has one")
    common.add_load_arguments(parser, pre_seconds=3.0, post_seconds=2.0, timeout=3600)
    parser.add_argument("--full-page-writes", choices=("on", "off"), default="on",
                        help="the server's full_page_writes (on: the WAL a production server writes)")
    args = parser.parse_args()
    if args.spans < 1000 or args.age < 2 or not 1 <= args.runs <= 20:
        parser.error("--spans >= 1000, --age >= 2 and --runs 1..20")
    pyz, python = common.prepare_pyz(args.pyz)
    caps = capabilities(python, pyz)
    stand_in_layout = caps["head"] == BASELINE
    stand_in_maintain = args.stand_in or not caps["maintain"] or stand_in_layout
    today = datetime.datetime.now(datetime.timezone.utc).date()
    edge = midnight(today - datetime.timedelta(days=args.age - 1))  # the big day's upper bound
    retain = "%dd" % (args.age - 1)
    # full_page_writes on (the tests' cluster turns it off): WAL as a production server writes it.
    with common.BenchSession("retention", common.BENCH_CONF + "\nfull_page_writes = %s\n" % args.full_page_writes) as s:
        cluster, scratch = s.cluster, s.scratch
        version = common.server_version(cluster)
        common.create_database(cluster, "ret_src")
        layout = build_layout(cluster, "ret_src", python, pyz, s.shiv_root, stand_in_layout, today, args.age)
        log("loading %d spans on the old day and %d on each younger one ..." % (args.spans, args.other_spans))
        data = load(cluster, "ret_src", today, args.age, args.spans, args.other_spans)
        data.update(layout)
        data.update(snapshot(cluster, "ret_src", edge))
        delete_script = os.path.join(scratch, "delete.sql")
        with open(delete_script, "w") as handle:
            handle.write("\\timing on\nDELETE FROM otel.spans WHERE start_time < '%s';\n"
                         "DELETE FROM otel.traces WHERE start_time < '%s';\n" % (edge, edge))
        vacuum_script = os.path.join(scratch, "vacuum.sql")
        with open(vacuum_script, "w") as handle:
            handle.write("\\timing on\nVACUUM otel.spans;\nVACUUM otel.traces;\n")

        def psql(script, db):
            return ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", script], common.psql_env(cluster, db)

        def run_one(i, key, db, results):
            if key == "delete":
                argv, env = psql(delete_script, db)
            elif stand_in_maintain:
                script = os.path.join(scratch, "maintain_%d.sql" % i)
                stand_in_maintain_script(script, cluster, db, edge)
                argv, env = psql(script, db)
            else:
                common.sql(cluster, "postgres", "ALTER DATABASE %s SET log_min_duration_statement = 0" % db)
                argv, env = ([python, pyz, "maintain", "--retain", retain, "--format", "json"],
                             common.pyz_env(cluster, db, s.shiv_root))
            out = run_under_writer(cluster, db, argv, env, args, edge)
            out["argv"] = " ".join("python3" if a == python else a for a in argv)
            if key == "maintain" and not stand_in_maintain:
                # Its fixed cost: the same command again, with nothing left to drop.
                out["noop_wall"] = common.run_measured(argv, env=env).wall
            if key == "delete":
                # What the DELETE leaves to do: VACUUM (index cleanup, free space), same writer (other span ids).
                results["vacuum"] = run_under_writer(cluster, db, *psql(vacuum_script, db), args, edge, prefix="v")
                log("round %d: vacuum after delete took %.2fs" % (i + 1, results["vacuum"]["wall"]))
            return out

        rounds = common.copy_rounds(cluster, "ret_src", args.runs, ["maintain", "delete"], run_one, prefix="ret")
        elapsed = s.elapsed()
    report(args, pyz, caps, stand_in_layout, stand_in_maintain, version, data, edge, retain, rounds, elapsed)
    common.write_json(args.json, {"data": data, "rounds": rounds})


def report(args, pyz, caps, stand_in_layout, stand_in_maintain, version, data, edge, retain, rounds, elapsed):
    common.print_header("retention: dropping one day of %d spans vs DELETE" % args.spans, "retention.py", version, pyz,
                        caps["head"])
    print()
    if stand_in_layout:
        print("**STAND-IN layout**: the pyz's head is %s, not revision 2 (%s): the partitioned layout was built by "
              "SQL from the baseline (STAND_IN_LAYOUT in bench/retention.py).\n" % (caps["head"], PARTITION_REVISION))
    if stand_in_maintain:
        print("**STAND-IN maintain**: %s; \"maintain\" below is psql running ALTER TABLE ... DETACH PARTITION ... "
              "CONCURRENTLY (plain DETACH if a DEFAULT partition exists: PostgreSQL refuses CONCURRENTLY then) + DROP "
              "TABLE for each partition wholly before %s, and one DELETE of the older traces.\n"
              % ("forced by --stand-in" if args.stand_in else "the pyz has no `maintain`" if not caps["maintain"]
                 else "the layout is a stand-in", edge))
    print("data: %d spans on %s (dropped), %d on each of the %d younger days, one partition per UTC day from %s; "
          "%d spans before the edge, %d in all; otel.spans %.0f MiB (all partitions, with indexes), otel.traces "
          "%.0f MiB; loaded in %.0f s" % (
              args.spans, data["big_day"], args.other_spans, args.age - 1, data["first_day"], data["spans_old"],
              data["spans"], data["spans_bytes"] / 2**20, data["traces_bytes"] / 2**20, data["seconds"]))
    r0 = rounds[0]["results"]
    print("maintain: `%s`" % r0["maintain"]["argv"])
    print("delete (same partitioned layout, identical copy): `%s` (DELETE FROM otel.spans WHERE start_time < '%s'; "
          "DELETE FROM otel.traces WHERE start_time < '%s')" % (r0["delete"]["argv"], edge, edge))
    print("writer: a span every %g ms (now(), autocommit), from %g s before until %g s after each" % (
        args.writer_interval * 1e3, args.pre_seconds, args.post_seconds))
    print("%d round(s), maintain and delete (then VACUUM) alternating which goes first, %.0f s in all; cluster: "
          "fsync and synchronous_commit off (tests/pgcluster.py), full_page_writes %s, wal_level replica, "
          "autovacuum on (default); a CHECKPOINT before each operation\n" % (len(rounds), elapsed, args.full_page_writes))

    def col(key, get):
        return [get(r["results"][key]) for r in rounds]

    def cell(values, fmt):
        return "%s (%s)" % (fmt % common.median(values), ", ".join(fmt % v for v in values))

    print("| figure, median (per round) | maintain | DELETE | VACUUM after the DELETE |\n|---|---:|---:|---:|")
    for name, get, fmt in [
            ("wall", lambda x: x["wall"], "%.3f s"),
            ("otel.spans on disk before", lambda x: x["before"]["spans_bytes"] / 2**20, "%.0f MiB"),
            ("otel.spans on disk after", lambda x: x["after"]["spans_bytes"] / 2**20, "%.0f MiB"),
            ("otel.traces on disk after", lambda x: x["after"]["traces_bytes"] / 2**20, "%.1f MiB"),
            ("WAL written during the operation", lambda x: x["wal_bytes"] / 2**20, "%.1f MiB"),
            ("spans before the edge, before", lambda x: x["before"]["spans_old"], "%d"),
            ("spans before the edge after", lambda x: x["after"]["spans_old"], "%d"),
            ("traces before the edge after", lambda x: x["after"]["traces_old"], "%d"),
            ("leaf partitions after", lambda x: x["after"]["partitions"], "%d"),
            ("writer: worst insert during", lambda x: x["writer"]["worst_ms"], "%.0f ms"),
            ("writer: p99 insert during", lambda x: x["writer"]["p99_ms"], "%.1f ms"),
            ("writer: median insert during", lambda x: x["writer"]["median_ms"], "%.1f ms"),
            ("writer: inserts started during", lambda x: x["writer"]["n"], "%d"),
            ("writer: attempted in all", lambda x: x["writer"]["attempted"], "%d"),
            ("writer: lost (acknowledged, not present after)", lambda x: x["writer"]["lost"], "%d"),
            ("writer: rejected (an attempt failed; retried)", lambda x: x["writer"]["rejected"], "%d")]:
        print("| %s | %s | %s | %s |" % (name, cell(col("maintain", get), fmt), cell(col("delete", get), fmt),
                                         cell(col("vacuum", get), fmt)))
    delete_spans = col("delete", lambda x: x["psql_times"][0])
    print("| server time of the statements (psql \\timing, summed) | %s | %s | %s |" % tuple(
        cell(col(k, lambda x: sum(x["psql_times"])), "%.3f s") if all(r["results"][k]["psql_times"] for r in rounds)
        else "-" for k in ("maintain", "delete", "vacuum")))
    if not stand_in_maintain:
        print("| otelmig maintain again, nothing to do (its fixed cost) | %s | | |"
              % cell(col("maintain", lambda x: x["noop_wall"]), "%.3f s"))
        print("| otelmig's statements, server time (log_min_duration_statement = 0, summed) | %s | | |"
              % cell(col("maintain", lambda x: x["otelmig_statements_s"]), "%.3f s"))
    print("| DELETE FROM otel.spans alone (psql \\timing) | | %s | |" % cell(delete_spans, "%.3f s"))
    speedup = [r["results"]["delete"]["wall"] / r["results"]["maintain"]["wall"] for r in rounds]
    speedup_spans = [d / r["results"]["maintain"]["wall"] for d, r in zip(delete_spans, rounds)]
    freed = col("maintain", lambda x: x["before"]["spans_bytes"] - x["after"]["spans_bytes"])
    worst = col("maintain", lambda x: x["writer"]["worst_ms"])
    print("\n| target | figure | met |\n|---|---:|---|")
    print("| DELETE / maintain wall >= 100 | %s | %s |" % (cell(speedup, "%.1f"),
                                                          "yes" if common.median(speedup) >= 100 else "**NO**"))
    print("| (DELETE of spans alone) / maintain wall | %s | |" % cell(speedup_spans, "%.1f"))
    with_vacuum = [(r["results"]["delete"]["wall"] + r["results"]["vacuum"]["wall"]) / r["results"]["maintain"]["wall"]
                   for r in rounds]
    print("| (DELETE + the VACUUM it needs) / maintain wall | %s | |" % cell(with_vacuum, "%.1f"))
    print("| disk freed at once by maintain | %s | %s |" % (cell([f / 2**20 for f in freed], "%.0f MiB"),
                                                          "yes" if min(freed) > 0 else "**NO**"))
    print("| maintain: writer worst <= 250 ms | %s | %s |" % (cell(worst, "%.0f ms"),
                                                            "yes" if max(worst) <= 250 else "**NO**"))
    lost = [x["writer"]["lost"] for r in rounds for x in r["results"].values()]
    print("| no insert lost (any operation) | %d | %s |" % (max(lost), "yes" if max(lost) == 0 else "**NO**"))
    last = rounds[-1]["results"]["maintain"]
    print("\n### what maintain printed (last round)\n\n```\n%s\n```" % last["out"].strip())
    if last["err"].strip():
        print("\nstderr:\n\n```\n%s\n```" % last["err"].strip())
    if not stand_in_maintain:
        statements = rounds[-1]["results"]["maintain"]["otelmig_statements"]
        print("\n### maintain's statements over 5 ms (server log, last round; %d statements, %.3f s in all)\n"
              % (len(statements), sum(ms for ms, _ in statements) / 1e3))
        for ms, text in statements:
            if ms > 5:
                print("- %.0f ms: `%s`" % (ms, text[:120]))
        print("\n### where maintain's wall time went (server log timestamps; median over rounds)\n")
        tl = col("maintain", lambda x: x["otelmig_timeline"])
        if all(tl):
            print("| before its first statement (start-up, imports, connecting) | %s |\n|---|---:|"
                  % cell([t["before_first_s"] for t in tl], "%.3f s"))
            print("| first to last statement | %s |" % cell([t["first_to_last_s"] for t in tl], "%.3f s"))
            print("| of which inside the server (statements' durations) | %s |"
                  % cell([t["in_statements_s"] for t in tl], "%.3f s"))
            print("| after its last statement (exit) | %s |" % cell([t["after_last_s"] for t in tl], "%.3f s"))
            print("| statements | %s |" % cell([t["statements"] for t in tl], "%d"))
            print("\nlargest gaps between statements, last round: %s" % "; ".join(
                "%.0f ms before `%s`" % (g * 1e3, text[:60]) for g, text in tl[-1]["largest_gaps"]))
    for key in ("maintain", "delete", "vacuum"):
        print("\n### %s: the slowest inserts (> %d ms)\n" % (key, adopt.STALL_MS))
        adopt.print_stalls([r["results"][key]["stalls"] for r in rounds])


if __name__ == "__main__":
    main()
