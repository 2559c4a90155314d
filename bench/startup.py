#!/usr/bin/env python3
"""Start-up time of `otelmig.pyz --version` (run by hand, not in CI).

    python3 bench/startup.py [--runs 21] [--python PATH] [--pyz dist/otelmig.pyz] [--check]

Scenarios, run interleaved (one of each per round) so drift hits all alike:
  python -c pass   the interpreter alone, the floor
  cold             empty extraction dir (a fresh SHIV_ROOT each run): unpack
                   site-packages and compile what gets imported
  warm             unpacked and compiled already: the launcher's fast path
  warm, shiv path  same, but SHIV_FORCE_EXTRACT=0 sends it through shiv's own
                   bootstrap (what every start would cost without the fast path)
  warm ./pyz       exec'd through its `#!/usr/bin/env python3` shebang: adds
                   whatever `python3` on PATH is (a pyenv shim costs ~60 ms)
With --check, also `check` cold and warm against a throwaway PostgreSQL
(tests/pgcluster.py) brought to head first: the container-start case.
Prints median, min and max wall time per scenario.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(cmd, env):
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit("failed (%d): %s\n%s" % (proc.returncode, " ".join(cmd), proc.stderr.decode()))
    return elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--python", default=sys.executable, help="interpreter (default: this one, not a shim)")
    ap.add_argument("--pyz", default=str(REPO / "dist" / "otelmig.pyz"))
    ap.add_argument("--check", action="store_true", help="also time `check` against a throwaway PostgreSQL")
    args = ap.parse_args()
    cluster = None
    if args.check:
        sys.path.insert(0, str(REPO / "tests"))
        from pgcluster import Cluster
        cluster = Cluster().start()
    try:
        run_all(args, cluster)
    finally:
        if cluster:
            cluster.stop()


def run_all(args, cluster):
    pyz = str(Path(args.pyz).resolve())
    py = args.python

    base = {k: v for k, v in os.environ.items() if not k.startswith("SHIV_")}
    scratch = Path(tempfile.mkdtemp(prefix="otelmig-bench-"))
    try:
        warm_env = dict(base, SHIV_ROOT=str(scratch / "warm"))
        version = subprocess.run([py, pyz, "--version"], env=warm_env, check=True,
                                 capture_output=True, text=True).stdout.strip()
        subprocess.run([py, pyz, "--version"], env=warm_env, check=True, capture_output=True)
        scenarios = {
            "python -c pass": lambda i: timed([py, "-c", "pass"], base),
            "cold": lambda i: timed([py, pyz, "--version"], dict(base, SHIV_ROOT=str(scratch / ("cold%d" % i)))),
            "warm": lambda i: timed([py, pyz, "--version"], warm_env),
            "warm, shiv path": lambda i: timed([py, pyz, "--version"], dict(warm_env, SHIV_FORCE_EXTRACT="0")),
            "warm ./pyz": lambda i: timed([pyz, "--version"], warm_env),
        }
        if cluster:
            url = cluster.url("postgres")
            subprocess.run([py, pyz, "upgrade", "--url", url], env=warm_env, check=True, capture_output=True)
            scenarios["cold check"] = lambda i: timed([py, pyz, "check", "--url", url],
                                                      dict(base, SHIV_ROOT=str(scratch / ("coldcheck%d" % i))))
            scenarios["warm check"] = lambda i: timed([py, pyz, "check", "--url", url], warm_env)
        times = {name: [] for name in scenarios}
        for i in range(args.runs):
            for name, run in scenarios.items():
                times[name].append(run(i))
            for cold in ("cold%d" % i, "coldcheck%d" % i):
                shutil.rmtree(scratch / cold, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print("%s\n%s, %d runs each, interleaved; pyz %d bytes\n"
          % (version, py, args.runs, os.path.getsize(pyz)))
    print("| scenario | median | min | max |\n|---|---:|---:|---:|")
    for name, ts in times.items():
        print("| %s | %.3f s | %.3f s | %.3f s |" % (name, statistics.median(ts), min(ts), max(ts)))


if __name__ == "__main__":
    main()
