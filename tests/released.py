"""The released revisions (tests/released_revisions.txt), for the kit's time
(issue 22, item 9; docs/ci.md): a revision whose fingerprint still equals the
one recorded at the release gets a sample of its crash points; a new or
changed one gets every crash point.

A revision's fingerprint is the sha256 of its script and of the otelmig
modules it imports (otelmig/ddl.py, db.py, migration_api.py ...: what decides
the statements it runs), except otelmig/schema.py, the head contract every
contract-changing revision edits (what the released revisions take from it
is checked by the kit's walks and verify, which always run whole).

    .venv/bin/python tests/released.py record    # at a release, after OTELMIG_KIT_FULL=1 ./test.sh tests/test_revision_kit.py
    .venv/bin/python tests/released.py show      # each revision: released and unchanged, changed, or new
"""

import glob
import hashlib
import os
import random
import re
import sys
from typing import Dict, List, Optional

from otelmig import revisions

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
LIST = os.path.join(TESTS, "released_revisions.txt")
FULL_ENV = "OTELMIG_KIT_FULL"   # 1: every crash point of every revision (the release check)
SEED_ENV = "OTELMIG_KIT_SEED"   # the sample's seed; default the UTC date (another sample each day)
SAMPLED = 4                     # crash points per released revision: the first, the last, two others
NOT_FINGERPRINTED = ("schema",)  # otelmig modules left out of the fingerprint (see above)
HEADER = """\
# Revisions as released: revision, fingerprint (sha256 of the script and the
# otelmig modules it imports, tests/released.py), script. Recorded at a
# release with `.venv/bin/python tests/released.py record` after the full
# kit passed (OTELMIG_KIT_FULL=1). The kit samples these revisions' crash
# points while the fingerprint matches; docs/ci.md says why that is safe enough.
"""


def script_of(root: str, revision: str) -> str:
    found = glob.glob(os.path.join(root, "migrations", "versions", "%s_*.py" % revision))
    if len(found) != 1:
        raise LookupError("revision %s: %d script(s) named %s_*.py in %s/migrations/versions"
                          % (revision, len(found), revision, root))
    return found[0]


def imported_modules(text: str) -> List[str]:
    """The otelmig modules a script imports: `from otelmig.X import`, `from otelmig import X, Y`."""
    names = set(re.findall(r"^from otelmig\.(\w+) import", text, re.M))
    for listed in re.findall(r"^from otelmig import ([\w, ]+)", text, re.M):
        names.update(name.strip() for name in listed.split(","))
    return sorted(names - set(NOT_FINGERPRINTED))


def fingerprint(root: str, revision: str) -> str:
    path = script_of(root, revision)
    with open(path, "rb") as handle:
        script = handle.read()
    digest = hashlib.sha256(script)
    for module in imported_modules(script.decode("utf-8")):
        with open(os.path.join(root, "otelmig", module + ".py"), "rb") as handle:
            digest.update(b"\0" + module.encode() + b"\0" + handle.read())
    return digest.hexdigest()


def released(path: str = LIST) -> Dict[str, str]:
    """revision -> fingerprint as released, in the list's order."""
    found = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip() and not line.startswith("#"):
                revision, digest, _script = line.split()
                found[revision] = digest
    return found


def unchanged_since_release(root: str, revision: str, path: str = LIST) -> bool:
    recorded = released(path).get(revision)
    return recorded is not None and recorded == fingerprint(root, revision)


def seed() -> str:
    import datetime
    return os.environ.get(SEED_ENV) or datetime.datetime.now(datetime.timezone.utc).date().isoformat()


def crash_points(root: str, revision: str, count: int, what: str, path: str = LIST) -> List[int]:
    """Which statements k = 1..count to crash (or stop) after: all of them for a
    new or changed revision (or with OTELMIG_KIT_FULL=1); for a released and
    unchanged one the first, the last and others drawn from the seed."""
    if os.environ.get(FULL_ENV) == "1" or count <= SAMPLED or not unchanged_since_release(root, revision, path):
        return list(range(1, count + 1))
    rng = random.Random("%s %s %s %d" % (seed(), revision, what, count))
    return sorted([1, count] + rng.sample(range(2, count), SAMPLED - 2))


def sample_note(points: List[int], count: int) -> Optional[str]:
    """How to rerun a sampled matrix, for a failure's message (None: not sampled)."""
    if len(points) == count:
        return None
    return "sampled %d of %d points, %s=%s (%s=1 runs all)" % (len(points), count, SEED_ENV, seed(), FULL_ENV)


def record(root: str = REPO, path: str = LIST) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(HEADER)
        for revision in revisions.load(os.path.join(root, "migrations", "versions"))[1]:
            handle.write("%s %s %s\n" % (revision, fingerprint(root, revision),
                                         os.path.relpath(script_of(root, revision), root)))


def show(root: str = REPO) -> None:
    listed = released()
    for revision in revisions.load(os.path.join(root, "migrations", "versions"))[1]:
        state = ("new" if revision not in listed else
                 "released, unchanged (sampled crash points)" if unchanged_since_release(root, revision) else
                 "released, CHANGED since (every crash point)")
        print("%s %s" % (revision, state))


if __name__ == "__main__":
    commands = {"record": record, "show": show}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit("usage: tests/released.py record|show")
    commands[sys.argv[1]]()
