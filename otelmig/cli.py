"""Parse the command line, dispatch, and map every failure to an exit code.

main() holds the one try/except of the program: an OtelmigError becomes one
line on stderr and its exit code; anything else is a bug (exit 1). Command
modules are imported only when their command runs, so `check` never pays for
Alembic or SQLAlchemy.
"""

import argparse
import contextlib
import json
import os
import sys
from typing import Optional, Sequence

from otelmig import interrupt, redact
from otelmig._version import HEAD_REVISION, __version__
from otelmig.errors import EXIT_MEANINGS, PROGRAM, ExitStatus, OtelmigError, UsageError
from otelmig.settings import DEFAULT_WAIT_REPLICAS

PROG = PROGRAM  # as the operator runs it (the bundle by its file name): the same in every message
NO_DATABASE = ("heads",)  # commands that never connect


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, instead of usage + message
        if "--format" in message and "'prometheus'" in message:
            message = "--format prometheus is for %s only" % _listed(PROMETHEUS_COMMANDS)
        raise UsageError("%s; see `%s --help`" % (message, PROG))


def _listed(names) -> str:
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


# Which options each command takes: a command lists only those that apply to it.
DATABASE, LOCKS, JSON, PROMETHEUS, REPLICAS = "database", "locks", "json", "prometheus", "replicas"
COMMAND_OPTIONS = {
    "upgrade": (DATABASE, LOCKS, JSON, REPLICAS), "downgrade": (DATABASE, LOCKS, JSON, REPLICAS),
    "rollback": (DATABASE, LOCKS, JSON, REPLICAS),
    "stamp": (DATABASE, LOCKS, JSON), "maintain": (DATABASE, LOCKS, JSON, PROMETHEUS, REPLICAS),
    "current": (DATABASE, JSON), "history": (DATABASE, JSON), "plan": (DATABASE, JSON),
    "check": (DATABASE, JSON, PROMETHEUS), "verify": (DATABASE, JSON, PROMETHEUS), "heads": (JSON,),
    "log": (DATABASE, JSON), "repair": (DATABASE, LOCKS, JSON),
}

EXIT_CODES_HELP = "exit codes:\n" + "\n".join("  %-4d %s" % (int(status), meaning)
                                             for status, meaning in EXIT_MEANINGS.items())

ENVIRONMENT_HELP = """environment:
  POSTGRES_URL            the database URL (--url wins); else the libpq variables PGHOST, PGPORT,
                          PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE, ... with libpq's defaults
  POSTGRES_PASSWORD_FILE  a file holding the password (after PGPASSWORD, before PGPASSFILE)
  OTELMIG_MIGRATION_URL   the URL migrations use when POSTGRES_URL points at a transaction pooler
  OTEL_DB_SCHEMA          the target schema (--schema wins; default otel)
  OTELMIG_LOCK_TIMEOUT    --lock-timeout's default, seconds
  OTELMIG_LOCK_WAIT       --lock-wait's default, seconds
  OTELMIG_IDLE_TIMEOUT    how long a frozen otelmig may hold its locks (default 30 s)
  OTELMIG_ALLOW_DATA_LOSS 1: plain `alembic` lifts a data-loss refusal (otelmig: --allow-data-loss)
  OTELMIG_RECORD_TRACE    1: as --record-trace
  OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
                          send each run's trace there over OTLP/HTTP JSON (docs/tracing.md: OTEL_SERVICE_NAME,
                          OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_HEADERS, ..._TIMEOUT, OTEL_SDK_DISABLED,
                          TRACEPARENT)
  OTELMIG_WAIT_REPLICAS   --wait-replicas' seconds for upgrade, downgrade, rollback and maintain
  OTELMIG_MAX_REPLICA_LAG a row move pauses while a connected standby lags more (seconds, default 10)

docs/cli.md has every flag, output and exit code."""


