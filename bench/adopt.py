#!/usr/bin/env python3
"""Adopting a legacy store: `otelmig.pyz upgrade` against the bare DDL, under load (issue 7).

Run by hand, not in CI, from the repository root (builds dist/otelmig.pyz if missing):

    python3 bench/adopt.py [--spans 1000000] [--pairs 3] [--no-diagnostics]
    python3 bench/adopt.py --spans 10000000 --pairs 1

It starts a throwaway PostgreSQL cluster (tests/pgcluster.py plus BENCH_CONF of
bench/common.py; 127.0.0.1 only; always stopped), fills database `legacy_src`
with the legacy layout (docs/legacy_schema.sql) and SPANS generated
server-side (traces of 5-20 spans, JSON attributes, 20 services; VACUUM
ANALYZE, CHECKPOINT), and then runs PAIRS rounds. Each round makes fresh
copies (CREATE DATABASE ... TEMPLATE legacy_src STRATEGY FILE_COPY) and runs,
in an order rotated by one each round:

  a  bare DDL: the 6 RENAME COLUMNs, 4 ADD COLUMNs and 4 plain CREATE INDEX
     that the baseline revision runs on a legacy store, taken from
     `otelmig.pyz upgrade 163d8f446eb9 --sql` (the ADD COLUMNs whose column
     this store lacks), run by `psql -f` (autocommit), no load;
  b  `otelmig.pyz upgrade 163d8f446eb9` (the baseline; the head's conversion
     is bench/convert.py) WHILE a writer inserts a span every 10 ms (the
     columns both layouts share plus the start column: start_ts, and on
     SQLSTATE 42703 start_time) and a reader reads one trace by trace_id every
     50 ms; both run PRE seconds before the upgrade and POST seconds after it;
and with diagnostics (default; --no-diagnostics skips them):
  c  `otelmig.pyz upgrade 163d8f446eb9` with no load;
  d  bare DDL as in a, but with CREATE INDEX CONCURRENTLY (what the baseline
     runs on a table that holds rows), no load;
  e  d under the same writer + reader load as b.
A failed otelmig run is reported (exit code, last line, the indexes left),
not raised. --otelmig-url-query KEY=VALUE adds URL parameters for otelmig
(connect_timeout=3600 works around the 10 s socket timeout that kills index
builds longer than that: see bench/README.md).
Each is preceded by a CHECKPOINT. After b: `otelmig.pyz verify` (3 runs), row
counts (every acknowledged insert must be there), and where the writer's
slow inserts came from (pg_stat_activity sampled every 100 ms, the server
log's lock waits and statements over 100 ms).

Reports medians over the rounds: upgrade wall time and its ratio to a, the
writer's and reader's worst and p99 latency, inserts lost (failed and not
retried successfully within 5 s), verify time, the otelmig process's peak RSS.
Targets for 1M spans: upgrade <= 1.5 x bare DDL, writer worst < 250 ms and
nothing lost, reader worst < 250 ms, verify < 0.5 s.
"""

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import Monitor, Reader, Writer, log, parse_log  # noqa: E402  (shared with the other benchmarks)

SCENARIOS = {
    "a": "bare DDL, plain CREATE INDEX (psql, no load)",
    "b": "otelmig upgrade, writer + reader running",
    "c": "otelmig upgrade, no load",
    "d": "bare DDL, CREATE INDEX CONCURRENTLY (psql, no load)",
    "e": "bare DDL, CREATE INDEX CONCURRENTLY (psql), writer + reader running",
}
BASELINE = "163d8f446eb9"  # the adoption is revision 1; the head (revision 2) also converts: bench/convert.py
MIGRATORS = ("otelmig", "psql")  # application_name of the migrating session
STALL_MS = 50.0  # writer inserts slower than this get explained in the report
SLOW_READ_MS = 200.0  # and reads slower than this


# --------------------------------------------------------------------------- the bare DDL

