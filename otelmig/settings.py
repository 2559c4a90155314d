"""Resolve flags, environment and URL into Settings.

Connection precedence (docs/cli.md), first that is set wins:
  1. --url
  2. POSTGRES_URL
  3. the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE, ...), with
     libpq's defaults: host localhost, port 5432, user = OS user, dbname = user.
The password, when the chosen source has none, comes from (first that is set):
  PGPASSWORD, POSTGRES_PASSWORD_FILE, PGPASSFILE or ~/.pgpass.
Query parameters of the URL win over the PG* variables of the same meaning.
A URL is split by otelmig/pgurl.py (raw passwords, libpq's rules). Hosts and
ports may be lists (libpq's multi-host form); target_session_attrs says which
host is good enough, and a command that migrates needs one that takes writes.
"""

import dataclasses
import getpass
import os
import re
import stat
from typing import Mapping, Optional, Tuple

from otelmig import pgurl, redact
from otelmig.errors import UsageError

# Environment variable names, in one place.
ENV_URL = "POSTGRES_URL"
ENV_PASSWORD_FILE = "POSTGRES_PASSWORD_FILE"
ENV_SCHEMA = "OTEL_DB_SCHEMA"
ENV_LOCK_TIMEOUT = "OTELMIG_LOCK_TIMEOUT"
ENV_LOCK_WAIT = "OTELMIG_LOCK_WAIT"
ENV_WAIT_REPLICAS = "OTELMIG_WAIT_REPLICAS"      # --wait-replicas' seconds (docs/operations.md, "Standbys")
ENV_MAX_REPLICA_LAG = "OTELMIG_MAX_REPLICA_LAG"  # a row move pauses while a standby lags more (seconds)
LIBPQ_ENV = {
    "host": "PGHOST",
    "port": "PGPORT",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "database": "PGDATABASE",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "application_name": "PGAPPNAME",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
}
ENV_PASSFILE = "PGPASSFILE"

# Behind a transaction pooler (otelmig/pooler.py), migrations need a direct or
# session-pooled URL of their own; the read-only commands keep POSTGRES_URL.
ENV_MIGRATION_URL = "OTELMIG_MIGRATION_URL"
MIGRATION_COMMANDS = ("upgrade", "downgrade", "rollback", "stamp", "maintain", "repair")  # they write: a host that takes writes, and no transaction pooler

DEFAULT_SCHEMA = "otel"
DEFAULT_LOCK_TIMEOUT = 5.0
DEFAULT_LOCK_WAIT = 600.0  # how long to wait for another otelmig's migration lock
DEFAULT_WAIT_REPLICAS = 300.0  # --wait-replicas without seconds
DEFAULT_MAX_REPLICA_LAG = 10.0  # seconds of replay lag a row move lets a connected standby have
# The commands that wait for the standbys after their last commit (--wait-replicas).
REPLICA_COMMANDS = ("upgrade", "downgrade", "rollback", "maintain")
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_APPLICATION_NAME = "otelmig"
URL_SCHEMES = ("postgresql", "postgres", "postgresql+pg8000")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# libpq's target_session_attrs: which of several hosts is good enough.
SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
WRITABLE_SESSION_ATTRS = ("any", "read-write", "primary")
QUERY_PARAMS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout",
                "application_name", "target_session_attrs", "host", "port", "user", "password", "dbname")
# Settings the libpq environment supplies even when a URL names the server.
ENV_DEFAULTS_UNDER_URL = ("sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout", "application_name",
                          "target_session_attrs")
SCHEMA_PATTERN = re.compile(r"[a-z_][a-z0-9_]{0,62}")
SCHEME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
URL_HINT = pgurl.URL_HINT
DEFAULT_HOST = "localhost"
DEFAULT_PORT = 5432


