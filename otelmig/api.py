"""The public API for the worker: init_db() and SchemaNotReady.

Re-exported by otelmig/__init__.py, so `import otelmig` loads this module:
like check, it imports pg8000 and otelmig's own small modules only, never
Alembic, Mako or SQLAlchemy (tests/test_check.py asserts it).
"""

import os
from typing import Optional

from otelmig import db, settings as settings_mod
from otelmig.redact import redact
from otelmig.state import assess, probe


class SchemaNotReady(RuntimeError):
    """Raised by init_db(); exit_code is the one `otelmig check` would return."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def init_db(url: Optional[str] = None, schema: Optional[str] = None) -> None:
    """The worker's fail-fast start-up check: validates, never creates or alters."""
    try:
        schema_name = settings_mod.validate_schema(
            schema or os.environ.get(settings_mod.ENV_SCHEMA, settings_mod.DEFAULT_SCHEMA))
        conninfo = settings_mod.resolve_conninfo(url, os.environ)
        error = assess(probe(conninfo, schema_name))
    except Exception as exc:  # the worker gets our error type, never a driver's
        error = db.translate(exc)
        if error is None:
            raise
    if error:
        raise SchemaNotReady(redact(error.message), int(error.exit_status))
