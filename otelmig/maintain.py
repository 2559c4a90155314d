"""maintain: keep otel.spans' day partitions ahead of time, and a retention window.

For cron, from every replica at once: it takes the migration lock (a second
run waits for the first, then finds nothing left to do), refuses a store that
is not at the head or whose spans is not in the partitioned layout
(otelmig.schema.SPANS_PARTITIONING), and obeys the lock budget like upgrade.
All decisions use the server's clock (now()), never this machine's; which
tables are otelmig's is the record's (otelmig/partitions.py). In order:

- Record: a store converted before partitions were recorded gets its
  partitions of exactly our names and bounds recorded as otelmig's.
- Retention (--retain W), for the window [now() - W, ...):
  our partitions wholly older than the window are detached and dropped (one
  short transaction each, ACCESS EXCLUSIVE on spans for the catalog change:
  DETACH ... CONCURRENTLY is refused while a DEFAULT partition exists; on 14+
  without one it is used); then every older row still anywhere in spans (the
  history partition and the day that straddle the window's start, DEFAULT,
  a partition that is not ours or could not be dropped) is deleted in
  committed batches (otelmig/retention.py). A table otelmig did not make is
  never detached nor dropped; the output says what was kept and why.
- Days: a partition for every UTC day from today to today + --ahead, and for
  every past day inside the partitions' span that none holds (rows wait in
  DEFAULT for it). With an empty or small DEFAULT partition, each day is one
  short transaction: the day's rows moved out of DEFAULT into a new table
  with a CHECK of its range, then ATTACH, under EXCLUSIVE on spans (writers
  wait for those milliseconds instead of routing a row to DEFAULT with a
  stale partition list, which PostgreSQL rejects). A DEFAULT too big to scan
  under a lock is replaced by a copy made while writers go on
  (otelmig/default_partition.py).
- Traces (--retain): a trace row goes when it started before the window and
  no span of it is left; one whose spans are still inside the window stays
  until they leave it, and the output says how many and until when.
"""

import contextlib
import datetime
import re
import time
from typing import List, NamedTuple, Optional, Tuple

from otelmig import db, default_partition, migration_session, output, partitions, replicas, retention, run
from otelmig._version import HEAD_REVISION
from otelmig.ddl import RECORD_DDL, SchemaSQL, crash_point_for_tests
from otelmig.errors import PROGRAM, BusyError, ExitStatus, OtelmigError, UsageError
from otelmig.partitions import Decision, NewPartition, decide  # noqa: F401  (decide: plan and verify used it from here)
from otelmig.schema import SPANS_PARTITIONING
from otelmig.state import assess, read_state

MAX_AHEAD_DAYS = 366
_DURATION = re.compile(r"([0-9]{1,6})([hdw])")
_UNIT_SECONDS = {"h": 3600, "d": 86400, "w": 7 * 86400}
DEPENDENT_OBJECTS = "2BP01"  # a view or a foreign key still needs the table: DROP refused
NOT_IN_PREREQUISITE_STATE = "55000"  # e.g. a concurrent detach while another one is pending
# A DEFAULT partition at most this big is scanned and emptied of a day's rows
# under a lock (milliseconds); a bigger one is replaced by a copy.
DIRECT_MAX_BYTES = 512 * 1024
# While a lock request of maintain waits, every writer that comes after queues
# behind it: each attempt waits at most this long (upgrade's attempts grow to
# --lock-timeout), and the run retries within the same budget (6 x
# --lock-timeout, then exit 9). A reader that never lets go makes maintain give
# up rather than stall the writers; nothing is lost meanwhile (rows wait in
# DEFAULT, visible).
MAX_ATTEMPT_WAIT = 0.2


def lock_budget(settings) -> float:
    """Seconds of lock waits a step may take in all: upgrade's budget."""
    return migration_session.LOCK_BUDGET_FACTOR * settings.lock_timeout


