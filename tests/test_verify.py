"""verify: each kind of drift on a real database, extras, and the outputs."""

import time
import uuid

import pytest

from conftest import load_legacy, run_cli, sql
from helpers import one_line, parse_prometheus
from otelmig import schema as contract


def legacy_at_head(url):
    load_legacy(url, traces=50)
    assert run_cli("upgrade", url=url).code == 0


@pytest.fixture
def head_url(template_database, new_database):
    """The legacy store with rows, upgraded to the head (a copy of one made once)."""
    return new_database(template=template_database("verify: legacy 50 at head", legacy_at_head))


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


# ------------------------------------ what rejects writes, DEFAULT, days ahead, outliers (issue 19 items 1, 3, 7)

import partition_layout  # noqa: E402
from helpers import BASELINE  # noqa: E402

# Every timestamp PostgreSQL accepts, as SQL, and as verify, check and plan print it (UTC text).
ODD_STAMPS = {"'56890-01-01 00:00+00'": "56890-01-01 00:00:00 UTC", "'infinity'": "infinity",
              "'0044-03-15 00:00+00 BC'": "0044-03-15 00:00:00 BC UTC", "'-infinity'": "-infinity"}


def test_a_leftover_cutoff_is_a_problem_naming_its_moment_and_the_fix(db_url):
    """An interrupted revision 2 leaves CHECK (start_time < cutoff) on the plain spans, at the baseline."""
    load_legacy(db_url, traces=5)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    cutoff = sql(db_url, "select date_trunc('day', now() at time zone 'UTC') + interval '2 days'")[0][0]
    sql(db_url, "ALTER TABLE otel.spans ADD CONSTRAINT spans_history_range CHECK (start_time < '%s+00') NOT VALID"
        % cutoff)
    result = run_cli("verify", "--format", "json", url=db_url)
    assert result.code == 7 and one_line(result.err), result
    moment = "%s UTC" % cutoff
    assert moment in result.err and "`otelmig upgrade`" in result.err and "spans_history_range" in result.err
    (problem,) = [p for p in result.json()["problems"] if p["kind"] == "rejects_writes"]
    assert problem["object"] == "otel.spans.spans_history_range" and moment in problem["detail"]
    metrics = parse_prometheus(run_cli("verify", "--format", "prometheus", url=db_url).out)
    epoch = sql(db_url, "select extract(epoch from timestamptz '%s+00')::float8" % cutoff)[0][0]
    assert metrics['otelmig_rejects_writes_from_timestamp_seconds{schema="otel"}'] == epoch
    assert metrics['otelmig_verify_exit_code{schema="otel"}'] == 7


def test_a_leftover_on_an_operator_table_is_a_note(head_url):
    sql(head_url, "create table otel.audit (at timestamptz check (at < '2030-01-01 00:00+00'))")
    result = run_cli("verify", "--format", "json", url=head_url)
    assert result.code == 0, result
    (extra,) = [e for e in result.json()["extras"] if e["kind"] == "rejects_writes"]
    assert "2030-01-01 00:00:00 UTC" in extra["detail"] and "DROP CONSTRAINT" in extra["detail"]


def test_default_rows_days_ahead_and_outliers_are_reported_whatever_their_stamp(db_url, pyz):
    from conftest import run_pyz
    partition_layout.build(db_url, cutoff_offset=-3, ahead=7)
    partition_layout.insert_spans(db_url, list(ODD_STAMPS) + ["now() + interval '20 days'"])
    result = run_pyz(pyz, "verify", "--format", "json", url=db_url)
    assert result.code == 0, result
    payload = result.json()
    twenty = sql(db_url, "select (start_time at time zone 'UTC')::text || ' UTC' from otel.spans "
                         "where start_time > now() + interval '19 days' and start_time < now() + interval '21 days'")[0][0]
    # -infinity and BC sort before every bound: spans_history (MINVALUE) holds them
    assert payload["default_partition"] == {"rows": 3, "oldest": twenty, "newest": "infinity"}
    assert payload["partitions_ahead_days"] == 7
    outliers = payload["outliers"]
    assert outliers["count"] == 3
    assert [row["start_time"] for row in outliers["newest"]] == ["infinity", "56890-01-01 00:00:00 UTC", twenty]
    kinds = {e["kind"] for e in payload["extras"]}
    assert {"default_partition_rows", "outlying_rows"} <= kinds
    text = run_pyz(pyz, "verify", url=db_url)
    assert text.code == 0 and "56890-01-01 00:00:00 UTC" in text.out and "today and the next 7 day(s)" in text.out
    metrics = parse_prometheus(run_pyz(pyz, "verify", "--format", "prometheus", url=db_url).out)
    assert metrics['otelmig_verify_default_rows{schema="otel"}'] == 3
    assert metrics['otelmig_verify_partition_days_ahead{schema="otel"}'] == 7
    assert metrics['otelmig_verify_outlying_rows{schema="otel"}'] == 3
    for command in (["check"], ["current"], ["plan"]):
        assert run_pyz(pyz, *command, url=db_url).code == 0, command


def test_fewer_days_ahead_are_counted(db_url):
    partition_layout.build(db_url, cutoff_offset=-1, ahead=2)
    result = run_cli("verify", "--format", "json", url=db_url)
    assert result.code == 7 and result.json()["partitions_ahead_days"] == 2
    assert "missing_partition" in {p["kind"] for p in result.json()["problems"]}


def test_odd_stamps_in_a_plain_spans_go_through_every_reading_command(db_url):
    load_legacy(db_url, traces=5)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    partition_layout.insert_spans(db_url, list(ODD_STAMPS))
    for command, code in ((["verify"], 5), (["check"], 5), (["current"], 0), (["plan"], 5)):
        for output_format in ("text", "json"):
            result = run_cli(*command, "--format", output_format, url=db_url)
            assert result.code == code and "Traceback" not in result.err and "internal" not in result.err, result
    outliers = run_cli("plan", "--format", "json", url=db_url).json()["outliers"]
    assert outliers["count"] == 2
    assert [row["start_time"] for row in outliers["newest"]] == ["infinity", "56890-01-01 00:00:00 UTC"]
