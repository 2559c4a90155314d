"""`./test.sh --dev-db` (docs/authoring.md): a throwaway development server
that prints a ready POSTGRES_URL, keeps it until Ctrl-C, then stops it and
removes its files. Run as an author runs it: the script, in its own process
group (a terminal's Ctrl-C reaches the whole foreground group)."""

import os
import re
import signal
import subprocess
import time

from conftest import REPO, sql

DEADLINE = 120  # seconds: test.sh checks the venv first; a loaded 2-core machine


def start_dev_db():
    return subprocess.Popen([os.path.join(REPO, "test.sh"), "--dev-db"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES", "OTEL"))})


def ready_url(proc) -> str:
    deadline = time.monotonic() + DEADLINE
    for line in proc.stdout:
        found = re.match(r"^POSTGRES_URL=(\S+)$", line.rstrip("\n"))
        if found:
            return found.group(1)
        assert time.monotonic() < deadline, "no POSTGRES_URL line in time"
    raise AssertionError("--dev-db ended without a POSTGRES_URL line: %s" % proc.stderr.read())


def test_dev_db_prints_a_ready_url_and_stops_cleanly_on_ctrl_c():
    proc = start_dev_db()
    try:
        url = ready_url(proc)
        assert url.endswith("/otel_dev")
        assert sql(url, "select current_database()") == [["otel_dev"]]  # ready when printed
        sql(url, "create table kept (x int)")
        time.sleep(1)
        assert proc.poll() is None  # kept until Ctrl-C
        root = sql(url, "show data_directory")[0][0].rsplit("/", 1)[0]
        assert os.path.isdir(root)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: to the whole foreground group
        assert proc.wait(timeout=DEADLINE) == 0
        assert "stopped, its files removed" in proc.stderr.read()
        assert not os.path.exists(root)
        try:
            sql(url, "select 1")
        except Exception as exc:
            assert "refused" in str(exc) or "Errno" in str(exc) or "connect" in str(exc).lower(), exc
        else:
            raise AssertionError("the server still answers after Ctrl-C")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
