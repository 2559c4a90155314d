"""Alembic environment for otelmig.

The CLI builds the Alembic Config in code and hands over an open connection
(config.attributes["connection"]); no URL ever passes through Alembic's
configparser. Authors of new revisions can still run plain `alembic` with the
repository's alembic.ini: then POSTGRES_URL is used.
"""

import os

from alembic import context
from alembic.util import CommandError

from otelmig.settings import DEFAULT_SCHEMA, ENV_SCHEMA, validate_schema

config = context.config
schema = validate_schema(config.attributes.get("schema") or os.environ.get(ENV_SCHEMA, DEFAULT_SCHEMA))


def run_online(connection) -> None:
    # Unqualified names must never land in another schema (public).
    quoted = connection.dialect.identifier_preparer.quote_schema(schema)
    connection.exec_driver_sql("SET search_path TO %s" % quoted)
    connection.commit()
    context.configure(
        connection=connection,
        target_metadata=None,
        version_table_schema=schema,
        transaction_per_migration=True,  # one transaction per revision
        on_version_apply=config.attributes.get("on_version_apply"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_standalone() -> None:
    """`alembic upgrade` by an author: connect from POSTGRES_URL."""
    from otelmig.settings import resolve_conninfo
    from otelmig.migrate import engine_for

    engine = engine_for(resolve_conninfo(None, os.environ))
    with engine.connect() as connection:
        run_online(connection)


if context.is_offline_mode():
    raise CommandError("use `otelmig upgrade --sql` for offline SQL")
elif "connection" in config.attributes:
    run_online(config.attributes["connection"])
else:
    run_standalone()