def _global_options(parser, suppress: bool, kinds=(DATABASE, LOCKS, JSON, PROMETHEUS)) -> None:
    default = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
    if DATABASE in kinds:
        parser.add_argument("--url", default=default(None), help="database URL (else POSTGRES_URL, else PG* env)")
        parser.add_argument("--schema", default=default(None), help="target schema (else OTEL_DB_SCHEMA, else otel)")
    if LOCKS in kinds:
        parser.add_argument("--lock-timeout", default=default(None), metavar="SECONDS",
                            help="longest wait for a table lock per DDL attempt (default 5)")
        parser.add_argument("--lock-wait", default=default(None), metavar="SECONDS",
                            help="longest wait for another otelmig's migration lock (default 600)")
    if REPLICAS in kinds:  # the subcommands only: on the main parser it would swallow the command's name
        parser.add_argument("--wait-replicas", nargs="?", const=str(DEFAULT_WAIT_REPLICAS), default=default(None),
                            metavar="SECONDS", help="after the last commit, wait until every standby has replayed "
                            "it (default %g s; exit 10 when one has not)" % DEFAULT_WAIT_REPLICAS)
    formats = ("text", "json", "prometheus") if PROMETHEUS in kinds else ("text", "json")
    parser.add_argument("--format", default=default("text"), choices=formats, help="output format")
    parser.add_argument("-v", "--verbose", action="count", default=default(0), help="more on stderr")
    parser.add_argument("-q", "--quiet", action="count", default=default(0), help="less on stderr")
    parser.add_argument("--traceback", action="store_true", default=default(False),
                        help="show the traceback of an unexpected error")


TARGET_HELP = "a revision id (see `history`), -N (N revisions below the current one) or base (before the baseline)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Safe, versioned migrations for the OTEL store in PostgreSQL.",
                     epilog=EXIT_CODES_HELP + "\n\n" + ENVIRONMENT_HELP,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="store_true", help="print versions and exit")
    _global_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name, help_text, description=None):
        common = _Parser(add_help=False)
        _global_options(common, suppress=True, kinds=COMMAND_OPTIONS[name])
        return commands.add_parser(name, help=help_text, parents=[common], description=description or help_text,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)

    cmd = add("upgrade", "migrate to REV (default head)",
              "Migrate the schema up to REV (default head), one revision at a time, each in its own short "
              "transactions under the lock budget. A rerun does only what is left.")
    cmd.add_argument("revision", nargs="?", default="head", help="a revision id (see `history`) or head")
    cmd.add_argument("--sql", action="store_true", help="print the SQL instead; no database needed")
    cmd.add_argument("--record-trace", action="store_true",
                     help="after a successful upgrade to the head, write this run's own trace into the store's "
                     "traces and spans (also OTELMIG_RECORD_TRACE=1)")
    cmd = add("downgrade", "migrate down to REV (a revision, -N or base)",
              "Migrate the schema down to REV. Every refusal along the way is checked before the first "
              "change. `rollback` is the same as `downgrade -1`.")
    cmd.add_argument("revision", nargs="?", default=None, help=TARGET_HELP)
    cmd.add_argument("--sql", action="store_true", help="print the SQL instead; no database needed")
    cmd.add_argument("--allow-data-loss", action="store_true", help="drop columns that hold data")
    cmd = add("rollback", "downgrade by N revisions (default 1)",
              "Undo the last N revisions (default 1): `rollback 2` is `downgrade -2`.")
    cmd.add_argument("steps", nargs="?", default="1", help="how many revisions to undo (default 1)")
    cmd.add_argument("--sql", action="store_true", help="print the SQL instead; no database needed")
    cmd.add_argument("--allow-data-loss", action="store_true", help="drop columns that hold data")
    add("current", "the database's revision and whether it is the head")
    add("history", "the bundled revisions, oldest first (the database's marked with *)")
    add("heads", "the bundled head revision(s); no database needed")
    cmd = add("stamp", "record REV in the version table without running migrations",
              "Record REV in the version table without running any migration (the schema must already be "
              "what REV describes).")
    cmd.add_argument("revision", help="a revision id (see `history`), head or base")
    add("plan", "the pending revisions and the statements they would run here; writes nothing")
    cmd = add("check", "fast readiness probe for container entrypoints",
              "Exit 0 when the worker can write now (the schema at the head); one catalog round trip.")
    cmd.add_argument("--wait", default="0", metavar="SECONDS", help="retry an unreachable database this long")
    cmd = add("verify", "compare the live schema with the head contract")
    cmd.add_argument("--strict", action="store_true", help="operator extras count as drift")
    cmd = add("maintain", "create spans' day partitions ahead; with --retain, drop those older than the window")
    cmd.add_argument("--ahead", default=None, metavar="DAYS", help="partitions for today and this many days ahead "
                     "(default 7)")
    cmd.add_argument("--retain", default=None, metavar="DURATION",
                     help="drop partitions and delete traces wholly older than this (e.g. 14d, 36h, 2w)")
    cmd.add_argument("--dry-run", action="store_true", help="list what it would create and drop; change nothing")
    cmd = add("repair", "converge the schema at the head on the contract (what verify reports as drift)",
              "Converge the live schema at the head on the contract: build a missing contract index CONCURRENTLY "
              "(rebuild an INVALID one with REINDEX CONCURRENTLY), restore a missing DEFAULT or NOT NULL under the "
              "lock budget. It drops nothing; whatever it cannot repair safely (a missing table or column, a wrong "
              "type, NULLs, partitions: `maintain`, a store behind the head: `upgrade`) it names and refuses "
              "(exit 8), nothing changed. A rerun finds nothing to repair.")
    cmd.add_argument("--dry-run", action="store_true", help="list what it would run; change nothing")
    cmd = add("log", "the run history: who ran upgrade, downgrade, stamp, maintain and repair, when, and how it ended",
              "The run history (schema.otelmig_runs), newest first; writes nothing. A run whose process died "
              "without recording how it ended reads `unfinished`.")
    cmd.add_argument("--limit", default="20", metavar="N", help="the N newest runs (default 20; 0: all)")
    return parser


