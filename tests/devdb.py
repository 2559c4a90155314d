"""`./test.sh --dev-db`: a throwaway development PostgreSQL for revision
authors (docs/authoring.md), the same kind of cluster the tests start
(tests/pgcluster.py): a free port, a random password, fsync off, its files
under /dev/shm or the temp dir. It prints one `POSTGRES_URL=...` line once
the empty database otel_dev is ready, and keeps the server until Ctrl-C
(SIGINT) or SIGTERM, then stops it and removes its files. Killed outright
(SIGKILL), the cluster's watcher stops it all the same.
"""

import os
import signal
import subprocess
import sys

from pgcluster import Cluster

DATABASE = "otel_dev"


class Stop(Exception):
    """Ctrl-C or SIGTERM: stop the server."""


def _stop(signum, frame):
    raise Stop()


def main() -> int:
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    cluster = Cluster()
    try:
        cluster.start()
        subprocess.run([os.path.join(cluster.bindir, "psql"), cluster.url(), "-qc", "CREATE DATABASE %s" % DATABASE],
                       check=True, capture_output=True)
        # The password is the throwaway server's own, made for this run: printing it is the point.
        print("POSTGRES_URL=%s" % cluster.url(DATABASE), flush=True)
        print("test.sh --dev-db: PostgreSQL in %s, until Ctrl-C" % cluster.root, file=sys.stderr, flush=True)
        while True:
            signal.pause()
    except Stop:
        pass
    finally:
        cluster.stop()
    print("test.sh --dev-db: stopped, its files removed", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
