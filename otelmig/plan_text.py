"""plan's summary and its text for people (otelmig/plan.py reads the database).

The text is a review: a summary first (the ACCESS EXCLUSIVE windows, the
index builds and scans with their tables' sizes, the rows moved, the total
scanned), then each revision's statements whole, otelmig's own bookkeeping
folded into one line per revision (listed with -v and in JSON), and each
statement of a revision that is decided only when it runs shown under its
condition in words.
"""

import re

from otelmig import schema as contract
from otelmig._version import HEAD_REVISION
from otelmig.errors import PROGRAM

ACCESS_EXCLUSIVE = "ACCESS EXCLUSIVE"
SCANNING = {"builds an index": "scans", "scans the table": "scans", "rewrites the table": "rewrites"}
WRITES_ROWS = "writes rows"


# -- the summary (also the JSON `summary` object) --

def summarize(schema: str, pending: list, outlying) -> dict:
    """What the statements cost, from the entries plan made: sizes are the
    tables' now (a later revision's too: it works on the tables as they are)."""
    windows, scans, moved, refusals, stopped = [], [], [], [], 0
    for rev in pending:
        window = None
        for entry in rev["statements"]:
            if entry.get("refuse"):
                refusals.append(_carried(entry, {"revision": rev["revision"], "table": entry["table"]}))
                continue
            if entry.get("bookkeeping"):
                continue
            if entry.get("after_stopped_run"):
                stopped += 1
                continue
            rows = _rows_moved(schema, rev["revision"], entry, outlying)
            if rows:
                moved.append(rows)
            if entry["effect"] in SCANNING:
                scans.append(_scan(rev["revision"], entry))
            if entry["lock"] != ACCESS_EXCLUSIVE:
                window = None
                continue
            if window and window["table"] == entry["table"] and window.get("condition") == entry.get("condition"):
                window["statements"] += 1
                window["effects"].append(str(entry["effect"]))
            else:
                window = {"revision": rev["revision"], "table": entry["table"], "statements": 1,
                          "effects": [str(entry["effect"])], "size_bytes": entry.get("size_bytes"),
                          "rows_estimate": entry.get("rows_estimate"), "moves_rows": rows["rows"] if rows else None}
                if entry.get("condition"):
                    window["condition"] = entry["condition"]
                windows.append(window)
    for window in windows:
        window["hold"] = _hold(window)
    return {"access_exclusive": windows, "scans": scans, "rows_moved": moved, "refusals": refusals,
            "decided_when_run": [rev["revision"] for rev in pending if rev.get("decided") is False],
            "scanned_bytes": sum(scan["size_bytes"] or 0 for scan in scans), "after_stopped_run": stopped,
            "bookkeeping": {rev["revision"]: sum(1 for e in rev["statements"] if e.get("bookkeeping"))
                            for rev in pending}}


def _hold(window: dict) -> str:
    """How long the lock is held, in the words a DBA weighs it by."""
    effects = set(window["effects"])
    heavy = [SCANNING[e] for e in effects if e in SCANNING]
    if heavy:
        return "%s %s" % ("/".join(sorted(set(heavy))), size_text(window["size_bytes"] or 0))
    if WRITES_ROWS in effects:
        moves = window.get("moves_rows")
        return "writes rows" + ("" if moves is None else ": moves %d row(s)" % moves)
    return "brief: catalog only"


def _scan(revision: str, entry: dict) -> dict:
    scan = {"revision": revision, "what": _what(entry), "table": entry["table"], "effect": str(entry["effect"]),
            "size_bytes": entry.get("size_bytes"), "rows_estimate": entry.get("rows_estimate"),
            "lock": str(entry["lock"]), "concurrently": entry["outside_transaction"]}
    return _carried(entry, scan)


def _carried(entry: dict, item: dict) -> dict:
    """The entry's condition and whether its table is there yet, carried into a summary item."""
    for field in ("condition", "created_by_plan"):
        if entry.get(field):
            item[field] = entry[field]
    return item


def _what(entry: dict) -> str:
    """The statement by its object: CREATE INDEX "ix", VALIDATE CONSTRAINT "c", or what its label says."""
    sql = entry["sql"]
    index = re.match(r"CREATE (UNIQUE )?INDEX (?:CONCURRENTLY )?(?:IF NOT EXISTS )?(\S+)", sql)
    if index:
        return "CREATE %sINDEX %s" % (index.group(1) or "", index.group(2))
    validate = re.search(r"VALIDATE CONSTRAINT \S+", sql)
    if validate:
        return validate.group(0)
    return entry.get("label") or " ".join(sql.split()[:6])


