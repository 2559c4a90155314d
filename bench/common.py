"""Shared helpers of the hand-run benchmarks (bench/check_latency.py, bench/adopt.py).

Not used by the tests or CI. What lives here:
  - bench_venv(): a private virtualenv with exactly the pins of requirements.lock
    (Alembic, SQLAlchemy, pg8000, ...), outside the work tree (default
    ~/.cache/otelmig-bench/venv-<hash>, override with OTELMIG_BENCH_VENV). The
    benchmarks re-exec themselves in it (they need pg8000 for their own
    connections), and check_latency runs plain `alembic` from it.
  - a throwaway PostgreSQL cluster (tests/pgcluster.py) with bench settings;
  - run_measured(): one child process, its wall time and its own peak RSS
    (os.wait4 gives the rusage of exactly that child);
  - generate_legacy(): the legacy layout (docs/legacy_schema.sql) filled
    server-side with realistic spans: traces of 5-20 spans, JSON attributes,
    20 services.
Everything talks to 127.0.0.1 only.
"""

import hashlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYZ = os.path.join(REPO, "dist", "otelmig.pyz")
LEGACY_SQL = os.path.join(REPO, "docs", "legacy_schema.sql")
BASE_PYTHON_ENV = "OTELMIG_BENCH_BASE_PYTHON"

# Settings of the bench cluster, on top of what tests/pgcluster.py writes
# (fsync, synchronous_commit and full_page_writes off; max_connections 200).
# Sized for this 24 GiB machine; said in bench/README.md.
BENCH_CONF = """
shared_buffers = '4GB'
maintenance_work_mem = '1GB'
work_mem = '32MB'
effective_cache_size = '16GB'
max_wal_size = '8GB'
min_wal_size = '1GB'
checkpoint_timeout = '30min'
log_lock_waits = on
deadlock_timeout = '100ms'
log_line_prefix = '%m [%p] %a: '
log_min_duration_statement = '100ms'
"""

SERVICES = ["frontend", "checkout", "cart", "payment", "shipping", "email", "currency", "recommendation",
            "ad", "product-catalog", "quote", "accounting", "fraud-detection", "inventory", "auth",
            "search", "user", "notification", "gateway", "reporting"]
OPERATIONS = ["GET /api/products", "GET /api/products/{id}", "POST /api/cart", "GET /api/cart",
              "POST /api/checkout", "PlaceOrder", "GetQuote", "ConvertCurrency", "Charge", "ShipOrder",
              "SendOrderConfirmation", "ListRecommendations", "GetAds", "SELECT products", "SELECT orders",
              "INSERT orders", "UPDATE inventory", "redis GET", "redis SET", "kafka publish orders",
              "kafka consume orders", "HTTP GET", "HTTP POST", "grpc.health.v1.Health/Check",
              "oteldemo.CartService/GetCart", "oteldemo.CartService/AddItem", "authenticate",
              "validate token", "render template", "serialize response", "search query", "index lookup",
              "fraud score", "compute tax", "reserve stock", "release stock", "email render",
              "smtp send", "feature flag eval", "cache miss"]


# --------------------------------------------------------------------------- interpreter, venv, pyz

def base_python() -> str:
    """The interpreter the benchmark was started with (resolved past pyenv shims)."""
    return os.environ.get(BASE_PYTHON_ENV) or os.path.realpath(sys.executable)


def _lock_stamp(python: str) -> str:
    with open(os.path.join(REPO, "requirements.lock"), "rb") as handle:
        pins = handle.read()
    version = subprocess.check_output([python, "-c", "import sys; print(sys.version.split()[0])"], text=True)
    return hashlib.sha256(pins + version.encode()).hexdigest()[:12]


def bench_venv() -> str:
    """Path of the private venv (created on first use); returns its directory."""
    python = base_python()
    venv = os.environ.get("OTELMIG_BENCH_VENV") or os.path.join(
        os.path.expanduser("~"), ".cache", "otelmig-bench", "venv-" + _lock_stamp(python))
    stamp_file = os.path.join(venv, ".stamp")
    if not os.path.exists(stamp_file):
        log("creating %s (pins of requirements.lock) ..." % venv)
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([python, "-m", "venv", venv], check=True)
        subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "-r", os.path.join(REPO, "requirements.lock")], check=True)
        with open(stamp_file, "w") as handle:
            handle.write("ok\n")
    return venv