@dataclasses.dataclass(frozen=True)
class ConnInfo:
    host: str = DEFAULT_HOST  # the first (or only) host: the one connect() tries first
    port: int = DEFAULT_PORT
    user: str = ""
    password: Optional[str] = dataclasses.field(default=None, repr=False)
    database: str = ""
    sslmode: str = "prefer"
    sslrootcert: Optional[str] = None
    sslcert: Optional[str] = None
    sslkey: Optional[str] = None
    connect_timeout: Optional[float] = DEFAULT_CONNECT_TIMEOUT  # None: wait forever (libpq's 0)
    application_name: str = DEFAULT_APPLICATION_NAME
    # Every (host, port) to try, in order (libpq's multi-host list); () means (host, port) alone.
    hosts: Tuple[Tuple[str, int], ...] = ()
    target_session_attrs: str = "any"
    # Where a password was looked for when none was found: for the message if the server asks for one.
    password_sources: str = ""
    # Nothing named the server (no URL, no PG* variable): libpq's defaults were used; messages say so.
    defaults_only: bool = False

    @property
    def host_list(self) -> Tuple[Tuple[str, int], ...]:
        return self.hosts or ((self.host, self.port),)

    @property
    def unix_socket(self) -> Optional[str]:
        """libpq reads a host that starts with / as a socket directory."""
        if self.host.startswith("/"):
            return os.path.join(self.host, ".s.PGSQL.%d" % self.port)
        return None

    def describe(self) -> str:
        """Where we connect, for messages: never the password."""
        return "%s@%s/%s" % (self.user, ",".join("%s:%d" % pair for pair in self.host_list), self.database)


@dataclasses.dataclass(frozen=True)
class Settings:
    conninfo: Optional[ConnInfo]
    schema: str = DEFAULT_SCHEMA
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    lock_wait: float = DEFAULT_LOCK_WAIT
    output_format: str = "text"
    verbosity: int = 0
    wait_replicas: Optional[float] = None  # seconds to wait for the standbys after the change; None: no wait
    max_replica_lag: float = DEFAULT_MAX_REPLICA_LAG


def validate_schema(name: Optional[str]) -> str:
    if name is None or name == "":
        raise UsageError("the schema name is empty: set --schema or %s to a name like otel" % ENV_SCHEMA)
    if not SCHEMA_PATTERN.fullmatch(name):
        raise UsageError(
            "invalid schema name %r: it must match ^[a-z_][a-z0-9_]{0,62}$ "
            "(lower case letters, digits, underscore; at most 63 characters)" % name)
    if name.startswith("pg_") or name == "information_schema":
        raise UsageError("schema name %r is reserved by PostgreSQL: choose another, like otel" % name)
    return name


def parse_seconds(value: str, what: str, allow_zero: bool = False) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise UsageError("%s must be a number of seconds, not %r" % (what, value)) from None
    if allow_zero and seconds == 0:
        return 0.0
    if not (seconds > 0 and seconds < 86400 * 7):
        raise UsageError("%s must be between 0 and 604800 seconds, not %r" % (what, value))
    return seconds