def _rows_moved(schema: str, revision: str, entry: dict, outlying):
    """The rows a statement moves. The conversion of a plain spans (its cutoff
    step) moves the outliers plan counted on the live table; another step
    that writes rows is sized by its table."""
    if entry["effect"] != WRITES_ROWS:
        return None
    moved = {"revision": revision, "table": entry["table"], "rows": None, "rows_estimate": entry.get("rows_estimate"),
             "size_bytes": entry.get("size_bytes"), "lock": str(entry["lock"])}
    if outlying is not None and entry["table"] == "%s.spans" % schema and entry["lock"] == ACCESS_EXCLUSIVE:
        moved.update(rows=outlying["count"], what="stamped at or after the cutoff %s" % outlying["since"],
                     kept_in_place="%s.spans_history" % schema)
    return _carried(entry, moved)


# -- text --

def render(schema: str, revision, pending: list, summary, verbose: bool = False) -> str:
    if not pending:
        return "plan: schema %s is at the head %s; nothing to do" % (schema, HEAD_REVISION)
    lines = ["plan: schema %s at %s; %d revision(s) pending" % (schema, revision or "base", len(pending)), ""]
    lines += summary_lines(summary)
    for rev in pending:
        lines.append("")
        lines += _revision_lines(rev, verbose)
    return "\n".join(lines)


def summary_lines(summary: dict) -> list:
    lines = ["summary (sizes and rows: this database now; a later revision's statements if their conditions hold "
             "when it runs):",
             "  ACCESS EXCLUSIVE (every reader and writer of the table waits while it is held):"]
    for window in summary["access_exclusive"]:
        lines.append("    revision %s, %s: %d statement%s, %s%s" % (
            window["revision"], window["table"], window["statements"], "" if window["statements"] == 1 else "s",
            window["hold"], _if(window)))
    if not summary["access_exclusive"]:
        lines.append("    none")
    lines.append("  index builds and table scans (concurrently: readers and writers go on):")
    for scan in summary["scans"]:
        lines.append("    revision %s, %s on %s: %s%s, %s%s" % (
            scan["revision"], scan["what"], scan["table"], "" if scan.get("created_by_plan") else
            "scans " if scan["effect"] != "rewrites the table" else "rewrites ", _sized(scan), "concurrently" if scan["concurrently"] else "under " + scan["lock"],
            _if(scan)))
    if not summary["scans"]:
        lines.append("    none")
    lines.append("  rows moved:")
    for moved in summary["rows_moved"]:
        lines.append("    revision %s, %s: %s%s" % (moved["revision"], moved["table"], _moved_text(moved), _if(moved)))
    if not summary["rows_moved"]:
        lines.append("    none")
    lines.append("  total scanned: %s" % size_text(summary["scanned_bytes"]))
    lines.append("  refusals (the upgrade stops with exit 8 before that revision's first change):")
    for refusal in summary["refusals"]:
        later = " (if still so when it runs; it is now)" if refusal.get("condition") else ""
        lines.append("    revision %s, %s: refuses%s; listed below" % (refusal["revision"], refusal["table"] or
                                                                       "the schema", later))
    asked_again = ["revision %s's are asked again when it runs, on the catalog the revisions before it leave"
                   % revision for revision in summary["decided_when_run"]]
    if not summary["refusals"]:
        lines.append("    " + "; ".join(["none now" if asked_again else "none"] + asked_again))
    else:
        lines += ["    " + line for line in asked_again]
    if summary["after_stopped_run"]:
        lines.append("  not counted: %d statement(s) that run only to finish or undo a stopped run (listed below)"
                     % summary["after_stopped_run"])
    return lines


def _moved_text(moved: dict) -> str:
    if moved["rows"] is None:
        return "writes rows of the table (%s)" % _sized(moved)
    return ("%d row(s) %s move, under %s; the others (%s) are not copied: the table becomes %s"
            % (moved["rows"], moved["what"], moved["lock"], _sized(moved), moved["kept_in_place"]))


def _if(item: dict) -> str:
    return " (%s)" % item["condition"] if item.get("condition") else ""


