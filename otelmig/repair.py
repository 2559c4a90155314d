"""What an interrupted run left behind: repaired before anything else.

A revision of several transactions leaves a state between two of them when
it stops: an error, the lock budget (exit 9), SIGINT, SIGTERM, SIGKILL, a
crash of the host. Every such state must accept every write the worker makes,
for ever, with the clock moving on. A revision whose intermediate states
could reject a write (revision 2's cutoff CHECK, which starts rejecting every
insert once its cutoff passes) declares `repair_steps(n)`: catalog-conditioned
steps that turn any state it left into one that rejects nothing. `maintain`
declares its own (otelmig/default_partition.py: the triggers, log and copies
of a DEFAULT promotion that stopped), run after the revisions'. They run

- first, in every upgrade, downgrade, rollback, stamp, maintain and repair, under the
  migration lock (a run killed outright could not run them), and in plain
  `alembic` (migrations/env.py);
- on the way out of a run that fails while it is still alive (an error, exit
  9, SIGINT, SIGTERM), on a new connection (its own may be gone).

A revision whose upgrade stopped before its version row was written may have
left objects it recorded (otelmig_objects rows under its id). It is partly
applied: a downgrade first runs that revision's downgrade steps, so the
downgrade returns exactly the layout its upgrade found.

Imports Alembic (to read the revision scripts): never on `check`'s path.
"""

import contextlib
from typing import Callable, List, Optional, Tuple

from otelmig import db, default_partition
from otelmig.ddl import Catalog, OnlineRunner, SchemaSQL, outside_transaction
from otelmig.schema import RECORD_TABLE
from otelmig.scripts import migrations_dir


def revision_modules() -> List[Tuple[str, object]]:
    """(revision id, module) of every bundled revision, newest first."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory(migrations_dir())
    return [(script.revision, script.module) for script in scripts.walk_revisions()]


def runner_on(connection, schema: str, log: Callable[[str], None], allow_data_loss: bool = False,
              watch=None) -> OnlineRunner:
    """An OnlineRunner on a SQLAlchemy connection outside Alembic's run (statements in
    its open transaction; a Concurrent step commits it and runs in autocommit)."""
    ask = Catalog.on_connection(connection)
    return OnlineRunner(
        exec_scalar=ask.scalar, exec_rows=ask.rows,
        execute=connection.exec_driver_sql,
        outside=lambda: outside_transaction(connection),
        names=SchemaSQL(schema), allow_data_loss=allow_data_loss, log=log,
        watch=watch or contextlib.nullcontext)


def run_repairs(connection, schema: str, modules=None) -> List[str]:
    """Every revision's repair steps, newest first, then maintain's (what a
    stopped DEFAULT promotion left: otelmig/default_partition.py), then
    commit; the statements run."""
    executed: List[str] = []
    runner = runner_on(connection, schema, executed.append)
    names = runner.names
    for _, module in (modules if modules is not None else revision_modules()):
        steps_for = getattr(module, "repair_steps", None)
        if steps_for is not None:
            runner.run(steps_for(names))
    runner.run(default_partition.repair_steps(names))
    connection.commit()
    return [statement.strip() for statement in executed]


def partly_applied(connection, schema: str, current: Optional[str], modules=None) -> List[Tuple[str, object]]:
    """Revisions above `current` (newest first) that recorded objects without their version row."""
    record = "%s.%s" % (db.quote_ident(schema), db.quote_ident(RECORD_TABLE))
    exists = connection.exec_driver_sql("select to_regclass(%s) is not null" % db.quote_literal(record)).scalar()
    connection.rollback()
    if not exists:
        return []
    above = []
    for revision, module in (modules if modules is not None else revision_modules()):
        if revision == current:
            break
        above.append((revision, module))
    found = []
    for revision, module in above:
        left = connection.exec_driver_sql("select exists (select 1 from %s where revision = %s)"
                                          % (record, db.quote_literal(revision))).scalar()
        if left:
            found.append((revision, module))
    connection.rollback()
    return found


def undo_partly_applied(connection, schema: str, current: Optional[str], log, allow_data_loss: bool = False,
                        watch=None) -> List[str]:
    """Run the downgrade steps of each partly applied revision above `current`, newest first."""
    undone = []
    for revision, module in partly_applied(connection, schema, current):
        runner = runner_on(connection, schema, log, allow_data_loss, watch)
        runner.run(module.downgrade_steps(runner.names))
        connection.commit()
        undone.append(revision)
    return undone
