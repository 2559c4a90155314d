"""The revision test kit (issue 12): every revision in migrations/versions/
gets these checks by existing, on a legacy store with rows.

- upgrade from base through each revision in turn (the version row at each),
  every row kept; downgrade back through each, to the layout and rows found;
- up/down/up leaves catalog, version row and rows identical;
- the offline script (`upgrade --sql`, applied with psql) gives what the
  online run gives;
- `plan --format json` lists exactly the statements the online run executes;
- a crash (SIGKILL) after every statement the revision executes, upgrading
  and downgrading, then a plain rerun converges on what a run without the
  crash gives, every row kept.

The checks are plain functions over a Kit (a repository root whose
migrations/ the runs read, and the server), so the last tests run them on a
copy of the repository with a broken fixture revision on top of the head
(tests/fixtures/revision_kit/) and show that they fail it.

otelmig runs as a real process (`python -m otelmig` in the root), so the
crash hook's SIGKILL (ddl.CRASH_AFTER_ENV, test-only) kills that process and
not pytest. Each run gets its own database, copied from a prepared template
(CREATE DATABASE ... TEMPLATE), which is fast.
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from typing import Dict, List, NamedTuple, Optional

import pytest

from conftest import REPO, catalog_snapshot, connect, load_legacy, sql
from helpers import psql_file
from otelmig import offline, revisions
from otelmig.ddl import CONCURRENTLY, CRASH_AFTER_ENV, Concurrent, Guard, SchemaSQL, OnlineRunner, Refusal, RowCheck, Statement
from otelmig.errors import RefusedError
from otelmig.schema import OWN_TABLES
from otelmig.settings import Settings, resolve_conninfo

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "revision_kit")
TRACES = 200           # a few hundred traces, five spans each: indexes are built CONCURRENTLY
DEADLINE = 60.0        # seconds: generous, for a loaded 2-core machine
SCHEMA = "otel"
# Defaults whose value depends on when the row was written: a column with one
# that a run adds differs between two runs, so rows are compared without it.
STAMPED_DEFAULT = re.compile(r"now\(\)|current_timestamp|clock_timestamp|statement_timestamp|"
                             r"transaction_timestamp|random\(|gen_random_uuid", re.I)


class KitFailure(AssertionError):
    """A revision failed one of the kit's checks."""


class Kit(NamedTuple):
    root: str        # a repository root: `python -m otelmig` runs there and reads root/migrations
    server: object   # conftest.Server
    databases: list  # created here, dropped at the end
    templates: dict  # revision (None: base) -> template database name
    found: dict      # "columns": (table, column) of the legacy store as found


def new_kit(root: str, server) -> Kit:
    return Kit(root, server, [], {}, {})


# --- the revisions --------------------------------------------------------------

def versions_dir(root: str) -> str:
    return os.path.join(root, "migrations", "versions")


def revision_chain(root: str) -> List[tuple]:
    """(revision, the revision below it or None for base), oldest first, as
    otelmig.revisions reads the scripts (the same source as `heads`)."""
    _, known = revisions.load(versions_dir(root))
    parents = revisions.read_scripts(versions_dir(root))
    chain = []
    for revision in known:
        below = parents[revision]
        if len(below) > 1:
            # Not skipped silently: a merge revision makes the kit fail until it learns them.
            raise KitFailure("revision %s merges %s: the revision kit handles a linear history only; "
                             "teach tests/test_revision_kit.py the merge" % (revision, ", ".join(below)))
        chain.append((revision, below[0] if below else None))
    return chain


def below_of(kit: Kit, revision: str) -> Optional[str]:
    return dict(revision_chain(kit.root))[revision]


def head_of(kit: Kit) -> str:
    return revisions.load(versions_dir(kit.root))[0]


# --- running otelmig ------------------------------------------------------------

