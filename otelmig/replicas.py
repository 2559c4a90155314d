"""Standbys that have caught up (docs/operations.md, "Standbys").

Three things, all read on the primary:

- wait_for_standbys: after a run's last commit (upgrade, downgrade,
  rollback, maintain with --wait-replicas), wait until every standby has
  replayed it: those streaming now (pg_stat_replication) and those that hold
  a physical replication slot without being connected (pg_replication_slots,
  whose restart_lsn says how far they got). Exit 10 (ReplicasBehindError)
  when the time runs out; the change stays committed.
- ReplayThrottle and pause_lines: between two committed batches of a row
  move, wait while a connected standby's replay lag exceeds the bound
  (OTELMIG_MAX_REPLICA_LAG, the session setting otelmig.max_replica_lag), in
  Python or as PL/pgSQL for a DO block. A slot holder that is not connected
  never holds a move back: it could be away for days.
- refuse_unseen_standbys: --wait-replicas needs a role that may read the
  standbys' replay positions (pg_monitor); refused before any change.

Below the commands: it imports connections and settings only.
"""

import collections
import re
import time
from typing import List, NamedTuple, Optional

from otelmig import db, output, session
from otelmig.errors import RefusedError, ReplicasBehindError
from otelmig.settings import DEFAULT_MAX_REPLICA_LAG, ENV_MAX_REPLICA_LAG

POLL_SECONDS = 0.2          # how often the wait and the pause look again
REPORT_EVERY_SECONDS = 1.0  # at most one lag line per standby this often, and only when its lag changed
PAUSE_REPORT_EVERY_SECONDS = 10.0  # while a move pauses, one line this often
BOUND_SETTING = "otelmig.max_replica_lag"  # the session setting the PL/pgSQL pause reads (seconds)
MARKS_SETTING = "otelmig.replica_marks"    # the PL/pgSQL pause's batch marks, kept in the session
PAUSE_LINE = "pausing the batches while standbys replay: "  # how a pause names the standbys behind
NOTICE_PREFIX = "otelmig: "  # the PL/pgSQL pause's NOTICE: this, then PAUSE_LINE
GRANT_HINT = ("GRANT pg_monitor TO %s (only superusers and members of pg_read_all_stats, which pg_monitor "
              "includes, see the standbys' positions in pg_stat_replication)")

# Physical standbys as the primary sees them. A walsender of a logical slot is
# a subscriber, not a standby; a base backup's walsender (state 'backup') and a
# WAL receiver that reports no replay position (pg_receivewal, pg_basebackup's
# WAL stream) replay nothing. `visible` is false when the role may not read the
# row's positions (then state and every LSN are null).
_STREAMING = """
select coalesce(nullif(r.application_name, ''), s.slot_name, 'pid ' || r.pid) as name, s.slot_name::text as slot,
       coalesce(host(r.client_addr), 'local socket') as client, true as connected, r.state is not null as visible,
       r.replay_lsn, extract(epoch from r.replay_lag)::float8 as replay_lag
from pg_stat_replication r left join pg_replication_slots s on s.active_pid = r.pid
where coalesce(s.slot_type, 'physical') = 'physical' and r.state is distinct from 'backup'
  and not (r.replay_lsn is null and r.flush_lsn is not null)"""

_SLOT_HOLDERS = """
select s.slot_name::text, s.slot_name::text, null::text, false, true, s.restart_lsn, null::float8
from pg_replication_slots s where s.slot_type = 'physical' and not s.active"""

# Every standby and how far it is from a target LSN (the parameter).
_STANDBYS_SQL = """
select name, slot, client, connected, visible, position::text,
       greatest(pg_wal_lsn_diff(%%s::pg_lsn, position), 0)::bigint, replay_lag
from (%s union all %s) st(name, slot, client, connected, visible, position, replay_lag)
order by connected desc, name""" % (_STREAMING, _SLOT_HOLDERS)

# The connected standbys' replay lag in seconds: the larger of PostgreSQL's
# measure (pg_stat_replication.replay_lag: how old the WAL it replayed last was;
# 0 once it has replayed all the primary has written) and the age of the
# oldest batch mark it has not replayed. The marks are the move's own clock
# (gh-ost's heartbeat): after each batch, where the WAL was and when. They are
# needed because replay_lag stays null, or stale, for a standby whose replay
# stopped right after an idle spell (nothing to interpolate from).
# {lsns} and {times}: the marks, a pg_lsn[] and a float8[] of epochs; {wal}: _WAL_POSITION_SQL
# (0 lag once the standby has replayed all the primary holds, a page header not counted).
_CONNECTED_LAG_SQL = """
select st.name, st.client, st.replay_lsn,
       greatest(case when st.replay_lsn >= (select w.lsn::pg_lsn from ({wal}) w(lsn, at)) then 0
                     else coalesce(st.replay_lag, 0) end,
                coalesce((select extract(epoch from clock_timestamp())::float8 - min(m.at)
                          from unnest({lsns}, {times}) m(lsn, at) where m.lsn > st.replay_lsn), 0)) as lag_seconds
from (%s) st where st.visible""" % _STREAMING

