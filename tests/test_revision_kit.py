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
  crash gives, every row kept; before that rerun (time may pass first), the
  crashed store accepts a worker's writes stamped now, +3 and +30 days;
- the same for a run still alive when it fails (SIGTERM, SIGINT, the lock
  budget's exit 9): it leaves nothing that rejects those writes;
- an interrupted downgrade converges when followed by `upgrade`;
- the walks and the offline script under a non-UTC time zone with a
  daylight-saving change ahead and non-ISO DateStyle / IntervalStyle give
  what the UTC runs give, every partition bound a UTC midnight;
- outlying timestamps (2099, +-infinity, year 56890, 4000 BC) go up and down
  every revision, kept and queryable, and check / verify / plan do not crash;
- a writer that inserts, updates and deletes during the upgrade and the
  downgrade: the final table is what the writer did, row by row;
- operator objects (a view, a CHECK, a column grant, an index) are carried
  through up and down, or the revision refuses (exit 8, nothing changed);
- with data in every column (and table) a revision adds, its downgrade
  refuses (exit 8, nothing changed) or keeps the data (issue 22).

The per-statement matrices (crash, live stop, interrupted downgrade) run
every point for a new or changed revision and a sample for one released and
unchanged since (tests/released.py, docs/ci.md): the kit's time stays
bounded as revisions accumulate.

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
import datetime
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Dict, List, NamedTuple, Optional

import pytest

from conftest import REPO, catalog_snapshot, connect, load_legacy, sql
from helpers import psql_file
import released as release_list
from otelmig import offline, revisions
from otelmig.ddl import CONCURRENTLY, CRASH_AFTER_ENV, Concurrent, Guard, SchemaSQL, OnlineRunner, Refusal, RowCheck, Statement
from otelmig.errors import RefusedError
from otelmig.schema import OWN_TABLES
from otelmig.settings import Settings, resolve_conninfo
from pgcluster import bindir

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
          and c.relname <> 'alembic_version' and c.relname !~ %s order by 1""", (SCHEMA, HISTORY_OBJECTS))]


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
# The run history (otelmig_runs, its key, sequence and constraints): every run writes it, no revision
# changes it, and it outlives a rollback (docs/history.md); conftest.catalog_snapshot leaves it out too.
HISTORY_OBJECTS = "^otelmig_runs"


def without_version_table(catalog: dict) -> dict:
    """Alembic keeps its (then empty) version table after a downgrade to base:
    its rows are compared as `version`, the table itself is bookkeeping."""
    return {kind: [row for row in rows if row[0] not in VERSION_TABLE_OBJECTS] for kind, rows in catalog.items()}


def more_catalog(url: str) -> dict:
    """What conftest.catalog_snapshot leaves out: every relation with its kind, and the constraints."""
    relations = sql(url, """select c.relname, c.relkind::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
                            where n.nspname = %s and c.relname !~ %s order by 1""", (SCHEMA, HISTORY_OBJECTS))
    constraints = sql(url, """select c.relname, k.conname, pg_get_constraintdef(k.oid) from pg_constraint k
                              join pg_class c on c.oid = k.conrelid join pg_namespace n on n.oid = c.relnamespace
                              where n.nspname = %s and c.relname !~ %s order by 1, 2""", (SCHEMA, HISTORY_OBJECTS))
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


def points_to_try(kit: Kit, revision: str, count: int, what: str) -> tuple:
    """The statements k to crash or stop after: every one of a new or changed
    revision, a sample of a released and unchanged one (tests/released.py,
    docs/ci.md); and the note a failure then carries to rerun the sample."""
    points = release_list.crash_points(kit.root, revision, count, what)
    note = release_list.sample_note(points, count)
    return points, " [%s]" % note if note else ""


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
    assert_accepts_writes(reference, "%s of %s" % (direction, revision))
    rejecting = []
    points, sampled = points_to_try(kit, revision, count, "crash " + direction)
    for k in points:
        url = store_at(kit, start_at)
        crashed = command(kit, url, target, "-v", crash_after=k)
        if crashed.returncode != -signal.SIGKILL:
            raise KitFailure("%s of %s with %s=%d: expected to be killed, exit %d: %s"
                             % (direction, revision, CRASH_AFTER_ENV, k, crashed.returncode, crashed.stderr.strip()))
        logged = len(re.findall(r"^  \S", crashed.stderr, re.M))
        if logged != k:  # the hook counts what the runner executes, and kills right after statement k
            raise KitFailure("%s of %s with %s=%d: killed after %d statement(s)"
                             % (direction, revision, CRASH_AFTER_ENV, k, logged))
        point = "%s of %s killed after statement %d of %d (%s)%s" % (
            direction, revision, k, count, ran[revision][k - 1].split("\n")[0][:80], sampled)
        rejected = rejected_writes(url)  # before any rerun: time may pass before the operator reruns
        if rejected:
            rejecting.append("%s: %s" % (point, "; ".join(rejected)))
        what = point + ", then rerun"
        must(command(kit, url, target), what)
        assert_same(expected, state(kit, url), what)
        if direction == "upgrade":
            assert_rows_kept(found, url, what)
    if rejecting:
        raise KitFailure("the reruns converged, but %d of %d crash points left a store that rejects a worker's "
                         "writes until the rerun: %s" % (len(rejecting), len(points), " | ".join(rejecting)))
    if direction == "upgrade" and revision == head_of(kit):
        must(otelmig(kit, reference, "verify"), "verify after the upgrade to the head")
    return count


# --- a downgrade with data in what the revision added (issue 22) ---------------------

# A value of each type the kit can mark and find again: (SQL literal, what to_jsonb's text then holds).
MARKED_TYPES = {
    "text": ("'kit-keep-{token}'", "kit-keep-{token}"),
    "jsonb": ("'{{\"kit_keep\": \"{token}\"}}'", "{token}"),
    "numbers": ("7340033", "7340033"),
    "timestamps": ("'2011-11-11 11:11:11+00'", "2011-11-11"),
}


def _mark(type_name: str, token: str, where: str) -> tuple:
    base_type = type_name.split("(")[0]
    kind = ("text" if base_type in TEXT_TYPES else "jsonb" if base_type in ("jsonb", "json") else
            "numbers" if base_type in NUMBER_TYPES else "timestamps" if base_type in TIMESTAMP_TYPES else None)
    if kind is None:
        raise KitFailure("the kit cannot mark %s of type %s with data: teach MARKED_TYPES the type" % (where, type_name))
    literal, needle = MARKED_TYPES[kind]
    return literal.format(token=token), needle.format(token=token)


def added_by(kit: Kit, revision: str) -> Dict[str, list]:
    """table -> the columns the revision adds to it (every column of a table
    it adds), from the stores below it and at it; otelmig's own tables aside.
    A table it recreates (another oid) is compared by column name."""
    before = _columns_by_position(kit.server.url(template_at(kit, below_of(kit, revision))))
    after = _columns_by_position(kit.server.url(template_at(kit, revision)))
    added = {}
    for table, new in after.items():
        old = before.get(table)
        if table in OWN_TABLES:
            continue
        if old is None:
            columns = list(new["columns"].values())
        elif old["oid"] == new["oid"]:
            columns = [name for attnum, name in sorted(new["columns"].items()) if attnum not in old["columns"]]
        else:
            columns = [name for name in new["columns"].values() if name not in old["columns"].values()]
        if columns:
            added[table] = (old is None, columns)
    return added


def _put_data(url: str, added: dict, token: str) -> Dict[tuple, tuple]:
    """Marks every added column (a row into every added table): (table, column) -> (needle, rows marked)."""
    conn = connect(url, autocommit=True)
    marked = {}
    try:
        cursor = conn.cursor()
        for table, (new_table, columns) in sorted(added.items()):
            cursor.execute("""select a.attname, format_type(a.atttypid, a.atttypmod) from pg_attribute a
                              where a.attrelid = to_regclass(%s) and a.attname = any(%s) and a.attgenerated = ''""",
                           ("%s.%s" % (SCHEMA, table), columns))
            values = {name: _mark(type_name, token, "%s.%s.%s" % (SCHEMA, table, name))
                      for name, type_name in cursor.fetchall()}
            try:
                if new_table:
                    cursor.execute(worker_insert(cursor, table, "0 days",
                                                 overrides={n: v[0] for n, v in values.items()}))
                else:
                    cursor.execute("UPDATE %s.%s SET %s" % (SCHEMA, table, ", ".join(
                        '"%s" = %s' % (name, value[0]) for name, value in values.items())))
            except Exception as exc:
                raise KitFailure("the kit could not put data in %s.%s (%s): %s"
                                 % (SCHEMA, table, ", ".join(values), _error_text(exc)))
            for name, (_, needle) in values.items():
                marked[(table, name)] = (needle, cursor.rowcount)
    finally:
        conn.close()
    return marked


def _rows_holding(url: str, needle: str) -> int:
    return sum(sql(url, "select count(*) from %s.%s t where to_jsonb(t)::text like %%s" % (SCHEMA, table),
                   ("%" + needle + "%",))[0][0] for table in tables(url))


def check_downgrade_keeps_added_data(kit: Kit, revision: str) -> str:
    """Data in every column (and table) the revision adds, then its downgrade
    without OTELMIG_ALLOW_DATA_LOSS: it refuses (exit 8, nothing changed) or
    keeps the data (each value still in some table of the schema). Returns what happened."""
    added = added_by(kit, revision)
    if not added:
        return "adds nothing"
    below = below_of(kit, revision)
    url = store_at(kit, revision)
    marked = _put_data(url, added, uuid.uuid4().hex[:12])
    before = state(kit, url)
    down = downgrade(kit, url, below)  # otelmig() passes no OTEL* variable: the guard stands
    what = "downgrade of %s with data in what it added (%s)" % (revision, ", ".join(
        "%s.%s" % pair for pair in sorted(marked)))
    if down.returncode == 8:
        assert_same(before, state(kit, url), what + ", refused (exit 8)")
        return "refused"
    must(down, what)
    lost = ["%s.%s.%s (%d rows)" % (SCHEMA, table, column, rows) for (table, column), (needle, rows) in sorted(marked.items())
            if _rows_holding(url, needle) < rows]
    if lost:
        raise KitFailure("%s: it dropped the data in %s without a refusal; give the downgrade a "
                         "Refusal(guard=Guard.DATA_LOSS, row_checks=...) first (docs/authoring.md)"
                         % (what, ", ".join(lost)))
    return "kept"


# --- a worker's writes: what every state a revision leaves must accept (issue 19) ---

# A worker writes rows stamped now; a leftover that rejects a row only later
# (a CHECK with a constant cutoff) shows with rows stamped ahead.
WRITE_STAMPS = (("now", "0 days"), ("now + 3 days", "3 days"), ("now + 30 days", "30 days"))
WORKER_TABLES = ("traces", "spans")
TIMESTAMP_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")
TEXT_TYPES = ("text", "character varying", "character", "name")
NUMBER_TYPES = ("bigint", "integer", "smallint", "numeric", "double precision", "real")


def _error_text(exc: Exception) -> str:
    """pg8000 puts the server's fields in args[0]: the SQLSTATE and message."""
    fields = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else None
    return "%s %s" % (fields.get("C"), fields.get("M")) if fields else str(exc).splitlines()[0]


def _sqlstate(exc: Exception) -> Optional[str]:
    fields = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else None
    return fields.get("C") if fields else None


def worker_insert(cursor, table: str, stamp: str, rows: int = 1, token: Optional[str] = None,
                  overrides: Optional[dict] = None) -> str:
    """An INSERT of `rows` rows into otel.TABLE as the worker would write them,
    built from the table's columns as they are now (a revision may rename
    them): every timestamp column without a default is `now() + stamp`, every
    other NOT NULL column without a default a value of its type (text unique
    per row). `overrides`: column -> SQL expression."""
    cursor.execute("""select a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.atthasdef,
                             a.attgenerated <> '' or a.attidentity = 'a'
                      from pg_attribute a where a.attrelid = to_regclass(%s) and a.attnum > 0
                        and not a.attisdropped order by a.attnum""", ("%s.%s" % (SCHEMA, table),))
    token = token or "k" + uuid.uuid4().hex[:8]
    names, values = [], []
    for name, type_name, not_null, has_default, generated in cursor.fetchall():
        base_type = type_name.split("(")[0]
        if name in (overrides or {}):
            value = overrides[name]
        elif generated or has_default:
            continue
        elif base_type in TIMESTAMP_TYPES:
            value = "now() + interval '%s'" % stamp
        elif not not_null:
            continue
        elif base_type in TEXT_TYPES:
            value = "left('%s' || g, 16)" % token
        elif base_type in ("jsonb", "json"):
            value = "'{}'"
        elif base_type in NUMBER_TYPES:
            value = "0"
        elif base_type == "boolean":
            value = "false"
        else:
            raise KitFailure("the kit cannot write %s.%s.%s of type %s: teach worker_insert the type"
                             % (SCHEMA, table, name, type_name))
        names.append('"%s"' % name)
        values.append(value)
    if not names:
        raise KitFailure("%s.%s has no columns (is it there?)" % (SCHEMA, table))
    return "INSERT INTO %s.%s (%s) SELECT %s FROM generate_series(1, %d) g" % (
        SCHEMA, table, ", ".join(names), ", ".join(values), rows)


def rejected_writes(url: str) -> List[str]:
    """The worker's writes (one row into each of traces and spans, stamped now,
    +3 and +30 days, each in its own transaction, rolled back) that the store
    rejects, each with the server's error."""
    conn = connect(url, autocommit=False)
    problems = []
    try:
        cursor = conn.cursor()
        for table in WORKER_TABLES:
            for label, stamp in WRITE_STAMPS:
                try:
                    cursor.execute("set local lock_timeout = '30s'")
                    cursor.execute(worker_insert(cursor, table, stamp))
                except KitFailure as exc:
                    problems.append("%s stamped %s: %s" % (table, label, exc))
                except Exception as exc:  # the server's refusal: that is what is reported
                    problems.append("INSERT INTO %s.%s stamped %s: %s" % (SCHEMA, table, label, _error_text(exc)))
                finally:
                    conn.rollback()
    finally:
        conn.close()
    return problems


def assert_accepts_writes(url: str, what: str) -> None:
    rejected = rejected_writes(url)
    if rejected:
        raise KitFailure("%s: the store rejects a worker's writes: %s" % (what, "; ".join(rejected)))


# --- a run that fails while alive -------------------------------------------------

def _blocker(url: str, connected, go, locked, release):
    """A reader's open transaction holding ACCESS SHARE on spans and traces
    from `go` on, so the next step that needs a stronger lock spends the lock
    budget. Connected before the run starts: it locks at once when told."""
    conn = connect(url, autocommit=False)
    try:
        cursor = conn.cursor()
        cursor.execute("set local lock_timeout = '60s'")
        connected.set()
        if go.wait(DEADLINE * 2) and not release.is_set():
            cursor.execute("LOCK TABLE %s.spans, %s.traces IN ACCESS SHARE MODE" % (SCHEMA, SCHEMA))
            locked.set()
            release.wait(DEADLINE * 2)
        conn.rollback()
    except Exception:  # a lock it could not get: the run went on, and its exit says so
        locked.set()
    finally:
        connected.set()
        conn.close()


LIVE_FAILURES = {  # how the run is stopped -> the exit it must then give
    "SIGTERM": 143,
    "SIGINT": 130,
    "lock budget": 9,
}


def interrupted_run(kit: Kit, url: str, args: list, at_statement: int, how: str):
    """`otelmig ARGS -v`, stopped while alive once statement `at_statement`
    started (the runner logs each statement before it executes it): by a
    signal, or by a reader's lock that exhausts the lock budget (0.2 s
    attempts). Returns (exit, stderr); exit 0 when it finished first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES", "OTEL"))}
    env["POSTGRES_URL"] = url
    extra = ["--lock-timeout", "0.2"] if how == "lock budget" else []
    connected, go, locked, release = (threading.Event() for _ in range(4))
    blocker = None
    if how == "lock budget":
        blocker = threading.Thread(target=_blocker, args=(url, connected, go, locked, release), daemon=True)
        blocker.start()
        connected.wait(DEADLINE)
    proc = subprocess.Popen([sys.executable, "-m", "otelmig", *args, "-v", *extra], cwd=kit.root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines, started = [], 0
    try:
        for line in proc.stderr:
            lines.append(line)
            if re.match(r"^  \S", line):
                started += 1
                if started == at_statement:
                    if blocker is not None:
                        go.set()
                    else:
                        proc.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGINT)
        proc.wait(timeout=DEADLINE * 2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        release.set()
        go.set()
        if blocker is not None:
            blocker.join(DEADLINE)
    return proc.returncode, "".join(lines)


def check_live_failure_leaves_writable(kit: Kit, revision: str, direction: str, ways=tuple(LIVE_FAILURES)) -> int:
    """The run stopped while alive once each statement k = 1..n started, in
    each of `ways` in turn (LIVE_FAILURES: k = 1 SIGTERM, 2 the lock budget, 3
    SIGINT, 4 SIGTERM ...; one run per statement keeps the kit's time): it
    exits with the code for it (or 0 when it finished first), the store it
    leaves accepts a worker's writes stamped now, +3 and +30 days before any
    rerun, and the rerun converges. Returns how many runs were stopped."""
    below = below_of(kit, revision)
    start_at, target = (below, revision) if direction == "upgrade" else (revision, below)
    command = upgrade if direction == "upgrade" else downgrade
    reference = store_at(kit, start_at)
    ran = executed_statements(must(command(kit, reference, target, "-v"), "%s of %s" % (direction, revision)).stderr)
    expected = state(kit, reference)
    start = state(kit, store_at(kit, start_at))
    count = len(ran.get(revision, []))
    stopped, rejecting = 0, []
    points, sampled = points_to_try(kit, revision, count, "live " + direction)
    for k in points:
        url = store_at(kit, start_at)
        how = ways[(k - 1) % len(ways)]
        code, err = interrupted_run(kit, url, [direction, target or "base"], k, how)
        point = "%s of %s stopped by %s once statement %d of %d started (%s)%s" % (
            direction, revision, how, k, count, ran[revision][k - 1].split("\n")[0][:80], sampled)
        if code not in (0, LIVE_FAILURES[how]):
            raise KitFailure("%s: exit %d, expected %d: %s" % (point, code, LIVE_FAILURES[how], err.strip()[-400:]))
        stopped += code != 0
        rejected = rejected_writes(url)
        if rejected:
            rejecting.append("%s (exit %d): %s" % (point, code, "; ".join(rejected)))
        if state(kit, url) == start:
            continue  # rolled back whole: the rerun is the run without a failure (kit time)
        must(command(kit, url, target), point + ", then rerun")
        assert_same(expected, state(kit, url), point + ", then rerun")
    if rejecting:
        raise KitFailure("%d of %d live failures left a store that rejects a worker's writes: %s"
                         % (len(rejecting), len(points), " | ".join(rejecting)))
    return stopped


# --- an interrupted downgrade, then upgrade -----------------------------------------

def check_interrupted_downgrade_then_upgrade(kit: Kit, revision: str) -> int:
    """SIGKILL after each statement of the downgrade, then `upgrade` back to
    the revision: it converges on the revision's state, every row in
    otel.spans (and every table) as before the downgrade. Returns n."""
    below = below_of(kit, revision)
    reference = store_at(kit, revision)
    expected = state(kit, reference)
    found = rows_before(reference)
    ran = executed_statements(must(downgrade(kit, reference, below, "-v"), "downgrade of %s" % revision).stderr)
    count = len(ran.get(revision, []))
    points, sampled = points_to_try(kit, revision, count, "interrupted downgrade")
    for k in points:
        url = store_at(kit, revision)
        crashed = downgrade(kit, url, below, crash_after=k)
        if crashed.returncode != -signal.SIGKILL:
            raise KitFailure("downgrade of %s with %s=%d: expected to be killed, exit %d"
                             % (revision, CRASH_AFTER_ENV, k, crashed.returncode))
        what = "downgrade of %s killed after statement %d of %d (%s), then upgrade%s" % (
            revision, k, count, ran[revision][k - 1].split("\n")[0][:80], sampled)
        if state(kit, url) == expected:
            continue  # nothing of the downgrade was committed: the upgrade has nothing to repair (kit time)
        must(upgrade(kit, url, revision), what)
        assert_rows_kept(found, url, what)
        assert_same(expected, state(kit, url), what)
    return count


# --- session settings of the field: time zone, DateStyle, IntervalStyle ---------------

UTC_SESSION = ("set timezone = 'UTC'", "set datestyle = 'ISO, YMD'", "set intervalstyle = 'postgres'")
# What psql's session has when it applies the --sql script, other again than the database's.
PSQL_SESSION = {"PGTZ": "Asia/Kolkata", "PGDATESTYLE": "SQL, DMY", "PGOPTIONS": "-c IntervalStyle=postgres_verbose"}


def sql_utc(url: str, statement: str, params=()):
    """sql(), in a session that reads time in UTC and ISO whatever the database's settings."""
    conn = connect(url)
    try:
        cursor = conn.cursor()
        for setting in UTC_SESSION:
            cursor.execute(setting)
        cursor.execute(statement, params)
        return [list(row) for row in cursor.fetchall()] if cursor.description else None
    finally:
        conn.close()


def julian_day(url: str, days_ahead: int) -> int:
    """POSIX's Jn (1..365, February 29 never counted) of the server's UTC date + days_ahead."""
    day = sql_utc(url, "select to_char((now() at time zone 'UTC')::date + %s::int, 'YYYY-MM-DD')", (days_ahead,))[0][0]
    year, month, date = (int(part) for part in day.split("-"))
    number = (datetime.date(year, month, date) - datetime.date(year, 1, 1)).days + 1
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if leap and month > 2:
        return number - 1  # Jn skips February 29
    return 59 if leap and month == 2 and date == 29 else number  # February 29 itself: February 28 (J59)


def zone_with_transitions_ahead(url: str) -> str:
    """A POSIX zone (UTC-3, daylight time UTC-2) whose daylight time begins 3
    days and ends 6 days after the server's date: both changes fall inside the
    days a revision makes partitions for. Checked on the server."""
    zone = "AAA3BBB,J%d/2,J%d/2" % (julian_day(url, 3), julian_day(url, 6))
    conn = connect(url)
    try:
        cursor = conn.cursor()
        cursor.execute("set timezone = '%s'" % zone)
        cursor.execute("select count(distinct extract(timezone from now() + n * interval '1 day')) "
                       "from generate_series(0, 10) n")
        offsets = cursor.fetchone()[0]
    finally:
        conn.close()
    if offsets < 2:
        raise KitFailure("the server does not apply the daylight-saving rule of %r: the kit cannot test it" % zone)
    return zone


def field_settings(url: str) -> Dict[str, str]:
    return {"TimeZone": zone_with_transitions_ahead(url), "DateStyle": "SQL, DMY", "IntervalStyle": "sql_standard"}


@contextlib.contextmanager
def database_settings(kit: Kit, url: str, settings: Dict[str, str]):
    """ALTER DATABASE ... SET each setting for the block (every new session of
    otelmig gets them); reset after it, so the kit's own reads are in UTC."""
    name = database_name(url)
    for setting, value in settings.items():
        sql(kit.server.admin_url, "ALTER DATABASE %s SET %s = '%s'" % (name, setting, value.replace("'", "''")))
    try:
        yield
    finally:
        sql(kit.server.admin_url, "ALTER DATABASE %s RESET ALL" % name)


BOUND_VALUE = re.compile(r"'([^']*)'")
UTC_MIDNIGHT = re.compile(r"^\d{4,}-\d\d-\d\d 00:00:00\+00$")


def bounds_not_at_utc_midnight(url: str) -> List[str]:
    """Each partition bound of the schema's tables that is not a UTC midnight
    (read in a UTC session): 'partition: bound'."""
    found = []
    for name, bound in sql_utc(url, """
            select c.relname, pg_get_expr(c.relpartbound, c.oid) from pg_class c
            join pg_namespace n on n.oid = c.relnamespace
            where n.nspname = %s and c.relispartition order by 1""", (SCHEMA,)):
        for value in BOUND_VALUE.findall(bound or ""):
            if not UTC_MIDNIGHT.match(value):
                found.append("%s: %s" % (name, bound))
                break
    return found


def assert_bounds_at_utc_midnight(url: str, what: str) -> None:
    wrong = bounds_not_at_utc_midnight(url)
    if wrong:
        raise KitFailure("%s: partition bounds that are not a UTC midnight: %s" % (what, "; ".join(wrong[:5])))


def check_walks_under_field_settings(kit: Kit) -> None:
    """The upgrade walk from base to the head, and the downgrade walk back,
    with the database's TimeZone a zone with daylight-saving changes ahead,
    DateStyle 'SQL, DMY' and IntervalStyle 'sql_standard': each revision lands
    on the state the UTC run gives, every bound a UTC midnight."""
    url = store_at(kit, None)
    settings = field_settings(url)
    for revision, _ in revision_chain(kit.root):
        with database_settings(kit, url, settings):
            must(upgrade(kit, url, revision), "upgrade to %s under %s" % (revision, settings))
        what = "upgrade to %s under %s" % (revision, settings)
        assert_bounds_at_utc_midnight(url, what)
        assert_same(state(kit, store_at(kit, revision)), state(kit, url), what + " against the UTC run")
    with database_settings(kit, url, settings):
        for command in ("verify", "check"):
            must(otelmig(kit, url, command), "%s at the head under %s" % (command, settings))
    for revision, below in reversed(revision_chain(kit.root)):
        with database_settings(kit, url, settings):
            must(downgrade(kit, url, below), "downgrade of %s under %s" % (revision, settings))
        what = "downgrade of %s under %s" % (revision, settings)
        assert_bounds_at_utc_midnight(url, what)
        assert_same(state(kit, store_at(kit, below)), state(kit, url), what + " against the UTC run")


def psql_file_with(url: str, path: str, session: Dict[str, str]) -> subprocess.CompletedProcess:
    """helpers.psql_file with the psql session's environment (PGTZ, PGDATESTYLE, PGOPTIONS)."""
    info = resolve_conninfo(url, {})
    psql = shutil.which("psql") or os.path.join(bindir(), "psql")
    env = dict({k: v for k, v in os.environ.items() if not k.startswith("PG")}, PGPASSWORD=info.password, **session)
    return subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", info.host, "-p", str(info.port),
                           "-U", info.user, "-d", info.database, "-f", path],
                          env=env, capture_output=True, text=True)


