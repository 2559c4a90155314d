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
import random
import re
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


# The columns that differ between the legacy layout and the head: start, end, status, attributes.
LEGACY_COLUMNS = ("start_ts", "end_ts", "status", "attributes")
HEAD_COLUMNS = ("start_time", "end_time", "status_code", "span_attributes")


def insert_spans(cursor, columns, trace_prefix: str, low: int, high: int, per_trace_sql: str, start_sql: str,
                 start_params=()) -> None:
    """Traces low..high (g) of per_trace_sql spans (k) each, generated server-side, inserted in (g, k) order.

    Trace ids are md5(trace_prefix || g); span (g, k) starts at start_sql (an
    expression of g and k, with start_params) and lasts 1-41 ms; its parent is
    span k / 2 of the same trace (a binary tree); 20 services, 40 operations,
    JSON attributes of 4-8 keys (~200 bytes), ~4% errors, 4 tenants, 3
    environments. `columns` names the layout's start, end, status and attributes columns.
    """
    start, end, status, attributes = columns
    services = "array[%s]" % ", ".join("'%s'" % s for s in SERVICES)
    operations = "array[%s]" % ", ".join("'%s'" % o for o in OPERATIONS)
    cursor.execute("""
        insert into otel.spans (trace_id, span_id, parent_span_id, name, kind, service_name, {start}, {end},
                                duration_ms, {status}, {attributes}, environment, tenant_id)
        select md5('{prefix}' || g), substr(md5('s' || g || '.' || k), 1, 16),
               case when k > 1 then substr(md5('s' || g || '.' || (k / 2)), 1, 16) end,
               ({ops})[1 + (g * 7 + k * 13) %% 40],
               case when k = 1 then 'SPAN_KIND_SERVER' when k %% 3 = 0 then 'SPAN_KIND_CLIENT'
                    when k %% 5 = 0 then 'SPAN_KIND_PRODUCER' else 'SPAN_KIND_INTERNAL' end,
               ({svc})[1 + (g + (k / 2) * 7) %% 20],
               st, st + d * interval '1 ms', d,
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
               (array['prod', 'staging', 'dev'])[1 + g %% 3], 'tenant-' || (g %% 4)
        from generate_series(%s::int, %s::int) g,
             lateral (select k, d, {start_sql} as st
                      from (select k, round((random() * 40 + 1)::numeric, 3)::float8 as d
                            from generate_series(1, {count}) k) spans_of_g) ks
        order by g, k
        """.format(start=start, end=end, status=status, attributes=attributes, prefix=trace_prefix, ops=operations,
                   svc=services, start_sql=start_sql, count=per_trace_sql), (low, high) + tuple(start_params))


def load_window(cursor, first_trace: int, traces: int, start: str, window_seconds: float, per_trace: int = 10) -> None:
    """`traces` traces of `per_trace` spans (head layout), spread evenly over `window_seconds` from `start`."""
    insert_spans(cursor, HEAD_COLUMNS, "r", first_trace, first_trace + traces - 1, str(int(per_trace)),
                 "%s::timestamptz + (g - %s::int) * %s::float8 * interval '1 s' + k * interval '3 ms'",
                 (start, first_trace, window_seconds / traces))


def insert_traces(cursor, columns) -> None:
    """One otel.traces row per trace of otel.spans that has none yet (root span, first start, last end, span count)."""
    start, end = columns[0], columns[1]
    cursor.execute("""
        insert into otel.traces (trace_id, service_name, root_span_name, {start}, {end}, duration_ms,
                                 span_count, environment, tenant_id, ingest_source, ingested_at)
        select trace_id, min(service_name) filter (where parent_span_id is null),
               min(name) filter (where parent_span_id is null), min({start}), max({end}),
               extract(epoch from max({end}) - min({start})) * 1000, count(*), min(environment),
               min(tenant_id), 'otlp', max({end}) + interval '2 s'
        from otel.spans group by trace_id
        on conflict (trace_id) do nothing""".format(start=start, end=end))


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
        for low in range(1, traces + 1, chunk_traces):
            high = min(traces, low + chunk_traces - 1)
            insert_spans(cursor, LEGACY_COLUMNS, "t", low, high, _COUNT_SQL,
                         "timestamptz '2026-01-01' + g * interval '250 ms' + k * interval '3 ms'")
            log("  spans for traces %d..%d of %d (%.0fs)" % (low, high, traces, time.monotonic() - started))
        insert_traces(cursor, LEGACY_COLUMNS)
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