def otelmig(kit: Kit, url: Optional[str], *args, crash_after: Optional[int] = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES", "OTEL"))}
    if url is not None:
        env["POSTGRES_URL"] = url
    if crash_after is not None:
        env[CRASH_AFTER_ENV] = str(crash_after)
    return subprocess.run([sys.executable, "-m", "otelmig", *args], cwd=kit.root, env=env,
                          capture_output=True, text=True, timeout=600)


def must(proc: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if proc.returncode != 0:
        raise KitFailure("%s: exit %d: %s" % (what, proc.returncode, (proc.stderr or proc.stdout).strip()))
    return proc


def upgrade(kit: Kit, url: str, target: str, *extra, **kwargs) -> subprocess.CompletedProcess:
    return otelmig(kit, url, "upgrade", target, *extra, **kwargs)


def downgrade(kit: Kit, url: str, target: Optional[str], *extra, **kwargs) -> subprocess.CompletedProcess:
    return otelmig(kit, url, "downgrade", target or "base", *extra, **kwargs)


def executed_statements(stderr: str) -> Dict[str, List[str]]:
    """The statements `-v` logged, by revision. The runner logs each statement
    as a line indented by two spaces, its further lines indented by six;
    each revision ends with an `applied REV` / `reverted REV` line."""
    by_revision, pending, current = {}, [], None
    for line in stderr.splitlines():
        if current is not None and line.startswith("      "):
            current.append(line[6:])
            continue
        if current is not None:
            pending.append("\n".join(current))
            current = None
        if re.match(r"^  \S", line):
            current = [line[2:]]
            continue
        done = re.match(r"^(?:applied|reverted) (\S+) ", line)
        if done:
            by_revision[done.group(1)], pending = pending, []
    if current is not None or pending:
        raise KitFailure("statements logged after the last revision finished: %r" % (pending + [current]))
    return by_revision


# --- databases ------------------------------------------------------------------

def new_database(kit: Kit, template: Optional[str] = None) -> str:
    name = "kit_" + uuid.uuid4().hex[:12]
    statement = "CREATE DATABASE %s" % name + (" TEMPLATE %s" % template if template else "")
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            sql(kit.server.admin_url, statement)
            break
        except Exception as exc:  # the template's last session may not have ended yet
            if "being accessed by other users" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    kit.databases.append(name)
    return kit.server.url(name)


def database_name(url: str) -> str:
    return resolve_conninfo(url, {}).database


def template_at(kit: Kit, revision: Optional[str]) -> str:
    """A template database: the legacy store with rows, upgraded to `revision` (None: as found)."""
    if revision not in kit.templates:
        if revision is None:
            url = new_database(kit)
            load_legacy(url, schema=SCHEMA, traces=TRACES)
        else:
            url = new_database(kit, template_at(kit, below_of(kit, revision)))
            must(upgrade(kit, url, revision), "preparing a store at %s" % revision)
        kit.templates[revision] = database_name(url)
    return kit.templates[revision]


def store_at(kit: Kit, revision: Optional[str]) -> str:
    """A fresh database: the legacy store with rows, at `revision`."""
    return new_database(kit, template_at(kit, revision))


# --- what is compared -------------------------------------------------------------

def version_rows(url: str):
    if sql(url, "select to_regclass(%s)", ("%s.alembic_version" % SCHEMA,)) == [[None]]:
        return []
    return [row[0] for row in sql(url, "select version_num from %s.alembic_version order by 1" % SCHEMA)]


def tables(url: str) -> List[str]:
    """The schema's tables (a partitioned table as a whole), not the version table."""
    return [row[0] for row in sql(url, """
        select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = %s and c.relkind in ('r', 'p') and not c.relispartition
          and c.relname <> 'alembic_version' order by 1""", (SCHEMA,))]


class State(NamedTuple):
    catalog: dict
    version: list
    rows: dict  # table -> sorted row texts (to_jsonb, stamped columns left out)


def stamped_columns(kit: Kit, catalog: dict) -> set:
    """(table, column) with a time- or random-valued default that the legacy
    store as found did not have (its own were filled when it was loaded)."""
    if "columns" not in kit.found:
        found = catalog_snapshot(kit.server.url(template_at(kit, None)), SCHEMA)["columns"]
        kit.found["columns"] = {(c[0], c[1]) for c in found}
    return {(c[0], c[1]) for c in catalog["columns"]
            if c[4] and STAMPED_DEFAULT.search(c[4]) and (c[0], c[1]) not in kit.found["columns"]}


VERSION_TABLE_OBJECTS = ("alembic_version", "alembic_version_pkc")


def without_version_table(catalog: dict) -> dict:
    """Alembic keeps its (then empty) version table after a downgrade to base:
    its rows are compared as `version`, the table itself is bookkeeping."""
    return {kind: [row for row in rows if row[0] not in VERSION_TABLE_OBJECTS] for kind, rows in catalog.items()}


def more_catalog(url: str) -> dict:
    """What conftest.catalog_snapshot leaves out: every relation with its kind, and the constraints."""
    relations = sql(url, """select c.relname, c.relkind::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
                            where n.nspname = %s order by 1""", (SCHEMA,))
    constraints = sql(url, """select c.relname, k.conname, pg_get_constraintdef(k.oid) from pg_constraint k
                              join pg_class c on c.oid = k.conrelid join pg_namespace n on n.oid = c.relnamespace
                              where n.nspname = %s order by 1, 2""", (SCHEMA,))
    return {"relations": [tuple(r) for r in relations], "constraints": [tuple(r) for r in constraints]}


def state(kit: Kit, url: str) -> State:
    """Catalog, version row and every row of every table. Columns a run added
    with a time-valued default (created_at, recorded_at) are left out of the
    rows: two runs fill them differently."""
    catalog = without_version_table(dict(catalog_snapshot(url, SCHEMA), **more_catalog(url)))
    skip = stamped_columns(kit, catalog)
    rows = {}
    for table in tables(url):
        dropped = [column for t, column in skip if t == table]
        rows[table] = sorted(r[0] for r in sql(url, "select (to_jsonb(t) - %%s::text[])::text from %s.%s t"
                                                    % (SCHEMA, table), (dropped,)))
    return State(catalog, version_rows(url), rows)


def assert_same(expected: State, actual: State, what: str) -> None:
    for field in State._fields:
        want, got = getattr(expected, field), getattr(actual, field)
        if want != got:
            raise KitFailure("%s: the %s differs: %s" % (what, field, _difference(want, got)))


def _difference(want, got) -> str:
    if isinstance(want, dict) and isinstance(got, dict):
        keys = sorted(set(want) | set(got), key=str)
        return "; ".join(_difference(want.get(k), got.get(k)) for k in keys if want.get(k) != got.get(k))
    if isinstance(want, list) and isinstance(got, list):
        missing = [x for x in want if x not in got][:3]
        extra = [x for x in got if x not in want][:3]
        return "expected but missing %r, unexpected %r (%d vs %d items)" % (missing, extra, len(want), len(got))
    return "expected %r, got %r" % (want, got)


NULL = "\x00null"  # NULL as a sortable value


def rows_before(url: str) -> Dict[str, dict]:
    """table -> its oid, {attnum: column} and every row (values as text, in attnum order)."""
    found = {}
    for table, info in _columns_by_position(url).items():
        info["rows"] = _row_values(url, table, [info["columns"][n] for n in sorted(info["columns"])])
        found[table] = info
    return found


def _columns_by_position(url: str) -> Dict[str, dict]:
    found = {}
    for table in tables(url):
        columns = sql(url, """select a.attnum, a.attname, c.oid from pg_attribute a join pg_class c on c.oid = a.attrelid
                              where c.oid = to_regclass(%s) and a.attnum > 0 and not a.attisdropped order by 1""",
                      ("%s.%s" % (SCHEMA, table),))
        found[table] = {"oid": columns[0][2], "columns": {attnum: name for attnum, name, _ in columns}}
    return found


def _row_values(url: str, table: str, columns: List[str]) -> list:
    if not columns:
        return []
    rows = sql(url, "select %s from %s.%s" % (", ".join('"%s"::text' % c for c in columns), SCHEMA, table))
    return [tuple(NULL if v is None else v for v in row) for row in rows]


def assert_rows_kept(before: Dict[str, dict], url: str, what: str) -> None:
    """Every row of `before` is still there: the columns that exist on both
    sides hold the same values. A rename or an added column keeps the other
    columns' attnum, so they are matched by attnum (by name in a table that
    was recreated)."""
    after = _columns_by_position(url)
    for table, old in before.items():
        if table not in after:
            raise KitFailure("%s: table %s.%s is gone" % (what, SCHEMA, table))
        new = after[table]
        if new["oid"] == old["oid"]:
            kept = sorted(n for n in old["columns"] if n in new["columns"])
            old_names, new_names = [old["columns"][n] for n in kept], [new["columns"][n] for n in kept]
        else:
            old_names = new_names = [c for c in old["columns"].values() if c in new["columns"].values()]
        order = [old["columns"][n] for n in sorted(old["columns"])]
        wanted = sorted(tuple(row[order.index(c)] for c in old_names) for row in old["rows"])
        found = sorted(_row_values(url, table, new_names))
        if table in OWN_TABLES and not set(wanted) - set(found):
            continue  # otelmig's own bookkeeping: a revision adds to it (the state check compares it whole)
        if len(found) != len(old["rows"]) or found != wanted:
            raise KitFailure("%s: rows of %s.%s changed: %s" % (what, SCHEMA, table, _difference(wanted, found)))


# --- the checks -------------------------------------------------------------------

def check_upgrade_walk(kit: Kit) -> None:
    """From base, upgrade to each revision in turn: its version row, every row kept; verify at the head."""
    url = store_at(kit, None)
    found = rows_before(url)
    for revision, _ in revision_chain(kit.root):
        must(upgrade(kit, url, revision), "upgrade to %s" % revision)
        if version_rows(url) != [revision]:
            raise KitFailure("upgrade to %s: the version row is %r" % (revision, version_rows(url)))
        current = json.loads(must(otelmig(kit, url, "current", "--format", "json"), "current").stdout)
        if current["database_revision"] != revision:
            raise KitFailure("upgrade to %s: `current` says %r" % (revision, current["database_revision"]))
        assert_rows_kept(found, url, "upgrade to %s" % revision)
    must(otelmig(kit, url, "verify"), "verify at the head")
    must(otelmig(kit, url, "check"), "check at the head")


def check_downgrade_walk(kit: Kit) -> None:
    """From the head, downgrade one revision at a time: each lands on the state
    an upgrade to the revision below left, back to the legacy store as found."""
    url = store_at(kit, head_of(kit))
    for revision, below in reversed(revision_chain(kit.root)):
        must(downgrade(kit, url, below), "downgrade of %s" % revision)
        expected_url = store_at(kit, below)
        assert_same(state(kit, expected_url), state(kit, url), "downgrade of %s" % revision)


def check_up_down_up(kit: Kit, revision: str) -> None:
    below = below_of(kit, revision)
    url = store_at(kit, below)
    start = state(kit, url)
    must(upgrade(kit, url, revision), "upgrade to %s" % revision)
    up = state(kit, url)
    must(downgrade(kit, url, below), "downgrade of %s" % revision)
    assert_same(start, state(kit, url), "downgrade of %s after its upgrade" % revision)
    must(upgrade(kit, url, revision), "second upgrade to %s" % revision)
    assert_same(up, state(kit, url), "upgrade, downgrade, upgrade of %s" % revision)


def check_offline_matches_online(kit: Kit, revision: str, tmp_dir: str) -> None:
    """`upgrade REV --sql` (written with no database) applied with psql gives
    the catalog, version row and rows of the online `upgrade REV`, from base
    and from the revision below."""
    script = must(otelmig(kit, "postgresql://nobody@127.0.0.1:1/none", "upgrade", revision, "--sql"),
                  "upgrade %s --sql" % revision).stdout
    path = os.path.join(tmp_dir, "upgrade-%s.sql" % revision)
    with open(path, "w") as handle:
        handle.write(script)
    for start in sorted({None, below_of(kit, revision)}, key=str):
        offline, online = store_at(kit, start), store_at(kit, start)
        applied = psql_file(offline, path)
        if applied.returncode != 0:
            raise KitFailure("upgrade %s --sql applied with psql from %s: %s"
                             % (revision, start or "base", applied.stderr.strip()))
        must(upgrade(kit, online, revision), "upgrade to %s" % revision)
        assert_same(state(kit, online), state(kit, offline),
                    "upgrade %s --sql from %s against the online run" % (revision, start or "base"))


def check_plan_matches_online(kit: Kit, revision: str) -> None:
    """`plan` on the store below the revision lists, for it, exactly the
    statements `upgrade -v` then executes, in order."""
    url = store_at(kit, below_of(kit, revision))
    plan = otelmig(kit, url, "plan", "--format", "json")
    if plan.returncode != 5:
        raise KitFailure("plan below %s: exit %d, expected 5 (pending): %s" % (revision, plan.returncode, plan.stderr))
    first = json.loads(plan.stdout)["pending"][0]
    if first["revision"] != revision:
        raise KitFailure("plan below %s lists %s first" % (revision, first["revision"]))
    refusals = [s["refuse"] for s in first["statements"] if s.get("refuse")]
    if refusals:
        raise KitFailure("plan below %s refuses: %s" % (revision, refusals))
    planned = [s["sql"] for s in first["statements"]]
    ran = executed_statements(must(upgrade(kit, url, revision, "-v"), "upgrade -v to %s" % revision).stderr)
    if ran.get(revision) != planned:
        raise KitFailure("plan below %s does not list what the upgrade ran: %s"
                         % (revision, _list_difference(planned, ran.get(revision) or [])))


def _list_difference(planned: list, ran: list) -> str:
    for number, (want, got) in enumerate(zip(planned, ran), 1):
        if want != got:
            return "statement %d: planned %r, ran %r" % (number, want, got)
    return "planned %d statements, ran %d (first extra: %r)" % (
        len(planned), len(ran), (planned[len(ran):] or ran[len(planned):])[0])


def check_crash_at_every_statement(kit: Kit, revision: str, direction: str) -> int:
    """SIGKILL right after each statement the revision executes (k = 1..n, n
    counted from a run without a crash), then a plain rerun: it converges on
    the state of the run without the crash, every row kept. Returns n."""
    below = below_of(kit, revision)
    start_at, target = (below, revision) if direction == "upgrade" else (revision, below)
    command = upgrade if direction == "upgrade" else downgrade
    reference = store_at(kit, start_at)
    found = rows_before(reference)
    ran = executed_statements(must(command(kit, reference, target, "-v"),
                                   "%s from %s" % (direction, start_at or "base")).stderr)
    count = len(ran.get(revision, []))
    if count == 0:
        raise KitFailure("%s of %s executed no statement on a store with rows: nothing to crash" % (direction, revision))
    expected = state(kit, reference)
    for k in range(1, count + 1):
        url = store_at(kit, start_at)
        crashed = command(kit, url, target, "-v", crash_after=k)
        if crashed.returncode != -signal.SIGKILL:
            raise KitFailure("%s of %s with %s=%d: expected to be killed, exit %d: %s"
                             % (direction, revision, CRASH_AFTER_ENV, k, crashed.returncode, crashed.stderr.strip()))
        logged = len(re.findall(r"^  \S", crashed.stderr, re.M))
        if logged != k:  # the hook counts what the runner executes, and kills right after statement k
            raise KitFailure("%s of %s with %s=%d: killed after %d statement(s)"
                             % (direction, revision, CRASH_AFTER_ENV, k, logged))
        what = "%s of %s killed after statement %d of %d (%s), then rerun" % (
            direction, revision, k, count, ran[revision][k - 1].split("\n")[0][:80])
        must(command(kit, url, target), what)
        assert_same(expected, state(kit, url), what)
        if direction == "upgrade":
            assert_rows_kept(found, url, what)
    if direction == "upgrade" and revision == head_of(kit):
        must(otelmig(kit, reference, "verify"), "verify after the upgrade to the head")
    return count


# --- the kit, over every revision in migrations/versions/ ---------------------------

REVISIONS = [revision for revision, _ in revision_chain(REPO)]


@pytest.fixture(scope="module")
def kit(server):
    made = new_kit(REPO, server)
    yield made
    drop_databases(made)


def drop_databases(kit: Kit) -> None:
    for name in reversed(kit.databases):
        sql(kit.server.admin_url, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)


def test_the_kit_covers_every_revision_script():
    """The parametrisation is the scripts' own list (a new revision file is picked up)."""
    assert REVISIONS == list(revisions.load(versions_dir(REPO))[1])
    assert REVISIONS and REVISIONS[-1] == revisions.HEAD_REVISION


def test_upgrade_walks_every_revision_from_base(kit):
    check_upgrade_walk(kit)


def test_downgrade_walks_every_revision_back_to_base(kit):
    check_downgrade_walk(kit)


@pytest.mark.parametrize("revision", REVISIONS)
def test_up_down_up_is_identical(kit, revision):
    check_up_down_up(kit, revision)


@pytest.mark.parametrize("revision", REVISIONS)
def test_offline_script_matches_online(kit, revision, tmp_path):
    check_offline_matches_online(kit, revision, str(tmp_path))


@pytest.mark.parametrize("revision", REVISIONS)
def test_plan_lists_the_statements_the_upgrade_runs(kit, revision):
    check_plan_matches_online(kit, revision)


@pytest.mark.parametrize("direction", ["upgrade", "downgrade"])
@pytest.mark.parametrize("revision", REVISIONS)
def test_crash_after_every_statement_then_rerun_converges(kit, revision, direction):
    assert check_crash_at_every_statement(kit, revision, direction) > 1


# --- the kit catches a broken revision -------------------------------------------------

def repository_with(tmp_path, fixture: str, revision: str) -> str:
    """A fresh copy of the repository with a fixture revision on top of the head."""
    root = tmp_path / "repo"
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "build_pyz.py"), "copy-source", REPO, str(root)],
                   check=True)
    with open(os.path.join(FIXTURES, fixture), encoding="utf-8") as handle:
        text = handle.read().replace("KIT_DOWN_REVISION", revisions.HEAD_REVISION)
    (root / "migrations" / "versions" / ("%s_%s" % (revision, fixture))).write_text(text)
    return str(root)


