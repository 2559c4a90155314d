"""OpenTelemetry traces of otelmig's own runs (issue 21 part 2), on a real server.

The suite starts its own OTLP/HTTP receiver (http.server in a thread) and
parses every payload it gets against the official schema: opentelemetry-proto's
ExportTraceServiceRequest, through google.protobuf.json_format (a test-only
dependency; otelmig's exporter is the standard library only). OTLP/JSON writes
trace and span ids as hex where protobuf's JSON mapping has base64, so the
receiver turns those fields to base64 first, as a collector does.
"""

import base64
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO, connect, load_legacy, run_cli, run_pyz, sql
from helpers import BASELINE, DEADLINE_SECONDS, error_line
from otelmig.revisions import KNOWN_REVISIONS

json_format = pytest.importorskip("google.protobuf.json_format")  # requirements-dev.lock pins it (CPython 3.10+)
trace_service = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")

KIND_INTERNAL, KIND_CLIENT = 1, 3
STATUS_ERROR = 2
ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def _ids_to_base64(node):
    """OTLP/JSON's hex ids as protobuf's JSON mapping wants bytes (base64); each must be hex of its size."""
    if isinstance(node, list):
        return [_ids_to_base64(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {}
    for key, value in node.items():
        if key in ID_FIELDS and value != "":
            raw = bytes.fromhex(value)  # raises on anything but hex
            assert len(raw) == (16 if key == "traceId" else 8), (key, value)
            converted[key] = base64.b64encode(raw).decode()
        else:
            converted[key] = _ids_to_base64(value)
    return converted


def parse(body: bytes):
    """An ExportTraceServiceRequest, or the ParseError that says what breaks the schema."""
    document = json.loads(body)
    return json_format.Parse(json.dumps(_ids_to_base64(document)), trace_service.ExportTraceServiceRequest(),
                             ignore_unknown_fields=False)


class Receiver:
    """POSTs to /v1/traces, each parsed against the schema; `hold` keeps every request waiting until released."""

    def __init__(self, hold: bool = False):
        self.requests, self.hold, self.released = [], hold, threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.hold:
                    receiver.released.wait(2 * DEADLINE_SECONDS)
                receiver.requests.append({"path": self.path, "headers": self.headers, "body": body,
                                          "parsed": parse(body)})
                answer = b"{}"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.server.server_address[1]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def spans(self):
        """Every span received, as dicts of the parsed message (ids back to hex)."""
        found = []
        for request in self.requests:
            for resource_spans in request["parsed"].resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        found.append(span)
        return found


def attributes(message) -> dict:
    values = {}
    for item in message.attributes:
        kind = item.value.WhichOneof("value")
        values[item.key] = getattr(item.value, kind)
    return values


def run_ids(url):
    return [row[0] for row in sql(url, "select run_id from otel.otelmig_runs order by started_at")]


def dead_port() -> int:
    with socket.socket() as sock:  # bound, then closed: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_run_is_one_trace_of_spans_with_the_database_conventions(pyz, db_url, tmp_path, server):
    with Receiver() as receiver:
        env = {"SHIV_ROOT": str(tmp_path), "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
               "OTEL_SERVICE_NAME": "store-migrations",
               "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=staging,team=data%20platform",
               "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20sentinel-token-42,x-tenant=t1"}
        result = run_pyz(pyz, "upgrade", url=db_url, env=env)
    assert result.code == 0 and "warning" not in result.err, result.err
    [request] = receiver.requests
    assert request["path"] == "/v1/traces" and request["headers"]["Content-Type"] == "application/json"
    assert request["headers"].get("authorization") == "Bearer sentinel-token-42" and request["headers"].get("x-tenant") == "t1"
    raw = request["body"].decode()
    assert "sentinel-token-42" not in raw and "sentinel-token-42" not in result.err + result.out
    assert server.cluster is None or server.cluster.password not in raw
    [resource_spans] = request["parsed"].resource_spans
    resource = attributes(resource_spans.resource)
    assert resource["service.name"] == "store-migrations" and resource["deployment.environment.name"] == "staging"
    assert resource["team"] == "data platform" and resource["telemetry.sdk.language"] == "python"
    spans = receiver.spans()
    [root] = [s for s in spans if not s.parent_span_id]
    trace_id = root.trace_id.hex()
    assert {s.trace_id.hex() for s in spans} == {trace_id}
    assert run_ids(db_url) == [trace_id]  # the history's run id is the trace id
    assert root.name == "upgrade" and root.kind == KIND_INTERNAL and attributes(root)["otelmig.outcome"] == "ok"
    revisions = [s for s in spans if s.parent_span_id == root.span_id]
    assert [s.name for s in revisions] == ["upgrade %s" % r for r in KNOWN_REVISIONS]
    assert all(root.start_time_unix_nano <= s.start_time_unix_nano <= s.end_time_unix_nano <= root.end_time_unix_nano
               for s in revisions)
    statements = [s for s in spans if s.kind == KIND_CLIENT]
    assert statements and {s.parent_span_id for s in statements} <= {r.span_id for r in revisions}
    database = db_url.rsplit("/", 1)[1]
    for span in statements:
        found = attributes(span)
        assert found["db.system.name"] == "postgresql" and found["db.namespace"] == "%s|otel" % database
        assert found["db.query.summary"].startswith(found["db.operation.name"]) and span.name == found["db.query.summary"]
        assert "db.query.text" not in found and found["server.port"] == int(db_url.rsplit(":", 1)[1].split("/")[0])
    summaries = {attributes(s)["db.query.summary"] for s in statements}
    assert "CREATE TABLE otel.traces" in summaries and "CREATE INDEX otel.spans" in summaries, summaries


def test_maintain_sends_a_client_span_per_statement_it_runs(db_url):
    """maintain's own statements (partitions created, rows retained) are CLIENT
    spans of its trace, with the database conventions, as a revision's are."""
    assert run_cli("upgrade", url=db_url).code == 0
    with Receiver() as receiver:
        result = run_cli("maintain", "--ahead", "9", "--retain", "30d", url=db_url,
                         env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url})
    assert result.code == 0, result.err
    spans = receiver.spans()
    [root] = [s for s in spans if not s.parent_span_id]
    assert root.name == "maintain"
    statements = [s for s in spans if s.kind == KIND_CLIENT]
    assert statements and all(s.trace_id == root.trace_id for s in statements), [s.name for s in spans]
    for span in statements:
        found = attributes(span)
        assert found["db.system.name"] == "postgresql" and span.name == found["db.query.summary"]
        assert "db.query.text" not in found
    summaries = {attributes(s)["db.query.summary"] for s in statements}
    assert any(summary.startswith("CREATE TABLE otel.spans_p") for summary in summaries), summaries


def test_a_failure_from_the_server_is_an_error_span_with_its_sqlstate_and_lock_events(db_url):
    load_legacy(db_url, traces=20)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    holder = connect(db_url, autocommit=False)
    holder.cursor().execute("lock table otel.spans in access share mode")
    release = threading.Timer(DEADLINE_SECONDS, holder.rollback)  # a safety net only
    release.start()
    try:
        with Receiver() as receiver:
            result = run_cli("upgrade", "--lock-timeout", "0.2", url=db_url,
                             env={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url + "/custom/path"})
    finally:
        release.cancel()
        holder.rollback()
        holder.close()
    assert result.code == 9, result  # the exit code is the run's
    error_line(result.err)  # still the last line, and the only one
    [request] = receiver.requests
    assert request["path"] == "/custom/path"  # the traces endpoint is taken as it is
    spans = receiver.spans()
    [root] = [s for s in spans if not s.parent_span_id]
    assert root.status.code == STATUS_ERROR and attributes(root)["process.exit.code"] == 9
    assert attributes(root)["db.response.status_code"] == "55P03"
    failed = [s for s in spans if s.kind == KIND_CLIENT and s.status.code == STATUS_ERROR]
    assert failed, [s.name for s in spans]
    for span in failed:
        found = attributes(span)
        assert found["db.response.status_code"] == "55P03" and found["error.type"] == "55P03"
        assert "lock" in span.status.message
    events = [e for e in root.events]
    waits = [e for e in events if e.name == "otelmig.lock_wait"]
    retries = [e for e in events if e.name == "otelmig.retry"]
    assert waits and retries and len(retries) == len(waits) - 1, [e.name for e in events]
    assert attributes(waits[0])["otelmig.lock"] == "table lock" and attributes(waits[0])["otelmig.wait_seconds"] > 0
    assert attributes(retries[0])["db.response.status_code"] == "55P03"
    row = sql(db_url, "select lock_waits, retries from otel.otelmig_runs order by started_at desc limit 1")[0]
    assert row == [len(waits), len(retries)]


@pytest.mark.parametrize("sampled", [True, False])
def test_traceparent_puts_the_run_in_the_callers_trace(db_url, sampled):
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with Receiver() as receiver:
        result = run_cli("upgrade", url=db_url, env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url + "/",
            "TRACEPARENT": "00-%s-%s-%s" % (trace_id, parent, "01" if sampled else "00")})
    assert result.code == 0, result.err
    assert run_ids(db_url) == [trace_id]  # the history joins the caller's trace either way
    if not sampled:
        assert receiver.requests == []  # the caller decided not to record this trace
        return
    [request] = receiver.requests
    assert request["path"] == "/v1/traces"
    spans = receiver.spans()
    assert {s.trace_id.hex() for s in spans} == {trace_id}
    [root] = [s for s in spans if s.name == "upgrade"]
    assert root.parent_span_id.hex() == parent


