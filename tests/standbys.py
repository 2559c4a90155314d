"""Real streaming standbys for the tests: a primary of the suite's own kind
(tests/pgcluster.py's Cluster) and standbys made from it with
`pg_basebackup -R`, each started as the `postgres` OS user on its own port.

The primary has wal_level = replica, max_wal_senders and a replication role
(`replicator`, SCRAM, its own pg_hba line). A standby may hold a physical
replication slot (`pg_basebackup -C -S`), may be delayed
(recovery_min_apply_delay, changed at run time with ALTER SYSTEM + reload)
and may be stopped while its slot stays on the primary. Each keeps the default
wal_receiver_status_interval (10 s): an idle standby reports its replay no
more often, as in the field. Replicated.stop() stops every standby, then the
primary, and removes their directories: always call it (the fixtures do).
"""

import os
import re
import secrets
import shutil
import subprocess
import time

from conftest import connect, sql
from otelmig import replicas
from pgcluster import Cluster, free_port

REPLICATION_ROLE = "replicator"
READY_SECONDS = 60  # a loaded 2-core machine can take a while to start a server


def pg_basebackup_for(cluster):
    """The server build's own pg_basebackup, else one on PATH no older than the server (or None)."""
    own = os.path.join(cluster.bindir, "pg_basebackup")
    if os.path.exists(own):
        return own
    found = shutil.which("pg_basebackup")
    if found:
        version = subprocess.run([found, "--version"], capture_output=True, text=True).stdout
        if int(re.search(r"(\d+)", version).group(1)) >= cluster.major:
            return found
    return None


class Standby:
    """One standby: its data directory under the primary's root, its port, its slot (or None)."""

    def __init__(self, replicated, name: str, slot=None):
        self.replicated, self.name, self.slot = replicated, name, slot
        self.primary = replicated.primary
        self.data = os.path.join(self.primary.root, "standby_" + name)
        self.port = free_port()
        self.running = False

    def url(self, database: str = "postgres", **kwargs) -> str:
        """A URL of this standby (the primary's superuser and password: the standby is its copy)."""
        return self.primary.url(database, **kwargs).replace(":%d/" % self.primary.port, ":%d/" % self.port)

    def _pg_ctl(self, *argv):
        self.primary._run(os.path.join(self.primary.bindir, "pg_ctl"), "-D", self.data, *argv)

    def start(self) -> "Standby":
        self._pg_ctl("-l", os.path.join(self.data, "log"), "-w", "-t", str(READY_SECONDS), "start")
        self.running = True
        return self

    def stop(self) -> None:
        if self.running:
            try:
                self._pg_ctl("-m", "fast", "-w", "stop")
            except subprocess.CalledProcessError:
                self._pg_ctl("-m", "immediate", "-w", "stop")
            self.running = False

    def set_delay(self, seconds: float) -> None:
        """recovery_min_apply_delay at run time (it is a reload setting)."""
        self.configure("recovery_min_apply_delay", "%dms" % int(seconds * 1000))

    def configure(self, name: str, value=None) -> None:
        """ALTER SYSTEM SET name = value (RESET when None), then reload."""
        conn = connect(self.url())
        try:
            cursor = conn.cursor()
            if value is None:
                cursor.execute("ALTER SYSTEM RESET %s" % name)
            else:
                cursor.execute("ALTER SYSTEM SET %s = '%s'" % (name, value))
            cursor.execute("select pg_reload_conf()")
        finally:
            conn.close()

    def replay_lsn(self) -> str:
        return sql(self.url(), "select pg_last_wal_replay_lsn()::text")[0][0]

    def has_database(self, database: str) -> bool:
        return bool(sql(self.url(), "select 1 from pg_database where datname = %s", (database,)))


