"""What an interrupted run leaves can never reject a write (issue 19, item 1).

The conversion of revision 2 is stopped at every statement, as operators stop
it: alive (SIGTERM, SIGINT, the lock budget's exit 9), where it must clean up
before it exits, and outright (SIGKILL), where the next upgrade, downgrade or
maintain must repair it before anything else. After each, inserts stamped now,
in three days and in thirty days must succeed: the clock moves on after an
interruption, and a leftover CHECK (start_time < cutoff) only starts rejecting
once its cutoff has passed. A rollback then returns exactly the layout the
upgrade found.
"""

import json
import os
import re
import uuid

import pytest

from conftest import catalog_snapshot, load_legacy, sql
from helpers import BASELINE, spawn, wait_for
from otelmig.ddl import AFTER_STATEMENT_ENV, CRASH_AFTER_ENV, HOOK_DIR_ENV

pytestmark = pytest.mark.db

DEADLINE = 120.0
OFFSETS = ("0", "3 days", "30 days")  # the clock moving on after the interruption


def layout(url, schema="otel") -> dict:
    """catalog_snapshot plus every constraint and relation: what 'the layout found' means here."""
    snapshot = catalog_snapshot(url, schema)
    # otelmig's bookkeeping, kept by a downgrade to base (the run history too: an audit trail outlives the revisions)
    own = ("alembic_version", "otelmig_objects", "otelmig_runs")
    snapshot["columns"] = [c for c in snapshot["columns"] if not c[0].startswith(own)]
    snapshot["indexes"] = [i for i in snapshot["indexes"] if not i[0].startswith(own)]
    snapshot["constraints"] = [tuple(r) for r in sql(url, """
        select conrelid::regclass::text, conname, pg_get_constraintdef(oid) from pg_constraint
        where connamespace = %s::regnamespace and conrelid::regclass::text !~ 'alembic_version|otelmig_objects|otelmig_runs'
        order by 1, 2""", (schema,))]
    snapshot["relations"] = [tuple(r) for r in sql(url, """
        select relname::text, relkind::text from pg_class where relnamespace = %s::regnamespace
        and relname::text not like 'otelmig_objects%%' and relname::text not like 'alembic_version%%'
        and relname::text not like 'otelmig_runs%%'
        order by 1""",
                                                   (schema,))]
    return snapshot


def time_column(url) -> str:
    return "start_time" if sql(url, "select count(*) from pg_attribute where attrelid = 'otel.spans'::regclass "
                                    "and attname = 'start_time' and not attisdropped")[0][0] else "start_ts"


def assert_writes_accepted(url, what: str) -> None:
    """A worker's inserts, stamped now and later: none may be rejected."""
    column = time_column(url)
    for offset in OFFSETS:
        trace = uuid.uuid4().hex
        stamp = "now() + interval '%s'" % offset
        try:
            sql(url, "insert into otel.traces (trace_id, service_name, %s) values (%%s, 'w', %s)"
                % (column, stamp), (trace,))
            sql(url, "insert into otel.spans (trace_id, span_id, name, service_name, %s) "
                     "values (%%s, 'abcdef0123456789', 'op', 'w', %s)" % (column, stamp), (trace,))
        except Exception as exc:  # the test's own message says which state rejected which write
            raise AssertionError("%s: an insert stamped now() + %s was rejected: %s" % (what, offset, exc))


def no_cutoff_check(url) -> bool:
    return sql(url, "select count(*) from pg_constraint where connamespace = 'otel'::regnamespace "
                    "and contype = 'c' and pg_get_constraintdef(oid) ~ 'start_(time|ts) <'")[0][0] == 0


@pytest.fixture(scope="module")
def baseline_template(server):
    """A legacy store with rows, adopted by the baseline (revision 2 pending), as a template database."""
    name = "lt_" + uuid.uuid4().hex[:10]
    sql(server.admin_url, "CREATE DATABASE %s" % name)
    url = server.url(name)
    load_legacy(url, traces=300)
    before = layout(url)
    proc = spawn(url, "upgrade", BASELINE)
    out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    yield name, before
    sql(server.admin_url, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)