def test_an_invalid_traceparent_starts_a_trace_of_its_own(db_url):
    with Receiver() as receiver:
        assert run_cli("upgrade", url=db_url, env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                                                   "TRACEPARENT": "00-zz-nothex-01"}).code == 0
    [root] = [s for s in receiver.spans() if s.name == "upgrade"]
    assert not root.parent_span_id and run_ids(db_url) == [root.trace_id.hex()]


def test_a_dead_endpoint_costs_one_warning_and_leaves_the_exit_code(db_url):
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:%d" % dead_port()}
    ok = run_cli("upgrade", url=db_url, env=env)
    assert ok.code == 0, ok.err
    warnings = [line for line in ok.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "not exported" in warnings[0] and "outcome stands" in warnings[0], ok.err
    # a failing run keeps its own exit code, and its error line stays the last line
    failing = run_cli("downgrade", "nowhere", url=db_url, env=env)
    assert failing.code == 2 and "nowhere" in error_line(failing.err), failing.err
    assert len([line for line in failing.err.splitlines() if line.startswith("warning:")]) == 1


def test_a_silent_endpoint_costs_at_most_its_timeout(db_url):
    """The receiver holds every request until the test ends: the run must not wait for it."""
    with Receiver(hold=True) as receiver:
        started = time.monotonic()
        result = run_cli("upgrade", url=db_url, env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
                                                     "OTEL_EXPORTER_OTLP_TIMEOUT": "700"})
        elapsed = time.monotonic() - started
        # The endpoint never answers before DEADLINE_SECONDS: a run that returned sooner gave up on it.
        assert elapsed < DEADLINE_SECONDS, elapsed
        assert result.code == 0 and "no answer within 0.7s" in result.err, result.err
        assert len([line for line in result.err.splitlines() if line.startswith("warning:")]) == 1


