#!/usr/bin/env python3
"""Latency and memory of `otelmig.pyz check` (and `verify`) against plain Alembic and psql.

Run by hand, not in CI, from the repository root (builds dist/otelmig.pyz if missing):

    python3 bench/check_latency.py [--runs 21] [--verify-rows 1000000] [--pyz dist/otelmig.pyz]

It starts a throwaway PostgreSQL cluster (tests/pgcluster.py, 127.0.0.1 only,
always stopped), creates database `bench_check` and brings it to head with
`otelmig.pyz upgrade`, and (unless --verify-rows 0) database `bench_verify`:
the legacy layout with that many generated spans, adopted with `otelmig.pyz upgrade`.

A private venv with the pins of requirements.lock (bench/common.py:
bench_venv) runs `alembic current` from a minimal Alembic project made in a
temp dir: alembic.ini, an env.py with version_table_schema = "otel" that reads
its URL from BENCH_ALEMBIC_URL, and a stub of each bundled revision (no
imports), so Alembic reads the same version table as otelmig.

Then, after one warm-up run of each (which unpacks the pyz into a private
SHIV_ROOT), RUNS rounds, each running every command once, in an order
rotated by one each round (so drift and ordering hit all alike):

  python -c pass          the interpreter alone (the floor)
  otelmig check           python3 dist/otelmig.pyz check          (bench_check, at head)
  alembic current         <venv>/bin/alembic current              (bench_check)
  psql                    psql -X -Atc 'select version_num from otel.alembic_version'
  otelmig verify (empty)  python3 dist/otelmig.pyz verify         (bench_check)
  otelmig verify (N spans) python3 dist/otelmig.pyz verify        (bench_verify)
and, unless --no-what-if, two diagnostic variants of check (not targets):
  what-if: check, sslmode=disable                   POSTGRES_URL ...?sslmode=disable
  what-if: check, bare SSL context + C PBKDF2        the same pyz, run through WHAT_IF below

Wall time is spawn to reap; peak RSS is that child's own ru_maxrss (os.wait4).
Prints medians (and min / max), the ratios otelmig/alembic and otelmig/psql
and the targets: check <= 0.35 x alembic current, check peak RSS <= 40 MiB,
verify on 1M spans < 0.5 s.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import log  # noqa: E402

# otelmig/revisions.py alone, by its path: the package's __init__ imports the driver, which the
# system python3 this script starts under may lack (it re-executes in its venv later).
import importlib.util  # noqa: E402
_spec = importlib.util.spec_from_file_location("otelmig_revisions", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "otelmig", "revisions.py"))
revisions = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(revisions)  # no Alembic: reads the revision scripts' id lines

PARENTS = revisions.read_scripts(revisions.versions_dir())
HEAD = revisions.load()[0]
ALEMBIC_INI = """[alembic]
script_location = %(here)s/migrations
"""
ALEMBIC_ENV = '''
import os
from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

engine = create_engine(os.environ["BENCH_ALEMBIC_URL"], poolclass=NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None, version_table_schema="otel")
    with context.begin_transaction():
        context.run_migrations()
'''
ALEMBIC_STUB = '''"""stub of a bundled revision: same ids, no imports"""
revision = %r
down_revision = %r
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
'''


# `check` with two dependency costs removed, to size what fixing them would
# save (see bench/README.md): pg8000, given ssl_context=None for
# sslmode=prefer, builds ssl.create_default_context(), which loads the system
# CA store only to set CERT_NONE; a bare SSLContext does the same job. scramp
# 1.4.6 computes SCRAM's Hi() (PBKDF2-HMAC-SHA-256, 4096 rounds) in a Python
# loop; hashlib.pbkdf2_hmac gives the same bytes. The pyz itself is unchanged.
WHAT_IF = """
import glob, hashlib, os, runpy, ssl, sys
def _bare(*args, **kwargs):
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ssl.create_default_context = _bare
sys.path.insert(0, glob.glob(os.path.join(os.environ["SHIV_ROOT"], "otelmig.pyz_*", "site-packages"))[0])
import scramp.core
scramp.core.hi = lambda hf, password, salt, iterations: hashlib.pbkdf2_hmac(hf().name, password, salt, iterations)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def make_alembic_project(root: str) -> str:
    os.makedirs(os.path.join(root, "migrations", "versions"))
    with open(os.path.join(root, "alembic.ini"), "w") as handle:
        handle.write(ALEMBIC_INI)
    with open(os.path.join(root, "migrations", "env.py"), "w") as handle:
        handle.write(ALEMBIC_ENV)
    for revision, down in PARENTS.items():  # the same history as otelmig's, so Alembic finds the head
        with open(os.path.join(root, "migrations", "versions", "%s_stub.py" % revision), "w") as handle:
            handle.write(ALEMBIC_STUB % (revision, down[0] if len(down) == 1 else (tuple(down) or None)))
    return os.path.join(root, "alembic.ini")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=21, help="rounds (each runs every command once)")
    parser.add_argument("--verify-rows", type=int, default=1000000,
                        help="spans in the database that verify also runs on (0: skip it)")
    parser.add_argument("--pyz", default=common.PYZ)
    parser.add_argument("--json", help="also write the raw figures here")
    parser.add_argument("--max-seconds", type=float, default=1800, help="stop the rounds after this long")
    parser.add_argument("--no-what-if", dest="what_if", action="store_false",
                        help="skip the two diagnostic check variants")
    args = parser.parse_args()
    if not 1 <= args.runs <= 1001:
        parser.error("--runs must be 1..1001")
    venv = common.reexec_in_venv()
    pyz = os.path.abspath(common.ensure_pyz(args.pyz))
    python = common.base_python()
    scratch = tempfile.mkdtemp(prefix="otelmig-bench-check-")
    cluster = None
    started = time.monotonic()
    try:
        cluster = common.start_cluster()
        version = common.server_version(cluster)
        common.create_database(cluster, "bench_check")
        shiv_root = os.path.join(scratch, "shiv")
        env_check = common.pyz_env(cluster, "bench_check", shiv_root)
        up = common.run_measured([python, pyz, "upgrade"], env=env_check)
        log("bench_check: %s" % up.out.strip())

        commands = {"python -c pass": ([python, "-c", "pass"], dict(os.environ), None)}
        commands["otelmig check"] = ([python, pyz, "check"], env_check, "ready")
        ini = make_alembic_project(os.path.join(scratch, "alembic"))
        env_alembic = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES", "PYTHON"))}
        env_alembic["BENCH_ALEMBIC_URL"] = common.sqlalchemy_url(cluster, "bench_check")
        commands["alembic current"] = ([os.path.join(venv, "bin", "alembic"), "-c", ini, "current"],
                                       env_alembic, HEAD)
        commands["psql"] = (["psql", "-X", "-Atc", "select version_num from otel.alembic_version"],
                            common.psql_env(cluster, "bench_check"), HEAD)
        commands["otelmig verify (empty)"] = ([python, pyz, "verify", "--format", "json"], env_check, '"ok": true')
        if args.what_if:  # diagnostics, not targets: see WHAT_IF
            env_nossl = dict(env_check, POSTGRES_URL=cluster.url("bench_check", sslmode="disable"))
            commands["what-if: check, sslmode=disable"] = ([python, pyz, "check"], env_nossl, "ready")
            commands["what-if: check, bare SSL context + C PBKDF2"] = (
                [python, "-c", WHAT_IF, pyz, "check"], env_check, "ready")

        data = None
        if args.verify_rows:
            common.create_database(cluster, "bench_verify")
            log("generating %d legacy spans in bench_verify ..." % args.verify_rows)
            data = common.generate_legacy(cluster, "bench_verify", args.verify_rows)
            log("generated %(spans)d spans / %(traces)d traces in %(seconds).0fs" % data)
            env_verify = common.pyz_env(cluster, "bench_verify", shiv_root)
            adopt = common.run_measured([python, pyz, "upgrade"], env=env_verify, timeout=3600)
            log("bench_verify adopted in %.1fs: %s" % (adopt.wall, adopt.out.strip()))
            data["adopt_seconds"] = adopt.wall
            commands["otelmig verify (%s spans)" % _count(args.verify_rows)] = (
                [python, pyz, "verify", "--format", "json"], env_verify, '"ok": true')

        for name, (argv, env, expect) in commands.items():  # warm-up: unpack the pyz, fill caches
            result = common.run_measured(argv, env=env, cwd=scratch)
            if expect and expect not in result.out:
                raise RuntimeError("%s: expected %r in its output, got %r %r" % (name, expect, result.out, result.err))
        names = list(commands)
        walls = {name: [] for name in names}
        rss = {name: [] for name in names}
        inner = {name: [] for name in names}  # verify's own "seconds" (in-process)
        rounds = 0
        for i in range(args.runs):
            if time.monotonic() - started > args.max_seconds:
                log("time budget spent after %d rounds" % i)
                break
            order = names[i % len(names):] + names[:i % len(names)]
            for name in order:
                argv, env, expect = commands[name]
                result = common.run_measured(argv, env=env, timeout=120, cwd=scratch)
                if expect and expect not in result.out:
                    raise RuntimeError("%s: unexpected output %r %r" % (name, result.out, result.err))
                walls[name].append(result.wall)
                rss[name].append(result.maxrss_mib)
                if "verify" in name:
                    inner[name].append(json.loads(result.out)["seconds"])
            rounds += 1
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    report(args, pyz, python, version, data, names, walls, rss, inner, rounds, time.monotonic() - started)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"walls": walls, "rss_mib": rss, "verify_inner": inner, "data": data}, handle, indent=1)