def parse_retain(text: Optional[str]) -> Optional[int]:
    """--retain: a positive whole number (at most six digits) of hours (h), days (d) or
    weeks (w), in seconds. Every such value works: a window reaching back past
    PostgreSQL's earliest timestamp (4714 BC) starts there."""
    if text is None:
        return None
    match = _DURATION.fullmatch(text.strip())
    if not match or int(match.group(1)) == 0:
        raise UsageError("--retain must be a positive duration like 14d, 36h or 2w (a whole number of at most six "
                         "digits, then h, d or w), not %r" % text)
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


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


class Outcome(NamedTuple):
    created: List[str]
    dropped: List[str]
    finalized: List[str]
    moved_from_default: int
    trace_rows_deleted: int
    conflicts: List[str]
    kept: List[str] = []
    span_rows_deleted: int = 0
    traces_kept: retention.KeptTraces = retention.NO_TRACES_KEPT
    adopted: List[str] = []


# -- the command ---------------------------------------------------------------------

# The JSON fields of a failed maintain (cli adds exit_code, schema, message).
FAILURE_FIELDS = {"head": HEAD_REVISION, "database_revision": None}


def failure_prometheus(schema: str, status) -> str:
    return prometheus_text(schema, status)


def maintain(settings, err, ahead: Optional[str] = None, retain: Optional[str] = None,
             dry_run: bool = False) -> output.Result:
    ahead_days, window = parse_ahead(ahead), parse_retain(retain)  # bad input: exit 2 before connecting
    if dry_run:
        return _dry_run(settings, ahead_days, window, retain)
    replicas.refuse_unseen_standbys(settings)
    with migration_session.migration_session(settings, err) as (lock, state, connection, watch):
        _refuse_unless_ready(state)
        raw = connection.connection.dbapi_connection
        runner = _Runner(settings, err, raw)
        _remove_leftovers(runner, settings.schema)
        layout = runner.read(lambda: partitions.read_layout(raw, settings.schema))
        runner.read(lambda: _refuse_unless_partitioned(raw, layout))
        now, window_start, ownership = runner.read(lambda: _clock_and_record(raw, settings.schema, window))
        decision = decide(layout, now, ahead_days, window_start.at if window_start else None, ownership)
        outcome = _carry_out(runner, layout, decision, window_start, window)
        final = runner.read(lambda: partitions.read_layout(raw, settings.schema))
        in_default = runner.read(lambda: partitions.default_rows(raw, final))
        runner.restore()
    _report_default(settings, err, final, in_default, now, ahead_days)
    return replicas.after_change(settings, err, _result(settings, state.revision, final, in_default.rows, outcome,
                                                        ahead_days, retain, window_start, dry_run=False),
                                 "the maintenance")


def _clock_and_record(conn, schema: str, window: Optional[int]):
    start = partitions.window_start(conn, window) if window is not None else None
    return partitions.server_now(conn), start, partitions.read_ownership(conn, schema)


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


def _remove_leftovers(runner, schema: str) -> None:
    """What a stopped DEFAULT promotion left and the repair's catalog condition
    missed (its function dropped by hand, say): removed before anything else."""
    if runner.read(lambda: default_partition.leftovers(runner.conn, schema)):
        runner.run(lambda: runner.execute(default_partition.repair_sql(SchemaSQL(schema))),
                   "removing what a stopped maintain left")
        runner.say("removed what an interrupted maintain left (its copies of the DEFAULT partition)")


