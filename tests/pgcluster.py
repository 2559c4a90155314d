"""A throwaway PostgreSQL cluster for the tests: initdb + pg_ctl in a temp dir,
a free port, SCRAM passwords. The server refuses to run as root, so as root we
run it as the `postgres` OS user."""

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import urllib.parse


def bindir() -> str:
    found = shutil.which("pg_config")
    if found:
        return subprocess.check_output([found, "--bindir"], text=True).strip()
    for version in ("17", "16", "15", "14"):
        path = "/usr/lib/postgresql/%s/bin" % version
        if os.path.exists(os.path.join(path, "initdb")):
            return path
    raise RuntimeError("no PostgreSQL server binaries (initdb) found; apt-get install -y postgresql")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    def __init__(self, ssl_files=None):
        self.bindir = bindir()
        self.root = tempfile.mkdtemp(prefix="otelmig-pg-")
        self.data = os.path.join(self.root, "data")
        self.port = free_port()
        self.password = "Pw%" + secrets.token_hex(8) + ":@/?"  # '%', ':' and '@' must all work
        self.user = "postgres"
        self.as_root = os.geteuid() == 0
        if self.as_root:
            os.chmod(self.root, 0o755)
            shutil.chown(self.root, "postgres", "postgres")

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

    def reload(self):
        self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "reload")

    def stop(self):
        try:
            self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-m", "immediate", "-w", "stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres", user: str = None, password: str = None, host="127.0.0.1",
            **query) -> str:
        user = user or self.user
        password = self.password if password is None else password
        text = "postgresql://%s:%s@%s:%d/%s" % (
            urllib.parse.quote(user, safe=""), urllib.parse.quote(password, safe=""), host, self.port, database)
        if query:
            text += "?" + urllib.parse.urlencode(query)
        return text
