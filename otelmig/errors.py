"""Exit codes and the error hierarchy.

Every error otelmig raises on purpose is an OtelmigError carrying its exit code
(the table in docs/cli.md). cli.main() is the one place that turns them into a
line on stderr and a return code; db.translate() is the one place that turns
driver and SQLAlchemy errors into these.
"""

import enum


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
