"""Day partitions for rows that wait in the DEFAULT partition, made while
writers go on: no insert rejected, no writer held up longer than one short
transaction (issue 19, item 6). docs/retention-internals.md tells the why.

PostgreSQL gives no cheap way to carve rows out of a DEFAULT partition:
attaching (or creating) a partition scans DEFAULT under ACCESS EXCLUSIVE to
prove it holds none of the new range, unless a VALIDATED CHECK on DEFAULT
excludes that range; a CHECK added NOT VALID already rejects the range's new
rows while DEFAULT still receives them; DETACH ... CONCURRENTLY is refused
while a DEFAULT partition exists; a partition can have no inheritance child;
and rows moved into a table that is not (yet) a partition are out of sight of
otel.spans. So, as pg_repack and pgroll do, DEFAULT is replaced by a copy:

1. prepare (one transaction, catalog only, nothing locked that writers use):
   each object below recorded in otel.otelmig_objects (kinds
   partitions.WORK_KINDS) before it is made: the log table, the function
   that writes it, a standalone table per day to make (named as the
   partition it becomes, with a CHECK of its range) and the next DEFAULT
   (`spans_default_next`, with a CHECK that excludes every range a partition
   will hold); each built LIKE spans with its indexes, so that attaching
   it later builds nothing.
2. log (one short transaction, SHARE ROW EXCLUSIVE on DEFAULT): row triggers
   on DEFAULT write the key (id, start_time) of every row inserted, updated
   or deleted there into the log; a TRUNCATE writes a marker.
3. copy (one transaction per table, ACCESS SHARE on DEFAULT: writers go on):
   DEFAULT's rows of each day into its table, the others into the next DEFAULT.
4. replay (batches of REPLAY_BATCH keys, each committed): for each logged
   key, the copies' row is deleted and DEFAULT's current row (if any) copied
   again; replaying reads the current row, so it is idempotent and order
   does not matter. Until a batch finds fewer than SWAP_BELOW keys.
5. swap (one transaction, ACCESS EXCLUSIVE on spans, waited for in short
   attempts like every lock of maintain): the rest of the log replayed,
   DEFAULT detached, each day table attached, the next DEFAULT attached as
   DEFAULT (the CHECKs spare every scan), the CHECKs dropped (a CHECK left on
   DEFAULT would reject rows of a range retention drops later), the old
   DEFAULT dropped with its triggers, the next one renamed to its name and
   its indexes to the old ones' names, the log and the function dropped, the
   record updated (the days as partitions 'created').

Until the swap commits, DEFAULT is what otel.spans shows, whole; the copies
are extra tables nobody reads. Whatever stops a run before (an error, exit 9,
a signal, SIGKILL, a server crash) leaves at most those extra objects and the
trigger, which accepts every write (it writes its log only while the log
table exists, as the owner of the function: the worker needs no privilege on
it). repair_steps() removes them: the next upgrade, downgrade or maintain runs
it first (otelmig/repair.py), and a failing maintain on its way out; verify
reports them until then (leftovers()).

Like pg_repack's, the swap is not MVCC-safe for a REPEATABLE READ or
SERIALIZABLE transaction that began before it and reads the promoted rows
after it: it may miss them (the copies were written after its snapshot).
Statements under READ COMMITTED, the worker's, see every row once.
"""

import datetime
from typing import List, NamedTuple, Optional, Sequence, Tuple

from otelmig import db, partitions
from otelmig.ddl import RECORD_DDL, Lock, SchemaSQL, Statement
from otelmig.errors import ExitStatus, OtelmigError
from otelmig.schema import RECORD_TABLE, SPANS_PARTITIONING