def _dry_run(settings, ahead_days, window, retain_text) -> output.Result:
    conn = db.read_only_connection(settings.conninfo)
    try:
        state = read_state(conn, settings.schema)
        _refuse_unless_ready(state)
        layout = partitions.read_layout(conn, settings.schema)
        _refuse_unless_partitioned(conn, layout)
        now, window_start, ownership = _clock_and_record(conn, settings.schema, window)
        decision = decide(layout, now, ahead_days, window_start.at if window_start else None, ownership)
        in_default = partitions.default_rows(conn, layout)
        days = decision.fill + decision.create
        moving = sum(_default_rows_in(conn, layout, new) for new in days)
        spans = retention.old_span_rows(conn, layout, window_start, decision.drop) if window_start else 0
        traces = retention.old_traces(conn, settings.schema, window_start) if window_start else 0
    finally:
        db.close(conn)
    outcome = Outcome([n.name for n in days], decision.drop + decision.drop_detached, decision.finalize,
                      moving, traces, decision.conflicts, decision.kept, spans, adopted=decision.adopt)
    return _result(settings, state.revision, layout, in_default.rows - moving, outcome, ahead_days,
                   retain_text, window_start, dry_run=True)


def _default_rows_in(conn, layout, new: NewPartition) -> int:
    if layout.default is None:
        return 0
    cursor = conn.cursor()
    cursor.execute("select count(*) from %s.%s where %s" % (
        db.quote_ident(layout.schema), db.quote_ident(layout.default.name), _range_sql(layout, new)))
    return int(cursor.fetchone()[0])


def _range_sql(layout, new: NewPartition) -> str:
    key = db.quote_ident(layout.partitioning.key)
    return "%s >= %s and %s < %s" % (key, partitions.utc_literal(new.lower), key, partitions.utc_literal(new.upper))


# -- doing it ------------------------------------------------------------------------

class _Runner:
    """Runs each change as its own short transaction on the migration session's
    pg8000 connection, retried on a lock timeout like upgrade's DDL (attempts of
    100 ms growing to MAX_ATTEMPT_WAIT; exit 9 after 6 x --lock-timeout)."""

    def __init__(self, settings, err, conn):
        self.settings, self.err, self.conn = settings, err, conn
        # Batches that write many rows wait between them for a lagging standby (OTELMIG_MAX_REPLICA_LAG).
        self.throttle = replicas.ReplayThrottle(conn, settings.max_replica_lag, lambda line: self.say(line))

    def after_batch(self) -> None:
        """After a committed batch of rows (a copy, a replay, a delete): pause while a standby lags."""
        self.throttle.pause()

    def say(self, line: str, level: int = 0) -> None:
        output.progress(self.settings, self.err, "maintain: " + line, level=level)

    def read(self, query):
        return self.run(query, "reading the partitions")

    def run(self, action, what: str, outside_transaction: bool = False):
        """`action` in its own transaction (or none), retried by the one retry loop
        (migration_session.retrying), each lock attempt at most MAX_ATTEMPT_WAIT."""
        def on_retry(tries, reason, pause, exc):
            self.say("%s: a table is busy (%s); retrying in %.2fs" % (what, reason, pause),
                     level=0 if tries % 20 == 0 else 1)

        def stop(exc, budget_spent):
            if budget_spent:
                raise self._busy(what, exc) from None

        return migration_session.retrying(
            self.settings, lambda: self._once(action, outside_transaction),
            lambda wait: self._execute_alone("SET lock_timeout = '%dms'" % max(1, int(wait * 1000))),
            on_retry, stop, longest=MAX_ATTEMPT_WAIT)

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

    def execute(self, statement: str, params=None) -> int:
        return self._counted(statement, params).rowcount

    def query(self, statement: str, params=()):
        """A statement that changes rows and returns one row (a counted step, like execute)."""
        return self._counted(statement.strip(), params or None).fetchone()

    def _counted(self, statement: str, params):
        """One of maintain's statements: shown with -v, a CLIENT span of the run's trace
        (otelmig/run.py, as a revision's statements are), a crash point for the tests."""
        self.say(statement.replace("\n", "\n      "), level=1)
        cursor = self.conn.cursor()
        with run.statement_span(statement):
            if params is None:
                cursor.execute(statement)
            else:
                cursor.execute(statement, params)
        crash_point_for_tests()
        return cursor

    def restore(self) -> None:
        self._execute_alone("RESET lock_timeout")


