"""The server settings otelmig sets for its own sessions: the one list.

A role or a database can carry settings (ALTER ROLE ... SET, ALTER DATABASE
... SET, postgresql.conf) that break a migration half way: a statement_timeout
shorter than an index build, an idle_session_timeout that ends the lock's
connection, a DateStyle that pg8000 parses wrong. So every setting otelmig
depends on is listed here, per kind of session, and set nowhere else. The
README's table "Server settings otelmig sets for itself" mirrors SETTINGS
(tests/test_field_server.py compares them).

How they are applied, so that nothing leaks to a connection pooler's next
client (and PgBouncer refuses any other startup parameter):
- STARTUP ones travel in the startup packet (PgBouncer tracks exactly these
  per client, and a client's setting outranks the role's and the database's);
- the migration and lock sessions, which hold a session-level advisory lock
  and so need a direct or session-pooled connection, get the rest as
  session-level SETs, in one message right after connecting;
- a probe runs in one transaction that starts, in one message right after
  connecting, with BEGIN and SET LOCAL: its settings end with it.
A setting the server's major lacks is left out (an unknown name is an error).
"""

import os
import re
import socket
from typing import Dict, NamedTuple, Optional

from otelmig.errors import RefusedError
from otelmig.quoting import quote_literal
from otelmig.settings import parse_seconds

MIGRATION = "migration"  # the connection that runs the DDL (upgrade, downgrade, stamp)
LOCK = "lock"            # the advisory lock's connection, the index-build progress watcher
PROBE = "probe"          # check, current, verify, plan, history, init_db
BARE = "bare"            # sets nothing: the pooling check's second client (pooler.py), which must
                         # neither hold a transaction nor leave a setting on a pooled connection

MINIMUM_MAJOR = 13
ENV_IDLE_TIMEOUT = "OTELMIG_IDLE_TIMEOUT"
DEFAULT_IDLE_TIMEOUT = 30.0  # seconds; the longest a frozen migrator can hold its locks

IDLE = "{idle}"            # replaced by the idle bound (OTELMIG_IDLE_TIMEOUT)
PROBE_WAIT = "{probe}"     # replaced by the probe's socket timeout (connect_timeout)
RUNTIME = "{runtime}"      # set by otelmig at run time (see `why`)
NOT_SET = None             # not set for this kind of session (see `why`)


class Setting(NamedTuple):
    name: str
    migration: Optional[str]
    lock: Optional[str]
    probe: Optional[str]
    since: int   # the first PostgreSQL major that has it
    why: str

    def value(self, purpose: str) -> Optional[str]:
        return getattr(self, purpose)