# Where the WAL ends now, and the server's clock (an epoch). The insert
# position: under synchronous_commit = off the write position can still be
# before the last commit. Right after a page header (a new page, or a new
# segment after a switch) nothing was written on the page yet, and a standby
# that replayed up to the page's start has it all: the position is the page's
# start then (no record ends in a page's first 40 bytes, SizeOfXLogLongPHD).
# The low 32 bits are taken apart by hand: pg_lsn - numeric is PostgreSQL 14+.
_WAL_POSITION_SQL = """
select case when mod(p.low, p.block) between 1 and 40
            then (split_part(p.lsn::text, '/', 1) || '/' || to_hex(p.low - mod(p.low, p.block)))::pg_lsn
            else p.lsn end::text,
       p.epoch
from (select i.lsn, current_setting('wal_block_size')::int as block,
             ('x' || lpad(split_part(i.lsn::text, '/', 2), 8, '0'))::bit(32)::bigint as low,
             extract(epoch from clock_timestamp())::float8 as epoch
      from (select pg_current_wal_insert_lsn() as lsn offset 0) i) p"""


class Standby(NamedTuple):
    name: str                 # application_name (primary_conninfo's, else cluster_name), else its slot's name
    slot: Optional[str]
    client: Optional[str]     # client address; None for a slot holder that is not connected
    connected: bool
    visible: bool             # false: the role may not read its positions
    position: Optional[str]   # replay_lsn (connected) or restart_lsn (slot holder)
    lag_bytes: Optional[int]  # behind the target; None when unknown (a slot never used)
    lag_seconds: Optional[float]  # replay_lag as the primary measured it (connected only)

    @property
    def caught_up(self) -> bool:
        return self.visible and self.lag_bytes == 0

    def label(self) -> str:
        where = [self.client] if self.connected else ["not connected"]
        if self.slot and self.slot != self.name:
            where.append("slot " + self.slot)
        return "%s%s (%s)" % ("" if self.connected else "slot ", self.name, ", ".join(where))

    def lag_text(self) -> str:
        if not self.visible:
            return "position not visible to this role"
        if self.lag_bytes is None:
            return "position unknown (its slot was never used)"
        seconds = "" if self.lag_seconds is None else ", replay lag %.1fs" % self.lag_seconds
        return "%d bytes behind%s" % (self.lag_bytes, seconds)

    def as_dict(self, caught_up_after: Optional[float] = None) -> dict:
        return {"name": self.name, "slot": self.slot, "client_addr": self.client, "connected": self.connected,
                "position": self.position, "lag_bytes": self.lag_bytes,
                "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
                "caught_up": self.caught_up, "caught_up_after_seconds": caught_up_after}


# -- before the change ---------------------------------------------------------------

def refuse_unseen_standbys(settings) -> None:
    """With --wait-replicas, refuse (exit 8, before any change) a role that cannot read
    a streaming standby's position: the wait could never tell when it has caught up."""
    if settings.wait_replicas is None:
        return
    conn = db.connect(settings.conninfo, purpose=session.LOCK)
    try:
        cursor = conn.cursor()
        # On a standby the migration session refuses (exit 8) with its own message.
        cursor.execute("select pg_is_in_recovery(), current_user::text, "
                       "(select string_agg(name, ', ') from (%s) st where not visible)" % _STREAMING)
        in_recovery, role, unseen = cursor.fetchone()
    finally:
        db.close(conn)
    if unseen and not in_recovery:
        raise RefusedError("--wait-replicas cannot see how far the standbys (%s) have replayed: role %s may not "
                           "read their positions; nothing was changed: %s, or run without --wait-replicas"
                           % (unseen, role, GRANT_HINT % _role_name(role)))


# -- after the change ----------------------------------------------------------------

def after_change(settings, err, result: output.Result, what: str) -> output.Result:
    """The result of a run, once every standby has replayed its last commit (with
    --wait-replicas; the result unchanged without it). On timeout, exit 10."""
    if settings.wait_replicas is None:
        return result
    try:
        report = wait_for_standbys(settings, err, settings.wait_replicas, what)
    except ReplicasBehindError as error:
        error.details.update({key: value for key, value in result.payload.items() if key != "exit_code"})
        error.args = ("%s; %s" % (error.message, result.text.splitlines()[0] if result.text else what),)
        raise
    payload = dict(result.payload, replicas=report)
    text = result.text + "\n" + _caught_up_text(report)
    return result._replace(payload=payload, text=text)


