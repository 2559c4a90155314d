"""One writer at a time: a session-level advisory lock per database + schema.

Taken on a dedicated autocommit connection, so the waiter holds no snapshot:
a waiter blocked inside pg_advisory_lock() would hold one, and the holder's
CREATE INDEX CONCURRENTLY would then wait for it forever. So we poll
pg_try_advisory_lock() within a budget, saying who holds the lock.
Advisory locks are per database already; the second key is the schema, so two
schemas never wait on each other.
"""

import time
import zlib

from otelmig import db, run
from otelmig.errors import BusyError

NAMESPACE_KEY = 0x6F74656C  # "otel": the first key, the same for every otelmig
POLL_SECONDS = 0.25
REPORT_EVERY_SECONDS = 10.0


def _int32(value: int) -> int:
    return value - (1 << 32) if value >= (1 << 31) else value


def lock_keys(schema: str) -> tuple:
    """The two int4 keys of pg_try_advisory_lock for this schema's migration lock."""
    return _int32(NAMESPACE_KEY), _int32(zlib.crc32(schema.encode("utf-8")))


_HOLDER_SQL = """
select a.pid, coalesce(a.application_name, ''), coalesce(a.client_addr::text, 'local socket'),
       to_char(a.backend_start, 'YYYY-MM-DD"T"HH24:MI:SSOF')
from pg_locks l join pg_stat_activity a on a.pid = l.pid
where l.locktype = 'advisory' and l.granted and l.database = (select oid from pg_database where datname = current_database())
  and l.classid = %s::bigint::oid and l.objid = %s::bigint::oid and l.objsubid = 2
"""


class MigrationLock:
    """Context manager; `conn` is the lock's own connection (also used to stop
    the worker connection's backend when we are interrupted)."""

    def __init__(self, conninfo, schema: str, budget: float, say):
        self.conninfo, self.schema, self.budget, self.say = conninfo, schema, budget, say
        self.keys = lock_keys(schema)
        self.conn = None
        # The run history (otelmig/runlog.py) writes its row on this connection and
        # keeps it, and the lock, past the block until the row is closed (release()).
        self.keep_for_history = False

    def __enter__(self):
        # Through transaction pooling a session lock (and the session's
        # settings) would stay on a server connection the pooler hands to its
        # next client: db.connect refuses first.
        self.conn = db.connect(self.conninfo, autocommit=True, refuse_transaction_pooling=True)
        try:
            self._acquire()
        except BaseException:
            self.conn.close()
            raise
        return self

    def _try(self) -> bool:
        cursor = self.conn.cursor()
        cursor.execute("select pg_try_advisory_lock(%s, %s)", self.keys)
        return bool(cursor.fetchone()[0])

    def _acquire(self) -> None:
        started = time.monotonic()
        if self._try():
            return
        try:
            self._wait(started + self.budget)
        finally:  # a wait is part of the run's record (otelmig/run.py), however it ended
            run.lock_waited("migration lock", time.monotonic() - started)

    def _wait(self, deadline: float) -> None:
        next_report = 0.0
        while not self._try():
            now = time.monotonic()
            if now >= deadline:
                raise BusyError("another otelmig is migrating schema %s (%s) and still was after %gs; "
                                "nothing was changed: retry later" % (self.schema, self.holder(), self.budget))
            if now >= next_report:
                self.say("waiting for the migration lock on schema %s, held by %s" % (self.schema, self.holder()))
                next_report = now + REPORT_EVERY_SECONDS
            time.sleep(min(POLL_SECONDS, max(0.0, deadline - now)))

    def holder(self) -> str:
        cursor = self.conn.cursor()
        unsigned = [k & 0xFFFFFFFF for k in self.keys]
        cursor.execute(_HOLDER_SQL, unsigned)
        row = cursor.fetchone()
        if not row:
            return "a session that just ended"
        return "pid %s, application_name %r, client %s, since %s" % tuple(row)

    def stop_backend(self, pid: int) -> None:
        """Roll back the worker connection's open transaction at once (on SIGINT/SIGTERM)."""
        cursor = self.conn.cursor()
        cursor.execute("select pg_terminate_backend(%s)", (pid,))
        # Wait until it is gone, so the lock is released only after the rollback.
        for _ in range(100):
            cursor.execute("select count(*) from pg_stat_activity where pid = %s", (pid,))
            if not cursor.fetchone()[0]:
                return
            time.sleep(0.05)

    def __exit__(self, *exc_info):
        if not self.keep_for_history:
            self.release()
        return False

    def release(self) -> None:
        if self.conn is None:
            return
        try:
            cursor = self.conn.cursor()
            cursor.execute("select pg_advisory_unlock(%s, %s)", self.keys)
        except Exception:
            pass  # closing the session below releases it anyway
        finally:
            try:
                self.conn.close()
            except Exception:  # a connection the server already ended
                pass
            self.conn = None