def _count(n: int) -> str:
    return "%gM" % (n / 1e6) if n >= 1000000 else "%gk" % (n / 1e3) if n >= 1000 else str(n)


def report(args, pyz, python, version, data, names, walls, rss, inner, rounds, elapsed):
    med = {name: common.median(walls[name]) for name in names}
    info = common.machine()
    print("## check latency (%s)\n" % time.strftime("%Y-%m-%d %H:%M"))
    print("machine: nproc %s, %s, %s RAM; PostgreSQL %s; Python %s" % (
        info["nproc"], info["cpu"], info["memory"], version, info["python"]))
    print("pyz: %s" % common.describe_pyz(pyz))
    print("command: python3 bench/check_latency.py %s" % " ".join(sys.argv[1:]))
    print("%d rounds, commands interleaved (order rotated each round); %.0f s in all\n" % (rounds, elapsed))
    print("| command | median wall | min | max | peak RSS (median / max) |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        ws = walls[name]
        print("| %s | %.1f ms | %.1f ms | %.1f ms | %.1f / %.1f MiB |" % (
            name, med[name] * 1e3, min(ws) * 1e3, max(ws) * 1e3, common.median(rss[name]), max(rss[name])))
    for name in names:
        if inner[name]:
            print("\n%s: in-process time (its JSON `seconds`) median %.1f ms, max %.1f ms"
                  % (name, common.median(inner[name]) * 1e3, max(inner[name]) * 1e3), end="")
    print("\n")
    check = med["otelmig check"]
    # Per-round ratios too: each pair ran within the same round.
    per_round = [c / a for c, a in zip(walls["otelmig check"], walls["alembic current"])]
    ratio = check / med["alembic current"]
    print("| figure | value | target | met |\n|---|---:|---:|---|")
    print("| check / alembic current (ratio of medians) | %.3f | <= 0.35 | %s |" % (ratio, _yes(ratio <= 0.35)))
    print("| check / alembic current (median of per-round ratios) | %.3f | | |" % common.median(per_round))
    print("| check / psql | %.2f | | |" % (check / med["psql"]))
    print("| check - python -c pass | %.1f ms | | |" % ((check - med["python -c pass"]) * 1e3))
    peak = max(rss["otelmig check"])
    print("| check peak RSS (max over runs) | %.1f MiB | <= 40 MiB | %s |" % (peak, _yes(peak <= 40)))
    for name in names:
        if name.startswith("what-if"):
            print("| (%s) / alembic current | %.3f | | |" % (name, med[name] / med["alembic current"]))
    for name in names:
        if name.startswith("otelmig verify (") and "empty" not in name:
            v = med[name]
            print("| %s, median wall | %.1f ms | < 500 ms | %s |" % (name, v * 1e3, _yes(v < 0.5)))
    if data:
        print("\nverify database: %d spans, %d traces, spans %.0f MiB / traces %.0f MiB (legacy layout, primary keys only); "
              "generated in %.0f s, adopted by `otelmig.pyz upgrade` in %.1f s"
              % (data["spans"], data["traces"], data["spans_bytes"] / 2**20, data["traces_bytes"] / 2**20,
                 data["seconds"], data["adopt_seconds"]))


def _yes(ok: bool) -> str:
    return "yes" if ok else "**NO**"


if __name__ == "__main__":
    main()