def bare_ddl(python: str, pyz: str, env: dict, cluster, database: str):
    """(renames, adds, indexes) as the baseline would run them on the legacy store `database`.

    The script's ADD COLUMN IF NOT EXISTS steps cover any partial store; on
    this one only those whose column is missing (after the renames) run.
    """
    out = common.run_measured([python, pyz, "upgrade", BASELINE, "--sql"], env=env).out
    executes, indexes = [], []
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("EXECUTE '") and line.endswith("';"):
            executes.append(line[len("EXECUTE '"):-2].replace("''", "'"))
        match = re.match(r"SELECT '(CREATE INDEX CONCURRENTLY .*)' WHERE ", line)
        if match:
            indexes.append(match.group(1).replace("''", "'"))
    renames = [s for s in executes if " RENAME COLUMN " in s]
    columns = {tuple(r) for r in common.sql(cluster, database, """
        select table_name, column_name from information_schema.columns where table_schema = 'otel'""")}
    for statement in renames:
        table, old, new = re.search(r'"otel"\."(\w+)" RENAME COLUMN "(\w+)" TO "(\w+)"', statement).groups()
        columns = (columns - {(table, old)}) | {(table, new)}
    adds = [s for s in executes if " ADD COLUMN " in s
            and tuple(re.search(r'"otel"\."(\w+)" ADD COLUMN IF NOT EXISTS "(\w+)"', s).groups()) not in columns]
    if (len(renames), len(adds), len(indexes)) != (6, 4, 4):
        raise RuntimeError("expected 6 renames, 4 ADD COLUMNs and 4 indexes in `upgrade %s --sql`, found %d, %d, %d"
                           % (BASELINE, len(renames), len(adds), len(indexes)))
    return renames, adds, indexes


def write_bare_script(path: str, renames, adds, indexes, concurrently: bool) -> list:
    statements = renames + adds + [s if concurrently else s.replace("CONCURRENTLY ", "") for s in indexes]
    with open(path, "w") as handle:
        handle.write("\\timing on\n")
        for statement in statements:
            handle.write(statement + ";\n")
    return statements


def run_bare(cluster, database: str, script: str, statements) -> dict:
    common.sql(cluster, database, "CHECKPOINT")
    result = common.run_measured(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", script],
                                 env=common.psql_env(cluster, database), timeout=7200)
    times = [float(t) for t in re.findall(r"^Time: ([\d.]+) ms", result.out, re.M)]
    return {"wall": result.wall, "statements": list(zip(statements, times))}


def run_migration(cluster, database, argv, env, args, load: bool, traces: int, seed: int, otelmig: bool) -> dict:
    """One migration run (otelmig upgrade, or psql -f for e), optionally under the writer + reader load."""
    stop = threading.Event()
    origin = time.perf_counter()
    threads = []
    if load:
        writer = Writer(cluster, database, args.writer_interval, stop, origin)
        reader = Reader(cluster, database, args.reader_interval, stop, origin, traces, seed)
        monitor = Monitor(cluster, database, stop, origin)
        threads = [writer, reader, monitor]
    run = common.run_under_load(cluster, database, argv, env, threads, stop, origin, args.pre_seconds,
                                args.post_seconds, args.timeout)
    result, up_start, up_end = run["result"], run["start"], run["end"]
    out = {"wall": result.wall, "stderr": result.err[-20000:], "up_start": up_start, "up_end": up_end,
           "log": parse_log(run["log"]), "failed": common.failure_line(result)}
    if out["failed"]:
        # Reported, not raised: a failed adoption is a result too (see the report).
        log("FAILED: %s" % out["failed"])
        out["indexes_after_failure"] = common.sql(cluster, database, """
            select indexrelid::regclass::text, indisvalid from pg_index
            where indrelid in (to_regclass('otel.spans'), to_regclass('otel.traces')) order by 1""")
    if otelmig:
        out["rss_mib"] = result.maxrss_mib
        # The fixed cost: the same command again, now with nothing to do.
        out["noop_wall"] = common.run_measured(argv, env=env, timeout=120).wall if result.code == 0 else float("nan")
    if load:
        out.update(load_figures(writer, reader, monitor, up_start, up_end))
    out.update(check_result(cluster, database, argv[:2], env, writer.samples if load else [],
                            otelmig and result.code == 0))
    return out


