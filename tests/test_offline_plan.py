"""upgrade --sql applied with psql reaches the same head as online; plan
names the right statements and locks and writes nothing."""

import re

import pytest

from conftest import catalog_snapshot, load_legacy, run_cli, sql, table_rows
from helpers import (BASELINE, PSQL_SCRIPT_ERROR, SPAN_COLUMNS_LEGACY, head_names, psql_file, verify_ok, wait_for,
                     write_sql)
from otelmig.revisions import HEAD_REVISION, KNOWN_REVISIONS


def test_sql_needs_no_database(tmp_path):
    text = open(write_sql(tmp_path, "upgrade", "--sql")).read()
    assert text.startswith("-- otelmig ")
    assert "SET lock_timeout" in text and HEAD_REVISION in text
    assert "CREATE INDEX CONCURRENTLY IF NOT EXISTS" in text


STATES = {
    "empty": lambda url: None,
    "legacy": lambda url: load_legacy(url, traces=400),
    "half adopted": lambda url: (load_legacy(url, traces=100),
                                 sql(url, "alter table otel.spans rename column status to status_code"),
                                 sql(url, "alter table otel.spans add column created_at timestamptz")),
    "at head": lambda url: (load_legacy(url, traces=10), run_cli("upgrade", url=url)),
}


@pytest.mark.parametrize("state", sorted(STATES))
def test_sql_script_applied_with_psql_reaches_head(tmp_path, db_url, state):
    STATES[state](db_url)
    has_spans = sql(db_url, "select to_regclass('otel.spans') is not null")[0][0]
    legacy_rows = None
    if has_spans and state == "legacy":
        legacy_rows = table_rows(db_url, "otel", "spans", SPAN_COLUMNS_LEGACY)
    applied = psql_file(db_url, write_sql(tmp_path, "upgrade", "--sql"))
    assert applied.returncode == 0, applied.stderr
    verify_ok(db_url)
    assert run_cli("check", url=db_url).code == 0
    if legacy_rows is not None:
        assert table_rows(db_url, "otel", "spans", head_names(SPAN_COLUMNS_LEGACY)) == legacy_rows


def test_sql_script_is_the_same_schema_as_online(tmp_path, new_database, db_url):
    assert psql_file(db_url, write_sql(tmp_path, "upgrade", "--sql")).returncode == 0
    offline = catalog_snapshot(db_url)
    twin = new_database()
    assert run_cli("upgrade", url=twin).code == 0
    assert catalog_snapshot(twin) == offline


def test_downgrade_sql_guards_data_and_round_trips(tmp_path, db_url):
    load_legacy(db_url, traces=50)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    sql(db_url, "update otel.spans set status_message = 'x' where id = 1")
    before = catalog_snapshot(db_url)
    refused = psql_file(db_url, write_sql(tmp_path, "downgrade", "base", "--sql"))
    assert refused.returncode == PSQL_SCRIPT_ERROR and "1 rows in otel.spans.status_message" in refused.stderr
    assert catalog_snapshot(db_url) == before  # nothing changed
    assert sql(db_url, "select version_num from otel.alembic_version") == [[BASELINE]]
    allowed = psql_file(db_url, write_sql(tmp_path, "downgrade", "base", "--sql", "--allow-data-loss"))
    assert allowed.returncode == 0, allowed.stderr
    assert run_cli("verify", url=db_url).code == 4  # legacy again
    assert sql(db_url, "select count(*) from otel.spans") == [[250]]


def test_sql_script_refuses_a_newer_database(tmp_path, db_url):
    assert run_cli("upgrade", url=db_url).code == 0
    sql(db_url, "update otel.alembic_version set version_num = 'ffffffffffff'")
    before = catalog_snapshot(db_url)
    result = psql_file(db_url, write_sql(tmp_path, "upgrade", "--sql"))
    assert result.returncode == PSQL_SCRIPT_ERROR and "newer otelmig" in result.stderr
    assert catalog_snapshot(db_url) == before


def plan_of(url):
    result = run_cli("plan", "--format", "json", url=url)
    return result.code, result.json()