def reexec_in_venv() -> str:
    """Re-run this script under the bench venv's Python (it needs pg8000); returns the venv path."""
    venv = bench_venv()
    venv_python = os.path.join(venv, "bin", "python")
    if os.path.realpath(sys.prefix) != os.path.realpath(venv):
        env = dict(os.environ)
        env[BASE_PYTHON_ENV] = base_python()
        os.execve(venv_python, [venv_python] + sys.argv, env)
    return venv


def ensure_pyz(pyz: str = PYZ) -> str:
    if not os.path.exists(pyz):
        log("%s missing: running ./build.sh" % pyz)
        subprocess.run([os.path.join(REPO, "build.sh")], check=True, cwd=REPO)
    return pyz


def pyz_sha(pyz: str) -> str:
    with open(pyz, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()[:16]


def describe_pyz(pyz: str) -> str:
    """Which build was measured: path, sha256, mtime, and the work tree's commit."""
    path = os.path.relpath(pyz, REPO) if pyz.startswith(REPO + os.sep) else pyz
    where = ("work tree at %s" % git_describe() if pyz.startswith(REPO + os.sep)
             else "built outside this work tree (bench scripts at %s)" % git_describe())
    return "%s (sha256 %s…, built %s); %s" % (
        path, pyz_sha(pyz), time.strftime("%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(pyz))), where)


# --------------------------------------------------------------------------- cluster

def start_cluster(extra_conf: str = BENCH_CONF):
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from pgcluster import Cluster  # tests/pgcluster.py
    cluster = Cluster()
    try:
        cluster.start(extra_conf)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def connect(cluster, database: str, application_name: str = "otelmig-bench", autocommit: bool = True):
    import pg8000.dbapi
    conn = pg8000.dbapi.Connection(user=cluster.user, host="127.0.0.1", port=cluster.port, database=database,
                                   password=cluster.password, application_name=application_name, timeout=600)
    conn.autocommit = autocommit
    return conn


def sql(cluster, database: str, statement: str, params=()):
    conn = connect(cluster, database)
    try:
        cursor = conn.cursor()
        cursor.execute(statement, params)
        return [list(row) for row in cursor.fetchall()] if cursor.description else None
    finally:
        conn.close()


def create_database(cluster, name: str, template: str = None) -> None:
    if template:
        sql(cluster, "postgres", "CREATE DATABASE %s TEMPLATE %s STRATEGY FILE_COPY" % (name, template))
    else:
        sql(cluster, "postgres", "CREATE DATABASE %s" % name)


def drop_database(cluster, name: str) -> None:
    sql(cluster, "postgres", "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)


def server_version(cluster) -> str:
    return sql(cluster, "postgres", "show server_version")[0][0]


def pyz_env(cluster, database: str, shiv_root: str, query: dict = None) -> dict:
    """A clean environment for the pyz: only POSTGRES_URL (with `query` parameters) and SHIV_ROOT from us."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PG", "POSTGRES", "OTEL", "SHIV_", "PYTHON"))}
    env["POSTGRES_URL"] = cluster.url(database, **(query or {}))
    env["SHIV_ROOT"] = shiv_root
    return env


def psql_env(cluster, database: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES"))}
    env.update(PGHOST="127.0.0.1", PGPORT=str(cluster.port), PGUSER=cluster.user, PGPASSWORD=cluster.password,
               PGDATABASE=database)
    return env


def sqlalchemy_url(cluster, database: str) -> str:
    return "postgresql+pg8000://%s:%s@127.0.0.1:%d/%s" % (
        cluster.user, urllib.parse.quote(cluster.password, safe=""), cluster.port, database)


# --------------------------------------------------------------------------- measuring a child process

class Measured:
    def __init__(self, wall, maxrss_kib, code, out, err):
        self.wall, self.maxrss_kib, self.code, self.out, self.err = wall, maxrss_kib, code, out, err

    @property
    def maxrss_mib(self) -> float:
        return self.maxrss_kib / 1024.0


# Peak RSS: os.wait4's ru_maxrss of a child also counts the image it was
# forked from (Linux keeps the high-water mark across exec), i.e. this
# benchmark's own ~28 MiB. So commands run under GNU time (/usr/bin/time, a
# ~1 MiB parent) when it is there, and its %M is the figure; it adds ~1 ms of
# wall time to every command alike.
TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def run_measured(argv, env=None, timeout: float = 600.0, check: bool = True, cwd=None) -> Measured:
    """Run argv; wall time from spawn to reap, and its own peak RSS (GNU time's %M, else os.wait4).

    Output goes to temporary files (no pipe can fill up); the child is killed
    after `timeout` seconds.
    """
    import tempfile
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile(prefix="otelmig-bench-rss-") as rss:
        if TIME:  # GNU time: a tiny parent, so the peak RSS is the command's own
            argv = [TIME, "-q", "-f", "%M", "-o", rss.name] + list(argv)
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd,
                                start_new_session=True)  # own process group: a timeout kills it all
        timer = threading.Timer(timeout, lambda: _kill(proc.pid))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        maxrss = usage.ru_maxrss
        if TIME:
            text = rss.read().decode().strip().splitlines()
            maxrss = int(text[-1]) if text and text[-1].isdigit() else -1
        result = Measured(wall, maxrss, proc.returncode, out.read().decode(errors="replace"),
                          err.read().decode(errors="replace"))
    if check and result.code != 0:
        raise RuntimeError("exit %d: %s\n%s%s" % (result.code, " ".join(argv), result.out[-2000:],
                                                   result.err[-4000:]))
    return result


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, 9)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------- legacy data

def spans_in_trace(g: int) -> int:
    """5..20 spans for trace g; the same formula as the SQL below (_COUNT_SQL)."""
    return 5 + ((g * 2654435761) % 4294967296) % 16


_COUNT_SQL = "(5 + ((g::bigint * 2654435761) %% 4294967296) %% 16)::int"


def traces_for(spans: int) -> int:
    """How many traces hold at least `spans` spans (the last one is cut short)."""
    total, g = 0, 0
    while total < spans:
        g += 1
        total += spans_in_trace(g)
    return g


def trace_id(g: int) -> str:
    return hashlib.md5(("t%d" % g).encode()).hexdigest()


def load_legacy_schema(cursor, schema: str = "otel") -> None:
    """docs/legacy_schema.sql, as tests/conftest.py load_legacy() runs it."""
    with open(LEGACY_SQL) as handle:
        ddl = handle.read().replace("otel.", "%s." % schema).replace("SCHEMA IF NOT EXISTS otel",
                                                                      "SCHEMA IF NOT EXISTS %s" % schema)
    ddl = "\n".join(line.split("--", 1)[0] for line in ddl.splitlines())
    for statement in ddl.split(";"):
        if statement.strip():
            cursor.execute(statement)


def generate_legacy(cluster, database: str, spans: int, seed: float = 0.42, chunk_traces: int = 50000) -> dict:
    """Fill the legacy layout with `spans` spans, server-side; returns counts and sizes.

    Trace g has 5..20 spans (spans_in_trace), a root span and children whose
    parent is the span before them in a binary tree; 20 services; operations
    from a list of 40; attributes are JSON objects of 4-8 keys (~200 bytes);
    ~4% errors; 4 tenants, 3 environments. Rows arrive trace by trace, in time order.
    """
    traces = traces_for(spans)
    conn = connect(cluster, database)
    started = time.monotonic()
    try:
        cursor = conn.cursor()
        load_legacy_schema(cursor)
        cursor.execute("select setseed(%s)", (seed,))
        services = "array[%s]" % ", ".join("'%s'" % s for s in SERVICES)
        operations = "array[%s]" % ", ".join("'%s'" % o for o in OPERATIONS)
        for low in range(1, traces + 1, chunk_traces):
            high = min(traces, low + chunk_traces - 1)
            # The last trace is cut so that the total is exactly `spans`.
            cursor.execute("""
                insert into otel.spans (trace_id, span_id, parent_span_id, name, kind, service_name, start_ts,
                                        end_ts, duration_ms, status, attributes, environment, tenant_id)
                select md5('t' || g), substr(md5('s' || g || '.' || k), 1, 16),
                       case when k > 1 then substr(md5('s' || g || '.' || (k / 2)), 1, 16) end,
                       ({ops})[1 + (g * 7 + k * 13) %% 40],
                       case when k = 1 then 'SPAN_KIND_SERVER' when k %% 3 = 0 then 'SPAN_KIND_CLIENT'
                            when k %% 5 = 0 then 'SPAN_KIND_PRODUCER' else 'SPAN_KIND_INTERNAL' end,
                       ({svc})[1 + (g + (k / 2) * 7) %% 20],
                       timestamptz '2026-01-01' + g * interval '250 ms' + k * interval '3 ms',
                       timestamptz '2026-01-01' + g * interval '250 ms' + k * interval '3 ms'
                           + (d * interval '1 ms'),
                       d,
                       case when random() < 0.04 then 'STATUS_CODE_ERROR'
                            when k %% 2 = 0 then 'STATUS_CODE_UNSET' else 'STATUS_CODE_OK' end,
                       jsonb_strip_nulls(jsonb_build_object(
                           'http.method', case when k %% 4 = 1 then 'GET' when k %% 4 = 2 then 'POST' end,
                           'http.route', '/api/v1/' || ({svc})[1 + (g + k) %% 20] || '/' || (k %% 9),
                           'http.status_code', case when k %% 4 in (1, 2) then 200 + (k %% 3) * 100 end,
                           'net.peer.name', ({svc})[1 + (g * 3 + k) %% 20] || '.svc.cluster.local',
                           'db.statement', case when k %% 4 = 3 then 'SELECT * FROM orders WHERE id = $1' end,
                           'thread.id', (g + k) %% 64,
                           'otel.library.name', 'io.opentelemetry.' || ({svc})[1 + (g + (k / 2) * 7) %% 20],
                           'user.id', 'u-' || (g %% 9973))),
                       ({envs})[1 + g %% 3], 'tenant-' || (g %% 4)
                from generate_series(%s::int, %s::int) g,
                     lateral (select k, round((random() * 40 + 1)::numeric, 3)::float8 as d
                              from generate_series(1, {count}) k) ks
                order by g, k
                """.format(ops=operations, svc=services, count=_COUNT_SQL,
                           envs="array['prod', 'staging', 'dev']"), (low, high))
            log("  spans for traces %d..%d of %d (%.0fs)" % (low, high, traces, time.monotonic() - started))
        cursor.execute("""
            insert into otel.traces (trace_id, service_name, root_span_name, start_ts, end_ts, duration_ms,
                                     span_count, environment, tenant_id, ingest_source, ingested_at)
            select trace_id, min(service_name) filter (where parent_span_id is null),
                   min(name) filter (where parent_span_id is null), min(start_ts), max(end_ts),
                   extract(epoch from max(end_ts) - min(start_ts)) * 1000, count(*), min(environment),
                   min(tenant_id), 'otlp', max(end_ts) + interval '2 s'
            from otel.spans group by trace_id""")
        # The generated total is trimmed to exactly `spans` (the last trace cut short).
        cursor.execute("select count(*) from otel.spans")
        have = cursor.fetchone()[0]
        if have > spans:
            cursor.execute("delete from otel.spans where id > (select max(id) from otel.spans) - %s",
                           (have - spans,))
            cursor.execute("""update otel.traces t set span_count = s.n from
                              (select trace_id, count(*) n from otel.spans group by trace_id) s
                              where s.trace_id = t.trace_id and t.span_count <> s.n""")
        cursor.execute("VACUUM ANALYZE otel.spans")
        cursor.execute("VACUUM ANALYZE otel.traces")
        cursor.execute("CHECKPOINT")
        cursor.execute("""select (select count(*) from otel.spans), (select count(*) from otel.traces),
                                 pg_total_relation_size('otel.spans'), pg_total_relation_size('otel.traces'),
                                 (select avg(pg_column_size(attributes)) from otel.spans)""")
        n_spans, n_traces, spans_bytes, traces_bytes, attr_bytes = cursor.fetchone()
    finally:
        conn.close()
    return {"spans": n_spans, "traces": n_traces, "spans_bytes": spans_bytes, "traces_bytes": traces_bytes,
            "avg_attributes_bytes": float(attr_bytes), "seconds": time.monotonic() - started}


# --------------------------------------------------------------------------- statistics, output

def latency_stats(latencies):
    """Count, worst, p99 and median of latencies in seconds, in milliseconds."""
    return {"n": len(latencies), "worst_ms": max(latencies) * 1e3 if latencies else float("nan"),
            "p99_ms": percentile(latencies, 99) * 1e3, "median_ms": median(latencies) * 1e3}


def median(values):
    return statistics.median(values) if values else float("nan")


def percentile(values, q: float):
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(ordered) // 100)))
    return ordered[min(rank, len(ordered)) - 1]


def machine() -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as handle:
            kib = int(handle.readline().split()[1])
            mem = "%.1f GiB" % (kib / 1024 / 1024)
    except OSError:
        pass
    python = base_python()
    version = subprocess.check_output([python, "-c", "import platform; print(platform.python_version())"],
                                      text=True).strip()
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory": mem, "python": "%s (%s)" % (version, python),
            "kernel": platform.release()}


def git_describe() -> str:
    try:
        head = subprocess.check_output(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], text=True).strip()
        dirty = subprocess.run(["git", "-C", REPO, "diff", "--quiet", "HEAD", "--", "otelmig", "migrations"]).returncode
        return head + ("+dirty(otelmig/migrations)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def log(line: str) -> None:
    sys.stderr.write("[%s] %s\n" % (time.strftime("%H:%M:%S"), line))
    sys.stderr.flush()
