"""The bundled revisions and their head, read from the revision scripts.

The one source of revision truth is migrations/versions/*.py: adding a
revision file is enough for `check`, `verify`, `upgrade` and the tests to
know the new head. `check` must stay fast and must not import Alembic,
SQLAlchemy or Mako, so this module does not ask Alembic: it reads each
script's `revision = "..."` and `down_revision = ...` lines (the form
`alembic revision` writes) with a regular expression, at import. That costs
well under a millisecond per script, the same in a checkout
(`pip install -e .`) and in the pyz. Walking history for a command
(rollback, plan, --sql) uses Alembic's own revision map (otelmig/scripts.py);
tests/test_authors.py proves the two agree.
"""

import os
import re
from typing import Dict, List, Optional, Tuple

_REVISION = re.compile(r"""^revision\s*(?::[^=]*)?=\s*(['"])(?P<id>[0-9A-Za-z_]+)\1\s*(?:#.*)?$""", re.M)
_DOWN_REVISION = re.compile(r"^down_revision\s*(?::[^=]*)?=\s*(?P<value>.+?)\s*(?:#.*)?$", re.M)
_QUOTED_ID = re.compile(r"""(['"])([0-9A-Za-z_]+)\1""")


class RevisionScriptError(RuntimeError):
    """The scripts cannot be read as one history (a bug in a revision file)."""


def versions_dir() -> str:
    """Where the revision scripts are: inside the package when installed (the
    pyz, `pip install .`), else beside it in a checkout (`pip install -e .`,
    or plain `alembic` from a clone, which imports the checkout's otelmig)."""
    package = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(package, "migrations", "versions"),
                      os.path.join(os.path.dirname(package), "migrations", "versions")):
        if os.path.isdir(candidate):
            return candidate
    raise RevisionScriptError("no migrations/versions directory beside %s" % package)


def parse_script(text: str) -> Optional[Tuple[str, Tuple[str, ...]]]:
    """(revision, down revisions) of one script's text, or None when it is no revision."""
    match = _REVISION.search(text)
    if match is None:
        return None
    down = _DOWN_REVISION.search(text)
    if down is None:
        raise RevisionScriptError("revision %s has no down_revision line" % match.group("id"))
    value = down.group("value")
    parents = tuple(m.group(2) for m in _QUOTED_ID.finditer(value))
    if value != "None" and not parents:
        raise RevisionScriptError("revision %s: down_revision must be None, a quoted id or a tuple of them, "
                                  "not %s" % (match.group("id"), value))
    return match.group("id"), parents


def read_scripts(directory: str) -> Dict[str, Tuple[str, ...]]:
    """revision id -> its down revisions, for every script in directory."""
    parents = {}
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".py") or name.startswith("__"):
            continue
        with open(os.path.join(directory, name), encoding="utf-8") as handle:
            parsed = parse_script(handle.read())
        if parsed is None:
            continue
        revision, down = parsed
        if revision in parents:
            raise RevisionScriptError("revision %s is declared twice (%s)" % (revision, name))
        parents[revision] = down
    return parents


def ordered(parents: Dict[str, Tuple[str, ...]]) -> List[str]:
    """Every revision, each after all of its down revisions (ties by id, so the order is stable)."""
    order, done = [], set()
    while len(order) < len(parents):
        ready = sorted(r for r, down in parents.items() if r not in done and all(d in done for d in down))
        if not ready:
            raise RevisionScriptError("the revisions form a cycle: %s" % sorted(set(parents) - done))
        order.extend(ready)
        done.update(ready)
    return order


def heads(parents: Dict[str, Tuple[str, ...]]) -> List[str]:
    """Revisions no other revision builds on."""
    below = {d for down in parents.values() for d in down}
    return sorted(r for r in parents if r not in below)


def load(directory: Optional[str] = None) -> Tuple[str, Tuple[str, ...]]:
    """(head, every revision oldest first) of the scripts in directory."""
    parents = read_scripts(directory or versions_dir())
    for revision, down in parents.items():
        missing = [d for d in down if d not in parents]
        if missing:
            raise RevisionScriptError("revision %s revises %s, which no script declares" % (revision, missing[0]))
    found = heads(parents)
    if len(found) != 1:
        raise RevisionScriptError("the revision scripts have %d heads (%s): there must be exactly one; "
                                  "join branches with `alembic merge heads`" % (len(found), ", ".join(found)))
    return found[0], tuple(ordered(parents))


HEAD_REVISION, KNOWN_REVISIONS = load()