def check_offline_under_field_settings(kit: Kit, revision: str, tmp_dir: str) -> None:
    """`upgrade REV --sql` applied by psql with PGTZ / PGDATESTYLE / PGOPTIONS
    of their own, on a database whose settings are the field's: the state the
    online UTC run gives, every bound a UTC midnight, from base and from below."""
    script = must(otelmig(kit, "postgresql://nobody@127.0.0.1:1/none", "upgrade", revision, "--sql"),
                  "upgrade %s --sql" % revision).stdout
    path = os.path.join(tmp_dir, "upgrade-%s.sql" % revision)
    with open(path, "w") as handle:
        handle.write(script)
    expected = state(kit, store_at(kit, revision))
    for start in sorted({None, below_of(kit, revision)}, key=str):
        url = store_at(kit, start)
        settings = field_settings(url)
        what = "upgrade %s --sql from %s, database %s, psql %s" % (revision, start or "base", settings, PSQL_SESSION)
        with database_settings(kit, url, settings):
            applied = psql_file_with(url, path, PSQL_SESSION)
        if applied.returncode != 0:
            raise KitFailure("%s: %s" % (what, applied.stderr.strip()))
        assert_bounds_at_utc_midnight(url, what)
        assert_same(expected, state(kit, url), what + " against the online UTC run")


