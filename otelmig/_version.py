"""Version of otelmig and the head revision it bundles.

HEAD_REVISION is known when the package is built: `check` compares against it
without importing Alembic (tests/test_migrations.py proves these equal the
migrations' revisions).
"""

__version__ = "0.1.0"
HEAD_REVISION = "163d8f446eb9"
# Every revision this build ships, oldest first.
KNOWN_REVISIONS = ("163d8f446eb9",)
