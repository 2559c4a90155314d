"""What the operator reads (issue 22 item 6): warnings, waiting lines, the
schema that does not exist, one program name, help, the busy line's holder.
Each runs on a real server, in-process and, where the words matter, the pyz."""

import re
import subprocess
import sys

import pytest

from conftest import REPO, connect, run_cli, run_pyz, sql
from helpers import error_line, one_line

UNREACHABLE = "postgresql://u@127.0.0.1:1/d"


def _runs(pyz, *args, url=None):
    """(program name, result) of the package in-process and of the built pyz."""
    return [("otelmig", run_cli(*args, url=url)), ("otelmig.pyz", run_pyz(pyz, *args, url=url))]


# -- history against an unreachable database -------------------------------------

def test_history_warns_it_could_not_read_the_revision_and_still_lists(pyz):
    for program, result in _runs(pyz, "history", url=UNREACHABLE):
        assert result.code == 0, result  # the list is the bundle's: documented in docs/operations.md
        assert "163d8f446eb9" in result.out and "*" not in result.out, result
        assert result.err.startswith("%s: warning: could not read the database's revision" % program), result.err
        assert "connection refused" in result.err and one_line(result.err), result.err


def test_history_exit_code_is_documented():
    with open(REPO + "/docs/operations.md", encoding="utf-8") as handle:
        text = handle.read()
    assert "`history` exits 0 when the database cannot be read" in text


# -- check --wait says what it waits for ------------------------------------------

def test_check_wait_prints_a_line_per_retry_and_gives_up(pyz):
    for program, result in _runs(pyz, "check", "--wait", "2", url=UNREACHABLE):
        assert result.code == 3, result
        waiting = [line for line in result.err.splitlines() if line.startswith("check: waiting for")]
        assert len(waiting) >= 2, result.err
        assert all("127.0.0.1:1" in line and re.search(r"\d+(\.\d)? s left", line) for line in waiting), waiting
        last = error_line(result.err)
        assert "gave up after 2 s" in last and "connection refused" in last, last


# -- a schema that does not exist ---------------------------------------------------

@pytest.mark.parametrize("command", ["check", "verify", "plan", "current"])
def test_a_schema_that_does_not_exist_is_questioned_not_upgraded(db_url, pyz, command):
    assert run_cli("upgrade", url=db_url).code == 0
    for program, result in _runs(pyz, command, "--schema", "otle", url=db_url):
        assert result.code == 4, result
        line = result.err.strip().splitlines()[-1]
        assert "schema otle does not exist" in line and "intended schema" in line, line
        assert "store here is in schema otel" in line, line
        assert "run `" not in line and "would create a new, empty store in otle" in line, line
    assert sql(db_url, "select count(*) from pg_namespace where nspname = 'otle'") == [[0]]


def test_upgrade_says_it_creates_a_schema_that_did_not_exist(db_url, pyz):
    result = run_pyz(pyz, "upgrade", "--schema", "fresh", url=db_url)
    assert result.code == 0, result
    assert "schema fresh did not exist: created it, with a new, empty store" in result.err + result.out, result
    again = run_pyz(pyz, "upgrade", "--schema", "fresh", url=db_url)
    assert again.code == 0 and "did not exist" not in again.err + again.out, again


# -- one program name ---------------------------------------------------------------

def test_every_message_names_the_program_as_it_was_run(db_url, pyz):
    """`otelmig` installed (or in-process), `otelmig.pyz` for the bundle: never the other one."""
    proc = subprocess.run([REPO + "/.venv/bin/otelmig", "check"], capture_output=True, text=True,
                          env={"POSTGRES_URL": db_url, "PATH": "/usr/bin:/bin"})
    installed = (proc.returncode, proc.stderr)
    bundle, in_process = run_pyz(pyz, "check", url=db_url), run_cli("check", url=db_url)
    for program, other, (code, err) in (("otelmig", "otelmig.pyz", installed),
                                        ("otelmig.pyz", "otelmig ", (bundle.code, bundle.err)),
                                        ("otelmig", "otelmig.pyz", (in_process.code, in_process.err))):
        assert code == 4 and one_line(err), err
        assert err.startswith(program + ": ") and "`%s upgrade`" % program in err, err
        assert other not in err.replace(program + ": ", "", 1).replace("`%s upgrade`" % program, ""), err


def test_no_hard_coded_program_name_in_messages():
    """The name comes from one place (otelmig.errors.PROGRAM)."""
    for name in ("cli", "state", "check", "migrate", "verify", "maintain", "plan", "compat", "preflight"):
        with open("%s/otelmig/%s.py" % (REPO, name), encoding="utf-8") as handle:
            assert "otelmig.pyz" not in handle.read(), name


# -- help -----------------------------------------------------------------------------

def test_every_command_help_says_what_it_does_and_explains_its_arguments():
    from otelmig.cli import build_parser
    commands = next(a for a in build_parser()._subparsers._group_actions).choices
    for name, parser in commands.items():
        text = run_cli(name, "--help").out
        assert parser.description and len(parser.description) > 40, name
        assert " ".join(parser.description.split())[:30] in " ".join(text.split()), name
        for action in parser._positionals._group_actions:
            assert action.help and len(action.help) > 20, (name, action.dest)
    assert "-N" in run_cli("rollback", "--help").out or "N revisions" in run_cli("rollback", "--help").out
    assert "base" in run_cli("stamp", "--help").out and "head" in run_cli("upgrade", "--help").out


def test_top_level_help_exit_codes_come_from_one_table():
    from otelmig.errors import EXIT_MEANINGS, ExitStatus
    text = run_cli("--help").out
    assert set(EXIT_MEANINGS) == set(ExitStatus)
    for status, meaning in EXIT_MEANINGS.items():
        assert "%-4d %s" % (int(status), meaning.split(";")[0][:30]) in text, status


# -- the busy line names the table and the session holding it -------------------------

def test_rollback_busy_line_names_the_table_and_the_holder(db_url):
    assert run_cli("upgrade", url=db_url).code == 0
    holder = connect(db_url, autocommit=False)
    holder.cursor().execute("set application_name = 'nightly-report'")
    holder.cursor().execute("select count(*) from otel.spans")
    pid = sql(db_url, "select pid from pg_stat_activity where application_name = 'nightly-report'")[0][0]
    try:
        proc = subprocess.run([sys.executable, "-m", "otelmig", "rollback", "--lock-timeout", "0.5"], cwd=REPO,
                              env={"POSTGRES_URL": db_url, "PATH": "/usr/bin:/bin"}, capture_output=True,
                              text=True, timeout=120)
    finally:
        holder.rollback()
        holder.close()
    assert proc.returncode == 9, proc
    busy = [line for line in proc.stderr.splitlines() if "a table is busy" in line]
    assert busy, proc.stderr
    assert "otel.spans" in busy[0] and "pid %d" % pid in busy[0], busy[0]
    assert "nightly-report" in busy[0] and "idle in transaction" in busy[0], busy[0]
