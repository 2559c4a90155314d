"""The built dist/otelmig.pyz, the file operators run, against the test
cluster under every CPython 3.9-3.13 on this machine."""

import glob
import os

import pytest

from conftest import load_legacy, run_pyz, table_rows
from helpers import SPAN_COLUMNS_LEGACY, head_names
from pgcluster import pgbin, selected

PYENV = os.path.join(os.path.expanduser("~"), ".pyenv", "versions")
# Every CPython on the default server; on the other majors (./test.sh --pg,
# CI) the oldest and the newest: which Python runs the pyz does not depend on
# the server's major, and CI's time is bounded.
MINORS = range(9, 14) if selected() == pgbin.DEFAULT else (9, 13)


def python_for(minor: int):
    found = sorted(glob.glob(os.path.join(PYENV, "3.%d.*" % minor, "bin", "python3")))
    return found[-1] if found else None


@pytest.fixture(scope="module")
def shiv_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("shiv"))


@pytest.mark.parametrize("minor", MINORS)
def test_pyz_adopts_and_round_trips_on_each_python(pyz, shiv_root, db_url, minor):
    python = python_for(minor)
    if python is None:
        pytest.skip("CPython 3.%d is not installed here" % minor)
    env = {"SHIV_ROOT": shiv_root}
    load_legacy(db_url, traces=500)
    rows = table_rows(db_url, "otel", "spans", SPAN_COLUMNS_LEGACY)

    def pyz_run(*args):
        return run_pyz(pyz, *args, url=db_url, env=env, python=python)

    assert "Python 3.%d." % minor in pyz_run("--version").out
    assert pyz_run("check").code == 4
    upgraded = pyz_run("upgrade")
    assert upgraded.code == 0, upgraded.err
    assert pyz_run("check").code == 0
    verified = pyz_run("verify", "--format", "json")
    assert verified.code == 0 and verified.json()["ok"] is True, verified.out
    assert pyz_run("rollback").code == 0
    assert pyz_run("upgrade").code == 0
    assert table_rows(db_url, "otel", "spans", head_names(SPAN_COLUMNS_LEGACY)) == rows


def test_pyz_errors_are_one_line_without_traceback(pyz, shiv_root):
    result = run_pyz(pyz, "upgrade", url="postgresql://u:pyz-secret-pw@127.0.0.1:1/d", env={"SHIV_ROOT": shiv_root})
    assert result.code == 3
    assert result.err.count("\n") == 1 and "Traceback" not in result.err and "pyz-secret-pw" not in result.err


def test_pyz_offline_sql_without_database(pyz, shiv_root):
    result = run_pyz(pyz, "upgrade", "--sql", env={"SHIV_ROOT": shiv_root})
    assert result.code == 0 and "CREATE INDEX CONCURRENTLY" in result.out
