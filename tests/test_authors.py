"""The authors' path (issue 14) and one source of revision truth (issue 12).

Plain `alembic` run from a fresh copy of the repository, with POSTGRES_URL,
does what `otelmig upgrade` / `rollback` do, under the same migration lock,
keeps the data-loss guard and never prints the password; pytest-alembic's
standard tests run against our revisions on the real server; the head and the
known revisions follow the revision scripts.
"""

import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import urllib.parse
import uuid

import pytest
from pytest_alembic.tests import test_single_head_revision, test_up_down_consistency, test_upgrade  # noqa: F401

from conftest import REPO, catalog_snapshot, connect, load_legacy, run_cli, sql
from helpers import BASELINE, error_line, wait_for
from otelmig import revisions, settings as settings_mod
from otelmig.lock import MigrationLock
from otelmig.revisions import HEAD_REVISION, KNOWN_REVISIONS

VENV_BIN = os.path.dirname(sys.executable)
ALEMBIC = os.path.join(VENV_BIN, "alembic")
DEADLINE = 120.0  # seconds: generous, for a loaded 2-core machine


# --- helpers ---------------------------------------------------------------

@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A fresh copy of the repository as a clone has it (git-tracked and
    unignored files: no .venv, no dist, no build output)."""
    dest = tmp_path_factory.mktemp("clone")
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "build_pyz.py"), "copy-source", REPO, str(dest)],
                   check=True)
    assert os.path.exists(os.path.join(dest, "alembic.ini"))
    assert not os.path.exists(os.path.join(dest, ".venv"))
    return str(dest)


def author_env(url, **extra):
    """What an author's shell has: the venv's alembic on PATH, POSTGRES_URL; no PG*/OTEL* leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES", "OTEL"))}
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    if url is not None:
        env["POSTGRES_URL"] = url
    env.update(extra)
    return env


def alembic(checkout, url, *args, **extra):
    proc = subprocess.run(["alembic", *args], cwd=checkout, env=author_env(url, **extra),
                          capture_output=True, text=True, timeout=600)
    return proc