def test_nothing_is_sent_or_imported_when_unset(db_url):
    """With no endpoint (or OTEL_SDK_DISABLED), the exporter and urllib's HTTP client are never imported."""
    code = ("import sys; from otelmig.cli import main; rc = main(sys.argv[1:]); "
            "print(rc, sorted(m for m in ('otelmig.otlp', 'urllib.request', 'http.client') if m in sys.modules))")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES", "OTEL", "TRACEPARENT"))}
    with Receiver() as receiver:
        for extra, args in (({}, ["upgrade"]), ({}, ["rollback"]),
                            ({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SDK_DISABLED": "true"}, ["upgrade"]),
                            ({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}, ["check"])):
            env = dict(base, POSTGRES_URL=db_url, **extra)
            done = subprocess.run([sys.executable, "-c", code] + args, cwd=REPO, env=env, capture_output=True,
                                  text=True, timeout=300)
            assert done.stdout.strip().splitlines()[-1] == "0 []", (extra, args, done.stdout, done.stderr)
    assert receiver.requests == []


def test_record_trace_writes_the_run_into_the_store(db_url):
    result = run_cli("upgrade", "--record-trace", url=db_url, env={"OTEL_SERVICE_NAME": "migrations"})
    assert result.code == 0 and "warning" not in result.err, result.err
    [run_id] = run_ids(db_url)
    [trace] = sql(db_url, "select service_name, root_span_name, span_count, ingest_source, "
                          "trace_attributes->>'otelmig.command' from otel.traces where trace_id = %s", (run_id,))
    assert trace[:2] == ["migrations", "upgrade"] and trace[3:] == ["otelmig", "upgrade"]
    spans = sql(db_url, "select kind, tableoid::regclass::text, span_attributes->>'db.system.name', parent_span_id "
                        "from otel.spans where trace_id = %s", (run_id,))
    assert trace[2] == len(spans) > len(KNOWN_REVISIONS) + 1
    assert {s[0] for s in spans} == {"SPAN_KIND_INTERNAL", "SPAN_KIND_CLIENT"}
    # revision 2 partitions spans by day: written through the parent, the rows are in the partition that
    # holds now (on an empty store the history partition reaches up to the cutoff, a coming midnight)
    holder = sql(db_url, "select c.oid::regclass::text from pg_inherits i join pg_class c on c.oid = i.inhrelid "
                         "where i.inhparent = 'otel.spans'::regclass and pg_get_expr(c.relpartbound, c.oid) <> "
                         "'DEFAULT' and (select count(*) from otel.spans where tableoid = c.oid and trace_id = %s) > 0",
                 (run_id,))
    assert len(holder) == 1 and {s[1] for s in spans} == {holder[0][0]}
    assert {s[2] for s in spans if s[0] == "SPAN_KIND_CLIENT"} == {"postgresql"}
    assert sum(s[3] is None for s in spans) == 1
    # OTELMIG_RECORD_TRACE=1 does the same; a run that fails writes nothing
    assert run_cli("upgrade", url=db_url, env={"OTELMIG_RECORD_TRACE": "1"}).code == 0
    assert sql(db_url, "select count(distinct trace_id) from otel.traces") == [[2]]
    assert run_cli("upgrade", "nowhere", "--record-trace", url=db_url).code == 2
    assert sql(db_url, "select count(*) from otel.traces") == [[2]]


def test_record_trace_below_the_head_writes_nothing(db_url):
    assert run_cli("upgrade", BASELINE, "--record-trace", url=db_url).code == 0
    assert sql(db_url, "select count(*) from otel.spans") == [[0]]
    assert run_ids(db_url)  # the history has it all the same