def run(url, *args, env=None, timeout=DEADLINE):
    proc = spawn(url, *args, env=env)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def statements_of_upgrade(url) -> list:
    """The statements `upgrade -v` runs (two-space indented lines of its log)."""
    code, _, err = run(url, "upgrade", "-v")
    assert code == 0, err
    return [line[2:] for line in err.splitlines() if line.startswith("  ") and not line.startswith("      ")]


def first_statement_with(statements, pattern: str) -> int:
    """1-based index (the hooks count from 1) of the first statement matching pattern."""
    return next(i for i, s in enumerate(statements, 1) if re.search(pattern, s))


def test_a_run_stopped_alive_at_any_statement_leaves_nothing_that_rejects_a_write(baseline_template, copy_of):
    template, _ = baseline_template
    total = len(statements_of_upgrade(copy_of(template)))
    assert total > 3
    for k in range(1, total + 1):
        url = copy_of(template)
        code, _, err = run(url, "upgrade", env={AFTER_STATEMENT_ENV: "%d:TERM" % k})
        assert code in (143, 0), "stopped after statement %d: exit %d: %s" % (k, code, err)
        assert "Traceback" not in err
        assert_writes_accepted(url, "SIGTERM after statement %d of %d" % (k, total))
        code, _, err = run(url, "upgrade")
        assert code == 0, "rerun after SIGTERM at %d: %s" % (k, err)


def test_sigint_after_the_cutoff_removes_it_before_exiting(baseline_template, copy_of):
    template, _ = baseline_template
    k = first_statement_with(statements_of_upgrade(copy_of(template)), "spans_history_range")
    url = copy_of(template)
    code, _, err = run(url, "upgrade", env={AFTER_STATEMENT_ENV: "%d:INT" % k})
    assert code == 130, err
    assert no_cutoff_check(url), layout(url)["constraints"]
    assert_writes_accepted(url, "SIGINT after the cutoff")


def test_lock_budget_exhausted_after_the_cutoff_removes_it_before_exiting(baseline_template, copy_of, tmp_path):
    """Exit 9: the switch waits for a reader that never lets go; the run gives up and cleans up."""
    template, _ = baseline_template
    k = first_statement_with(statements_of_upgrade(copy_of(template)), "spans_history_range")
    url = copy_of(template)
    proc = spawn(url, "upgrade", "--lock-timeout", "0.3",
                 env={AFTER_STATEMENT_ENV: "%d:PAUSE" % k, HOOK_DIR_ENV: str(tmp_path)})
    wait_for(lambda: os.path.exists(tmp_path / "paused"), "the upgrade to pause after the cutoff", DEADLINE)
    reader = __import__("conftest").connect(url, autocommit=False)
    try:
        reader.cursor().execute("select count(*) from otel.spans")  # ACCESS SHARE until rollback
        (tmp_path / "resume").touch()
        out, err = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == 9, err
        # The clean-up itself needs the lock the reader holds; released here, it must have
        # retried, or said it could not. Either way nothing may reject a write now or later.
    finally:
        reader.rollback()
        reader.close()
    if not no_cutoff_check(url):
        assert "the next upgrade, downgrade or maintain removes it first" in err, err
        code, _, err2 = run(url, "maintain")  # refuses (not at the head), but repairs first
        assert no_cutoff_check(url), err2
    assert_writes_accepted(url, "exit 9 after the cutoff")


def test_after_sigkill_the_next_command_repairs_first_then_rollback_returns_the_layout_found(baseline_template,
                                                                                              copy_of):
    template, legacy_layout = baseline_template
    statements = statements_of_upgrade(copy_of(template))
    for k in range(1, len(statements) + 1):
        url = copy_of(template)
        code, _, err = run(url, "upgrade", env={CRASH_AFTER_ENV: str(k)})
        if code == 0:
            continue
        assert code == -9, err
        code, _, err = run(url, "maintain")  # not at the head: refused, but what could reject a write is gone
        assert code != 0 and "Traceback" not in err, err
        assert_writes_accepted(url, "maintain after SIGKILL at statement %d" % k)
        code, _, err = run(url, "downgrade", "base")
        assert code == 0, "downgrade base after SIGKILL at %d: %s" % (k, err)
        got = layout(url)
        for part in ("columns", "indexes", "constraints", "relations"):
            assert got[part] == legacy_layout[part], "SIGKILL at statement %d (%s), then downgrade base: %s" % (
                k, statements[k - 1][:80], part)
        assert_writes_accepted(url, "the legacy layout after downgrade base (SIGKILL at %d)" % k)


