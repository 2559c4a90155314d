"""The run history: {schema}.otelmig_runs (otelmig/schema.py RUNS, docs/history.md).

One row per run of upgrade, downgrade/rollback, stamp, maintain and repair, whether
otelmig ran it, psql ran its --sql script (offline.py renders the SQL from
here), or plain `alembic` did (otelmig/authors.py). The row is written on a
connection other than the migration's, in autocommit, so no rollback of the
migration's transactions can take it away:

- opened once the run holds the migration lock (outcome `running`), with the
  revision found, who runs it (database and OS) and where the WAL was;
- closed when the run ends, however it ends (ok, refused, failed,
  interrupted), with its exit code, SQLSTATE, redacted message, lock waits,
  retries, the revision left and the WAL position after its last commit.

The row is written on the migration lock's own connection (otelmig/lock.py:
autocommit, and never the migration's), which stays open, and the lock held,
until the row is closed. So a row is only ever `running` while its run holds
the migration lock of its database and schema: a run that takes the lock and
finds a row still `running` knows that its process died without closing it
(SIGKILL, out of memory, a lost machine, a --sql script stopped by an error:
the lock went with its session) and marks it `unfinished`. `log` and `verify`
read such a row as `unfinished` when nobody holds the lock, and write nothing.
No connection is added: otelmig still needs three.

Where the table is missing, the first run that may write creates it (once
the schema exists: an upgrade of an empty database, right after it created
the schema). A run that then ends refused, or that stops before its first
change, drops the table it created, so a refused run leaves the store as it
found it. A read-only server (a standby, default_transaction_read_only) takes
no row: the run is refused there anyway (exit 8).

The history is never in the way: a history that cannot be written costs one
warning line on stderr and changes neither the run nor its exit code.
"""

import getpass
import hashlib
import json
import os
import socket
import sys
from typing import List, Optional

from otelmig import db, redact, run as run_model
from otelmig._version import __version__
from otelmig.lock import lock_keys
from otelmig.schema import RUN_OUTCOMES, RUNS, RUNS_TABLE, VERSION_TABLE



def create_table_sql(schema: str) -> str:
    """CREATE TABLE IF NOT EXISTS for the history, from its declaration in otelmig/schema.py."""
    columns = []
    for column in RUNS.columns:
        line = "%s %s%s" % (db.quote_ident(column.name), column.type, "" if column.nullable else " NOT NULL")
        if column.default is not None:
            line += " DEFAULT %s" % column.default
        columns.append(line)
    outcomes = ", ".join(db.quote_literal(o) for o in RUN_OUTCOMES)
    columns.append("CONSTRAINT otelmig_runs_outcome CHECK (outcome IN (%s))" % outcomes)
    columns.append("CONSTRAINT %s PRIMARY KEY (%s)" % (RUNS.primary_key, ", ".join(RUNS.primary_key_columns)))
    return "CREATE TABLE IF NOT EXISTS %s (\n    %s\n)" % (table(schema), ",\n    ".join(columns))


def table(schema: str) -> str:
    return "%s.%s" % (db.quote_ident(schema), db.quote_ident(RUNS_TABLE))


def migration_lock_held(schema: str) -> str:
    """SQL: some session holds the migration lock of this database and schema (a run is alive)."""
    classid, objid = (key & 0xFFFFFFFF for key in lock_keys(schema))
    return ("exists (select 1 from pg_locks l where l.locktype = 'advisory' and l.granted and l.objsubid = 2 "
            "and l.database = (select oid from pg_database where datname = current_database()) "
            "and l.classid = %d::bigint::oid and l.objid = %d::bigint::oid)" % (classid, objid))


UNFINISHED_MESSAGE = ("its process ended without recording how (SIGKILL, out of memory, a lost machine, or a --sql "
                      "script stopped by an error); found by run ")


def mark_unfinished_sql(schema: str, found_by_sql: str) -> str:
    """Rows still `running` when a run holds the migration lock are dead: `unfinished`
    (found_by_sql is an SQL expression for the id of the run that found them)."""
    return ("update %s set outcome = 'unfinished', message = %s || %s where outcome = 'running'"
            % (table(schema), db.quote_literal(UNFINISHED_MESSAGE), found_by_sql))


