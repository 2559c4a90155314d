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
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import adopt  # noqa: E402  (its Writer, Reader, Monitor and log parsing)
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
    server_log = adopt.ServerLog(cluster)
    common.sql(cluster, database, "CHECKPOINT")
    stop = threading.Event()
    origin = time.perf_counter()
    writer = adopt.Writer(cluster, database, args.writer_interval, stop, origin)
    writer.column = column
    reader = adopt.Reader(cluster, database, args.reader_interval, stop, origin, traces, seed)
    monitor = adopt.Monitor(cluster, database, stop, origin)
    threads = [writer, reader, monitor]
    for thread in threads:
        thread.start()
    time.sleep(args.pre_seconds)
    server_log.mark()
    up_start = time.perf_counter() - origin
    try:
        result = common.run_measured(argv, env=env, timeout=args.timeout, check=False)
    finally:
        up_end = time.perf_counter() - origin
        time.sleep(args.post_seconds)
        stop.set()
        for thread in threads:
            thread.join(60)
    for thread in threads:
        if thread.failure:
            raise RuntimeError("%s failed: %s" % (type(thread).__name__, thread.failure))
    out = {"wall": result.wall, "code": result.code, "failed": None, "rss_mib": result.maxrss_mib,
           "log": adopt.parse_log(server_log.since_mark())}
    if result.code != 0:
        lines = [l for l in result.err.splitlines() if l.strip()]
        out["failed"] = "exit %d after %.1f s: %s" % (result.code, result.wall, lines[-1] if lines else "")
        log("FAILED: %s" % out["failed"])
    out.update(load_figures(writer, reader, monitor, up_start, up_end))
    out.update(rows_after(cluster, database, writer))
    # otelmig's fixed cost: the same command again, with nothing left to do.
    out["noop_wall"] = common.run_measured(argv, env=env, timeout=600).wall if result.code == 0 else float("nan")
    out["layout"] = common.sql(cluster, database, """
        select (select relkind::text from pg_class where oid = 'otel.spans'::regclass),
               (select count(*) from pg_inherits where inhparent = 'otel.spans'::regclass),
               (select version_num from otel.alembic_version)""")[0]
    return out


def load_figures(writer, reader, monitor, up_start, up_end) -> dict:
    """Latencies of the inserts and reads that started while the conversion ran (and before it, for scale)."""
    def during(samples):
        return [s for s in samples if up_start <= s[0] < up_end]

    def before(samples):
        return [s for s in samples if s[0] < up_start]

    return {
        "writer": common.latency_stats([s[1] for s in during(writer.samples)]),  # failed ones too: their time was spent
        "writer_before": common.latency_stats([s[1] for s in before(writer.samples)]),
        "writer_all": common.latency_stats([s[1] for s in writer.samples]),
        "writer_attempted": len(writer.samples),
        "writer_acknowledged": sum(1 for s in writer.samples if s[2]),
        "writer_failed": sum(1 for s in writer.samples if not s[2]),
        "writer_errors": sum(len(s[4]) for s in writer.samples),
        "writer_error_codes": sorted({e for s in writer.samples for e in s[4]}),
        "reader": common.latency_stats([s[1] for s in during(reader.samples) if s[2]]),
        "reader_before": common.latency_stats([s[1] for s in before(reader.samples) if s[2]]),
        "reader_failed": sum(1 for s in reader.samples if not s[2]),
        "reader_empty": sum(1 for s in reader.samples if s[2] and s[3] == 0),
        "stalls": adopt.explain_stalls(writer.samples, monitor.samples, up_start),
        "slow_reads": adopt.explain_slow_reads(reader.samples, monitor.samples, up_start, up_end),
        "phases": adopt.otelmig_phases(monitor.samples, up_start),
    }


def rows_after(cluster, database, writer) -> dict:
    present = common.sql(cluster, database, "select count(*) from otel.spans where span_id like 'w%'")[0][0]
    return {"writer_present": present, "writer_lost": len(writer.samples) - present}