def _caught_up_text(report: dict) -> str:
    names = [standby["name"] for standby in report["standbys"]]
    if not names:
        return "standbys: none (no standby streams and no physical replication slot is held)"
    return "standbys: all %d have replayed %s (%s)" % (len(names), report["target_lsn"], ", ".join(names))


def wait_for_standbys(settings, err, timeout: float, what: str = "the change") -> dict:
    """Until every standby has replayed what the primary holds now (the run's last
    commit and anything before it), or ReplicasBehindError after `timeout` seconds.
    Its lag is printed on stderr as it shrinks (one line per standby per change,
    at most every REPORT_EVERY_SECONDS). The report: target_lsn, waited_seconds, standbys."""
    say = lambda line: output.progress(settings, err, "replicas: " + line)  # noqa: E731
    conn = db.connect(settings.conninfo, purpose=session.LOCK)  # autocommit: a fresh view on every look
    try:
        cursor = conn.cursor()
        target = _target_lsn(cursor)
        started = time.monotonic()
        reporter = _LagReporter(say)
        while True:
            standbys = _read_standbys(cursor, target)
            _refuse_unseen(standbys, cursor, what)
            elapsed = time.monotonic() - started
            reporter.update(standbys, elapsed, target, timeout)
            behind = [standby for standby in standbys if not standby.caught_up]
            if not behind:
                return reporter.report(standbys, target, elapsed)
            if elapsed >= timeout:
                raise _timed_out(behind, target, timeout, what, reporter.report(standbys, target, elapsed))
            time.sleep(min(POLL_SECONDS, max(0.0, timeout - elapsed)))
    finally:
        db.close(conn)


def _target_lsn(cursor) -> str:
    """The end of everything inserted into the WAL so far, so of the run's last commit."""
    cursor.execute(_WAL_POSITION_SQL)
    return cursor.fetchone()[0]


def _read_standbys(cursor, target: str) -> List[Standby]:
    cursor.execute(_STANDBYS_SQL, (target,))
    return [Standby(*row) for row in cursor.fetchall()]


def _refuse_unseen(standbys, cursor, what: str) -> None:
    """A standby that began streaming after the run started, whose position this role may not read."""
    unseen = [standby.name for standby in standbys if not standby.visible]
    if unseen:
        cursor.execute("select current_user::text")
        role = cursor.fetchone()[0]
        raise ReplicasBehindError("cannot see how far the standbys %s have replayed %s: role %s may not read their "
                                  "positions; %s" % (", ".join(unseen), what, role, GRANT_HINT % _role_name(role)))


def _role_name(role: str) -> str:
    """A role as a GRANT names it: quoted only when it must be."""
    return role if re.fullmatch(r"[a-z_][a-z0-9_$]*", role) else db.quote_ident(role)


def _timed_out(behind, target: str, timeout: float, what: str, report: dict) -> ReplicasBehindError:
    names = "; ".join("%s: %s" % (standby.label(), standby.lag_text()) for standby in behind)
    error = ReplicasBehindError(
        "%d standby(s) had not replayed %s (WAL %s) after %gs: %s; the change itself is committed on the primary: "
        "wait for them with `otelmig check --wait SECONDS` against each standby, or find why they lag (a stopped "
        "standby: start it, or drop its slot if it is gone for good)" % (len(behind), what, target, timeout, names))
    error.details["replicas"] = report
    return error


class _LagReporter:
    """One line per standby when its lag changed, at most every REPORT_EVERY_SECONDS each."""

    def __init__(self, say):
        self.say = say
        self.last = {}        # name -> (lag_bytes, when printed)
        self.caught_up = {}   # name -> seconds into the wait
        self.announced = False

    def update(self, standbys, elapsed: float, target: str, timeout: float) -> None:
        behind = [standby for standby in standbys if not standby.caught_up]
        if not self.announced and behind:
            self.say("waiting up to %gs for %d standby(s) to replay WAL %s" % (timeout, len(standbys), target))
        self.announced = True
        now = time.monotonic()
        for standby in standbys:
            if standby.caught_up:
                if standby.name not in self.caught_up:
                    self.caught_up[standby.name] = round(elapsed, 3)
                    if standby.name in self.last:  # it was reported behind: say it made it
                        self.say("%s has replayed it after %.1fs" % (standby.label(), elapsed))
                continue
            lag, printed = self.last.get(standby.name, (None, None))
            if printed is None or (standby.lag_bytes != lag and now - printed >= REPORT_EVERY_SECONDS):
                self.say("%s: %s" % (standby.label(), standby.lag_text()))
                self.last[standby.name] = (standby.lag_bytes, now)

    def report(self, standbys, target: str, elapsed: float) -> dict:
        return {"target_lsn": target, "waited_seconds": round(elapsed, 3),
                "standbys": [standby.as_dict(self.caught_up.get(standby.name)) for standby in standbys]}