def test_a_conversion_killed_at_any_statement_rejects_nothing_before_any_rerun(baseline_template, copy_of):
    """SIGKILL leaves no chance to clean up and nobody may run otelmig for
    days: what each state holds (the cutoff CHECK, the hold trigger, the
    holding child) must accept writes stamped now, in 3 and in 30 days with
    no rerun at all, while verify names it; then the rerun finishes."""
    template, _ = baseline_template
    statements = statements_of_upgrade(copy_of(template))
    seen_unfinished = 0
    for k in range(1, len(statements) + 1):
        url = copy_of(template)
        code, _, err = run(url, "upgrade", env={CRASH_AFTER_ENV: str(k)})
        if code == 0:
            continue
        assert code == -9, err
        assert_writes_accepted(url, "no rerun after SIGKILL at statement %d (%s)" % (k, statements[k - 1][:60]))
        code, out, _ = run(url, "verify", "--format", "json")
        kinds = [p["kind"] for p in json.loads(out)["problems"]]
        if not no_cutoff_check(url):
            assert "unfinished_run" in kinds, (k, kinds)
            seen_unfinished += 1
        code, _, err = run(url, "upgrade")
        assert code == 0, "rerun after SIGKILL at statement %d: %s" % (k, err)
        after = [p["kind"] for p in json.loads(run(url, "verify", "--format", "json")[1])["problems"]]
        assert no_cutoff_check(url) and "unfinished_run" not in after, (k, after)
    assert seen_unfinished > 0, "no statement left the cutoff CHECK behind: the test tried nothing"


def test_downgrade_across_revisions_checks_the_whole_path_before_the_first_change(baseline_template, copy_of):
    """Issue 22, item 3: `downgrade base` from the head, with data the baseline's
    downgrade would drop, is refused before revision 2 is reverted: exit 8,
    nothing changed, the refusing revision named."""
    template, _ = baseline_template
    url = copy_of(template)
    code, _, err = run(url, "upgrade")
    assert code == 0, err
    sql(url, "update otel.spans set status_message = 'kept' where id <= 3")
    before = layout(url), sql(url, "select version_num from otel.alembic_version")
    code, _, err = run(url, "downgrade", "base")
    assert code == 8, err
    assert "163d8f446eb9" in err and "status_message" in err and "nothing was changed" in err, err
    assert (layout(url), sql(url, "select version_num from otel.alembic_version")) == before


def test_a_downgrade_that_stops_part_way_names_the_revision_it_left(baseline_template, copy_of, tmp_path):
    """Issue 22, item 3: a later step fails anyway (here the baseline's, on a lock
    held by a reader of traces): the line names where the database is now."""
    template, _ = baseline_template
    probe = copy_of(template)
    assert run(probe, "upgrade", "826630e38563")[0] == 0  # revision 2, whichever is the head
    code, _, err = run(probe, "downgrade", "base", "-v")
    assert code == 0, err
    lines = err.splitlines()
    reverted = next(i for i, line in enumerate(lines) if line.startswith("reverted 826630e38563"))
    k = len([line for line in lines[:reverted] if line.startswith("  ") and not line.startswith("      ")])

    url = copy_of(template)
    assert run(url, "upgrade", "826630e38563")[0] == 0
    proc = spawn(url, "downgrade", "base", "--lock-timeout", "0.2",
                 env={AFTER_STATEMENT_ENV: "%d:PAUSE" % k, HOOK_DIR_ENV: str(tmp_path)})
    wait_for(lambda: os.path.exists(tmp_path / "paused"), "the downgrade to pause after revision 2", DEADLINE)
    reader = __import__("conftest").connect(url, autocommit=False)
    try:
        reader.cursor().execute("select count(*) from otel.traces")
        (tmp_path / "resume").touch()
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        reader.rollback()
        reader.close()
    assert proc.returncode == 9, err
    assert "now at 163d8f446eb9 (was 826630e38563)" in err, err
