"""otelmig: versioned, safe schema migrations for the OTEL store in PostgreSQL.

For the worker:

    from otelmig import init_db
    init_db()  # raises otelmig.SchemaNotReady (a RuntimeError) unless at head

Importing otelmig loads pg8000 and otelmig's small modules (otelmig.api), never
Alembic, Mako or SQLAlchemy (tests/test_check.py asserts it).
"""

from otelmig._version import HEAD_REVISION, __version__
from otelmig.api import SchemaNotReady, init_db

__all__ = ["init_db", "SchemaNotReady", "HEAD_REVISION", "__version__"]
