"""Exit codes and the error hierarchy.

Every error otelmig raises on purpose is an OtelmigError carrying its exit code
(the table in docs/cli.md). cli.main() is the one place that turns them into a
line on stderr and a return code; db.translate() is the one place that turns
driver and SQLAlchemy errors into these.
"""

import enum
import os
import sys


def program_name(argv0: str) -> str:
    """The name the operator runs otelmig by, for every message: the bundle's
    file name (`otelmig.pyz`) when run as the pyz, else `otelmig` (installed,
    or `python -m otelmig`)."""
    base = os.path.basename(argv0 or "")
    return base if base.endswith(".pyz") else "otelmig"


PROGRAM = program_name(sys.argv[0] if sys.argv else "")


class ExitStatus(enum.IntEnum):
    OK = 0
    INTERNAL = 1
    USAGE = 2
    UNREACHABLE = 3
    NOT_INITIALISED = 4
    PENDING = 5
    UNKNOWN_REVISION = 6
    DRIFT = 7
    REFUSED = 8
    BUSY = 9
    REPLICAS_BEHIND = 10
    SIGINT = 130
    SIGTERM = 143


# What each exit code means: the top-level --help prints this table (docs/cli.md
# and the README have the same codes, tests/test_docs.py checks them).
EXIT_MEANINGS = {
    ExitStatus.OK: "done / ready / conforms",
    ExitStatus.INTERNAL: "internal error (a bug: the message says so)",
    ExitStatus.USAGE: "usage or configuration error (bad flag, URL, schema name or revision)",
    ExitStatus.UNREACHABLE: "the database cannot be reached, or refused the login",
    ExitStatus.NOT_INITIALISED: "not initialised (no schema, no version table, the legacy layout), or not ready to write",
    ExitStatus.PENDING: "migrations pending (the database is behind this build's head)",
    ExitStatus.UNKNOWN_REVISION: "the database is at a revision this build does not know (a newer otelmig ran)",
    ExitStatus.DRIFT: "drift: the live schema differs from the contract, or something had to be left",
    ExitStatus.REFUSED: "refused, nothing changed (data loss, read-only, a conflict the revision names)",
    ExitStatus.BUSY: "a table lock was not had within the lock budget (rolled back; rerun later)",
    ExitStatus.REPLICAS_BEHIND: "--wait-replicas: a standby had not replayed the change in time (the change is committed)",
    ExitStatus.SIGINT: "interrupted by SIGINT (rolled back, lock released)",
    ExitStatus.SIGTERM: "interrupted by SIGTERM (rolled back, lock released)",
}


class OtelmigError(Exception):
    """An expected failure: one line for the operator and an exit code."""

    exit_status = ExitStatus.INTERNAL

    def __init__(self, message: str, exit_status: "ExitStatus | None" = None, details: "dict | None" = None):
        super().__init__(message)
        if exit_status is not None:
            self.exit_status = exit_status
        self.details = details or {}  # extra fields for --format json

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class UsageError(OtelmigError):
    exit_status = ExitStatus.USAGE


class ConnectError(OtelmigError):
    exit_status = ExitStatus.UNREACHABLE


class NotInitialisedError(OtelmigError):
    exit_status = ExitStatus.NOT_INITIALISED


class PendingError(OtelmigError):
    exit_status = ExitStatus.PENDING


class UnknownRevisionError(OtelmigError):
    exit_status = ExitStatus.UNKNOWN_REVISION


class RefusedError(OtelmigError):
    """Would lose data, read-only database, or a missing privilege."""

    exit_status = ExitStatus.REFUSED


class BusyError(OtelmigError):
    exit_status = ExitStatus.BUSY


class ReplicasBehindError(OtelmigError):
    """--wait-replicas ran out of time (or could not see a standby): the change is committed,
    some standby has not replayed it yet (otelmig/replicas.py)."""

    exit_status = ExitStatus.REPLICAS_BEHIND


class Interrupted(BaseException):
    """SIGINT / SIGTERM arrived; the open transaction was rolled back.

    A BaseException, like KeyboardInterrupt, so that no `except Exception`
    on the way up (a connection retry, a cleanup) can swallow the signal.
    """

    def __init__(self, message: str, exit_status: ExitStatus):
        super().__init__(message)
        self.exit_status = exit_status

    @property
    def message(self) -> str:
        return str(self.args[0])
