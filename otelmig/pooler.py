"""Behind a connection pooler (PgBouncer): what works in every pool mode, and
the check that keeps migrations off transaction pooling.

Two concerns, both about a pooler that hands a client's transactions to
whichever server connection is free (transaction or statement pooling):

1. The wire protocol. pg8000 runs a statement with parameters as three
   round trips, each ended by Sync: Parse, then Describe, then Bind+Execute.
   Outside a transaction each Sync ends with "idle", so a transaction pooler
   may move the next message to another server connection, which has no such
   unnamed statement ("unnamed prepared statement does not exist"). Our
   connections send Parse, Describe, Bind, Execute and one Sync: a statement
   is one round trip that a pooler cannot split. That is what makes check,
   current, verify, plan, history and init_db work in every pool mode.

2. Migrations hold a session: a session advisory lock (otelmig/lock.py),
   session settings (lock_timeout, ...), index builds outside a transaction.
   Through transaction pooling the lock would stay on a server connection
   that the pooler gives to the next client. So before the lock is taken,
   `refuse_transaction_pooling` tells the two apart and refuses (exit 8).

No pooler tells a client its mode, so the check looks for what only pooling
between transactions can do, setting nothing on any session (nothing to leak):
- direct connection: the cancel key PostgreSQL sends at login carries the
  backend's pid; a pooler sends its own. Equal: no pooler, done (one query).
- behind a pooler, three signs of transaction (or statement) pooling:
  a. two transactions of our connection run on different server backends
     (the pooler rotates its connections, or another client took ours);
  b. a second client connection, opened while ours is idle, is given our
     server backend (the pooler reuses the connection it just got back:
     certain with one server connection, the default LIFO order with more);
  c. our server backend ran a statement that is not ours while we were idle
     (another client used it; seen in pg_stat_activity).
  A session pooler can show none of these: our backend is ours until we
  disconnect. Statement pooling shows them the same way.
"""

import struct
import time
import uuid
from typing import Optional

import pg8000.core
import pg8000.dbapi
from pg8000.converters import make_params

from otelmig.errors import ConnectError, RefusedError
from otelmig.settings import ENV_MIGRATION_URL

MIGRATION_COMMANDS_HINT = "upgrade, downgrade, rollback, stamp, maintain and repair"
# Behind a pooler, rounds of the check (each: a transaction of ours, a pause,
# a look from a second client). An idle transaction pooler shows itself in the
# first round; one that other clients use can hide in a round (about one in
# eight under a light load in our measurements), so several; in a session
# pooler all rounds run: about 8 x 20 ms once per migration command.
PROBE_ROUNDS = 8
PROBE_PAUSE_SECONDS = 0.02


class PoolSafeConnection(pg8000.dbapi.Connection):
    """pg8000's connection, sending each statement with parameters in one round trip."""

    def execute_unnamed(self, statement, vals=(), oids=(), stream=None):
        context = pg8000.core.Context(statement, stream=stream)
        self.send_PARSE(pg8000.core.NULL_BYTE, statement, oids)
        self.send_DESCRIBE_STATEMENT(pg8000.core.NULL_BYTE)
        self.send_BIND(pg8000.core.NULL_BYTE, make_params(self.py_types, vals))
        self.send_EXECUTE()
        pg8000.core._write(self._sock, pg8000.core.SYNC_MSG)
        try:
            pg8000.core._flush(self._sock)
        except AttributeError:
            if self._sock is None:
                raise pg8000.dbapi.InterfaceError("connection is closed") from None
            raise
        # The replies come in order: ParseComplete, ParameterDescription,
        # RowDescription (sets the row decoders), BindComplete, rows,
        # CommandComplete, ReadyForQuery; an error skips to ReadyForQuery.
        self.handle_messages(context)
        return context


def _probe_pid(conn, label: str) -> int:
    """pg_backend_pid() in a transaction of its own; `label` makes the
    statement's text ours alone, so pg_stat_activity shows whose it was."""
    cursor = conn.cursor()
    cursor.execute("select pg_backend_pid() /* otelmig pooling probe %s */" % label)  # simple protocol
    return int(cursor.fetchone()[0])


def cancel_key_pid(conn) -> Optional[int]:
    """The process id of the BackendKeyData the server (or a pooler) sent at login."""
    data = getattr(conn, "_backend_key_data", None)
    if not data or len(data) < 4:
        return None
    return struct.unpack("!i", data[:4])[0]


def transaction_pooling_evidence(conn, connect) -> Optional[str]:
    """Why `conn` (autocommit, idle) is behind transaction or statement
    pooling, or None. `connect()` opens a second connection to the same place."""
    token = uuid.uuid4().hex[:12]
    first = _probe_pid(conn, token + "-0")
    if cancel_key_pid(conn) == first:
        return None  # PostgreSQL itself answered the login: no pooler in between
    try:
        other = connect()
    except ConnectError as exc:
        raise ConnectError(_no_second_connection(exc.message)) from None
    try:
        for round_number in range(1, PROBE_ROUNDS + 1):
            found = _probe_round(conn, other, first, "%s-%d" % (token, round_number))
            if found:
                return found
    finally:
        other.close()
    return None


def _no_second_connection(reason: str) -> str:
    """A session pool with no server connection to spare makes the second
    connection wait (until its connect timeout or the pooler's query_wait_timeout)."""
    return ("the pooler gave otelmig no second server connection (%s): a migration uses up to three at once, "
            "so nothing was changed; raise the pool's pool_size or give migrations a direct URL with %s"
            % (reason, ENV_MIGRATION_URL))


def _probe_round(conn, other, first: int, label: str) -> Optional[str]:
    """One transaction of ours, then a look from a second client at our server backend."""
    pid = _probe_pid(conn, label)
    if pid != first:
        return "two transactions on one connection ran on server backends %d and %d" % (first, pid)
    time.sleep(PROBE_PAUSE_SECONDS)  # while we are idle, a busy pooler lends our backend to others
    cursor = other.cursor()
    try:
        cursor.execute("select pg_backend_pid(), (select query from pg_stat_activity where pid = %d)" % first)
    except (pg8000.dbapi.InterfaceError, OSError) as exc:  # timed out waiting for a server, or cut by the pooler
        raise ConnectError(_no_second_connection(str(exc.__cause__ or exc) or type(exc).__name__)) from None
    other_pid, last_query = cursor.fetchone()
    if other_pid == first:
        return "a second client connection was given the same server backend (%d)" % first
    if last_query and not last_query.startswith("<") and label not in last_query:
        return ("another client ran a statement on this connection's server backend (%d) between its transactions"
                % first)
    return None


def refuse_transaction_pooling(conn, conninfo, connect) -> None:
    """RefusedError (exit 8) when `conn` is behind transaction or statement pooling."""
    evidence = transaction_pooling_evidence(conn, connect)
    if evidence:
        raise RefusedError(refusal_message(conninfo, evidence), details={"pooling": "transaction"})


def refusal_message(conninfo, evidence: str) -> str:
    return ("%s is behind a transaction-pooling connection pooler (%s): %s need a session of their own "
            "(the migration lock), so nothing was changed; give them a direct or session-pooled URL with %s "
            "or --url (check, current, verify and plan may keep the pooled URL)"
            % (conninfo.describe(), evidence, MIGRATION_COMMANDS_HINT, ENV_MIGRATION_URL))
