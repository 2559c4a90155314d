"""verify: each kind of drift on a real database, extras, and the outputs."""

import re
import time
import uuid

import pytest

from conftest import load_legacy, run_cli, sql
from helpers import one_line
from otelmig import schema as contract


@pytest.fixture
def head_url(db_url):
    load_legacy(db_url, traces=50)
    assert run_cli("upgrade", url=db_url).code == 0
    return db_url


DRIFT = [
    ("drop index otel.ix_spans_span_id", "missing_index", "otel.ix_spans_span_id"),
    ("alter table otel.spans alter column kind type varchar(20)", "wrong_type", "otel.spans.kind"),
    ("alter table otel.spans drop column status_message", "missing_column", "otel.spans.status_message"),
    ("alter table otel.spans alter column name drop not null", "wrong_nullability", "otel.spans.name"),
    ("alter table otel.traces alter column span_count drop default", "wrong_default", "otel.traces.span_count"),
    ("drop index otel.ix_spans_service_start_time; "
     "create index ix_spans_service_start_time on otel.spans (start_time desc, service_name)",
     "wrong_index", "otel.ix_spans_service_start_time"),
    ("drop index otel.ix_traces_service_start_time; "
     "create index ix_traces_service_start_time on otel.traces (service_name, start_time)",
     "wrong_index", "otel.ix_traces_service_start_time"),
    ("update pg_index set indisvalid = false where indexrelid = 'otel.ix_spans_trace_id'::regclass",
     "invalid_index", "otel.ix_spans_trace_id"),
    ("alter table otel.traces drop constraint traces_pkey", "missing_primary_key", "otel.traces_pkey"),
    ("drop table otel.spans", "missing_table", "otel.spans"),
]


@pytest.mark.parametrize("statements, kind, obj", DRIFT, ids=[d[1] + ":" + d[2] for d in DRIFT])
def test_each_drift_kind_is_reported(head_url, statements, kind, obj):
    for statement in statements.split("; "):
        sql(head_url, statement)
    result = run_cli("verify", "--format", "json", url=head_url)
    assert result.code == 7, result
    payload = result.json()
    assert payload["ok"] is False
    assert {"kind": kind, "object": obj} in [{"kind": p["kind"], "object": p["object"]} for p in payload["problems"]]
    assert all(p["detail"] for p in payload["problems"])
    assert one_line(result.err)


def test_clean_database_passes_in_every_format(head_url):
    assert run_cli("verify", url=head_url).out.startswith("ok:")
    payload = run_cli("verify", "--format", "json", url=head_url).json()
    assert payload["ok"] is True and payload["exit_code"] == 0 and payload["problems"] == []
    metrics = parse_prometheus(run_cli("verify", "--format", "prometheus", url=head_url).out)
    assert metrics['otelmig_verify_ok{schema="otel"}'] == 1
    assert metrics['otelmig_verify_problems{schema="otel"}'] == 0
    assert abs(metrics['otelmig_verify_timestamp_seconds{schema="otel"}'] - time.time()) < 60


def parse_prometheus(text):
    metrics = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        match = re.fullmatch(r'([a-z_]+\{[a-z_]+="[^"]*"\}) (-?[0-9.e+]+)', line)
        assert match, line
        metrics[match.group(1)] = float(match.group(2))
    return metrics


def test_prometheus_reports_drift(head_url):
    sql(head_url, "drop index otel.ix_spans_span_id")
    result = run_cli("verify", "--format", "prometheus", url=head_url)
    assert result.code == 7
    metrics = parse_prometheus(result.out)
    assert metrics['otelmig_verify_ok{schema="otel"}'] == 0
    assert metrics['otelmig_verify_problems{schema="otel"}'] == 1


def test_extras_pass_unless_strict(head_url):
    sql(head_url, "alter table otel.spans add column region text")
    sql(head_url, "create index ops_tenant on otel.spans (tenant_id)")
    sql(head_url, "create view otel.recent as select * from otel.spans")
    relaxed = run_cli("verify", "--format", "json", url=head_url)
    assert relaxed.code == 0
    extras = {(e["kind"], e["object"]) for e in relaxed.json()["extras"]}
    assert extras == {("extra_column", "otel.spans.region"), ("extra_index", "otel.ops_tenant"),
                      ("extra_relation", "otel.recent")}
    strict = run_cli("verify", "--strict", url=head_url)
    assert strict.code == 7 and "--strict" in strict.err
    assert "extra_column" in strict.out


def test_legacy_database_is_4_and_recognised(db_url):
    load_legacy(db_url, traces=5)
    result = run_cli("verify", url=db_url)
    assert result.code == 4 and one_line(result.err), result
    assert "legacy" in result.err and "upgrade" in result.err


def test_empty_database_is_4(db_url):
    assert run_cli("verify", url=db_url).code == 4


def test_unknown_revision_is_6(head_url):
    sql(head_url, "update otel.alembic_version set version_num = 'ffffffffffff'")
    result = run_cli("verify", "--format", "json", url=head_url)
    assert result.code == 6
    assert result.json()["problems"][0]["kind"] == "unknown_revision"


def test_unreachable_is_3():
    result = run_cli("verify", "--format", "json", url="postgresql://u@127.0.0.1:1/d")
    assert result.code == 3 and result.json()["exit_code"] == 3


def test_verify_works_with_a_read_only_role(server, head_url):
    role = "otel_ro_" + uuid.uuid4().hex[:10]  # roles are cluster-wide: no name another run could hold
    sql(head_url, "create role %s login password 'ro-pw'" % role)
    try:
        sql(head_url, "grant usage on schema otel to %s" % role)
        sql(head_url, "grant select on all tables in schema otel to %s" % role)
        url = server.url(head_url.rsplit("/", 1)[1], user=role, password="ro-pw")
        assert run_cli("verify", url=url).code == 0
        assert run_cli("check", url=url).code == 0
    finally:
        sql(head_url, "drop owned by %s" % role)
        sql(server.admin_url, "drop role %s" % role)


def test_contract_names_every_index_of_spec():
    assert {i.name for i in contract.INDEXES} == {
        "ix_traces_service_start_time", "ix_traces_start_time", "ix_spans_trace_id", "ix_spans_span_id",
        "ix_spans_service_start_time"}