# -- the --sql script's run (offline.py): psql opens and closes its row -----------------
#
# The script cannot run Python, so it keeps its run in session settings
# (otelmig.run_*) and writes its row in DO blocks: opened after the guards when
# the history exists, closed (created first where it is missing) after its last
# revision. A script that psql stops on an error leaves its row `running`; its
# session, and with it the migration lock its guards took, ends with psql, so the
# next run marks it `unfinished`. The settings the script's decisions depend on (TimeZone,
# DateStyle) are set at its top, so the times it keeps as text read back the same.
DOLLAR = "$otelmig$"
_SETTING = "current_setting('otelmig.run_%s')"


def _script_insert(schema: str, command: str, arguments: List[str]) -> str:
    return ("INSERT INTO %s (run_id, span_id, command, arguments, via, from_revision, outcome, started_at, "
            "db_current_user, db_session_user, client_addr, application_name, os_user, os_host, otelmig_version, "
            "pyz_sha256, start_lsn) VALUES (%s, %s, %s, %s::jsonb, 'psql', nullif(%s, ''), 'running', "
            "%s::timestamptz, current_user, session_user, host(inet_client_addr()), "
            "current_setting('application_name'), %s, %s, %s, %s, %s::pg_lsn)"
            % (table(schema), _SETTING % "id", _SETTING % "span", db.quote_literal(command),
               db.quote_literal(json.dumps(arguments)), _SETTING % "found", _SETTING % "started",
               _literal(_os_user()), _literal(socket.gethostname()), db.quote_literal(__version__),
               _literal(pyz_sha256()), _SETTING % "lsn"))


def _literal(text: Optional[str]) -> str:
    return "NULL" if text is None else db.quote_literal(text)


def script_open(schema: str, command: str, arguments: List[str]) -> str:
    """The DO block that starts the script's run (after the guards: nothing was changed yet)."""
    version = "%s.%s" % (db.quote_ident(schema), VERSION_TABLE)
    return "\n".join([
        "-- the run history (docs/history.md): this run's row, opened now if %s exists, closed at the end"
        % table(schema),
        "DO %s" % DOLLAR, "DECLARE found text;", "BEGIN",
        "  PERFORM set_config('otelmig.run_id', replace(gen_random_uuid()::text, '-', ''), false);",
        "  PERFORM set_config('otelmig.run_span', left(replace(gen_random_uuid()::text, '-', ''), 16), false);",
        "  PERFORM set_config('otelmig.run_started', clock_timestamp()::text, false);",
        "  PERFORM set_config('otelmig.run_lsn', pg_current_wal_insert_lsn()::text, false);",
        "  IF to_regclass(%s) IS NOT NULL THEN" % db.quote_literal(version),
        "    EXECUTE %s INTO found;" % db.quote_literal("select max(version_num) from %s" % version),
        "  END IF;",
        "  PERFORM set_config('otelmig.run_found', coalesce(found, ''), false);",
        "  IF to_regclass(%s) IS NOT NULL THEN" % db.quote_literal(table(schema)),
        "    BEGIN",
        "      %s;" % mark_unfinished_sql(schema, _SETTING % "id"),
        "      %s;" % _script_insert(schema, command, arguments_of(arguments)),
        _NEVER_IN_THE_WAY % db.quote_literal(table(schema)),
        "  END IF;", "END", "%s;" % DOLLAR, ""])


# The history never stops the script: a failure to write it is one WARNING.
_NEVER_IN_THE_WAY = ("    EXCEPTION WHEN others THEN\n"
                     "      RAISE WARNING 'otelmig: the run history in %% was not written (%%); the script goes on', "
                     "%s, SQLERRM;\n    END;")


def script_close(schema: str, command: str, arguments: List[str]) -> str:
    """The DO block that ends the script's run as `ok` (creating the history where it is missing)."""
    version = "%s.%s" % (db.quote_ident(schema), VERSION_TABLE)
    run_row = "run_id = %s and span_id = %s" % (_SETTING % "id", _SETTING % "span")
    return "\n".join([
        "-- the run history: this run ended ok",
        "DO %s" % DOLLAR, "DECLARE left_at text;", "BEGIN",
        "  IF to_regclass(%s) IS NOT NULL THEN" % db.quote_literal(version),
        "    EXECUTE %s INTO left_at;" % db.quote_literal("select max(version_num) from %s" % version),
        "  END IF;",
        "  BEGIN",
        "    IF to_regclass(%s) IS NULL THEN" % db.quote_literal(table(schema)),
        "      EXECUTE %s;" % db.quote_literal(create_table_sql(schema)),
        "    END IF;",
        "    IF NOT EXISTS (SELECT 1 FROM %s WHERE %s) THEN" % (table(schema), run_row),
        "      %s;" % _script_insert(schema, command, arguments_of(arguments)),
        "    END IF;",
        "    UPDATE %s SET outcome = 'ok', exit_code = 0, ended_at = clock_timestamp(), to_revision = left_at, "
        "commit_lsn = pg_current_wal_insert_lsn(), wal_bytes = pg_wal_lsn_diff(pg_current_wal_insert_lsn(), "
        "start_lsn)::bigint WHERE %s AND outcome IN ('running', 'unfinished');" % (table(schema), run_row),
        _NEVER_IN_THE_WAY.replace("\n    ", "\n  ") % db.quote_literal(table(schema)),
        "END", "%s;" % DOLLAR, ""])