def _carry_out(runner: _Runner, layout: partitions.Layout, decision: Decision,
               window_start: Optional[partitions.Moment], window: Optional[int]) -> Outcome:
    runner.run(lambda: _tidy_record(runner, layout.schema, decision.adopt), "recording otelmig's partitions")
    if decision.adopt:
        runner.say("recorded as otelmig's (converted before partitions were recorded): %s"
                   % ", ".join(decision.adopt), level=1)
    conflicts, kept = list(decision.conflicts), list(decision.kept)
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
    spans_deleted = 0
    if window_start is not None:
        current = runner.read(lambda: partitions.read_layout(runner.conn, layout.schema, layout.partitioning))
        spans_deleted = retention.delete_old_spans(runner, current, window_start)
    created, moved, not_made = _make_days(runner, layout, decision.fill + decision.create)
    conflicts += not_made
    traces = retention.NO_TRACES_KEPT
    if window_start is not None:
        traces = retention.delete_old_traces(runner, layout.schema, window_start, window)
    return Outcome(created, dropped, finalized, moved, traces.deleted, conflicts, kept, spans_deleted, traces,
                   decision.adopt)


def _tidy_record(runner: _Runner, schema: str, adopt: List[str]) -> None:
    """The adopted partitions recorded; a partition recorded but gone (dropped by
    hand) forgotten, so that a table someone makes later under its name is theirs."""
    if adopt:
        _record(runner, schema, adopt)
    if not partitions.record_exists(runner.conn, schema):
        return
    cursor = runner.conn.cursor()
    cursor.execute("select exists (select 1 from %s r where r.object_kind = %%s and to_regclass(format('%%I.%%I', "
                   "%%s::text, r.object_name)) is null)" % SchemaSQL(schema).record_table(),
                   (partitions.PARTITION_KIND, schema))
    if cursor.fetchone()[0]:
        runner.execute("DELETE FROM %s r WHERE r.object_kind = %%s AND to_regclass(format('%%I.%%I', %%s::text, "
                       "r.object_name)) IS NULL" % SchemaSQL(schema).record_table(),
                       (partitions.PARTITION_KIND, schema))


def _record(runner: _Runner, schema: str, names: List[str]) -> None:
    """Partitions recorded as otelmig's ('created'), the record table made if it is missing."""
    n = SchemaSQL(schema)
    runner.execute(RECORD_DDL.format(record=n.record_table()))
    runner.execute(n.record(partitions.PARTITIONING_REVISION, [(partitions.PARTITION_KIND, name, "created")
                                                               for name in names]))


# -- days -------------------------------------------------------------------------------

class _DefaultTooBig(Exception):
    """DEFAULT grew past DIRECT_MAX_BYTES: the day is made by the promotion instead."""


def _make_days(runner: _Runner, layout: partitions.Layout,
               days: List[NewPartition]) -> Tuple[List[str], int, List[str]]:
    """(created, rows moved out of DEFAULT, what could not be made)."""
    if not days:
        return [], 0, []
    current = runner.read(lambda: partitions.read_layout(runner.conn, layout.schema, layout.partitioning))
    columns = runner.read(lambda: _columns(runner.conn, current))
    owner = runner.read(lambda: _other_owner(runner.conn, current, current.partitioning.table))
    created, moved = [], 0
    remaining = list(days)
    if current.default is None or runner.run(lambda: _default_bytes(runner.conn, current),
                                             "measuring the DEFAULT partition") <= DIRECT_MAX_BYTES:
        while remaining:
            new = remaining[0]
            try:
                count = runner.run(lambda: _create(runner, current, new, columns, owner), "creating %s" % new.name)
            except _DefaultTooBig:
                break
            created.append(new.name)
            moved += count
            remaining.pop(0)
            runner.say("created %s%s" % (new.name, " (moved %d row(s) from the DEFAULT partition)" % count
                                         if count else ""), level=1)
    if not remaining:
        return created, moved, []
    promoted, count, not_made = _promote(runner, current, remaining, columns, owner)
    return created + promoted, moved + count, not_made