@pytest.fixture
def broken_kit(server, tmp_path, request):
    fixture, revision = request.param
    made = new_kit(repository_with(tmp_path, fixture, revision), server)
    assert head_of(made) == revision  # the fixture is the head of the copy
    yield made
    drop_databases(made)


@pytest.mark.parametrize("broken_kit", [("non_idempotent.py", "kit000000001")], indirect=True)
def test_the_kit_fails_a_non_idempotent_step(broken_kit):
    """An unconditional ADD COLUMN committed by the concurrent build after it:
    killed after that build, the rerun adds the column again and fails."""
    check_plan_matches_online(broken_kit, "kit000000001")  # what it runs is what it plans...
    with pytest.raises(KitFailure, match=r"killed after statement 2 of 2 .*already exists"):
        check_crash_at_every_statement(broken_kit, "kit000000001", "upgrade")


@pytest.mark.parametrize("broken_kit", [("leaves_a_column.py", "kit000000002")], indirect=True)
def test_the_kit_fails_a_downgrade_that_leaves_its_column(broken_kit):
    with pytest.raises(KitFailure, match=r"downgrade of kit000000002 after its upgrade: the catalog differs.*"
                                         r"kit_leftover"):
        check_up_down_up(broken_kit, "kit000000002")


# --- the offline script decides each kind of step as the online runner does ------------

