"""Results go to stdout (text or one JSON object), progress to stderr."""

import json


def emit(settings, out, payload: dict, text: str) -> None:
    if settings.output_format == "json":
        out.write(json.dumps(payload, sort_keys=True) + "\n")
    elif text:
        out.write(text.rstrip("\n") + "\n")


def progress(settings, err, line: str, level: int = 0) -> None:
    """A progress line on stderr; -q hides level 0, -v shows level 1."""
    if settings.verbosity >= level:
        err.write(line + "\n")
        err.flush()