def _default_bytes(conn, layout) -> int:
    cursor = conn.cursor()
    cursor.execute("select pg_relation_size(to_regclass(%s))", (_qualified(layout, layout.default.name),))
    return int(cursor.fetchone()[0])


def _promote(runner: _Runner, layout, days: List[NewPartition], columns, owner) -> Tuple[List[str], int, List[str]]:
    """The days made by replacing a big DEFAULT with a copy; or why not."""
    default = layout.default.name
    names = [d.name for d in days]
    span = "%s to %s" % (days[0].lower.date(), days[-1].lower.date()) if len(days) > 1 else str(days[0].lower.date())
    ownership = runner.read(lambda: partitions.read_ownership(runner.conn, layout.schema))
    if default not in ownership.recorded:
        return [], 0, ["could not make the partitions of %s (%s): the DEFAULT partition %s.%s holds more than %d "
                       "bytes and is not otelmig's (not recorded in %s.otelmig_objects), so maintain does not "
                       "replace it; its rows stay there, queryable: move them out yourself, or record it"
                       % (span, ", ".join(names), layout.schema, default, DIRECT_MAX_BYTES, layout.schema)]
    why = runner.read(lambda: default_partition.blockers(
        runner.conn, layout, ownership.work, names + [default_partition.NEXT_DEFAULT, default_partition.LOG]))
    if why:
        return [], 0, ["could not make the partitions of %s: its rows sit in the DEFAULT partition %s.%s, which "
                       "maintain makes them from by replacing it with a copy, and the copy would lose what it "
                       "has: %s; its rows stay there, queryable: remove or move that, then rerun"
                       % (span, layout.schema, default, why)]
    promotion = default_partition.Promotion(layout, tuple(days), tuple(db.quote_ident(c) for c in columns), owner,
                                            runner.read(lambda: _other_owner(runner.conn, layout, default)))
    runner.say("making %d partition(s) out of the DEFAULT partition %s.%s (a copy while writers go on, then one "
               "short swap)" % (len(days), layout.schema, default))
    try:
        count = default_partition.promote(runner, promotion)
    except default_partition.PromotionStopped as stopped:
        runner.run(lambda: runner.execute(default_partition.repair_sql(SchemaSQL(layout.schema))),
                   "removing the copies")
        return [], 0, ["could not make the partitions of %s: %s" % (span, stopped.message)]
    for name in names:
        runner.say("created %s (out of the DEFAULT partition)" % name, level=1)
    return names, count, []


def _columns(conn, layout) -> List[str]:
    cursor = conn.cursor()
    cursor.execute("select attname::text from pg_attribute where attrelid = to_regclass(%s) and attnum > 0 "
                   "and not attisdropped and attgenerated = '' order by attnum",
                   (_qualified(layout, layout.partitioning.table),))
    return [row[0] for row in cursor.fetchall()]


def _other_owner(conn, layout, table: str) -> Optional[str]:
    """The owner of `table` when it is not the role running maintain (a member of
    it): new tables get it, as revision 2's partitions did, so that whoever
    owns spans can later drop them."""
    cursor = conn.cursor()
    cursor.execute("select pg_get_userbyid(relowner)::text, current_user::text from pg_class "
                   "where oid = to_regclass(%s)", (_qualified(layout, table),))
    owner, me = cursor.fetchone()
    return None if owner == me else owner


def _qualified(layout, name: str) -> str:
    return "%s.%s" % (db.quote_ident(layout.schema), db.quote_ident(name))