def load_figures(writer, reader, monitor, up_start, up_end) -> dict:
    def during(samples):
        return [s for s in samples if up_start <= s[0] < up_end]

    def before(samples):
        return [s for s in samples if s[0] < up_start]

    w_during = during(writer.samples)
    r_during = during(reader.samples)
    valid_at = monitor.trace_index_valid_at
    figures = {
        "writer": common.latency_stats([s[1] for s in w_during if s[2]]),
        "writer_before": common.latency_stats([s[1] for s in before(writer.samples) if s[2]]),
        "writer_all": common.latency_stats([s[1] for s in writer.samples if s[2]]),
        "writer_lost": sum(1 for s in writer.samples if not s[2]),
        "writer_ok": sum(1 for s in writer.samples if s[2]),
        "writer_retried_errors": sorted({e for s in writer.samples for e in s[4]}),
        "writer_switched_at": writer.switched_at,
        "reader": common.latency_stats([s[1] for s in r_during if s[2]]),
        "reader_before": common.latency_stats([s[1] for s in before(reader.samples) if s[2]]),
        "reader_all": common.latency_stats([s[1] for s in reader.samples if s[2]]),
        "reader_failed": sum(1 for s in reader.samples if not s[2]),
        "reader_empty": sum(1 for s in reader.samples if s[2] and s[3] == 0),
        "trace_index_valid_at": None if valid_at is None else valid_at - up_start,
    }
    if valid_at is not None:
        figures["reader_until_index"] = common.latency_stats(
            [s[1] for s in r_during if s[2] and s[0] + s[1] < valid_at])
        figures["reader_after_index"] = common.latency_stats(
            [s[1] for s in reader.samples if s[2] and s[0] >= valid_at])
    figures["stalls"] = explain_stalls(writer.samples, monitor.samples, up_start)
    figures["slow_reads"] = explain_slow_reads(reader.samples, monitor.samples, up_start, up_end)
    figures["phases"] = otelmig_phases(monitor.samples, up_start)
    return figures


def _during(monitor_samples, start, end, who):
    """What `who` (an application_name) was doing in the samples within [start - 0.1, end + 0.1]."""
    seen = set()
    for at, activity, progress in monitor_samples:
        if start - 0.1 <= at <= end + 0.1:
            for app, pid, state, wtype, wevent, query in activity:
                if app == who or (who == "migrator" and app in MIGRATORS):
                    wait = (wtype + ":" + wevent) if wtype else "CPU"
                    seen.add(wait if who.startswith("bench") else "%s [%s]" % (query[:100], wait))
            if who == "migrator":
                seen.update("phase %s: %s" % p for p in progress)
    return sorted(seen)


def explain_stalls(samples, monitor_samples, up_start, limit=8) -> list:
    """The slowest inserts (> STALL_MS), with what the migration and the writer were doing meanwhile."""
    slow = sorted((s for s in samples if s[1] * 1e3 > STALL_MS), key=lambda s: -s[1])[:limit]
    return [{"at_s": round(start - up_start, 3), "latency_ms": round(latency * 1e3, 1), "ok": ok,
             "attempts": attempts, "errors": errors,
             "migrator": _during(monitor_samples, start, start + latency, "migrator"),
             "writer_waits": _during(monitor_samples, start, start + latency, "bench-writer")}
            for start, latency, ok, attempts, errors in slow]


def print_stalls(stalls_per_round) -> None:
    """The list explain_stalls() made, one line per slow insert, for every round."""
    for i, stalls in enumerate(stalls_per_round):
        for s in stalls:
            print("- round %d, %.2f s in: %.0f ms (ok %s, attempts %d%s); writer %s; migration %s" % (
                i + 1, s["at_s"], s["latency_ms"], s["ok"], s["attempts"],
                ", errors %s" % s["errors"] if s["errors"] else "", s["writer_waits"] or "-", s["migrator"] or "-"))


def explain_slow_reads(samples, monitor_samples, up_start, up_end, limit=8) -> list:
    slow = sorted((s for s in samples if s[1] * 1e3 > SLOW_READ_MS and up_start <= s[0] < up_end),
                  key=lambda s: -s[1])[:limit]
    return [{"at_s": round(start - up_start, 3), "latency_ms": round(latency * 1e3, 1),
             "migrator": _during(monitor_samples, start, start + latency, "migrator"),
             "reader_waits": _during(monitor_samples, start, start + latency, "bench-reader")}
            for start, latency, ok, rows in slow]


def otelmig_phases(monitor_samples, up_start) -> list:
    """Time the migrating session spent per statement (and per wait), from the 100 ms samples."""
    spans = {}
    for at, activity, progress in monitor_samples:
        phase = "; ".join("%s: %s" % p for p in progress)
        for app, pid, state, wtype, wevent, query in activity:
            if app not in MIGRATORS or state != "active":
                continue
            key = (query[:110], (wtype + ":" + wevent) if wtype else "CPU", phase)
            first, last, count = spans.get(key, (at, at, 0))
            spans[key] = (min(first, at), max(last, at), count + 1)
    rows = [{"statement": k[0], "wait": k[1], "cic_phase": k[2], "from_s": round(v[0] - up_start, 1),
             "to_s": round(v[1] - up_start, 1), "samples": v[2]} for k, v in spans.items()]
    return sorted(rows, key=lambda r: r["from_s"])