# --- outlying timestamps in the store --------------------------------------------------

# Values a unit mix-up, a sentinel or a bad clock writes; PostgreSQL accepts each.
OUTLYING_STARTS = ("2099-06-01 12:00:00+00", "infinity", "-infinity", "56890-01-01 00:00:00+00",
                   "4000-01-01 00:00:00+00 BC")
OUTLIER_TRACE = "kit-outlier"


def store_with_outliers(kit: Kit) -> str:
    """The legacy store with rows, plus a span at each of OUTLYING_STARTS (and a trace at 2099)."""
    key = ("outliers", None)
    if key not in kit.templates:
        url = new_database(kit, template_at(kit, None))
        for number, start in enumerate(OUTLYING_STARTS, 1):
            sql(url, "insert into %s.spans (trace_id, span_id, name, service_name, start_ts) "
                     "values (%%s, %%s, 'outlier', 'svc-1', %%s::timestamptz)" % SCHEMA,
                (OUTLIER_TRACE, "kit-outlier-%d" % number, start))
        sql(url, "insert into %s.traces (trace_id, service_name, start_ts) values (%%s, 'svc-1', %%s::timestamptz)"
            % SCHEMA, (OUTLIER_TRACE, OUTLYING_STARTS[0]))
        kit.templates[key] = database_name(url)
    return new_database(kit, kit.templates[key])