def _parse_port(value: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise UsageError("invalid port %r: it must be a number from 1 to 65535" % value) from None
    if not 1 <= port <= 65535:
        raise UsageError("invalid port %d: it must be from 1 to 65535" % port)
    return port


def _url_parts(url: str) -> dict:
    """The connection fields a URL sets (only those it sets); see otelmig/pgurl.py."""
    scheme, sep, _ = url.partition("://")
    if not sep or not SCHEME_PATTERN.fullmatch(scheme):
        raise UsageError("the database URL is not a URL; %s" % URL_HINT)
    if scheme.lower() not in URL_SCHEMES:
        raise UsageError("unsupported URL scheme %r: otelmig speaks PostgreSQL only; %s" % (scheme, URL_HINT))
    parts = pgurl.parse(url)
    fields = {}
    if parts.user:
        fields["user"] = parts.user
    if parts.password is not None:
        fields["password"] = parts.password
    if any(parts.hosts) or any(parts.ports):
        fields["host"], fields["port"] = parts.hosts, parts.ports
    if parts.database:
        fields["database"] = parts.database
    for key, value in parts.query.items():
        if key not in QUERY_PARAMS:
            raise UsageError("unsupported URL parameter %r: supported are %s" % (key, ", ".join(QUERY_PARAMS)))
        if key in ("host", "port"):
            fields[key] = value.split(",")  # libpq's lists: host=a,b&port=5432,5433
        else:
            fields["database" if key == "dbname" else key] = value
    return fields


def _host_port_pairs(hosts, ports) -> Tuple[Tuple[str, int], ...]:
    """libpq's host list: one port for all hosts, or one per host; empty entries take the default."""
    hosts = [h for h in hosts] or [""]
    ports = [p for p in ports] or [""]
    if len(ports) == 1:
        ports = ports * len(hosts)
    elif len(ports) != len(hosts):
        raise UsageError("%d ports for %d hosts: give one port for all hosts, or one per host"
                         % (len(ports), len(hosts)))
    return tuple((host or DEFAULT_HOST, _parse_port(port) if port else DEFAULT_PORT)
                 for host, port in zip(hosts, ports))


def _as_list(value) -> list:
    return value if isinstance(value, list) else str(value).split(",")


def _libpq_env_parts(env: Mapping[str, str]) -> dict:
    return {field: env[name] for field, name in LIBPQ_ENV.items() if env.get(name)}


def _read_password_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            password = handle.read().rstrip("\r\n")
    except OSError as exc:
        raise UsageError("cannot read %s %s: %s" % (ENV_PASSWORD_FILE, path, exc.strerror)) from None
    redact.register(password)
    return password


def _pgpass_fields(line: str) -> list:
    fields, current, escaped = [], "", False
    for char in line:
        if escaped:
            current, escaped = current + char, False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append(current)
            current = ""
        else:
            current += char
    fields.append(current)
    return fields


def _pgpass_password(info: dict, env: Mapping[str, str]):
    """libpq's password file lookup: (password or None, what was found, for a message).
    Like libpq, a file that group or others can read is ignored."""
    path = env.get(ENV_PASSFILE) or os.path.join(os.path.expanduser("~"), ".pgpass")
    try:
        mode = os.stat(path).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            return None, "the password file %s (ignored: group or others can read it; chmod 0600 it)" % path
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        return None, "the password file %s (%s)" % (path, exc.strerror or "unreadable")
    wanted = [info["host"], str(info["port"]), info["database"], info["user"]]
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        fields = _pgpass_fields(line)
        if len(fields) != 5:
            continue
        if all(pattern in ("*", value) for pattern, value in zip(fields[:4], wanted)):
            redact.register(fields[4])
            return fields[4], ""
    return None, "the password file %s (no line for %s:%s:%s:%s)" % (path, *wanted)


def resolve_conninfo(url: Optional[str], env: Mapping[str, str], writes: bool = False) -> ConnInfo:
    """The one function that decides where we connect (precedence: module doc).

    `writes`: the command migrates, so of several hosts it must land on one
    that accepts writes (target_session_attrs read-write unless set otherwise).
    """
    url = url or env.get(ENV_URL)
    env_parts = _libpq_env_parts(env)
    if env_parts.get("password"):
        redact.register(env_parts["password"])
    info = {"host": [DEFAULT_HOST], "port": [str(DEFAULT_PORT)], "user": _os_user(),
            "sslmode": "prefer", "connect_timeout": DEFAULT_CONNECT_TIMEOUT,
            "application_name": DEFAULT_APPLICATION_NAME, "target_session_attrs": "any"}
    for key in ENV_DEFAULTS_UNDER_URL:
        if key in env_parts:
            info[key] = env_parts[key]
    if url:
        info.update(_url_parts(url))
    else:
        info.update(env_parts)
    pairs = _host_port_pairs(_as_list(info.pop("host")), _as_list(info.pop("port")))
    info.update(host=pairs[0][0], port=pairs[0][1], hosts=pairs if len(pairs) > 1 else ())
    info.setdefault("database", info["user"])
    if info.get("password") is None:
        info["password"], info["password_sources"] = _fallback_password(info, env, pairs, bool(url))
    info["connect_timeout"] = parse_seconds(str(info["connect_timeout"]), "connect_timeout", allow_zero=True) or None
    if info["sslmode"] not in SSLMODES:
        raise UsageError("invalid sslmode %r: use one of %s" % (info["sslmode"], ", ".join(SSLMODES)))
    info["target_session_attrs"] = _session_attrs(info["target_session_attrs"], writes, len(pairs) > 1)
    info["defaults_only"] = not url and not env_parts
    return ConnInfo(**info)


def _session_attrs(wanted: str, writes: bool, several_hosts: bool) -> str:
    if wanted not in SESSION_ATTRS:
        raise UsageError("invalid target_session_attrs %r: use one of %s" % (wanted, ", ".join(SESSION_ATTRS)))
    if not writes:
        return wanted
    if wanted not in WRITABLE_SESSION_ATTRS:
        raise UsageError("target_session_attrs=%s cannot migrate: a migration writes; use read-write or primary "
                         "(or leave it out)" % wanted)
    # One host is used as it is (a read-only one is refused with exit 8 later);
    # of several, a migration must pick one that takes writes.
    return "read-write" if wanted == "any" and several_hosts else wanted


def _fallback_password(info: dict, env: Mapping[str, str], pairs, from_url: bool):
    """(password, where it was looked for): PGPASSWORD, then POSTGRES_PASSWORD_FILE, then pgpass."""
    if env.get(LIBPQ_ENV["password"]):
        return env[LIBPQ_ENV["password"]], ""
    if env.get(ENV_PASSWORD_FILE):
        return _read_password_file(env[ENV_PASSWORD_FILE]), ""
    password, pgpass_note = None, ""
    for host, port in pairs:  # the first host that has a line (libpq looks per host)
        password, pgpass_note = _pgpass_password(dict(info, host=host, port=port), env)
        if password is not None:
            return password, ""
    looked = (["the URL (no password in it)"] if from_url else []) + [
        "PGPASSWORD (unset)", "%s (unset)" % ENV_PASSWORD_FILE, pgpass_note]
    return None, ", ".join(looked)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in a container: libpq fails here too
        return "postgres"


def _seconds(flag: Optional[str], env: Mapping[str, str], name: str, what: str, default: float) -> float:
    text = flag if flag is not None else env.get(name)
    return default if text is None else parse_seconds(text, what)


def resolve_schema(args, env: Mapping[str, str]) -> str:
    return validate_schema(args.schema if args.schema is not None else env.get(ENV_SCHEMA, DEFAULT_SCHEMA))


def resolve(args, env: Mapping[str, str], need_database: bool = True, writes: bool = False) -> Settings:
    """Settings from parsed arguments and the environment; `writes`: the command migrates
    (then OTELMIG_MIGRATION_URL comes between --url and POSTGRES_URL)."""
    schema = resolve_schema(args, env)
    url = args.url
    if url is None and writes:
        url = env.get(ENV_MIGRATION_URL) or None
    conninfo = resolve_conninfo(url, env, writes) if need_database else None
    return Settings(conninfo=conninfo, schema=schema,
                    lock_timeout=_seconds(args.lock_timeout, env, ENV_LOCK_TIMEOUT, "--lock-timeout",
                                          DEFAULT_LOCK_TIMEOUT),
                    lock_wait=_seconds(args.lock_wait, env, ENV_LOCK_WAIT, "--lock-wait", DEFAULT_LOCK_WAIT),
                    output_format=args.format, verbosity=args.verbose - args.quiet,
                    wait_replicas=_wait_replicas(args, env),
                    max_replica_lag=_max_replica_lag(env) if writes else DEFAULT_MAX_REPLICA_LAG)


def _wait_replicas(args, env: Mapping[str, str]) -> Optional[float]:
    """--wait-replicas[=SECONDS], else OTELMIG_WAIT_REPLICAS (unset or empty: no wait); only for
    REPLICA_COMMANDS run online (the variable is ignored by the others, the flag is exit 2)."""
    flag, command = getattr(args, "wait_replicas", None), getattr(args, "command", None)
    if command not in REPLICA_COMMANDS or getattr(args, "sql", False) or getattr(args, "dry_run", False):
        if flag is not None:
            raise UsageError("--wait-replicas waits for the standbys to replay a change made online: %s"
                             % (_why_no_wait(args) if command in REPLICA_COMMANDS
                                else "it is for %s only" % ", ".join(REPLICA_COMMANDS)))
        return None
    if flag is not None:
        try:
            return parse_seconds(flag, "--wait-replicas", allow_zero=True)
        except UsageError:
            raise UsageError("--wait-replicas takes its seconds after '=' (--wait-replicas=300, from 0 to 604800), "
                             "not %r" % flag) from None
    text = env.get(ENV_WAIT_REPLICAS)
    return None if text is None or text.strip() == "" else parse_seconds(text, ENV_WAIT_REPLICAS, allow_zero=True)


def _why_no_wait(args) -> str:
    if getattr(args, "sql", False):
        return "--sql only prints a script; apply it, then run `otelmig check --wait SECONDS` against each standby"
    return "--dry-run changes nothing; run without it to wait for the standbys after the change"


def _max_replica_lag(env: Mapping[str, str]) -> float:
    """OTELMIG_MAX_REPLICA_LAG seconds (0: row moves never pause for a standby)."""
    text = env.get(ENV_MAX_REPLICA_LAG)
    if text is None or text.strip() == "":
        return DEFAULT_MAX_REPLICA_LAG
    return parse_seconds(text, ENV_MAX_REPLICA_LAG, allow_zero=True)