def test_plan_on_empty_database(db_url):
    code, payload = plan_of(db_url)
    assert code == 5 and payload["database_revision"] is None
    statements = payload["pending"][0]["statements"]
    assert statements[0]["sql"].startswith("CREATE SCHEMA")
    creates = [s for s in statements if s["sql"].startswith("CREATE INDEX")]
    assert len(creates) == 4 and all(s["lock"] == "SHARE" and not s["outside_transaction"] for s in creates)
    assert sql(db_url, "select count(*) from pg_namespace where nspname = 'otel'") == [[0]]


def test_plan_on_legacy_names_renames_and_concurrent_builds(db_url):
    load_legacy(db_url, traces=300)
    sql(db_url, "analyze")
    before = catalog_snapshot(db_url)
    code, payload = plan_of(db_url)
    assert code == 5
    statements = payload["pending"][0]["statements"]
    renames = [s for s in statements if "RENAME COLUMN" in s["sql"]]
    assert len(renames) == 6 and all(s["lock"] == "ACCESS EXCLUSIVE" for s in renames)
    creates = [s for s in statements if s["sql"].startswith("CREATE INDEX CONCURRENTLY")]
    assert len(creates) == 4
    assert all(s["lock"] == "SHARE UPDATE EXCLUSIVE" and s["outside_transaction"] for s in creates)
    spans = [s for s in statements if s["table"] == "otel.spans"]
    assert spans[0]["rows_estimate"] == 1500 and spans[0]["size_bytes"] > 0
    assert catalog_snapshot(db_url) == before
    assert sql(db_url, "select to_regclass('otel.alembic_version')") == [[None]]


def test_plan_on_half_adopted_lists_only_what_is_left(db_url):
    load_legacy(db_url, traces=20)
    sql(db_url, "alter table otel.traces rename column start_ts to start_time")
    sql(db_url, "create index ix_spans_trace_id on otel.spans (trace_id)")
    before = catalog_snapshot(db_url)
    wait_for_live_row_counts(db_url)
    code, payload = plan_of(db_url)
    # never analyzed: the estimate comes from the statistics system's live rows
    assert {s["rows_estimate"] for s in payload["pending"][0]["statements"] if s["table"] == "otel.spans"} == {100}
    sqls = [s["sql"] for s in payload["pending"][0]["statements"] if "otelmig_objects" not in s["sql"]]
    assert not any('"start_ts" TO "start_time"' in s and "traces" in s for s in sqls)
    assert not any("ix_spans_trace_id" in s for s in sqls)
    assert any('"end_ts" TO "end_time"' in s and "traces" in s for s in sqls)
    assert catalog_snapshot(db_url) == before


def test_plan_lists_the_repair_of_an_invalid_index(db_url):
    load_legacy(db_url, traces=20)
    sql(db_url, "create index ix_spans_span_id on otel.spans (span_id)")
    sql(db_url, "update pg_index set indisvalid = false where indexrelid = 'otel.ix_spans_span_id'::regclass")
    code, payload = plan_of(db_url)
    sqls = [s["sql"] for s in payload["pending"][0]["statements"] if "ix_spans_span_id" in s["sql"]]
    # an INVALID index is a failed build: the record says the rebuilt one is created by the upgrade
    assert [s.split()[0] for s in sqls] == ["INSERT", "DROP", "CREATE"] and "'created'" in sqls[0]


def test_sql_script_waits_for_no_other_otelmig(tmp_path, db_url):
    from conftest import connect
    from otelmig.lock import lock_keys
    holder = connect(db_url)
    holder.cursor().execute("select pg_advisory_lock(%s, %s)", lock_keys("otel"))
    try:
        result = psql_file(db_url, write_sql(tmp_path, "upgrade", "--sql"))
        assert result.returncode == PSQL_SCRIPT_ERROR and "another otelmig is migrating schema otel" in result.stderr
        assert sql(db_url, "select count(*) from pg_namespace where nspname = 'otel'") == [[0]]
    finally:
        holder.close()


def wait_for_live_row_counts(url):
    """The loading session reports its inserts to the statistics system as it exits."""
    wait_for(lambda: sql(url, "select n_live_tup from pg_stat_all_tables where relid = 'otel.spans'::regclass")[0][0],
             "the statistics system to count the loaded spans")


