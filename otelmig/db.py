"""Connections, and the one place that turns driver errors into ours.

Only pg8000 is imported here, never SQLAlchemy or Alembic: `check` runs on this
module alone. migrate.py hands these same connections to SQLAlchemy through
create_engine(creator=...), so the URL and password never reach Alembic's
configparser (where a '%' in a password would break).
"""

import contextlib
import dataclasses
import hashlib
import socket
from typing import Optional

import pg8000.dbapi
import scramp.core

from otelmig import pooler, session, tls
from otelmig.errors import BusyError, ConnectError, ExitStatus, OtelmigError, RefusedError
from otelmig.quoting import quote_ident, quote_literal  # noqa: F401 (db.quote_* is what the package calls)

# SQLSTATEs we act on.
INVALID_PASSWORD = "28P01"
INVALID_AUTHORIZATION = "28000"
INVALID_CATALOG = "3D000"
CANNOT_CONNECT_NOW = "57P03"
TOO_MANY_CONNECTIONS = "53300"
ADMIN_SHUTDOWN = "57P01"
INSUFFICIENT_PRIVILEGE = "42501"
READ_ONLY_TRANSACTION = "25006"
LOCK_NOT_AVAILABLE = "55P03"
DEADLOCK_DETECTED = "40P01"
SERIALIZATION_FAILURE = "40001"
QUERY_CANCELED = "57014"
IDLE_IN_TRANSACTION_TIMEOUT = "25P03"
TRANSACTION_TIMEOUT = "25P04"
CRASH_SHUTDOWN = "57P02"
DISK_FULL = "53100"
OUT_OF_MEMORY = "53200"


def _pbkdf2(hash_factory, password: bytes, salt: bytes, iterations: int) -> bytes:
    """SCRAM's Hi() is PBKDF2-HMAC; scramp computes it in pure Python (about
    15 ms for PostgreSQL's 4096 iterations, on every login), hashlib in C."""
    return hashlib.pbkdf2_hmac(hash_factory().name, password, salt, iterations)


def use_c_pbkdf2() -> None:
    """Make scramp compute Hi() with hashlib: the same bytes (tests/test_settings.py
    proves it), 15 ms less per login. Called by the command line, which owns its
    process; never on import, so init_db() inside the worker leaves the host
    process's scramp as it found it."""
    scramp.core.hi = _pbkdf2


class ConnectFailed(ConnectError):
    """Exit 3; `retryable` says whether waiting might help (check --wait).

    `login_refused`: the server refused the login (bad or missing password,
    pg_hba reject): never retried, and no further host is tried (libpq).
    """

    def __init__(self, message: str, retryable: bool, login_refused: bool = False):
        super().__init__(message)
        self.retryable = retryable and not login_refused
        self.login_refused = login_refused


def sqlstate(exc: BaseException) -> Optional[str]:
    exc = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error
    fields = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    return fields.get("C")


def server_message(exc: BaseException) -> str:
    exc = getattr(exc, "orig", None) or exc
    fields = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    return fields.get("M") or str(exc)


# Of a multi-host list, the host this process landed on: every later
# connection (the lock, the migration, the progress watcher) goes there too.
_PINNED = {}