def check_result(cluster, database, python_pyz, env, writer_samples, otelmig: bool) -> dict:
    verify = []
    for _ in range(3 if otelmig else 0):
        result = common.run_measured(python_pyz + ["verify", "--format", "json"], env=env, check=False)
        payload = json.loads(result.out)
        # At the baseline, verify reports the head's revision 2 as pending (exit 5, behind): expected here.
        behind = result.code == 5 and payload.get("database_revision") == BASELINE
        if result.code != 0 and not behind:
            raise RuntimeError("verify after the upgrade failed (exit %d): %s" % (result.code, result.out))
        verify.append((result.wall, payload["seconds"]))
    spans_total, writer_rows = common.sql(cluster, database, """
        select count(*), count(*) filter (where span_id like 'w%') from otel.spans""")[0]
    acknowledged = sum(1 for s in writer_samples if s[2])
    return {"verify_wall": common.median([v[0] for v in verify]) if verify else None,
            "verify_inner": common.median([v[1] for v in verify]) if verify else None,
            "spans_after": spans_total, "writer_rows": writer_rows, "writer_acknowledged": acknowledged,
            "writer_rows_missing": acknowledged - writer_rows}


# --------------------------------------------------------------------------- main

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spans", type=int, default=1000000)
    parser.add_argument("--pairs", type=int, default=3, help="rounds of (a, b[, c, d]), each on fresh copies")
    parser.add_argument("--no-diagnostics", dest="diagnostics", action="store_false",
                        help="run only a and b (skip c, d and e)")
    parser.add_argument("--reader-interval", type=float, default=0.050)
    common.add_load_arguments(parser, pre_seconds=5.0, post_seconds=2.0, timeout=3600)
    parser.add_argument("--max-seconds", type=float, default=4 * 3600, help="start no round after this long")
    parser.add_argument("--otelmig-url-query", action="append", default=[], metavar="KEY=VALUE",
                        help="add a query parameter to otelmig's POSTGRES_URL (e.g. connect_timeout=3600, the "
                             "workaround for the 10 s socket timeout: see bench/README.md)")
    args = parser.parse_args()
    if args.spans < 1000 or not 1 <= args.pairs <= 20:
        parser.error("--spans >= 1000 and --pairs 1..20")
    pyz, python = common.prepare_pyz(args.pyz)
    scratch = tempfile.mkdtemp(prefix="otelmig-bench-adopt-")
    shiv_root = os.path.join(scratch, "shiv")
    started = time.monotonic()
    cluster = None
    rounds = []
    try:
        cluster = common.start_cluster()
        version = common.server_version(cluster)
        settings = dict(common.sql(cluster, "postgres", """
            select name, setting || coalesce(unit, '') from pg_settings where name in
            ('shared_buffers', 'maintenance_work_mem', 'work_mem', 'max_wal_size', 'max_parallel_maintenance_workers',
             'max_parallel_workers_per_gather', 'fsync', 'synchronous_commit', 'full_page_writes', 'wal_level',
             'checkpoint_timeout', 'effective_cache_size')"""))
        common.create_database(cluster, "legacy_src")
        log("generating %d legacy spans ..." % args.spans)
        data = common.generate_legacy(cluster, "legacy_src", args.spans)
        log("generated %(spans)d spans / %(traces)d traces in %(seconds).0fs" % data)
        env = common.pyz_env(cluster, "legacy_src", shiv_root)
        common.run_measured([python, pyz, "--version"], env=env)  # unpack the pyz once
        renames, adds, indexes = bare_ddl(python, pyz, env, cluster, "legacy_src")
        plain = write_bare_script(os.path.join(scratch, "bare.sql"), renames, adds, indexes, False)
        concurrent = write_bare_script(os.path.join(scratch, "bare_concurrently.sql"), renames, adds, indexes, True)
        keys = ["a", "b"] + (["c", "d", "e"] if args.diagnostics else [])
        query = dict(kv.split("=", 1) for kv in args.otelmig_url_query)
        for i in range(args.pairs):
            if time.monotonic() - started > args.max_seconds:
                log("time budget spent: no round %d" % (i + 1))
                break
            copies = {k: "copy_%s%d" % (k, i) for k in keys}
            for name in copies.values():
                common.create_database(cluster, name, template="legacy_src")
            order = keys[i % len(keys):] + keys[:i % len(keys)]
            results = {}
            try:
                for key in order:
                    log("round %d: %s %s ..." % (i + 1, key, SCENARIOS[key]))
                    if key == "a":
                        results[key] = run_bare(cluster, copies[key], os.path.join(scratch, "bare.sql"), plain)
                    elif key == "d":
                        results[key] = run_bare(cluster, copies[key], os.path.join(scratch, "bare_concurrently.sql"),
                                                concurrent)
                    elif key == "e":
                        results[key] = run_migration(
                            cluster, copies[key], ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f",
                                                   os.path.join(scratch, "bare_concurrently.sql")],
                            common.psql_env(cluster, copies[key]), args, True, data["traces"], i, otelmig=False)
                    else:
                        results[key] = run_migration(
                            cluster, copies[key], [python, pyz, "-v", "upgrade", BASELINE],
                            common.pyz_env(cluster, copies[key], shiv_root, query), args, key == "b",
                            data["traces"], i, otelmig=True)
                    log("round %d: %s took %.1fs" % (i + 1, key, results[key]["wall"]))
            finally:
                for name in copies.values():
                    common.drop_database(cluster, name)
            rounds.append({"order": order, "results": results})
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.monotonic() - started
    report(args, pyz, version, settings, data, rounds, elapsed)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"data": data, "settings": settings, "rounds": rounds}, handle, indent=1, default=str)