# -- between two batches of a row move ------------------------------------------------

def session_bound_sql(settings) -> str:
    """Sets otelmig.max_replica_lag (seconds) for the session, which pause_lines reads."""
    return "select set_config(%s, %s, false)" % (db.quote_literal(BOUND_SETTING),
                                                 db.quote_literal(_seconds_text(settings.max_replica_lag)))


def _seconds_text(seconds: float) -> str:
    return ("%.3f" % seconds).rstrip("0").rstrip(".")


class ReplayThrottle:
    """Between two committed batches of a row move, pause() waits while a connected
    standby's replay lag exceeds `bound` seconds (0 or less: never). `conn` is a
    pg8000 connection with no transaction open; each look is its own short
    transaction, so a pause holds no lock and no snapshot. `say(line)` gets a line
    when a pause starts and every PAUSE_REPORT_EVERY_SECONDS while it lasts. One
    throttle per move: it keeps the marks of the batches not replayed yet."""

    def __init__(self, conn, bound: float, say, poll: float = POLL_SECONDS):
        self.conn, self.bound, self.say, self.poll = conn, bound, say, poll
        self.marks = []  # (lsn as an int, lsn text, server epoch), oldest first

    def pause(self) -> float:
        """After a batch's COMMIT: the seconds paused (0.0 when no standby lags)."""
        if self.bound <= 0:
            return 0.0
        started = time.monotonic()
        self._mark()
        told = None
        while True:
            behind = self._lagging()
            if not behind:
                return time.monotonic() - started
            now = time.monotonic()
            if told is None or now - told >= PAUSE_REPORT_EVERY_SECONDS:
                self.say(PAUSE_LINE + "%s (the bound is %ss, %s)"
                         % (", ".join("%s (%s) %.1fs behind" % row for row in behind), _seconds_text(self.bound),
                            ENV_MAX_REPLICA_LAG))
                told = now
            time.sleep(self.poll)

    def _query(self, statement: str, params=()):
        cursor = self.conn.cursor()
        try:
            cursor.execute(statement, params)
            return cursor.fetchall()
        finally:
            if not self.conn.autocommit:
                self.conn.rollback()

    def _mark(self) -> None:
        lsn, epoch = self._query(_WAL_POSITION_SQL)[0]
        self.marks.append((_lsn_int(lsn), lsn, epoch))

    def _lagging(self) -> list:
        """(name, client, seconds) of each connected standby past the bound; forgets the
        marks every connected standby has replayed."""
        statement = _CONNECTED_LAG_SQL.format(lsns="%s::pg_lsn[]", times="%s::float8[]", wal=_WAL_POSITION_SQL)
        rows = self._query(statement, ([text for _, text, _ in self.marks], [at for _, _, at in self.marks]))
        replayed = min((_lsn_int(lsn) for _, _, lsn, _ in rows if lsn), default=None)
        if not rows:  # no standby connected: nothing to measure the marks against
            self.marks = []
        elif replayed is not None:
            self.marks = [mark for mark in self.marks if mark[0] > replayed]
        return [(name, client, seconds) for name, client, _, seconds in sorted(rows) if seconds > self.bound]


def _lsn_int(text: str) -> int:
    high, low = (int(part, 16) for part in text.split("/"))
    return (high << 32) | low


