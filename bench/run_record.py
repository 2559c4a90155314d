#!/usr/bin/env python3
"""What the run history and the OTLP export cost an upgrade, and that `check` did not change (issue 21).

Run by hand, not in CI, from the repository root:

    python3 bench/run_record.py [--runs 15] [--base REV] [--base-pyz PATH] [--pyz dist/otelmig.pyz]

"Without" is otelmig as it was before the run history: the pyz built from
--base (default: the parent of the commit that added otelmig/runlog.py), by
its own ./build.sh in a `git archive` copy, cached under
~/.cache/otelmig-bench/base-<rev>.pyz; or --base-pyz. "Ours" is --pyz.

Each round runs, in an order rotated by one each round, on the bench cluster
(bench/common.py):
  upgrade, empty db   without | history | history + export    each on a fresh empty database, to the head
  upgrade, at head    without | history | history + export    a database already at the head (nothing to do:
                                                              the fixed cost, where the history weighs most)
  check               without | ours                          the readiness probe (ours: no OTEL variable set,
                                                              and with an endpoint set: check is never traced)
"history + export" has OTEL_EXPORTER_OTLP_ENDPOINT pointing at an OTLP/HTTP
receiver in this process (http.server in a thread, answering 200 at once).
Prints the median wall time of each and the ratios ours / without (of the
medians, and the median of the per-round ratios).
"""

import argparse
import http.server
import os
import subprocess
import sys
import tarfile
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import log  # noqa: E402

WITHOUT, HISTORY, EXPORT = "without", "history", "history + export"
CHECK_OURS, CHECK_TRACED = "ours", "ours, endpoint set"


def base_revision() -> str:
    """The commit before the run history: the parent of the one that added otelmig/runlog.py."""
    added = subprocess.check_output(["git", "-C", common.REPO, "log", "--diff-filter=A", "--format=%H", "--",
                                     "otelmig/runlog.py"], text=True).split()
    if not added:
        raise SystemExit("no commit adds otelmig/runlog.py here: give --base or --base-pyz")
    return added[-1] + "^"


def build_base_pyz(revision: str) -> str:
    """dist/otelmig.pyz of `revision`, built by that revision's own ./build.sh, cached by commit."""
    commit = subprocess.check_output(["git", "-C", common.REPO, "rev-parse", revision], text=True).strip()
    cache = os.path.join(os.path.expanduser("~"), ".cache", "otelmig-bench")
    target = os.path.join(cache, "base-%s.pyz" % commit[:12])
    if os.path.exists(target):
        return target
    os.makedirs(cache, exist_ok=True)
    log("building the pyz of %s (without the run history) ..." % commit[:12])
    with tempfile.TemporaryDirectory(prefix="otelmig-bench-base-") as tree:
        archive = subprocess.run(["git", "-C", common.REPO, "archive", "--format=tar", commit], check=True,
                                 capture_output=True).stdout
        with tempfile.TemporaryFile() as handle:
            handle.write(archive)
            handle.seek(0)
            with tarfile.open(fileobj=handle) as tar:
                tar.extractall(tree)
        env = dict(os.environ, SOURCE_DATE_EPOCH=subprocess.check_output(
            ["git", "-C", common.REPO, "log", "-1", "--format=%ct", commit], text=True).strip())
        subprocess.run(["./build.sh"], cwd=tree, env=env, check=True, capture_output=True)
        os.replace(os.path.join(tree, "dist", "otelmig.pyz"), target)
    return target


