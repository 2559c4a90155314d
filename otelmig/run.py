"""One run of a command that changes the store, as it is recorded.

The run history (otelmig/runlog.py) and the trace of the run (otelmig/otlp.py,
otelmig/tracestore.py) read this model; the layers below the commands report
to it through the functions at the end of this module: a revision starts, a
statement runs, a lock was waited for, a transaction is retried. Each is a
no-op unless a run is current, and spans are kept only when the run is traced
(an OTLP endpoint is set, or --record-trace), so the commands pay nothing for
it otherwise. Standard library only: every layer may import this.

The run's id is its trace id (32 hex digits): TRACEPARENT's when the caller
(a CI pipeline, a deploy) gives one, so the migration is part of that trace,
else a new random one. The root span's id (16 hex digits) tells apart two runs
of one pipeline that share a trace id.
"""

import contextlib
import os
import re
import time
from typing import Callable, List, Optional

from otelmig.redact import redact

OK, REFUSED, FAILED, INTERRUPTED, UNFINISHED, RUNNING = "ok", "refused", "failed", "interrupted", "unfinished", "running"
REFUSED_EXIT = 8
INTERRUPTED_EXITS = (130, 143)

# OTLP span kinds (opentelemetry/proto/trace/v1/trace.proto)
KIND_INTERNAL, KIND_CLIENT = 1, 3
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


def new_trace_id() -> str:
    return os.urandom(16).hex()


def new_span_id() -> str:
    return os.urandom(8).hex()


def parse_traceparent(text: Optional[str]):
    """(trace id, parent span id, sampled) of a W3C traceparent (version 00), or None when absent or invalid."""
    match = _TRACEPARENT.fullmatch((text or "").strip().lower())
    if not match or match.group(1) == _ZERO_TRACE or match.group(2) == _ZERO_SPAN:
        return None
    return match.group(1), match.group(2), bool(int(match.group(3), 16) & 1)


def outcome_of(exit_code: int) -> str:
    """The history's outcome for an exit code: 8 is the documented "refused, nothing changed"."""
    if exit_code == 0:
        return OK
    if exit_code == REFUSED_EXIT:
        return REFUSED
    if exit_code in INTERRUPTED_EXITS:
        return INTERRUPTED
    return FAILED


class Span:
    """A span as OTLP describes one; times are Unix nanoseconds."""

    __slots__ = ("name", "kind", "span_id", "parent_id", "start_ns", "end_ns", "attributes", "events",
                 "status", "status_message")

    def __init__(self, name: str, kind: int, parent_id: Optional[str], attributes: Optional[dict] = None):
        self.name, self.kind, self.span_id, self.parent_id = name, kind, new_span_id(), parent_id
        self.start_ns, self.end_ns = time.time_ns(), None
        self.attributes = dict(attributes or {})
        self.events: List[tuple] = []  # (name, time ns, attributes)
        self.status, self.status_message = STATUS_UNSET, ""

    def fail(self, message: str, sqlstate: Optional[str] = None, error_type: Optional[str] = None) -> None:
        self.status, self.status_message = STATUS_ERROR, redact(message)
        if sqlstate:
            self.attributes["db.response.status_code"] = sqlstate
        self.attributes["error.type"] = sqlstate or error_type or "_OTHER"

    def end(self) -> None:
        if self.end_ns is None:
            self.end_ns = time.time_ns()


