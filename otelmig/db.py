"""Connections, and the one place that turns driver errors into ours.

Only pg8000 is imported here, never SQLAlchemy or Alembic: `check` runs on this
module alone. migrate.py hands these same connections to SQLAlchemy through
create_engine(creator=...), so the URL and password never reach Alembic's
configparser (where a '%' in a password would break).
"""

import dataclasses
import hashlib
import socket
from typing import Optional

import pg8000.dbapi
import scramp.core

from otelmig import tls
from otelmig.pooler import PoolSafeConnection  # one round trip per statement: poolers cannot split it
from otelmig.errors import BusyError, ConnectError, OtelmigError, RefusedError

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


def _pbkdf2(hash_factory, password: bytes, salt: bytes, iterations: int) -> bytes:
    """SCRAM's Hi() is PBKDF2-HMAC; scramp computes it in pure Python (about
    15 ms for PostgreSQL's 4096 iterations, on every login), hashlib in C."""
    return hashlib.pbkdf2_hmac(hash_factory().name, password, salt, iterations)


scramp.core.hi = _pbkdf2  # same function, same result (tests/test_settings.py proves it)


class ConnectFailed(ConnectError):
    """Exit 3; `retryable` says whether waiting might help (check --wait).

    `login_refused`: the server refused the login (bad or missing password,
    pg_hba reject): never retried, and no further host is tried (libpq).
    """

    def __init__(self, message: str, retryable: bool, login_refused: bool = False):
        super().__init__(message)
        self.retryable = retryable and not login_refused
        self.login_refused = login_refused


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


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


def connect(conninfo, autocommit: bool = True, timeout: Optional[float] = None, probe: bool = False):
    """A pg8000 DB-API connection, or ConnectFailed (exit 3) that says why.

    pg8000 keeps the connect timeout on the socket for the connection's life,
    which would cut any statement longer than it (an index build on millions
    of rows). So it is cleared after connecting, except for a probe (check,
    verify, plan), where a server that stops answering is a failure.

    Several hosts (libpq's host list) are tried in order until one answers
    and has the target_session_attrs; prefer-standby makes a second pass
    that takes any host.
    """
    if not conninfo.hosts and conninfo.target_session_attrs == "any":
        conn = _connect_one(conninfo, timeout, probe)  # the common case: no extra round trip
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
                conn = _connect_one(target, timeout, probe)
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


def _connect_one(conninfo, timeout: Optional[float], probe: bool):
    """One host, each ssl_context that its sslmode allows, in order."""
    last_error = None
    for ssl_context in tls.attempts(conninfo):
        try:
            conn = PoolSafeConnection(
                user=conninfo.user, host=conninfo.host, port=conninfo.port,
                database=conninfo.database, password=conninfo.password,
                unix_sock=conninfo.unix_socket, ssl_context=ssl_context,
                timeout=timeout or conninfo.connect_timeout,
                application_name=conninfo.application_name)
        except Exception as exc:  # classified right below, never swallowed
            last_error = exc
            continue
        if not probe:
            conn._usock.settimeout(None)
        conn.autocommit = True
        return conn
    raise connect_error(last_error, conninfo) from None


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
    if code in (CANNOT_CONNECT_NOW, TOO_MANY_CONNECTIONS):
        return ConnectFailed("%s is not accepting connections yet: %s" % (where, server_message(exc)),
                             retryable=True)
    if code:
        return ConnectFailed("connecting to %s failed: %s" % (where, server_message(exc)), retryable=False)
    return ConnectFailed(_network_reason(exc, conninfo, where), retryable=_is_network_error(exc))


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


def translate(exc: BaseException) -> Optional[OtelmigError]:
    """Our error for a driver / SQLAlchemy error raised after connecting, or None."""
    if isinstance(exc, OtelmigError):
        return exc
    if isinstance(getattr(exc, "orig", None), OtelmigError):
        return exc.orig
    code = sqlstate(exc)
    message = server_message(exc)
    if code == INSUFFICIENT_PRIVILEGE:
        return RefusedError("permission denied: %s; grant the privilege or use the owner role" % message)
    if code == READ_ONLY_TRANSACTION:
        return RefusedError("the database is read-only (%s); run against the primary" % message)
    if code == LOCK_NOT_AVAILABLE:
        return BusyError("could not get a table lock in time (%s): the revision's transaction was rolled back; "
                         "retry when the table is less busy, or raise --lock-timeout" % message)
    if code == ADMIN_SHUTDOWN or _is_connection_lost(exc):
        return ConnectError("the connection to the database was lost (%s); rerun to continue" % message)
    if isinstance(getattr(exc, "orig", None) or exc, (socket.timeout, TimeoutError)):
        return ConnectError("the database stopped answering (no reply within the connect timeout); "
                            "check the server and the network, then rerun")
    return None


def _is_connection_lost(exc: BaseException) -> bool:
    exc = getattr(exc, "orig", None) or exc
    return isinstance(exc, pg8000.dbapi.InterfaceError) and (
        "network error" in str(exc) or "connection is closed" in str(exc))


def is_lock_timeout(exc: BaseException) -> bool:
    return sqlstate(exc) == LOCK_NOT_AVAILABLE


