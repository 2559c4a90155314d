"""Progress of long index builds, on stderr, from pg_stat_progress_create_index.

A build on a table of millions of rows takes seconds to minutes; the operator
should see that it moves. A watcher thread waits one interval, and only if the
build is still running opens its own connection and reports every interval.
"""

import contextlib
import threading

from otelmig import db

INTERVAL_SECONDS = 5.0

_PROGRESS_SQL = """
select coalesce(index_relid::regclass::text, '?'), phase, blocks_done, blocks_total, tuples_done, tuples_total
from pg_stat_progress_create_index where pid = %s
"""


def describe(row) -> str:
    index, phase, blocks_done, blocks_total, tuples_done, tuples_total = row
    if blocks_total:
        amount = ", %d%% of %d blocks" % (100 * blocks_done // blocks_total, blocks_total)
    elif tuples_total:
        amount = ", %d%% of %d tuples" % (100 * tuples_done // tuples_total, tuples_total)
    else:
        amount = ""
    return "  building %s: %s%s" % (index, phase, amount)


@contextlib.contextmanager
def watch_index_build(conninfo, pid: int, say, interval: "float | None" = None):
    interval = interval or INTERVAL_SECONDS
    done = threading.Event()

    def report():
        if done.wait(interval):
            return
        with contextlib.suppress(Exception):  # progress is a courtesy, never a failure
            conn = db.connect(conninfo)
            try:
                cursor = conn.cursor()
                while not done.is_set():
                    cursor.execute(_PROGRESS_SQL, (pid,))
                    row = cursor.fetchone()
                    if row:
                        say(describe(row))
                    done.wait(interval)
            finally:
                conn.close()

    watcher = threading.Thread(target=report, name="otelmig-index-progress", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join(timeout=2)