# --------------------------------------------------------------------------- main

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spans", type=int, default=1000000)
    parser.add_argument("--runs", type=int, default=3, help="rounds of (floor, ours), each on fresh copies")
    parser.add_argument("--stand-in", action="store_true",
                        help="measure the baseline adoption instead of revision 2 (harness check only)")
    parser.add_argument("--writer-interval", type=float, default=0.010)
    parser.add_argument("--reader-interval", type=float, default=0.050)
    parser.add_argument("--pre-seconds", type=float, default=3.0, help="load before the upgrade starts")
    parser.add_argument("--post-seconds", type=float, default=2.0, help="load after the upgrade ends")
    parser.add_argument("--timeout", type=float, default=3600, help="longest upgrade or floor run")
    parser.add_argument("--pyz", default=common.PYZ)
    parser.add_argument("--json", help="also write all figures here")
    args = parser.parse_args()
    if args.spans < 1000 or not 1 <= args.runs <= 20:
        parser.error("--spans >= 1000 and --runs 1..20")
    common.reexec_in_venv()
    pyz = os.path.abspath(common.ensure_pyz(args.pyz))
    python = common.base_python()
    head = head_revision(python, pyz)
    stand_in = args.stand_in or head == BASELINE
    if stand_in:
        log("STAND-IN: the pyz's head is %s; measuring `upgrade %s` on a legacy store instead of revision 2"
            % (head, BASELINE))
    column = "start_ts" if stand_in else "start_time"
    operation = [python, pyz, "-v", "upgrade"] + ([BASELINE] if stand_in else [])
    scratch = tempfile.mkdtemp(prefix="otelmig-bench-convert-")
    shiv_root = os.path.join(scratch, "shiv")
    started = time.monotonic()
    cluster, rounds = None, []
    try:
        cluster = common.start_cluster()
        version = common.server_version(cluster)
        # Unpack the pyz and compile what upgrade imports once, before anything is timed.
        common.run_measured([python, pyz, "upgrade", "--sql"], env=common.pyz_env(cluster, "postgres", shiv_root))
        data = prepare_source(cluster, python, pyz, shiv_root, args.spans, stand_in)
        script = os.path.join(scratch, "floor.sql")
        statements = write_floor_script(script, column, cutoff_for(cluster, "conv_src", column))
        for i in range(args.runs):
            copies = {"floor": "conv_floor_%d" % i, "ours": "conv_ours_%d" % i}
            for name in copies.values():
                common.create_database(cluster, name, template="conv_src")
            order = ["floor", "ours"] if i % 2 == 0 else ["ours", "floor"]
            results = {}
            try:
                for key in order:
                    log("round %d: %s ..." % (i + 1, key))
                    if key == "floor":
                        results[key] = run_floor(cluster, copies[key], script, statements)
                    else:
                        results[key] = run_ours(cluster, copies[key], operation,
                                                common.pyz_env(cluster, copies[key], shiv_root), args,
                                                data["traces"], i, column)
                    log("round %d: %s took %.1fs" % (i + 1, key, results[key]["wall"]))
            finally:
                for name in copies.values():
                    common.drop_database(cluster, name)
            rounds.append({"order": order, "results": results})
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    report(args, pyz, head, stand_in, operation, version, data, statements, rounds, time.monotonic() - started)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"data": data, "rounds": rounds, "stand_in": stand_in}, handle, indent=1, default=str)


def report(args, pyz, head, stand_in, operation, version, data, statements, rounds, elapsed):
    info = common.machine()
    print("## converting otel.spans of %d spans to time partitions (%s)\n" % (
        data["spans"], time.strftime("%Y-%m-%d %H:%M")))
    if stand_in:
        print("**STAND-IN**: the pyz's head is %s, not revision 2 (%s): \"ours\" is `upgrade %s` on a legacy "
              "store. These figures check the harness; they are not the conversion's.\n"
              % (head, PARTITION_REVISION, BASELINE))
    print("machine: nproc %s, %s, %s RAM; PostgreSQL %s; Python %s" % (
        info["nproc"], info["cpu"], info["memory"], version, info["python"]))
    print("pyz: %s; head %s" % (common.describe_pyz(pyz), head))
    print("command: python3 bench/convert.py %s" % " ".join(sys.argv[1:]))
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

    def row(name, values, fmt, target="", ok=None):
        values = [v for v in values if v is not None and v == v]
        if not values:
            print("| %s | - | - | %s | |" % (name, target))
            return
        met = "" if ok is None else ("yes" if ok(values) else "**NO**")
        print("| %s | %s | %s | %s | %s |" % (name, fmt % common.median(values), ", ".join(fmt % v for v in values),
                                            target, met))

    print("| figure | median | per round | target | met |\n|---|---:|---|---:|---|")
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
    row("writer: attempted in all", [x["writer_attempted"] for x in ours], "%d")
    row("writer: present afterwards", [x["writer_present"] for x in ours], "%d")
    row("writer: lost (attempted - present)", [x["writer_lost"] for x in ours], "%d", "0", lambda v: max(v) == 0)
    row("writer: failed inserts (after retrying 5 s)", [x["writer_failed"] for x in ours], "%d", "0",
        lambda v: max(v) == 0)
    row("writer: errors (retried)", [x["writer_errors"] for x in ours], "%d")
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
              "empty reads %d" % (i + 1, rounds[i]["order"][0], x["layout"], x["writer_error_codes"] or "none",
                                  x["reader_empty"]))
    print("\n### the slowest inserts (> %d ms) and what the migrating session was doing\n" % adopt.STALL_MS)
    for i, x in enumerate(ours):
        for s in x["stalls"]:
            print("- round %d, %.2f s in: %.0f ms (ok %s, attempts %d%s); writer %s; migration %s" % (
                i + 1, s["at_s"], s["latency_ms"], s["ok"], s["attempts"],
                ", errors %s" % s["errors"] if s["errors"] else "", s["writer_waits"] or "-", s["migrator"] or "-"))
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