def connect(conninfo, autocommit: bool = True, timeout: Optional[float] = None, probe: bool = False,
            purpose: Optional[str] = None, refuse_transaction_pooling: bool = False):
    """A pg8000 DB-API connection, or ConnectFailed (exit 3) that says why.

    pg8000 keeps the connect timeout on the socket for the connection's life,
    which would cut any statement longer than it (an index build on millions
    of rows). So it is cleared after connecting, except for a probe (check,
    verify, plan), where a server that stops answering is a failure.

    Several hosts (libpq's host list) are tried in order until one answers
    and has the target_session_attrs; prefer-standby makes a second pass
    that takes any host.

    `purpose` (otelmig.session: MIGRATION, LOCK, PROBE) picks the server
    settings the session gets; by default PROBE for a probe, else LOCK. A
    probe's connection comes inside its one transaction (session.py says why).
    `refuse_transaction_pooling`: check for a transaction pooler (pooler.py)
    before any session setting is made, so that none can leak to the pool.
    """
    purpose = purpose or (session.PROBE if probe else session.LOCK)
    options = (timeout, probe, purpose, refuse_transaction_pooling)
    if not conninfo.hosts and conninfo.target_session_attrs == "any":
        conn = _connect_one(conninfo, *options)  # the common case: no extra round trip
        conn.autocommit = autocommit
        return conn
    key = (conninfo.host_list, conninfo.user, conninfo.database)
    candidates = [_PINNED[key]] if key in _PINNED else list(conninfo.host_list)
    wanted = conninfo.target_session_attrs
    failures = []
    for attrs in (("standby", "any") if wanted == "prefer-standby" else (wanted,)):
        for host, port in candidates:
            target = dataclasses.replace(conninfo, host=host, port=port, hosts=())
            try:
                conn = _connect_one(target, *options)
            except ConnectFailed as exc:
                if exc.login_refused:
                    raise
                failures.append(exc)
                continue
            mismatch = _session_mismatch(conn, attrs)
            if mismatch:
                conn.close()
                failures.append(ConnectFailed("%s:%d %s" % (host, port, mismatch), retryable=True))
                continue
            _PINNED[key] = (host, port)
            conn.autocommit = autocommit
            return conn
    if len(failures) == 1:
        raise failures[0]
    raise ConnectFailed("no host of %s accepted a %s session: %s" % (
        ",".join("%s:%d" % pair for pair in candidates), wanted, "; ".join(f.message for f in failures)),
        retryable=any(f.retryable for f in failures))


def _connect_one(conninfo, timeout: Optional[float], probe: bool, purpose: str, refuse_transaction_pooling: bool):
    """One host, each ssl_context that its sslmode allows, in order."""
    wait = timeout or conninfo.connect_timeout
    last_error = None
    for ssl_context in tls.attempts(conninfo):
        try:
            conn = pooler.PoolSafeConnection(  # one round trip per statement: poolers cannot split it
                user=conninfo.user, host=conninfo.host, port=conninfo.port,
                database=conninfo.database, password=conninfo.password,
                unix_sock=conninfo.unix_socket, ssl_context=ssl_context,
                timeout=wait, application_name=conninfo.application_name,
                startup_params=session.startup_params(purpose, wait))
        except Exception as exc:  # classified right below, never swallowed
            last_error = exc
            continue
        conn.autocommit = True  # what _prepare runs must leave no transaction open
        if refuse_transaction_pooling:  # before any SET that a pooler would hand to its next client
            _refuse_transaction_pooling(conn, conninfo, timeout)
        try:
            _prepare(conn, purpose, wait)
        except _ClosedAtBegin:
            # PgBouncer's statement pooling closes a client that opens a
            # transaction: then a probe's statements run one by one, with the
            # role's settings. A real outage fails again here (exit 3).
            return _connect_one(conninfo, timeout, probe, session.BARE, False)
        if not probe:
            # pg8000 has no public way to change the socket timeout after
            # connecting; _usock is its socket in the pinned 1.31.5 (and
            # tests/test_production.py's statement longer than connect_timeout
            # fails if that changes). Nothing else of pg8000's is touched.
            conn._usock.settimeout(None)
        return conn
    raise connect_error(last_error, conninfo) from None


class _ClosedAtBegin(Exception):
    """The connection was closed as a probe opened its transaction."""


def read_only_connection(conninfo):
    """A probe's connection in a READ ONLY transaction (plan, maintain --dry-run). Behind
    PgBouncer's statement pooling, which closes a client that opens a transaction, a
    plain one (they run only SELECTs; otelmig/pooler.py)."""
    import pg8000.dbapi
    conn = connect(conninfo, autocommit=False, probe=True)
    try:
        conn.cursor().execute("SET TRANSACTION READ ONLY")
    except pg8000.dbapi.InterfaceError:  # closed at BEGIN: a real outage fails to reconnect (exit 3)
        conn = connect(conninfo, autocommit=True, probe=True)
    return conn


