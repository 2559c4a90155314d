"""check, current and init_db: the fast probe."""

import os
import subprocess
import sys
import threading
import time

import pytest

import otelmig
from conftest import REPO, load_legacy, run_cli
from helpers import DEADLINE_SECONDS, one_line
from pgcluster import Cluster
from otelmig.revisions import HEAD_REVISION


def test_check_does_not_import_alembic_mako_or_sqlalchemy():
    code = ("import sys, otelmig, otelmig.api, otelmig.cli, otelmig.check, otelmig.state, otelmig.settings, otelmig.db; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'mako', 'sqlalchemy')))")
    out = subprocess.check_output([sys.executable, "-c", code], cwd=REPO, text=True)
    assert out.strip() == "[]"


def test_check_command_path_stays_light(db_url):
    """The whole `check` command, run for real, loads none of them either."""
    code = ("import sys; from otelmig.cli import main; rc = main(['check']); "
            "print(rc, sorted({m.split('.')[0] for m in sys.modules} & {'alembic', 'mako', 'sqlalchemy'}))")
    env = dict(os.environ, POSTGRES_URL=db_url)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, text=True, env=env, capture_output=True).stdout
    assert out.strip().splitlines()[-1] == "4 []"


def test_check_ready_and_json(db_url):
    assert run_cli("upgrade", url=db_url).code == 0
    result = run_cli("check", url=db_url)
    assert result.code == 0 and result.err == ""
    payload = run_cli("check", "--format", "json", url=db_url).json()
    assert payload == {"exit_code": 0, "schema": "otel", "database_revision": HEAD_REVISION,
                       "head": HEAD_REVISION}


def test_check_missing_table_at_head_is_4(db_url):
    assert run_cli("upgrade", url=db_url).code == 0
    from conftest import sql
    sql(db_url, "drop table otel.spans")
    result = run_cli("check", url=db_url)
    assert result.code == 4 and one_line(result.err) and "spans" in result.err


def test_wait_gives_up_at_the_deadline():
    started = time.monotonic()
    result = run_cli("check", "--wait", "2", url="postgresql://u@127.0.0.1:1/d")
    elapsed = time.monotonic() - started
    assert result.code == 3 and one_line(result.err) and "connection refused" in result.err, result
    # It waited (a lower bound, which load cannot break) and then gave up rather
    # than retrying for ever (an upper bound far beyond any stall of a busy machine).
    assert 1.9 <= elapsed < DEADLINE_SECONDS, elapsed


def test_wait_does_not_retry_a_wrong_password(server):
    started = time.monotonic()
    result = run_cli("check", "--wait", str(5 * DEADLINE_SECONDS), url=server.url("postgres", password="wrong"))
    assert result.code == 3 and one_line(result.err) and "password" in result.err, result
    # A retry would sit out the whole --wait; one attempt ends far sooner.
    assert time.monotonic() - started < DEADLINE_SECONDS


@pytest.mark.db  # starts its own cluster
def test_wait_sees_a_server_that_comes_up():
    late = Cluster()
    url = late.url("postgres")

    def start_later():
        time.sleep(1.5)
        late.start()
    starter = threading.Thread(target=start_later)
    starter.start()
    try:
        result = run_cli("check", "--wait", "60", url=url)
        starter.join()
        assert result.code == 4, result  # reached: an empty database is not initialised
    finally:
        starter.join()
        late.stop()


def test_init_db_passes_at_head(db_url):
    assert run_cli("upgrade", url=db_url).code == 0
    assert otelmig.init_db(url=db_url) is None


def test_init_db_raises_with_the_fix(db_url):
    load_legacy(db_url, traces=3)
    with pytest.raises(RuntimeError) as caught:
        otelmig.init_db(url=db_url)
    assert isinstance(caught.value, otelmig.SchemaNotReady)
    assert caught.value.exit_code == 4 and "otelmig.pyz upgrade" in str(caught.value)
    # never creates anything
    from conftest import sql
    assert sql(db_url, "select to_regclass('otel.alembic_version') is null") == [[True]]


def test_init_db_unreachable(db_url):
    with pytest.raises(otelmig.SchemaNotReady) as caught:
        otelmig.init_db(url="postgresql://u:initdb-secret@127.0.0.1:1/d")
    assert caught.value.exit_code == 3 and "initdb-secret" not in str(caught.value)