def start_alembic(checkout, url, log_path, *args, **extra):
    log = open(log_path, "w")
    proc = subprocess.Popen(["alembic", *args], cwd=checkout, env=author_env(url, **extra),
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    log.close()
    return proc


@pytest.fixture
def twin_url(server):
    """A second fresh database, for the otelmig run to compare with."""
    name = "t_" + uuid.uuid4().hex[:12]
    sql(server.admin_url, "CREATE DATABASE %s" % name)
    yield server.url(name)
    sql(server.admin_url, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)


def version_rows(url):
    if sql(url, "select to_regclass('otel.alembic_version')") == [[None]]:
        return None
    return sql(url, "select version_num from otel.alembic_version")


def data(url):
    """Every row of both tables, minus the columns the database stamps with now()."""
    if sql(url, "select to_regclass('otel.spans')") == [[None]]:
        return None
    return [sql(url, "select to_jsonb(t) - 'created_at' - 'ingested_at' from otel.%s t order by to_jsonb(t)::text" % table)
            for table in ("traces", "spans")]


def state(url):
    return catalog_snapshot(url), version_rows(url), data(url)


def prepare(url, kind):
    if kind == "legacy":
        load_legacy(url, traces=40, spans_per_trace=3)
    elif kind == "head":
        load_legacy(url, traces=40, spans_per_trace=3)
        assert run_cli("upgrade", url=url).code == 0


def secrets_of(url):
    password = urllib.parse.unquote(urllib.parse.urlsplit(url).password)
    return {password, urllib.parse.quote(password, safe=""), urllib.parse.quote_plus(password, safe="")}


def assert_no_secret(url, *texts):
    for text in texts:
        for secret in secrets_of(url):
            assert secret not in text


# Alembic's exit status for a FAILED line (docs/cli.md): sys.exit(-1).
ALEMBIC_FAILED = 255


def assert_one_failed_line(proc):
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == ALEMBIC_FAILED, proc.returncode
    assert len(lines) == 1 and lines[0].startswith("FAILED: "), proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


# --- plain alembic does what otelmig does ------------------------------------

@pytest.mark.parametrize("kind", ["empty", "legacy", "head"])
def test_plain_alembic_matches_otelmig(checkout, db_url, twin_url, kind):
    prepare(db_url, kind)
    prepare(twin_url, kind)

    proc = alembic(checkout, db_url, "upgrade", "head")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert run_cli("upgrade", url=twin_url).code == 0
    assert state(db_url) == state(twin_url)
    assert version_rows(db_url) == [[HEAD_REVISION]]
    assert run_cli("verify", url=db_url).code == 0

    proc = alembic(checkout, db_url, "downgrade", "-1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert run_cli("rollback", url=twin_url).code == 0
    assert state(db_url) == state(twin_url)
    below = KNOWN_REVISIONS[:-1]
    assert version_rows(db_url) == ([[below[-1]]] if below else [])
    assert_no_secret(db_url, proc.stdout, proc.stderr)


def test_plain_alembic_upgrade_from_empty_creates_the_schema(checkout, db_url):
    """The version table lives in the target schema, which must exist before Alembic makes it."""
    proc = alembic(checkout, db_url, "upgrade", "head", OTEL_DB_SCHEMA="otel_author")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sql(db_url, "select version_num from otel_author.alembic_version") == [[HEAD_REVISION]]
    assert run_cli("verify", "--schema", "otel_author", url=db_url).code == 0
    assert sql(db_url, "select to_regnamespace('otel')") == [[None]]


# --- the migration lock --------------------------------------------------------

def hold_migration_lock(url, schema="otel"):
    return MigrationLock(settings_mod.resolve_conninfo(url, {}), schema, 5.0, lambda line: None)


def test_plain_alembic_refuses_while_otelmig_holds_the_lock(checkout, db_url):
    with hold_migration_lock(db_url):
        proc = alembic(checkout, db_url, "upgrade", "head", OTELMIG_LOCK_WAIT="1")
    assert proc.returncode == ALEMBIC_FAILED, proc.returncode
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED: ")]
    assert len(failed) == 1 and "another otelmig is migrating schema otel" in failed[0], proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert sql(db_url, "select to_regnamespace('otel')") == [[None]]  # nothing changed


def test_plain_alembic_waits_for_otelmig(checkout, db_url, tmp_path):
    log = tmp_path / "alembic.log"
    with hold_migration_lock(db_url):
        proc = start_alembic(checkout, db_url, log, "upgrade", "head")
        try:
            wait_for(lambda: "waiting for the migration lock on schema otel" in log.read_text(), "alembic to wait",
                     DEADLINE)
            assert sql(db_url, "select to_regnamespace('otel')") == [[None]]
        except BaseException:
            proc.kill()
            raise
    assert proc.wait(timeout=DEADLINE) == 0, log.read_text()
    assert version_rows(db_url) == [[HEAD_REVISION]]
    assert_no_secret(db_url, log.read_text())


def test_otelmig_waits_for_plain_alembic(checkout, db_url, tmp_path):
    """The same lock the other way round: an author's upgrade, stuck behind a
    reader, keeps `otelmig upgrade` out until it is done."""
    load_legacy(db_url, traces=10)
    blocker = connect(db_url, autocommit=False)
    blocker.cursor().execute("lock table otel.traces, otel.spans in access share mode")
    log = tmp_path / "alembic.log"
    proc = start_alembic(checkout, db_url, log, "upgrade", "head")
    try:
        wait_for(lambda: sql(db_url, "select count(*) from pg_stat_activity where datname = current_database() "
                                     "and wait_event_type = 'Lock'") != [[0]], "alembic to queue behind the reader",
                 DEADLINE)
        busy = run_cli("upgrade", "--lock-wait", "1", url=db_url)
        assert busy.code == 9, busy.err
        assert "another otelmig is migrating schema otel" in error_line(busy.err), busy.err
    finally:
        blocker.rollback()
        blocker.close()
    assert proc.wait(timeout=DEADLINE) == 0, log.read_text()
    again = run_cli("upgrade", url=db_url)
    assert again.code == 0 and "nothing to do" in again.out, again.out + again.err


# --- the data-loss guard --------------------------------------------------------

def test_plain_alembic_keeps_the_data_loss_guard(checkout, db_url):
    load_legacy(db_url, traces=10)
    assert alembic(checkout, db_url, "upgrade", BASELINE).returncode == 0  # the guard is the baseline's
    sql(db_url, "update otel.spans set status_message = 'boom' where id = 1")
    before = state(db_url)

    line = assert_one_failed_line(alembic(checkout, db_url, "downgrade", "-1"))
    assert "status_message" in line and "OTELMIG_ALLOW_DATA_LOSS=1" in line
    assert state(db_url) == before  # refused before anything changed

    line = assert_one_failed_line(alembic(checkout, db_url, "downgrade", "-1", OTELMIG_ALLOW_DATA_LOSS="maybe"))
    assert "OTELMIG_ALLOW_DATA_LOSS must be 1 or 0" in line

    proc = alembic(checkout, db_url, "downgrade", "-1", OTELMIG_ALLOW_DATA_LOSS="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert version_rows(db_url) == []
    assert sql(db_url, "select count(*) from otel.spans") == [[50]]


# --- the password never shows -----------------------------------------------------

def with_password(url, password, port=None):
    parts = urllib.parse.urlsplit(url)
    netloc = "%s:%s@%s:%s" % (parts.username, urllib.parse.quote(password, safe=""), parts.hostname,
                              port if port is not None else parts.port)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


SENTINEL = "Sentinel-pw%:@/?-" + uuid.uuid4().hex[:8]


def test_password_never_printed_on_success(checkout, db_url):
    for args in (["upgrade", "head"], ["current"], ["history", "-i"], ["downgrade", "-1"], ["upgrade", "head"]):
        proc = alembic(checkout, db_url, *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert_no_secret(db_url, proc.stdout, proc.stderr)
    assert version_rows(db_url) == [[HEAD_REVISION]]


@pytest.mark.parametrize("case", ["wrong password", "unreachable", "bad port", "read-only"])
def test_password_never_printed_on_failure(checkout, db_url, server, case):
    url = with_password(db_url, SENTINEL)
    if case == "unreachable":
        url = with_password(db_url, SENTINEL, port=1)
    elif case == "bad port":
        url = with_password(db_url, SENTINEL, port="notaport")
    elif case == "read-only":
        url = db_url
        database = urllib.parse.urlsplit(db_url).path.lstrip("/")
        sql(server.admin_url, "ALTER DATABASE %s SET default_transaction_read_only = on" % database)
    proc = alembic(checkout, url, "upgrade", "head")
    line = assert_one_failed_line(proc)
    expected = {"wrong password": "login refused", "unreachable": "connection refused",
                "bad port": "invalid port", "read-only": "read-only"}[case]
    assert expected in line
    assert_no_secret(url, proc.stdout, proc.stderr)
    assert_no_secret(with_password(db_url, SENTINEL), proc.stdout, proc.stderr)
    assert sql(db_url, "select to_regnamespace('otel')") == [[None]]


# --- pytest-alembic's standard tests ---------------------------------------------
# test_single_head_revision, test_upgrade and test_up_down_consistency are
# imported above and run here, on a fresh database of the real server, through
# the repository's alembic.ini and migrations/env.py (an Engine handed in).
# test_model_definitions_match_ddl is not run: it compares autogenerate against
# SQLAlchemy models, and otelmig has none (target_metadata is None; the head
# contract is otelmig/schema.py, checked by `otelmig verify`), so it could not fail.

@pytest.fixture
def alembic_config():
    return {"file": os.path.join(REPO, "alembic.ini")}


@pytest.fixture
def alembic_engine(db_url):
    import sqlalchemy

    info = settings_mod.resolve_conninfo(db_url, {})
    engine = sqlalchemy.create_engine(sqlalchemy.URL.create(
        "postgresql+pg8000", username=info.user, password=info.password, host=info.host, port=info.port,
        database=info.database))
    yield engine
    engine.dispose()


def test_pytest_alembic_ran_against_the_real_database(alembic_runner, db_url):
    """The standard tests above are not vacuous: the runner drives our env.py on this database."""
    alembic_runner.migrate_up_to("heads")
    assert version_rows(db_url) == [[HEAD_REVISION]]
    assert run_cli("verify", url=db_url).code == 0
    alembic_runner.migrate_down_to("base")
    assert version_rows(db_url) == []


def test_env_py_takes_a_connection_too(db_url):
    """A Connection handed in belongs to its caller; env.py still prepares the schema."""
    import sqlalchemy
    from alembic import command
    from alembic.config import Config

    info = settings_mod.resolve_conninfo(db_url, {})
    engine = sqlalchemy.create_engine(sqlalchemy.URL.create(
        "postgresql+pg8000", username=info.user, password=info.password, host=info.host, port=info.port,
        database=info.database))
    try:
        with engine.connect() as connection:
            config = Config(os.path.join(REPO, "alembic.ini"))
            config.attributes.update(connection=connection, schema="otel_conn")
            command.upgrade(config, "head")
    finally:
        engine.dispose()
    assert sql(db_url, "select version_num from otel_conn.alembic_version") == [[HEAD_REVISION]]


# --- one source of revision truth -----------------------------------------------

def revision_file(revision, down, doc="A trivial revision."):
    return textwrap.dedent('''\
        """%s

        Revision ID: %s
        """
        from otelmig import migration_api

        revision = %r
        down_revision = %r
        branch_labels = None
        depends_on = None


        def upgrade_steps(n):
            return []


        def downgrade_steps(n):
            return []


        def upgrade():
            migration_api.run(upgrade_steps)


        def downgrade():
            migration_api.run(downgrade_steps)
        ''') % (doc, revision, revision, down)


def versions_copy(tmp_path, extra):
    """The real revision scripts plus extra {file name: text}."""
    directory = tmp_path / "versions"
    shutil.copytree(revisions.versions_dir(), directory, ignore=shutil.ignore_patterns("__pycache__"))
    for name, text in extra.items():
        (directory / name).write_text(text)
    return str(directory)


def test_head_follows_a_new_revision(tmp_path):
    directory = versions_copy(tmp_path, {"aaaa00000001_next.py": revision_file("aaaa00000001", HEAD_REVISION)})
    assert revisions.load(directory) == ("aaaa00000001", KNOWN_REVISIONS + ("aaaa00000001",))


def test_head_follows_branches_and_a_merge(tmp_path):
    directory = versions_copy(tmp_path, {
        "b1_left.py": revision_file("bbbb0000000b", HEAD_REVISION),
        "b2_right.py": revision_file("aaaa0000000a", HEAD_REVISION),
    })
    with pytest.raises(revisions.RevisionScriptError, match="2 heads"):
        revisions.load(directory)
    with open(os.path.join(directory, "m_merge.py"), "w") as handle:
        handle.write(revision_file("cccc0000000c", ("bbbb0000000b", "aaaa0000000a")))
    head, known = revisions.load(directory)
    assert head == "cccc0000000c"
    assert known == KNOWN_REVISIONS + ("aaaa0000000a", "bbbb0000000b", "cccc0000000c")


@pytest.mark.parametrize("text, problem", [
    ('revision = "x1"\n', "no down_revision"),
    ('revision = "x1"\ndown_revision = some_function()\n', "down_revision must be"),
    ('revision = "x1"\ndown_revision = "nowhere"\n', "which no script declares"),
])
def test_a_broken_script_is_named(tmp_path, text, problem):
    directory = versions_copy(tmp_path, {"x1_broken.py": text})
    with pytest.raises(revisions.RevisionScriptError, match=problem):
        revisions.load(directory)


def test_history_walks_through_a_merge(tmp_path, monkeypatch):
    """rollback, plan and --sql walk Alembic's revision map: a merge revision
    (two down revisions) must not break them."""
    from otelmig import scripts

    root = tmp_path / "migrations"
    shutil.copytree(scripts.migrations_dir(), root, ignore=shutil.ignore_patterns("__pycache__"))
    for name, text in {"b1_left.py": revision_file("bbbb0000000b", HEAD_REVISION),
                       "b2_right.py": revision_file("aaaa0000000a", HEAD_REVISION),
                       "m_merge.py": revision_file("cccc0000000c", ("bbbb0000000b", "aaaa0000000a")),
                       "d_after.py": revision_file("dddd0000000d", "cccc0000000c")}.items():
        (root / "versions" / name).write_text(text)
    monkeypatch.setattr(scripts, "migrations_dir", lambda: str(root))
    settings = settings_mod.Settings(conninfo=None)

    chain = [s.revision for s in scripts.revisions_between(settings, None, "dddd0000000d")]
    assert chain[:len(KNOWN_REVISIONS)] == list(KNOWN_REVISIONS)
    assert sorted(chain[len(KNOWN_REVISIONS):-2]) == ["aaaa0000000a", "bbbb0000000b"]
    assert chain[-2:] == ["cccc0000000c", "dddd0000000d"]
    assert [s.revision for s in scripts.revisions_between(settings, "cccc0000000c", "dddd0000000d")] \
        == ["dddd0000000d"]
    assert scripts.resolve_revision(settings, "-1", "dddd0000000d") == "cccc0000000c"
    assert scripts.resolve_revision(settings, "-2", "dddd0000000d") in ("aaaa0000000a", "bbbb0000000b")
    depth = len(KNOWN_REVISIONS) + 4
    assert scripts.resolve_revision(settings, "-%d" % depth, "dddd0000000d") is None  # back to base
    with pytest.raises(Exception, match="only %d exist below it" % depth):
        scripts.resolve_revision(settings, "-%d" % (depth + 1), "dddd0000000d")


# --- docs/authoring.md's lines, as a newcomer runs them ------------------------------

def documented_author_lines():
    """The `alembic` lines of the first shell block of docs/authoring.md, the authors' path."""
    with open(os.path.join(REPO, "docs", "authoring.md"), encoding="utf-8") as handle:
        page = handle.read()
    block = page.split("```sh\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line.split(" #", 1)[0]) for line in block.splitlines() if line.startswith("alembic ")]


def test_documented_authors_path(tmp_path, db_url):
    """docs/authoring.md's commands, run in order in a fresh copy: a new revision
    file is all it takes for otelmig itself to know the new head."""
    copy = tmp_path / "repo"
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "build_pyz.py"), "copy-source", REPO, str(copy)],
                   check=True)
    lines = documented_author_lines()
    assert [line[:2] for line in lines] == [["alembic", "revision"], ["alembic", "upgrade"], ["alembic", "downgrade"]]
    for line in lines:
        proc = alembic(str(copy), db_url, *line[1:])
        assert proc.returncode == 0, (line, proc.stdout + proc.stderr)
    new_head, known = revisions.load(str(copy / "migrations" / "versions"))
    assert known == KNOWN_REVISIONS + (new_head,)
    assert version_rows(db_url) == [[HEAD_REVISION]]  # up to the new one, and one back

    def otelmig_from_copy(*args):
        return subprocess.run([sys.executable, "-m", "otelmig", *args], cwd=str(copy), env=author_env(db_url),
                              capture_output=True, text=True, timeout=600)
    assert otelmig_from_copy("heads").stdout.split() == [new_head]
    assert otelmig_from_copy("check").returncode == 5  # behind the new head
    upgraded = otelmig_from_copy("upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert version_rows(db_url) == [[new_head]]
    assert otelmig_from_copy("check").returncode == 0


def test_plain_alembic_refuses_an_incompatible_store_before_the_first_change(checkout, db_url):
    """Issue 19, item 8: the compatibility check `otelmig upgrade` makes runs on the
    authors' path too, before anything is written (not even Alembic's version table)."""
    load_legacy(db_url, traces=10)
    sql(db_url, "CREATE UNIQUE INDEX ix_spans_span_id ON otel.spans (span_id, id)")
    before = state(db_url)

    line = assert_one_failed_line(alembic(checkout, db_url, "upgrade", "head"))
    assert "ix_spans_span_id" in line and "nothing was changed" in line, line
    assert state(db_url) == before and version_rows(db_url) is None

    refused = run_cli("upgrade", url=db_url)
    assert refused.code == 8 and "ix_spans_span_id" in refused.err
    assert state(db_url) == before