def close(conn) -> None:
    """End whatever transaction is open (a probe's), then close. A pooler
    drops, instead of reusing, a server connection whose client left inside
    a transaction: every `check` behind PgBouncer would cost it one."""
    with contextlib.suppress(Exception):
        conn.rollback()
    with contextlib.suppress(Exception):
        conn.close()


# libpq's target_session_attrs checks, on a fresh session.
_SESSION_CHECKS = {
    "read-write": ("show transaction_read_only", "off", "is read-only"),
    "read-only": ("show transaction_read_only", "on", "accepts writes"),
    "primary": ("select pg_is_in_recovery()::text", "false", "is a standby"),
    "standby": ("select pg_is_in_recovery()::text", "true", "is not a standby"),
}


def _session_mismatch(conn, attrs: str) -> Optional[str]:
    """Why this session does not have `attrs`, or None when it does."""
    if attrs not in _SESSION_CHECKS:
        return None
    query, wanted, why_not = _SESSION_CHECKS[attrs]
    cursor = conn.cursor()
    cursor.execute(query)
    return None if cursor.fetchone()[0] == wanted else "%s (target_session_attrs=%s)" % (why_not, attrs)


def _refuse_transaction_pooling(conn, conninfo, timeout: Optional[float]) -> None:
    try:
        pooler.refuse_transaction_pooling(
            conn, conninfo, lambda: connect(conninfo, timeout=timeout, probe=True, purpose=session.BARE))
    except BaseException:
        with contextlib.suppress(Exception):
            conn.close()
        raise


def _prepare(conn, purpose: str, wait: Optional[float]) -> None:
    """Refuse an unsupported server and finish the session's settings; close on any failure."""
    try:
        session.after_connect(conn, purpose, wait)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            conn.close()
        if purpose == session.PROBE and _is_connection_lost(exc):
            raise _ClosedAtBegin() from None
        translated = translate(exc)
        if translated is not None and translated is not exc:
            raise translated from None
        raise


def connect_error(exc: BaseException, conninfo) -> ConnectFailed:
    where = "%s:%d" % (conninfo.host, conninfo.port)
    code = sqlstate(exc)
    if conninfo.password is None and _asks_for_password(exc):
        return ConnectFailed("%s asks for a password for user %r and none was found: looked in %s; "
                             "give it in one of these" % (where, conninfo.user, conninfo.password_sources),
                             retryable=False, login_refused=True)
    if code in (INVALID_PASSWORD, INVALID_AUTHORIZATION):
        return ConnectFailed("login refused by %s: %s; check the user and password"
                             % (where, server_message(exc)), retryable=False, login_refused=True)
    if code == INVALID_CATALOG:
        return ConnectFailed("database %r does not exist on %s; create it or fix the URL"
                             % (conninfo.database, where), retryable=False)
    if code == TOO_MANY_CONNECTIONS:
        _, cause, fix = SERVER_ERRORS[code]
        return ConnectFailed("%s has %s: %s; %s" % (where, cause, server_message(exc), fix), retryable=True)
    if code == CANNOT_CONNECT_NOW:
        return ConnectFailed("%s is not accepting connections yet: %s" % (where, server_message(exc)),
                             retryable=True)
    if code:
        return ConnectFailed("connecting to %s failed: %s" % (where, server_message(exc)), retryable=False)
    reason = _network_reason(exc, conninfo, where)
    if getattr(conninfo, "defaults_only", False):
        reason += ("; no URL was given (--url, POSTGRES_URL or the PG* variables), so libpq's defaults were "
                   "tried (%s)" % conninfo.describe())
    return ConnectFailed(reason, retryable=_is_network_error(exc))


def _asks_for_password(exc: BaseException) -> bool:
    """pg8000 with password=None: an InterfaceError for cleartext and MD5,
    an AttributeError ('NoneType' has no 'decode') for SCRAM."""
    return isinstance(exc, AttributeError) or (
        isinstance(exc, pg8000.dbapi.InterfaceError) and "no password" in str(exc))