REPLAY_BATCH = 5000       # logged keys per replay transaction
SWAP_BELOW = 200          # replay until a batch finds fewer keys than this, then swap (the rest under the lock)
MAX_REPLAY_ROUNDS = 1000  # a log that never shrinks (writers outpace the replay): give up, repair, report
# The work objects' names (fixed, whatever the DEFAULT partition is called, so
# that the repair finds them from the catalog alone).
NEXT_DEFAULT = SPANS_PARTITIONING.default + "_next"
LOG = SPANS_PARTITIONING.default + "_log"
FUNCTION = SPANS_PARTITIONING.default + "_log_change"
TRIGGER = "otelmig_log_change"
TRUNCATE_TRIGGER = "otelmig_log_truncate"


class Promotion(NamedTuple):
    """One replacement of DEFAULT: the days it makes and the CHECK of the next DEFAULT."""
    layout: partitions.Layout
    days: Tuple[partitions.NewPartition, ...]
    columns: Tuple[str, ...]            # spans' columns but the generated ones, quoted
    spans_owner: Optional[str]          # for the day tables, when not the role that runs maintain
    default_owner: Optional[str]        # for the next DEFAULT, likewise

    @property
    def schema(self) -> str:
        return self.layout.schema

    @property
    def default(self) -> str:
        return self.layout.default.name

    def q(self, name: str) -> str:
        return "%s.%s" % (db.quote_ident(self.schema), db.quote_ident(name))

    @property
    def spans(self) -> str:
        return self.q(self.layout.partitioning.table)

    @property
    def key(self) -> str:
        return db.quote_ident(self.layout.partitioning.key)

    def work_tables(self) -> List[str]:
        return [LOG, NEXT_DEFAULT] + [day.name for day in self.days]


class PromotionStopped(OtelmigError):
    """The promotion cannot go on (DEFAULT truncated meanwhile, the partitions changed,
    the log never shrinks): what it made is removed and the days are left for a rerun."""

    exit_status = ExitStatus.DRIFT


# -- what DEFAULT has that a copy would not ------------------------------------------

# Objects on the DEFAULT partition itself (not inherited from spans) that
# replacing it would lose: such a DEFAULT is never replaced (the days wait).
_BLOCKERS_SQL = """
select concat_ws('; ',
  (select 'views, rules or functions that read it: ' || string_agg(distinct coalesce(
            (select c.relname::text from pg_rewrite r join pg_class c on c.oid = r.ev_class where r.oid = d.objid),
            (select p.proname::text from pg_proc p where p.oid = d.objid)), ', ')
   from pg_depend d where d.refclassid = 'pg_class'::regclass and d.refobjid = t.oid
     and d.classid in ('pg_rewrite'::regclass, 'pg_proc'::regclass)),
  (select 'triggers of its own: ' || string_agg(tgname::text, ', ') from pg_trigger
   where tgrelid = t.oid and not tgisinternal and tgparentid = 0 and tgname::text not in (%s, %s)),
  (select 'policies: ' || string_agg(polname::text, ', ') from pg_policy where polrelid = t.oid),
  (select 'row level security' where t.relrowsecurity),
  (select 'publications: ' || string_agg(p.pubname::text, ', ') from pg_publication_rel r
   join pg_publication p on p.oid = r.prpubid where r.prrelid = t.oid),
  (select 'indexes of its own: ' || string_agg(c.relname::text, ', ') from pg_index x
   join pg_class c on c.oid = x.indexrelid where x.indrelid = t.oid
     and not exists (select 1 from pg_inherits i where i.inhrelid = x.indexrelid)),
  (select 'check constraints of its own: ' || string_agg(conname::text, ', ') from pg_constraint
   where conrelid = t.oid and contype = 'c' and coninhcount = 0),
  (select 'foreign keys that reference it: ' || string_agg(conname::text, ', ') from pg_constraint
   where confrelid = t.oid),
  (select 'extended statistics: ' || string_agg(stxname::text, ', ') from pg_statistic_ext where stxrelid = t.oid),
  (select 'replica identity' where t.relreplident not in ('d', 'n') or (t.relreplident = 'n'))
)
from pg_class t where t.oid = to_regclass(%s)
"""

