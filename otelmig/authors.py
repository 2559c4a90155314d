"""The authors' path: plain `alembic` from the repository, and pytest-alembic.

migrations/env.py runs here whenever it opens the database connection itself,
that is whenever the otelmig CLI did not hand it a Connection:

- plain `alembic upgrade head` / `alembic downgrade -1` from the repository
  root (its alembic.ini): the connection comes from the environment exactly as
  for otelmig (POSTGRES_URL, else the PG* variables; POSTGRES_PASSWORD_FILE,
  PGPASSFILE), the schema from OTEL_DB_SCHEMA;
- an Engine in config.attributes["connection"] (pytest-alembic's
  `alembic_engine`): connections come from that Engine.

Either way it takes the same migration lock as `otelmig upgrade` first
(waiting up to OTELMIG_LOCK_WAIT seconds), so it never runs beside an otelmig;
a revision's data-loss refusal stands unless OTELMIG_ALLOW_DATA_LOSS=1 (the
`--allow-data-loss` of the authors' path); and a failure becomes Alembic's
CommandError with one line that passes through the redactor, so `alembic`
prints `FAILED: ...` and never a password. A Connection handed in belongs to
its caller (the otelmig CLI holds the lock and decides data loss itself).
"""

import contextlib
import os
import sys
from typing import Mapping, Optional

from otelmig import db, preflight, redact, repair, run, runlog
from otelmig.db import quote_ident, quote_literal
from otelmig.errors import ExitStatus, OtelmigError, RefusedError, UsageError
from otelmig.lock import MigrationLock
from otelmig.revisions import HEAD_REVISION
from otelmig.schema import VERSION_TABLE
from otelmig.scripts import engine_for
from otelmig.settings import (DEFAULT_LOCK_WAIT, DEFAULT_SCHEMA, ENV_LOCK_WAIT, ENV_SCHEMA, parse_seconds,
                              resolve_conninfo, validate_schema)

ENV_ALLOW_DATA_LOSS = "OTELMIG_ALLOW_DATA_LOSS"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def allow_data_loss(env: Mapping[str, str]) -> bool:
    value = env.get(ENV_ALLOW_DATA_LOSS, "").strip().lower()
    if value not in _TRUE + _FALSE:
        raise UsageError("%s must be 1 or 0, not %r" % (ENV_ALLOW_DATA_LOSS, value))
    return value in _TRUE


def say(line: str) -> None:
    sys.stderr.write(redact.redact(line) + "\n")
    sys.stderr.flush()


def _report_applied(ctx, step, heads, run_args) -> None:
    say("%s %s" % ("applied" if step.is_upgrade else "reverted", step.up_revision_id))


def _conninfo_of(engine, env: Mapping[str, str]):
    """Where an Engine connects, for the migration lock's own connection."""
    url = engine.url
    if not url.database:
        raise UsageError("the Engine handed to migrations/env.py has no database in its URL, so the migration "
                         "lock cannot be taken beside it: create it from a URL, or hand over a Connection and "
                         "hold otelmig's migration lock yourself")
    return resolve_conninfo(url.set(drivername="postgresql").render_as_string(hide_password=False), env)


@contextlib.contextmanager
def failures_as_command_errors():
    """Alembic prints a CommandError as one `FAILED: ...` line (exit 255), without a traceback."""
    from alembic.util import CommandError

    try:
        yield
    except OtelmigError as exc:
        raise CommandError(_one_line(exc)) from None
    except CommandError as exc:
        raise CommandError(redact.redact(str(exc))) from None
    except Exception as exc:
        translated = db.translate(exc)
        if translated is None:
            raise  # a bug in a revision being written: its author needs the traceback
        raise CommandError(_one_line(translated)) from None


def _one_line(error: OtelmigError) -> str:
    message = " ".join(error.message.split())
    if isinstance(error, RefusedError) and "--allow-data-loss" in message:
        message += " (plain alembic: set %s=1 instead of --allow-data-loss)" % ENV_ALLOW_DATA_LOSS
    return redact.redact(message)


