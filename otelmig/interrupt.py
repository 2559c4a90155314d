"""SIGINT / SIGTERM: roll back at once, release the lock, exit 130 / 143.

The handler first runs the registered cleanups (migrate.py registers one
that terminates our own backend through the lock connection, so the open
transaction is rolled back by the server right now, even while the driver is
blocked mid-statement), then raises Interrupted. Whatever error the unwinding
then produces (a closed socket, typically), cli.main reports the signal.
"""

import contextlib
import signal

from otelmig.errors import ExitStatus, Interrupted

_EXIT = {signal.SIGINT: ExitStatus.SIGINT, signal.SIGTERM: ExitStatus.SIGTERM}
_cleanups = []
received = []  # the signals seen in this process, in order


def _handler(signum, frame):
    first = not received
    received.append(signum)
    if first:
        for cleanup in list(_cleanups):
            with contextlib.suppress(Exception):
                cleanup()
    raise error()


def error() -> Interrupted:
    signum = received[0]
    return Interrupted("interrupted by %s: the open transaction was rolled back and the lock released; "
                       "rerun to continue" % signal.Signals(signum).name, _EXIT[signum])


@contextlib.contextmanager
def cleanup_on_signal(action):
    _cleanups.append(action)
    try:
        yield
    finally:
        _cleanups.remove(action)


@contextlib.contextmanager
def handlers():
    """Install our handlers for the duration of one command (main thread only)."""
    del received[:]
    previous = {}
    for signum in _EXIT:
        try:
            previous[signum] = signal.signal(signum, _handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
