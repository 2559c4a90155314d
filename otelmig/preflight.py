"""The checks an upgrade makes before its first change and before it records a
version, in one place: `otelmig upgrade` (migrate.py) and plain `alembic`
(migrations/env.py through otelmig/authors.py) run the same ones, so both
take the same decisions.

- refuse_conflicts: the first pending revision's compatibility check (the
  baseline's: otelmig.compat adoption_conflicts; revision 2's: drift from the
  baseline's contract, otelmig.compat drift_conflicts), exit 8 with nothing
  changed;
- contract_check: run by migration_api after a revision's last step, before
  Alembic writes its version row: the head against otelmig/schema.py, an
  earlier revision against the contract it declares frozen.
"""

from otelmig.catalog import compare, read_catalog
from otelmig.errors import PROGRAM, ExitStatus, OtelmigError, RefusedError
from otelmig.schema import HEAD


def refuse_conflicts(driver_conn, schema: str, pending_modules) -> None:
    """pending_modules: the revision modules about to run, oldest first."""
    check = getattr(pending_modules[0], "preflight", None) if pending_modules else None
    if check is None:
        return
    conflicts = check(read_catalog(driver_conn, schema), schema)
    if conflicts:
        listed = "; ".join(c.line() for c in conflicts)
        raise RefusedError("schema %s cannot be upgraded as it is (revision %s refuses it); nothing was changed. "
                           "%d conflict(s): %s" % (schema, pending_modules[0].revision, len(conflicts), listed),
                           details={"conflicts": [c._asdict() for c in conflicts]})


def contract_check(schema: str):
    """check(driver_conn, revision, wanted): wanted is a frozen contract, or None for the head's."""
    def check(driver_conn, revision, wanted) -> None:
        problems = compare(schema, read_catalog(driver_conn, schema), wanted or HEAD).problems
        if problems:
            raise OtelmigError("schema %s does not hold the contract of revision %s after its upgrade, so it was not "
                               "recorded: %s; see `%s verify`"
                               % (schema, revision, "; ".join("%s %s: %s" % (p.kind, p.object, p.detail)
                                                              for p in problems), PROGRAM),
                               ExitStatus.DRIFT, details={"problems": [p.as_dict() for p in problems]})
    return check