def _minimal_primary_conninfo(data: str, conninfo: str) -> None:
    """pg_basebackup -R writes every option its own libpq knows (sslsni is 14+): an older server's
    walreceiver refuses the line. Ours names only what it needs, the standby's name included."""
    path = os.path.join(data, "postgresql.auto.conf")
    with open(path) as handle:
        text = handle.read()
    text, found = re.subn(r"^primary_conninfo = .*$", "primary_conninfo = '%s'" % conninfo, text, flags=re.M)
    assert found == 1, text
    with open(path, "w") as handle:
        handle.write(text)


class Replicated:
    """A primary and its standbys; stop() ends them all."""

    def __init__(self):
        self.primary = Cluster()
        self.standbys = []
        self.replicator_password = secrets.token_hex(12)

    def start(self) -> "Replicated":
        self.primary.start("wal_level = replica\nmax_wal_senders = 10\nmax_replication_slots = 10\n"
                           "wal_keep_size = '64MB'\n")
        sql(self.primary.url(), "CREATE ROLE %s WITH REPLICATION LOGIN PASSWORD '%s'"
            % (REPLICATION_ROLE, self.replicator_password))
        hba = os.path.join(self.primary.data, "pg_hba.conf")
        with open(hba) as handle:
            rules = handle.read()
        with open(hba, "w") as handle:
            handle.write("host replication %s 127.0.0.1/32 scram-sha-256\n" % REPLICATION_ROLE + rules)
        self.primary.reload()
        return self

    @property
    def basebackup(self):
        return pg_basebackup_for(self.primary)

    def add_standby(self, name: str, slot=None, start: bool = True) -> Standby:
        """pg_basebackup -R (and -C -S slot) into a new directory; started unless told not to."""
        standby = Standby(self, name, slot)
        argv = [self.basebackup, "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", REPLICATION_ROLE,
                "-D", standby.data, "-R", "-X", "stream", "--checkpoint=fast", "--no-sync"]
        if slot:
            argv += ["-C", "-S", slot]
        self.standbys.append(standby)
        self.primary._run(*argv, env=dict(os.environ, PGPASSWORD=self.replicator_password))
        # application_name is what the primary shows (pg_stat_replication.application_name)
        _minimal_primary_conninfo(standby.data, "host=127.0.0.1 port=%d user=%s password=%s application_name=%s"
                                  % (self.primary.port, REPLICATION_ROLE, self.replicator_password, name))
        with open(os.path.join(standby.data, "postgresql.conf"), "a") as conf:
            conf.write("\nport = %d\nunix_socket_directories = '%s'\nhot_standby = on\n"
                       % (standby.port, self.primary.root))
        return standby.start() if start else standby

    def wait_streaming(self, *standbys) -> None:
        """Until each standby streams from the primary and has replayed what the primary has now."""
        deadline = time.monotonic() + READY_SECONDS
        conn = connect(self.primary.url())
        try:
            # what the primary holds now (a page header at the insert position counts as nothing:
            # after pg_basebackup's segment switch nothing follows it until the next write)
            cursor = conn.cursor()
            target = replicas._target_lsn(cursor)
            for standby in standbys:
                while True:
                    cursor.execute("select state, replay_lsn >= %s::pg_lsn from pg_stat_replication "
                                   "where application_name = %s", (target, standby.name))
                    rows = [list(row) for row in cursor.fetchall()]
                    if rows == [["streaming", True]]:
                        break
                    assert time.monotonic() < deadline, "standby %s does not stream: %s" % (standby.name, rows)
                    time.sleep(0.1)
        finally:
            conn.close()

    def drop_slot(self, slot: str) -> None:
        sql(self.primary.url(), "select pg_drop_replication_slot(slot_name) from pg_replication_slots "
            "where slot_name = %s and not active", (slot,))

    def remove(self, standby: Standby) -> None:
        """Stop a standby, drop its slot and its directory."""
        standby.stop()
        if standby.slot:
            self.drop_slot(standby.slot)
        shutil.rmtree(standby.data, ignore_errors=True)
        self.standbys.remove(standby)

    def stop(self) -> None:
        for standby in list(self.standbys):
            try:
                standby.stop()
            except subprocess.CalledProcessError:
                pass
        self.primary.stop()