def _is_network_error(exc: BaseException) -> bool:
    """Only a server that cannot be reached (yet) is worth waiting for; a TLS
    failure or an unexpected error stays what it is on every attempt."""
    cause = exc.__cause__ or exc
    reached_no_server = isinstance(cause, OSError) or isinstance(exc, pg8000.dbapi.InterfaceError)
    return reached_no_server and not _is_tls_error(exc)


def _is_tls_error(exc: BaseException) -> bool:
    import ssl
    cause = exc.__cause__ or exc
    return isinstance(cause, ssl.SSLError) or "refuses SSL" in str(exc)


def _network_reason(exc: BaseException, conninfo, where: str) -> str:
    import ssl
    cause = exc.__cause__ or exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        detail = cause.verify_message or str(cause)
        if "ostname" in detail or "IP address mismatch" in detail:
            reason = "host name mismatch: the server certificate is not valid for %r" % conninfo.host
        elif "issuer" in detail or "self-signed" in detail or "self signed" in detail:
            reason = "unknown CA: the server certificate is not signed by sslrootcert"
        else:
            reason = detail
        return "TLS to %s failed: %s (sslmode=%s)" % (where, reason, conninfo.sslmode)
    if "refuses SSL" in str(exc):
        return "TLS to %s failed: the server does not support TLS (sslmode=%s)" % (where, conninfo.sslmode)
    if isinstance(cause, ssl.SSLError):
        return "TLS to %s failed: %s" % (where, cause.reason or cause)
    if isinstance(cause, socket.gaierror):
        return "cannot resolve host %r: check the host name" % conninfo.host
    if isinstance(cause, socket.timeout):
        return "timed out connecting to %s; is the server up?" % where
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused by %s; is PostgreSQL running there?" % where
    if isinstance(cause, OSError) and cause.strerror:
        return "cannot reach %s: %s" % (where, cause.strerror)
    return "cannot reach %s: %s" % (where, exc)


# What a real server raises in normal operation, by SQLSTATE or by class (its
# first two characters): our error type (its exit code), the cause and the fix.
# README's "Exit codes" table names each of these under its code.
_RERUN = "the transaction was rolled back: rerun to continue (a rerun does only what is left)"
SERVER_ERRORS = {
    LOCK_NOT_AVAILABLE: (BusyError, "could not get a table lock in time",
                         "the revision's transaction was rolled back; retry when the table is less busy, "
                         "or raise --lock-timeout"),
    DEADLOCK_DETECTED: (BusyError, "deadlock with another session", "retry when the store is less busy; " + _RERUN),
    SERIALIZATION_FAILURE: (BusyError, "conflict with a concurrent transaction", "retry; " + _RERUN),
    QUERY_CANCELED: (ConnectError, "the server cancelled our statement (statement_timeout, or an administrator's "
                     "pg_cancel_backend)", _RERUN),
    IDLE_IN_TRANSACTION_TIMEOUT: (ConnectError, "the server ended our session: it sat idle in a transaction longer "
                                  "than idle_in_transaction_session_timeout (was otelmig paused? the bound is "
                                  "OTELMIG_IDLE_TIMEOUT)", _RERUN),
    TRANSACTION_TIMEOUT: (ConnectError, "the server ended our transaction (transaction_timeout)", _RERUN),
    ADMIN_SHUTDOWN: (ConnectError, "the server ended our session (pg_terminate_backend or a server shutdown)",
                     _RERUN),
    CRASH_SHUTDOWN: (ConnectError, "the server is restarting after a crash",
                     "wait until it accepts connections, then rerun to continue"),
    CANNOT_CONNECT_NOW: (ConnectError, "the server is starting up or shutting down", "wait, then rerun"),
    DISK_FULL: (ConnectError, "the database server is out of disk space",
                "free disk space there, then rerun (an interrupted index build is rebuilt)"),
    OUT_OF_MEMORY: (ConnectError, "the database server is out of memory",
                    "free memory there (otelmig raises maintenance_work_mem to 256MB for index builds), then rerun"),
    TOO_MANY_CONNECTIONS: (ConnectError, "no free connection slot (max_connections, or the role's or database's "
                           "CONNECTION LIMIT)", "otelmig needs 3 connections (lock, migration, progress): raise the "
                           "limit or close idle sessions, then rerun"),
    READ_ONLY_TRANSACTION: (RefusedError, "the database is read-only",
                            "run against the primary, as a role whose default_transaction_read_only is off"),
    INSUFFICIENT_PRIVILEGE: (RefusedError, "permission denied",
                             "grant the privilege or run as the owner of the schema and its tables"),
    "08": (ConnectError, "the connection to the database failed", "check the network and the server, then rerun"),
    "23": (RefusedError, "the stored data breaks a rule of the head contract",
           "fix the rows the server names, then rerun"),
    "53": (ConnectError, "the database server lacks resources", "free them, then rerun"),
    "54": (RefusedError, "the stored data exceeds a server limit", "fix the rows the server names, then rerun"),
    "57": (ConnectError, "the server stopped our work (operator intervention)", "rerun when it is available"),
    "58": (ConnectError, "the database server hit a system error (I/O)",
           "check the server's log and disks, then rerun"),
    "XX": (ConnectError, "the database server reported an internal error", "check the server's log, then rerun"),
}
STEP_CHARS = 100  # a failing statement is named by its first characters; -v prints it whole


