"""A throwaway PostgreSQL cluster for the tests: initdb + pg_ctl in a temp dir,
a free port, SCRAM passwords. The server refuses to run as root, so as root we
run it as the `postgres` OS user. OTELMIG_TEST_PG picks the major (see
selected()); tools/pgbin.py fetches and caches its binaries."""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import pgbin  # noqa: E402


TEST_PG_ENV = "OTELMIG_TEST_PG"


def selected() -> str:
    """Which PostgreSQL the tests run on: OTELMIG_TEST_PG names one of tools/pgbin.py's pins
    (13, 14, 15, 16, 17, 18, 18-minimal); unset, the default (Debian's 15)."""
    return os.environ.get(TEST_PG_ENV, "").strip() or pgbin.DEFAULT


def bindir() -> str:
    try:
        return pgbin.bindir(selected())
    except pgbin.PgBinError as error:
        raise RuntimeError("%s=%s: %s" % (TEST_PG_ENV, selected(), error)) from None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Where clusters live: memory (tmpfs) when there is room, else the temp dir.
# The suite creates and drops many databases (each a copy of a template's
# files, WAL-logged): on tmpfs that costs half the CPU and a third of the time
# of a disk, and nothing of what a test sees changes (fsync is off anyway).
SCRATCH_ENV = "OTELMIG_TEST_PG_DIR"  # a directory to use instead
MEMORY_DIR = "/dev/shm"
MEMORY_FREE_NEEDED = 6 * 1024 ** 3  # bytes; the suite's largest session peaks well below (docs/ci.md)


def scratch_dir():
    """The directory clusters are made in (None: tempfile's default)."""
    if os.environ.get(SCRATCH_ENV):
        return os.environ[SCRATCH_ENV]
    try:
        stats = os.statvfs(MEMORY_DIR)
    except OSError:
        return None
    if os.access(MEMORY_DIR, os.W_OK) and stats.f_bavail * stats.f_frsize >= MEMORY_FREE_NEEDED:
        return MEMORY_DIR
    return None


class Cluster:
    def __init__(self, ssl_files=None, pg: str = None):
        """pg: a tools/pgbin.py name (e.g. "12" to test the refusal of an old server);
        default the selected one (OTELMIG_TEST_PG)."""
        self.bindir = pgbin.bindir(pg) if pg else bindir()
        self.root = tempfile.mkdtemp(prefix="otelmig-pg-", dir=scratch_dir())
        self.data = os.path.join(self.root, "data")
        self.port = free_port()
        self.password = "Pw%" + secrets.token_hex(8) + ":@/?"  # '%', ':' and '@' must all work
        self.user = "postgres"
        self.as_root = os.geteuid() == 0
        if self.as_root:
            os.chmod(self.root, 0o755)
            shutil.chown(self.root, "postgres", "postgres")
        self._reaper = self._start_reaper()

    def _start_reaper(self) -> subprocess.Popen:
        """A watcher that stops the server and removes the directory once this
        process is gone, however it ended (SIGTERM, SIGKILL, a dead xdist
        worker: no finalizer runs then). It waits for EOF on a pipe only this
        process holds (non-inheritable), in its own session so that the
        terminal's Ctrl-C does not end it first. stop() closes the pipe too."""
        prefix = "runuser -u postgres -- " if self.as_root else ""
        # deaf to TERM/INT/HUP (a killed process tree, a terminal's Ctrl-C): only the pipe's end wakes it
        script = ('trap "" TERM INT HUP; cat >/dev/null; [ -f "$1/postmaster.pid" ] && %s"$2/pg_ctl" -D "$1" -m immediate -w stop '
                  '>/dev/null 2>&1; rm -rf "$3"' % prefix)
        return subprocess.Popen(["sh", "-c", script, "reaper", self.data, self.bindir, self.root],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)

    def _run(self, *argv, **kwargs):
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_root else []
        return subprocess.run(prefix + list(argv), check=True, capture_output=True, text=True, **kwargs)

    def start(self, extra_conf: str = "") -> "Cluster":
        pwfile = os.path.join(self.root, "pw")
        with open(pwfile, "w") as handle:
            handle.write(self.password + "\n")
        if self.as_root:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(os.path.join(self.bindir, "initdb"), "-D", self.data, "-U", self.user, "--pwfile", pwfile,
                  "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync")
        os.unlink(pwfile)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as conf:
            conf.write("\nlisten_addresses = '127.0.0.1'\nport = %d\nunix_socket_directories = '%s'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                       "max_connections = 200\nshared_buffers = 128MB\n%s\n" % (self.port, self.root, extra_conf))
        self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-l", os.path.join(self.root, "log"),
                  "-w", "-t", "60", "start")
        return self

    @property
    def major(self) -> int:
        """The server build's major version (from `postgres --version`)."""
        import re
        out = subprocess.run([os.path.join(self.bindir, "postgres"), "--version"], capture_output=True,
                             text=True).stdout
        return int(re.search(r"\(PostgreSQL\)\s+(\d+)", out).group(1))

    def log(self) -> str:
        """The server's log so far ('' before the first start)."""
        try:
            with open(os.path.join(self.root, "log"), errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""

    def reload(self):
        self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "reload")

    def stop(self):
        try:
            self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-m", "immediate", "-w", "stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)
        if self._reaper.poll() is None:
            self._reaper.stdin.close()  # nothing left for it: it finds no server and no directory
            self._reaper.wait()

    def url(self, database: str = "postgres", user: str = None, password: str = None, host="127.0.0.1",
            **query) -> str:
        user = user or self.user
        password = self.password if password is None else password
        text = "postgresql://%s:%s@%s:%d/%s" % (
            urllib.parse.quote(user, safe=""), urllib.parse.quote(password, safe=""), host, self.port, database)
        if query:
            text += "?" + urllib.parse.urlencode(query)
        return text