# --------------------------------------------------------------------------- load: writer, reader, monitor

WRITER_RETRY_SECONDS = 5.0  # a failed insert is retried this long (then counted as failed)

def _sqlstate(exc) -> str:
    fields = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    return fields.get("C") or type(exc).__name__


class PacedSession(threading.Thread):
    """A load thread with its own connection: one action every `interval` s until `stop` (a slow one delays the next).

    Subclasses define act(cursor) and keep their own samples; an exception
    that escapes is kept in `failure` (reported by the caller, never silent).
    """

    APPLICATION = "bench-load"

    def __init__(self, cluster, database, interval, stop, origin):
        super().__init__(daemon=True)
        self.cluster, self.database, self.interval, self.stop, self.origin = cluster, database, interval, stop, origin
        self.samples = []
        self.failure = None
        self.conn = None

    def run(self):
        try:
            self.conn = connect(self.cluster, self.database, self.APPLICATION)
            next_at = time.perf_counter()
            while not self.stop.is_set():
                delay = next_at - time.perf_counter()
                if delay > 0 and self.stop.wait(delay):
                    break
                if self.act(self.conn.cursor()) is False:
                    break
                next_at = max(next_at + self.interval, time.perf_counter())
            self.conn.close()
        except Exception as exc:
            self.failure = repr(exc)

    def reconnect_after(self, code: str) -> None:
        if code in ("InterfaceError", "57P01"):  # the connection is gone (terminated, or a network error)
            self.conn = connect(self.cluster, self.database, self.APPLICATION)

    def act(self, cursor):
        raise NotImplementedError


