"""upgrade --sql / downgrade --sql: a script for DBA review, no connection.

The baseline adapts to what it finds, so the script makes the same decisions
in SQL: every conditional step is a DO block that checks the catalog, and the
concurrent index steps, which cannot run inside a transaction or a DO block,
use psql's \\gexec. Applied to an empty, a legacy or a half-adopted database
it reaches the same head and version row as the online upgrade. It is meant
for `psql -v ON_ERROR_STOP=1 -f`.
"""

from otelmig import db, runlog
from otelmig._version import HEAD_REVISION, KNOWN_REVISIONS, __version__
from otelmig.ddl import (PARTITION, PARTITION_INDEX, PARTITION_INDEX_NAME, Concurrent, SchemaSQL, PerPartition, Refusal,
                         RowCheck, Step, is_lifted, runs_outside, sql_of)
from otelmig.errors import UsageError
from otelmig.lock import lock_keys
from otelmig.scripts import lock_timeout_ms, resolve_revision, revisions_between
from otelmig.schema import VERSION_TABLE
from otelmig.session import script_settings

DOLLAR = "$otelmig$"


def upgrade_sql(settings, out, revision: str = "head") -> int:
    if revision.startswith("-"):
        raise UsageError("`upgrade %s` goes backwards: use `otelmig rollback --sql`" % revision)
    target = HEAD_REVISION if revision == "head" else resolve_revision(settings, revision, None)
    if target is None:
        raise UsageError("`upgrade %s` goes nowhere: to go back, use `otelmig downgrade %s --sql`"
                         % (revision, revision))
    scripts = revisions_between(settings, None, target)
    newer = [s.revision for s in revisions_between(settings, target, HEAD_REVISION)]
    names = SchemaSQL(settings.schema)
    out.write(_header(settings, "upgrade to %s" % target, scripts))
    out.write(_guards(names, newer))
    arguments = ["upgrade", revision, "--sql"]
    out.write(runlog.script_open(settings.schema, "upgrade", arguments))
    for script in scripts:
        out.write("\n-- revision %s: %s\n" % (script.revision, _first_line(script.doc)))
        out.write(render_steps(script.module.upgrade_steps(names), settings, names, allow_data_loss=False))
        out.write(_set_version(names, script.revision))
    out.write("\n" + runlog.script_close(settings.schema, "upgrade", arguments))
    return 0


def downgrade_sql(settings, out, revision: str, allow_data_loss: bool = False, command: str = "downgrade") -> int:
    """Offline there is no current revision to read: the script starts from the head."""
    target = resolve_revision(settings, revision, HEAD_REVISION)
    scripts = list(reversed(revisions_between(settings, target, HEAD_REVISION)))
    names = SchemaSQL(settings.schema)
    out.write(_header(settings, "downgrade from %s to %s" % (HEAD_REVISION, target or "base"), scripts))
    out.write(_guards(names, []))
    arguments = ["downgrade", revision, "--sql"] + (["--allow-data-loss"] if allow_data_loss else [])
    out.write(runlog.script_open(settings.schema, command, arguments))
    for script in scripts:
        out.write("\n-- revert revision %s: %s\n" % (script.revision, _first_line(script.doc)))
        out.write(render_steps(script.module.downgrade_steps(names), settings, names, allow_data_loss))
        out.write(_set_version(names, script.down_revision))
    out.write("\n" + runlog.script_close(settings.schema, command, arguments))
    return 0


def _first_line(doc) -> str:
    return (doc or "").strip().splitlines()[0] if doc else ""


def _header(settings, what: str, scripts) -> str:
    lines = [
        "-- otelmig %s: %s of schema %s" % (__version__, what, settings.schema),
        "-- revisions: %s" % (", ".join(s.revision for s in scripts) or "none"),
        "-- Each step checks the catalog first, so this script is safe on an empty, a legacy",
        "-- or a half-adopted database, and on one already at the target (it then changes nothing).",
        "-- Not checked by this script: whether a store it adopts is compatible (run `otelmig.pyz plan`",
        "-- against the database first: it lists the conflicts), and the contract afterwards (`otelmig.pyz verify`).",
        "-- Run with: psql -v ON_ERROR_STOP=1 -f THIS_FILE",
        "\\set ON_ERROR_STOP on",
        _set_session(),
        _set_lock_timeout(settings),
        "",
    ]
    return "\n".join(lines)


def _set_session() -> str:
    """The session settings the steps' decisions depend on (otelmig.session.SCRIPT),
    as the online migration session has them: psql under PGTZ or PGDATESTYLE, or
    a database or role with its own, then computes the same bounds."""
    return "\n".join("SET %s = %s;" % (name, db.quote_literal(value)) for name, value in script_settings().items())


def _set_lock_timeout(settings) -> str:
    return "SET lock_timeout = '%dms';" % lock_timeout_ms(settings)


def _guards(names: SchemaSQL, newer_known) -> str:
    """Stop before changing anything: another otelmig at work, or a database
    at a revision this script would rewind (unknown, or newer than its target)."""
    keys = lock_keys(names.schema)
    lock = ("DO %s\nBEGIN\n  -- the same session lock as `otelmig upgrade`, held until psql exits\n"
            "  IF NOT pg_try_advisory_lock(%d, %d) THEN\n"
            "    RAISE EXCEPTION 'another otelmig is migrating schema %s: try again when it is done';\n"
            "  END IF;\nEND\n%s;\n" % (DOLLAR, keys[0], keys[1], names.schema, DOLLAR))
    allowed = ", ".join(db.quote_literal(r) for r in KNOWN_REVISIONS if r not in newer_known)
    check = ("select exists (select 1 from %s where version_num not in (%s))"
             % (names.table(VERSION_TABLE), allowed))
    # The version table may not exist: only look inside it through EXECUTE.
    version = ("DO %s\nDECLARE ahead boolean := false;\nBEGIN\n"
               "  IF %s THEN\n    EXECUTE %s INTO ahead;\n  END IF;\n"
               "  IF ahead THEN\n    RAISE EXCEPTION 'schema %s is at a revision this script would rewind "
               "(a newer otelmig ran, or a later revision): stop';\n  END IF;\nEND\n%s;\n"
               % (DOLLAR, names.table_exists(VERSION_TABLE), db.quote_literal(check), names.schema, DOLLAR))
    return lock + version


