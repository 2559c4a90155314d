"""Resolve flags, environment and URL into Settings.

Connection precedence (spec/cli.md), first that is set wins:
  1. --url
  2. POSTGRES_URL
  3. the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE, ...), with
     libpq's defaults: host localhost, port 5432, user = OS user, dbname = user.
The password, when the chosen source has none, comes from (first that is set):
  PGPASSWORD, POSTGRES_PASSWORD_FILE, PGPASSFILE or ~/.pgpass.
Query parameters of the URL win over the PG* variables of the same meaning.
"""

import dataclasses
import getpass
import os
import re
import stat
import urllib.parse
from typing import Mapping, Optional

from otelmig import redact
from otelmig.errors import UsageError

# Environment variable names, in one place.
ENV_URL = "POSTGRES_URL"
ENV_PASSWORD_FILE = "POSTGRES_PASSWORD_FILE"
ENV_SCHEMA = "OTEL_DB_SCHEMA"
ENV_LOCK_TIMEOUT = "OTELMIG_LOCK_TIMEOUT"
ENV_LOCK_WAIT = "OTELMIG_LOCK_WAIT"
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
}
ENV_PASSFILE = "PGPASSFILE"

# Behind a transaction pooler (otelmig/pooler.py), migrations need a direct or
# session-pooled URL of their own; the read-only commands keep POSTGRES_URL.
ENV_MIGRATION_URL = "OTELMIG_MIGRATION_URL"
MIGRATION_COMMANDS = ("upgrade", "downgrade", "rollback", "stamp", "maintain")

DEFAULT_SCHEMA = "otel"
DEFAULT_LOCK_TIMEOUT = 5.0
DEFAULT_LOCK_WAIT = 600.0  # how long to wait for another otelmig's migration lock
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_APPLICATION_NAME = "otelmig"
URL_SCHEMES = ("postgresql", "postgres", "postgresql+pg8000")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
QUERY_PARAMS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout",
                "application_name", "host", "port", "user", "password", "dbname")
SCHEMA_PATTERN = re.compile(r"[a-z_][a-z0-9_]{0,62}")
URL_HINT = "use postgresql://USER@HOST:PORT/DBNAME"


@dataclasses.dataclass(frozen=True)
class ConnInfo:
    host: str = "localhost"
    port: int = 5432
    user: str = ""
    password: Optional[str] = dataclasses.field(default=None, repr=False)
    database: str = ""
    sslmode: str = "prefer"
    sslrootcert: Optional[str] = None
    sslcert: Optional[str] = None
    sslkey: Optional[str] = None
    connect_timeout: Optional[float] = DEFAULT_CONNECT_TIMEOUT  # None: wait forever (libpq's 0)
    application_name: str = DEFAULT_APPLICATION_NAME

    @property
    def unix_socket(self) -> Optional[str]:
        """libpq reads a host that starts with / as a socket directory."""
        if self.host.startswith("/"):
            return os.path.join(self.host, ".s.PGSQL.%d" % self.port)
        return None

    def describe(self) -> str:
        """Where we connect, for messages: never the password."""
        return "%s@%s:%d/%s" % (self.user, self.host, self.port, self.database)


