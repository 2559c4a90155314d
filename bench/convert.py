#!/usr/bin/env python3
"""Converting otel.spans to time partitions (revision 2, issue 13) under load, against the floor.

Run by hand, not in CI, from the repository root (builds dist/otelmig.pyz if missing):

    python3 bench/convert.py [--spans 1000000] [--runs 3]
    python3 bench/convert.py --spans 10000000 --runs 1

It starts a throwaway PostgreSQL cluster (tests/pgcluster.py plus BENCH_CONF of
bench/common.py; 127.0.0.1 only; always stopped), fills database `conv_src`
with the legacy layout (docs/legacy_schema.sql) and SPANS generated
server-side (common.generate_legacy), adopts it with `otelmig.pyz upgrade
163d8f446eb9` (the baseline: revision 1), VACUUM ANALYZE, CHECKPOINT. Then
RUNS rounds; each makes two fresh copies (CREATE DATABASE ... TEMPLATE
conv_src STRATEGY FILE_COPY) and runs, alternating which goes first:

  floor  the one scan of the big table the conversion needs, run alone (no
         load) by `psql -f`: CREATE UNIQUE INDEX CONCURRENTLY ... ON otel.spans
         (id, start_time), then ADD CONSTRAINT ... CHECK (start_time < cutoff)
         NOT VALID and ALTER TABLE ... VALIDATE CONSTRAINT (each timed by psql's
         \\timing); the floor is the larger of the index build and the validation;
  ours   `python3 dist/otelmig.pyz upgrade` (to head, revision 2) WHILE a
         writer inserts a span every 10 ms (autocommit, one transaction per
         insert, as the worker does) and a reader reads one trace by trace_id
         every 50 ms, from PRE seconds before the upgrade until POST after it.

If the pyz's head is still the baseline (revision 2 not built in), it says so
and measures a STAND-IN instead: the source stays legacy and "ours" is
`upgrade 163d8f446eb9` (the adoption), the floor the same scans on the legacy
column (start_ts). That only exercises the harness; its figures are not the
conversion's. --stand-in forces it.

Reports, medians over the rounds (with per-round values): conversion wall time;
floor (index build, validation, the larger) and conversion / floor (target
<= 1.5); writer worst / p99 / median insert during the conversion, inserts
attempted, acknowledged, present afterwards, lost (attempted - present) and
errors (target: worst <= 250 ms, none lost); reader worst / p99 / median
(target: worst <= 250 ms); the slowest inserts with what the migrating
session was doing meanwhile (pg_stat_activity every 100 ms) and the server
log's lock waits.
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
import adopt  # noqa: E402  (explain_stalls, explain_slow_reads, otelmig_phases)
import common  # noqa: E402
from common import log  # noqa: E402

BASELINE = "163d8f446eb9"
PARTITION_REVISION = "826630e38563"
FLOOR_INDEX = "bench_floor_id_start"
FLOOR_CHECK = "bench_floor_cutoff"


# --------------------------------------------------------------------------- preparing the source

def head_revision(python: str, pyz: str) -> str:
    out = subprocess.run([python, pyz, "heads"], capture_output=True, text=True, check=True).stdout
    return out.split()[0] if out.split() else ""


def prepare_source(cluster, python, pyz, shiv_root, spans, stand_in) -> dict:
    """conv_src: the legacy layout with `spans` spans, adopted (revision 1) unless measuring the stand-in."""
    common.create_database(cluster, "conv_src")
    log("generating %d legacy spans ..." % spans)
    data = common.generate_legacy(cluster, "conv_src", spans)
    log("generated %(spans)d spans / %(traces)d traces in %(seconds).0fs" % data)
    env = common.pyz_env(cluster, "conv_src", shiv_root)
    if not stand_in:
        started = time.monotonic()
        common.run_measured([python, pyz, "upgrade", BASELINE], env=env, timeout=7200)
        data["baseline_seconds"] = time.monotonic() - started
        log("adopted (upgrade %s) in %.0fs" % (BASELINE, data["baseline_seconds"]))
        common.sql(cluster, "conv_src", "VACUUM ANALYZE otel.spans")
        common.sql(cluster, "conv_src", "CHECKPOINT")
        data["spans_bytes"] = common.sql(cluster, "conv_src", "select pg_total_relation_size('otel.spans')")[0][0]
    return data


def cutoff_for(cluster, database, column) -> str:
    """A UTC midnight at least a day after the newest row and two after today (revision 2's rule)."""
    newest = common.sql(cluster, database, "select (max(%s) at time zone 'UTC')::date from otel.spans" % column)[0][0]
    today = datetime.datetime.now(datetime.timezone.utc).date()
    day = max(newest + datetime.timedelta(days=1), today + datetime.timedelta(days=2))
    return day.isoformat() + " 00:00:00+00"


def write_floor_script(path: str, column: str, cutoff: str) -> list:
    statements = [
        "CREATE UNIQUE INDEX CONCURRENTLY %s ON otel.spans (id, %s)" % (FLOOR_INDEX, column),
        "ALTER TABLE otel.spans ADD CONSTRAINT %s CHECK (%s < '%s') NOT VALID" % (FLOOR_CHECK, column, cutoff),
        "ALTER TABLE otel.spans VALIDATE CONSTRAINT %s" % FLOOR_CHECK,
    ]
    with open(path, "w") as handle:
        handle.write("\\timing on\n")
        for statement in statements:
            handle.write(statement + ";\n")
    return statements


# --------------------------------------------------------------------------- the two scenarios

def run_floor(cluster, database, script, statements) -> dict:
    common.sql(cluster, database, "CHECKPOINT")
    result = common.run_measured(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", script],
                                 env=common.psql_env(cluster, database), timeout=7200)
    times = [float(t) / 1e3 for t in re.findall(r"^Time: ([\d.]+) ms", result.out, re.M)]
    if len(times) != len(statements):
        raise RuntimeError("psql printed %d timings for %d statements:\n%s" % (len(times), len(statements), result.out))
    index_s, validate_s = times[0], times[2]
    return {"wall": result.wall, "index_s": index_s, "add_check_s": times[1], "validate_s": validate_s,
            "floor": max(index_s, validate_s)}


def run_ours(cluster, database, argv, env, args, traces, seed, column) -> dict:
    stop = threading.Event()
    origin = time.perf_counter()
    writer = common.Writer(cluster, database, args.writer_interval, stop, origin)
    writer.column = column
    reader = common.Reader(cluster, database, args.reader_interval, stop, origin, traces, seed)
    monitor = common.Monitor(cluster, database, stop, origin)
    run = common.run_under_load(cluster, database, argv, env, [writer, reader, monitor], stop, origin,
                                args.pre_seconds, args.post_seconds, args.timeout)
    result = run["result"]
    out = {"wall": result.wall, "code": result.code, "failed": common.failure_line(result),
           "rss_mib": result.maxrss_mib, "log": common.parse_log(run["log"])}
    if out["failed"]:
        log("FAILED: %s" % out["failed"])
    out.update(load_figures(reader, monitor, run["start"], run["end"]))
    out["writer"] = writer.figures(cluster, database, run["start"], run["end"])
    out["writer_before"] = common.latency_stats([s[1] for s in writer.samples if s[0] < run["start"]])
    out["stalls"] = adopt.explain_stalls(writer.samples, monitor.samples, run["start"])
    # otelmig's fixed cost: the same command again, with nothing left to do.
    out["noop_wall"] = common.run_measured(argv, env=env, timeout=600).wall if result.code == 0 else float("nan")
    out["layout"] = common.sql(cluster, database, """
        select (select relkind::text from pg_class where oid = 'otel.spans'::regclass),
               (select count(*) from pg_inherits where inhparent = 'otel.spans'::regclass),
               (select version_num from otel.alembic_version)""")[0]
    return out


def load_figures(reader, monitor, up_start, up_end) -> dict:
    """The reads that started while the conversion ran (and before it, for scale); what the migration did."""
    during = [s for s in reader.samples if up_start <= s[0] < up_end and s[2]]
    return {
        "reader": common.latency_stats([s[1] for s in during]),
        "reader_before": common.latency_stats([s[1] for s in reader.samples if s[0] < up_start and s[2]]),
        "reader_failed": sum(1 for s in reader.samples if not s[2]),
        "reader_empty": sum(1 for s in reader.samples if s[2] and s[3] == 0),
        "slow_reads": adopt.explain_slow_reads(reader.samples, monitor.samples, up_start, up_end),
        "phases": adopt.otelmig_phases(monitor.samples, up_start),
    }


# --------------------------------------------------------------------------- main

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spans", type=int, default=1000000)
    parser.add_argument("--runs", type=int, default=3, help="rounds of (floor, ours), each on fresh copies")
    parser.add_argument("--stand-in", action="store_true",
                        help="measure the baseline adoption instead of revision 2 (harness check only)")
    parser.add_argument("--reader-interval", type=float, default=0.050)
    common.add_load_arguments(parser, pre_seconds=3.0, post_seconds=2.0, timeout=3600)
    args = parser.parse_args()
    if args.spans < 1000 or not 1 <= args.runs <= 20:
        parser.error("--spans >= 1000 and --runs 1..20")
    pyz, python = common.prepare_pyz(args.pyz)
    head = head_revision(python, pyz)
    stand_in = args.stand_in or head == BASELINE
    if stand_in:
        log("STAND-IN: the pyz's head is %s; measuring `upgrade %s` on a legacy store instead of revision 2"
            % (head, BASELINE))
    column = "start_ts" if stand_in else "start_time"
    operation = [python, pyz, "-v", "upgrade"] + ([BASELINE] if stand_in else [])
    with common.BenchSession("convert") as s:
        cluster = s.cluster
        version = common.server_version(cluster)
        # Unpack the pyz and compile what upgrade imports once, before anything is timed.
        common.run_measured([python, pyz, "upgrade", "--sql"], env=common.pyz_env(cluster, "postgres", s.shiv_root))
        data = prepare_source(cluster, python, pyz, s.shiv_root, args.spans, stand_in)
        script = os.path.join(s.scratch, "floor.sql")
        statements = write_floor_script(script, column, cutoff_for(cluster, "conv_src", column))

        def run_one(i, key, database, _results):
            if key == "floor":
                return run_floor(cluster, database, script, statements)
            return run_ours(cluster, database, operation, common.pyz_env(cluster, database, s.shiv_root), args,
                            data["traces"], i, column)

        rounds = common.copy_rounds(cluster, "conv_src", args.runs, ["floor", "ours"], run_one, prefix="conv")
        elapsed = s.elapsed()
    report(args, pyz, head, stand_in, operation, version, data, statements, rounds, elapsed)
    common.write_json(args.json, {"data": data, "rounds": rounds, "stand_in": stand_in})


def report(args, pyz, head, stand_in, operation, version, data, statements, rounds, elapsed):
    common.print_header("converting otel.spans of %d spans to time partitions" % data["spans"], "convert.py", version,
                        pyz, head)
    if stand_in:
        print("**STAND-IN**: the pyz's head is %s, not revision 2 (%s): \"ours\" is `upgrade %s` on a legacy "
              "store. These figures check the harness; they are not the conversion's.\n"
              % (head, PARTITION_REVISION, BASELINE))
    print("data: %d spans in %d traces, otel.spans %.0f MiB with its indexes%s; generated in %.0f s" % (
        data["spans"], data["traces"], data["spans_bytes"] / 2**20,
        "" if stand_in else " (after the baseline's adoption, %.0f s)" % data.get("baseline_seconds", 0),
        data["seconds"]))
    print("ours: `%s`, while a writer inserts every %g ms and a reader reads one trace every %g ms, from %g s "
          "before until %g s after" % (" ".join(["python3", "dist/otelmig.pyz"] + operation[2:]),
                                       args.writer_interval * 1e3, args.reader_interval * 1e3,
                                       args.pre_seconds, args.post_seconds))
    print("floor: psql -f, no load, on an identical copy: %s" % "; ".join("`%s`" % s for s in statements))
    print("%d round(s), floor and ours alternating which goes first, %.0f s in all\n" % (len(rounds), elapsed))

    ours = [r["results"]["ours"] for r in rounds]
    floor = [r["results"]["floor"] for r in rounds]
    for i, x in enumerate(ours):
        if x["failed"]:
            print("**round %d: ours FAILED**: %s\n" % (i + 1, x["failed"]))

    row = common.figure_row
    print(common.FIGURE_TABLE)
    row("conversion wall (ours, under load)", [x["wall"] for x in ours], "%.2f s")
    row("floor: CREATE UNIQUE INDEX CONCURRENTLY (id, start)", [x["index_s"] for x in floor], "%.2f s")
    row("floor: VALIDATE CONSTRAINT of the CHECK", [x["validate_s"] for x in floor], "%.2f s")
    row("floor = the larger", [x["floor"] for x in floor], "%.2f s")
    ratios = [o["wall"] / f["floor"] for o, f in zip(ours, floor)]
    row("**conversion / floor**", ratios, "%.2f", "<= 1.5",
        lambda v: common.median(v) <= 1.5 and not any(x["failed"] for x in ours))
    both = [f["index_s"] + f["validate_s"] for f in floor]
    row("floor: both scans, one after the other (index + validation)", both, "%.2f s")
    row("conversion / both scans", [o["wall"] / b for o, b in zip(ours, both)], "%.2f")
    row("conversion minus otelmig's fixed cost, / floor", [(o["wall"] - o["noop_wall"]) / f["floor"]
                                                          for o, f in zip(ours, floor)], "%.2f")
    row("writer: worst insert during", [x["writer"]["worst_ms"] for x in ours], "%.0f ms", "<= 250 ms",
        lambda v: max(v) <= 250)
    row("writer: p99 insert during", [x["writer"]["p99_ms"] for x in ours], "%.1f ms")
    row("writer: median insert during", [x["writer"]["median_ms"] for x in ours], "%.1f ms")
    row("writer: median insert before", [x["writer_before"]["median_ms"] for x in ours], "%.1f ms")
    row("writer: inserts started during the conversion", [x["writer"]["n"] for x in ours], "%d")
    row("writer: attempted in all", [x["writer"]["attempted"] for x in ours], "%d")
    row("writer: rejected (an attempt failed; retried)", [x["writer"]["rejected"] for x in ours], "%d", "0",
        lambda v: max(v) == 0)
    row("writer: failed inserts (after retrying 5 s)", [x["writer"]["failed"] for x in ours], "%d", "0",
        lambda v: max(v) == 0)
    row("writer: lost (acknowledged, not present after)", [x["writer"]["lost"] for x in ours], "%d", "0",
        lambda v: max(v) == 0)
    row("reader: worst read during", [x["reader"]["worst_ms"] for x in ours], "%.0f ms", "<= 250 ms",
        lambda v: max(v) <= 250)
    row("reader: p99 read during", [x["reader"]["p99_ms"] for x in ours], "%.1f ms")
    row("reader: median read during", [x["reader"]["median_ms"] for x in ours], "%.1f ms")
    row("reader: reads during", [x["reader"]["n"] for x in ours], "%d")
    row("reader: failed reads", [x["reader_failed"] for x in ours], "%d", "0", lambda v: max(v) == 0)
    row("otelmig's fixed cost: the same upgrade again, nothing to do", [x["noop_wall"] for x in ours], "%.2f s")
    row("otelmig upgrade peak RSS", [x["rss_mib"] for x in ours], "%.1f MiB")
    print()
    for i, x in enumerate(ours):
        print("round %d (%s first): layout afterwards (relkind, partitions, revision) %s; writer error codes %s; "
              "empty reads %d" % (i + 1, rounds[i]["order"][0], x["layout"], x["writer"]["error_codes"] or "none",
                                  x["reader_empty"]))
    print("\n### the slowest inserts (> %d ms) and what the migrating session was doing\n" % adopt.STALL_MS)
    adopt.print_stalls([x["stalls"] for x in ours])
    print("\n### reads over %d ms during the conversion\n" % adopt.SLOW_READ_MS)
    for i, x in enumerate(ours):
        for s in x["slow_reads"]:
            print("- round %d, %.2f s in: %.0f ms; reader %s; migration %s" % (
                i + 1, s["at_s"], s["latency_ms"], s["reader_waits"] or "-", s["migrator"] or "-"))
    last = ours[-1]
    print("\n### last round: otelmig's statements over 100 ms, lock waits (server log)\n")
    for app, ms, statement in last["log"]["durations"]:
        if app in adopt.MIGRATORS:
            print("- %.0f ms: `%s`" % (ms, statement))
    print("\nlock waits over deadlock_timeout (100 ms) logged: %d" % len(last["log"]["lock_waits"]))
    for line in last["log"]["lock_waits"][:12]:
        print("- %s" % line)
    print("\n### last round: what the migrating session ran (pg_stat_activity every 100 ms; s after it started)\n")
    print("| from | to | samples | wait | CREATE INDEX phase | statement |\n|---:|---:|---:|---|---|---|")
    for p in last["phases"]:
        print("| %.1f | %.1f | %d | %s | %s | `%s` |" % (p["from_s"], p["to_s"], p["samples"], p["wait"],
                                                       p["cic_phase"][:60], p["statement"][:90]))


if __name__ == "__main__":
    main()
