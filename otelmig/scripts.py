"""The revision scripts, through Alembic: where they are, the Config and
ScriptDirectory over them, revision targets (ids, -N), history walks, and the
SQLAlchemy engine that env.py runs on.

Shared by the commands (migrate, plan, offline) and by env.py for plain
`alembic` (otelmig.authors), so none of them imports a command module for its
helpers. Alembic and SQLAlchemy are imported inside the functions: `check`
never loads this module's dependencies.
"""

import os
from typing import Optional

from otelmig import db, session
from otelmig.errors import NotInitialisedError, UsageError
from otelmig.revisions import versions_dir


def migrations_dir() -> str:
    # The directory otelmig.revisions read the head from, so both always agree.
    return os.path.dirname(versions_dir())


def alembic_config(settings, connection=None, **attributes):
    from alembic.config import Config

    config = Config()
    # configparser interpolates '%': escape it in the one value we set.
    config.set_main_option("script_location", migrations_dir().replace("%", "%%"))
    config.attributes.update(schema=settings.schema, **attributes)
    if connection is not None:  # env.py runs on it; without one only the scripts are read
        config.attributes["connection"] = connection
    return config


def script_directory(settings):
    from alembic.script import ScriptDirectory
    return ScriptDirectory.from_config(alembic_config(settings))


def engine_for(conninfo):
    import logging
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    # SQLAlchemy logs a traceback when closing a connection the server already
    # ended (after SIGTERM, or a cut connection); our one line says it all.
    for name in ("sqlalchemy", "alembic"):
        logger = logging.getLogger(name)
        logger.addHandler(logging.NullHandler())
        logger.propagate = False

    return sqlalchemy.create_engine("postgresql+pg8000://", poolclass=NullPool,
                                    creator=lambda: db.connect(conninfo, autocommit=False,
                                                               purpose=session.MIGRATION))


def resolve_revision(settings, target: str, current: Optional[str]) -> Optional[str]:
    """A concrete revision id (None for base) or UsageError (exit 2)."""
    from alembic.script.revision import ResolutionError, RevisionError
    from alembic.util import CommandError

    scripts = script_directory(settings)
    if target == "base":
        return None
    if target.startswith("-") or target.startswith("+"):
        return _relative(scripts, target, current)
    try:
        return scripts.get_revision(target).revision
    except (ResolutionError, RevisionError, CommandError, AttributeError):
        raise UsageError("unknown revision %r: see `otelmig history` for the revisions this build knows" % target) from None


def _relative(scripts, target: str, current: Optional[str]) -> Optional[str]:
    """-N from current: the Nth revision below it in Alembic's own walk of the
    history (so a merge revision, with two down revisions, walks too)."""
    try:
        steps = int(target)
    except ValueError:
        raise UsageError("invalid relative revision %r: use -N or +N" % target) from None
    if steps >= 0:
        raise UsageError("relative upgrade %r is not supported: name the revision or use head" % target)
    if current is None:
        raise NotInitialisedError("nothing to roll back: the schema has no recorded revision")
    below = _walk_down(scripts, current)[1:]  # current itself comes first
    if -steps > len(below) + 1:
        raise UsageError("cannot go back %d revision(s) from %s: only %d exist below it"
                         % (-steps, current, _depth(scripts, current)))
    return below[-steps - 1].revision if -steps <= len(below) else None  # one past the oldest: base


def _walk_down(scripts, upper: str, lower: Optional[str] = None) -> list:
    """Revision scripts from upper (included) down to lower (excluded; None: base),
    newest first, as Alembic's revision map orders them."""
    from alembic.script.revision import RangeNotAncestorError

    try:
        return list(scripts.iterate_revisions(upper, lower or "base"))
    except RangeNotAncestorError:
        raise UsageError("revision %s is not below %s in the history: see `otelmig history`"
                         % (lower, upper)) from None


def revisions_between(settings, lower: Optional[str], upper: Optional[str]) -> list:
    """The revision scripts above `lower` up to and including `upper`, oldest first."""
    if upper is None or upper == lower:
        return []
    return list(reversed(_walk_down(script_directory(settings), upper, lower)))


def _depth(scripts, revision: Optional[str]) -> int:
    """How many revisions are at or below `revision`."""
    return 0 if revision is None else len(_walk_down(scripts, revision))


def lock_timeout_ms(settings) -> int:
    """--lock-timeout as the migration session (migrate.py) and the --sql script (offline.py) set it."""
    return max(1, int(settings.lock_timeout * 1000))  # 0 would mean "wait forever"


def revision_module(revision: str):
    """The module of one bundled revision script (a later revision reads an earlier one's frozen contract)."""
    from alembic.script import ScriptDirectory
    return ScriptDirectory(migrations_dir()).get_revision(revision).module