def start_column(url: str) -> str:
    """The spans column for a span's start, under whichever revision's name (the first timestamptz column)."""
    return sql(url, """select attname from pg_attribute where attrelid = to_regclass(%s) and attnum > 0
                       and not attisdropped and format_type(atttypid, atttypmod) = 'timestamp with time zone'
                       order by attnum limit 1""", ("%s.spans" % SCHEMA,))[0][0]


def assert_outliers_queryable(url: str, what: str) -> None:
    """Each outlier is in otel.spans and found by its own start value."""
    column = start_column(url)
    for start in OUTLYING_STARTS:
        found = sql_utc(url, 'select count(*) from %s.spans where trace_id = %%s and "%s" = %%s::timestamptz'
                        % (SCHEMA, column), (OUTLIER_TRACE, start))[0][0]
        if found != 1:
            raise KitFailure("%s: the span started at %s is found %d times in %s.spans" % (what, start, found, SCHEMA))


def assert_no_crash(kit: Kit, url: str, what: str) -> None:
    """check, verify and plan may report (exit 4, 5, 7 ...), never crash (exit 1, a traceback, a signal)."""
    for args in (("check",), ("verify",), ("plan",), ("verify", "--format", "json")):
        ran = otelmig(kit, url, *args)
        if ran.returncode in (1,) or ran.returncode < 0 or "Traceback" in ran.stderr:
            raise KitFailure("%s: `%s` crashed, exit %d: %s" % (what, " ".join(args), ran.returncode,
                                                                (ran.stderr or ran.stdout).strip()[-400:]))