# Names the promotion will create, held by something otelmig did not record.
_TAKEN_SQL = """
select string_agg(quote_ident(n.nspname) || '.' || quote_ident(c.relname), ', ' order by c.relname)
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = %s and c.relname::text = any(%s::text[])
"""


def blockers(conn, layout: partitions.Layout, work: Sequence[str], names: Sequence[str]) -> str:
    """Why DEFAULT cannot be replaced now ('' when it can)."""
    cursor = conn.cursor()
    default = "%s.%s" % (db.quote_ident(layout.schema), db.quote_ident(layout.default.name))
    cursor.execute(_BLOCKERS_SQL, (TRIGGER, TRUNCATE_TRIGGER, default))
    found = [cursor.fetchone()[0] or ""]
    cursor.execute(_TAKEN_SQL, (layout.schema, [n for n in names if n not in work]))
    taken = cursor.fetchone()[0]
    if taken:
        found.append("names it would use are taken by tables otelmig did not make: %s" % taken)
    cursor.execute("select exists (select 1 from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
                   "where n.nspname = %s and p.proname = %s)", (layout.schema, FUNCTION))
    if cursor.fetchone()[0]:
        found.append("a function named %s.%s exists (otelmig names its trigger function so)" % (layout.schema,
                                                                                               FUNCTION))
    return "; ".join(f for f in found if f)


# -- the steps ---------------------------------------------------------------------------

def promote(runner, promotion: Promotion) -> int:
    """Steps 1 to 5; returns the rows of DEFAULT now in the new day partitions."""
    runner.run(lambda: _prepare(runner, promotion), "preparing the copy of the DEFAULT partition")
    runner.run(lambda: _start_log(runner, promotion), "starting the log of changes to the DEFAULT partition")
    copied = 0
    for table, where in _targets(promotion):
        copied += runner.run(lambda: _copy(runner, promotion, table, where), "copying rows into %s" % table)
        runner.after_batch()
    runner.say("copied %d row(s) of the DEFAULT partition; replaying what writers changed meanwhile" % copied,
               level=1)
    for _ in range(MAX_REPLAY_ROUNDS):
        found = runner.run(lambda: _replay(runner, promotion, REPLAY_BATCH), "replaying logged changes")
        runner.after_batch()
        if found < SWAP_BELOW:
            break
    else:
        raise PromotionStopped("the DEFAULT partition changes faster than maintain copies the changes (%d rounds of "
                               "%d); nothing was changed, rerun when writers are quieter"
                               % (MAX_REPLAY_ROUNDS, REPLAY_BATCH))
    runner.run(lambda: _swap(runner, promotion), "swapping in the new partitions (ACCESS EXCLUSIVE on %s)"
               % promotion.spans)
    return runner.read(lambda: promoted_rows(runner.conn, promotion))


def _targets(p: Promotion) -> List[Tuple[str, str]]:
    """(table, SQL condition on the key) of each copy: a day's range, or none of them."""
    days = [(p.q(day.name), _range(p, day)) for day in p.days]
    rest = " and ".join("not (%s)" % where for _, where in days) or "true"
    return days + [(p.q(NEXT_DEFAULT), rest)]


def _range(p: Promotion, day: partitions.NewPartition) -> str:
    return "%s >= %s and %s < %s" % (p.key, partitions.utc_literal(day.lower), p.key,
                                     partitions.utc_literal(day.upper))


