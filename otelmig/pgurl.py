"""Split a postgresql:// URL the way libpq and psql read it, raw passwords included.

Generated secrets hold `/ + = # ? @` and spaces, often unencoded. A generic
URL parser (urllib.parse.urlsplit) cuts such a password at `/`, `?` or `#`
and then reports a "port" or "host" that is really part of it. Here:

  postgresql://[USER[:PASSWORD]@]HOST[:PORT][,HOST[:PORT]...][/DBNAME][?KEY=VALUE&...]

- the user info runs to the last `@` before the host list, so a raw `@`,
  `/`, `?`, `#`, `:` or space in the password needs no escaping;
- the query starts at the first `?` after which the rest reads as
  KEY=VALUE pairs and the part before it still holds a valid host list;
- %XX escapes are decoded everywhere; a `+` stays a `+` (libpq does not
  read it as a space, urllib.parse.parse_qs does); a `%` that starts no
  %XX escape is an error, as in libpq.

Every `@` and `?` that could end the user info or start the query is tried
in that order of preference, and the first split under which the host list,
the database name and the query are all well formed wins. The password is
registered with the redactor as soon as it is known, before any message
about the URL can be written; a URL with no valid split fails with a
message that quotes nothing of it.
"""

import re
from typing import Dict, List, NamedTuple, Optional

from otelmig import redact
from otelmig.errors import UsageError

URL_HINT = "use postgresql://USER:PASSWORD@HOST:PORT/DBNAME"
# One host entry: a name, an IPv4 address, %-encoded socket directory, or [IPv6]; digits for a port.
_HOST_ENTRY = r"(?:\[[0-9A-Fa-f:.]+(?:%25[A-Za-z0-9._~-]+)?\]|[A-Za-z0-9._~%-]*)(?::[0-9]*)?"
_HOST_LIST = re.compile(r"%s(?:,%s)*" % (_HOST_ENTRY, _HOST_ENTRY))
_QUERY = re.compile(r"(?:[A-Za-z_]+=[^&]*(?:&[A-Za-z_]+=[^&]*)*)?&?")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class UrlParts(NamedTuple):
    user: Optional[str]
    password: Optional[str]
    hosts: List[str]  # decoded host of each entry ("" for the default)
    ports: List[str]  # the port text of each entry ("" for the default)
    database: Optional[str]
    query: Dict[str, str]


def parse(url: str) -> UrlParts:
    """The parts a postgresql:// URL sets; UsageError (exit 2) when it has none that fit."""
    rest = url.partition("://")[2]
    split = _split(rest)
    if split is None:
        _register_possible_password(rest)
        raise UsageError(_unparsable_reason(rest))
    userinfo, host_list, database, query = split
    user, password = _userinfo(userinfo)
    hosts, ports = _host_entries(host_list)
    return UrlParts(user, password, hosts, ports,
                    _decode(database, "database name") if database else None, _query(query))


def _split(rest: str):
    """(userinfo, host list, database, query) of the first well-formed split, or None."""
    for head, query in _query_candidates(rest):
        for userinfo, tail in _userinfo_candidates(head):
            host_list, slash, database = tail.partition("/")
            if _HOST_LIST.fullmatch(host_list) and "?" not in database:
                return userinfo, host_list, database, query
    return None


def _query_candidates(rest: str):
    """(before, query) at each `?` whose remainder reads as a query, first one first; then no query."""
    start = rest.find("?")
    while start >= 0:
        query = rest[start + 1:]
        if _QUERY.fullmatch(query):
            yield rest[:start], query
        start = rest.find("?", start + 1)
    yield rest, ""


def _userinfo_candidates(head: str):
    """(userinfo, remainder) at each `@`, last first; then no user info at all."""
    at = head.rfind("@")
    while at >= 0:
        userinfo = head[:at]
        user = userinfo.partition(":")[0]
        if "/" not in user and "?" not in user:  # a user name holds no `/` or `?`; a password may
            yield userinfo, head[at + 1:]
        at = head.rfind("@", 0, at)
    yield None, head  # an `@` only in the database name: postgresql://host/db@x


def _userinfo(userinfo: Optional[str]):
    if userinfo is None:
        return None, None
    user, colon, password = userinfo.partition(":")
    if colon:
        redact.register(password)  # before anything can fail or print
        if _BAD_ESCAPE.search(password):
            raise UsageError("the password in the database URL holds a %% that starts no %%XX escape: "
                             "write a literal %% as %%25 (or pass the password in PGPASSWORD or %s)"
                             % "POSTGRES_PASSWORD_FILE")
        password = _decode(password, "password")
        redact.register(password)
    return (_decode(user, "user name") or None), (password if colon else None)


def _register_possible_password(rest: str) -> None:
    """A URL we cannot split: whatever sits between the first `:` and the last `@` may be a password."""
    if "@" in rest:
        userinfo = rest[:rest.rfind("@")]
        if ":" in userinfo:
            redact.register(userinfo.partition(":")[2])


def _unparsable_reason(rest: str) -> str:
    """What is wrong, quoting nothing that could be part of a password."""
    at = rest.rfind("@")
    userinfo, tail = (rest[:at], rest[at + 1:]) if at >= 0 else ("", rest)
    may_hold_password = ":" in userinfo
    hidden = " (not shown, as the URL may hold a password)" if may_hold_password else ""
    for entry in re.split(r"[/?]", tail, maxsplit=1)[0].split(","):
        if entry.startswith("[") and "]" not in entry:
            break  # an IPv6 address without its ]
        port = entry.rpartition("]")[2].partition(":")[2] if entry.startswith("[") else entry.partition(":")[2]
        if port and not port.isdigit():
            shown = hidden or " %r" % port
            return "invalid port%s in the database URL: it must be a number from 1 to 65535" % shown
    return ("the database URL cannot be parsed%s: after the last @ it needs HOST[:PORT][,HOST[:PORT]...]"
            "[/DBNAME][?KEY=VALUE&...]; write a %% in the password as %%25; %s" % (hidden, URL_HINT))


def _host_entries(host_list: str):
    hosts, ports = [], []
    for entry in host_list.split(","):
        if entry.startswith("["):
            host, _, port = entry[1:].partition("]")
            port = port[1:]
        else:
            host, _, port = entry.partition(":")
        hosts.append(_decode(host, "host"))
        ports.append(port)
    return hosts, ports


def _query(query: str) -> Dict[str, str]:
    """KEY=VALUE pairs, %XX decoded, `+` kept as `+` (libpq), the last of a repeated key wins."""
    fields = {}
    for pair in query.split("&"):
        if pair:
            key, _, value = pair.partition("=")
            if key == "password":
                redact.register(value)  # before decoding can fail
            fields[key] = _decode(value, "value of URL parameter %s" % key)
    if "password" in fields:
        redact.register(fields["password"])
    return fields


def _decode(text: str, what: str) -> str:
    import urllib.parse

    if _BAD_ESCAPE.search(text):
        raise UsageError("the %s in the database URL holds a %% that starts no %%XX escape: write %% as %%25"
                         % what)
    return urllib.parse.unquote(text)