def partition_of_a_row_stamped(url: str, stamp: str) -> Optional[list]:
    """For a partitioned otel.spans: [partition, its bound] that a worker's row
    stamped now() + stamp goes to (inserted, then rolled back); None when spans
    is not partitioned."""
    if sql(url, "select relkind::text from pg_class where oid = to_regclass(%s)", ("%s.spans" % SCHEMA,)) != [["p"]]:
        return None
    conn = connect(url, autocommit=False)
    try:
        cursor = conn.cursor()
        cursor.execute(worker_insert(cursor, "spans", stamp) + " RETURNING tableoid")
        partition = cursor.fetchone()[0]
        cursor.execute("select relname, pg_get_expr(relpartbound, oid) from pg_class where oid = %s", (partition,))
        return list(cursor.fetchone())
    finally:
        conn.rollback()
        conn.close()


# A conversion may keep the days just ahead in the partition that holds the
# history (revision 2 does for MARGIN_DAYS: rows of today keep arriving while
# it validates), but no longer: from this many days after today on, a row
# finds a partition of its own day.
HISTORY_DAYS_AHEAD_AT_MOST = 3


def assert_new_rows_in_day_partitions(url: str, what: str) -> None:
    """In a partitioned spans, a row stamped now goes to a partition that ends
    at most HISTORY_DAYS_AHEAD_AT_MOST days from now, never DEFAULT nor one open
    towards MAXVALUE or infinity, and a row stamped that many days ahead to a
    bounded partition of its own day: outliers (2099, infinity) must not switch
    partitioning off, nor move the cutoff."""
    far = "%d days" % HISTORY_DAYS_AHEAD_AT_MOST
    for label, stamp in (("now", "0 days"), ("now + %s" % far, far)):
        found = partition_of_a_row_stamped(url, stamp)
        if found is None:
            return
        name, bound = found
        upper = bound.split(" TO (")[-1]
        open_above = bound == "DEFAULT" or "MAXVALUE" in upper or "infinity" in upper
        own_day = not open_above and "MINVALUE" not in bound
        ends_soon = not open_above and sql(url, "select %s::timestamptz <= now() + interval '%s' + interval '1 day'"
                                           % (upper.rstrip(")"), far))[0][0]
        if open_above or not ends_soon or (stamp == far and not own_day):
            raise KitFailure("%s: a row stamped %s goes to %s (%s), not to a partition of its own day"
                             % (what, label, name, bound))