def _create(runner: _Runner, layout, new: NewPartition, columns: List[str], owner: Optional[str]) -> int:
    """One transaction: EXCLUSIVE on spans (writers wait, so none routes a row of
    the day to DEFAULT with the partition list from before the attach: the
    server would reject it), ACCESS EXCLUSIVE on DEFAULT (it is scanned by the
    attach: too big, and the promotion makes the day instead); the day
    recorded, then made as a table with a CHECK of its range, DEFAULT's rows
    of the range moved into it, attached (the CHECK spares the scan), the
    CHECK dropped. Returns the rows moved."""
    parent, table = _qualified(layout, layout.partitioning.table), _qualified(layout, new.name)
    check = db.quote_ident("%s_range" % new.name)
    lower, upper = partitions.utc_literal(new.lower), partitions.utc_literal(new.upper)
    runner.execute("LOCK TABLE %s IN EXCLUSIVE MODE" % parent)
    if layout.default is not None:
        runner.execute("LOCK TABLE %s IN ACCESS EXCLUSIVE MODE" % _qualified(layout, layout.default.name))
        if _default_bytes(runner.conn, layout) > DIRECT_MAX_BYTES:
            raise _DefaultTooBig()
    _record(runner, layout.schema, [new.name])
    runner.execute("CREATE TABLE %s (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED)"
                   % (table, parent))
    runner.execute("ALTER TABLE %s ADD CONSTRAINT %s CHECK (%s)" % (table, check, _range_sql(layout, new)))
    if owner is not None:
        runner.execute("ALTER TABLE %s OWNER TO %s" % (table, db.quote_ident(owner)))
    default_partition.grant_like(runner, table, parent)
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


# -- retention: whole partitions ------------------------------------------------------

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
    """Detach and drop one of our partitions; None, or why it was kept."""
    parent, table = _qualified(layout, layout.partitioning.table), _qualified(layout, name)
    concurrently = layout.default is None and partitions.server_major(runner.conn) >= 14
    if concurrently:  # only there: the server refuses it while a DEFAULT partition exists
        refusal = runner.read(lambda: _sequence_owned(runner.conn, layout, name))
        if refusal:
            return refusal

        def detach():
            state = _detach_state(runner.conn, layout, name)
            if state == "attached":
                runner.execute("ALTER TABLE %s DETACH PARTITION %s CONCURRENTLY" % (parent, table))
            elif state == "pending":
                runner.execute("ALTER TABLE %s DETACH PARTITION %s FINALIZE" % (parent, table))
        # Recorded first: a run stopped between the detach and the drop leaves a table only maintain may drop.
        runner.run(lambda: runner.execute(
            "INSERT INTO %s (revision, object_kind, object_name, origin) VALUES (%%s, %%s, %%s, 'recorded') "
            "ON CONFLICT (object_kind, object_name) DO NOTHING" % SchemaSQL(layout.schema).record_table(),
            (HEAD_REVISION, partitions.DETACHING_KIND, name)), "recording the detach of %s" % name)
        try:
            runner.run(detach, "detaching %s" % name, outside_transaction=True)
        except Exception as exc:
            if db.sqlstate(exc) != NOT_IN_PREREQUISITE_STATE:  # another partition's detach is pending
                raise
            return ("kept %s.%s: %s (%s); its rows older than the window are deleted"
                    % (layout.schema, name, db.server_message(exc), _detail(exc, "")))
        return _drop_table(runner, layout, name)

    def detach_and_drop():
        refusal = _sequence_owned(runner.conn, layout, name)
        if refusal:
            return refusal
        runner.execute("ALTER TABLE %s DETACH PARTITION %s" % (parent, table))
        runner.execute("DROP TABLE %s" % table)
        _forget(runner, layout.schema, name)
        return None
    return _dropping(runner, name, detach_and_drop)


def _forget(runner: _Runner, schema: str, name: str) -> None:
    runner.execute("DELETE FROM %s WHERE object_kind IN (%%s, %%s) AND object_name = %%s"
                   % SchemaSQL(schema).record_table(), (partitions.PARTITION_KIND, partitions.DETACHING_KIND, name))