def kinds_of_steps(n):
    """name -> (a step, allow_data_loss): each kind of Step, its condition holding or not.
    The schema holds kit_rows (x int) with one row, and the empty kit_empty (x int)."""
    rows = n.table("kit_rows")
    rows_check = RowCheck("kit_rows", "x", "x is not null", when=n.column_exists("kit_rows", "x"))
    empty_check = RowCheck("kit_empty", "x", "x is not null", when=n.column_exists("kit_empty", "x"))
    absent_check = RowCheck("kit_rows", "gone", "gone is not null", when=n.column_exists("kit_rows", "gone"))
    return {
        "statement, no condition": (Statement("ALTER TABLE %s ADD COLUMN a int" % rows), False),
        "statement, condition holds": (Statement("ALTER TABLE %s ADD COLUMN b int" % rows, when="true"), False),
        "statement, condition fails": (Statement("ALTER TABLE %s ADD COLUMN c int" % rows, when="false"), False),
        "concurrent build, table with rows": (Concurrent("CREATE INDEX %sIF NOT EXISTS ix_kit_rows ON %s (x)"
                                                         % (CONCURRENTLY, rows), table="kit_rows"), False),
        "concurrent build, condition fails": (Concurrent("CREATE INDEX %sIF NOT EXISTS ix_kit_no ON %s (x)"
                                                         % (CONCURRENTLY, rows), when="false"), False),
        "refusal, no condition": (Refusal(message="kit stop: ", detail="'the detail'"), False),
        "refusal, condition holds": (Refusal(message="kit stop", when="true"), False),
        "refusal, condition fails": (Refusal(message="kit stop", when="false"), False),
        "row checks find rows": (Refusal(message="kit data: ", row_checks=(rows_check, empty_check)), False),
        "row checks find none": (Refusal(message="kit data: ", row_checks=(empty_check, absent_check)), False),
        "row checks, condition fails": (Refusal(message="kit data: ", when="false", row_checks=(rows_check,)),
                                        False),
        "row checks with a detail": (Refusal(message="kit data: ", detail="'counted: '",
                                             row_checks=(rows_check,)), False),
        "data-loss refusal lifted": (Refusal(message="kit data: ", guard=Guard.DATA_LOSS, row_checks=(rows_check,)),
                                     True),
        "data-loss refusal not lifted": (Refusal(message="kit data: ", guard=Guard.DATA_LOSS, row_checks=(rows_check,)),
                                         False),
    }