def _prepare(runner, p: Promotion) -> None:
    n = SchemaSQL(p.schema)
    runner.execute(RECORD_DDL.format(record=n.record_table()))
    work = [(partitions.WORK_TABLE_KIND, name, "created") for name in p.work_tables()]
    work += [("maintain_function", FUNCTION, "created"),
             ("maintain_trigger", TRIGGER, "created"), ("maintain_trigger", TRUNCATE_TRIGGER, "created")]
    runner.execute(n.record(partitions.PARTITIONING_REVISION, work))  # recorded before any is made
    log, function = p.q(LOG), p.q(FUNCTION)
    runner.execute("CREATE TABLE %s (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, id bigint, "
                   "%s timestamptz)" % (log, p.key))
    runner.execute(_function_sql(p, function, log))
    for day in p.days:
        _copy_table(runner, p, day.name, _range(p, day), p.spans_owner)
    _copy_table(runner, p, NEXT_DEFAULT, _excluded(p), p.default_owner, like_default=True)


def _function_sql(p: Promotion, function: str, log: str) -> str:
    """The trigger function: as its owner (the worker needs no privilege on the log),
    and only while the log exists (a leftover trigger never rejects a write)."""
    return """CREATE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $log$
BEGIN
  IF to_regclass({log_text}) IS NULL THEN
    RETURN NULL;
  END IF;
  IF TG_OP = 'TRUNCATE' THEN
    INSERT INTO {log} (id, {k}) VALUES (NULL, NULL);
    RETURN NULL;
  END IF;
  IF TG_OP <> 'INSERT' THEN
    INSERT INTO {log} (id, {k}) VALUES (OLD.id, OLD.{k});
  END IF;
  IF TG_OP <> 'DELETE' THEN
    INSERT INTO {log} (id, {k}) VALUES (NEW.id, NEW.{k});
  END IF;
  RETURN NULL;
END
$log$""".format(f=function, log=log, log_text=db.quote_literal(log), k=p.key)


def _copy_table(runner, p: Promotion, name: str, check: str, owner: Optional[str], like_default=False) -> None:
    """A standalone table like spans, its indexes made now (the attach then builds
    none), with a CHECK of what it may hold (the attach then scans nothing)."""
    table = p.q(name)
    runner.execute("CREATE TABLE %s (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES "
                   "INCLUDING GENERATED INCLUDING STORAGE)" % (table, p.spans))
    runner.execute("ALTER TABLE %s ADD CONSTRAINT %s CHECK (%s)" % (table, db.quote_ident(_check_name(name)), check))
    source = p.q(p.default) if like_default else p.spans
    _carry_table_settings(runner, table, source, owner, with_options=like_default)


def grant_like(runner, table: str, source: str) -> None:
    """The table privileges of `source` (but its owner's) on `table`: a new
    partition gets spans's, as revision 2 gives its own."""
    cursor = runner.conn.cursor()
    cursor.execute("select a.privilege_type, a.is_grantable, case when a.grantee = 0 then 'PUBLIC' "
                   "else quote_ident(pg_get_userbyid(a.grantee)) end from pg_class c, aclexplode(c.relacl) a "
                   "where c.oid = to_regclass(%s) and a.grantee <> c.relowner", (source,))
    for privilege, grantable, grantee in cursor.fetchall():
        runner.execute("GRANT %s ON %s TO %s%s" % (privilege, table, grantee, " WITH GRANT OPTION" if grantable
                                                   else ""))


def _check_name(table: str) -> str:
    return (table + "_range")[:63]


def _carry_table_settings(runner, table: str, source: str, owner: Optional[str], with_options: bool) -> None:
    """Owner, table privileges (and for the next DEFAULT, storage parameters and comment) of `source`."""
    if owner is not None:
        runner.execute("ALTER TABLE %s OWNER TO %s" % (table, db.quote_ident(owner)))
    grant_like(runner, table, source)
    if not with_options:
        return
    cursor = runner.conn.cursor()
    cursor.execute("select array_to_string(reloptions, ', '), obj_description(oid, 'pg_class') from pg_class "
                   "where oid = to_regclass(%s)", (source,))
    options, comment = cursor.fetchone()
    if options:
        runner.execute("ALTER TABLE %s SET (%s)" % (table, options))
    if comment is not None:
        runner.execute("COMMENT ON TABLE %s IS %s" % (table, db.quote_literal(comment)))