def _sized(item: dict) -> str:
    if item.get("created_by_plan"):
        # a table a stopped run would have left is simply not there; any other, this plan makes
        return "not there now" if item.get("after_stopped_run") else "created by this plan"
    rows = item.get("rows_estimate")
    size = size_text(item.get("size_bytes") or 0)
    return size if rows is None else "~%d rows, %s" % (rows, size)


def _revision_lines(rev: dict, verbose: bool) -> list:
    later = rev.get("decided") is False
    lines = ["revision %s: %s" % (rev["revision"], rev["doc"].splitlines()[0] if rev["doc"] else "")]
    if later:
        lines.append("  (runs after the revisions above: each statement's condition, and its refusals, are decided "
                     "when revision %s runs, on the catalog they leave)" % rev["revision"])
    shown = [e for e in rev["statements"] if verbose or not e.get("bookkeeping")]
    for number, entry in enumerate(shown, 1):
        lines += _statement_lines(number, entry, verbose)
    folded = sum(1 for e in rev["statements"] if e.get("bookkeeping"))
    if not verbose:
        lines.append("  + %s%d bookkeeping statement%s (otelmig_objects records) and the version row "
                     "(alembic_version); listed with -v and in --format json"
                     % ("up to " if later else "", folded, "" if folded == 1 else "s"))
    return lines


def _statement_lines(number: int, entry: dict, verbose: bool) -> list:
    if entry.get("refuse") and entry.get("condition"):
        return ["  %2d. %s:" % (number, entry["condition"]), "      REFUSE: %s" % entry["refuse"]]
    if entry.get("refuse"):
        return ["  %2d. REFUSE: %s" % (number, entry["refuse"])]
    lines = []
    if entry.get("condition"):
        lines.append("  %2d. %s:" % (number, entry["condition"]))
        lead = "      "
    else:
        lead = "  %2d. " % number
    sql, label = entry["sql"], entry.get("label")
    # A DO block is named by what it does (its body: -v, --format json, upgrade --sql); any other statement whole.
    do_block = bool(label) and sql.lstrip().upper().startswith("DO ")
    head = "%s: %s" % (sql.split()[0], label) if label else sql
    lines.append(lead + head.replace("\n", "\n      "))
    where = ""
    if "rows_estimate" in entry and entry.get("table"):
        where = " [%s: %s]" % (entry["table"], _sized(entry))
    lines.append("      lock: %s; %s%s%s" % (entry["lock"], entry["effect"],
                                           "; outside a transaction" if entry["outside_transaction"] else "", where))
    if label and (verbose or not do_block):
        lines.append("      " + sql.replace("\n", "\n      "))
    return lines


# -- the notes after the statements --

def outliers_text(schema: str, found: dict) -> str:
    if not found["count"]:
        return "outliers: no span in %s.spans is stamped at or after %s (the conversion's cutoff)" % (
            schema, found["since"])
    key = next((k for k in found["newest"][0] if k != "id"), "start_time") if found["newest"] else "start_time"
    shown = ", ".join("id %s at %s" % (row["id"], row[key]) for row in found["newest"])
    fate = ("more than the %d it moves under its lock: revision %s refuses them (listed above)"
            % (found["refused_over"], contract.PARTITIONING_REVISION) if found.get("refused_over") else
            "the conversion keeps them, queryable, outside its day partitions")
    return ("outliers: %d span(s) in %s.spans stamped at or after %s (the conversion's cutoff): %s; newest: %s"
            % (found["count"], schema, found["since"], fate, shown))


def maintain_text(preview: dict) -> str:
    lines = ["maintain (today and %d days ahead; drops only with --retain, see `%s maintain --retain "
             "DURATION --dry-run`):" % (preview["ahead_days"], PROGRAM)]
    lines += ["  maintain would create %s" % name for name in preview["create"]]
    lines += ["  maintain would finish detaching %s" % name for name in preview["finalize"]]
    lines += ["  maintain cannot: %s" % conflict for conflict in preview["conflicts"]]
    if len(lines) == 1:
        lines.append("  nothing to create: the partitions of the coming days exist")
    return "\n".join(lines)


def size_text(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return "%d %s" % (size, unit) if unit == "B" else "%.1f %s" % (size, unit)
        size /= 1024.0
    return str(size)
