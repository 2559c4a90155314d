"""Results go to stdout (text or one JSON object), progress to stderr.

Commands return a Result; cli prints it (print_result), so no command writes
its own result and the format is chosen in one place.
"""

import json
from typing import NamedTuple, Optional


class Result(NamedTuple):
    """What a command found: its exit status, the JSON payload, the text for
    people, its Prometheus text (verify), and a one-line message for stderr
    when the status is not 0."""
    status: int
    payload: dict
    text: str
    prometheus: Optional[str] = None
    message: str = ""


def print_result(settings, out, err, prefix: str, result: Result) -> int:
    """The result on stdout in the chosen format; its message on stderr after `prefix: `."""
    if settings.output_format == "prometheus" and result.prometheus is not None:
        out.write(result.prometheus)
    else:
        emit(settings, out, result.payload, result.text)
    if result.message:
        err.write("%s: %s\n" % (prefix, result.message))
    return int(result.status)


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