def test_plan_at_head_is_0(db_url):
    assert run_cli("upgrade", url=db_url).code == 0
    code, payload = plan_of(db_url)
    assert code == 0 and payload["pending"] == []
    assert "nothing to do" in run_cli("plan", url=db_url).out


def psql_file_with(url: str, path: str, env: dict):
    """helpers.psql_file with more environment (psql's PGTZ, PGDATESTYLE, PGOPTIONS)."""
    import os
    import shutil
    import subprocess
    from otelmig.settings import resolve_conninfo
    from pgcluster import bindir
    info = resolve_conninfo(url, {})
    psql = shutil.which("psql") or os.path.join(bindir(), "psql")
    return subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", info.host, "-p", str(info.port),
                           "-U", info.user, "-d", info.database, "-f", path],
                          env=dict(os.environ, PGPASSWORD=info.password, **env), capture_output=True, text=True)


@pytest.mark.parametrize("env", [
    {"PGTZ": "Asia/Kolkata", "PGDATESTYLE": "SQL, DMY"},
    {"PGTZ": "America/St_Johns", "PGDATESTYLE": "German",
     "PGOPTIONS": "-c IntervalStyle=sql_standard -c timezone_abbreviations=India"},
], ids=["kolkata-sql-dmy", "st-johns-german"])
def test_sql_script_under_another_zone_and_datestyle_makes_utc_days(tmp_path, db_url, env):
    """psql's session settings (issue 19 item 2): the script sets its own at its
    top, so its cutoff and day bounds are UTC midnights, as online."""
    from test_field_server import assert_utc_midnight_days, utc_day_bounds
    load_legacy(db_url, traces=50)
    applied = psql_file_with(db_url, write_sql(tmp_path, "upgrade", "--sql"), env)
    assert applied.returncode == 0, applied.stderr
    verify_ok(db_url)
    assert_utc_midnight_days(utc_day_bounds(db_url))
    history = sql(db_url, "select pg_get_expr(relpartbound, oid) from pg_class where oid = 'otel.spans_history'::regclass")
    cutoff = sql(db_url, "select (regexp_match(%s, 'TO \\(''([^'']*)''\\)'))[1]::timestamptz at time zone 'UTC' "
                         "= date_trunc('day', (regexp_match(%s, 'TO \\(''([^'']*)''\\)'))[1]::timestamptz "
                         "at time zone 'UTC')", (history[0][0], history[0][0]))
    assert cutoff == [[True]], history


# -- plan reads as a review a DBA signs off (issue 22 item 2) ------------------------------

REV2_ID = "826630e38563"
PENDING_LINE = "%d revision(s) pending; review above, then run `otelmig upgrade`" % len(KNOWN_REVISIONS)  # a legacy store: all


def text_before_first_revision(text: str) -> str:
    return text.split("\nrevision ", 1)[0]