def version_line() -> str:
    import platform
    from importlib import metadata

    def version_of(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "missing"
    # The product's name, however it was run: the spec's form (docs/cli.md), which scripts parse.
    return "otelmig %s (head %s, Python %s, Alembic %s, SQLAlchemy %s, pg8000 %s)" % (
        __version__, HEAD_REVISION, platform.python_version(),
        version_of("alembic"), version_of("SQLAlchemy"), version_of("pg8000"))


def _parse_steps(text: str) -> int:
    try:
        steps = int(text)
    except ValueError:
        raise UsageError("rollback takes a number of revisions, not %r" % text) from None
    if steps < 1:
        raise UsageError("rollback takes a positive number of revisions, not %d" % steps)
    return steps


def _downgrade_target(args) -> str:
    if args.revision is None:
        raise UsageError("downgrade needs a target: `%s rollback` (or `downgrade -1`) undoes the last revision, "
                         "`downgrade base` undoes them all, `downgrade REV` goes down to REV" % PROG)
    return args.revision


def _sql(args, settings, out, err) -> int:
    from otelmig import offline
    if args.command == "upgrade":
        return offline.upgrade_sql(settings, out, args.revision)
    target = "-%d" % _parse_steps(args.steps) if args.command == "rollback" else _downgrade_target(args)
    return offline.downgrade_sql(settings, out, target, args.allow_data_loss)


def _check(args, settings, err):
    from otelmig import check
    from otelmig.settings import parse_seconds
    return check.check(settings, err, parse_seconds(args.wait, "--wait", allow_zero=True))


def _current(args, settings, err):
    from otelmig import check
    return check.current(settings, err)


def _verify(args, settings, err):
    from otelmig import verify
    return verify.verify(settings, err, args.strict)


def _plan(args, settings, err):
    from otelmig import plan
    return plan.plan(settings, err)


def _log(args, settings, err):
    from otelmig import log
    return log.log(settings, err, args.limit)


def _maintain(args, settings, err):
    from otelmig import maintain
    return maintain.maintain(settings, err, args.ahead, args.retain, args.dry_run)


def _repair(args, settings, err):
    from otelmig import converge
    return converge.repair_drift(settings, err, args.dry_run)


def _migrate(args, settings, err):
    from otelmig import migrate
    name = args.command
    if name == "upgrade":
        return migrate.upgrade(settings, err, args.revision)
    if name == "downgrade":
        return migrate.downgrade(settings, err, _downgrade_target(args), args.allow_data_loss)
    if name == "rollback":
        return migrate.downgrade(settings, err, "-%d" % _parse_steps(args.steps), args.allow_data_loss)
    if name == "stamp":
        return migrate.stamp(settings, err, args.revision)
    if name == "history":
        return migrate.history(settings, err)
    return migrate.heads(settings, err)


# Each command's module is imported only when it runs: `check` stays light.
# A command returns an output.Result, which dispatch prints.
HANDLERS = {"check": _check, "current": _current, "verify": _verify, "plan": _plan, "maintain": _maintain,
            "log": _log, "repair": _repair}
# The module of each command: its FAILURE_FIELDS (and failure_prometheus) shape
# a failed run's JSON (and Prometheus) output, so _fail knows no command's fields.
COMMAND_MODULES = {"check": "check", "current": "check", "verify": "verify", "plan": "plan", "maintain": "maintain",
                   "log": "log", "repair": "converge"}
PROMETHEUS_COMMANDS = tuple(sorted(name for name, kinds in COMMAND_OPTIONS.items() if PROMETHEUS in kinds))


def dispatch(args, settings, out, err) -> int:
    if settings.output_format == "prometheus" and args.command not in PROMETHEUS_COMMANDS:
        raise UsageError("--format prometheus is for %s only" % _listed(PROMETHEUS_COMMANDS))
    if getattr(args, "sql", False):
        return _sql(args, settings, out, err)  # a script streamed to out, not a result
    from otelmig.output import print_result
    result = HANDLERS.get(args.command, _migrate)(args, settings, err)
    return print_result(settings, out, err, "%s: %s" % (PROG, args.command), result)


class Invocation:
    """What is known of this run when it fails: how to report the failure, and
    the recorded run (otelmig.run) of a command that changes the store."""

    def __init__(self):
        self.command, self.output_format, self.schema = None, "text", None
        self.recorded = None


def main(argv: Optional[Sequence[str]] = None, env=None, out=None, err=None) -> int:
    out = redact.RedactingStream(out or sys.stdout)
    err = redact.RedactingStream(err or sys.stderr)
    env = os.environ if env is None else env
    argv = sys.argv[1:] if argv is None else list(argv)
    run = Invocation()
    try:
        with interrupt.handlers():
            code = _run(argv, env, out, err, run)
        if interrupt.received:  # a signal that arrived while we were finishing
            return _fail(out, err, run, interrupt.error(), "--traceback" in argv)
        _finish_recorded(run, code, None, None)
        return code
    except SystemExit as exc:  # argparse after --help
        return int(exc.code or 0)
    except BaseException as exc:  # the one place exceptions become exit codes
        if interrupt.received:
            error = interrupt.error()
            # Where a downgrade across revisions stopped (migrate._naming_where_it_stopped).
            note = getattr(exc, "where_it_stopped", None) or getattr(exc.__cause__, "where_it_stopped", None)
            if note:
                error.args = (error.message + note,) + error.args[1:]
        elif isinstance(exc, Exception):
            error = _as_otelmig_error(exc)
        else:
            raise
        return _fail(out, err, run, error, "--traceback" in argv, exc)
    finally:
        _forget_recorded(run)


def _run(argv, env, out, err, run: Invocation) -> int:
    with contextlib.redirect_stdout(out):  # --help goes where the caller's output goes
        args = build_parser().parse_args(argv)
    run.command, run.output_format = args.command, args.format
    if args.version:
        out.write(version_line() + "\n")
        return 0
    if not args.command:
        raise UsageError("no command given; see `%s --help`" % PROG)
    from otelmig import db, settings as settings_mod
    db.use_c_pbkdf2()  # this process is ours (init_db() inside a worker leaves scramp alone)
    # The schema first: a failure further on (a bad URL) still reports it in JSON and Prometheus.
    run.schema = settings_mod.resolve_schema(args, env)
    offline = getattr(args, "sql", False)
    needs_db = args.command not in NO_DATABASE and not offline
    settings = settings_mod.resolve(args, env, need_database=needs_db,
                                    writes=args.command in settings_mod.MIGRATION_COMMANDS and not offline)
    if args.command in settings_mod.MIGRATION_COMMANDS and not offline and not getattr(args, "dry_run", False):
        run.recorded = _start_recorded(args, argv, env, settings, err)
    return dispatch(args, settings, out, err)


# -- the recorded run: its history row (otelmig/runlog.py) and its trace --------------

ENV_RECORD_TRACE = "OTELMIG_RECORD_TRACE"
OTLP_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def _start_recorded(args, argv, env, settings, err):
    """A command that changes the store is recorded: migration_session opens its
    history row (otelmig/runlog.py) once it holds the migration lock; the trace
    is kept only when exported or stored (--record-trace)."""
    from otelmig import run as run_model, runlog
    record_trace = getattr(args, "record_trace", False) or _flag(env, ENV_RECORD_TRACE)
    exporter = _exporter(env, err)
    recorded = run_model.Run(args.command, argv, traced=bool(exporter or record_trace),
                             traceparent=env.get("TRACEPARENT"))
    info = settings.conninfo
    recorded.statement_attributes = {"db.system.name": "postgresql",
                                     "db.namespace": "%s|%s" % (info.database, settings.schema),
                                     "server.address": info.host, "server.port": info.port}
    recorded.root.attributes.update({"otelmig.command": args.command, "otelmig.schema": settings.schema,
                                     "otelmig.arguments": " ".join(recorded.arguments)})
    if record_trace:
        from otelmig import tracestore
        recorded.finishers.append(lambda r: tracestore.record(settings, err, r, service_name=_service(env)))
    recorded.finishers.append(runlog.close_history)
    if exporter:
        recorded.finishers.append(exporter)
    return run_model.begin(recorded)


def _flag(env, name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _service(env) -> str:
    return env.get("OTEL_SERVICE_NAME") or "otelmig"


def _exporter(env, err):
    """The OTLP exporter when an endpoint is set and the SDK is not disabled; None
    otherwise, without importing it (otelmig/otlp.py: check's path stays as it is)."""
    if not any(env.get(name) for name in OTLP_ENDPOINTS) or _flag(env, "OTEL_SDK_DISABLED"):
        return None
    from otelmig import otlp  # only when asked for: an import inside the function keeps it off every other path
    return otlp.exporter(env, lambda line: err.write(line + "\n"))


def _finish_recorded(invocation: Invocation, code: int, error, exc) -> None:
    """How the recorded run ended, written once: its history row closed, its trace
    stored and exported. Each of these only warns when it fails: the exit code stays."""
    recorded = invocation.recorded
    if recorded is None or recorded.exit_code is not None:
        return
    from otelmig.run import sqlstate_of
    message = error.message if error is not None and code else None
    recorded.finish(code, message, sqlstate_of(exc, message or ""))
    for finisher in recorded.finishers:
        try:
            finisher(recorded)
        except Exception:  # each finisher warns itself; none may change the outcome
            pass


def _forget_recorded(invocation: Invocation) -> None:
    recorded = invocation.recorded
    if recorded is None:
        return
    from otelmig import run as run_model
    run_model.end(recorded)
    if recorded.history is not None and recorded.history.conn is not None:  # ended before it was finished
        recorded.history.close()


def _as_otelmig_error(exc: BaseException) -> OtelmigError:
    if isinstance(exc, OtelmigError):
        return exc
    if "pg8000" in sys.modules or "sqlalchemy" in sys.modules:
        from otelmig import db
        translated = db.translate(exc)
        if translated is not None:
            return translated
    return OtelmigError("internal error (a bug in otelmig): %s: %s; rerun with --traceback and report it"
                        % (type(exc).__name__, exc), ExitStatus.INTERNAL)


def _fail(out, err, run: Invocation, error, show_traceback: bool, exc=None) -> int:
    status = int(error.exit_status)
    _finish_recorded(run, status, error, exc)  # before the error line, which stays the last one
    if show_traceback:
        import traceback
        err.write(traceback.format_exc())
    message = " ".join(error.message.split())
    module = _command_module(run.command)
    if run.output_format == "json":
        payload = dict(getattr(module, "FAILURE_FIELDS", {}))
        payload.update(exit_code=status, schema=run.schema, message=message)
        payload.update(getattr(error, "details", {}))
        out.write(json.dumps(payload, sort_keys=True) + "\n")
    elif run.output_format == "prometheus" and run.schema and hasattr(module, "failure_prometheus"):
        out.write(module.failure_prometheus(run.schema, status))
    err.write("%s: %s\n" % (PROG, message))
    return status


def _command_module(command):
    """The module of a command that has one in COMMAND_MODULES, imported if it was not yet."""
    import importlib
    name = COMMAND_MODULES.get(command or "")
    return importlib.import_module("otelmig." + name) if name else None