# The order is the order of the SETs in the settings message: a role's or a
# database's statement_timeout and transaction_timeout govern that message
# until our SET replaces them, so those two come first.
SETTINGS = (
    Setting("statement_timeout", "0", "60s", PROBE_WAIT, 13,
            "an index build takes as long as the table needs; a probe gives up with the client "
            "(its connect timeout)"),
    Setting("transaction_timeout", "0", "0", "0", 17,
            "a revision's transaction lasts as long as its DDL needs"),
    Setting("lock_timeout", RUNTIME, "0", "0", 13,
            "migration: set per attempt, 100 ms growing to --lock-timeout; the others take no table lock "
            "a migration would not let go of, and are bounded by statement_timeout"),
    Setting("idle_in_transaction_session_timeout", IDLE, IDLE, IDLE, 13,
            "a frozen otelmig (SIGSTOP, paused VM) holding ACCESS EXCLUSIVE is ended by the server after "
            "this (OTELMIG_IDLE_TIMEOUT, default 30 s); its transaction is rolled back"),
    Setting("idle_session_timeout", "0", "0", NOT_SET, 14,
            "the lock's connection sits idle for the whole migration and must not be ended"),
    Setting("client_connection_check_interval", "1s", "1s", NOT_SET, 14,
            "a backend whose client vanished (SIGKILL) stops within a second and releases its locks"),
    Setting("tcp_keepalives_idle", "10", "10", NOT_SET, 13,
            "the server notices a client gone silent (VM paused, network cut): keepalives after 10 s"),
    Setting("tcp_keepalives_interval", "10", "10", NOT_SET, 13, "then every 10 s"),
    Setting("tcp_keepalives_count", "3", "3", NOT_SET, 13, "3 unanswered probes end the session"),
    Setting("tcp_user_timeout", "30s", "30s", NOT_SET, 13, "data unacknowledged for 30 s ends the session"),
    Setting("default_transaction_isolation", "read committed", "read committed", "read committed", 13,
            "DDL and its catalog checks are written for READ COMMITTED (a probe: BEGIN ISOLATION LEVEL)"),
    Setting("default_transaction_read_only", NOT_SET, NOT_SET, NOT_SET, 13,
            "never overridden: on means the operator made the database read-only; "
            "upgrade, downgrade and stamp then refuse (exit 8) before changing anything"),
    Setting("search_path", "pg_catalog", "pg_catalog", "pg_catalog", 13,
            "nothing resolves through the operator's schemas (migrations/env.py then sets the target schema "
            "for Alembic)"),
    Setting("row_security", "off", "off", "off", 13,
            "a row-level security policy must fail a data check, never hide rows from it"),
    Setting("standard_conforming_strings", "on", "on", "on", 13,
            "otelmig quotes literals by doubling quotes only"),
    Setting("TimeZone", "UTC", "UTC", "UTC", 13,
            "every bound is a UTC midnight and every decision uses the server's clock in UTC: day arithmetic "
            "(timestamptz + interval) and a timestamp printed and read back do not depend on the zone of "
            "the server, database, role or psql session (the --sql script sets it too)"),
    Setting("DateStyle", "ISO, YMD", "ISO, YMD", "ISO, YMD", 13,
            "pg8000 parses other date styles wrongly (day and month), and a timestamp printed in another "
            "style reads back as another moment (the --sql script sets it too)"),
    Setting("IntervalStyle", "postgres", "postgres", "postgres", 13,
            "intervals print and read back the same way (the --sql script sets it too); otelmig reads no "
            "bytea, so bytea_output does not matter"),
    Setting("timezone_abbreviations", "Default", "Default", "Default", 13,
            "a zone abbreviation reads back as the zone PostgreSQL printed it for (the --sql script sets it too)"),
    Setting("client_encoding", "UTF8", "UTF8", "UTF8", 13, "names and messages are decoded as UTF-8"),
    Setting("maintenance_work_mem", RUNTIME, NOT_SET, NOT_SET, 13,
            "index builds sort in memory: raised to 256MB for the migration session, never lowered "
            "(otelmig/migrate.py)"),
    Setting("session_replication_role", NOT_SET, NOT_SET, NOT_SET, 13,
            "not set: only a superuser may; otelmig creates no triggers or foreign keys it would affect"),
)

# PgBouncer tracks these per client (client_encoding, DateStyle, TimeZone,
# standard_conforming_strings; application_name is db.py's): safe in the
# startup packet behind any pooler. IntervalStyle is tracked only from
# PgBouncer 1.20 (track_extra_parameters), and an older one refuses the
# connection: it goes with the SETs, like timezone_abbreviations.
STARTUP = ("DateStyle", "TimeZone", "client_encoding", "standard_conforming_strings")

# The session settings the --sql script sets at its top (offline.py): those its
# decisions depend on, so that psql under PGTZ, PGDATESTYLE or a database's own
# settings decides as the online run does.
SCRIPT = ("TimeZone", "DateStyle", "IntervalStyle", "timezone_abbreviations")


def script_settings() -> Dict[str, str]:
    """name -> value of the SCRIPT settings, as the migration session has them."""
    return {s.name: s.migration for s in SETTINGS if s.name in SCRIPT}


