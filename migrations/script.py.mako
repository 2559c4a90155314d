"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

Write the revision as steps (otelmig/ddl.py: Statement, Concurrent,
PerPartition, Refusal): each with the catalog condition under which it
applies, the lock it takes (ddl.Lock), what it does to the table
(ddl.Effect) and, for a refusal, the flag that lifts it (ddl.Guard), so that
online runs, `--sql` and `plan` make the same decisions. If it changes the head contract, update
otelmig/schema.py and docs/schema.md. Nothing else: otelmig/revisions.py reads
the new head from this file's `revision` and `down_revision` lines (keep each
on one line, as written here).
"""

from otelmig.ddl import Concurrent, Guard, Lock, Refusal, RowCheck, SchemaSQL, Statement  # noqa: F401  (the step types)
from otelmig import migration_api

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}


def upgrade_steps(n: SchemaSQL):
    return []


def downgrade_steps(n: SchemaSQL):
    return []


def upgrade():
    migration_api.run(upgrade_steps)


def downgrade():
    migration_api.run(downgrade_steps)
