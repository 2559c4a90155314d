"""Parse the command line, dispatch, and map every failure to an exit code.

main() holds the one try/except of the program: an OtelmigError becomes one
line on stderr and its exit code; anything else is a bug (exit 1). Command
modules are imported only when their command runs, so `check` never pays for
Alembic or SQLAlchemy.
"""

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from otelmig import interrupt, redact
from otelmig._version import HEAD_REVISION, __version__
from otelmig.errors import ExitStatus, OtelmigError, UsageError

PROG = "otelmig"
NO_DATABASE = ("heads",)  # commands that never connect


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, instead of usage + message
        raise UsageError("%s; see `%s --help`" % (message, PROG))


def _global_options(parser, suppress: bool) -> None:
    default = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
    parser.add_argument("--url", default=default(None), help="database URL (else POSTGRES_URL, else PG* env)")
    parser.add_argument("--schema", default=default(None), help="target schema (else OTEL_DB_SCHEMA, else otel)")
    parser.add_argument("--lock-timeout", default=default(None), metavar="SECONDS",
                        help="longest wait for a table lock per DDL attempt (default 5)")
    parser.add_argument("--lock-wait", default=default(None), metavar="SECONDS",
                        help="longest wait for another otelmig's migration lock (default 600)")
    parser.add_argument("--format", default=default("text"), choices=("text", "json", "prometheus"),
                        help="output format (prometheus: verify and maintain)")
    parser.add_argument("-v", "--verbose", action="count", default=default(0), help="more on stderr")
    parser.add_argument("-q", "--quiet", action="count", default=default(0), help="less on stderr")
    parser.add_argument("--traceback", action="store_true", default=default(False),
                        help="show the traceback of an unexpected error")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Safe, versioned migrations for the OTEL store in PostgreSQL.")
    parser.add_argument("--version", action="store_true", help="print versions and exit")
    _global_options(parser, suppress=False)
    common = _Parser(add_help=False)
    _global_options(common, suppress=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name, help_text):
        return commands.add_parser(name, help=help_text, parents=[common])

    cmd = add("upgrade", "migrate to REV (default head)")
    cmd.add_argument("revision", nargs="?", default="head")
    cmd.add_argument("--sql", action="store_true", help="print the SQL instead; no database needed")
    cmd = add("downgrade", "migrate down to REV (a revision, -N or base)")
    cmd.add_argument("revision")
    cmd.add_argument("--sql", action="store_true", help="print the SQL instead; no database needed")
    cmd.add_argument("--allow-data-loss", action="store_true", help="drop columns that hold data")
    cmd = add("rollback", "downgrade by N revisions (default 1)")
    cmd.add_argument("steps", nargs="?", default="1")
    cmd.add_argument("--sql", action="store_true", help="print the SQL instead; no database needed")
    cmd.add_argument("--allow-data-loss", action="store_true", help="drop columns that hold data")
    add("current", "the database's revision and whether it is the head")
    add("history", "the bundled revisions, oldest first")
    add("heads", "the bundled head revision(s)")
    cmd = add("stamp", "record REV in the version table without running migrations")
    cmd.add_argument("revision")
    add("plan", "the pending revisions and the statements they would run here; writes nothing")
    cmd = add("check", "fast readiness probe for container entrypoints")
    cmd.add_argument("--wait", default="0", metavar="SECONDS", help="retry an unreachable database this long")
    cmd = add("verify", "compare the live schema with the head contract")
    cmd.add_argument("--strict", action="store_true", help="operator extras count as drift")
    cmd = add("maintain", "create spans' day partitions ahead; with --retain, drop those older than the window")
    cmd.add_argument("--ahead", default=None, metavar="DAYS", help="partitions for today and this many days ahead "
                     "(default 7)")
    cmd.add_argument("--retain", default=None, metavar="DURATION",
                     help="drop partitions and delete traces wholly older than this (e.g. 14d, 36h, 2w)")
    cmd.add_argument("--dry-run", action="store_true", help="list what it would create and drop; change nothing")
    return parser


def version_line() -> str:
    import platform
    from importlib import metadata

    def version_of(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "missing"
    return "%s %s (head %s, Python %s, Alembic %s, SQLAlchemy %s, pg8000 %s)" % (
        PROG, __version__, HEAD_REVISION, platform.python_version(),
        version_of("alembic"), version_of("SQLAlchemy"), version_of("pg8000"))


def _parse_steps(text: str) -> int:
    try:
        steps = int(text)
    except ValueError:
        raise UsageError("rollback takes a number of revisions, not %r" % text) from None
    if steps < 1:
        raise UsageError("rollback takes a positive number of revisions, not %d" % steps)
    return steps


def _sql(args, settings, out, err) -> int:
    from otelmig import offline
    if args.command == "upgrade":
        return offline.upgrade_sql(settings, out, args.revision)
    target = "-%d" % _parse_steps(args.steps) if args.command == "rollback" else args.revision
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


def _maintain(args, settings, err):
    from otelmig import maintain
    return maintain.maintain(settings, err, args.ahead, args.retain, args.dry_run)


def _migrate(args, settings, err):
    from otelmig import migrate
    name = args.command
    if name == "upgrade":
        return migrate.upgrade(settings, err, args.revision)
    if name == "downgrade":
        return migrate.downgrade(settings, err, args.revision, args.allow_data_loss)
    if name == "rollback":
        return migrate.downgrade(settings, err, "-%d" % _parse_steps(args.steps), args.allow_data_loss)
    if name == "stamp":
        return migrate.stamp(settings, err, args.revision)
    if name == "history":
        return migrate.history(settings, err)
    return migrate.heads(settings, err)


# Each command's module is imported only when it runs: `check` stays light.
# A command returns an output.Result, which dispatch prints.
HANDLERS = {"check": _check, "current": _current, "verify": _verify, "plan": _plan, "maintain": _maintain}
# The module of each command: its FAILURE_FIELDS (and failure_prometheus) shape
# a failed run's JSON (and Prometheus) output, so _fail knows no command's fields.
COMMAND_MODULES = {"check": "check", "current": "check", "verify": "verify", "plan": "plan", "maintain": "maintain"}
PROMETHEUS_COMMANDS = ("verify", "maintain")


def dispatch(args, settings, out, err) -> int:
    if settings.output_format == "prometheus" and args.command not in PROMETHEUS_COMMANDS:
        raise UsageError("--format prometheus is for %s only" % " and ".join(PROMETHEUS_COMMANDS))
    if getattr(args, "sql", False):
        return _sql(args, settings, out, err)  # a script streamed to out, not a result
    from otelmig.output import print_result
    result = HANDLERS.get(args.command, _migrate)(args, settings, err)
    return print_result(settings, out, err, "%s: %s" % (PROG, args.command), result)


class Invocation:
    """What is known of this run when it fails: how to report the failure."""

    def __init__(self):
        self.command, self.output_format, self.schema = None, "text", None


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
        return code
    except SystemExit as exc:  # argparse after --help
        return int(exc.code or 0)
    except BaseException as exc:  # the one place exceptions become exit codes
        if interrupt.received:
            error = interrupt.error()
        elif isinstance(exc, Exception):
            error = _as_otelmig_error(exc)
        else:
            raise
        return _fail(out, err, run, error, "--traceback" in argv)


def _run(argv, env, out, err, run: Invocation) -> int:
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
    return dispatch(args, settings, out, err)


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


def _fail(out, err, run: Invocation, error, show_traceback: bool) -> int:
    status = int(error.exit_status)
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