def _drop_table(runner: _Runner, layout, name: str) -> Optional[str]:
    def drop():
        refusal = _sequence_owned(runner.conn, layout, name)
        if refusal:
            return refusal
        if _detach_state(runner.conn, layout, name) != "detached":
            return "kept %s.%s: it is still a partition" % (layout.schema, name)
        runner.execute("DROP TABLE IF EXISTS %s" % _qualified(layout, name))
        _forget(runner, layout.schema, name)
        return None
    return _dropping(runner, name, drop)


def _dropping(runner: _Runner, name: str, action) -> Optional[str]:
    try:
        refusal = runner.run(action, "dropping %s" % name)
    except Exception as exc:
        if db.sqlstate(exc) != DEPENDENT_OBJECTS:
            raise
        return ("kept %s: %s (%s; drop or change that, then rerun); its rows older than the window are deleted"
                % (name, db.server_message(exc), _detail(exc)))
    if refusal is None:
        runner.say("dropped %s" % name, level=1)
    return refusal


def _detail(exc: BaseException, otherwise: str = "other objects depend on it") -> str:
    """The server's DETAIL, or its HINT (for 2BP01: which objects depend on the table)."""
    fields = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    return " ".join((fields.get("D") or fields.get("H") or otherwise).split())


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
    return ("kept %s.%s: it owns sequence %s, which %s.%s needs; run ALTER SEQUENCE %s OWNED BY %s.%s.id, then "
            "rerun; its rows older than the window are deleted"
            % (layout.schema, name, row[0], layout.schema, layout.partitioning.table, row[0], layout.schema,
               layout.partitioning.table))


# -- reporting -------------------------------------------------------------------------

def _utc_text(moment: Optional[datetime.datetime]) -> Optional[str]:
    return None if moment is None else partitions.shown("%04d-%02d-%02dT%02d:%02d:%02d" % (
        moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second))


def _report_default(settings, err, layout, in_default: partitions.DefaultRows, now, ahead_days: int) -> None:
    if layout.default is None:
        output.progress(settings, err, "maintain: %s.%s has no DEFAULT partition: a row outside every partition "
                        "is rejected; see `%s verify`" % (layout.schema, layout.partitioning.table, PROGRAM))
    elif in_default.rows:
        output.progress(settings, err, "maintain: %d row(s) remain in the DEFAULT partition %s.%s (start_time "
                        "%s to %s), queryable: rows of a day more than %d days ahead get their partition once the "
                        "day is that near; rows older than every partition go with --retain; rows at infinity, "
                        "before year 1 or past 9999 stay there" % (
                            in_default.rows, layout.schema, layout.default.name, in_default.oldest.text,
                            in_default.newest.text, ahead_days))


def _result(settings, revision, layout, default_rows: int, outcome: Outcome, ahead_days: int,
            retain: Optional[str], window_start: Optional[partitions.Moment], dry_run: bool) -> output.Result:
    status = ExitStatus.DRIFT if outcome.conflicts else ExitStatus.OK
    oldest, newest = layout.oldest_moment(), layout.newest_moment()
    payload = {"exit_code": int(status), "schema": settings.schema, "database_revision": revision,
               "head": HEAD_REVISION, "dry_run": dry_run, "ahead_days": ahead_days, "retain": retain,
               "window_start": window_start.text if window_start else None, "partitions": len(layout.partitions),
               "oldest_bound": oldest.text if oldest else None, "newest_bound": newest.text if newest else None,
               "default_rows": default_rows, "moved_from_default": outcome.moved_from_default,
               "created": outcome.created, "dropped": outcome.dropped, "finalized": outcome.finalized,
               "span_rows_deleted": outcome.span_rows_deleted, "trace_rows_deleted": outcome.trace_rows_deleted,
               "trace_rows_kept": outcome.traces_kept.kept, "trace_rows_kept_until": outcome.traces_kept.until,
               "kept": outcome.kept, "adopted": outcome.adopted, "conflicts": outcome.conflicts}
    epochs = {"oldest_bound": oldest.epoch if oldest else None, "newest_bound": newest.epoch if newest else None}
    message = ""
    if outcome.conflicts:
        message = "%d thing(s) could not be done: %s" % (len(outcome.conflicts), "; ".join(outcome.conflicts))
        payload["message"] = message
    return output.Result(int(status), payload, _text(payload), prometheus_text(settings.schema, status, payload,
                                                                               epochs), message)