def _excluded(p: Promotion) -> str:
    """SQL: the key lies in no range a partition will hold once the days are attached
    (the ranges merged; MINVALUE and MAXVALUE open-ended)."""
    ranges = [(part.lower_moment, part.upper_moment, part.lower is None, part.upper is None)
              for part in p.layout.ranged]
    ranges += [(_moment(day.lower), _moment(day.upper), False, False) for day in p.days]
    merged = _merge(ranges)
    key, pieces = p.key, []
    if not merged:
        return "true"
    first_lower, _, first_open, _ = merged[0]
    if not first_open:
        pieces.append("%s < %s" % (key, partitions.timestamptz_sql(first_lower)))
    for (_, upper, _, _), (lower, _, _, _) in zip(merged, merged[1:]):
        pieces.append("(%s >= %s and %s < %s)" % (key, partitions.timestamptz_sql(upper), key,
                                                  partitions.timestamptz_sql(lower)))
    _, last_upper, _, last_open = merged[-1]
    if not last_open:
        pieces.append("%s >= %s" % (key, partitions.timestamptz_sql(last_upper)))
    return " or ".join(pieces) or "false"


def _moment(at: datetime.datetime) -> partitions.Moment:
    exact = "%04d-%02d-%02dT%02d:%02d:%02d.000000" % (at.year, at.month, at.day, at.hour, at.minute, at.second)
    return partitions.Moment(at, partitions.shown(exact), (at - datetime.datetime(1970, 1, 1)).total_seconds(),
                             exact)


def _merge(ranges):
    """[(lower, upper, lower open, upper open)] sorted and merged where they touch or overlap."""
    def start(r):
        return float("-inf") if r[2] else r[0].epoch

    def end(r):
        return float("inf") if r[3] else r[1].epoch
    merged = []
    for r in sorted(ranges, key=start):
        if merged and start(r) <= end(merged[-1]):
            last = merged[-1]
            if end(r) > end(last):
                merged[-1] = (last[0], r[1], last[2], r[3])
        else:
            merged.append(r)
    return merged


def _start_log(runner, p: Promotion) -> None:
    default, function = p.q(p.default), p.q(FUNCTION)
    runner.execute("CREATE TRIGGER %s AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION %s()"
                   % (TRIGGER, default, function))
    runner.execute("CREATE TRIGGER %s AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION %s()"
                   % (TRUNCATE_TRIGGER, default, function))


def _copy(runner, p: Promotion, table: str, where: str) -> int:
    names = ", ".join(p.columns)
    return max(runner.execute("INSERT INTO %s (%s) SELECT %s FROM ONLY %s WHERE %s"
                              % (table, names, names, p.q(p.default), where)), 0)


def _replay(runner, p: Promotion, limit: Optional[int]) -> int:
    """One batch of logged keys (all of them when limit is None) made current in the copies; returns how many."""
    log = p.q(LOG)
    cursor = runner.conn.cursor()
    cursor.execute("select coalesce(array_agg(seq), '{}'), count(*) filter (where id is null) from (select seq, id "
                   "from %s order by seq%s) b" % (log, "" if limit is None else " limit %d" % limit))
    seqs, truncated = cursor.fetchone()
    if truncated:
        raise PromotionStopped("%s was truncated while maintain copied it; nothing was changed: rerun"
                               % p.q(p.default))
    if not seqs:
        return 0
    keys = "(select id, %s from %s where seq = any(%%s::bigint[]))" % (p.key, log)
    names = ", ".join(p.columns)
    for table, where in _targets(p):
        runner.execute("DELETE FROM %s WHERE (id, %s) IN %s" % (table, p.key, keys), (seqs,))
        runner.execute("INSERT INTO %s (%s) SELECT %s FROM ONLY %s WHERE (id, %s) IN %s AND (%s)"
                       % (table, names, names, p.q(p.default), p.key, keys, where), (seqs,))
    runner.execute("DELETE FROM %s WHERE seq = any(%%s::bigint[])" % log, (seqs,))
    return len(seqs)


