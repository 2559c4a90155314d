"""Alembic environment for otelmig.

Three callers, one migration run:

- the otelmig CLI builds the Alembic Config in code and hands over an open
  Connection (config.attributes["connection"]); it already holds the migration
  lock and decides data loss, and no URL ever passes through Alembic;
- plain `alembic` by an author, from the repository root with its alembic.ini
  and POSTGRES_URL (or the PG* variables);
- an Engine in config.attributes["connection"] (pytest-alembic's convention).

The last two open their own connection through otelmig/authors.py: the same
migration lock as `otelmig upgrade`, OTELMIG_ALLOW_DATA_LOSS=1 for a data-loss
refusal, one redacted `FAILED:` line on error.
"""

import os

from alembic import context
from alembic.util import CommandError
from sqlalchemy.engine import Engine

from otelmig import authors, db, run
from otelmig.settings import DEFAULT_SCHEMA, ENV_SCHEMA, validate_schema

config = context.config


def prepare_schema(connection, schema: str) -> None:
    """Alembic creates its version table in the target schema before the first
    revision runs, so the schema must exist by then. Created only when missing:
    CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the
    schema exists, which a least-privilege owner of the schema lacks."""
    missing = connection.exec_driver_sql("select to_regnamespace(%s) is null" % db.quote_literal(schema)).scalar()
    if missing:
        connection.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS %s" % db.quote_ident(schema))


def run_migrations(connection, schema: str) -> None:
    prepare_schema(connection, schema)
    # Unqualified names must never land in another schema (public).
    connection.exec_driver_sql("SET search_path TO %s" % db.quote_ident(schema))
    connection.commit()
    # Every check made before the first change has passed (otelmig's and the
    # authors' path): the run history may be created now (otelmig/runlog.py).
    run.changing()
    context.configure(
        connection=connection,
        target_metadata=None,
        version_table_schema=schema,
        transaction_per_migration=True,  # one transaction per revision
        on_version_apply=config.attributes.get("on_version_apply"),
    )
    with context.begin_transaction():
        context.run_migrations()


def handed_schema() -> str:
    return validate_schema(config.attributes.get("schema") or os.environ.get(ENV_SCHEMA, DEFAULT_SCHEMA))


def _destination():
    """Alembic's target revision; `current`, `history` and the like have none."""
    try:
        return context.get_revision_argument()
    except KeyError:
        return None


def _writes() -> bool:
    """Whether the command moves the version table (upgrade, downgrade, stamp: even to base, whose
    revision argument reads None), as opposed to one that only reads it (current)."""
    try:
        context.get_revision_argument()
    except KeyError:
        return False
    return True


def _command() -> str:
    """The Alembic command that runs (upgrade, downgrade, stamp), for the run history."""
    cmd = getattr(getattr(config, "cmd_opts", None), "cmd", None)
    return getattr(cmd[0], "__name__", "alembic") if cmd else "alembic"


def main() -> None:
    if context.is_offline_mode():
        raise CommandError("use `otelmig upgrade --sql` for offline SQL")
    handed = config.attributes.get("connection")
    if handed is not None and not isinstance(handed, Engine):
        run_migrations(handed, handed_schema())  # the otelmig CLI
        return
    destination = _destination()
    with authors.session(config.attributes, engine=handed, command=_command() if _writes() else None) \
            as (connection, schema):
        authors.refuse_before_the_first_change(connection, schema, context.script, destination)
        run_migrations(connection, schema)


main()