def test_the_built_pyz_plans_a_legacy_store_as_a_review(pyz, db_url):
    from conftest import run_pyz
    load_legacy(db_url, traces=400)
    sql(db_url, "insert into otel.spans (trace_id, span_id, name, service_name, start_ts) "
                "select 'x', 'x' || g, 'op', 'svc', timestamptz '2099-01-01 00:00+00' + g * interval '1 s' "
                "from generate_series(1, 3) g")  # outliers: the conversion moves them
    sql(db_url, "analyze")
    before = catalog_snapshot(db_url)
    text = run_pyz(pyz, "plan", url=db_url)
    as_json = run_pyz(pyz, "plan", "--format", "json", url=db_url)
    verbose = run_pyz(pyz, "plan", "-v", url=db_url)
    assert text.code == as_json.code == verbose.code == 5, (text.err, as_json.err)
    assert catalog_snapshot(db_url) == before
    # one line on stderr, in both formats; stdout JSON stays valid
    for result in (text, as_json):
        assert result.err.splitlines() == ["otelmig.pyz: plan: " + PENDING_LINE.replace("otelmig ", "otelmig.pyz ")], \
            result.err
    payload = as_json.json()
    # the summary opens the text: the ACCESS EXCLUSIVE windows, the builds with sizes, rows moved, the total
    head = text_before_first_revision(text.out)
    assert "summary" in head and "ACCESS EXCLUSIVE" in head
    assert "otel.spans: 6 statements, brief: catalog only" in head, head
    assert "otel.traces: 4 statements, brief: catalog only" in head, head
    assert "ix_spans_trace_id" in head and "spans_history_pkey" in head and "VALIDATE CONSTRAINT" in head, head
    assert "rows moved" in head and "total scanned" in head, head
    summary = payload["summary"]
    builds = {s["what"]: s for s in summary["scans"]}
    spans_size = next(s["size_bytes"] for s in payload["pending"][0]["statements"] if s["table"] == "otel.spans")
    assert builds['CREATE INDEX "ix_spans_trace_id"']["size_bytes"] == spans_size > 0
    # revision 2's build and scan are sized from the live (legacy) spans
    assert builds['CREATE UNIQUE INDEX "spans_history_pkey"']["size_bytes"] == spans_size
    assert summary["scanned_bytes"] == sum(s["size_bytes"] for s in summary["scans"]) > 4 * spans_size
    windows = {(w["revision"], w["table"]): w for w in summary["access_exclusive"] if not w.get("condition")}
    assert windows[(payload["pending"][0]["revision"], "otel.spans")]["statements"] == 6
    assert any(w["revision"] == REV2_ID and w["table"] == "otel.spans" for w in summary["access_exclusive"])
    moved = [m for m in summary["rows_moved"] if m["revision"] == REV2_ID]
    assert moved and moved[0]["rows"] == 3 and moved[0]["table"] == "otel.spans"
    assert moved[0]["rows_estimate"] == 2003 and moved[0]["size_bytes"] == spans_size
    assert "otel.spans: 1 statement, writes rows: moves 3 row(s)" in head, head
    # placeholders filled, statements whole
    for output in (text.out, as_json.out, verbose.out):
        assert "{partition" not in output and "{concurrently}" not in output
    assert not [line for line in text.out.splitlines() if line.rstrip().endswith("...")]
    assert 'CREATE INDEX CONCURRENTLY IF NOT EXISTS "ix_spans_service_start_time" ON "otel"."spans" ' \
           '(service_name, start_time DESC)' in text.out
    # a later revision's decisions: conditions in words, never contradictory unconditional lines
    rev2 = text.out.split("\nrevision %s" % REV2_ID, 1)[1].split("\noutliers:")[0]
    blocks = re.split(r"\n +\d+\. ", rev2)[1:]
    traces_index = [block for block in blocks if "ix_traces_start_time" in block]
    assert traces_index and all(block.startswith("if ") for block in traces_index), traces_index
    assert all(block.startswith("if ") for block in blocks), blocks
    assert "decided when revision %s runs" % REV2_ID in rev2
    # bookkeeping folded into one line per revision; listed in JSON and with -v
    assert "record column traces.start_time as renamed" not in text.out
    folded = [line for line in text.out.splitlines() if "bookkeeping statements" in line]
    assert len(folded) == len(KNOWN_REVISIONS) and all("otelmig_objects" in line for line in folded), folded
    assert "record column traces.start_time as renamed" in verbose.out
    kept = [s for s in payload["pending"][0]["statements"] if s.get("bookkeeping")]
    assert len(kept) == 16 and all("otelmig_objects" in s["sql"] for s in kept)
    assert "not estimated yet" not in text.out
    assert "REFUSE" not in text.out and not summary["refusals"]  # nothing on this store stops either revision