def _swap(runner, p: Promotion) -> None:
    spans, default, following = p.spans, p.q(p.default), p.q(NEXT_DEFAULT)
    runner.execute("LOCK TABLE %s IN ACCESS EXCLUSIVE MODE" % spans)
    now = partitions.read_layout(runner.conn, p.schema, p.layout.partitioning)
    if _shape(now) != _shape(p.layout):
        raise PromotionStopped("the partitions of %s changed while maintain copied the DEFAULT partition; nothing "
                               "was changed: rerun" % spans)
    _replay(runner, p, None)
    index_names = _index_names_by_parent(runner.conn, default)
    runner.execute("ALTER TABLE %s DETACH PARTITION %s" % (spans, default))
    for day in p.days:
        runner.execute("ALTER TABLE %s ATTACH PARTITION %s FOR VALUES FROM (%s) TO (%s)"
                       % (spans, p.q(day.name), partitions.utc_literal(day.lower), partitions.utc_literal(day.upper)))
    runner.execute("ALTER TABLE %s ATTACH PARTITION %s DEFAULT" % (spans, following))
    for name in [day.name for day in p.days] + [NEXT_DEFAULT]:
        runner.execute("ALTER TABLE %s DROP CONSTRAINT %s" % (p.q(name), db.quote_ident(_check_name(name))))
    runner.execute("DROP TABLE %s" % default)  # its triggers with it
    runner.execute("DROP TABLE %s" % p.q(LOG))
    runner.execute("DROP FUNCTION %s()" % p.q(FUNCTION))
    runner.execute("ALTER TABLE %s RENAME TO %s" % (following, db.quote_ident(p.default)))
    _rename_indexes(runner, p, index_names)
    n = SchemaSQL(p.schema)
    runner.execute(n.record(partitions.PARTITIONING_REVISION, [(partitions.PARTITION_KIND, name, "created") for name
                                                               in [day.name for day in p.days] + [p.default]]))
    runner.execute("DELETE FROM %s WHERE object_kind = any(%%s::text[]) AND object_name = any(%%s::text[])"
                   % n.record_table(), (list(partitions.WORK_KINDS), p.work_tables() + [
                       FUNCTION, TRIGGER, TRUNCATE_TRIGGER]))


def promoted_rows(conn, p: Promotion) -> int:
    """The rows in the new day partitions (counted after the swap, outside its lock)."""
    cursor = conn.cursor()
    counted = 0
    for day in p.days:
        cursor.execute("select count(*) from %s" % p.q(day.name))
        counted += int(cursor.fetchone()[0])
    return counted


def _shape(layout: partitions.Layout):
    return sorted((part.name, part.bound) for part in layout.partitions)


def _index_names_by_parent(conn, table: str) -> dict:
    """{parent index oid: name} of the table's indexes that are partitions of spans' indexes."""
    cursor = conn.cursor()
    cursor.execute("select i.inhparent::bigint, c.relname::text from pg_index x join pg_class c on c.oid = "
                   "x.indexrelid join pg_inherits i on i.inhrelid = x.indexrelid where x.indrelid = to_regclass(%s)",
                   (table,))
    return dict(cursor.fetchall())


def _rename_indexes(runner, p: Promotion, names: dict) -> None:
    """The new DEFAULT's indexes take the names the old one's had."""
    current = _index_names_by_parent(runner.conn, p.q(p.default))
    for parent, name in current.items():
        wanted = names.get(parent)
        if wanted and wanted != name:
            runner.execute("ALTER INDEX %s RENAME TO %s" % (p.q(name), db.quote_ident(wanted)))


# -- leftovers -----------------------------------------------------------------------------