class Writer(PacedSession):
    """A span every `interval` seconds, autocommit (as the worker does); the start column follows the rename.

    Span ids are PREFIX + a counter (the generated ones are hex: 'w' never
    starts one). `stamps` are SQL expressions for the start column, used in
    turn (default now()). A failed insert is retried for WRITER_RETRY_SECONDS;
    an insert counts as rejected if any attempt failed, as acknowledged once
    one succeeded.
    """

    APPLICATION = "bench-writer"
    INSERT = ("insert into otel.spans (trace_id, span_id, name, kind, service_name, {col}, duration_ms, "
              "environment, tenant_id) values (%s, %s, 'bench write', 'SPAN_KIND_SERVER', 'bench-writer', "
              "{stamp}, 1.5, 'prod', 'tenant-0')")

    def __init__(self, cluster, database, interval, stop, origin, prefix="w", stamps=("now()",)):
        super().__init__(cluster, database, interval, stop, origin)
        self.prefix, self.stamps = prefix, list(stamps)
        # samples: (start offset s, latency s, ok, attempts, errors)
        self.acknowledged = []  # span ids whose insert succeeded
        self.column = "start_ts"
        self.switched_at = None
        self.n = 0

    def act(self, cursor):
        self.n += 1
        span_id = "%s%015d" % (self.prefix, self.n)
        trace = hashlib.md5(("%s%d" % (self.prefix, self.n // 8)).encode()).hexdigest()
        stamp = self.stamps[self.n % len(self.stamps)]
        start = time.perf_counter()
        ok, attempts, errors = False, 0, []
        while True:
            attempts += 1
            try:
                cursor.execute(self.INSERT.format(col=self.column, stamp=stamp), (trace, span_id))
                ok = True
                break
            except Exception as exc:
                code = _sqlstate(exc)
                if code == "42703" and self.column == "start_ts":  # renamed: follow it
                    self.column, self.switched_at = "start_time", time.perf_counter() - self.origin
                    continue
                errors.append(code)
                if time.perf_counter() - start > WRITER_RETRY_SECONDS or attempts > 50:
                    break
                time.sleep(0.05)
                self.reconnect_after(code)
                cursor = self.conn.cursor()
        end = time.perf_counter()
        self.samples.append((start - self.origin, end - start, ok, attempts, errors))
        if ok:
            self.acknowledged.append(span_id)

    def figures(self, cluster, database, start, end) -> dict:
        """Inserts started in [start, end): latency; in all: rejected, failed, acknowledged but not present now."""
        during = [s for s in self.samples if start <= s[0] < end]
        present = {row[0] for row in sql(cluster, database, "select span_id from otel.spans where span_id like %s",
                                         (self.prefix + "%",))}
        out = latency_stats([s[1] for s in during])  # failed ones too: their time was spent
        out.update(attempted=len(self.samples), acknowledged=len(self.acknowledged),
                   rejected=sum(1 for s in self.samples if s[4]), failed=sum(1 for s in self.samples if not s[2]),
                   lost=sum(1 for span_id in self.acknowledged if span_id not in present),
                   error_codes=sorted({e for s in self.samples for e in s[4]}))
        return out


class Mutator(PacedSession):
    """A second session: every `interval` seconds an UPDATE of one row, then a DELETE of another, by id.

    Each of `ids` is touched once, no retry. figures() checks afterwards that
    every change the server acknowledged is still there (the updated row has
    its new name, the deleted row is gone), and counts the changes that found
    no row (the row was out of sight of otel.spans) and those that failed.
    """

    APPLICATION = "bench-mutator"
    STATEMENTS = {"update": "update otel.spans set name = 'bench updated ' || id where id = %s",
                  "delete": "delete from otel.spans where id = %s"}

    def __init__(self, cluster, database, interval, stop, origin, ids):
        super().__init__(cluster, database, interval, stop, origin)
        self.ids = list(ids)
        # samples: (start offset s, latency s, kind, id, rows changed or None, error or None)

    def act(self, cursor):
        if len(self.ids) < 2:
            return False
        for kind in ("update", "delete"):
            row_id = self.ids.pop()
            start = time.perf_counter()
            try:
                cursor.execute(self.STATEMENTS[kind], (row_id,))
                changed, error = cursor.rowcount, None
            except Exception as exc:
                changed, error = None, _sqlstate(exc)
                self.reconnect_after(error)
                cursor = self.conn.cursor()
            end = time.perf_counter()
            self.samples.append((start - self.origin, end - start, kind, row_id, changed, error))

    def figures(self, cluster, database, start, end) -> dict:
        done = [s for s in self.samples if s[4]]
        names = dict((r[0], r[1]) for r in sql(cluster, database, "select id, name from otel.spans where id = any(%s)",
                                             ([s[3] for s in done] or [0],)))
        deleted_back = sum(1 for s in done if s[2] == "delete" and s[3] in names)
        update_gone = sum(1 for s in done if s[2] == "update" and names.get(s[3]) != "bench updated %d" % s[3])
        out = latency_stats([s[1] for s in self.samples if start <= s[0] < end])
        out.update(changes=len(self.samples), acknowledged=len(done), undone=deleted_back + update_gone,
                   found_no_row=sum(1 for s in self.samples if s[4] == 0),
                   failed=sum(1 for s in self.samples if s[5]),
                   error_codes=sorted({s[5] for s in self.samples if s[5]}))
        return out


class Reader(PacedSession):
    """One trace by trace_id every `interval` seconds (columns both layouts share)."""

    APPLICATION = "bench-reader"
    QUERY = ("select span_id, parent_span_id, name, service_name, duration_ms "
             "from otel.spans where trace_id = %s")

    def __init__(self, cluster, database, interval, stop, origin, traces, seed):
        super().__init__(cluster, database, interval, stop, origin)
        self.traces, self.rng = traces, random.Random(seed)
        # samples: (start offset s, latency s, ok, rows)

    def act(self, cursor):
        trace = trace_id(self.rng.randint(1, self.traces - 1))
        start = time.perf_counter()
        try:
            cursor.execute(self.QUERY, (trace,))
            rows, ok = len(cursor.fetchall()), True
        except Exception as exc:
            rows, ok = _sqlstate(exc), False
            self.reconnect_after(rows)
        end = time.perf_counter()
        self.samples.append((start - self.origin, end - start, ok, rows))


class Monitor(threading.Thread):
    """pg_stat_activity and CREATE INDEX progress every 100 ms (cheap catalog reads)."""

    ACTIVITY = """
        select application_name, pid, state, coalesce(wait_event_type, ''), coalesce(wait_event, ''),
               left(regexp_replace(query, '\\s+', ' ', 'g'), 160)
        from pg_stat_activity
        where datname = current_database() and pid <> pg_backend_pid()
          and application_name in ('otelmig', 'psql', 'bench-writer', 'bench-reader', 'bench-mutator')
          and state <> 'idle'
          and backend_type = 'client backend'"""
    PROGRESS = """
        select coalesce(index_relid::regclass::text, ''), phase from pg_stat_progress_create_index
        where datname = current_database()"""
    VALID = "select coalesce((select indisvalid from pg_index where indexrelid = to_regclass('otel.ix_spans_trace_id')), false)"

    def __init__(self, cluster, database, stop, origin, interval=0.1):
        super().__init__(daemon=True)
        self.cluster, self.database, self.stop, self.origin, self.interval = cluster, database, stop, origin, interval
        self.samples = []  # (offset, activity rows, progress rows)
        self.trace_index_valid_at = None
        self.failure = None

    def run(self):
        try:
            conn = connect(self.cluster, self.database, "bench-monitor")
            cursor = conn.cursor()
            while not self.stop.wait(self.interval):
                now = time.perf_counter() - self.origin
                cursor.execute(self.ACTIVITY)
                activity = [tuple(r) for r in cursor.fetchall()]
                cursor.execute(self.PROGRESS)
                progress = [tuple(r) for r in cursor.fetchall()]
                if self.trace_index_valid_at is None:
                    cursor.execute(self.VALID)
                    if cursor.fetchone()[0]:
                        self.trace_index_valid_at = now
                self.samples.append((now, activity, progress))
            conn.close()
        except Exception as exc:
            self.failure = repr(exc)


# --------------------------------------------------------------------------- otelmig runs

class ServerLog:
    """The cluster's log (pg_ctl -l): the part written during one run."""

    def __init__(self, cluster):
        self.path = os.path.join(cluster.root, "log")
        self.offset = 0

    def mark(self):
        self.offset = os.path.getsize(self.path)

    def since_mark(self) -> str:
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            return handle.read().decode(errors="replace")


def parse_log(text: str) -> dict:
    durations, waits = [], []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = re.search(r"\] (\S*): LOG:  duration: ([\d.]+) ms  (?:statement|execute [^:]*): (.*)", line)
        if match:
            durations.append((match.group(1), float(match.group(2)), match.group(3)[:140]))
            continue
        match = re.search(r"\] (\S*): LOG:  process (\d+) (still waiting for|acquired) (.*)", line)
        if match:
            context = " | ".join(l.split(":  ", 1)[-1][:140] for l in lines[i + 1:i + 3]
                                 if re.search(r"(DETAIL|STATEMENT):  ", l))
            waits.append("%s %s %s -- %s" % (match.group(1), match.group(3), match.group(4)[:120], context))
    return {"durations": durations, "lock_waits": waits}


# --------------------------------------------------------------------------- runs, rounds, sessions

def run_under_load(cluster, database, argv, env, threads, stop, origin, pre_seconds, post_seconds, timeout,
                   at_start=None, at_end=None) -> dict:
    """CHECKPOINT, start the load threads, PRE s later run argv (measured), POST s after it stop them.

    Returns result (Measured), start and end (s after origin), epoch_start,
    epoch_end, log (what the server logged meanwhile) and what the optional
    at_start() / at_end(what at_start returned) returned as before / after
    (called just before and just after argv). A
    load thread that died is raised; a failed argv is not (callers decide).
    """
    server_log = ServerLog(cluster)
    sql(cluster, database, "CHECKPOINT")
    for thread in threads:
        thread.start()
    time.sleep(pre_seconds if threads else 0)
    out = {"before": at_start() if at_start else None}
    server_log.mark()
    out["start"], out["epoch_start"] = time.perf_counter() - origin, time.time()
    try:
        out["result"] = run_measured(argv, env=env, timeout=timeout, check=False)
    finally:
        out["end"], out["epoch_end"] = time.perf_counter() - origin, time.time()
        out["after"] = at_end(out["before"]) if at_end else None
        time.sleep(post_seconds if threads else 0)
        stop.set()
        for thread in threads:
            thread.join(60)
    for thread in threads:
        if thread.failure:
            raise RuntimeError("%s failed: %s" % (type(thread).__name__, thread.failure))
    out["log"] = server_log.since_mark()
    return out


def failure_line(result) -> str:
    """None if argv succeeded, else "exit N after S s: <its last stderr line>"."""
    if result.code == 0:
        return None
    lines = [l for l in result.err.splitlines() if l.strip()]
    return "exit %d after %.1f s: %s" % (result.code, result.wall, lines[-1] if lines else "")


def copy_rounds(cluster, template, runs, keys, run_one, prefix="copy", deadline=None) -> list:
    """RUNS rounds; in each, every key runs on its own fresh copy of `template` (dropped after the round).

    The order of the keys is rotated by one each round (two keys alternate
    which goes first). run_one(round index, key, database, results so far)
    returns that key's result (a dict with "wall"). Stops early once
    time.monotonic() passes `deadline`.
    """
    rounds = []
    for i in range(runs):
        if deadline is not None and time.monotonic() > deadline:
            log("time budget spent: no round %d" % (i + 1))
            break
        copies = {k: "%s_%s%d" % (prefix, k, i) for k in keys}
        for name in copies.values():
            create_database(cluster, name, template=template)
        order = keys[i % len(keys):] + keys[:i % len(keys)]
        results = {}
        try:
            for key in order:
                log("round %d: %s ..." % (i + 1, key))
                results[key] = run_one(i, key, copies[key], results)
                log("round %d: %s took %.2fs" % (i + 1, key, results[key]["wall"]))
        finally:
            for name in copies.values():
                drop_database(cluster, name)
        rounds.append({"order": order, "results": results})
    return rounds


class BenchSession:
    """A scratch directory (with SHIV_ROOT) and a throwaway cluster, both always removed: `with BenchSession() as s`."""

    def __init__(self, prefix: str, extra_conf: str = BENCH_CONF):
        self.prefix, self.extra_conf = prefix, extra_conf
        self.cluster = self.scratch = None
        self.started = time.monotonic()

    def __enter__(self):
        import tempfile
        self.scratch = tempfile.mkdtemp(prefix="otelmig-bench-%s-" % self.prefix)
        self.shiv_root = os.path.join(self.scratch, "shiv")
        try:
            self.cluster = start_cluster(self.extra_conf)
        except BaseException:
            shutil.rmtree(self.scratch, ignore_errors=True)
            raise
        return self

    def __exit__(self, *exc):
        self.cluster.stop()
        shutil.rmtree(self.scratch, ignore_errors=True)
        return False

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def add_load_arguments(parser, pre_seconds: float, post_seconds: float, timeout: float) -> None:
    """The options every benchmark under load takes: writer pace, load before and after, timeout, pyz, JSON."""
    parser.add_argument("--writer-interval", type=float, default=0.010)
    parser.add_argument("--pre-seconds", type=float, default=pre_seconds, help="load before the operation starts")
    parser.add_argument("--post-seconds", type=float, default=post_seconds, help="load after the operation ends")
    parser.add_argument("--timeout", type=float, default=timeout, help="longest run of one operation")
    parser.add_argument("--pyz", default=PYZ)
    parser.add_argument("--json", help="also write all figures here")


def prepare_pyz(pyz: str):
    """Re-exec in the bench venv, build the pyz if missing; returns (its absolute path, the Python to run it)."""
    reexec_in_venv()
    return os.path.abspath(ensure_pyz(pyz)), base_python()


def write_json(path, payload) -> None:
    if path:
        import json
        with open(path, "w") as handle:
            json.dump(payload, handle, indent=1, default=str)


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


def print_header(title: str, script: str, version: str, pyz: str, head: str = None) -> None:
    """The lines every report starts with: title, machine, build, the command that made it."""
    info = machine()
    print("## %s (%s)\n" % (title, time.strftime("%Y-%m-%d %H:%M")))
    print("machine: nproc %s, %s, %s RAM; PostgreSQL %s; Python %s" % (
        info["nproc"], info["cpu"], info["memory"], version, info["python"]))
    print("pyz: %s%s" % (describe_pyz(pyz), "; head %s" % head if head else ""))
    print("command: python3 bench/%s %s" % (script, " ".join(sys.argv[1:])))


def figure_row(name, values, fmt, target="", ok=None) -> None:
    """One row of a | figure | median | per round | target | met | table (NaN and None values left out)."""
    values = [v for v in values if v is not None and v == v]
    if not values:
        print("| %s | - | - | %s | |" % (name, target))
        return
    met = "" if ok is None else ("yes" if ok(values) else "**NO**")
    print("| %s | %s | %s | %s | %s |" % (name, fmt % median(values), ", ".join(fmt % v for v in values), target, met))


FIGURE_TABLE = "| figure | median | per round | target | met |\n|---|---:|---|---:|---|"


def log(line: str) -> None:
    sys.stderr.write("[%s] %s\n" % (time.strftime("%H:%M:%S"), line))
    sys.stderr.flush()