@dataclasses.dataclass(frozen=True)
class Settings:
    conninfo: Optional[ConnInfo]
    schema: str = DEFAULT_SCHEMA
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    lock_wait: float = DEFAULT_LOCK_WAIT
    output_format: str = "text"
    verbosity: int = 0


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
    """The connection fields a URL sets (only those it sets)."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise UsageError("the database URL is not a URL; %s" % URL_HINT)
    if scheme.lower() not in URL_SCHEMES:
        raise UsageError("unsupported URL scheme %r: otelmig speaks PostgreSQL only; %s" % (scheme, URL_HINT))
    try:
        parts = urllib.parse.urlsplit(url)
        hostname, port_text = parts.hostname, None
        netloc_host = parts.netloc.rpartition("@")[2]
        if netloc_host.startswith("["):
            port_text = netloc_host.partition("]")[2].lstrip(":") or None
        elif ":" in netloc_host:
            port_text = netloc_host.rpartition(":")[2] or None
    except ValueError:
        raise UsageError("the database URL cannot be parsed; %s" % URL_HINT) from None
    fields = {}
    if parts.username:
        fields["user"] = urllib.parse.unquote(parts.username)
    if parts.password is not None:
        fields["password"] = urllib.parse.unquote(parts.password)
        redact.register(fields["password"])
    if hostname:
        fields["host"] = urllib.parse.unquote(hostname)
    if port_text is not None:
        fields["port"] = _parse_port(port_text)
    database = urllib.parse.unquote(parts.path.lstrip("/"))
    if database:
        fields["database"] = database
    for key, values in urllib.parse.parse_qs(parts.query, keep_blank_values=True).items():
        if key not in QUERY_PARAMS:
            raise UsageError("unsupported URL parameter %r: supported are %s" % (key, ", ".join(QUERY_PARAMS)))
        fields["database" if key == "dbname" else key] = values[-1]
    if "password" in fields:
        redact.register(fields["password"])
    return fields


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


def _pgpass_password(info: dict, env: Mapping[str, str]) -> Optional[str]:
    """libpq's password file lookup; like libpq, ignore a file others can read."""
    path = env.get(ENV_PASSFILE) or os.path.join(os.path.expanduser("~"), ".pgpass")
    try:
        mode = os.stat(path).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            return None
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    wanted = [info["host"], str(info["port"]), info["database"], info["user"]]
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        fields = _pgpass_fields(line)
        if len(fields) != 5:
            continue
        if all(pattern in ("*", value) for pattern, value in zip(fields[:4], wanted)):
            redact.register(fields[4])
            return fields[4]
    return None


def resolve_conninfo(url: Optional[str], env: Mapping[str, str]) -> ConnInfo:
    """The one function that decides where we connect (precedence: module doc)."""
    url = url or env.get(ENV_URL)
    env_parts = _libpq_env_parts(env)
    if env_parts.get("password"):
        redact.register(env_parts["password"])
    info = {"host": "localhost", "port": 5432, "user": _os_user(),
            "sslmode": "prefer", "connect_timeout": DEFAULT_CONNECT_TIMEOUT,
            "application_name": DEFAULT_APPLICATION_NAME}
    # Environment settings that are not "where": TLS, timeouts, app name.
    for key in ("sslmode", "sslrootcert", "sslcert", "sslkey", "connect_timeout", "application_name"):
        if key in env_parts:
            info[key] = env_parts[key]
    if url:
        info.update(_url_parts(url))
    else:
        info.update(env_parts)
    info["port"] = _parse_port(str(info["port"]))
    info.setdefault("database", info["user"])
    if info.get("password") is None:
        info["password"] = _fallback_password(info, env)
    info["connect_timeout"] = parse_seconds(str(info["connect_timeout"]), "connect_timeout", allow_zero=True) or None
    if info["sslmode"] not in SSLMODES:
        raise UsageError("invalid sslmode %r: use one of %s" % (info["sslmode"], ", ".join(SSLMODES)))
    return ConnInfo(**info)


def _fallback_password(info: dict, env: Mapping[str, str]) -> Optional[str]:
    if env.get(LIBPQ_ENV["password"]):
        return env[LIBPQ_ENV["password"]]
    if env.get(ENV_PASSWORD_FILE):
        return _read_password_file(env[ENV_PASSWORD_FILE])
    return _pgpass_password(info, env)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in a container: libpq fails here too
        return "postgres"


def _seconds(flag: Optional[str], env: Mapping[str, str], name: str, what: str, default: float) -> float:
    text = flag if flag is not None else env.get(name)
    return default if text is None else parse_seconds(text, what)


def resolve(args, env: Mapping[str, str], need_database: bool = True) -> Settings:
    """Settings from parsed arguments and the environment."""
    schema = validate_schema(args.schema if args.schema is not None else env.get(ENV_SCHEMA, DEFAULT_SCHEMA))
    url = args.url
    if url is None and getattr(args, "command", None) in MIGRATION_COMMANDS:
        url = env.get(ENV_MIGRATION_URL) or None  # --url, then this, then POSTGRES_URL
    conninfo = resolve_conninfo(url, env) if need_database else None
    return Settings(conninfo=conninfo, schema=schema,
                    lock_timeout=_seconds(args.lock_timeout, env, ENV_LOCK_TIMEOUT, "--lock-timeout",
                                          DEFAULT_LOCK_TIMEOUT),
                    lock_wait=_seconds(args.lock_wait, env, ENV_LOCK_WAIT, "--lock-wait", DEFAULT_LOCK_WAIT),
                    output_format=args.format, verbosity=args.verbose - args.quiet)
