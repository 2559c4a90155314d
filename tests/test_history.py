"""The run history (issue 21 part 1): {schema}.otelmig_runs on a real server.

One row per run of upgrade, downgrade/rollback, stamp and maintain, written on
the migration lock's connection (never the migration's): a success, a refusal (exit 8), a failure from the
server (the lock budget, exit 9), SIGTERM, SIGKILL found by the next run, a
--sql script applied by psql, plain alembic; read by `log` and `verify`; kept
by `downgrade base`; never holding a password; never created by a refused run.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from conftest import REPO, catalog_snapshot, connect, load_legacy, run_cli, run_pyz, sql
from helpers import (BASELINE, DEADLINE_SECONDS, PSQL_SCRIPT_ERROR, error_line, one_line, psql_file,
                     upgrade_blocked_on_spans, wait_for, write_sql)
from otelmig import schema as contract
from otelmig._version import __version__
from otelmig.revisions import HEAD_REVISION, KNOWN_REVISIONS

# Where a `rollback` from the head lands, whichever revision is the head.
BELOW_HEAD = KNOWN_REVISIONS[-2]
VENV_BIN = os.path.dirname(os.path.abspath(sys.executable))  # the venv's alembic
RUNS = "otel.otelmig_runs"
COLUMNS = [c.name for c in contract.RUNS.columns]


def runs(url, schema="otel"):
    """Every row, oldest first, as dicts (times and LSNs as text)."""
    if sql(url, "select to_regclass(%s)", ("%s.otelmig_runs" % schema,)) == [[None]]:
        return None
    rows = sql(url, "select %s from %s.otelmig_runs order by started_at, run_id"
                    % (", ".join("%s::text" % c if c in ("started_at", "ended_at", "start_lsn", "commit_lsn",
                                                          "arguments") else c for c in COLUMNS), schema))
    return [dict(zip(COLUMNS, row)) for row in rows]


def whole_table(url):
    """The history as text, every column of every row: what no password may be in."""
    return sql(url, "select coalesce(string_agg(t::text, E'\\n'), '') from %s t" % RUNS)[0][0]


def test_a_success_has_its_row_from_the_pyz(pyz, db_url, tmp_path):
    result = run_pyz(pyz, "upgrade", url=db_url, env={"SHIV_ROOT": str(tmp_path)})
    assert result.code == 0, result.err
    [row] = runs(db_url)
    assert row["outcome"] == "ok" and row["exit_code"] == 0 and row["command"] == "upgrade", row
    assert json.loads(row["arguments"]) == ["upgrade"] and row["via"] == "otelmig"
    assert row["from_revision"] is None and row["to_revision"] == HEAD_REVISION
    assert row["sqlstate"] is None and row["message"] is None
    assert len(row["run_id"]) == 32 and len(row["span_id"]) == 16
    assert row["started_at"] < row["ended_at"]
    assert row["lock_waits"] == 0 and row["retries"] == 0 and row["lock_wait_seconds"] == 0
    user = sql(db_url, "select current_user")[0][0]
    assert row["db_current_user"] == user and row["db_session_user"] == user
    assert row["client_addr"] == "127.0.0.1" and row["application_name"] == "otelmig"
    assert row["os_user"] and row["os_host"] and row["otelmig_version"] == __version__
    assert row["pyz_sha256"] == hashlib.sha256(pyz.read_bytes()).hexdigest()
    # the WAL: where the run started, where it ended once it had committed, and how much lies between
    assert sql(db_url, "select %s::pg_lsn < %s::pg_lsn", (row["start_lsn"], row["commit_lsn"])) == [[True]]
    assert row["wal_bytes"] == sql(db_url, "select pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)::bigint",
                                   (row["commit_lsn"], row["start_lsn"]))[0][0] > 0
    # the server's clock: both times lie within what the server saw
    assert sql(db_url, "select %s::timestamptz <= now() and %s::timestamptz <= now()",
               (row["started_at"], row["ended_at"])) == [[True]]
    assert run_pyz(pyz, "upgrade", url=db_url, env={"SHIV_ROOT": str(tmp_path)}).code == 0  # the digest kept
    assert run_cli("upgrade", url=db_url).code == 0  # run in-process: no pyz, no sha
    assert [r["pyz_sha256"] for r in runs(db_url)] == [row["pyz_sha256"]] * 2 + [None]


def test_read_only_commands_write_nothing(db_url):
    assert run_cli("upgrade", url=db_url).code == 0
    before = whole_table(db_url)
    for args in (["check"], ["verify"], ["plan"], ["current"], ["history"], ["log"], ["heads"],
                 ["maintain", "--dry-run"], ["upgrade", "--sql"]):
        assert run_cli(*args, url=db_url).code == 0, args
    assert whole_table(db_url) == before


def test_stamp_maintain_and_rollback_each_have_a_row(db_url):
    assert run_cli("upgrade", url=db_url).code == 0
    assert run_cli("maintain", "--ahead", "2", url=db_url).code == 0
    assert run_cli("rollback", url=db_url).code == 0
    assert run_cli("stamp", "head", url=db_url).code == 0
    rows = runs(db_url)
    assert [(r["command"], r["outcome"], r["from_revision"], r["to_revision"]) for r in rows] == [
        ("upgrade", "ok", None, HEAD_REVISION), ("maintain", "ok", HEAD_REVISION, HEAD_REVISION),
        ("rollback", "ok", HEAD_REVISION, BELOW_HEAD), ("stamp", "ok", BELOW_HEAD, HEAD_REVISION)]


def test_a_refusal_is_recorded_with_exit_8(db_url):
    load_legacy(db_url, traces=10)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    sql(db_url, "update otel.spans set status_message = 'kept' where id <= 3")
    refused = run_cli("rollback", url=db_url)
    assert refused.code == 8 and one_line(refused.err), refused
    row = runs(db_url)[-1]
    assert (row["command"], row["outcome"], row["exit_code"]) == ("rollback", "refused", 8)
    assert row["from_revision"] == row["to_revision"] == BASELINE
    assert "3 rows in otel.spans.status_message" in row["message"] and row["ended_at"]


def test_a_lock_budget_failure_from_the_server_is_recorded_with_exit_9(db_url):
    load_legacy(db_url, traces=20)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    holder = connect(db_url, autocommit=False)
    holder.cursor().execute("lock table otel.spans in access share mode")  # the test holds a lock on otel.spans
    release = threading.Timer(DEADLINE_SECONDS, holder.rollback)  # a safety net: never reached by a 1.2 s budget
    release.start()
    try:
        result = run_cli("upgrade", "--lock-timeout", "0.2", url=db_url)
    finally:
        release.cancel()
        holder.rollback()
        holder.close()
    assert result.code == 9, result
    row = runs(db_url)[-1]
    assert (row["outcome"], row["exit_code"], row["sqlstate"]) == ("failed", 9, "55P03"), row
    assert row["lock_waits"] >= 2 and row["retries"] >= 1 and row["lock_wait_seconds"] > 0.3, row
    assert row["message"] == " ".join(error_line(result.err)[len("otelmig: "):].split())
    assert row["from_revision"] == row["to_revision"] == BASELINE


def test_sigterm_is_recorded_as_interrupted(db_url):
    load_legacy(db_url, traces=20)
    with upgrade_blocked_on_spans(db_url) as proc:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(DEADLINE_SECONDS)
        err = proc.stderr.read()
    assert code == 143, err
    assert one_line(err), err  # the history adds no line
    [row] = runs(db_url)
    assert (row["outcome"], row["exit_code"]) == ("interrupted", 143) and "SIGTERM" in row["message"]
    assert row["ended_at"] and row["to_revision"] is None


def test_sigkill_leaves_the_row_open_and_the_next_run_marks_it_unfinished(db_url):
    load_legacy(db_url, traces=20)
    with upgrade_blocked_on_spans(db_url) as proc:
        wait_for(lambda: runs(db_url), "the killed run's row")
        assert runs(db_url)[0]["outcome"] == "running"
        # while it lives, log shows it running (its advisory lock is held)
        assert run_cli("log", "--format", "json", url=db_url).json()["runs"][0]["outcome"] == "running"
        proc.kill()
        proc.wait(DEADLINE_SECONDS)
    killed = runs(db_url)[0]
    # its connection's lock goes with the process: log reads it unfinished at once, writing nothing
    wait_for(lambda: run_cli("log", "--format", "json", url=db_url).json()["runs"][0]["outcome"] == "unfinished",
             "log to read the killed run as unfinished")
    assert runs(db_url)[0]["outcome"] == "running"
    assert run_cli("upgrade", url=db_url).code == 0
    first, second = runs(db_url)
    assert first["run_id"] == killed["run_id"] and first["outcome"] == "unfinished" and first["exit_code"] is None
    assert first["message"].endswith("found by run %s" % second["run_id"]) and "SIGKILL" in first["message"]
    assert second["outcome"] == "ok"
    # verify's unfinished_run names a stopped revision's objects, not the history: the store is whole
    payload = run_cli("verify", "--format", "json", url=db_url).json()
    assert payload["exit_code"] == 0 and "unfinished_run" not in payload, payload
    assert payload["last_run"]["run_id"] == second["run_id"]


def test_a_second_run_waiting_for_the_lock_does_not_mark_a_live_run(db_url):
    load_legacy(db_url, traces=20)
    with upgrade_blocked_on_spans(db_url) as proc:
        wait_for(lambda: runs(db_url), "the first run's row")
        second = run_cli("upgrade", url=db_url, env={"OTELMIG_LOCK_WAIT": "0.5"})
        assert second.code == 9
        assert [r["outcome"] for r in runs(db_url)] == ["running"]  # alive: not marked, and the second never began
    assert proc.wait(DEADLINE_SECONDS) == 0
    assert [r["outcome"] for r in runs(db_url)] == ["ok"]


def test_sql_script_applied_by_psql_is_recorded(tmp_path, db_url):
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    script = write_sql(tmp_path, "upgrade", "--sql")
    applied = psql_file(db_url, script)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout == "", applied.stdout  # psql prints nothing of the history
    online, scripted = runs(db_url)
    assert (scripted["via"], scripted["command"], scripted["outcome"], scripted["exit_code"]) == \
        ("psql", "upgrade", "ok", 0)
    assert (scripted["from_revision"], scripted["to_revision"]) == (BASELINE, HEAD_REVISION)
    assert scripted["application_name"] == "psql" and json.loads(scripted["arguments"]) == ["upgrade", "head", "--sql"]
    assert scripted["commit_lsn"] and scripted["ended_at"] > scripted["started_at"]
    # applied again (a rerun does only what is left): a row of its own
    assert psql_file(db_url, script).returncode == 0
    assert [r["via"] for r in runs(db_url)] == ["otelmig", "psql", "psql"]


def test_sql_script_stopped_by_an_error_is_found_unfinished(tmp_path, db_url):
    load_legacy(db_url, traces=10)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    sql(db_url, "update otel.spans set status_message = 'kept' where id <= 2")
    stopped = psql_file(db_url, write_sql(tmp_path, "downgrade", "base", "--sql"))
    assert stopped.returncode == PSQL_SCRIPT_ERROR and "2 rows in otel.spans.status_message" in stopped.stderr
    script_row = runs(db_url)[-1]
    assert (script_row["via"], script_row["outcome"]) == ("psql", "running")  # psql stopped before its end
    logged = run_cli("log", "--format", "json", url=db_url).json()["runs"][0]
    assert logged["run_id"] == script_row["run_id"] and logged["outcome"] == "unfinished"
    assert run_cli("upgrade", url=db_url).code == 0
    assert [r["outcome"] for r in runs(db_url)] == ["ok", "unfinished", "ok"]


def test_sql_script_on_an_empty_database_creates_the_history_at_its_end(tmp_path, db_url):
    applied = psql_file(db_url, write_sql(tmp_path, "upgrade", "--sql"))
    assert applied.returncode == 0, applied.stderr
    [row] = runs(db_url)
    assert (row["via"], row["outcome"], row["from_revision"], row["to_revision"]) == ("psql", "ok", None, HEAD_REVISION)
    assert run_cli("verify", url=db_url).code == 0  # the history is otelmig's own table, not an extra


def test_plain_alembic_is_recorded_and_alembic_current_is_not(db_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES", "OTEL"))}
    env.update(POSTGRES_URL=db_url, PATH=VENV_BIN + os.pathsep + env.get("PATH", ""))
    done = subprocess.run(["alembic", "upgrade", "head"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert subprocess.run(["alembic", "current"], cwd=REPO, env=env, capture_output=True, timeout=600).returncode == 0
    [row] = runs(db_url)
    assert (row["via"], row["command"], row["outcome"], row["exit_code"]) == ("alembic", "upgrade", "ok", 0)
    assert json.loads(row["arguments"]) == ["upgrade", "head"] and row["to_revision"] == HEAD_REVISION
    # a refusal on the authors' path too: the data-loss guard of `alembic downgrade`
    sql(db_url, "insert into otel.traces (trace_id, service_name, start_time, environment) "
                "values ('t', 's', now(), 'prod')")
    sql(db_url, "update otel.traces set resource_attributes = '{\"k\": 1}'")
    refused = subprocess.run(["alembic", "downgrade", "base"], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=600)
    assert refused.returncode != 0 and "FAILED" in refused.stdout, refused
    last = runs(db_url)[-1]
    assert (last["via"], last["command"], last["outcome"], last["exit_code"]) == ("alembic", "downgrade", "refused", 8)
    # plain alembic checks no path ahead: revision 2 was reverted before the baseline refused
    assert (last["from_revision"], last["to_revision"]) == (HEAD_REVISION, BASELINE)
    assert "--allow-data-loss" in last["message"]


@pytest.fixture
def sentinel_url(server, db_url):
    """db_url as a role whose password is a sentinel that must appear in no row."""
    password = "Sentinel-pw-%s" % os.urandom(4).hex()
    role = "hist_%s" % os.urandom(4).hex()
    sql(db_url, "create role %s login password '%s'" % (role, password))
    sql(db_url, "grant create on database %s to %s" % (db_url.rsplit("/", 1)[1], role))
    yield server.url(db_url.rsplit("/", 1)[1], user=role, password=password), password
    sql(db_url, "drop owned by %s" % role)


def test_no_password_in_any_row(sentinel_url, db_url):
    url, password = sentinel_url
    assert run_cli("upgrade", BASELINE, "--url", url).code == 0  # the URL, password and all, on the command line
    holder = connect(db_url, autocommit=False)
    holder.cursor().execute("lock table otel.spans in access share mode")
    try:
        assert run_cli("upgrade", "--lock-timeout", "0.1", "--url", url).code == 9
    finally:
        holder.rollback()
        holder.close()
    assert run_cli("upgrade", url=url, env={"PGPASSWORD": password}).code == 0
    assert run_cli("rollback", "--url", url + "&sslmode=disable" if "?" in url else url + "?sslmode=disable").code == 0
    rows = runs(db_url)
    assert [r["outcome"] for r in rows] == ["ok", "failed", "ok", "ok"]
    assert any("--url" in r["arguments"] for r in rows)
    table = whole_table(db_url)
    assert password not in table and "***" in table
    logged = run_cli("log", "--format", "json", url=url)
    assert logged.code == 0 and password not in logged.out and len(logged.json()["runs"]) == 4


def test_rollback_to_base_keeps_the_history(db_url):
    load_legacy(db_url, traces=10)
    before = catalog_snapshot(db_url)
    assert run_cli("upgrade", url=db_url).code == 0
    assert run_cli("downgrade", "base", url=db_url).code == 0
    assert [r["command"] for r in runs(db_url)] == ["upgrade", "downgrade"]
    after = catalog_snapshot(db_url)
    # what the baseline found is back; the history stays beside it
    ours = ("otelmig_runs", "alembic_version")  # the empty version table stays too, as it always did
    assert {c for c in after["columns"] if not c[0].startswith(ours)} == set(before["columns"])
    assert run_cli("upgrade", url=db_url).code == 0 and len(runs(db_url)) == 3


def test_a_rerun_of_downgrade_base_at_base_is_recorded_ok(db_url):
    """`downgrade base` at base exits 0 (it undoes only what an interrupted upgrade of the
    baseline left): a run like any other, from no revision to none."""
    load_legacy(db_url, traces=10)
    assert run_cli("upgrade", url=db_url).code == 0
    assert run_cli("downgrade", "base", url=db_url).code == 0
    again = run_cli("downgrade", "base", url=db_url)
    assert again.code == 0, again
    *_, last = runs(db_url)
    assert (last["command"], last["outcome"], last["exit_code"]) == ("downgrade", "ok", 0)
    assert (last["from_revision"], last["to_revision"]) == (None, None) and last["ended_at"]
    assert [r["command"] for r in runs(db_url)] == ["upgrade", "downgrade", "downgrade"]


def test_a_refused_run_never_creates_the_history(db_url):
    load_legacy(db_url, traces=10)
    sql(db_url, "alter table otel.spans add column start_time timestamptz")  # both start_ts and start_time
    before = catalog_snapshot(db_url)
    result = run_cli("upgrade", url=db_url)
    assert result.code == 8 and one_line(result.err), result
    assert runs(db_url) is None and catalog_snapshot(db_url) == before


def test_a_run_that_stops_before_its_first_change_leaves_no_history(db_url):
    assert run_cli("upgrade", url=db_url).code == 0
    sql(db_url, "drop table otel.otelmig_runs")  # the one command that removes it (docs/history.md)
    sql(db_url, "update otel.alembic_version set version_num = 'f00dfeedbeef'")  # a newer otelmig's revision
    assert run_cli("upgrade", url=db_url).code == 6
    assert runs(db_url) is None


def test_a_read_only_server_takes_no_row_and_the_refusal_stays_one_line(server, db_url):
    assert run_cli("upgrade", url=db_url).code == 0
    before = whole_table(db_url)
    name = db_url.rsplit("/", 1)[1]
    sql(server.admin_url, "alter database %s set default_transaction_read_only = on" % name)
    result = run_cli("upgrade", url=db_url)
    assert result.code == 8 and one_line(result.err) and "read-only" in result.err, result
    sql(server.admin_url, "alter database %s reset default_transaction_read_only" % name)
    assert whole_table(db_url) == before


def test_log_prints_newest_first_with_a_limit(db_url):
    assert run_cli("log", url=db_url).out.startswith("no run history in schema otel")
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    assert run_cli("upgrade", url=db_url).code == 0
    assert run_cli("rollback", url=db_url).code == 0
    payload = run_cli("log", "--format", "json", url=db_url).json()
    assert [r["command"] for r in payload["runs"]] == ["rollback", "upgrade", "upgrade"]
    assert payload["runs"][0]["seconds"] > 0 and payload["exit_code"] == 0
    limited = run_cli("log", "--limit", "2", url=db_url)
    lines = limited.out.splitlines()
    assert limited.code == 0 and len(lines) == 2, limited.out
    assert " rollback ok (exit 0)" in lines[0] and " upgrade ok (exit 0)" in lines[1]
    assert "%s -> %s" % (HEAD_REVISION, BELOW_HEAD) in lines[0]
    bad = run_cli("log", "--limit", "many", url=db_url)
    assert bad.code == 2 and one_line(bad.err) and "--limit" in bad.err


def test_verify_reports_the_last_run(db_url):
    assert run_cli("upgrade", url=db_url).code == 0
    assert run_cli("maintain", url=db_url).code == 0
    payload = run_cli("verify", "--format", "json", url=db_url).json()
    assert payload["ok"] and payload["last_run"]["command"] == "maintain"
    assert payload["last_run"]["outcome"] == "ok"
    assert "last run: " in run_cli("verify", url=db_url).out
    prometheus = run_cli("verify", "--format", "prometheus", url=db_url).out
    assert 'otelmig_last_run_exit_code{schema="otel"} 0' in prometheus


def test_schema_md_documents_the_history_as_declared():
    with open(os.path.join(REPO, "docs", "schema.md"), encoding="utf-8") as handle:
        text = handle.read()
    section = text.split("## {schema}.%s" % contract.RUNS_TABLE, 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in table[2:]]
    assert [r["column"] for r in rows] == [c.name for c in contract.RUNS.columns]
    words = {"timestamptz": contract.TIMESTAMPTZ}
    declared = {c.name: (c.type, c.nullable) for c in contract.RUNS.columns}
    assert {r["column"]: (words.get(r["type"], r["type"]), r["null"] == "null") for r in rows} == declared