class Run:
    """What one command run is recorded as; `traced` keeps its spans."""

    def __init__(self, command: str, arguments: List[str], via: str = "otelmig", traced: bool = False,
                 traceparent: Optional[str] = None):
        parent = parse_traceparent(traceparent)
        self.trace_id, self.parent_span_id, self.sampled = parent if parent else (new_trace_id(), None, True)
        self.command, self.via, self.traced = command, via, traced
        self.arguments = [redact(a) for a in arguments]
        self.root = Span(command, KIND_INTERNAL, self.parent_span_id)
        self.span_id = self.root.span_id
        self.spans: List[Span] = [self.root]
        self._open: List[Span] = [self.root]
        self.started_monotonic = time.monotonic()
        self.lock_waits, self.lock_wait_seconds, self.retries = 0, 0.0, 0
        self.exit_code: Optional[int] = None
        self.outcome = RUNNING
        self.sqlstate: Optional[str] = None
        self.message: Optional[str] = None
        self.reached_database = False  # the run took the migration lock (its history row could be written)
        self.changing = False          # past every check made before its first change
        self.statement_attributes: dict = {}  # db.namespace, server.address, ... for statement spans
        self.history = None            # runlog.History once the row is open
        self.finishers: List[Callable] = []  # called with the run at its end: trace store, exporter

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started_monotonic

    def open_span(self, name: str, kind: int, attributes: Optional[dict] = None) -> Span:
        span = Span(name, kind, self._open[-1].span_id, attributes)
        self.spans.append(span)
        self._open.append(span)
        return span

    def close_span(self, span: Span) -> None:
        span.end()
        if span in self._open:
            self._open.remove(span)

    def event(self, name: str, attributes: dict) -> None:
        if self.traced:
            self._open[-1].events.append((name, time.time_ns(), dict(attributes)))

    def finish(self, exit_code: int, message: Optional[str] = None, sqlstate: Optional[str] = None) -> None:
        self.exit_code, self.outcome = exit_code, outcome_of(exit_code)
        self.message = redact(" ".join(message.split())) if message else None
        self.sqlstate = sqlstate
        for span in reversed(self._open[1:]):  # spans an exception left open
            span.end()
        self.root.attributes["otelmig.outcome"] = self.outcome
        self.root.attributes["process.exit.code"] = exit_code
        if exit_code != 0:
            self.root.fail(self.message or "exit %d" % exit_code, sqlstate, "exit_%d" % exit_code)
        self.root.end()


_current: List[Run] = []


def current() -> Optional[Run]:
    return _current[-1] if _current else None


def begin(run_: Run) -> Run:
    """run_ is the current run until end(run_) (cli.main, the alembic path)."""
    _current.append(run_)
    return run_


def end(run_: Run) -> None:
    if run_ in _current:
        _current.remove(run_)


# -- what the layers below the commands report ------------------------------------

@contextlib.contextmanager
def revision_span(revision: str, direction: str):
    """A span per revision applied or reverted (migration_api.run)."""
    run_ = current()
    if run_ is None or not run_.traced:
        yield
        return
    span = run_.open_span("%s %s" % ("upgrade" if direction == "up" else "downgrade", revision), KIND_INTERNAL,
                          {"otelmig.revision": revision, "otelmig.direction": direction})
    try:
        yield
    except BaseException as exc:
        span.fail(str(exc), _sqlstate_of(exc), type(exc).__name__)
        raise
    finally:
        run_.close_span(span)


@contextlib.contextmanager
def statement_span(sql: str):
    """A CLIENT span per statement (ddl.OnlineRunner), with the stable database
    conventions; the statement's text is never sent, only its summary."""
    run_ = current()
    if run_ is None or not run_.traced:
        yield
        return
    operation, target = summarize(sql)
    attributes = dict(run_.statement_attributes)
    attributes["db.operation.name"] = operation
    attributes["db.query.summary"] = ("%s %s" % (operation, target)) if target else operation
    span = run_.open_span(attributes["db.query.summary"], KIND_CLIENT, attributes)
    try:
        yield
    except BaseException as exc:
        span.fail(_server_message(exc), _sqlstate_of(exc), type(exc).__name__)
        raise
    finally:
        run_.close_span(span)


def lock_waited(lock: str, seconds: float, attributes: Optional[dict] = None) -> None:
    """The run waited `seconds` for a lock (a table lock attempt that timed out, the migration lock)."""
    run_ = current()
    if run_ is None:
        return
    run_.lock_waits += 1
    run_.lock_wait_seconds += seconds
    run_.event("otelmig.lock_wait", dict(attributes or {}, **{"otelmig.lock": lock,
                                                              "otelmig.wait_seconds": round(seconds, 3)}))