# What a promotion that stopped left, from the record: (kind, name, what exists now).
_LEFTOVERS_SQL = """
select r.object_kind, r.object_name,
       case r.object_kind
         when 'maintain_table' then (select case when c.relispartition then 'partition' else 'table' end
                                     from pg_class c join pg_namespace n on n.oid = c.relnamespace
                                     where n.nspname = {schema} and c.relname::text = r.object_name)
         when 'maintain_function' then (select 'function' from pg_proc p join pg_namespace n
                                        on n.oid = p.pronamespace where n.nspname = {schema}
                                        and p.proname::text = r.object_name limit 1)
         else (select 'trigger on ' || c.relname from pg_trigger t join pg_class c on c.oid = t.tgrelid
               join pg_namespace n on n.oid = c.relnamespace where n.nspname = {schema}
               and t.tgname::text = r.object_name limit 1) end
from {record} r where r.object_kind = any(%s::text[]) order by 1, 2
"""


def leftovers(conn, schema: str) -> List[Tuple[str, str]]:
    """[(object, what it is)] a stopped promotion left (verify reports them)."""
    if not partitions.record_exists(conn, schema):
        return []
    cursor = conn.cursor()
    record = SchemaSQL(schema).record_table()
    cursor.execute(_LEFTOVERS_SQL.format(record=record.replace("%", "%%"), schema=db.quote_literal(schema)),
                   (list(partitions.WORK_KINDS),))
    return [("%s.%s" % (schema, name), state or "recorded, not present") for kind, name, state in cursor.fetchall()]


def repair_steps(n: SchemaSQL) -> list:
    """What a stopped promotion left, removed (idempotent; nothing on any other
    state): the triggers on DEFAULT (with the function they run), the log, the
    copies (never a table that is a partition by now), and their record. Its
    condition reads the catalog only (the record table may not exist): the
    function and the log are made first, in the transaction that records
    every work object, and go last."""
    record, schema = n.record_table(), db.quote_literal(n.schema)
    kinds = "array[%s]" % ", ".join(db.quote_literal(k) for k in partitions.WORK_KINDS)
    lines = [
        "DO $maintain_repair$",
        "DECLARE leftover record;",
        "BEGIN",
        "  DROP FUNCTION IF EXISTS %s() CASCADE;  -- and the triggers that run it" % n.table(FUNCTION),
        "  IF %s IS NULL THEN" % n.regclass(RECORD_TABLE),
        "    DROP TABLE IF EXISTS %s;" % n.table(LOG),
        "    RETURN;",
        "  END IF;",
        "  FOR leftover IN SELECT c.oid::regclass AS tab FROM %s r JOIN pg_class c ON c.relname::text = "
        "r.object_name AND c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %s) "
        "WHERE r.object_kind = %s AND c.relkind = 'r' AND NOT c.relispartition LOOP"
        % (record, schema, db.quote_literal(partitions.WORK_TABLE_KIND)),
        "    EXECUTE format('DROP TABLE %s', leftover.tab);",
        "  END LOOP;",
        "  DELETE FROM %s WHERE object_kind = ANY (%s);" % (record, kinds),
        "END",
        "$maintain_repair$"]
    when = ("exists (select 1 from pg_proc p join pg_namespace s on s.oid = p.pronamespace where s.nspname = %s "
            "and p.proname = %s) or %s" % (schema, db.quote_literal(FUNCTION), n.table_exists(LOG)))
    return [Statement("\n".join(lines), when=when, table=SPANS_PARTITIONING.default, lock=Lock.ACCESS_EXCLUSIVE,
                      label="remove what a stopped `maintain` left while it made day partitions out of the DEFAULT "
                            "partition: its triggers, log table and copies")]


def repair_sql(n: SchemaSQL) -> str:
    """The repair's statement, to run whatever its condition says (maintain, when
    leftovers() finds a recorded copy the condition cannot see)."""
    return repair_steps(n)[0].sql
