"""log: the run history ({schema}.otelmig_runs, otelmig/runlog.py), newest first.

Read-only: one connection in a read-only transaction, nothing written (a row
whose process died reads `unfinished` here before the next run marks it so).
"""

from typing import Optional

from otelmig import db, output, runlog
from otelmig.errors import UsageError

# The JSON fields of a failed log (cli adds exit_code, schema, message).
FAILURE_FIELDS = {"runs": []}


def parse_limit(text: Optional[str]) -> int:
    try:
        limit = int(text)
    except (TypeError, ValueError):
        raise UsageError("--limit must be a whole number of runs (0: all), not %r" % text) from None
    if limit < 0:
        raise UsageError("--limit must be 0 (all) or more, not %d" % limit)
    return limit


def log(settings, err, limit_text: Optional[str] = "20") -> output.Result:
    limit = parse_limit(limit_text)  # bad input: exit 2 before connecting
    conn = db.connect(settings.conninfo, probe=True)
    try:
        runs = runlog.read_runs(conn, settings.schema, limit or None)
    finally:
        db.close(conn)
    payload = {"exit_code": 0, "schema": settings.schema, "runs": runs or []}
    if runs is None:
        text = ("no run history in schema %s: no upgrade, downgrade, stamp or maintain by this otelmig has "
                "changed it yet" % settings.schema)
        return output.Result(0, payload, text)
    lines = []
    for row in runs:
        lines.append(runlog.describe_run(row))
        if row["message"]:
            lines.append("    %s%s" % ("SQLSTATE %s: " % row["sqlstate"] if row["sqlstate"] else "", row["message"]))
    return output.Result(0, payload, "\n".join(lines) if lines else "no runs recorded in schema %s" % settings.schema)