def retried(attempt: int, reason: str, sqlstate: Optional[str], pause: float) -> None:
    """A transaction rolled back by a conflict is tried again."""
    run_ = current()
    if run_ is None:
        return
    run_.retries += 1
    attributes = {"otelmig.attempt": attempt, "otelmig.reason": redact(reason),
                  "otelmig.pause_seconds": round(pause, 3)}
    if sqlstate:
        attributes["db.response.status_code"] = sqlstate
    run_.event("otelmig.retry", attributes)


def changing() -> None:
    """The run passed every check made before its first change (migrations/env.py,
    just before Alembic runs): the history may now be created where it was missing."""
    run_ = current()
    if run_ is None:
        return
    run_.changing = True
    if run_.history is not None:
        run_.history.changing()


# -- statement summaries ---------------------------------------------------------

_WORDS = re.compile(r"[A-Za-z_]+")
_TWO_WORD = {"CREATE", "ALTER", "DROP"}
_QUALIFIED = re.compile(r'((?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)(?:\.(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*))?)')
_TARGET_AFTER = re.compile(
    r"^\s*(?:CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?\S+\s+ON\s+(?:ONLY\s+)?"
    r"|ALTER\s+(?:TABLE|INDEX|SEQUENCE)\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?"
    r"|DROP\s+(?:TABLE|INDEX|SEQUENCE)\s+(?:CONCURRENTLY\s+)?(?:IF\s+EXISTS\s+)?"
    r"|CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"|LOCK\s+TABLE\s+(?:ONLY\s+)?"
    r"|INSERT\s+INTO\s+|UPDATE\s+(?:ONLY\s+)?|DELETE\s+FROM\s+(?:ONLY\s+)?|TRUNCATE\s+(?:TABLE\s+)?)",
    re.I)


def summarize(sql: str):
    """(db.operation.name, target) of a statement: `CREATE INDEX`, `otel.spans`.
    Names only, never a literal: low cardinality, nothing of the data."""
    words = _WORDS.findall(sql[:200])
    if not words:
        return "UNKNOWN", None
    first = words[0].upper()
    operation = first
    if first in _TWO_WORD and len(words) > 1:
        second = words[1].upper()
        if second == "UNIQUE" and len(words) > 2:
            second = words[2].upper()
        operation = "%s %s" % (first, second)
    elif first == "LOCK":
        operation = "LOCK TABLE"
    elif first == "DO":
        return "DO", None
    prefix = _TARGET_AFTER.match(sql)
    target = None
    if prefix:
        found = _QUALIFIED.match(sql, prefix.end())
        target = found.group(1).replace('"', "") if found else None
    return operation, target


_SQLSTATE_IN_MESSAGE = re.compile(r"SQLSTATE ([0-9A-Z]{5})")


def sqlstate_of(exc: Optional[BaseException], message: str = "") -> Optional[str]:
    """The server's SQLSTATE behind a failure: the driver's error (wrapped by
    SQLAlchemy, or the cause of ours), else the one our message names."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for candidate in (exc, getattr(exc, "orig", None)):
            fields = getattr(candidate, "args", None)
            if fields and isinstance(fields[0], dict) and fields[0].get("C"):
                return fields[0]["C"]
        exc = exc.__cause__ or exc.__context__
    found = _SQLSTATE_IN_MESSAGE.search(message or "")
    return found.group(1) if found else None


def _sqlstate_of(exc: BaseException) -> Optional[str]:
    return sqlstate_of(exc, str(exc))


def _server_message(exc: BaseException) -> str:
    for candidate in (exc, getattr(exc, "orig", None)):
        fields = getattr(candidate, "args", None)
        if fields and isinstance(fields[0], dict) and fields[0].get("M"):
            return fields[0]["M"]
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