def test_plan_names_a_later_revisions_refusal_that_holds_now(db_url):
    """Both revisions pending on a legacy store with an operator's trigger on spans, which revision 2 refuses:
    plan names that refusal under revision 2, as holding now, and in its summary, before the baseline has run."""
    load_legacy(db_url, traces=10)
    sql(db_url, "create function otel.audit() returns trigger language plpgsql as $$begin return new; end$$")
    sql(db_url, "create trigger spans_audit before insert on otel.spans for each row execute function otel.audit()")
    text = run_cli("plan", url=db_url)
    as_json = run_cli("plan", "--format", "json", url=db_url)
    assert text.code == as_json.code == 5, (text, as_json)
    rev2 = text.out.split("\nrevision %s" % REV2_ID, 1)[1]
    refusal = "if still so when revision %s runs (it is now):\n      REFUSE: otel.spans has what its conversion" % REV2_ID
    assert refusal in rev2 and "triggers: spans_audit" in rev2, rev2
    head = text_before_first_revision(text.out)
    assert "refusals (the upgrade stops with exit 8 before that revision's first change):" in head, head
    assert "revision %s, otel.spans: refuses (if still so when it runs; it is now)" % REV2_ID in head, head
    payload = as_json.json()
    later = [s for s in payload["pending"][1]["statements"] if s.get("refuse")]
    assert len(later) == 1 and "triggers: spans_audit" in later[0]["refuse"], later
    assert payload["summary"]["refusals"] == [{"revision": REV2_ID, "table": "otel.spans",
                                               "condition": "if still so when revision %s runs (it is now)" % REV2_ID}]
    # what plan said is what the upgrade does: the baseline runs, revision 2 refuses with that line
    upgrade = run_cli("upgrade", url=db_url)
    assert upgrade.code == 8 and "triggers: spans_audit" in upgrade.err, upgrade


def test_plan_on_a_legacy_store_names_more_outliers_than_the_conversion_moves(db_url):
    """Both revisions pending: revision 2's own refusal cannot be asked yet (it reads start_time, which the
    baseline makes from start_ts), but plan counted the outliers: more than the conversion moves is named as
    a refusal, as the upgrade then refuses (plan said "refusals: none"; adversary pass 2, finding 2)."""
    from test_rev2_cutoff import REV2
    limit = REV2.MAX_OUTLIERS
    load_legacy(db_url, traces=5)
    sql(db_url, "insert into otel.spans (trace_id, span_id, name, service_name, start_ts) "
                "select 'late', 'late' || g, 'op', 'svc', 'infinity' from generate_series(1, %d) g" % (limit + 1))
    result = run_cli("plan", url=db_url)
    assert result.code == 5, result
    head = text_before_first_revision(result.out)
    assert "revision %s, otel.spans: refuses (if still so when it runs; it is now); listed below" % REV2_ID \
        in head, head
    rev2 = result.out.split("\nrevision %s" % REV2_ID, 1)[1]
    assert "REFUSE: %d span(s) in otel.spans are stamped at or after the cutoff" % (limit + 1) in rev2, rev2
    outliers = result.out.split("\noutliers: ", 1)[1].splitlines()[0]  # no promise to keep what it refuses
    assert "the conversion keeps them" not in outliers and "refuses" in outliers, outliers
    upgrade = run_cli("upgrade", url=db_url)
    assert upgrade.code == 8 and "more than %d rows stamped at or after the cutoff" % limit in upgrade.err, upgrade


def test_plan_says_a_later_revisions_refusals_are_asked_again_when_it_runs(db_url):
    """No refusal holds now: plan does not promise none for a revision whose refusals are asked on the
    catalog the revisions before it leave (adversary pass 2, finding 3)."""
    load_legacy(db_url, traces=5)
    head = text_before_first_revision(run_cli("plan", url=db_url).out)
    refusals = head.split("  refusals (", 1)[1]
    assert "none now; revision %s's are asked again when it runs, on the catalog the revisions before it " \
           "leave" % REV2_ID in refusals, head


def test_plan_says_a_table_the_plan_creates_is_created_by_it(db_url):
    result = run_cli("plan", url=db_url)
    assert result.code == 5
    assert "created by this plan" in result.out and "not estimated" not in result.out, result.out
    assert result.err.splitlines() == ["otelmig: plan: " + PENDING_LINE]
    statements = run_cli("plan", "--format", "json", url=db_url).json()["pending"][0]["statements"]
    created = [s for s in statements if s.get("table") == "otel.spans" and "rows_estimate" in s]
    assert created and all(s["created_by_plan"] for s in created)


def test_plan_at_head_says_nothing_on_stderr(db_url):
    assert run_cli("upgrade", url=db_url).code == 0
    assert run_cli("plan", url=db_url).err == ""
