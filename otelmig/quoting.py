"""SQL text: an identifier or a literal quoted for PostgreSQL.

Standard strings only (standard_conforming_strings is on in every session
otelmig opens: otelmig/session.py), so doubling the quote is the whole of it.
The lowest layer: db and session both quote, and db re-exports these for the
rest of the package.
"""


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