def idle_timeout(environ=None) -> float:
    """The idle-in-transaction bound in seconds, from OTELMIG_IDLE_TIMEOUT (exit 2 if malformed)."""
    text = (os.environ if environ is None else environ).get(ENV_IDLE_TIMEOUT)
    if text is None or text == "":
        return DEFAULT_IDLE_TIMEOUT
    return parse_seconds(text, ENV_IDLE_TIMEOUT)


def _render(value: str, probe_wait: Optional[float]) -> str:
    if value == IDLE:
        return "%dms" % max(1, int(idle_timeout() * 1000))
    if value == PROBE_WAIT:
        return "%dms" % max(1, int(probe_wait * 1000)) if probe_wait else "0"
    return value


def wanted(purpose: str, major: Optional[int], probe_wait: Optional[float] = None) -> Dict[str, str]:
    """name -> value of what this purpose sets (on a server of this major; None: on every major)."""
    result = {}
    for setting in SETTINGS:
        value = setting.value(purpose)
        if value is NOT_SET or value == RUNTIME:
            continue
        if setting.since > (major if major is not None else MINIMUM_MAJOR):
            continue
        result[setting.name] = _render(value, probe_wait)
    return result


def startup_params(purpose: str, probe_wait: Optional[float] = None) -> Dict[str, str]:
    """For pg8000's startup_params: the settings any pooler passes on."""
    if purpose == BARE:
        return {}
    return {name: value for name, value in wanted(purpose, None, probe_wait).items() if name in STARTUP}


def after_connect(conn, purpose: str, probe_wait: Optional[float] = None) -> None:
    """Refuse an unsupported server, then apply the rest of the list (one round trip).

    Expects an autocommit connection; a probe's is left in its transaction.
    """
    version = conn.parameter_statuses.get("server_version", "")
    major = server_major(version)
    refusal = unsupported(major, version or "?")
    if refusal:
        raise refusal
    if purpose != BARE:
        conn.cursor().execute(settings_message(purpose, major, probe_wait))
    _keep_alive(conn)


def settings_message(purpose: str, major: int, probe_wait: Optional[float] = None) -> str:
    """One simple-query message: session-level SETs, or for a probe BEGIN and SET LOCALs."""
    rest = {name: value for name, value in wanted(purpose, major, probe_wait).items() if name not in STARTUP}
    if purpose != PROBE:
        return "; ".join("SET %s = %s" % (name, quote_literal(value)) for name, value in rest.items())
    isolation = rest.pop("default_transaction_isolation")
    return "; ".join(["BEGIN ISOLATION LEVEL %s" % isolation.upper()] +
                     ["SET LOCAL %s = %s" % (name, quote_literal(value)) for name, value in rest.items()])


def server_major(version: str) -> Optional[int]:
    """The major of a server_version string ('15.4 (Debian ...)', '9.6.24', '18devel'), or None."""
    match = re.match(r"\s*(\d+)", version or "")
    return int(match.group(1)) if match else None


def unsupported(major: Optional[int], version: str) -> Optional[RefusedError]:
    """The refusal for a server older than MINIMUM_MAJOR (None when supported)."""
    if major is not None and major >= MINIMUM_MAJOR:
        return None
    return RefusedError("PostgreSQL %s is not supported (otelmig needs %d or newer); nothing was changed: "
                        "upgrade the server first" % (version, MINIMUM_MAJOR))


# Client-side keepalives: otelmig notices a server gone silent (network cut,
# paused VM) while it waits for a long statement, instead of waiting forever.
KEEPALIVE = (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3))


def _keep_alive(conn) -> None:
    # pg8000 enables SO_KEEPALIVE but leaves the kernel's timings (2 hours)
    # and has no option for them; its socket is only reachable as _usock.
    sock = getattr(conn, "_usock", None)
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in KEEPALIVE:
        if hasattr(socket, name):  # Linux has all three; macOS lacks some
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