def describe_statement(statement: Optional[str]) -> str:
    """A statement, short enough for one line."""
    text = " ".join((statement or "").split())
    return text if len(text) <= STEP_CHARS else text[:STEP_CHARS] + "..."


def failed_statement(exc: BaseException) -> Optional[str]:
    """The SQL of the statement that failed, when SQLAlchemy recorded it."""
    return getattr(exc, "statement", None)


def translate(exc: BaseException) -> Optional[OtelmigError]:
    """Our error for a driver / SQLAlchemy error raised after connecting, or None."""
    if isinstance(exc, OtelmigError):
        return exc
    if isinstance(getattr(exc, "orig", None), OtelmigError):
        return exc.orig
    code = sqlstate(exc)
    if code:
        return _server_error(code, server_message(exc), failed_statement(exc))
    if _is_connection_lost(exc):
        # The server's last word (why it ended the session) is usually lost:
        # the kernel drops it when our next statement meets the closed socket.
        return ConnectError("the connection to the database was lost (%s): the server ended the session "
                            "(pg_terminate_backend, a restart, or idle_in_transaction_session_timeout after "
                            "otelmig was paused) or the network failed; %s"
                            % (getattr(exc, "orig", None) or exc, _RERUN))
    if isinstance(getattr(exc, "orig", None) or exc, (socket.timeout, TimeoutError)):
        return ConnectError("the database stopped answering (no reply within the connect timeout); "
                            "check the server and the network, then rerun")
    return None


def _server_error(code: str, message: str, statement: Optional[str]) -> OtelmigError:
    """One line: the cause, the server's message, the SQLSTATE and the step, then the fix."""
    where = "SQLSTATE %s" % code
    if statement:
        where += ", in: %s" % describe_statement(statement)
    known = SERVER_ERRORS.get(code) or SERVER_ERRORS.get(code[:2])
    if known is None:
        return OtelmigError("internal error (a bug in otelmig): the server said: %s (%s); rerun with -v and "
                            "--traceback and report it" % (message, where), ExitStatus.INTERNAL)
    error_type, cause, fix = known
    return error_type("%s: %s (%s); %s" % (cause, message, where, fix))


def _is_connection_lost(exc: BaseException) -> bool:
    exc = getattr(exc, "orig", None) or exc
    return isinstance(exc, pg8000.dbapi.InterfaceError) and (
        "network error" in str(exc) or "connection is closed" in str(exc))


def is_lock_timeout(exc: BaseException) -> bool:
    return sqlstate(exc) == LOCK_NOT_AVAILABLE


def is_conflict(exc: BaseException) -> bool:
    """A lock timeout, deadlock or serialization failure: the transaction was
    rolled back and running it again may well succeed."""
    return sqlstate(exc) in (LOCK_NOT_AVAILABLE, DEADLOCK_DETECTED, SERIALIZATION_FAILURE)
