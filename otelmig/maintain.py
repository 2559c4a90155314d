"""maintain: keep otel.spans' day partitions ahead of time, and a retention window.

For cron, from every replica at once: it takes the migration lock (a second
run waits for the first, then finds nothing left to do), refuses a store that
is not at the head or whose spans is not in the partitioned layout
(otelmig.schema.SPANS_PARTITIONING), and obeys the lock budget like upgrade.

- Ahead: a partition per UTC day from today to today + --ahead. Each is made
  without ACCESS EXCLUSIVE on spans: a standalone table (LIKE spans) with a
  CHECK of its range, the DEFAULT partition's rows of that range moved into it,
  then ATTACH (SHARE UPDATE EXCLUSIVE on spans; the CHECK spares its scan),
  all in one short transaction, so a crash leaves nothing half made and a row
  in DEFAULT is never lost.
- --retain: every day partition, and the history partition, whose upper bound
  is at or before now() - window is detached and dropped; traces older than
  the window are deleted in batches. DETACH ... CONCURRENTLY needs PostgreSQL
  14 and a table without a DEFAULT partition (the server refuses it with one),
  so with the layout's DEFAULT the detach is the plain one, under the lock
  budget; DETACH and DROP are one transaction then. A concurrent detach left
  pending by a crash is finished (FINALIZE) on the next run, and a day table
  detached but not dropped is dropped.

All decisions use the server's clock (now()), never this machine's.
"""

import contextlib
import datetime
import random
import re
import time
from typing import List, NamedTuple, Optional

from otelmig import db, output, partitions
from otelmig._version import HEAD_REVISION
from otelmig.errors import PROGRAM, BusyError, ExitStatus, OtelmigError, UsageError
from otelmig.schema import SPANS_PARTITIONING
from otelmig.state import assess, read_state

TRACE_BATCH = 5000   # trace rows per DELETE transaction: short locks, WAL in small pieces
MAX_AHEAD_DAYS = 366
_DURATION = re.compile(r"([0-9]{1,6})([hdw])")
_UNIT_SECONDS = {"h": 3600, "d": 86400, "w": 7 * 86400}
DAY = datetime.timedelta(days=1)
DEPENDENT_OBJECTS = "2BP01"  # a view or a foreign key still needs the table: DROP refused


def lock_budget(settings) -> float:
    """Seconds of lock waits a step may take in all: upgrade's budget."""
    from otelmig.migrate import LOCK_BUDGET_FACTOR
    return LOCK_BUDGET_FACTOR * settings.lock_timeout


def parse_retain(text: Optional[str]) -> Optional[datetime.timedelta]:
    """--retain: a positive whole number of hours (h), days (d) or weeks (w)."""
    if text is None:
        return None
    match = _DURATION.fullmatch(text.strip())
    if not match or int(match.group(1)) == 0:
        raise UsageError("--retain must be a positive duration like 14d, 36h or 2w, not %r" % text)
    return datetime.timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def parse_ahead(text: Optional[str]) -> int:
    if text is None:
        return SPANS_PARTITIONING.ahead_days
    try:
        days = int(text)
    except ValueError:
        raise UsageError("--ahead must be a whole number of days from 0 to %d, not %r"
                         % (MAX_AHEAD_DAYS, text)) from None
    if not 0 <= days <= MAX_AHEAD_DAYS:
        raise UsageError("--ahead must be a whole number of days from 0 to %d, not %r" % (MAX_AHEAD_DAYS, text))
    return days


class NewPartition(NamedTuple):
    name: str
    lower: datetime.datetime
    upper: datetime.datetime


class Decision(NamedTuple):
    """What maintain would do now; plan shows it, maintain does it."""
    create: List[NewPartition]
    drop: List[str]            # attached partitions wholly older than the window
    finalize: List[str]        # concurrent detaches left pending (then dropped when old)
    drop_detached: List[str]   # day tables already detached, wholly older than the window
    conflicts: List[str]       # what keeps a coming day from being created
    window_start: Optional[datetime.datetime]


