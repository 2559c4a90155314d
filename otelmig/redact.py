"""Every message otelmig prints passes through redact(): a password never
appears in any output (errors, logs, JSON, --sql, tracebacks)."""

import re
import urllib.parse

_SECRETS: set = set()
# user:password@ in anything that looks like a URL, even one we never parsed.
_URL_PASSWORD = re.compile(r"(?P<pre>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s]*(?P<post>@)")
MASK = "***"


def register(secret: "str | None") -> None:
    """Remember a secret so that redact() masks it wherever it appears."""
    if secret:
        _SECRETS.add(secret)
        _SECRETS.add(urllib.parse.quote(secret, safe=""))
        _SECRETS.add(urllib.parse.quote_plus(secret, safe=""))


def forget_all() -> None:
    """For callers that run several configurations in one process (tests)."""
    _SECRETS.clear()


def redact(text: str) -> str:
    text = _URL_PASSWORD.sub(r"\g<pre>" + MASK + r"\g<post>", text)
    # Longest first, so a secret that contains another is masked whole.
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


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