def render_steps(steps, settings, names: SchemaSQL, allow_data_loss: bool) -> str:
    """The steps as a psql script: each type rendered as SQL that decides as ddl.decide() does online."""
    parts, in_transaction, unbounded = [], False, False
    for step in steps:
        if isinstance(step, Refusal) and is_lifted(step, allow_data_loss):
            continue
        outside = runs_outside(step)
        if outside and in_transaction:
            parts.append("COMMIT;\n")
            in_transaction = False
        if outside and not unbounded:
            # Concurrent builds queue no reader or writer; they wait for older transactions.
            parts.append("SET lock_timeout = 0;\n")
            unbounded = True
        if not outside and unbounded:
            parts.append(_set_lock_timeout(settings) + "\n")
            unbounded = False
        if not outside and not in_transaction:
            parts.append("BEGIN;\n")
            in_transaction = True
        parts.append(_render_step(step, names))
    if in_transaction:
        parts.append("COMMIT;\n")
    if unbounded:
        parts.append(_set_lock_timeout(settings) + "\n")
    return "".join(parts)


def _render_step(step: Step, names: SchemaSQL) -> str:
    """Online, a concurrent step runs CONCURRENTLY when its table holds rows;
    a script cannot know, and CONCURRENTLY is right on an empty table too."""
    if isinstance(step, Refusal):
        return _render_refusal(step, names)
    if isinstance(step, PerPartition):
        return _render_for_each(step)
    concurrent = isinstance(step, Concurrent)
    statement = sql_of(step, concurrently=concurrent)
    if concurrent:
        if step.when is None:
            return statement + ";\n"
        return "SELECT %s WHERE %s\n\\gexec\n" % (db.quote_literal(statement), step.when)
    if step.when is None:
        return statement + ";\n"
    return ("DO %s\nBEGIN\n  IF %s THEN\n    EXECUTE %s;\n  END IF;\nEND\n%s;\n"
            % (DOLLAR, step.when, db.quote_literal(statement), DOLLAR))


def _render_for_each(step: PerPartition) -> str:
    """One statement per partition the catalog lists when psql gets here (\\gexec runs each row)."""
    statement = db.quote_literal(sql_of(step, concurrently=step.concurrent))
    filled = "replace(replace(replace(%s, %s, q.index_name), %s, q.index), %s, q.partition)" % (
        statement, db.quote_literal(PARTITION_INDEX_NAME), db.quote_literal(PARTITION_INDEX),
        db.quote_literal(PARTITION))
    return ("SELECT %s FROM (%s) q(partition, index_name, index, display) WHERE %s\n\\gexec\n"
            % (filled, step.for_each, step.when or "true"))


def _render_refusal(step: Refusal, names: SchemaSQL) -> str:
    """ddl._decide_refusal in PL/pgSQL: when `when` holds, the message is the
    refusal, its detail and the row checks' counts; with row checks it stops
    only when that is not empty. Each checked column is read through EXECUTE,
    parsed only when it exists."""
    lines = ["DO %s" % DOLLAR, "DECLARE found bigint; detail text := ''; counts text := '';", "BEGIN",
             "  IF %s THEN" % (step.when or "true")]
    if step.detail:
        lines.append("    SELECT coalesce((%s)::text, '') INTO detail;" % step.detail)
    for check in step.row_checks:
        lines += ["  " + line for line in _render_row_check(check, names)]
    holds = "detail || counts <> ''" if step.row_checks else "true"
    lines += ["    IF %s THEN" % holds,
              "      RAISE EXCEPTION '%%', %s || detail || counts;" % db.quote_literal(step.message),
              "    END IF;", "  END IF;", "END", "%s;" % DOLLAR]
    return "\n".join(lines) + "\n"


def _render_row_check(check: RowCheck, names: SchemaSQL) -> list:
    table = names.table(check.table)
    exists = "select count(*) from (select 1 from %s where %s limit 1) first_row" % (table, check.predicate)
    count = "select count(*) from %s where %s" % (table, check.predicate)
    label = " rows in %s.%s.%s" % (names.schema, check.table, check.column)
    return ["  IF %s THEN" % check.when,
            "    EXECUTE %s INTO found;" % db.quote_literal(exists),
            "    IF found > 0 THEN",
            "      EXECUTE %s INTO found;" % db.quote_literal(count),
            "      counts := concat_ws(', ', nullif(counts, ''), found || %s);" % db.quote_literal(label),
            "    END IF;",
            "  END IF;"]


def _set_version(names: SchemaSQL, revision) -> str:
    table = names.table(VERSION_TABLE)
    lines = ["BEGIN;",
             "CREATE TABLE IF NOT EXISTS %s (version_num VARCHAR(32) NOT NULL, "
             "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num));" % table,
             "DELETE FROM %s;" % table]
    if revision:
        lines.append("INSERT INTO %s (version_num) VALUES (%s);" % (table, db.quote_literal(revision)))
    lines.append("COMMIT;")
    return "\n".join(lines) + "\n"