def check_outlying_timestamps(kit: Kit) -> None:
    """A few spans at 2099, +-infinity, year 56890 and 4000 BC: every revision
    goes up and down, every row kept, each outlier found by its value; new
    rows still go to day partitions; check, verify and plan do not crash."""
    url = store_with_outliers(kit)
    found = rows_before(url)
    assert_no_crash(kit, url, "the legacy store with outliers")
    for revision, _ in revision_chain(kit.root):
        what = "upgrade to %s with outlying timestamps" % revision
        must(upgrade(kit, url, revision), what)
        assert_rows_kept(found, url, what)
        assert_outliers_queryable(url, what)
        assert_no_crash(kit, url, what)
        assert_new_rows_in_day_partitions(url, what)
        assert_bounds_at_utc_midnight(url, what)
    for revision, below in reversed(revision_chain(kit.root)):
        what = "downgrade of %s with outlying timestamps" % revision
        must(downgrade(kit, url, below), what)
        assert_rows_kept(found, url, what)
        assert_outliers_queryable(url, what)
        assert_no_crash(kit, url, what)


# --- a writer during the upgrade and the downgrade ------------------------------------

# Spans stamped 3 to 7 days ahead: past revision 2's cutoff (at most 2 days
# ahead), so they sit in day partitions that its downgrade moves back (more
# than one batch of 10000), while the writer updates and deletes them.
RECENT_ROWS = 12000
# Before a conversion, rows stamped ahead of its cutoff are outliers it holds
# and moves under its switch's lock (revision 2: at most 10000, or it refuses,
# naming them): an upgrade's writer test starts with fewer.
RECENT_ROWS_BEFORE_AN_UPGRADE = 3000


def spans_id_and_name(cursor) -> Dict[str, str]:
    """The id and name columns of otel.spans by position, 1st and 5th (a
    rename keeps the position; so does the partitioned copy of the table)."""
    cursor.execute("""select attname from pg_attribute where attrelid = to_regclass(%s) and attnum > 0
                      and not attisdropped order by attnum""", ("%s.spans" % SCHEMA,))
    columns = [row[0] for row in cursor.fetchall()]
    return {"id": columns[0], "name": columns[4]}


class Writer:
    """A worker on its own connection that inserts, updates and deletes spans
    in otel.spans while a run goes on, keeping what the table must then hold:
    id -> name. Each write is one autocommit statement: one that fails did not
    happen (kept in `failed`); a column renamed under it is looked up again."""

    def __init__(self, url: str):
        self.url, self.random = url, random.Random(19)
        self.expected = {str(i): name for i, name in sql(url, "select id::text, name from %s.spans" % SCHEMA)}
        self.live = sorted(self.expected)
        self.failed, self.unmatched, self.done = [], [], 0
        self.stop, self.thread = threading.Event(), threading.Thread(target=self._run, daemon=True)

    def _one_write(self, cursor, names: dict, number: int) -> None:
        kind = number % 3
        if kind == 0 or not self.live:
            token = "w%07d" % number
            cursor.execute(worker_insert(cursor, "spans", "%d hours" % (72 + number % 96), token=token,
                                         overrides={names["name"]: "'%s'" % token}) + ' RETURNING "%s"::text' % names["id"])
            new_id = cursor.fetchone()[0]
            self.expected[new_id] = token
            self.live.append(new_id)
            return
        target = self.live[self.random.randrange(len(self.live))]
        if kind == 1:
            value = "u%07d" % number
            cursor.execute('UPDATE %s.spans SET "%s" = %%s WHERE "%s" = %%s::bigint' % (SCHEMA, names["name"], names["id"]),
                           (value, target))
            self.expected[target] = value
        else:
            cursor.execute('DELETE FROM %s.spans WHERE "%s" = %%s::bigint' % (SCHEMA, names["id"]), (target,))
            del self.expected[target]
            self.live.remove(target)
        if cursor.rowcount != 1:  # the row is in otel.spans by what the writer did: hidden from it
            self.unmatched.append("%s of id %s matched %d rows" % (("UPDATE", "DELETE")[kind - 1], target,
                                                                    cursor.rowcount))

    def _run(self) -> None:
        conn = connect(self.url)
        try:
            cursor = conn.cursor()
            names = spans_id_and_name(cursor)
            number = 0
            while not self.stop.is_set():
                number += 1
                try:
                    self._one_write(cursor, names, number)
                except Exception as exc:  # did not happen: the final table says whether that was so
                    self.failed.append((_sqlstate(exc), _error_text(exc)))
                    if _sqlstate(exc) == "42703":
                        names = spans_id_and_name(cursor)
                self.done += 1
                time.sleep(0.002)
        finally:
            conn.close()

    def __enter__(self):
        self.thread.start()
        wait_until(lambda: self.done >= 20, "the writer's first writes")
        return self

    def __exit__(self, *exc_info):
        if self.thread.is_alive():
            base = self.done
            wait_until(lambda: self.done >= base + 20 or not self.thread.is_alive(), "the writer's last writes")
        self.stop.set()
        self.thread.join(DEADLINE)


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise KitFailure("timed out waiting for " + what)
        time.sleep(0.01)


def add_recent_rows(url: str, rows: int = RECENT_ROWS) -> None:
    """`rows` spans stamped 3 to 7 days ahead."""
    conn = connect(url)
    try:
        cursor = conn.cursor()
        cursor.execute(worker_insert(cursor, "spans", "0 days", rows=rows).replace(
            "now() + interval '0 days'", "now() + interval '3 days' + mod(g, 96) * interval '1 hour'"))
    finally:
        conn.close()


def check_writer_during(kit: Kit, revision: str, direction: str) -> int:
    """A writer inserting, updating and deleting spans through the whole run:
    the run succeeds, and otel.spans then holds exactly what the writer's
    writes leave, row by row (id and name), with no write of it rejected but
    for a column renamed under it. Returns how many writes it made."""
    below = below_of(kit, revision)
    start_at, target = (below, revision) if direction == "upgrade" else (revision, below)
    command = upgrade if direction == "upgrade" else downgrade
    url = store_at(kit, start_at)
    add_recent_rows(url, RECENT_ROWS_BEFORE_AN_UPGRADE if direction == "upgrade" else RECENT_ROWS)
    what = "%s of %s with a writer" % (direction, revision)
    with Writer(url) as writer:
        ran = command(kit, url, target)
    must(ran, what)
    rejected = [text for code, text in writer.failed if code != "42703"]
    problems = []
    if rejected:
        problems.append("%d of %d writes rejected: %s" % (len(rejected), writer.done, "; ".join(sorted(set(rejected))[:3])))
    if writer.unmatched:
        problems.append("%d writes found no row: %s" % (len(writer.unmatched), "; ".join(writer.unmatched[:3])))
    conn = connect(url)
    try:
        names = spans_id_and_name(conn.cursor())
    finally:
        conn.close()
    final = {i: name for i, name in sql(url, 'select "%s"::text, "%s" from %s.spans' % (names["id"], names["name"], SCHEMA))}
    missing = sorted(set(writer.expected) - set(final), key=int)
    extra = sorted(set(final) - set(writer.expected), key=int)
    changed = sorted((i for i in set(final) & set(writer.expected) if final[i] != writer.expected[i]), key=int)
    for label, ids in (("missing (written or kept, not there)", missing), ("there but deleted", extra),
                       ("with a value the writer did not leave", changed)):
        if ids:
            problems.append("%d rows %s, e.g. id %s" % (len(ids), label, ", ".join(ids[:5])))
    if problems:
        raise KitFailure("%s (%d writes): %s" % (what, writer.done, " | ".join(problems)))
    return writer.done