class Receiver:
    """An OTLP/HTTP endpoint that reads each POST and answers 200 at once (the export's own cost, no collector's)."""

    def __init__(self):
        self.received = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.received += 1
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.server.server_address[1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="rounds (each runs every variant once)")
    parser.add_argument("--base", help="the git revision measured as `without` (default: before the history)")
    parser.add_argument("--base-pyz", help="a pyz to measure as `without` instead of building --base")
    parser.add_argument("--pyz", default=common.PYZ)
    parser.add_argument("--json", help="also write every figure here")
    args = parser.parse_args()
    pyz, python = common.prepare_pyz(args.pyz)
    base_pyz = os.path.abspath(args.base_pyz) if args.base_pyz else build_base_pyz(args.base or base_revision())
    receiver = Receiver()
    walls = {}
    with common.BenchSession("run-record") as bench:
        cluster = bench.cluster
        version = common.server_version(cluster)
        builds = {WITHOUT: (base_pyz, {}), HISTORY: (pyz, {}),
                  EXPORT: (pyz, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url})}
        checks = {WITHOUT: (base_pyz, {}), CHECK_OURS: (pyz, {}),
                  CHECK_TRACED: (pyz, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url})}
        for name in builds:  # one database at the head per variant, for the no-op upgrade and check
            database = "head_%d" % list(builds).index(name)
            common.create_database(cluster, database)
        env_of = lambda database, extra: dict(common.pyz_env(cluster, database, bench.shiv_root), **extra)  # noqa
        for index, (name, (build, extra)) in enumerate(builds.items()):  # warm-up: unpack each pyz, reach the head
            common.run_measured([python, build, "upgrade"], env=env_of("head_%d" % index, extra))
        walls = {("upgrade, empty db", n): [] for n in builds}
        walls.update({("upgrade, at head", n): [] for n in builds})
        walls.update({("check", n): [] for n in checks})
        exported_before = receiver.received
        for round_number in range(args.runs):
            jobs = []
            for index, (name, (build, extra)) in enumerate(builds.items()):
                jobs.append((("upgrade, empty db", name), build, extra, "empty_%d_%d" % (round_number, index)))
                jobs.append((("upgrade, at head", name), build, extra, "head_%d" % index))
            for name, (build, extra) in checks.items():
                jobs.append((("check", name), build, extra, "head_%d" % list(checks).index(name)))
            shift = round_number % len(jobs)
            for key, build, extra, database in jobs[shift:] + jobs[:shift]:
                if database.startswith("empty_"):
                    common.create_database(cluster, database)
                command = "check" if key[0] == "check" else "upgrade"
                result = common.run_measured([python, build, command], env=env_of(database, extra))
                walls[key].append(result.wall)
                if database.startswith("empty_"):
                    common.drop_database(cluster, database)
            log("round %d/%d done" % (round_number + 1, args.runs))
        exported = receiver.received - exported_before
    receiver.close()
    report(args, pyz, base_pyz, version, walls, exported, bench.elapsed())
    common.write_json(args.json, {"walls": {"%s: %s" % key: v for key, v in walls.items()}})


def report(args, pyz, base_pyz, version, walls, exported, elapsed):
    common.print_header("run history and OTLP export: cost on upgrade, check unchanged", "run_record.py", version, pyz)
    print("without: %s" % common.describe_pyz(base_pyz))
    print("%d rounds, variants interleaved (order rotated each round); %.0f s in all; %d traces received\n"
          % (args.runs, elapsed, exported))
    print("| scenario | variant | median wall | min | max |\n|---|---|---:|---:|---:|")
    for (scenario, variant), values in walls.items():
        print("| %s | %s | %.1f ms | %.1f ms | %.1f ms |" % (scenario, variant, common.median(values) * 1e3,
                                                           min(values) * 1e3, max(values) * 1e3))
    print("\n" + common.FIGURE_TABLE.replace("| median |", "| ratio of medians; median per-round |"))
    for scenario, ours, base in (("upgrade, empty db", HISTORY, WITHOUT), ("upgrade, empty db", EXPORT, WITHOUT),
                                 ("upgrade, empty db", EXPORT, HISTORY), ("upgrade, at head", HISTORY, WITHOUT),
                                 ("upgrade, at head", EXPORT, WITHOUT), ("upgrade, at head", EXPORT, HISTORY),
                                 ("check", CHECK_OURS, WITHOUT), ("check", CHECK_TRACED, WITHOUT)):
        a, b = walls[(scenario, ours)], walls[(scenario, base)]
        per_round = [x / y for x, y in zip(a, b)]
        target = "~1.0" if scenario == "check" else ""
        print("| %s: %s / %s | %.3f; %.3f | %s | %s | |" % (
            scenario, ours, base, common.median(a) / common.median(b), common.median(per_round),
            ", ".join("%.2f" % r for r in per_round), target))


if __name__ == "__main__":
    main()
