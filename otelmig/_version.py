"""Version of otelmig and the head revision it bundles.

The head and the known revisions are not written here: otelmig/revisions.py
reads them from the revision scripts (migrations/versions/), so adding a
revision file is enough. `check` compares against them without importing
Alembic.
"""

from otelmig.revisions import HEAD_REVISION, KNOWN_REVISIONS  # noqa: F401  (re-exported)

__version__ = "0.1.0"