def arguments_of(argv: List[str]) -> List[str]:
    """A command line as the history keeps it: every word redacted (a URL's password, a known secret)."""
    return [redact.redact(word) for word in argv]


# -- the online recorder ---------------------------------------------------------------

def pyz_sha256() -> Optional[str]:
    """The sha256 of dist/otelmig.pyz when this process runs from one (shiv unpacks
    the package under <SHIV_ROOT>/<pyz name>_<build id>/), else None. Hashing 3 MB
    costs ~10 ms, so the digest is kept beside the unpacked package, keyed by the
    archive's path, size and mtime, and read back by the next run."""
    archive = os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    marker = os.sep + os.path.basename(archive) + "_"
    package = os.path.abspath(__file__)
    if not archive.endswith(".pyz") or marker not in package or not os.path.isfile(archive):
        return None
    stat = os.stat(archive)
    key = "%s %d %d" % (archive, stat.st_size, stat.st_mtime_ns)
    cache = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(package))), "otelmig-pyz.sha256")
    try:
        with open(cache, encoding="utf-8") as handle:
            cached_key, _, digest = handle.read().rpartition(" ")
        if cached_key == key and len(digest) == 64:
            return digest
    except OSError:
        pass
    hasher = hashlib.sha256()
    with open(archive, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    try:
        with open(cache, "w", encoding="utf-8") as handle:
            handle.write("%s %s" % (key, hasher.hexdigest()))
    except OSError:  # a read-only unpack directory: hashed again next time
        pass
    return hasher.hexdigest()


def _os_user() -> Optional[str]:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in a container
        return None


# started_at is the server's clock at the run's start: now, less what the run waited for its lock so far.
_OPEN_SQL = """select clock_timestamp() - make_interval(secs => %s), pg_is_in_recovery() or current_setting('transaction_read_only') = 'on',
       case when not pg_is_in_recovery() then pg_current_wal_insert_lsn()::text end,
       to_regnamespace(%s) is not null, to_regclass(%s) is not null, to_regclass(%s) is not null"""


class History:
    """The history row of one run, on the migration lock's connection (see the module doc)."""

    def __init__(self, lock, schema: str, run_: "run_model.Run", say):
        self.lock, self.schema, self.run, self.say = lock, schema, run_, say
        self.conn = lock.conn
        self.written = False        # the row is in the table
        self.created_table = False  # this run created the table
        self.read_only = False
        self.started_at = self.start_lsn = None
        self.found_revision: Optional[str] = None
        self.warnings: List[str] = []  # said when the run ends, unless it was refused (its one line stays one)

    # -- opening -----------------------------------------------------------------

    def open(self) -> None:
        self.started_at, self.read_only, self.start_lsn, schema_exists, exists, versioned = self._one(
            _OPEN_SQL, (self.run.seconds, self.schema, table(self.schema),
                        "%s.%s" % (db.quote_ident(self.schema), VERSION_TABLE)))
        if versioned:
            self.found_revision = self._one("select max(version_num) from %s.%s"
                                            % (db.quote_ident(self.schema), VERSION_TABLE))[0]
        if self.read_only:
            return  # a standby or a read-only session: the run is refused next, and nothing can be written
        if not exists and schema_exists:
            try:
                self._create_table()
            except Exception:  # a role that may not create it: tried again once the run changes something
                return
            exists = True
        if exists:
            self._insert()

    def changing(self) -> None:
        """The run passed its checks: create the history if it is missing (an empty
        database's upgrade has just made the schema) and write the row."""
        if self.conn is None or self.written or self.read_only:
            return
        try:
            self._create_table()
            self._insert()
        except Exception as exc:
            self._warn("could not be created", exc)

    def _create_table(self) -> None:
        """Under the migration lock, which every creator holds: no two race in the catalog."""
        cursor = self.conn.cursor()
        self.conn.autocommit = False
        try:
            cursor.execute("select to_regclass(%s) is null", (table(self.schema),))
            missing = cursor.fetchone()[0]
            if missing:
                cursor.execute(create_table_sql(self.schema))
            self.conn.commit()
        except BaseException:
            with_rollback(self.conn)
            raise
        finally:
            self.conn.autocommit = True
        self.created_table = bool(missing)

    def _insert(self) -> None:
        run_ = self.run
        self._execute(mark_unfinished_sql(self.schema, db.quote_literal(run_.trace_id)))
        self._execute(
            "insert into %s (run_id, span_id, command, arguments, via, from_revision, outcome, started_at, "
            "db_current_user, db_session_user, client_addr, application_name, os_user, os_host, "
            "otelmig_version, pyz_sha256, start_lsn) values (%%s, %%s, %%s, %%s::jsonb, %%s, %%s, 'running', "
            "%%s::timestamptz, current_user, session_user, host(inet_client_addr()), "
            "current_setting('application_name'), %%s, %%s, %%s, %%s, %%s::pg_lsn)" % table(self.schema),
            (run_.trace_id, run_.span_id, run_.command, json.dumps(run_.arguments), run_.via, self.found_revision,
             self.started_at, _os_user(), socket.gethostname(), __version__, pyz_sha256(), self.start_lsn))
        self.written = True

    # -- closing -----------------------------------------------------------------

    def close(self) -> None:
        """Write how the run ended, or drop the table this run created if it ended
        without changing anything; then release the migration lock and its connection."""
        try:
            if self.conn is None:
                return
            if not self.written and self.run.outcome == run_model.OK and not self.read_only:
                self.changing()  # a maintain on a store without a history: it is made now
            if self.written:
                if self._left_as_found():
                    self._drop_created_table()
                else:
                    self._update()
        except Exception as exc:
            self._warn("could not be closed", exc)
        finally:
            if self.conn is not None:
                self.conn = None
                self.lock.release()
            self._say_warnings()

    def _say_warnings(self) -> None:
        """A refused run, or bad input, keeps its one line: its history warnings are not said."""
        if self.run.outcome != run_model.REFUSED and self.run.exit_code != 2:
            for line in self.warnings:
                self.say(line)
        self.warnings = []

    def _left_as_found(self) -> bool:
        """A run that created the history and was refused, or stopped before its first change."""
        run_ = self.run
        return self.created_table and (run_.outcome == run_model.REFUSED
                                       or (run_.outcome != run_model.OK and not run_.changing))

    def _drop_created_table(self) -> None:
        others = self._one("select count(*) from %s where (run_id, span_id) <> (%%s, %%s)" % table(self.schema),
                           (self.run.trace_id, self.run.span_id))[0]
        if not others:
            self._execute("DROP TABLE %s" % table(self.schema))

    def _update(self) -> None:
        run_ = self.run
        left = self._left_revision()
        self._execute(
            "update {t} set outcome = %s, exit_code = %s, sqlstate = %s, message = %s, ended_at = clock_timestamp(), "
            "lock_waits = %s, lock_wait_seconds = %s, retries = %s, to_revision = %s, "
            "commit_lsn = pg_current_wal_insert_lsn(), "
            "wal_bytes = pg_wal_lsn_diff(pg_current_wal_insert_lsn(), start_lsn)::bigint "
            "where run_id = %s and span_id = %s and outcome in ('running', 'unfinished')".format(t=table(self.schema)),
            (run_.outcome, run_.exit_code, run_.sqlstate, run_.message, run_.lock_waits,
             round(run_.lock_wait_seconds, 3), run_.retries, left, run_.trace_id, run_.span_id))

    def _left_revision(self) -> Optional[str]:
        version = "%s.%s" % (db.quote_ident(self.schema), VERSION_TABLE)
        if not self._one("select to_regclass(%s) is not null", (version,))[0]:
            return None
        return self._one("select max(version_num) from %s" % version)[0]

    # -- plumbing ----------------------------------------------------------------

    def _one(self, statement: str, params=()):
        cursor = self.conn.cursor()
        cursor.execute(statement, params)
        return cursor.fetchone()

    def _execute(self, statement: str, params=()) -> None:
        self.conn.cursor().execute(statement, params)

    def _warn(self, what: str, exc: BaseException) -> None:
        self.warnings.append("warning: the run history in %s.%s %s (%s); the run's outcome stands"
                             % (self.schema, RUNS_TABLE, what, describe_error(exc)))


def with_rollback(conn) -> None:
    try:
        conn.rollback()
    except Exception:  # a connection already gone has nothing to roll back
        pass


def describe_error(exc: BaseException) -> str:
    error = db.translate(exc) if isinstance(exc, Exception) else None
    text = error.message if error is not None else (db.server_message(exc) or type(exc).__name__)
    return redact.redact(" ".join(str(text).split()))


def open_history(lock, schema: str, say) -> None:
    """Open the current run's row on the migration lock's connection, which the run
    history then keeps (and the lock with it) until the row is closed (no run, or
    one already open: nothing). Called once the migration lock is held: by the
    migration session, and by the alembic path."""
    run_ = run_model.current()
    if run_ is None or run_.history is not None:
        return
    run_.reached_database = True
    history = History(lock, schema, run_, say)
    run_.history = history
    lock.keep_for_history = True  # released by History.close, after the row is closed
    try:
        history.open()
    except Exception as exc:
        if db.sqlstate(exc) == db.READ_ONLY_TRANSACTION:
            history.read_only = True  # the run is refused as read-only next
        else:
            history._warn("could not be written", exc)
    if run_.changing:  # the alembic path opens after its checks
        history.changing()


def close_history(run_) -> None:
    if run_.history is not None:
        run_.history.close()


# -- reading it: `otelmig log`, `verify` -------------------------------------------------

_READ_COLUMNS = [c.name for c in RUNS.columns]


def read_runs(conn, schema: str, limit: Optional[int]) -> Optional[List[dict]]:
    """The history newest first (None when there is none). A row still `running`
    whose process is gone reads `unfinished`, as the next run will mark it."""
    cursor = conn.cursor()
    cursor.execute("select to_regclass(%s) is not null", (table(schema),))
    if not cursor.fetchone()[0]:
        return None
    texts = {"started_at", "ended_at", "start_lsn", "commit_lsn"}
    select = ", ".join(("to_char(r.%s at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')" % c)
                       if c in ("started_at", "ended_at") else ("r.%s::text" % db.quote_ident(c)) if c in texts
                       else ("r.%s::text" % db.quote_ident(c)) if c == "arguments" else "r.%s" % db.quote_ident(c)
                       for c in _READ_COLUMNS)
    cursor.execute("select %s, %s, extract(epoch from r.ended_at - r.started_at)::float8 from %s r "
                   "order by r.started_at desc, r.run_id desc, r.span_id desc %s"
                   % (select, migration_lock_held(schema), table(schema), "limit %d" % limit if limit else ""))
    rows = []
    for values in cursor.fetchall():
        row = dict(zip(_READ_COLUMNS, values[:len(_READ_COLUMNS)]))
        row["arguments"] = json.loads(row["arguments"]) if row["arguments"] else []
        alive, seconds = values[len(_READ_COLUMNS):]
        if row["outcome"] == run_model.RUNNING and not alive:
            row["outcome"] = run_model.UNFINISHED
        row["seconds"] = round(seconds, 3) if seconds is not None else None
        rows.append(row)
    return rows


def last_run(conn, schema: str) -> Optional[dict]:
    rows = read_runs(conn, schema, 1)
    return rows[0] if rows else None


def describe_run(row: dict) -> str:
    """One line for people: when, what, how it ended, the revisions, who, the run id."""
    code = "" if row["exit_code"] is None else " (exit %d)" % row["exit_code"]
    took = "" if row["seconds"] is None else " in %.2fs" % row["seconds"]
    revisions = "%s -> %s" % (row["from_revision"] or "base", row["to_revision"] or "base") \
        if row["ended_at"] else "from %s" % (row["from_revision"] or "base")
    who = "%s@%s" % (row["os_user"] or "?", row["os_host"] or "?") if row["via"] != "psql" else "psql"
    return "%s  %s %s%s%s  %s  %s as %s via %s  run %s" % (
        row["started_at"], row["command"], row["outcome"], code, took, revisions, who,
        row["db_session_user"] or "?", row["via"], row["run_id"])
