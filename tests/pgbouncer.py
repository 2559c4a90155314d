"""A throwaway PgBouncer (Debian's package) in front of the suite's PostgreSQL.

PgBouncer refuses to run as root, so as root we run it as the `postgres` OS
user, from its own ini file in a temp dir, listening on 127.0.0.1 and a free
port. Clients log in with SCRAM; PgBouncer holds the role's SCRAM secret
(read from pg_authid as superuser) in its auth_file and logs in to the server
with SCRAM pass-through, as an operator's PgBouncer would. Any database name
is forwarded (the `*` entry), so every test's fresh database works.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse

from pgcluster import free_port

START_DEADLINE_SECONDS = 30.0


def binary() -> str:
    """The pgbouncer executable; fails (never skips) when it is missing: CI installs it."""
    found = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
    if not found:
        raise RuntimeError("pgbouncer is not installed: apt-get install -y pgbouncer (.ci/run does)")
    return found


def scram_secrets(rows) -> str:
    """auth_file lines from (rolname, rolpassword) rows: "user" "SCRAM-SHA-256$..."."""
    quote = lambda text: '"%s"' % text.replace('"', '""')  # noqa: E731
    return "".join("%s %s\n" % (quote(name), quote(secret)) for name, secret in rows)


class PgBouncer:
    def __init__(self, server_host: str, server_port: int, auth_file_text: str, pool_mode: str,
                 pool_size: int, round_robin: bool = False, extra: str = ""):
        self.binary = binary()
        self.server_host, self.server_port = server_host, server_port
        self.pool_mode, self.pool_size = pool_mode, pool_size
        self.round_robin, self.extra = round_robin, extra
        self.auth_file_text = auth_file_text
        self.root = tempfile.mkdtemp(prefix="otelmig-pgbouncer-")
        self.port = free_port()
        self.process = None
        self.as_root = os.geteuid() == 0

    def _write(self, name: str, text: str, mode: int = 0o600) -> str:
        path = os.path.join(self.root, name)
        with open(path, "w") as handle:
            handle.write(text)
        os.chmod(path, mode)
        if self.as_root:
            shutil.chown(path, "postgres", "postgres")
        return path

    def ini_text(self, auth_file: str) -> str:
        return "\n".join([
            "[databases]",
            "* = host=%s port=%d" % (self.server_host, self.server_port),
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            "listen_port = %d" % self.port,
            "unix_socket_dir =",
            "auth_type = scram-sha-256",
            "auth_file = %s" % auth_file,
            "pool_mode = %s" % self.pool_mode,
            "default_pool_size = %d" % self.pool_size,
            "min_pool_size = 0",
            "reserve_pool_size = 0",
            "max_client_conn = 500",
            "server_round_robin = %d" % int(self.round_robin),
            # Fail a waiting client rather than hang a test forever.
            "query_wait_timeout = 60",
            "logfile = %s" % os.path.join(self.root, "pgbouncer.log"),
            "pidfile = %s" % os.path.join(self.root, "pgbouncer.pid"),
            self.extra, ""])

    def start(self) -> "PgBouncer":
        if self.as_root:
            os.chmod(self.root, 0o755)
            shutil.chown(self.root, "postgres", "postgres")
        auth_file = self._write("userlist.txt", self.auth_file_text)
        ini = self._write("pgbouncer.ini", self.ini_text(auth_file))
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_root else []
        # Not daemonized: we own the process and stop it by its pid.
        self.process = subprocess.Popen(prefix + [self.binary, ini], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        self._wait_listening()
        return self

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_DEADLINE_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("pgbouncer exited with %s: %s" % (self.process.returncode, self.log()))
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("pgbouncer did not listen on port %d: %s" % (self.port, self.log()))

    def log(self) -> str:
        try:
            with open(os.path.join(self.root, "pgbouncer.log")) as handle:
                return handle.read()[-4000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # runuser forwards SIGTERM to pgbouncer; the group holds only those two.
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str, user: str, password: str, **query) -> str:
        text = "postgresql://%s:%s@127.0.0.1:%d/%s" % (
            urllib.parse.quote(user, safe=""), urllib.parse.quote(password, safe=""), self.port, database)
        if query:
            text += "?" + urllib.parse.urlencode(query)
        return text