def decide(layout: partitions.Layout, now: datetime.datetime, ahead_days: int,
           retain: Optional[datetime.timedelta]) -> Decision:
    """Pure: from the layout and the server's now, what to create and drop."""
    create, conflicts = _coming_days(layout, now.date(), ahead_days)
    spec = layout.partitioning
    ours = [p for p in layout.ranged if p.name == spec.history or partitions.day_of(p.name, spec)]
    finalize = [p.name for p in ours if p.detach_pending]
    window_start = now - retain if retain is not None else None
    drop, drop_detached = [], []
    if window_start is not None:
        drop = [p.name for p in ours if p.upper is not None and p.upper <= window_start and not p.detach_pending]
        old = [p.name for p in ours if p.detach_pending and p.upper is not None and p.upper <= window_start]
        drop_detached = old + [name for name in layout.standalone_days
                               if partitions.day_of(name, spec) is not None
                               and _day_end(partitions.day_of(name, spec)) <= window_start]
    return Decision(create, drop, finalize, drop_detached, conflicts, window_start)


def _day_end(day: datetime.date) -> datetime.datetime:
    return datetime.datetime.combine(day + DAY, datetime.time())


def _coming_days(layout, today: datetime.date, ahead_days: int):
    create, conflicts = [], []
    spec = layout.partitioning
    for offset in range(ahead_days + 1):
        day = today + offset * DAY
        lower = datetime.datetime.combine(day, datetime.time())
        upper = lower + DAY
        if layout.covering(lower, upper) is not None:
            continue
        name = spec.day_partition(day)
        overlapping = layout.overlapping(lower, upper)
        if name in layout.standalone_days:
            conflicts.append("%s.%s exists but is not a partition of %s.%s: attach it or drop it"
                             % (layout.schema, name, layout.schema, spec.table))
        elif overlapping or any(p.name == name for p in layout.partitions):
            conflicts.append("day %s cannot get a partition of its own: %s already holds part of it"
                             % (day, ", ".join(p.name for p in overlapping) or name))
        else:
            create.append(NewPartition(name, lower, upper))
    return create, conflicts


class Outcome(NamedTuple):
    created: List[str]
    dropped: List[str]
    finalized: List[str]
    moved_from_default: int
    trace_rows_deleted: int
    conflicts: List[str]


# -- the command ---------------------------------------------------------------------

# The JSON fields of a failed maintain (cli adds exit_code, schema, message).
FAILURE_FIELDS = {"head": HEAD_REVISION, "database_revision": None}


def failure_prometheus(schema: str, status) -> str:
    return prometheus_text(schema, status)


def maintain(settings, err, ahead: Optional[str] = None, retain: Optional[str] = None,
             dry_run: bool = False) -> output.Result:
    ahead_days, window = parse_ahead(ahead), parse_retain(retain)  # bad input: exit 2 before connecting
    if dry_run:
        return _dry_run(settings, err, ahead_days, window, retain)
    from otelmig.migrate import migration_session
    with migration_session(settings, err) as (lock, state, connection, watch):
        _refuse_unless_ready(state)
        raw = connection.connection.dbapi_connection
        runner = _Runner(settings, err, raw)
        layout = runner.read(lambda: partitions.read_layout(raw, settings.schema))
        runner.read(lambda: _refuse_unless_partitioned(raw, layout))
        now = runner.read(lambda: partitions.server_now(raw))
        decision = decide(layout, now, ahead_days, window)
        outcome = _carry_out(runner, layout, decision)
        final = runner.read(lambda: partitions.read_layout(raw, settings.schema))
        in_default = runner.read(lambda: partitions.default_rows(raw, final))
        runner.restore()
    _report_default(settings, err, final, in_default)
    return _result(settings, state.revision, final, in_default[0], outcome, ahead_days, retain,
                   decision.window_start, dry_run=False)


def _refuse_unless_ready(state) -> None:
    error = assess(state)
    if error is not None:
        error.args = ("maintain changes nothing here: %s" % error.message,)
        raise error