@contextlib.contextmanager
def session(attributes: dict, env: Mapping[str, str] = os.environ, engine=None, command: Optional[str] = None):
    """(connection, schema) for env.py, under the migration lock; see the module doc.
    `command`: the Alembic command that writes (upgrade, downgrade, stamp), recorded
    in the run history; None for one that only reads (current)."""
    with failures_as_command_errors():
        schema = validate_schema(attributes.get("schema") or env.get(ENV_SCHEMA, DEFAULT_SCHEMA))
        attributes.setdefault("allow_data_loss", allow_data_loss(env))
        attributes.setdefault("on_version_apply", _report_applied)
        # The checks `otelmig upgrade` makes (otelmig/preflight.py), so both paths decide alike.
        attributes.setdefault("check_head_contract", preflight.contract_check(schema))
        attributes.setdefault("head", HEAD_REVISION)
        wait = parse_seconds(env[ENV_LOCK_WAIT], ENV_LOCK_WAIT) if env.get(ENV_LOCK_WAIT) else DEFAULT_LOCK_WAIT
        conninfo = _conninfo_of(engine, env) if engine is not None else resolve_conninfo(None, env)
        with MigrationLock(conninfo, schema, wait, say) as lock:
            own_engine = engine is None
            engine = engine if engine is not None else engine_for(conninfo)
            try:
                with _recorded(lock, schema, command), engine.connect() as connection:
                    repair.run_repairs(connection, schema)  # what an interrupted run left, first
                    yield connection, schema
            finally:
                if own_engine:
                    engine.dispose()


@contextlib.contextmanager
def _recorded(lock, schema: str, command: Optional[str]):
    """A writing Alembic command is recorded in the run history (otelmig/runlog.py),
    its outcome mapped to the exit code otelmig would have given (Alembic exits 1 or 255)."""
    if command is None:
        yield
        return
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    arguments = sys.argv[1:] if program.startswith("alembic") else [command]
    recorded = run.begin(run.Run(command, arguments, via="alembic"))
    try:
        runlog.open_history(lock, schema, say)
        yield
    except BaseException as exc:
        status, message = _exit_of(exc)
        recorded.finish(status, message, run.sqlstate_of(exc, message))
        raise
    else:
        recorded.finish(0)
    finally:
        runlog.close_history(recorded)
        run.end(recorded)


def _exit_of(exc: BaseException):
    """(exit code, message) otelmig gives for this failure."""
    if isinstance(exc, KeyboardInterrupt):
        return int(ExitStatus.SIGINT), "interrupted by SIGINT"
    cause = exc
    while cause is not None:  # failures_as_command_errors raised Alembic's error `from None`: ours is its context
        error = db.translate(cause) if isinstance(cause, Exception) else None
        if error is not None:
            return int(error.exit_status), error.message
        cause = cause.__cause__ or cause.__context__
    return int(ExitStatus.INTERNAL), "%s: %s" % (type(exc).__name__, exc)


def refuse_before_the_first_change(connection, schema: str, script, destination) -> None:
    """An upgrade's compatibility check (the one `otelmig upgrade` makes), before
    Alembic writes anything, even its version table. `destination` is Alembic's
    revision argument; a downgrade has no pending upgrade to check."""
    table = "%s.%s" % (quote_ident(schema), VERSION_TABLE)
    current = None
    if connection.exec_driver_sql("select to_regclass(%s)" % quote_literal(table)).scalar() is not None:
        current = connection.exec_driver_sql("select max(version_num) from %s" % table).scalar()
    connection.rollback()
    pending = _pending(script, destination, current)
    with failures_as_command_errors():
        preflight.refuse_conflicts(connection.connection.dbapi_connection, schema, [s.module for s in pending])
    connection.rollback()


def _pending(script, destination, current) -> list:
    """The revision scripts an upgrade to destination runs, oldest first; [] for a downgrade."""
    from alembic.script.revision import RangeNotAncestorError, ResolutionError, RevisionError
    from alembic.util import CommandError

    if not isinstance(destination, str) or destination.startswith("-") or destination == "base":
        return []
    try:
        return list(reversed(list(script.iterate_revisions(destination, current or "base"))))
    except (RangeNotAncestorError, ResolutionError, RevisionError, CommandError):
        return []  # not above the current revision: a downgrade, or Alembic names the problem itself
