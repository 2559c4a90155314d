"""What revision scripts call: run a list of Steps on Alembic's connection.

The CLI (migrate.py) hands its settings to the revisions through
config.attributes; an author running plain `alembic` with alembic.ini gets the
defaults (schema from OTEL_DB_SCHEMA, no data loss allowed).
"""

import contextlib
import os

from alembic import context, op

from otelmig import run as run_model
from otelmig.ddl import Catalog, OnlineRunner, SchemaSQL, outside_transaction
from otelmig.settings import DEFAULT_SCHEMA, ENV_SCHEMA


def run(steps_for) -> None:
    attrs = context.config.attributes
    names = SchemaSQL(attrs.get("schema") or os.environ.get(ENV_SCHEMA, DEFAULT_SCHEMA))
    bind = op.get_bind()
    ask = Catalog.on_connection(bind)
    runner = OnlineRunner(
        exec_scalar=ask.scalar, exec_rows=ask.rows,
        execute=bind.exec_driver_sql,
        outside=lambda: outside_transaction(bind),
        names=names,
        allow_data_loss=attrs.get("allow_data_loss", False),
        log=attrs.get("log", lambda line: None),
        watch=attrs.get("watch_index_build", contextlib.nullcontext))
    direction = "down" if steps_for.__name__ == "downgrade_steps" else "up"
    with run_model.revision_span(steps_for.__globals__.get("revision", "?"), direction):  # traced runs only
        runner.run(steps_for(names))
        _check_the_head(attrs, steps_for, bind)


def _check_the_head(attrs, steps_for, bind) -> None:
    """After a revision's last upgrade step, before Alembic writes its version
    row: the CLI's contract check (raising leaves no version row). The head is
    checked against otelmig/schema.py; an earlier revision against the
    contract it declares frozen (frozen_contract()), if it does."""
    check = attrs.get("check_head_contract")
    if check is None or steps_for.__name__ != "upgrade_steps":
        return
    module = steps_for.__globals__
    revision = module.get("revision")
    if revision == attrs.get("head"):
        check(bind.connection.dbapi_connection, revision, None)
    elif "frozen_contract" in module:
        check(bind.connection.dbapi_connection, revision, module["frozen_contract"]())
