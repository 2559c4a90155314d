#!/usr/bin/env python3
"""What writers experience while revision 2 is rolled back and while `maintain` empties DEFAULT (issue 19).

Run by hand, not in CI, from the repository root (builds dist/otelmig.pyz if missing):

    python3 bench/writers.py [--scenario downgrade|maintain|both] [--runs 3]
                             [--history-spans 50000] [--day-spans 200000] [--default-spans 300000]

(The conversion itself, `upgrade` to revision 2, is bench/convert.py.)

It starts a throwaway PostgreSQL cluster (tests/pgcluster.py plus BENCH_CONF of
bench/common.py; 127.0.0.1 only; always stopped) and builds database `wr_src`:
the legacy layout with HISTORY-SPANS spans (common.generate_legacy), then
`otelmig.pyz upgrade` (the baseline and the conversion), then DAY-SPANS spans
(traces of 10) spread over every day partition the conversion made
(spans_pYYYYMMDD, found in the catalog), one otel.traces row per trace,
VACUUM ANALYZE, CHECKPOINT: a converted store whose day partitions hold rows.
For `maintain`, `wr_default` is a copy of it plus DEFAULT-SPANS spans stamped
on the COMING DAY, the first UTC day after the last day partition: no
partition takes them, so they are in spans_default.

Each round runs every scenario on its own fresh copy (CREATE DATABASE ...
TEMPLATE), while a writer inserts a span every 10 ms (autocommit, one
transaction per insert, retried for 5 s when rejected), from PRE s before
until POST s after:

  downgrade  `otelmig.pyz downgrade 163d8f446eb9` (what `rollback` runs from
             the head); the writer stamps its rows now() and at noon of the
             first day partition, in turn; a second session (the mutator)
             updates one row and deletes another every 20 ms, rows taken at
             random from the day partitions beforehand, each touched once.
  maintain   `otelmig.pyz maintain --ahead N`, N the days from today to the
             coming day, so that it creates that day's partition while DEFAULT
             holds its rows (it replaces DEFAULT by a copy: otelmig/
             default_partition.py); writer w stamps its rows at noon of the
             coming day and now(), in turn, and a second writer x (its own
             session) stamps now() only: does a stuck insert for the coming
             day hold up the rest? The mutator updates and deletes rows of
             the coming day in DEFAULT (drawn beforehand, each touched once).

Reports medians over the rounds, per scenario: wall time and exit; each
writer's worst / p99 / median insert during the operation (target: worst <=
250 ms), inserts rejected (any attempt failed; target 0), failed after
retrying, and lost (acknowledged but not in otel.spans afterwards; target 0);
the mutator's worst change, its changes that failed, that found no row (the
row was out of sight of otel.spans meanwhile) and that were undone (a deleted
row back, an update gone; targets 0); for maintain, the rows of the coming day
after against those loaded less the mutator's deletes (none may go or come
back), those left in DEFAULT, and maintain's work objects left (0);
the slowest inserts with what the migrating session was doing, and the
server log's lock waits.
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
SPANS_PER_TRACE = 10
MUTATOR_POOL = 20000  # rows the mutator may touch (each once)
DAY_NAME = re.compile(r"^spans_p(\d{8})$")


def utc_midnight(day: datetime.date) -> str:
    return day.isoformat() + " 00:00:00+00"


def noon(day: datetime.date) -> str:
    return "timestamptz '%s 12:00:00+00'" % day.isoformat()


def day_partitions(cluster, database) -> list:
    """The UTC days of the partitions named spans_pYYYYMMDD, oldest first."""
    names = common.sql(cluster, database, """select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid
                                             where i.inhparent = 'otel.spans'::regclass""")
    days = [DAY_NAME.match(n[0]) for n in names]
    return sorted(datetime.datetime.strptime(m.group(1), "%Y%m%d").date() for m in days if m)


# --------------------------------------------------------------------------- building the sources

def load_days(cluster, database, days, spans, first_trace=1) -> int:
    """`spans` spans spread over whole UTC `days` (the same share each); returns the next free trace number."""
    conn = common.connect(cluster, database)
    try:
        cursor = conn.cursor()
        cursor.execute("select setseed(0.17)")
        per_day = spans // SPANS_PER_TRACE // len(days)
        trace = first_trace
        for day in days:
            for low in range(0, per_day, 20000):
                n = min(20000, per_day - low)
                cursor.execute("select (%s::timestamptz + %s * interval '1 s')::text",
                               (utc_midnight(day), 86400.0 * low / per_day))
                common.load_window(cursor, trace, n, cursor.fetchone()[0], 86400.0 * n / per_day, SPANS_PER_TRACE)
                trace += n
        cursor.execute("VACUUM ANALYZE otel.spans")
        cursor.execute("CHECKPOINT")
    finally:
        conn.close()
    return trace


def build_sources(session, python, pyz, args, scenarios) -> dict:
    cluster = session.cluster
    common.create_database(cluster, "wr_src")
    log("generating %d legacy spans ..." % args.history_spans)
    data = common.generate_legacy(cluster, "wr_src", args.history_spans)
    common.run_measured([python, pyz, "upgrade"], env=common.pyz_env(cluster, "wr_src", session.shiv_root),
                        timeout=3600)
    days = day_partitions(cluster, "wr_src")
    if not days:
        raise RuntimeError("the conversion made no day partition (spans_pYYYYMMDD): nothing to measure")
    log("converted; loading %d spans over the day partitions %s..%s ..." % (args.day_spans, days[0], days[-1]))
    next_trace = load_days(cluster, "wr_src", days, args.day_spans)
    conn = common.connect(cluster, "wr_src")
    try:
        common.insert_traces(conn.cursor(), common.HEAD_COLUMNS)
    finally:
        conn.close()
    common.sql(cluster, "wr_src", "VACUUM ANALYZE otel.traces")
    data.update(days=[d.isoformat() for d in days], day_spans=args.day_spans, next_trace=next_trace)
    if "maintain" in scenarios:
        coming = days[-1] + datetime.timedelta(days=1)
        common.create_database(cluster, "wr_default", template="wr_src")
        log("loading %d spans of the coming day %s (into DEFAULT) ..." % (args.default_spans, coming))
        load_days(cluster, "wr_default", [coming], args.default_spans, next_trace)
        data["coming_day"] = coming.isoformat()
        data["default_rows"] = common.sql(cluster, "wr_default", "select count(*) from otel.spans_default")[0][0]
    return data


# --------------------------------------------------------------------------- one scenario under load

def run_downgrade(session, database, python, pyz, args, data) -> dict:
    cluster = session.cluster
    ids = [r[0] for r in common.sql(cluster, database, """
        select id from otel.spans where tableoid::regclass::text like 'otel.spans_p%%' order by random() limit %s""",
                                    (MUTATOR_POOL,))]
    first_day = datetime.date.fromisoformat(data["days"][0])
    argv = [python, pyz, "downgrade", BASELINE]
    out = run_scenario(session, database, argv, args, {"w": ["now()", noon(first_day)]}, ids)
    out.pop("mutator_samples")
    return out


def run_maintain(session, database, python, pyz, args, data) -> dict:
    cluster = session.cluster
    coming = datetime.date.fromisoformat(data["coming_day"])
    today = common.sql(cluster, database, "select (now() at time zone 'UTC')::date")[0][0]
    argv = [python, pyz, "maintain", "--ahead", str((coming - today).days)]
    # The mutator updates and deletes rows of the coming day while they sit in DEFAULT (each once).
    ids = [r[0] for r in common.sql(cluster, database, """
        select id from otel.spans_default order by random() limit %s""", (MUTATOR_POOL,))]
    day_rows = ("select count(*) from otel.spans where start_time >= '%s' and start_time < '%s' "
                "and span_id !~ '^[wx]'" % (utc_midnight(coming), utc_midnight(coming + datetime.timedelta(days=1))))
    # Writer w alternates the coming day and now(); writer x inserts now() only (does a stuck day stop the rest?).
    out = run_scenario(session, database, argv, args, {"w": [noon(coming), "now()"], "x": ["now()"]}, ids,
                       at_start=lambda: common.sql(cluster, database, day_rows)[0][0])
    out["coming_rows_before"] = out.pop("at_start")
    out["coming_rows_after"] = common.sql(cluster, database, day_rows)[0][0]
    # every row of the coming day loaded into DEFAULT, but those the mutator deleted (acknowledged)
    out["coming_rows_expected"] = data["default_rows"] - sum(1 for s in out.pop("mutator_samples")
                                                             if s[2] == "delete" and s[4])
    out["default_rows_after"] = common.sql(cluster, database, """
        select count(*) from otel.spans_default where span_id !~ '^[wx]'""")[0][0]
    out["coming_partition"] = common.sql(cluster, database, "select to_regclass(%s) is not null",
                                         ("otel.spans_p" + coming.strftime("%Y%m%d"),))[0][0]
    out["leftovers"] = common.sql(cluster, database, """
        select count(*) from otel.otelmig_objects where object_kind like 'maintain%%'""")[0][0]
    return out


def run_scenario(session, database, argv, args, writer_stamps, mutate_ids, at_start=None) -> dict:
    """argv under one writer per {span id prefix: its start_time expressions}, the monitor, and the mutator if ids."""
    cluster = session.cluster
    stop = threading.Event()
    origin = time.perf_counter()
    writers = {}
    for prefix, stamps in writer_stamps.items():
        writers[prefix] = common.Writer(cluster, database, args.writer_interval, stop, origin, prefix, stamps)
        writers[prefix].column = "start_time"
    monitor = common.Monitor(cluster, database, stop, origin)
    threads = list(writers.values()) + [monitor]
    mutator = None
    if mutate_ids is not None:
        mutator = common.Mutator(cluster, database, args.mutator_interval, stop, origin, mutate_ids)
        threads.append(mutator)
    run = common.run_under_load(cluster, database, argv, common.pyz_env(cluster, database, session.shiv_root),
                                threads, stop, origin, args.pre_seconds, args.post_seconds, args.timeout,
                                at_start=at_start)
    result = run["result"]
    out = {"argv": " ".join(argv[2:]), "wall": result.wall, "code": result.code,
           "failed": common.failure_line(result), "at_start": run["before"],
           "writers": dict((prefix, dict(w.figures(cluster, database, run["start"], run["end"]),
                                         stamps=writer_stamps[prefix])) for prefix, w in writers.items()),
           "stalls": adopt.explain_stalls([s for w in writers.values() for s in w.samples], monitor.samples,
                                          run["start"]),
           "lock_waits": common.parse_log(run["log"])["lock_waits"],
           "revision": common.sql(cluster, database, "select version_num from otel.alembic_version")[0][0],
           "relkind": common.sql(cluster, database,
                                 "select relkind::text from pg_class where oid = 'otel.spans'::regclass")[0][0]}
    if out["failed"]:
        log("FAILED: %s" % out["failed"])
    if mutator is not None:
        out["mutator"] = mutator.figures(cluster, database, run["start"], run["end"])
        out["mutator_samples"] = mutator.samples
    return out


# --------------------------------------------------------------------------- main, report

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=("downgrade", "maintain", "both"), default="both")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--history-spans", type=int, default=50000, help="legacy spans (the history partition)")
    parser.add_argument("--day-spans", type=int, default=200000, help="spans spread over the day partitions")
    parser.add_argument("--default-spans", type=int, default=300000, help="spans of the coming day, in DEFAULT")
    parser.add_argument("--mutator-interval", type=float, default=0.020)
    parser.add_argument("--baseline-pyz", help="another build (e.g. the last release) whose maintain runs in the same "
                                               "rounds, interleaved with this one's, on copies of the same source")
    common.add_load_arguments(parser, pre_seconds=2.0, post_seconds=2.0, timeout=1800)
    args = parser.parse_args()
    if args.history_spans < 1000 or args.day_spans < 1000 or args.default_spans < 1000 or not 1 <= args.runs <= 20:
        parser.error("--history-spans, --day-spans and --default-spans >= 1000, --runs 1..20")
    pyz, python = common.prepare_pyz(args.pyz)
    head = subprocess.run([python, pyz, "heads"], capture_output=True, text=True, check=True).stdout.split()[0]
    scenarios = ["downgrade", "maintain"] if args.scenario == "both" else [args.scenario]
    baseline = os.path.abspath(args.baseline_pyz) if args.baseline_pyz else None
    runners = {"downgrade": run_downgrade, "maintain": run_maintain}
    templates = {"downgrade": "wr_src", "maintain": "wr_default"}
    # Each scenario's keys share one source and alternate in every round: ours, and the baseline's maintain.
    keys = {"downgrade": ["downgrade"], "maintain": ["maintain"] + (["maintain_baseline"] if baseline else [])}
    with common.BenchSession("writers") as session:
        version = common.server_version(session.cluster)
        # Unpack the pyz and compile what it imports once, before anything is timed.
        common.run_measured([python, pyz, "upgrade", "--sql"], env=common.pyz_env(session.cluster, "postgres",
                                                                                  session.shiv_root))
        data = build_sources(session, python, pyz, args, scenarios)
        rounds = {}
        for key in scenarios:  # each from its own source, so one copy_rounds per scenario
            rounds[key] = common.copy_rounds(
                session.cluster, templates[key], args.runs, keys[key],
                lambda i, k, db, _: runners[k.split("_")[0]](session, db, python, baseline if k.endswith("_baseline")
                                                             else pyz, args, data), prefix="wr")
        elapsed = session.elapsed()
    if baseline:
        print("baseline: %s" % common.describe_pyz(baseline), file=sys.stderr)
    report(args, pyz, head, version, data, scenarios, rounds, elapsed, keys, baseline)
    common.write_json(args.json, {"data": data, "rounds": rounds})


def report(args, pyz, head, version, data, scenarios, rounds, elapsed, keys, baseline):
    common.print_header("writers during the downgrade of revision 2 and maintain", "writers.py", version, pyz, head)
    print("data: %d legacy spans (history), then `upgrade`; %d spans over the day partitions %s..%s%s" % (
        data["spans"], data["day_spans"], data["days"][0], data["days"][-1],
        "; for maintain %d spans of the coming day %s in DEFAULT" % (data["default_rows"], data["coming_day"])
        if "coming_day" in data else ""))
    print("writer: a span every %g ms (autocommit, retried 5 s when rejected) from %g s before until %g s after; "
          "mutator: an UPDATE and a DELETE by id every %g ms" % (
              args.writer_interval * 1e3, args.pre_seconds, args.post_seconds, args.mutator_interval * 1e3))
    print("%d round(s) per scenario, each on a fresh copy, %.0f s in all%s\n" % (
        args.runs, elapsed, "; baseline build, interleaved with this one (order rotated each round): %s"
        % common.describe_pyz(baseline) if baseline else ""))
    for key in [k for scenario in scenarios for k in keys[scenario]]:
        xs = [r["results"][key] for r in rounds[key.split("_")[0]]]
        print("### %s: `python3 %s %s`\n" % (key, "BASELINE.pyz" if key.endswith("_baseline") else "dist/otelmig.pyz",
                                             xs[0]["argv"]))
        for i, x in enumerate(xs):
            if x["failed"]:
                print("**round %d FAILED**: %s\n" % (i + 1, x["failed"]))
        print(common.FIGURE_TABLE)
        row = common.figure_row
        row("wall", [x["wall"] for x in xs], "%.2f s")
        row("exit code", [x["code"] for x in xs], "%d", "0", lambda v: max(v) == 0)
        for prefix in xs[0]["writers"]:
            ws = [x["writers"][prefix] for x in xs]
            stamps = [s if s == "now()" else s.split("'")[1][:16] for s in ws[0]["stamps"]]  # the literal's day, hour
            name = "writer %s (%s)" % (prefix, ", ".join(stamps))
            row("%s: worst insert during" % name, [w["worst_ms"] for w in ws], "%.0f ms", "<= 250 ms",
                lambda v: max(v) <= 250)
            row("%s: p99 insert during" % name, [w["p99_ms"] for w in ws], "%.1f ms")
            row("%s: median insert during" % name, [w["median_ms"] for w in ws], "%.1f ms")
            row("%s: inserts started during" % name, [w["n"] for w in ws], "%d")
            row("%s: rejected (an attempt failed)" % name, [w["rejected"] for w in ws], "%d", "0",
                lambda v: max(v) == 0)
            row("%s: failed after retrying 5 s" % name, [w["failed"] for w in ws], "%d", "0", lambda v: max(v) == 0)
            row("%s: lost (acknowledged, not present after)" % name, [w["lost"] for w in ws], "%d", "0",
                lambda v: max(v) == 0)
        row("mutator: worst change during", [x["mutator"]["worst_ms"] for x in xs], "%.0f ms", "<= 250 ms",
            lambda v: max(v) <= 250)
        row("mutator: changes (updates + deletes) in all", [x["mutator"]["changes"] for x in xs], "%d")
        row("mutator: failed", [x["mutator"]["failed"] for x in xs], "%d", "0", lambda v: max(v) == 0)
        row("mutator: found no row (out of sight of otel.spans: change never made)",
            [x["mutator"]["found_no_row"] for x in xs], "%d", "0",
            lambda v: max(v) == 0)
        row("mutator: undone (deleted row back, update gone)", [x["mutator"]["undone"] for x in xs], "%d", "0",
            lambda v: max(v) == 0)
        if key.startswith("maintain"):
            row("coming day's rows (not the writer's) before", [x["coming_rows_before"] for x in xs], "%d")
            row("... after, against those loaded less the mutator's deletes (none may go or come back)",
                [x["coming_rows_after"] - x["coming_rows_expected"] for x in xs], "%+d", "+0",
                lambda v: max(v) == 0 == min(v))
            row("rows left in DEFAULT (not the writer's)", [x["default_rows_after"] for x in xs], "%d")
            row("coming day's partition made", [int(x["coming_partition"]) for x in xs], "%d", "1",
                lambda v: min(v) == 1)
            row("work objects left in the record", [x["leftovers"] for x in xs], "%d", "0", lambda v: max(v) == 0)
        print()
        for i, x in enumerate(xs):
            print("round %d: revision after %s, otel.spans relkind %s; writer error codes %s%s; lock waits logged %d"
                  % (i + 1, x["revision"], x["relkind"],
                     "; ".join("%s %s" % (p, w["error_codes"] or "none") for p, w in x["writers"].items()),
                     "; mutator error codes %s" % (x["mutator"]["error_codes"] or "none") if "mutator" in x else "",
                     len(x["lock_waits"])))
        print("\nslowest inserts (> %d ms) and what the migrating session was doing:\n" % adopt.STALL_MS)
        adopt.print_stalls([x["stalls"] for x in xs])
        print()


if __name__ == "__main__":
    main()