# --- operator objects in front of a revision ------------------------------------------

OPERATOR_VIEW = "kit_span_names"            # a view on spans
OPERATOR_CHECK = "kit_kind_known"           # a CHECK constraint of the operator's on spans
OPERATOR_INDEX = "kit_ix_spans_name_kind"   # an index of the operator's on spans


def add_operator_objects(url: str, role: str) -> None:
    """A view on spans, a CHECK, a column-level INSERT grant to `role` (the
    columns the worker writes) and an index, as an operator adds them."""
    conn = connect(url)
    try:
        cursor = conn.cursor()
        columns = re.search(r"\(([^)]*)\) SELECT", worker_insert(cursor, "spans", "0 days")).group(1)
        for statement in (
                "CREATE VIEW %s.%s AS SELECT id, name, kind FROM %s.spans" % (SCHEMA, OPERATOR_VIEW, SCHEMA),
                "ALTER TABLE %s.spans ADD CONSTRAINT %s CHECK (kind IS NULL OR kind LIKE 'SPAN_KIND_%%')"
                % (SCHEMA, OPERATOR_CHECK),
                "GRANT USAGE ON SCHEMA %s TO %s" % (SCHEMA, role),
                "GRANT INSERT (%s, kind) ON %s.spans TO %s" % (columns, SCHEMA, role),
                "GRANT USAGE ON ALL SEQUENCES IN SCHEMA %s TO %s" % (SCHEMA, role),
                "CREATE INDEX %s ON %s.spans (name, kind)" % (OPERATOR_INDEX, SCHEMA)):
            cursor.execute(statement)
    finally:
        conn.close()


def operator_objects_broken(url: str, role: str, names_kept: bool) -> List[str]:
    """What of the operator's objects no longer works on otel.spans: the view
    shows a new row, the CHECK rejects a new row that breaks it, the role
    inserts with its column grant, the index is on otel.spans (under its own
    name when names_kept). Every write is rolled back."""
    broken = []
    conn = connect(url, autocommit=False)
    try:
        cursor = conn.cursor()
        attempts = (
            ("the view %s shows a new row" % OPERATOR_VIEW, lambda: _view_sees_new_row(cursor)),
            ("the CHECK %s applies to a new row" % OPERATOR_CHECK, lambda: _check_rejects_new_row(cursor)),
            ("the column grant lets %s insert" % role, lambda: _role_inserts(cursor, role)),
            ("the index %s is on spans" % OPERATOR_INDEX, lambda: _index_on_spans(cursor, names_kept)))
        for what, attempt in attempts:
            try:
                problem = attempt()
            except Exception as exc:
                problem = _error_text(exc)
            finally:
                conn.rollback()
            if problem:
                broken.append("%s: %s" % (what, problem))
    finally:
        conn.close()
    return broken


def _view_sees_new_row(cursor) -> Optional[str]:
    for label, stamp in WRITE_STAMPS:
        cursor.execute(worker_insert(cursor, "spans", stamp) + " RETURNING id")
        new_id = cursor.fetchone()[0]
        cursor.execute("select count(*) from %s.%s where id = %%s" % (SCHEMA, OPERATOR_VIEW), (new_id,))
        if cursor.fetchone()[0] != 1:
            return "a row stamped %s inserted into spans is not in the view" % label
    return None


def _check_rejects_new_row(cursor) -> Optional[str]:
    """A row breaking the CHECK, stamped now, +3 and +30 days (wherever it is
    routed), is rejected by that CHECK; each try in a savepoint."""
    for label, stamp in WRITE_STAMPS:
        cursor.execute("SAVEPOINT kit_check")
        try:
            cursor.execute(worker_insert(cursor, "spans", stamp, overrides={"kind": "'kit-bad-kind'"}))
        except Exception as exc:
            if _sqlstate(exc) != "23514" or OPERATOR_CHECK not in _error_text(exc):
                return "a row stamped %s: %s" % (label, _error_text(exc))
            cursor.execute("ROLLBACK TO SAVEPOINT kit_check")
            continue
        return "a row stamped %s with kind 'kit-bad-kind' was accepted" % label
    return None


def _role_inserts(cursor, role: str) -> Optional[str]:
    cursor.execute("SET LOCAL ROLE %s" % role)
    for _, stamp in WRITE_STAMPS:
        cursor.execute(worker_insert(cursor, "spans", stamp, overrides={"kind": "'SPAN_KIND_SERVER'"}))
    return None


def _index_on_spans(cursor, names_kept: bool) -> Optional[str]:
    cursor.execute("""select c.relname from pg_index x join pg_class c on c.oid = x.indexrelid
                      where x.indrelid = to_regclass(%s) and pg_get_indexdef(x.indexrelid) like %s""",
                   ("%s.spans" % SCHEMA, "%(name, kind)"))
    found = [row[0] for row in cursor.fetchall()]
    if not found:
        return "no index on (name, kind)"
    if names_kept and OPERATOR_INDEX not in found:
        return "it is named %s" % ", ".join(found)
    return None