def report(args, pyz, version, settings, data, rounds, elapsed):
    info = common.machine()
    print("## adopting a legacy store of %d spans (%s)\n" % (data["spans"], time.strftime("%Y-%m-%d %H:%M")))
    print("machine: nproc %s, %s, %s RAM; PostgreSQL %s; Python %s" % (
        info["nproc"], info["cpu"], info["memory"], version, info["python"]))
    print("pyz: %s" % common.describe_pyz(pyz))
    print("command: python3 bench/adopt.py %s" % " ".join(sys.argv[1:]))
    print("cluster: %s" % ", ".join("%s=%s" % kv for kv in sorted(settings.items())))
    print("data: %d spans in %d traces; spans %.0f MiB, traces %.0f MiB (legacy layout, primary keys only); "
          "avg attributes %.0f bytes; generated in %.0f s" % (
              data["spans"], data["traces"], data["spans_bytes"] / 2**20, data["traces_bytes"] / 2**20,
              data["avg_attributes_bytes"], data["seconds"]))
    if args.otelmig_url_query:
        print("otelmig's POSTGRES_URL carries ?%s" % "&".join(args.otelmig_url_query))
    print("load (b, e): a writer inserting every %g ms, a reader reading one trace every %g ms, from %g s before "
          "the migration until %g s after it" % (args.writer_interval * 1e3, args.reader_interval * 1e3,
                                                 args.pre_seconds, args.post_seconds))
    print("%d round(s), scenarios interleaved (order rotated each round), %.0f s in all\n" % (len(rounds), elapsed))
    keys = [k for k in SCENARIOS if all(k in r["results"] for r in rounds)]

    def col(key, field):
        return [r["results"][key][field] for r in rounds]

    print("| scenario | median wall | per round | peak RSS (otelmig) |\n|---|---:|---|---:|")
    for key in keys:
        walls = col(key, "wall")
        rss = "%.1f MiB" % max(col(key, "rss_mib")) if "rss_mib" in rounds[0]["results"][key] else ""
        print("| %s: %s | %.2f s | %s | %s |" % (key, SCENARIOS[key], common.median(walls),
                                                 ", ".join("%.2f" % w for w in walls), rss))
    failures = [(i + 1, k, r["results"][k]["failed"]) for i, r in enumerate(rounds) for k in keys
                if r["results"][k].get("failed")]
    for i, k, why in failures:
        print("\n**round %d, %s FAILED**: %s" % (i, k, why))
        print("indexes afterwards (name, valid): %s" % rounds[i - 1]["results"][k].get("indexes_after_failure"))
    print()
    print("| figure (median over rounds) | value | per round | target | met |\n|---|---:|---|---:|---|")

    def row(name, values, fmt, target="", ok=None):
        values = [v for v in values if v is not None and v == v]  # no failed runs (None / nan)
        if not values:
            print("| %s | - | - | %s | %s |" % (name, target, "" if ok is None else "**NO**"))
            return
        print("| %s | %s | %s | %s | %s |" % (name, fmt % common.median(values), ", ".join(fmt % v for v in values),
                                            target, "" if ok is None else ("yes" if ok else "**NO**")))

    def ratio(top, bottom):
        return [r["results"][top]["wall"] / r["results"][bottom]["wall"] for r in rounds]

    b_a = ratio("b", "a")
    b_ok = not any(r["results"]["b"].get("failed") for r in rounds)
    row("upgrade under load / bare DDL (b / a)", b_a, "%.2f", "<= 1.5", b_ok and common.median(b_a) <= 1.5)
    if "c" in keys:
        row("upgrade without load / bare DDL (c / a)", ratio("c", "a"), "%.2f")
    if "d" in keys:
        row("bare DDL CONCURRENTLY / plain, no load (d / a)", ratio("d", "a"), "%.2f")
    if "e" in keys:
        row("bare DDL CONCURRENTLY under load / plain (e / a)", ratio("e", "a"), "%.2f")
        row("upgrade under load / bare CONCURRENTLY under load (b / e)", ratio("b", "e"), "%.2f")
    if "c" in keys and "d" in keys:
        row("upgrade without load / bare CONCURRENTLY (c / d)", ratio("c", "d"), "%.2f")
    if "c" in keys:
        row("otelmig upgrade again, nothing to do (its fixed cost)", col("c", "noop_wall"), "%.2f s")
    b = [r["results"]["b"] for r in rounds]
    worst_w = [x["writer"]["worst_ms"] for x in b]
    row("b: writer worst insert during upgrade", worst_w, "%.0f ms", "< 250 ms", max(worst_w) < 250)
    row("b: writer p99 insert during upgrade", [x["writer"]["p99_ms"] for x in b], "%.1f ms")
    lost = [x["writer_lost"] + x["writer_rows_missing"] for x in b]
    row("b: inserts lost (failed, or acknowledged but missing)", lost, "%d", "0", max(lost) == 0)
    worst_r = [x["reader"]["worst_ms"] for x in b]
    row("b: reader worst read during upgrade", worst_r, "%.0f ms", "< 250 ms", max(worst_r) < 250)
    row("b: reader p99 read during upgrade", [x["reader"]["p99_ms"] for x in b], "%.0f ms")
    verify = [x["verify_wall"] for x in b]
    row("b: verify on the result, wall (median of 3)", verify, "%.3f s", "< 0.5 s",
        b_ok and common.median(verify) < 0.5)
    row("b: verify on the result, in-process `seconds`", [x["verify_inner"] for x in b], "%.3f s")
    row("b: otelmig upgrade peak RSS", [x["rss_mib"] for x in b], "%.1f MiB")

    print("\n### the load in detail (median over rounds)\n")
    loaded = [k for k in ("b", "e") if k in keys]
    print("| figure | %s |\n|---|%s" % (" | ".join("%s: %s" % (k, SCENARIOS[k]) for k in loaded), "---:|" * len(loaded)))

    def lrow(name, get, fmt):
        cells = []
        for k in loaded:
            values = [get(r["results"][k]) for r in rounds]
            values = [v for v in values if v is not None and v == v]
            cells.append((fmt % common.median(values) + " (" + ", ".join(fmt % v for v in values) + ")")
                         if values else "-")
        print("| %s | %s |" % (name, " | ".join(cells)))
    lrow("migration wall", lambda x: x["wall"], "%.2f s")
    lrow("writer: inserts during the migration", lambda x: x["writer"]["n"], "%d")
    lrow("writer: worst insert during", lambda x: x["writer"]["worst_ms"], "%.0f ms")
    lrow("writer: p99 insert during", lambda x: x["writer"]["p99_ms"], "%.1f ms")
    lrow("writer: median insert during", lambda x: x["writer"]["median_ms"], "%.1f ms")
    lrow("writer: worst insert before (legacy, no migration)", lambda x: x["writer_before"]["worst_ms"], "%.0f ms")
    lrow("writer: inserts lost", lambda x: x["writer_lost"] + x["writer_rows_missing"], "%d")
    lrow("writer: followed the rename, s into the migration",
         lambda x: x["writer_switched_at"] - x["up_start"] if x["writer_switched_at"] else None, "%.2f")
    lrow("reader: worst read during", lambda x: x["reader"]["worst_ms"], "%.0f ms")
    lrow("reader: p99 read during", lambda x: x["reader"]["p99_ms"], "%.0f ms")
    lrow("reader: median read during", lambda x: x["reader"]["median_ms"], "%.1f ms")
    lrow("reader: worst read during, until ix_spans_trace_id is valid",
         lambda x: x.get("reader_until_index", {}).get("worst_ms"), "%.0f ms")
    lrow("reader: worst read once ix_spans_trace_id is valid", lambda x: x.get("reader_after_index", {}).get("worst_ms"),
         "%.1f ms")
    lrow("reader: worst read before (legacy: no index)", lambda x: x["reader_before"]["worst_ms"], "%.0f ms")
    lrow("reader: p99 read before (legacy: no index)", lambda x: x["reader_before"]["p99_ms"], "%.0f ms")
    lrow("reader: median read before (legacy: no index)", lambda x: x["reader_before"]["median_ms"], "%.0f ms")
    lrow("ix_spans_trace_id valid, s into the migration", lambda x: x["trace_index_valid_at"], "%.1f")
    for k in loaded:
        x = [r["results"][k] for r in rounds]
        print("\n%s: reader failures %s; empty reads %s; writer errors retried %s" % (
            k, [y["reader_failed"] for y in x], [y["reader_empty"] for y in x], [y["writer_retried_errors"] for y in x]))

    print("\n### per statement, bare DDL (psql \\timing), median over rounds\n")
    for key in [k for k in ("a", "d") if k in keys]:
        print("%s: %s\n" % (key, SCENARIOS[key]))
        print("| statement | median | per round |\n|---|---:|---|")
        per = list(zip(*[r["results"][key]["statements"] for r in rounds]))
        for runs in per:
            times = [t for _, t in runs]
            print("| `%s` | %.0f ms | %s |" % (runs[0][0][:110], common.median(times), ", ".join("%.0f" % t for t in times)))
        print()
    for key in [k for k in ("b", "c", "e") if k in keys]:
        last = rounds[-1]["results"][key]
        print("### %s: %s: statements over 100 ms and lock waits (server log, last round)\n" % (key, SCENARIOS[key]))
        for app, ms, statement in last["log"]["durations"]:
            if app in MIGRATORS:
                print("- %.0f ms: `%s`" % (ms, statement))
        waits = last["log"]["lock_waits"]
        print("\nlock waits over deadlock_timeout (100 ms) logged: %d" % len(waits))
        for line in waits[:12]:
            print("- %s" % line)
        print()
    for key in loaded:
        last = rounds[-1]["results"][key]
        print("### %s, last round: what the migrating session ran (pg_stat_activity every 100 ms; s after it "
              "started)\n" % key)
        print("| from | to | samples | wait | CREATE INDEX phase | statement |\n|---:|---:|---:|---|---|---|")
        for p in last["phases"]:
            print("| %.1f | %.1f | %d | %s | %s | `%s` |" % (p["from_s"], p["to_s"], p["samples"], p["wait"],
                                                           p["cic_phase"][:60], p["statement"][:90]))
        print("\n### %s, every round: the slowest inserts (> %d ms) and what ran meanwhile\n" % (key, STALL_MS))
        for i, r in enumerate(rounds):
            for s in r["results"][key]["stalls"]:
                print("- round %d, %.2f s in: %.0f ms (ok %s, attempts %d%s); writer %s; migration %s" % (
                    i + 1, s["at_s"], s["latency_ms"], s["ok"], s["attempts"],
                    ", errors %s" % s["errors"] if s["errors"] else "", s["writer_waits"] or "-",
                    s["migrator"] or "-"))
        print("\n### %s, every round: reads over %d ms during the migration\n" % (key, SLOW_READ_MS))
        for i, r in enumerate(rounds):
            for s in r["results"][key]["slow_reads"]:
                print("- round %d, %.2f s in: %.0f ms; reader %s; migration %s" % (
                    i + 1, s["at_s"], s["latency_ms"], s["reader_waits"] or "-", s["migrator"] or "-"))
        print()


if __name__ == "__main__":
    main()