def _text(payload: dict) -> str:
    dry = payload["dry_run"]
    lines = ["maintain: schema %s%s" % (payload["schema"], " (dry run: nothing was changed)" if dry else "")]
    if payload["adopted"]:
        lines.append("  %s as otelmig's (made before partitions were recorded): %s"
                     % ("would record" if dry else "recorded", ", ".join(payload["adopted"])))
    lines += ["  %s %s" % ("would create" if dry else "created", name) for name in payload["created"]]
    lines += ["  %s %s" % ("would finish detaching" if dry else "finished detaching", n) for n in payload["finalized"]]
    lines += ["  %s %s (wholly before %s)" % ("would drop" if dry else "dropped", name, payload["window_start"])
              for name in payload["dropped"]]
    if payload["window_start"]:
        lines.append("  %s %d span rows that started before %s, in partitions kept" % (
            "would delete" if dry else "deleted", payload["span_rows_deleted"], payload["window_start"]))
        lines.append("  %s %d trace rows that started before %s (and have no span left)" % (
            "would delete" if dry else "deleted", payload["trace_rows_deleted"], payload["window_start"]))
        if payload["trace_rows_kept"]:
            lines.append("  kept %d trace rows that started before %s: spans of them are inside the window; the "
                         "last of them can go after %s" % (payload["trace_rows_kept"], payload["window_start"],
                                                           payload["trace_rows_kept_until"]))
    lines += ["  %s" % reason for reason in payload["kept"]]
    if not (payload["created"] or payload["dropped"] or payload["finalized"]):
        lines.append("  nothing to create or drop")
    lines.append("  partitions: %d (oldest bound %s, newest bound %s)" % (
        payload["partitions"], payload["oldest_bound"] or "none", payload["newest_bound"] or "none"))
    lines.append("  rows in the default partition: %d" % payload["default_rows"])
    lines += ["  could not: %s" % conflict for conflict in payload["conflicts"]]
    return "\n".join(lines)


_METRICS = (
    ("partitions", "partitions", "Partitions of spans (days, history, default)."),
    ("oldest_bound_timestamp_seconds", "oldest_bound", "The lowest finite partition bound."),
    ("newest_bound_timestamp_seconds", "newest_bound", "The highest finite partition bound: spans are "
                                                       "partitioned up to this time."),
    ("default_rows", "default_rows", "Rows in the DEFAULT partition (no day partition holds them)."),
    ("created", "created", "Partitions created by the last maintain."),
    ("dropped", "dropped", "Partitions dropped by the last maintain."),
    ("span_rows_deleted", "span_rows_deleted", "Span rows older than the window deleted by the last maintain "
                                               "(in partitions it kept)."),
    ("trace_rows_deleted", "trace_rows_deleted", "Trace rows deleted by the last maintain."),
    ("trace_rows_kept", "trace_rows_kept", "Trace rows older than the window kept by the last maintain: spans of "
                                           "them are inside it."),
)


def prometheus_text(schema: str, status, payload: Optional[dict] = None, epochs: Optional[dict] = None) -> str:
    """The text exposition format (node_exporter's textfile collector); on a
    failure only the exit code and the time."""
    label = '{schema="%s"}' % schema
    lines = []
    for name, key, help_text in (_METRICS if payload else ()):
        value = (epochs or {}).get(key, payload[key]) if key in (epochs or {}) else payload[key]
        value = len(value) if isinstance(value, list) else value
        if value is None or isinstance(value, str) or value in (float("inf"), float("-inf")):
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
