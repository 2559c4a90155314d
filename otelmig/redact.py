"""Every message otelmig prints passes through redact(): a password never
appears in any output (errors, logs, JSON, --sql, tracebacks)."""

import json
import re
import urllib.parse

_SECRETS: set = set()
# user:password@ in anything that looks like a URL, even one we never parsed:
# up to the last @ of the word, as libpq reads a raw password.
_URL_PASSWORD = re.compile(r"(?P<pre>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)\S*(?P<post>@)")
MASK = "***"


def register(secret: "str | None") -> None:
    """Remember a secret so that redact() masks it wherever it appears, in
    each spelling a message may give it: as is, %-encoded, inside a JSON
    string and inside a Python repr (%r)."""
    if not secret or not secret.strip():  # blanks only: masking every space would hide the message, not a secret
        return
    _SECRETS.update({
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret, safe=""),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
    })


def forget_all() -> None:
    """For callers that run several configurations in one process (tests)."""
    _SECRETS.clear()


def redact(text: str) -> str:
    # Known secrets first (longest first, so one that contains another is
    # masked whole), then any URL password we were never told about.
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return _URL_PASSWORD.sub(r"\g<pre>" + MASK + r"\g<post>", text)


class RedactingStream:
    """Wraps stdout/stderr so that nothing written can leak a secret."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(redact(text))

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)