def check_operator_objects(kit: Kit, revision: str) -> str:
    """The operator's view, CHECK, column grant and index on spans in front of
    the revision: its upgrade and then its downgrade each either carry them
    (still working, the index's name given back by the downgrade) or refuse
    (exit 8) with nothing changed. Returns what happened."""
    below = below_of(kit, revision)
    role = "kit_worker_" + uuid.uuid4().hex[:8]
    url = store_at(kit, below)
    sql(kit.server.admin_url, "CREATE ROLE %s NOLOGIN" % role)
    try:
        add_operator_objects(url, role)
        before = state(kit, url)
        up = upgrade(kit, url, revision)
        if up.returncode == 8:
            assert_same(before, state(kit, url), "upgrade to %s refused (exit 8) with operator objects" % revision)
            return "upgrade refused"
        must(up, "upgrade to %s with operator objects" % revision)
        broken = operator_objects_broken(url, role, names_kept=False)
        if broken:
            raise KitFailure("upgrade to %s with operator objects: %s" % (revision, "; ".join(broken)))
        at_revision = state(kit, url)
        down = downgrade(kit, url, below)
        if down.returncode == 8:
            assert_same(at_revision, state(kit, url), "downgrade of %s refused (exit 8) with operator objects" % revision)
            return "carried up, downgrade refused"
        must(down, "downgrade of %s with operator objects" % revision)
        broken = operator_objects_broken(url, role, names_kept=True)
        if broken:
            raise KitFailure("downgrade of %s with operator objects: %s" % (revision, "; ".join(broken)))
        return "carried up and down"
    finally:
        sql(url, "DROP OWNED BY %s" % role)
        sql(kit.server.admin_url, "DROP ROLE %s" % role)


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
    assert check_crash_at_every_statement(kit, revision, direction) >= 1  # one statement is a revision too


@pytest.mark.parametrize("revision", REVISIONS)
def test_a_downgrade_refuses_or_keeps_data_in_what_the_revision_added(kit, revision):
    assert check_downgrade_keeps_added_data(kit, revision) in ("refused", "kept", "adds nothing")


# --- what the field found (issue 19): time after a crash, live failures, settings, outliers, writers, objects ---

@pytest.mark.parametrize("direction", ["upgrade", "downgrade"])
@pytest.mark.parametrize("revision", REVISIONS)
def test_a_run_that_fails_alive_leaves_a_writable_store(kit, revision, direction):
    assert check_live_failure_leaves_writable(kit, revision, direction) > 0


@pytest.mark.parametrize("revision", REVISIONS)
def test_an_interrupted_downgrade_then_upgrade_converges(kit, revision):
    assert check_interrupted_downgrade_then_upgrade(kit, revision) >= 1


def test_walks_under_a_daylight_saving_zone_and_other_date_styles(kit):
    check_walks_under_field_settings(kit)


@pytest.mark.parametrize("revision", REVISIONS)
def test_offline_script_under_a_daylight_saving_zone_and_other_date_styles(kit, revision, tmp_path):
    check_offline_under_field_settings(kit, revision, str(tmp_path))


def test_outlying_timestamps_go_up_and_down_every_revision(kit):
    check_outlying_timestamps(kit)


@pytest.mark.parametrize("direction", ["upgrade", "downgrade"])
@pytest.mark.parametrize("revision", REVISIONS)
def test_a_writer_during_the_run_gets_what_it_wrote(kit, revision, direction):
    assert check_writer_during(kit, revision, direction) > 40


@pytest.mark.parametrize("revision", REVISIONS)
def test_operator_objects_are_carried_or_refused(kit, revision):
    assert check_operator_objects(kit, revision) in ("carried up and down", "carried up, downgrade refused",
                                                     "upgrade refused")


# --- the kit's time: released revisions get a sample of their crash points (issue 22, item 9) ---

def test_the_released_list_names_the_oldest_revisions_in_order():
    listed = release_list.released()
    assert list(listed) == REVISIONS[:len(listed)], \
        "tests/released_revisions.txt must list the oldest revisions in order: .venv/bin/python tests/released.py record"
    assert all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in listed.values())


def test_a_released_revision_that_changed_gets_every_crash_point(tmp_path, monkeypatch):
    """Sampled while its script and the otelmig modules it imports are as
    released (the contract otelmig/schema.py aside); every point once either changed."""
    monkeypatch.delenv(release_list.FULL_ENV, raising=False)
    root = str(tmp_path / "repo")
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "build_pyz.py"), "copy-source", REPO, root], check=True)
    listed = str(tmp_path / "released.txt")
    release_list.record(root, listed)
    revision, every = REVISIONS[0], list(range(1, 31))

    def points():
        return release_list.crash_points(root, revision, 30, "crash upgrade", listed)
    sampled = points()
    assert len(sampled) == release_list.SAMPLED and sampled[0] == 1 and sampled[-1] == 30 and sampled == points()
    assert release_list.crash_points(root, revision, 3, "crash upgrade", listed) == [1, 2, 3]
    for path, changed in ((release_list.script_of(root, revision), every), (os.path.join(root, "otelmig", "ddl.py"), every),
                          (os.path.join(root, "otelmig", "schema.py"), sampled)):
        original = open(path).read()
        with open(path, "a") as handle:
            handle.write("# changed\n")
        assert points() == changed, path
        with open(path, "w") as handle:
            handle.write(original)
    assert points() == sampled
    monkeypatch.setenv(release_list.FULL_ENV, "1")
    assert points() == every
    monkeypatch.setenv(release_list.FULL_ENV, "")
    samples = set()
    for day in range(1, 8):  # the seed (the UTC date by default) moves the sample: other points each day
        monkeypatch.setenv(release_list.SEED_ENV, "2026-12-%02d" % day)
        samples.add(tuple(points()))
    assert len(samples) > 1 and all(len(one) == release_list.SAMPLED for one in samples)


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


@pytest.mark.parametrize("broken_kit", [("drops_data.py", "kit000000004")], indirect=True)
def test_the_kit_fails_a_downgrade_that_drops_data_without_a_refusal(broken_kit):
    check_up_down_up(broken_kit, "kit000000004")  # on its own it is a correct revision...
    with pytest.raises(KitFailure, match=r"downgrade of kit000000004 with data in what it added \(spans.kit_note\): "
                                         r"it dropped the data in otel.spans.kit_note \(1000 rows\) without a refusal"):
        check_downgrade_keeps_added_data(broken_kit, "kit000000004")


@pytest.mark.parametrize("broken_kit", [("leaves_a_check.py", "kit000000003")], indirect=True)
def test_the_kit_fails_a_revision_that_leaves_a_check_when_interrupted(broken_kit):
    """CHECK (start_time < now() + 2 days, a constant) committed before a
    concurrent build and dropped after it: every rerun converges, but the
    store a crash or a live failure (the lock budget's exit 9) leaves rejects
    rows stamped 3 days ahead until the rerun."""
    with pytest.raises(KitFailure, match=r"the reruns converged, but .* crash points left a store that rejects .*"
                                         r"stamped now \+ 3 days: 23514 .*kit_cutoff"):
        check_crash_at_every_statement(broken_kit, "kit000000003", "upgrade")
    with pytest.raises(KitFailure, match=r"live failures left a store that rejects .*lock budget.*kit_cutoff"):
        check_live_failure_leaves_writable(broken_kit, "kit000000003", "upgrade", ways=("lock budget",))


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
