"""otelmig: versioned, safe schema migrations for the OTEL store in PostgreSQL.

For the worker:

    from otelmig import init_db
    init_db()  # raises otelmig.SchemaNotReady (a RuntimeError) unless at head
"""

from otelmig._version import HEAD_REVISION, __version__


def init_db(url=None, schema=None) -> None:
    """Fail fast unless the schema exists and is at the bundled head.

    Never creates or alters anything. Raises SchemaNotReady (a RuntimeError
    subclass with .exit_code, as `otelmig check` would exit) naming the fix.
    """
    from otelmig.check import init_db as _init_db
    _init_db(url, schema)


def __getattr__(name):
    if name == "SchemaNotReady":
        from otelmig.check import SchemaNotReady
        return SchemaNotReady
    raise AttributeError(name)


__all__ = ["init_db", "SchemaNotReady", "HEAD_REVISION", "__version__"]