def _refuse_unless_partitioned(conn, layout: partitions.Layout) -> None:
    problem = layout.problem()
    if problem:
        raise OtelmigError("maintain changes nothing here: %s; see `%s verify`, and `%s upgrade` "
                           "to convert it" % (problem, PROGRAM, PROGRAM), ExitStatus.DRIFT)
    # Day partitions beside the operator's own (pg_partman's monthly ones, say)
    # would collide with the next one it makes: those stay the operator's.
    if partitions.adopted_as_found(conn, layout.schema, layout.partitioning):
        raise OtelmigError("maintain changes nothing here: %s.%s was partitioned by the operator before otelmig "
                           "adopted it (recorded as found), so its partitions are the operator's: keep managing "
                           "them as before, and do not run maintain on this store"
                           % (layout.schema, layout.partitioning.table), ExitStatus.DRIFT)


def _dry_run(settings, err, ahead_days, window, retain_text) -> output.Result:
    from otelmig.plan import _read_only_connection
    conn = _read_only_connection(settings.conninfo)
    try:
        state = read_state(conn, settings.schema)
        _refuse_unless_ready(state)
        layout = partitions.read_layout(conn, settings.schema)
        _refuse_unless_partitioned(conn, layout)
        decision = decide(layout, partitions.server_now(conn), ahead_days, window)
        in_default = partitions.default_rows(conn, layout)
        moving = sum(_default_rows_in(conn, layout, new) for new in decision.create)
        traces = _old_traces(conn, settings.schema, decision.window_start)
    finally:
        db.close(conn)
    outcome = Outcome([n.name for n in decision.create], decision.drop + decision.drop_detached, decision.finalize,
                      moving, traces, decision.conflicts)
    return _result(settings, state.revision, layout, in_default[0] - moving, outcome, ahead_days,
                   retain_text, decision.window_start, dry_run=True)


def _default_rows_in(conn, layout, new: NewPartition) -> int:
    if layout.default is None:
        return 0
    cursor = conn.cursor()
    cursor.execute("select count(*) from %s.%s where %s" % (
        db.quote_ident(layout.schema), db.quote_ident(layout.default.name), _range_sql(layout, new)))
    return int(cursor.fetchone()[0])


def _old_traces(conn, schema: str, window_start) -> int:
    if window_start is None:
        return 0
    cursor = conn.cursor()
    cursor.execute("select count(*) from %s.traces where start_time < %s"
                   % (db.quote_ident(schema), partitions.utc_literal(window_start)))
    return int(cursor.fetchone()[0])


def _range_sql(layout, new: NewPartition) -> str:
    key = db.quote_ident(layout.partitioning.key)
    return "%s >= %s and %s < %s" % (key, partitions.utc_literal(new.lower), key, partitions.utc_literal(new.upper))


# -- doing it ------------------------------------------------------------------------