def pause_lines(indent: str = "    ") -> List[str]:
    """PL/pgSQL for a DO block's batch loop, right after a COMMIT: wait while a
    connected standby's replay lag exceeds otelmig.max_replica_lag seconds (unset,
    as under plain `alembic` or psql: the default bound; 0: never). A block of its
    own, with no EXCEPTION clause, so the loop may still COMMIT after it. The batch
    marks live in the session setting otelmig.replica_marks ("lsn@epoch ..."), so
    the block needs no variable of the loop's. Every PAUSE_REPORT_EVERY_SECONDS of
    a pause it raises a NOTICE naming the standbys."""
    marks = ("(SELECT array_agg(split_part(m, '@', %d)::%s ORDER BY o) "
             "FROM unnest(otelmig_marks) WITH ORDINALITY x(m, o))")
    lag_query = " ".join(_CONNECTED_LAG_SQL.format(lsns=marks % (1, "pg_lsn"), times=marks % (2, "float8"),
                                                   wal=_WAL_POSITION_SQL).split())
    lines = [
        "DECLARE",
        "  otelmig_bound float8 := coalesce(nullif(current_setting(%s, true), '')::float8, %s);"
        % (db.quote_literal(BOUND_SETTING), _seconds_text(DEFAULT_MAX_REPLICA_LAG)),
        "  otelmig_marks text[];",
        "  otelmig_standbys bigint;",
        "  otelmig_replayed pg_lsn;",
        "  otelmig_behind text;",
        "  otelmig_told timestamptz;",
        "BEGIN",
        "  IF otelmig_bound > 0 THEN",
        "    SELECT coalesce(string_to_array(nullif(current_setting(%s, true), ''), ' '), '{}')"
        % db.quote_literal(MARKS_SETTING),
        "           || (mark.l::text || '@' || mark.e::text)",
        "      INTO otelmig_marks FROM (%s) mark(l, e);" % " ".join(_WAL_POSITION_SQL.split()),
        "    LOOP",
        "      SELECT count(*), min(l.replay_lsn),",
        "             string_agg(format('%s (%s) %ss behind', l.name, l.client, round(l.lag_seconds::numeric, 1)),",
        "                        ', ' ORDER BY l.name) FILTER (WHERE l.lag_seconds > otelmig_bound)",
        "        INTO otelmig_standbys, otelmig_replayed, otelmig_behind",
        "        FROM (%s) l;" % lag_query,
        # the marks every connected standby has replayed are done with (all of them when none is connected)
        "      otelmig_marks := CASE WHEN otelmig_standbys = 0 THEN '{}'::text[] ELSE array(",
        "        SELECT m FROM unnest(otelmig_marks) WITH ORDINALITY x(m, o)",
        "        WHERE otelmig_replayed IS NULL OR split_part(m, '@', 1)::pg_lsn > otelmig_replayed ORDER BY o) END;",
        "      PERFORM set_config(%s, array_to_string(otelmig_marks, ' '), false);" % db.quote_literal(MARKS_SETTING),
        "      EXIT WHEN otelmig_behind IS NULL;",
        "      IF otelmig_told IS NULL OR clock_timestamp() >= otelmig_told + interval '%d seconds' THEN"
        % PAUSE_REPORT_EVERY_SECONDS,
        "        RAISE NOTICE '%s%s%% (the bound is %%s, %%)'," % (NOTICE_PREFIX, PAUSE_LINE),
        "          otelmig_behind, otelmig_bound, %s;" % db.quote_literal(ENV_MAX_REPLICA_LAG),
        "        otelmig_told := clock_timestamp();",
        "      END IF;",
        "      PERFORM pg_sleep(%s);" % POLL_SECONDS,
        "    END LOOP;",
        "  END IF;",
        "END;",
    ]
    return [indent + line for line in lines]


MOVE_LINE = "moved "          # a row move's progress NOTICE: this, then "N rows back into ..."
MOVE_PROGRESS_EVERY = 2.0      # seconds: at most one progress line so often (a batch is a NOTICE)


def relay_pause_notices(dbapi_connection, say) -> None:
    """pg8000 keeps a session's notices (connection.notices) and shows none: from
    now on the PL/pgSQL pause's go to `say` as they arrive (without the prefix), so
    an operator sees why a move waits and for which standby; so does a row move's
    progress, at most one line every MOVE_PROGRESS_EVERY seconds, and its total."""
    dbapi_connection.notices = _RelayedNotices(say, dbapi_connection.notices)


class _RelayedNotices(collections.deque):
    """pg8000's notices deque that also says a pause's NOTICE."""

    def __init__(self, say, kept: collections.deque):
        super().__init__(kept, maxlen=kept.maxlen)
        self.say = say
        self.progress_said = None  # when the last progress line was said (monotonic)

    def append(self, notice) -> None:
        super().append(notice)
        message = notice.get(b"M", b"") if isinstance(notice, dict) else b""
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
        if text.startswith(NOTICE_PREFIX + PAUSE_LINE):
            self.say(text[len(NOTICE_PREFIX):])
        elif text.startswith(NOTICE_PREFIX + MOVE_LINE):
            now = time.monotonic()
            if text.endswith(" in all") or self.progress_said is None or now - self.progress_said >= MOVE_PROGRESS_EVERY:
                self.progress_said = now
                self.say(text[len(NOTICE_PREFIX):])