KINDS = sorted(kinds_of_steps(SchemaSQL(SCHEMA)))


def store_for_kinds(url: str) -> None:
    for statement in ("CREATE SCHEMA %s" % SCHEMA, "CREATE TABLE %s.kit_rows (x int)" % SCHEMA,
                      "CREATE TABLE %s.kit_empty (x int)" % SCHEMA, "INSERT INTO %s.kit_rows VALUES (1)" % SCHEMA):
        sql(url, statement)


def run_online(url: str, step, allow_data_loss: bool):
    """The online runner on a plain connection: the refusal it raises, or None."""
    conn = connect(url, autocommit=True)
    cursor = conn.cursor()

    def scalar(statement):
        cursor.execute(statement)
        return cursor.fetchone()[0]

    def rows(statement):
        cursor.execute(statement)
        return cursor.fetchall()
    runner = OnlineRunner(exec_scalar=scalar, exec_rows=rows, execute=cursor.execute,
                          outside=contextlib.nullcontext, names=SchemaSQL(SCHEMA), allow_data_loss=allow_data_loss)
    try:
        runner.run([step])
        return None
    except RefusedError as exc:
        return exc.message
    finally:
        conn.close()


def run_offline(url: str, step, allow_data_loss: bool, tmp_dir: str):
    """offline.py's rendering of the step, applied with psql: the refusal it raised, or None."""
    path = os.path.join(tmp_dir, "step.sql")
    with open(path, "w") as handle:
        handle.write(offline.render_steps([step], Settings(conninfo=None), SchemaSQL(SCHEMA), allow_data_loss))
    applied = psql_file(url, path)
    if applied.returncode == 0:
        return None
    raised = re.search(r"ERROR:  (.*)", applied.stderr)
    assert raised, applied.stderr
    return raised.group(1)


@pytest.mark.parametrize("kind", KINDS)
def test_offline_decides_each_kind_of_step_as_online(server, kind, tmp_path):
    """The same step, decided by the online runner (ddl.decide) and rendered by
    offline.py and run by psql, on twin databases: the same refusal (or none)
    and the same catalog afterwards."""
    kit = new_kit(REPO, server)
    try:
        online, script = new_database(kit), new_database(kit)
        for url in (online, script):
            store_for_kinds(url)
        step, allow_data_loss = kinds_of_steps(SchemaSQL(SCHEMA))[kind]
        assert run_offline(script, step, allow_data_loss, str(tmp_path)) == run_online(online, step, allow_data_loss)
        assert catalog_snapshot(script, SCHEMA) == catalog_snapshot(online, SCHEMA)
    finally:
        drop_databases(kit)