class _Runner:
    """Runs each change as its own short transaction on the migration session's
    pg8000 connection, retried on a lock timeout like upgrade's DDL (short
    attempts growing to --lock-timeout; exit 9 after 6 times it)."""

    def __init__(self, settings, err, conn):
        self.settings, self.err, self.conn = settings, err, conn

    def say(self, line: str, level: int = 0) -> None:
        output.progress(self.settings, self.err, "maintain: " + line, level=level)

    def read(self, query):
        return self.run(query, "reading the partitions")

    def run(self, action, what: str, outside_transaction: bool = False):
        from otelmig.migrate import FIRST_LOCK_TIMEOUT, LOCK_TIMEOUT_GROWTH, RETRY_PAUSE
        deadline = time.monotonic() + lock_budget(self.settings)
        attempt = 0
        while True:
            wait = min(self.settings.lock_timeout, FIRST_LOCK_TIMEOUT * LOCK_TIMEOUT_GROWTH ** attempt)
            self._execute_alone("SET lock_timeout = '%dms'" % max(1, int(wait * 1000)))
            try:
                return self._once(action, outside_transaction)
            except Exception as exc:
                if not db.is_conflict(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise self._busy(what, exc) from None
                reason = "waited %.2fs for its lock" % wait if db.is_lock_timeout(exc) else db.server_message(exc)
            pause = random.uniform(*RETRY_PAUSE)
            self.say("%s: a table is busy (%s); retrying in %.2fs" % (what, reason, pause),
                     level=0 if attempt % 20 == 0 else 1)
            time.sleep(pause)
            attempt += 1

    def _busy(self, what: str, exc: BaseException) -> BusyError:
        return BusyError("maintain stopped while %s: %s for %gs (6 x --lock-timeout): %s; that step was rolled "
                         "back, the steps before it stay done; rerun later (it does only what is left) or raise "
                         "--lock-timeout" % (what, "a table stayed locked" if db.is_lock_timeout(exc)
                                             else "a conflict persisted", lock_budget(self.settings),
                                             db.server_message(exc)))

    def _once(self, action, outside_transaction: bool):
        self.conn.autocommit = outside_transaction
        try:
            result = action()
            if not outside_transaction:
                self.conn.commit()
            return result
        except BaseException:
            if not outside_transaction:
                with contextlib.suppress(Exception):  # a backend ended by SIGTERM's cleanup has nothing to roll back
                    self.conn.rollback()
            raise
        finally:
            self.conn.autocommit = False

    def _execute_alone(self, statement: str) -> None:
        self.conn.rollback()
        self.conn.cursor().execute(statement)
        self.conn.commit()

    def execute(self, statement: str) -> int:
        self.say(statement, level=1)
        cursor = self.conn.cursor()
        cursor.execute(statement)
        return cursor.rowcount

    def restore(self) -> None:
        self._execute_alone("RESET lock_timeout")


def _carry_out(runner: _Runner, layout: partitions.Layout, decision: Decision) -> Outcome:
    created, moved = [], 0
    columns = runner.read(lambda: _columns(runner.conn, layout)) if decision.create else []
    owner = runner.read(lambda: _other_owner(runner.conn, layout)) if decision.create else None
    for new in decision.create:
        count = runner.run(lambda: _create(runner, layout, new, columns, owner), "creating %s" % new.name)
        created.append(new.name)
        moved += count
        runner.say("created %s%s" % (new.name, " (moved %d row(s) from the default partition)" % count
                                     if count else ""), level=1)
    conflicts = list(decision.conflicts)
    finalized = [name for name in decision.finalize if _finalize(runner, layout, name)]
    dropped = []
    for name in decision.drop:
        refusal = _drop_attached(runner, layout, name)
        dropped += [] if refusal else [name]
        conflicts += [refusal] if refusal else []
    for name in decision.drop_detached:
        refusal = _drop_table(runner, layout, name)
        dropped += [] if refusal else [name]
        conflicts += [refusal] if refusal else []
    deleted = _delete_old_traces(runner, layout.schema, decision.window_start)
    return Outcome(created, dropped, finalized, moved, deleted, conflicts)


def _columns(conn, layout) -> List[str]:
    cursor = conn.cursor()
    cursor.execute("select attname::text from pg_attribute where attrelid = to_regclass(%s) and attnum > 0 "
                   "and not attisdropped and attgenerated = '' order by attnum", (_qualified(layout, layout.partitioning.table),))
    return [row[0] for row in cursor.fetchall()]


def _other_owner(conn, layout) -> Optional[str]:
    """The owner of spans when it is not the role running maintain (a member of
    it): new partitions get it, as revision 2's did, so that whoever owns spans
    can later drop them."""
    cursor = conn.cursor()
    cursor.execute("select pg_get_userbyid(relowner)::text, current_user::text from pg_class "
                   "where oid = to_regclass(%s)", (_qualified(layout, layout.partitioning.table),))
    owner, me = cursor.fetchone()
    return None if owner == me else owner


def _qualified(layout, name: str) -> str:
    return "%s.%s" % (db.quote_ident(layout.schema), db.quote_ident(name))


def _create(runner: _Runner, layout, new: NewPartition, columns: List[str], owner: Optional[str]) -> int:
    """One transaction: lock DEFAULT (so no row of the range lands there meanwhile),
    make the table with a CHECK of its range, move DEFAULT's rows of the range
    into it, attach it (the CHECK spares the scan), drop the CHECK. Returns
    the rows moved."""
    parent, table = _qualified(layout, layout.partitioning.table), _qualified(layout, new.name)
    check = db.quote_ident("%s_range" % new.name)
    lower, upper = partitions.utc_literal(new.lower), partitions.utc_literal(new.upper)
    if layout.default is not None:
        runner.execute("LOCK TABLE %s IN ACCESS EXCLUSIVE MODE" % _qualified(layout, layout.default.name))
    runner.execute("CREATE TABLE %s (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)" % (table, parent))
    runner.execute("ALTER TABLE %s ADD CONSTRAINT %s CHECK (%s)" % (table, check, _range_sql(layout, new)))
    if owner is not None:
        runner.execute("ALTER TABLE %s OWNER TO %s" % (table, db.quote_ident(owner)))
    moved = 0
    if layout.default is not None:
        names = ", ".join(db.quote_ident(c) for c in columns)
        moved = runner.execute("WITH moved AS (DELETE FROM %s WHERE %s RETURNING %s) INSERT INTO %s (%s) "
                               "SELECT %s FROM moved" % (_qualified(layout, layout.default.name),
                                                         _range_sql(layout, new), names, table, names, names))
    runner.execute("ALTER TABLE %s ATTACH PARTITION %s FOR VALUES FROM (%s) TO (%s)"
                   % (parent, table, lower, upper))
    runner.execute("ALTER TABLE %s DROP CONSTRAINT %s" % (table, check))
    return max(moved, 0)


def _finalize(runner: _Runner, layout, name: str) -> bool:
    """Finish a DETACH ... CONCURRENTLY that was interrupted (it cannot run in a transaction)."""
    def action():
        if _detach_state(runner.conn, layout, name) != "pending":
            return False
        runner.execute("ALTER TABLE %s DETACH PARTITION %s FINALIZE"
                       % (_qualified(layout, layout.partitioning.table), _qualified(layout, name)))
        return True
    done = runner.run(action, "finalizing the detach of %s" % name, outside_transaction=True)
    if done:
        runner.say("finished the interrupted detach of %s" % name)
    return done


def _detach_state(conn, layout, name: str) -> str:
    """'attached', 'pending' (a concurrent detach not finished) or 'detached'."""
    column = "i.inhdetachpending" if partitions.server_major(conn) >= 14 else "false"
    cursor = conn.cursor()
    cursor.execute("select %s from pg_inherits i where i.inhrelid = to_regclass(%%s) "
                   "and i.inhparent = to_regclass(%%s)" % column,
                   (_qualified(layout, name), _qualified(layout, layout.partitioning.table)))
    row = cursor.fetchone()
    return "detached" if row is None else ("pending" if row[0] else "attached")


def _drop_attached(runner: _Runner, layout, name: str) -> Optional[str]:
    """Detach and drop one partition; None, or why it was kept."""
    parent, table = _qualified(layout, layout.partitioning.table), _qualified(layout, name)
    concurrently = layout.default is None and partitions.server_major(runner.conn) >= 14
    if concurrently:  # only there: the server refuses it while a DEFAULT partition exists
        def detach():
            state = _detach_state(runner.conn, layout, name)
            if state == "attached":
                runner.execute("ALTER TABLE %s DETACH PARTITION %s CONCURRENTLY" % (parent, table))
            elif state == "pending":
                runner.execute("ALTER TABLE %s DETACH PARTITION %s FINALIZE" % (parent, table))
        runner.run(detach, "detaching %s" % name, outside_transaction=True)
        return _drop_table(runner, layout, name)

    def detach_and_drop():
        refusal = _sequence_owned(runner.conn, layout, name)
        if refusal:
            return refusal
        runner.execute("ALTER TABLE %s DETACH PARTITION %s" % (parent, table))
        runner.execute("DROP TABLE %s" % table)
        return None
    return _dropping(runner, name, detach_and_drop)


def _drop_table(runner: _Runner, layout, name: str) -> Optional[str]:
    def drop():
        refusal = _sequence_owned(runner.conn, layout, name)
        if refusal:
            return refusal
        if _detach_state(runner.conn, layout, name) != "detached":
            return "kept %s.%s: it is still a partition" % (layout.schema, name)
        runner.execute("DROP TABLE IF EXISTS %s" % _qualified(layout, name))
        return None
    return _dropping(runner, name, drop)


def _dropping(runner: _Runner, name: str, action) -> Optional[str]:
    try:
        refusal = runner.run(action, "dropping %s" % name)
    except Exception as exc:
        if db.sqlstate(exc) != DEPENDENT_OBJECTS:
            raise
        return "kept %s: %s (%s; drop or change that, then rerun)" % (name, db.server_message(exc), _detail(exc))
    if refusal is None:
        runner.say("dropped %s" % name, level=1)
    return refusal


def _detail(exc: BaseException) -> str:
    """The server's DETAIL (for 2BP01: which objects depend on the table)."""
    fields = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    return " ".join((fields.get("D") or "other objects depend on it").split())


def _sequence_owned(conn, layout, name: str) -> Optional[str]:
    """A sequence OWNED BY a column of this table would be dropped with it; spans.id
    takes its values from spans_id_seq, so such a table is kept and the fix named."""
    cursor = conn.cursor()
    cursor.execute("select s.oid::regclass::text from pg_depend d join pg_class s on s.oid = d.objid "
                   "and s.relkind = 'S' where d.refobjid = to_regclass(%s) and d.deptype in ('a', 'i')",
                   (_qualified(layout, name),))
    row = cursor.fetchone()
    if row is None:
        return None
    return ("kept %s.%s: it owns sequence %s, which %s.%s needs; run ALTER SEQUENCE %s OWNED BY %s.%s.id, then rerun"
            % (layout.schema, name, row[0], layout.schema, layout.partitioning.table, row[0], layout.schema,
               layout.partitioning.table))


def _delete_old_traces(runner: _Runner, schema: str, window_start) -> int:
    """Batches of TRACE_BATCH rows, each its own transaction (ix_traces_start_time finds them)."""
    if window_start is None:
        return 0
    traces = "%s.traces" % db.quote_ident(schema)
    statement = ("DELETE FROM %s WHERE ctid = ANY (ARRAY(SELECT ctid FROM %s WHERE start_time < %s LIMIT %d))"
                 % (traces, traces, partitions.utc_literal(window_start), TRACE_BATCH))
    total = 0
    while True:
        cursor_rows = runner.run(lambda: _rowcount(runner.conn, statement), "deleting old traces")
        total += cursor_rows
        if cursor_rows:
            runner.say("deleted %d trace rows older than %s (%d so far)"
                       % (cursor_rows, _utc_text(window_start), total), level=1)
        if cursor_rows < TRACE_BATCH:
            return total


def _rowcount(conn, statement: str) -> int:
    cursor = conn.cursor()
    cursor.execute(statement)
    return max(cursor.rowcount, 0)


# -- reporting -------------------------------------------------------------------------

def _utc_text(moment: Optional[datetime.datetime]) -> Optional[str]:
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _report_default(settings, err, layout, in_default) -> None:
    rows, oldest, newest = in_default
    if layout.default is None:
        output.progress(settings, err, "maintain: %s.%s has no DEFAULT partition: a row outside every partition "
                        "is rejected; see `%s verify`" % (layout.schema, layout.partitioning.table, PROGRAM))
    elif rows:
        output.progress(settings, err, "maintain: %d row(s) remain in the default partition %s.%s (start_time "
                        "%s to %s): no day partition of the ahead window holds them; they are kept there"
                        % (rows, layout.schema, layout.default.name, _utc_text(oldest), _utc_text(newest)))


def _result(settings, revision, layout, default_rows: int, outcome: Outcome, ahead_days: int,
            retain: Optional[str], window_start, dry_run: bool) -> output.Result:
    status = ExitStatus.DRIFT if outcome.conflicts else ExitStatus.OK
    payload = {"exit_code": int(status), "schema": settings.schema, "database_revision": revision,
               "head": HEAD_REVISION, "dry_run": dry_run, "ahead_days": ahead_days, "retain": retain,
               "window_start": _utc_text(window_start), "partitions": len(layout.partitions),
               "oldest_bound": _utc_text(layout.oldest_bound()), "newest_bound": _utc_text(layout.newest_bound()),
               "default_rows": default_rows, "moved_from_default": outcome.moved_from_default,
               "created": outcome.created, "dropped": outcome.dropped, "finalized": outcome.finalized,
               "trace_rows_deleted": outcome.trace_rows_deleted, "conflicts": outcome.conflicts}
    message = ""
    if outcome.conflicts:
        message = "%d thing(s) could not be done: %s" % (len(outcome.conflicts), "; ".join(outcome.conflicts))
        payload["message"] = message
    return output.Result(int(status), payload, _text(payload), prometheus_text(settings.schema, status, payload),
                         message)


def _text(payload: dict) -> str:
    dry = payload["dry_run"]
    lines = ["maintain: schema %s%s" % (payload["schema"], " (dry run: nothing was changed)" if dry else "")]
    lines += ["  %s %s" % ("would create" if dry else "created", name) for name in payload["created"]]
    lines += ["  %s %s" % ("would finish detaching" if dry else "finished detaching", n) for n in payload["finalized"]]
    lines += ["  %s %s (wholly before %s)" % ("would drop" if dry else "dropped", name, payload["window_start"])
              for name in payload["dropped"]]
    if payload["window_start"]:
        lines.append("  %s %d trace rows that started before %s" % (
            "would delete" if dry else "deleted", payload["trace_rows_deleted"], payload["window_start"]))
    if not (payload["created"] or payload["dropped"] or payload["finalized"]):
        lines.append("  nothing to create or drop")
    lines.append("  partitions: %d (oldest bound %s, newest bound %s)" % (
        payload["partitions"], payload["oldest_bound"] or "none", payload["newest_bound"] or "none"))
    lines.append("  rows in the default partition: %d" % payload["default_rows"])
    lines += ["  could not: %s" % conflict for conflict in payload["conflicts"]]
    return "\n".join(lines)


def _epoch(text: Optional[str]) -> Optional[float]:
    if text is None:
        return None
    moment = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


_METRICS = (
    ("partitions", "partitions", "Partitions of spans (days, history, default)."),
    ("oldest_bound_timestamp_seconds", "oldest_bound", "The lowest finite partition bound."),
    ("newest_bound_timestamp_seconds", "newest_bound", "The highest finite partition bound: spans are "
                                                       "partitioned up to this time."),
    ("default_rows", "default_rows", "Rows in the DEFAULT partition (no day partition holds them)."),
    ("created", "created", "Partitions created by the last maintain."),
    ("dropped", "dropped", "Partitions dropped by the last maintain."),
    ("trace_rows_deleted", "trace_rows_deleted", "Trace rows deleted by the last maintain."),
)


def prometheus_text(schema: str, status, payload: Optional[dict] = None) -> str:
    """The text exposition format (node_exporter's textfile collector); on a
    failure only the exit code and the time."""
    label = '{schema="%s"}' % schema
    lines = []
    for name, key, help_text in (_METRICS if payload else ()):
        value = payload[key]
        value = len(value) if isinstance(value, list) else _epoch(value) if isinstance(value, str) else value
        if value is None:
            continue
        lines += ["# HELP otelmig_maintain_%s %s" % (name, help_text), "# TYPE otelmig_maintain_%s gauge" % name,
                  "otelmig_maintain_%s%s %s" % (name, label, _number(value))]
    lines += ["# HELP otelmig_maintain_exit_code Exit code of the last maintain.",
              "# TYPE otelmig_maintain_exit_code gauge",
              "otelmig_maintain_exit_code%s %d" % (label, int(status)),
              "# HELP otelmig_maintain_timestamp_seconds When the last maintain ran.",
              "# TYPE otelmig_maintain_timestamp_seconds gauge",
              "otelmig_maintain_timestamp_seconds%s %.3f" % (label, time.time())]
    return "\n".join(lines) + "\n"


def _number(value) -> str:
    return "%d" % value if float(value).is_integer() else "%.3f" % value
