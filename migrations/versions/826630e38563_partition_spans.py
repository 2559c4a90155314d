"""Time-partitioned spans: convert otel.spans to daily range partitions in place.

No row of the history is copied. The table that holds the spans becomes the
partition for everything before a cutoff (otel.spans_history, FROM (MINVALUE)
TO (cutoff)); a new partitioned otel.spans gets one partition per UTC day from
the cutoff up to today + 7 days, and a DEFAULT partition for any other row, so
no insert is ever rejected after the switch. `otelmig maintain` keeps days
ahead and drops whole days that left the retention window.

The cutoff is the server's clock only: the UTC midnight MARGIN_DAYS after the
current UTC day, whatever the rows hold. Rows at or after it (outliers:
future-dated, 'infinity', years past 9999; at most MAX_OUTLIERS, or a refusal
names some) are moved, under the short ACCESS EXCLUSIVE lock the cutoff is
chosen under, into otel.spans_outliers, an inheritance child of spans (so they
stay visible through otel.spans), and from there into the partitioned spans in
the switch (DEFAULT or their day partition). '-infinity' and BC rows are before
the cutoff and stay in the history.

Every scan of the big table runs before the switch, under locks writers do
not wait for: the unique index (id, start_time) the new primary key needs
(CREATE INDEX CONCURRENTLY) and the validation of CHECK (start_time < cutoff),
which lets ATTACH PARTITION skip its own scan. The switch (outliers moved,
renames, primary key, attach, sequence ownership) is one short transaction
under the lock budget, with the version row.

Between the cutoff and the switch, a plain spans holds the cutoff CHECK, which
would reject every insert once the cutoff passes: repair_steps() undoes that
state (drops the CHECK, puts held rows back), and otelmig runs it before any
other work and on a failing run's way out; upgrade_steps() starts with it.

Time never depends on the session: each DO block sets TimeZone UTC, DateStyle
ISO and IntervalStyle postgres for its own transaction first, days are counted
on `timestamp` values in UTC, and bounds are written as 'YYYY-MM-DD HH:MI:SS+00'.

Every object the upgrade creates is recorded in otel.otelmig_objects (created)
before it is created: spans_history_pkey, the partitions (spans_history,
spans_default, each spans_pYYYYMMDD), the holding table while it exists.

A spans table that is partitioned already (the operator's layout) is left as
it is, and recorded as found; the downgrade leaves it too.

The downgrade detaches the history partition and makes it otel.spans again
(its indexes get their contract names back, the primary key is (id) again),
then moves the rows of the later partitions into it in batches of 10000, each
committed, and drops the empty partitioned table. Until the move ends, rows of
the later partitions are not visible in otel.spans (they are in
otel.spans_partitioned); a crash or interruption leaves them there, and a rerun
moves the rest.

Revision ID: 826630e38563
Revises: 163d8f446eb9
Create Date: 2026-11-26
"""

from otelmig import migration_api, replicas
from otelmig.db import quote_ident as quote, quote_literal
from otelmig.ddl import STOPPED_RUN, Concurrent, Effect, Lock, SchemaSQL, Refusal, Statement, index_steps
from otelmig.schema import RECORD_TABLE, SPANS_PARTITIONING as LAYOUT

revision = "826630e38563"
down_revision = "163d8f446eb9"
branch_labels = None
depends_on = None

AHEAD_DAYS = 7  # day partitions created up to today + this; frozen here (maintain reads schema.SPANS_PARTITIONING)
MARGIN_DAYS = 2                      # cutoff: the UTC midnight this many days after the current UTC day
MAX_OUTLIERS = 10000                 # rows at or after the cutoff moved under ACCESS EXCLUSIVE; more: refused
BATCH_ROWS = 2000                    # rows moved per transaction by the downgrade: an UPDATE or DELETE waits for one batch (bench/writers.py)
NEW_PARENT = "spans_partitioned"     # the partitioned table before the switch (and after the downgrade's)
CUTOFF_CHECK = "spans_history_range"  # CHECK (start_time < cutoff) on the table to attach
HISTORY_PKEY = "spans_history_pkey"  # unique (id, start_time) built before the switch, its PK after
HISTORY_ID_KEY = "spans_history_id_key"  # unique (id) the downgrade builds for the restored primary key
HOLDING = "spans_outliers"           # inheritance child of the plain spans holding the outliers until the switch
CUTOFF_FUNCTION = "otelmig_spans_cutoff"  # in the cutoff CHECK: the cutoff in the converting session, NULL elsewhere
HOLD_FUNCTION = "otelmig_spans_hold"  # trigger (and its function) moving rows at or after the cutoff into HOLDING
CUTOFF_KEY_SETTING = "otelmig.spans_cutoff_key"  # the converting session's key (also its advisory lock)
TRACES_START_TIME = ("ix_traces_start_time", "traces", "start_time")

# First statement of every DO block that reads or writes a time: for this
# transaction only, so that no TimeZone, DateStyle or IntervalStyle of the
# server, database, role or psql session changes what it computes or parses.
UTC_SESSION = ("  PERFORM set_config('TimeZone', 'UTC', true), set_config('DateStyle', 'ISO, YMD', true), "
               "set_config('IntervalStyle', 'postgres', true);")

# The cutoff as a timestamptz, from the server's clock only. AT TIME ZONE
# 'UTC' both ways and make_interval: right in any session, outside DO blocks too.
CUTOFF = ("((date_trunc('day', now() at time zone 'UTC') + make_interval(days => %d)) at time zone 'UTC')"
          % MARGIN_DAYS)


def _utc_text(timestamp_utc: str) -> str:
    """SQL: a `timestamp` holding a UTC time as the literal 'YYYY-MM-DD HH24:MI:SS+00', read alike everywhere."""
    return "(to_char(%s, 'YYYY-MM-DD HH24:MI:SS') || '+00')" % timestamp_utc


def _shown(start_time: str) -> str:
    """SQL: a start_time for a message, in UTC (to_char has no text for infinity)."""
    return ("(CASE WHEN isfinite(%s) THEN to_char(%s at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC' "
            "ELSE %s::text END)" % (start_time, start_time, start_time))


class Layout:
    """The SQL names and catalog conditions of this conversion for one schema."""

    def __init__(self, n: SchemaSQL):
        self.n = n
        self.spans = n.table("spans")
        self.history = n.table(LAYOUT.history)
        self.parent = n.table(NEW_PARENT)
        self.holding = n.table(HOLDING)
        self.plain_spans = "exists (select 1 from pg_class where oid = %s and relkind = 'r')" % n.regclass("spans")
        self.holding_child = ("exists (select 1 from pg_inherits where inhrelid = %s and inhparent = %s)"
                              % (n.regclass(HOLDING), n.regclass("spans")))
        # Converted by this revision: so recorded; or, with the record lost, our history partition is there.
        history_attached = ("exists (select 1 from pg_inherits where inhrelid = %s and inhparent = %s)"
                            % (n.regclass(LAYOUT.history), n.regclass("spans")))
        self.converted = "(%s and (%s or (not %s and %s)))" % (
            n.is_partitioned("spans"), n.recorded("partitioning", "spans", "created"),
            n.recorded("partitioning", "spans", "found"), history_attached)

        self.cutoff_function = "%s()" % n.table(CUTOFF_FUNCTION)
        self.hold_function = "%s()" % n.table(HOLD_FUNCTION)
        self.cutoff_key = "obj_description(to_regprocedure(%s), 'pg_proc')" % quote_literal(self.cutoff_function)
        # What a cutoff step left, this session's (its key is the session's) or a stopped run's.
        self.conversion_started = "(%s)" % " or ".join([
            self.check_on("spans"), self.holding_child,
            "exists (select 1 from pg_trigger where tgrelid = %s and tgname = %s and tgfoid = %s)"
            % (n.regclass("spans"), quote_literal(HOLD_FUNCTION), self.our_function(HOLD_FUNCTION)),
            "%s is not null" % self.our_function(CUTOFF_FUNCTION),
            "%s is not null" % self.our_function(HOLD_FUNCTION)])
        # The partitioned table this revision makes beside a plain spans (or an older downgrade left):
        # an operator's relation of that name is not it.
        self.our_parent = ("exists (select 1 from pg_class p where p.oid = %s and p.relkind = 'p' and exists "
                           "(select 1 from pg_constraint where conrelid = p.oid and conname = %s))"
                           % (n.regclass(NEW_PARENT), quote_literal(NEW_PARENT + "_pkey")))
        self.ours = ("(%s is not distinct from current_setting(%s, true))"
                     % (self.cutoff_key, quote_literal(CUTOFF_KEY_SETTING)))

    def our_function(self, name: str) -> str:
        """SQL: the oid of our function `name`() in the schema (its comment is a
        cutoff step's key), or null: a function of the operator's of that name is never ours."""
        function = quote_literal("%s()" % self.n.table(name))
        return ("(select p.oid from pg_proc p where p.oid = to_regprocedure(%s) "
                "and obj_description(p.oid, 'pg_proc') ~ '^-?[0-9]+$')" % function)

    def check_on(self, table: str, validated=None) -> str:
        state = "" if validated is None else " and %sconvalidated" % ("" if validated else "not ")
        return ("exists (select 1 from pg_constraint where conrelid = %s and conname = %s%s)"
                % (self.n.regclass(table), quote_literal(CUTOFF_CHECK), state))

    def cutoff(self) -> str:
        """SQL: the cutoff, in the session that converts (its key set): PL/pgSQL
        parses it when it runs, after the cutoff step made the function."""
        return self.cutoff_function

    def services(self) -> str:
        """SQL: the distinct non-null service_name of plain spans without reading
        the table: a loose scan over ix_spans_service_start_time (one probe per
        service), quick under ACCESS EXCLUSIVE."""
        return ("with recursive services(name) as ("
                "(select service_name from only %(spans)s order by service_name limit 1) union all "
                "select (select s.service_name from only %(spans)s s where s.service_name > services.name "
                "order by s.service_name limit 1) from services where services.name is not null) "
                "select name from services where name is not null" % {"spans": self.spans})

    def outliers(self, cutoff: str, per_service: int) -> str:
        """SQL: (service_name, id, start_time) of up to per_service rows of each
        service at or after the cutoff, found through ix_spans_service_start_time."""
        return ("select s.name as service_name, o.id, o.start_time from (%(services)s) s cross join lateral "
                "(select t.id, t.start_time from only %(spans)s t where t.service_name = s.name "
                "and t.start_time >= %(cutoff)s order by t.start_time limit %(n)d) o "
                "union all (select null, t.id, t.start_time from only %(spans)s t where t.service_name is null "
                "and t.start_time >= %(cutoff)s order by t.start_time limit %(n)d)"
                % {"services": self.services(), "spans": self.spans, "cutoff": cutoff, "n": per_service})


def repair_steps(n: SchemaSQL) -> list:
    """What a stopped run of this revision left, undone (otelmig/repair.py runs
    this first in every run and on a failing run's way out)."""
    return _undo_stopped_conversion(n) + [_drop_stopped_downgrade_index(n)]


def _undo_stopped_conversion(n: SchemaSQL) -> list:
    """What a stopped conversion left, undone, so the next run starts again
    from a fresh cutoff: the hold trigger, the cutoff CHECK and their
    functions, and the rows held in otel.spans_outliers (put back). None of it
    rejects a write, alive or stopped (_cutoff_step says why), so this is
    housekeeping, not an emergency; the session that converts (its key set)
    keeps its own. One short transaction under ACCESS EXCLUSIVE (the held rows
    are the outliers, at most MAX_OUTLIERS, and what the trigger held while
    the run was alive). Idempotent; nothing to do on any other state."""
    layout = Layout(n)
    spans, holding = layout.spans, layout.holding
    lines = [
        "DO $repair$",
        "DECLARE columns text;",
        "BEGIN",
        "  LOCK TABLE %s IN ACCESS EXCLUSIVE MODE;" % spans,
        # Only what a cutoff step made (its functions carry its key): an operator's namesake stays.
        "  IF EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = %s AND tgname = %s AND tgfoid = %s) THEN"
        % (n.regclass("spans"), quote_literal(HOLD_FUNCTION), layout.our_function(HOLD_FUNCTION)),
        "    DROP TRIGGER %s ON %s;" % (quote(HOLD_FUNCTION), spans),
        "  END IF;",
        "  ALTER TABLE %s DROP CONSTRAINT IF EXISTS %s;" % (spans, quote(CUTOFF_CHECK)),
        "  IF %s IS NOT NULL THEN" % layout.our_function(HOLD_FUNCTION),
        "    DROP FUNCTION %s;" % layout.hold_function,
        "  END IF;",
        "  IF %s IS NOT NULL THEN" % layout.our_function(CUTOFF_FUNCTION),
        "    DROP FUNCTION %s;" % layout.cutoff_function,
        "  END IF;",
        "  IF %s THEN" % layout.holding_child,
        "    SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO columns FROM pg_attribute",
        "      WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped;" % n.regclass(HOLDING),
        "    EXECUTE format('INSERT INTO %s (%%1$s) SELECT %%1$s FROM ONLY %s', columns);"
        % (spans.replace("'", "''"), holding.replace("'", "''")),
        "    DROP TABLE %s;" % holding,
        "    IF %s IS NOT NULL THEN" % n.regclass(RECORD_TABLE),
        "      EXECUTE %s;" % quote_literal(_forget_holding(n)),
        "    END IF;",
        "  END IF;",
        "END",
        "$repair$"]
    return [Statement("\n".join(lines), when="%s and %s and not %s" % (
        layout.plain_spans, layout.conversion_started, layout.ours),
        table="spans", lock=Lock.ACCESS_EXCLUSIVE, effect=Effect.WRITES_ROWS,
        condition=STOPPED_RUN + "its hold trigger, cutoff CHECK or held rows on %s.spans" % n.schema,
        label="undo a stopped conversion: drop its hold trigger, cutoff CHECK and functions from the plain spans, "
              "put the rows held in %s back" % HOLDING)]


def _drop_stopped_downgrade_index(n: SchemaSQL) -> Concurrent:
    """A downgrade stopped before its switch-back leaves the unique (id) index it
    builds on the history partition, which would reject a late span whose id
    the history holds. Not among the downgrade's own first steps: a retry of
    its switch-back must not drop the index it has just built."""
    return Concurrent("DROP INDEX {concurrently}IF EXISTS %s" % n.table(HISTORY_ID_KEY),
                   when="exists (select 1 from pg_index x join pg_inherits i on i.inhrelid = x.indrelid "
                        "where x.indexrelid = %s and x.indrelid = %s and i.inhparent = %s)"
                   % (n.regclass(HISTORY_ID_KEY), n.regclass(LAYOUT.history), n.regclass("spans")),
                   table=LAYOUT.history, lock=Lock.ACCESS_EXCLUSIVE,
                   condition=STOPPED_RUN + "%s on %s.%s" % (HISTORY_ID_KEY, n.schema, LAYOUT.history),
                   label="drop the unique (id) index a stopped downgrade built on %s" % LAYOUT.history)


def _forget_holding(n: SchemaSQL) -> str:
    return "DELETE FROM %s WHERE object_kind = 'table' AND object_name = %s" % (n.record_table(), quote_literal(HOLDING))


def preflight(catalog, schema: str):
    """Before the first change, online: a store that drifted from the baseline's
    contract (a contract table or column gone, a column made nullable or
    retyped, its default dropped, a contract index dropped or renamed) is
    refused, each difference named with the statement that restores it. The
    conversion would carry the drift into the partitioned spans, and the head's
    contract check would refuse it only after the scans and the switch. What this
    revision's own interrupted runs leave changes none of the columns, tables or
    contract indexes it reads. A spans the operator partitioned already (adopted
    as found) has the partition key in its primary key."""
    from otelmig.compat import DRIFT_KINDS, drift_conflicts
    from otelmig.scripts import revision_module
    kinds = DRIFT_KINDS
    if catalog.kinds.get("spans") == "p":
        kinds = tuple(kind for kind in DRIFT_KINDS if not kind.endswith("primary_key"))
    return drift_conflicts(catalog, schema, revision_module(down_revision).frozen_contract(), down_revision, kinds)


def upgrade_steps(n: SchemaSQL):
    layout = Layout(n)
    steps = [Statement(n.create_record_table(), when="%s is null" % n.regclass(RECORD_TABLE),
                       condition="if %s.%s is missing" % (n.schema, RECORD_TABLE))] + repair_steps(n) + [
             _identity_refusal(n, layout), _not_carried_refusal(n, layout), _owner_refusal(n, layout),
             *_operator_object_refusals(n, layout), _holding_name_refusal(n, layout), _outliers_refusal(n, layout),
             n.record_step(revision, [("partitioning", "spans", "found")], when="%s and not %s" % (
                 n.is_partitioned("spans"), n.recorded("partitioning", "spans", "created")),
                 condition="if %s.spans is partitioned already, not by otelmig" % n.schema)]
    steps[:0] = _finish_interrupted_downgrade_steps(n, layout)  # first: a downgrade that was stopped converges
    steps += index_steps(n, revision, *TRACES_START_TIME)
    steps += _history_key_steps(n, layout)
    steps.append(_cutoff_step(n, layout))
    steps.append(Concurrent("ALTER TABLE %s VALIDATE CONSTRAINT %s" % (layout.spans, quote(CUTOFF_CHECK)),
                            when="%s and not %s" % (layout.plain_spans, layout.check_on("spans", validated=True)),
                            table="spans", lock=Lock.SHARE_UPDATE_EXCLUSIVE, effect=Effect.SCANS,
                            condition="if %s.spans is a plain table whose cutoff CHECK is not validated" % n.schema))
    steps.append(_prepare_step(n, layout))
    steps.append(_switch_step(n, layout))
    return steps


def _identity_refusal(n: SchemaSQL, layout: Layout) -> Refusal:
    identity = ("exists (select 1 from pg_attribute where attrelid = %s and attname = 'id' and attidentity <> '')"
                % n.regclass("spans"))
    return Refusal(when="%s and %s" % (layout.plain_spans, identity), table="spans", message=(
        "%s.spans.id is an identity column; revision %s moves the id sequence to the partitioned table and "
        "needs it as a sequence default (bigserial, as the contract has it): change the column back, then rerun"
        % (n.schema, revision)))


def _not_carried_refusal(n: SchemaSQL, layout: Layout) -> Refusal:
    """What the new partitioned table would not have: refuse, naming each, rather than convert without it."""
    spans = n.regclass("spans")
    found = "concat_ws('; ', %s)" % ", ".join([
        "(select 'foreign keys referencing it: ' || string_agg(%s || ' (' || conname || ')', ', ') "
        "from pg_constraint where contype = 'f' and confrelid = %s)" % (_named("conrelid"), spans),
        "(select 'unique indexes besides the primary key: ' || string_agg(c.relname, ', ') from pg_index x "
        "join pg_class c on c.oid = x.indexrelid where x.indrelid = %s and x.indisunique and not x.indisprimary "
        "and c.relname <> %s and (x.indisvalid or c.relname !~ %s))"  # a REINDEX's copy: told DROP
        % (spans, quote_literal(HISTORY_PKEY), quote_literal(REINDEX_COPY)),
        "(select 'triggers: ' || string_agg(tgname, ', ') from pg_trigger where tgrelid = %s and not tgisinternal "
        "and not (tgname = %s and tgfoid = %s))" % (spans, quote_literal(HOLD_FUNCTION), layout.our_function(HOLD_FUNCTION)),
        "(select 'row level security' from pg_class where oid = %s and relrowsecurity)" % spans,
        "(select 'publications: ' || string_agg(p.pubname, ', ') from pg_publication_rel r "
        "join pg_publication p on p.oid = r.prpubid where r.prrelid = %s)" % spans])
    return Refusal(when="%s and %s <> ''" % (layout.plain_spans, found), table="spans", detail=found, message=(
        "%s.spans has what its conversion to time partitions would not carry over to the partitioned table; "
        "remove it (recreate it on the partitioned %s.spans after the upgrade), then rerun: " % (n.schema, n.schema)))


def _owner_refusal(n: SchemaSQL, layout: Layout) -> Refusal:
    """The new table must be owned as spans is (its id sequence must be owned
    by the table's owner), and PostgreSQL gives a table to a role only if that
    role may create in the schema."""
    owner = "(select relowner from pg_class where oid = %s)" % n.regclass("spans")
    return Refusal(when="%s and not has_schema_privilege(%s, %s, 'CREATE')"
                   % (layout.plain_spans, owner, quote_literal(n.schema)), table="spans",
                   detail="quote_ident(pg_get_userbyid(%s))" % owner, message=(
                    "the partitioned %s.spans must be owned by the owner of the table it replaces, and that role "
                    "may not create in schema %s: GRANT CREATE ON SCHEMA %s TO it, then rerun; the role: "
                    % (n.schema, n.schema, quote(n.schema))))


def _holding_name_refusal(n: SchemaSQL, layout: Layout) -> Refusal:
    """The conversion holds the outliers in a table of this name (the repair step
    before this one removed ours): one of the operator's is in the way."""
    ours = "(%s and %s)" % (layout.holding_child, layout.check_on("spans"))
    return Refusal(when="%s and %s is not null and not %s" % (layout.plain_spans, n.regclass(HOLDING), ours),
                   table=HOLDING, message=(
        "%s.%s exists; revision %s holds rows stamped after its cutoff in a table of that name during the "
        "conversion: rename or drop it, then rerun" % (n.schema, HOLDING, revision)))


def _outliers_refusal(n: SchemaSQL, layout: Layout) -> Refusal:
    """More outliers than the cutoff step moves under its ACCESS EXCLUSIVE lock:
    refused before any change, naming the first few (asked through the index,
    MAX_OUTLIERS + 1 rows at most)."""
    count = "(select count(*) from (%s limit %d) o)" % (layout.outliers(CUTOFF, MAX_OUTLIERS + 1), MAX_OUTLIERS + 1)
    sample = ("(select string_agg('id ' || o.id || ' (' || %s || ')', ', ' ORDER BY o.start_time, o.id) "
              "from (select * from (%s) a order by start_time, id limit 5) o)"
              % (_shown("o.start_time"), layout.outliers(CUTOFF, 5)))
    return Refusal(when="%s and not %s and %s > %d" % (layout.plain_spans, layout.check_on("spans"), count,
                                                       MAX_OUTLIERS),
                   table="spans", detail=sample, message=(
                    "%s.spans has more than %d rows stamped at or after the cutoff of revision %s (the UTC midnight "
                    "%d days after today: future-dated, 'infinity', or years past 9999), more than it moves under its "
                    "short ACCESS EXCLUSIVE lock; delete them or correct their start_time (or move them to a table "
                    "of your own), then rerun; the first of them: " % (n.schema, MAX_OUTLIERS, revision, MARGIN_DAYS)))


# -- what an operator attached to spans: refused here, or carried over by _carry_operator_objects --------------

MAX_NAME_BYTES = 63          # PostgreSQL's identifier limit (NAMEDATALEN - 1): a longer name is cut, never by us
REINDEX_COPY = "_cc(new|old)[0-9]*$"  # how PostgreSQL names what a stopped REINDEX CONCURRENTLY leaves


def _operator_object_refusals(n: SchemaSQL, layout: Layout) -> list:
    """Every kind of object that can hang on spans, read from the catalogs, which
    the conversion does not carry over (docs/revision2-objects.md lists each kind
    and its outcome): refused before the first change, each group with its fix."""
    return [_refusal_of(layout, _dependents(n), "%s.spans has what would stay on the history partition (or break "
                        "the switch) instead of following spans to its partitioned table; drop it, rerun, and "
                        "recreate it on the partitioned %s.spans after the upgrade: " % (n.schema, n.schema)),
            _refusal_of(layout, _table_settings(n), "%s.spans has table settings that the partitioned table and "
                        "the partitions maintain makes would not have; reset each (the fix is named with it), "
                        "rerun, and set it on the partitions after the upgrade: " % n.schema),
            _refusal_of(layout, _invalid_indexes(n), "%s.spans has invalid indexes (a concurrent build that failed), "
                        "which the switch would rebuild under its ACCESS EXCLUSIVE lock: REINDEX INDEX "
                        "CONCURRENTLY each, except one whose name ends in _ccnew or _ccold (or _ccnewN, _ccoldN: "
                        "what a stopped REINDEX CONCURRENTLY left): DROP INDEX CONCURRENTLY that one; then rerun: "
                        % n.schema),
            _refusal_of(layout, _taken_names(n), "revision %s would create objects in schema %s under names that "
                        "are taken or too long; rename each as said, then rerun: " % (revision, n.schema)),
            _refusal_of(layout, _views_not_replaceable(n.regclass("spans")), "%s.spans has views that the switch "
                        "points at the partitioned table, which this role may not replace; run otelmig as a role "
                        "that may (their owner, or a member of it, with CREATE on their schema), or drop them "
                        "and recreate them after the upgrade, then rerun: " % n.schema)]


def _refusal_of(layout: Layout, found: str, message: str) -> Refusal:
    return Refusal(when="%s and %s <> ''" % (layout.plain_spans, found), table="spans", detail=found, message=message)


def _listed(label: str, items: str, source: str) -> str:
    """SQL: 'label: a, b' for the items the query finds, or null (concat_ws skips it)."""
    return "(select %s || string_agg(distinct %s, ', ') %s)" % (quote_literal(label + ": "), items, source)


def _named(relation_oid: str) -> str:
    """SQL: schema.name of a relation, whatever the session's search_path (regclass::text omits a visible schema)."""
    return ("(select quote_ident(nspname) || '.' || quote_ident(relname) from pg_class rel join pg_namespace ns "
            "on ns.oid = rel.relnamespace where rel.oid = %s)" % relation_oid)


def _described(classid: str, objid: str, objsubid: str) -> str:
    """SQL: what an object is, schema-qualified (pg_describe_object omits a visible schema)."""
    return "(select type || ' ' || identity from pg_identify_object(%s, %s, %s))" % (classid, objid, objsubid)


def _dependents(n: SchemaSQL) -> str:
    spans, s = n.regclass("spans"), quote_literal(n.schema)
    column = "from pg_attribute where attrelid = %s and attnum > 0 and not attisdropped" % spans
    # A view or rule is a pg_rewrite row, a BEGIN ATOMIC function a pg_proc row that depends on spans.
    rewrite_name = ("(select case when r.rulename = '_RETURN' then case c.relkind when 'm' then 'materialized view ' "
                    "else 'view ' end || %s else 'rule ' || quote_ident(r.rulename) || ' on ' "
                    "|| %s end from pg_rewrite r join pg_class c on c.oid = r.ev_class "
                    "where r.oid = d.objid)" % (_named("c.oid"), _named("c.oid")))
    return "concat_ws('; ', %s)" % ", ".join([
        # A plain view is carried (the switch points it at the partitioned spans: _read_views).
        _listed("materialized views, rules and functions that read it (they would read the history partition only)",
                "case when d.classid = 'pg_rewrite'::regclass then %s else %s end"
                % (rewrite_name, _described("d.classid", "d.objid", "0")),
                "from pg_depend d where d.refclassid = 'pg_class'::regclass and d.refobjid = %s "
                "and d.classid in ('pg_rewrite'::regclass, 'pg_proc'::regclass) and not exists (select 1 from "
                "pg_rewrite r join pg_class c on c.oid = r.ev_class where r.oid = d.objid "
                "and d.classid = 'pg_rewrite'::regclass and r.rulename = '_RETURN' and c.relkind = 'v')" % spans),
        _listed("what uses its row type (it would become the history partition's)",
                _described("d.classid", "d.objid", "d.objsubid"),
                "from pg_depend d where d.refclassid = 'pg_type'::regclass and d.refobjid = "
                "(select reltype from pg_class where oid = %s) and d.classid <> 'pg_type'::regclass" % spans),
        _listed("policies", "quote_ident(polname)", "from pg_policy where polrelid = %s" % spans),
        _listed("foreign keys of its own", "quote_ident(conname)",
                "from pg_constraint where conrelid = %s and contype = 'f'" % spans),
        _listed("exclusion constraints", "quote_ident(conname)",
                "from pg_constraint where conrelid = %s and contype = 'x'" % spans),
        _listed("NO INHERIT check constraints (a partitioned table cannot have one)", "quote_ident(conname)",
                "from pg_constraint where conrelid = %s and contype = 'c' and connoinherit and conname <> %s" % (spans, quote_literal(CUTOFF_CHECK))),
        _listed("extended statistics", "quote_ident(stxname)", "from pg_statistic_ext where stxrelid = %s" % spans),
        # pg_publication_tables lists every form (FOR TABLE, FOR ALL TABLES, FOR TABLES IN SCHEMA) on every major.
        _listed("publications that include it (they would publish each partition)", "quote_ident(pubname)",
                "from pg_publication_tables where schemaname = %s and tablename = 'spans'" % s),
        # Our own holding child is no operator's: the repair step (or the switch) empties and drops it.
        _listed("tables that inherit from it", _named("inhrelid"),
                "from pg_inherits where inhparent = %s and inhrelid is distinct from %s"
                % (spans, n.regclass(HOLDING))),
        _listed("tables it inherits from", _named("inhparent"), "from pg_inherits where inhrelid = %s" % spans),
        _listed("generated columns", "quote_ident(attname)", column + " and attgenerated <> ''"),
        _listed("identity columns", "quote_ident(attname)", column + " and attidentity <> '' and attname <> 'id'"),
        _listed("sequences owned by its columns but id (they would go with the history partition)",
                _named("d.objid"),
                "from pg_depend d join pg_class q on q.oid = d.objid where d.classid = 'pg_class'::regclass "
                "and d.refclassid = 'pg_class'::regclass and d.refobjid = %s and q.relkind = 'S' and d.deptype = 'a' "
                "and d.refobjsubid <> (select attnum from pg_attribute where attrelid = %s and attname = 'id')"
                % (spans, spans)),
        _listed("security labels", "provider",
                "from pg_seclabel where classoid = 'pg_class'::regclass and objoid = %s" % spans),
    ])


def _table_settings(n: SchemaSQL) -> str:
    spans = n.regclass("spans")
    table = "from pg_class where oid = %s" % spans
    column = "from pg_attribute where attrelid = %s and attnum > 0 and not attisdropped" % spans
    return "concat_ws('; ', %s)" % ", ".join([
        _listed("storage parameters (ALTER TABLE ... RESET (...))", "array_to_string(reloptions, ', ')",
                table + " and reloptions is not null"),
        _listed("toast storage parameters (ALTER TABLE ... RESET (toast....))", "array_to_string(t.reloptions, ', ')",
                "from pg_class c join pg_class t on t.oid = c.reltoastrelid where c.oid = %s "
                "and t.reloptions is not null" % spans),
        _listed("statistics targets (ALTER COLUMN ... SET STATISTICS -1)",
                "quote_ident(attname) || ' ' || attstattarget", column + " and attstattarget >= 0"),
        _listed("column options (ALTER COLUMN ... RESET (...))",
                "quote_ident(attname) || ' ' || array_to_string(attoptions, ', ')", column + " and attoptions is not null"),
        _listed("replica identity (ALTER TABLE ... REPLICA IDENTITY DEFAULT)",
                "case relreplident when 'f' then 'full' when 'n' then 'nothing' else 'using index' end",
                table + " and relreplident <> 'd'"),
        _listed("unlogged (ALTER TABLE ... SET LOGGED)", "'unlogged'", table + " and relpersistence = 'u'"),
        _listed("tablespace (ALTER TABLE ... SET TABLESPACE pg_default)",
                "(select quote_ident(spcname) from pg_tablespace where oid = reltablespace)",
                table + " and reltablespace <> 0"),
        _listed("access method (ALTER TABLE ... SET ACCESS METHOD heap)",
                "(select quote_ident(amname) from pg_am where oid = relam)",
                table + " and relam <> (select oid from pg_am where amname = 'heap')"),
        _listed("row level security forced (ALTER TABLE ... NO FORCE ROW LEVEL SECURITY)", "'forced'",
                table + " and relforcerowsecurity"),
        # ATTACH PARTITION takes no typed table; a partitioned index has no tablespace of its own to inherit.
        _listed("typed table (ALTER TABLE ... NOT OF)", "format_type(reloftype, null)", table + " and reloftype <> 0"),
        _listed("indexes in a tablespace (ALTER INDEX ... SET TABLESPACE pg_default)", _named("c.oid"),
                "from pg_index x join pg_class c on c.oid = x.indexrelid where x.indrelid = %s "
                "and c.reltablespace <> 0" % spans),
    ])


def _invalid_indexes(n: SchemaSQL) -> str:
    """SQL: the operator's indexes on spans that are not valid (ours, HISTORY_PKEY, the revision rebuilds itself)."""
    return ("coalesce((select string_agg(%s, ', ' order by c.relname) from pg_index x "
            "join pg_class c on c.oid = x.indexrelid where x.indrelid = %s and not (x.indisvalid and x.indisready) "
            "and c.relname <> %s), '')" % (_named("c.oid"), n.regclass("spans"), quote_literal(HISTORY_PKEY)))


def _taken_names(n: SchemaSQL) -> str:
    """SQL: each name the revision will create that a relation or type of the
    schema holds (but what this revision made: a rerun finds them), and each
    index of spans whose prefixed name would not fit in 63 bytes."""
    spans, s = n.regclass("spans"), quote_literal(n.schema)
    prefixes = (NEW_PARENT + "_", LAYOUT.history + "_")
    longest = max(len(p) for p in prefixes)
    # A stopped REINDEX's INVALID copy is left out: the invalid-index group tells to DROP it, not rename it.
    operator_indexes = ("from pg_index x join pg_class c on c.oid = x.indexrelid where x.indrelid = %s "
                        "and not x.indisprimary and c.relname <> %s and (x.indisvalid or c.relname !~ %s)"
                        % (spans, quote_literal(HISTORY_PKEY), quote_literal(REINDEX_COPY)))
    wanted = " union all ".join(
        ["select unnest(array[%s]::text[])" % ", ".join(quote_literal(name) for name in (
            LAYOUT.history, NEW_PARENT, LAYOUT.default, NEW_PARENT + "_pkey", HISTORY_PKEY))]
        + ["select %s || c.relname::text %s" % (quote_literal(prefix), operator_indexes) for prefix in prefixes])
    # What this revision made before an interruption: the partitioned table (with its primary key), its
    # partitions, their indexes, and the history key on spans.
    ours = ("with parent as (select p.oid from pg_class p where p.oid = %s and p.relkind = 'p' and exists "
            "(select 1 from pg_constraint where conrelid = p.oid and conname = %s)), "
            "tables as (select oid from parent union all select inhrelid from pg_inherits "
            "where inhparent in (select oid from parent)) "
            "select oid from tables union all select indexrelid from pg_index where indrelid in (select oid from tables) "
            "union all select indexrelid from pg_index where indexrelid = %s and indrelid = %s"
            % (n.regclass(NEW_PARENT), quote_literal(NEW_PARENT + "_pkey"), n.regclass(HISTORY_PKEY), spans))
    day_name = "'^%s[0-9]{8}$'" % LAYOUT.day_prefix
    taken = ("from pg_class c where c.relnamespace = (select oid from pg_namespace where nspname = %s) and (c.relname in (%s) or c.relname ~ %s) "
             "and c.oid not in (%s)" % (s, wanted, day_name, ours))
    taken_type = ("from pg_type t where t.typnamespace = (select oid from pg_namespace where nspname = %s) and t.typrelid = 0 "
                  "and (t.typname in (%s) or t.typname ~ %s)" % (s, wanted, day_name))
    fit = MAX_NAME_BYTES - longest
    # The suggested name: the name's first characters that fit, then _ and 8 hex digits of its md5, so that
    # two names alike in their first bytes are told two different names; the first of ten such (md5 of the
    # name, then of the name and 1, 2, ...) that no relation of the schema holds (each rename runs as printed).
    head = ("(select left(c.relname, max(k)) from generate_series(0, length(c.relname)) k "
            "where octet_length(left(c.relname, k)) <= %d)" % (fit - 9))
    free = ("(select s.name from (select %s || '_' || left(md5(c.relname || case when k = 0 then '' else k::text "
            "end), 8) as name, k from generate_series(0, 9) k) s where not exists (select 1 from pg_class r "
            "where r.relnamespace = c.relnamespace and r.relname in (s.name, %s)) order by s.k limit 1)"
            % (head, ", ".join("%s || s.name" % quote_literal(prefix) for prefix in prefixes)))  # and its indexes' names
    too_long = ("quote_ident(c.relname) || ' (rename it to at most %d bytes, e.g. ALTER INDEX ' || %s "
                "|| ' RENAME TO ' || quote_ident(coalesce(%s, %s || '_' || left(md5(c.relname), 8))) || ')'"
                % (fit, _named("c.oid"), free, head))  # all ten taken: still named (the line must never be NULL)
    return "concat_ws('; ', %s)" % ", ".join([
        _listed("names it will create, taken (rename or drop them)", _named("c.oid"), taken),
        _listed("type names it will create, taken (rename or drop them)", "quote_ident(t.typname)", taken_type),
        _listed("index names too long to take the prefix %s (%d bytes at most)" % (prefixes[0], MAX_NAME_BYTES),
                too_long, operator_indexes + " and octet_length(c.relname) > %d" % fit),
        # The cutoff step's functions: one of the operator's under either name (a cutoff step's has its key as comment).
        _listed("function names it will create, taken (rename or drop them)",
                "p.oid::regprocedure::text",
                "from pg_proc p where p.pronamespace = (select oid from pg_namespace where nspname = %s) "
                "and p.proname in (%s, %s) and not (p.pronargs = 0 and obj_description(p.oid, 'pg_proc') ~ '^-?[0-9]+$')"
                % (s, quote_literal(CUTOFF_FUNCTION), quote_literal(HOLD_FUNCTION))),
    ])


def _carry_operator_objects(n: SchemaSQL, layout: Layout) -> list:
    """PL/pgSQL for the prepare step, once the partitions exist: what the
    operator attached to spans that the partitioned table takes over as it is.
    CHECK constraints go on the parent, so on every partition now, and maintain's
    LIKE ... INCLUDING CONSTRAINTS gives them to the ones it makes; ATTACH
    merges them with the history partition's, which keeps its own (so the
    downgrade finds them there). Column privileges and comments are the
    parent's: readers and writers reach the partitions through it."""
    spans, p = n.regclass("spans"), layout.parent.replace("'", "''")
    check = "contype = 'c' and conname <> %s" % quote_literal(CUTOFF_CHECK)
    comment = "from pg_description d where d.objoid = %s and d.classoid = 'pg_class'::regclass" % spans
    return [
        "  DECLARE carried record;",
        "  BEGIN",
        "    FOR carried IN SELECT conname, pg_get_constraintdef(oid) AS body FROM pg_constraint",
        "        WHERE conrelid = %s AND %s ORDER BY conname LOOP" % (spans, check),
        "      EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %%I ', carried.conname) || carried.body;" % p,
        "    END LOOP;",
        "    FOR carried IN SELECT a.attname, x.privilege_type, x.is_grantable, CASE WHEN x.grantee = 0 THEN 'PUBLIC'",
        "        ELSE quote_ident(pg_get_userbyid(x.grantee)) END AS grantee FROM pg_attribute a, aclexplode(a.attacl) x",
        "        WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped LOOP" % spans,
        "      EXECUTE format('GRANT %%s (%%I) ON %s TO %%s', carried.privilege_type, carried.attname, carried.grantee)"
        % p,
        "        || CASE WHEN carried.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END;",
        "    END LOOP;",
        "    FOR carried IN SELECT d.description %s AND d.objsubid = 0 LOOP" % comment,
        "      EXECUTE format('COMMENT ON TABLE %s IS %%L', carried.description);" % p,
        "    END LOOP;",
        "    FOR carried IN SELECT a.attname, d.description FROM pg_description d JOIN pg_attribute a",
        "        ON a.attrelid = d.objoid AND a.attnum = d.objsubid WHERE d.objoid = %s" % spans,
        "        AND d.classoid = 'pg_class'::regclass AND d.objsubid > 0 LOOP",
        "      EXECUTE format('COMMENT ON COLUMN %s.%%I IS %%L', carried.attname, carried.description);" % p,
        "    END LOOP;",
        "    FOR carried IN SELECT c.conname, d.description FROM pg_constraint c JOIN pg_description d",
        "        ON d.objoid = c.oid AND d.classoid = 'pg_constraint'::regclass WHERE c.conrelid = %s AND %s LOOP"
        % (spans, check),
        "      EXECUTE format('COMMENT ON CONSTRAINT %%I ON %s IS %%L', carried.conname, carried.description);" % p,
        "    END LOOP;",
        # An index of spans is made on the parent as spans_partitioned_<name> (named so until the switch).
        "    FOR carried IN SELECT c.relname, d.description FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid",
        "        JOIN pg_description d ON d.objoid = c.oid AND d.classoid = 'pg_class'::regclass",
        "        WHERE x.indrelid = %s AND NOT x.indisprimary AND c.relname <> %s LOOP"
        % (spans, quote_literal(HISTORY_PKEY)),
        "      EXECUTE format('COMMENT ON INDEX %%I.%%I IS %%L', %s, %s || carried.relname, carried.description);"
        % (quote_literal(n.schema), quote_literal(NEW_PARENT + "_")),
        "    END LOOP;",
        "  END;"]


def _history_key_steps(n: SchemaSQL, layout: Layout):
    """The unique index the new primary key needs on the table that becomes
    the history partition: the one scan that cannot be avoided, concurrently."""
    index = HISTORY_PKEY
    missing_or_invalid = missing = "(%s is null or %s)" % (n.regclass(index), n.index_invalid(index))
    missing_words = "if %s.spans is a plain table without a valid index %s" % (n.schema, index)
    return [
        Concurrent("DROP INDEX {concurrently}IF EXISTS %s" % n.table(index),
                   when="%s and %s" % (layout.plain_spans, n.index_invalid(index)),
                   table="spans", lock=Lock.ACCESS_EXCLUSIVE,
                   condition="if %s.spans is a plain table and %s is INVALID (a failed build)" % (n.schema, index)),
        n.record_step(revision, [("index", index, "created")],
                      when="%s and %s" % (layout.plain_spans, missing), condition=missing_words),
        Concurrent("CREATE UNIQUE INDEX {concurrently}IF NOT EXISTS %s ON %s (id, start_time)" % (quote(index), layout.spans),
                   when="%s and %s" % (layout.plain_spans, missing_or_invalid),
                   table="spans", lock=Lock.SHARE, effect=Effect.BUILDS_INDEX, condition=missing_words),
    ]


def _cutoff_step(n: SchemaSQL, layout: Layout) -> Statement:
    """Under ACCESS EXCLUSIVE for a moment, what lets the switch attach the
    old table FROM (MINVALUE) TO (cutoff) without scanning it, made so that
    no write is ever rejected, while the run lives or after it stopped:

    - CHECK (start_time < otelmig_spans_cutoff()) NO INHERIT NOT VALID. The
      function is IMMUTABLE, so PostgreSQL folds it to a constant wherever it
      reasons about the CHECK (its VALIDATE, ATTACH's proof): in this session
      (CUTOFF_KEY_SETTING holds its key) it is the cutoff, in every other
      session NULL, which a CHECK accepts. The CHECK binds nobody but us.
    - So that VALIDATE finds no committed row at or after the cutoff in spans
      itself, the trigger otelmig_spans_hold (AFTER INSERT OR UPDATE OF
      start_time, WHEN start_time >= cutoff) moves such a row, in the writer's
      own transaction, into otel.spans_outliers, an inheritance child of spans
      (visible through otel.spans; RETURNING and the row count are the
      writer's as ever). It does so only while this session holds its
      advisory lock (the key): once the run stopped, rows stay where written.
    - The outliers already there (at most MAX_OUTLIERS, found per service
      through the index) move into that child now.

    The switch, under its lock, moves what is left at or after the cutoff
    (nothing, while the trigger held) and the held rows into the partitioned
    table before the attach, which is what makes the proof true."""
    spans, holding = layout.spans, layout.holding
    add = "ALTER TABLE %s ADD CONSTRAINT %s CHECK (start_time < %s) NO INHERIT NOT VALID" % (
        spans, quote(CUTOFF_CHECK), layout.cutoff_function)
    lines = [
        "DO $cutoff$",
        "DECLARE cutoff timestamptz; key bigint; owner_name text; service record; moved bigint; held bigint := 0;",
        "BEGIN",
        UTC_SESSION,
        "  LOCK TABLE %s IN ACCESS EXCLUSIVE MODE;" % spans,
        "  cutoff := %s;" % CUTOFF,
        "  key := ('x' || substr(md5(random()::text || clock_timestamp()::text || pg_backend_pid()::text), 1, 15))"
        "::bit(60)::bigint;",
        "  PERFORM pg_advisory_lock(key);  -- held for the session's life: the trigger holds rows while it is",
        "  PERFORM set_config(%s, key::text, false);" % quote_literal(CUTOFF_KEY_SETTING),
        "  owner_name := (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = %s);" % n.regclass("spans"),
        "  %s;" % n.record(revision, [("table", HOLDING, "created")]),
        "  CREATE TABLE %s () INHERITS (%s);" % (holding, spans),
        "  EXECUTE format('ALTER TABLE %s OWNER TO %%I', owner_name);" % holding.replace("'", "''"),
    ] + _cutoff_function_lines(layout) + _hold_trigger_lines(n, layout) + _hold_outliers_lines(layout) + [
        "  %s;" % add,
        "END",
        "$cutoff$"]
    return Statement("\n".join(lines), when="%s and not %s" % (layout.plain_spans, layout.check_on("spans")),
                     table="spans", lock=Lock.ACCESS_EXCLUSIVE, effect=Effect.WRITES_ROWS,
                     condition="if %s.spans is a plain table without the cutoff CHECK" % n.schema,
                     label="the cutoff (the UTC midnight %d days after today); a trigger that holds rows stamped at "
                           "or after it in %s while this run lives; the outliers there now (at most %d, found "
                           "through an index) moved in; CHECK (start_time < cutoff) NOT VALID, binding this session "
                           "only" % (MARGIN_DAYS, HOLDING, MAX_OUTLIERS))


def _cutoff_function_lines(layout: Layout) -> list:
    """PL/pgSQL: the IMMUTABLE function of the CHECK, its comment the key (repair_steps tells ours by it)."""
    body = ("format('SELECT CASE WHEN current_setting(%%L, true) = %%L THEN %%L::timestamptz END', %s, key::text, %s)"
            % (quote_literal(CUTOFF_KEY_SETTING), _utc_text("cutoff at time zone 'UTC'")))
    function = layout.cutoff_function.replace("'", "''")
    return [
        "  EXECUTE format('CREATE FUNCTION %s RETURNS timestamptz LANGUAGE sql IMMUTABLE AS %%L', %s);"
        % (function, body),
        "  EXECUTE format('COMMENT ON FUNCTION %s IS %%L', key::text);" % function,
        "  EXECUTE format('ALTER FUNCTION %s OWNER TO %%I', owner_name);" % function,
        # Every writer's CHECK evaluates it: PUBLIC may execute it whatever the default privileges say.
        "  EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO PUBLIC');" % function]


def _hold_trigger_lines(n: SchemaSQL, layout: Layout) -> list:
    """PL/pgSQL: the trigger function (SECURITY DEFINER: the writer needs no
    DELETE on spans nor any right on the holding child) and the trigger."""
    spans, holding = layout.spans.replace("'", "''"), layout.holding.replace("'", "''")
    function = layout.hold_function.replace("'", "''")
    body = ("format('BEGIN IF NOT pg_try_advisory_xact_lock_shared(%%s) THEN "
            "DELETE FROM ONLY %s WHERE id = NEW.id; INSERT INTO %s SELECT NEW.*; END IF; RETURN NULL; END', key)"
            % (spans, holding))
    return [
        "  EXECUTE format('CREATE FUNCTION %s RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER "
        "SET search_path = pg_catalog AS %%L', %s);" % (function, body),
        "  EXECUTE format('COMMENT ON FUNCTION %s IS %%L', key::text);" % function,
        "  EXECUTE format('ALTER FUNCTION %s OWNER TO %%I', owner_name);" % function,
        "  EXECUTE format('CREATE TRIGGER %s AFTER INSERT OR UPDATE OF start_time ON %s FOR EACH ROW "
        "WHEN (NEW.start_time >= %%L) EXECUTE FUNCTION %s', %s);"
        % (quote(HOLD_FUNCTION).replace("'", "''"), spans, function, _utc_text("cutoff at time zone 'UTC'"))]


def _hold_outliers_lines(layout: Layout, limit=MAX_OUTLIERS) -> list:
    """PL/pgSQL: the rows at or after the cutoff into the holding child, one
    DELETE per service that has one (found by one index probe each); more than
    `limit` (a row the refusal did not see: written since) stops the run."""
    move = ("WITH moved AS (DELETE FROM ONLY %s WHERE service_name %%s AND start_time >= $1 RETURNING *) "
            "INSERT INTO %s SELECT * FROM moved" % (layout.spans, layout.holding))
    too_many = ("more than %d rows of %s are stamped at or after the cutoff %%; nothing was changed: rerun, and "
                "the refusal names them" % (MAX_OUTLIERS, layout.spans.replace('"', '')))
    return [
        "  FOR service IN SELECT quote_literal(o.service_name) AS name FROM (%s) o LOOP" % layout.outliers("cutoff", 1),
        "    EXECUTE format(%s, coalesce('= ' || service.name, 'IS NULL')) USING cutoff;" % quote_literal(move),
        "    GET DIAGNOSTICS moved = ROW_COUNT;",
        "    held := held + moved;",
    ] + ([] if limit is None else [
        "    IF held > %d THEN" % limit,
        # 54000 (program_limit_exceeded): otelmig reports it as a refusal, exit 8.
        "      RAISE EXCEPTION %s, cutoff USING ERRCODE = 'program_limit_exceeded';" % quote_literal(too_many),
        "    END IF;"]) + [
        "  END LOOP;"]


def _prepare_step(n: SchemaSQL, layout: Layout) -> Statement:
    """The new partitioned table beside spans, empty, with its partitions and indexes (catalog only)."""
    p = layout.parent
    create_day = ("CREATE TABLE %%I.%%I PARTITION OF %s FOR VALUES FROM (%%L) TO (%%L)" % p)
    record_partition = ("INSERT INTO %s (revision, object_kind, object_name, origin) VALUES (%s, 'partition', "
                        "day_name, 'created') ON CONFLICT (object_kind, object_name) DO NOTHING;"
                        % (n.record_table(), quote_literal(revision)))
    lines = [
        "DO $prepare$",
        "DECLARE day timestamp; last_day timestamp; day_name text; ix record; part regclass; owner_name text; "
        "g record;",
        "BEGIN",
        UTC_SESSION,
        # Days are counted on timestamps in UTC: no daylight-saving change can shift or repeat one.
        "  day := %s at time zone 'UTC';" % layout.cutoff(),
        "  last_day := date_trunc('day', now() at time zone 'UTC') + make_interval(days => %d);" % AHEAD_DAYS,
        "  CREATE TABLE %s (LIKE %s INCLUDING DEFAULTS INCLUDING STORAGE INCLUDING GENERATED) "
        "PARTITION BY RANGE (start_time);" % (p, layout.spans),
        "  ALTER TABLE %s ADD CONSTRAINT %s PRIMARY KEY (id, start_time);" % (p, quote(NEW_PARENT + "_pkey")),
    ]
    # Every index of spans, the operator's too, on the new table (the unique ones were refused).
    lines += [
        "  FOR ix IN %s LOOP" % _indexes_of(n.regclass("spans")),
        "    EXECUTE format('CREATE INDEX %%I ON %s', left(%s || ix.name, 63)) || ix.body;"
        % (p.replace("'", "''"), quote_literal(NEW_PARENT + "_")),
        "  END LOOP;",
        "  %s;" % n.record(revision, [("partition", LAYOUT.default, "created")]),
        "  CREATE TABLE %s PARTITION OF %s DEFAULT;" % (n.table(LAYOUT.default), p),
        "  WHILE day <= last_day LOOP",
        "    day_name := %s || to_char(day, 'YYYYMMDD');" % quote_literal(LAYOUT.day_prefix),
        "    %s" % record_partition,
        "    EXECUTE format(%s, %s, day_name, %s, %s);"
        % (quote_literal(create_day), quote_literal(n.schema), _utc_text("day"),
           _utc_text("day + make_interval(days => 1)")),
        "    day := day + make_interval(days => 1);",
        "  END LOOP;",
    ] + _same_owner_and_grants(n, layout) + _carry_operator_objects(n, layout) + [
        "END",
        "$prepare$"]
    return Statement("\n".join(lines), when="%s and %s is null" % (layout.plain_spans, n.regclass(NEW_PARENT)),
                     condition="if %s.spans is a plain table and %s does not exist" % (n.schema, NEW_PARENT),
                     label="the empty partitioned %s: spans's columns, indexes, owner and grants; DEFAULT and day "
                           "partitions from the cutoff to today + %d (UTC days)" % (NEW_PARENT, AHEAD_DAYS))


def _indexes_of(table_regclass: str, without=()) -> str:
    """SQL: (name, body) of the table's indexes but its primary key and `without`;
    body is its definition from USING on (method, keys, INCLUDE, WHERE)."""
    skip = "".join(" and c.relname <> %s" % quote_literal(name) for name in (HISTORY_PKEY,) + tuple(without))
    return ("SELECT c.relname::text AS name, substring(pg_get_indexdef(x.indexrelid) from ' USING .*$') AS body "
            "FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid WHERE x.indrelid = %s AND NOT x.indisprimary%s "
            "ORDER BY 1" % (table_regclass, skip))


def _same_owner_and_grants(n: SchemaSQL, layout: Layout) -> list:
    """The new table and its partitions get spans's owner and its table
    privileges (the worker's INSERT and SELECT), so nothing changes for them."""
    return [
        "  owner_name := (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = %s);" % n.regclass("spans"),
        "  FOR part IN SELECT %s UNION ALL SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = %s LOOP"
        % (n.regclass(NEW_PARENT), n.regclass(NEW_PARENT)),
        "    EXECUTE format('ALTER TABLE %s OWNER TO %I', part, owner_name);",
        "  END LOOP;",
        "  FOR g IN SELECT a.privilege_type, a.is_grantable, CASE WHEN a.grantee = 0 THEN 'PUBLIC' "
        "ELSE quote_ident(pg_get_userbyid(a.grantee)) END AS grantee",
        "           FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = %s AND a.grantee <> c.relowner LOOP"
        % n.regclass("spans"),
        "    EXECUTE format('GRANT %%s ON %s TO %%s', g.privilege_type, g.grantee)" % layout.parent.replace("'", "''"),
        "      || CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END;",
        "  END LOOP;"]


def _switch_step(n: SchemaSQL, layout: Layout) -> Statement:
    """One transaction: the held outliers into the new spans, and the old table becomes its history partition."""
    spans, history, p = layout.spans, layout.history, layout.parent
    attach = "ALTER TABLE %s ATTACH PARTITION %s FOR VALUES FROM (MINVALUE) TO (%%L)" % (spans, history)
    lines = [
        "DO $switch$",
        "DECLARE cutoff timestamptz; id_sequence text; ix record; columns text; service record; moved bigint; "
        "held bigint := 0; %s" % VIEW_VARIABLES,
        "BEGIN",
        UTC_SESSION,
        "  LOCK TABLE %s IN ACCESS EXCLUSIVE MODE;" % spans,
        "  cutoff := %s;" % layout.cutoff(),
        "  %s;" % n.record(revision, [("partitioning", "spans", "created"), ("partition", LAYOUT.history, "created")]),
        "  id_sequence := pg_get_serial_sequence(%s, 'id');" % quote_literal(spans),
        # What the attach's proof needs, made true under this lock: no row at or after the cutoff in spans itself.
    ] + _hold_outliers_lines(layout, limit=None) + _release_held_rows(n, layout) + [
        "  DROP TRIGGER %s ON %s;" % (quote(HOLD_FUNCTION), spans),
        "  DROP FUNCTION %s;" % layout.hold_function] + _read_views(n.regclass("spans"))
    lines += _rename_indexes(n, n.regclass("spans"), "'%s_' || ix.name" % LAYOUT.history)
    lines += [
        "  ALTER TABLE %s DROP CONSTRAINT IF EXISTS spans_pkey;" % spans,
        "  ALTER TABLE %s ADD CONSTRAINT %s PRIMARY KEY USING INDEX %s;" % (spans, quote(HISTORY_PKEY), quote(HISTORY_PKEY)),
        "  ALTER TABLE %s RENAME TO %s;" % (spans, quote(LAYOUT.history)),
    ]
    lines += _rename_indexes(n, n.regclass(NEW_PARENT), "substr(ix.name, %d)" % (len(NEW_PARENT) + 2))
    lines += [
        "  ALTER TABLE %s RENAME CONSTRAINT %s TO spans_pkey;" % (p, quote(NEW_PARENT + "_pkey")),
        "  ALTER TABLE %s RENAME TO spans;" % p,
        "  EXECUTE format(%s, %s);" % (quote_literal(attach), _utc_text("cutoff at time zone 'UTC'")),
        "  ALTER TABLE %s DROP CONSTRAINT %s;" % (history, quote(CUTOFF_CHECK)),
        "  DROP FUNCTION %s;" % layout.cutoff_function,
    ] + _replace_views() + _sequence_owned_by(spans) + [
        "END",
        "$switch$"]
    return Statement("\n".join(lines), when=layout.plain_spans, table="spans", lock=Lock.ACCESS_EXCLUSIVE,
                     condition="if %s.spans is a plain table" % n.schema,
                     label="switch: held outliers into the new spans, renames, primary key (id, start_time), spans "
                           "becomes %s attached FROM (MINVALUE) TO (cutoff) without a scan, sequence owned by the "
                           "new spans" % LAYOUT.history)


def _release_held_rows(n: SchemaSQL, layout: Layout) -> list:
    """PL/pgSQL: the outliers held in the holding child into the new partitioned
    table (DEFAULT or their day), and the child dropped (a table to attach may
    have no children): before the renames, while both names are still ours.
    A held row a writer has since stamped before the cutoff (triggers are not
    inherited, so nothing moved it) goes back into spans itself, the future
    history partition: in DEFAULT it would fail the attach."""
    move = ("WITH moved AS (DELETE FROM ONLY %s WHERE start_time %%2$s $1 RETURNING *) "
            "INSERT INTO %%3$s (%%1$s) SELECT %%1$s FROM moved"
            % layout.holding.replace("'", "''"))
    return [
        "  IF %s THEN" % layout.holding_child,
        "    SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO columns FROM pg_attribute",
        "      WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped;" % n.regclass(HOLDING),
        "    EXECUTE format(%s, columns, '<', %s) USING cutoff;"
        % (quote_literal(move), quote_literal(layout.spans)),
        "    EXECUTE format(%s, columns, '>=', %s) USING cutoff;" % (quote_literal(move), quote_literal(layout.parent)),
        "    DROP TABLE %s;" % layout.holding,
        "    %s;" % _forget_holding(n),
        "  END IF;"]


def _read_views(table_regclass: str) -> list:
    """PL/pgSQL: the plain views that read `table` directly (names, bodies and
    options into view_names, view_bodies, view_options), read under a
    search_path of pg_catalog alone so every name in a body is schema-qualified.
    Once the tables swapped names, _replace_views points each at the table that
    now has the name (CREATE OR REPLACE VIEW keeps its oid, owner, grants,
    comments and the views built on it)."""
    return [
        "  PERFORM set_config('search_path', 'pg_catalog', true);",
        "  FOR v IN SELECT DISTINCT c.oid::regclass::text AS name, rtrim(pg_get_viewdef(c.oid), ';') AS body,",
        "      coalesce(' WITH (' || array_to_string(c.reloptions, ', ') || ')', '') AS options",
        "      FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class c ON c.oid = r.ev_class",
        "      WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass",
        "        AND d.refobjid = %s AND c.relkind = 'v' AND c.oid <> d.refobjid ORDER BY 1 LOOP" % table_regclass,
        "    view_names := view_names || v.name; view_bodies := view_bodies || v.body;",
        "    view_options := view_options || v.options;",
        "  END LOOP;"]


def _views_not_replaceable(table_regclass: str) -> str:
    """SQL: the plain views _read_views finds on the table that the running
    role could not CREATE OR REPLACE (it must have its owner's privileges and
    USAGE and CREATE on its schema), each with its owner, or null."""
    return ("(select string_agg(distinct quote_ident(ns.nspname) || '.' || quote_ident(c.relname) || ' (owner ' "
            "|| quote_ident(pg_get_userbyid(c.relowner)) || ')', ', ') "
            "from pg_depend d join pg_rewrite r on r.oid = d.objid join pg_class c on c.oid = r.ev_class "
            "join pg_namespace ns on ns.oid = c.relnamespace "
            "where d.classid = 'pg_rewrite'::regclass and d.refclassid = 'pg_class'::regclass and d.refobjid = %s "
            "and c.relkind = 'v' and c.oid <> d.refobjid and not (pg_has_role(current_user, c.relowner, 'USAGE') "
            "and has_schema_privilege(current_user, c.relnamespace, 'USAGE') "
            "and has_schema_privilege(current_user, c.relnamespace, 'CREATE')))" % table_regclass)


def _replace_views() -> list:
    """PL/pgSQL: each view _read_views read, over the table that has the name now."""
    return [
        "  FOR i IN 1 .. coalesce(array_length(view_names, 1), 0) LOOP",
        "    EXECUTE format('CREATE OR REPLACE VIEW %s%s AS %s', view_names[i], view_options[i], view_bodies[i]);",
        "  END LOOP;"]


VIEW_VARIABLES = "v record; view_names text[] := '{}'; view_bodies text[] := '{}'; view_options text[] := '{}';"


def _sequence_owned_by(spans: str) -> list:
    """PL/pgSQL: the id sequence (id_sequence, read before the renames) owned by spans.id, so that
    dropping the other table (maintain's retention, the downgrade's drop) never takes it along."""
    return ["  IF id_sequence IS NOT NULL THEN",
            "    EXECUTE format('ALTER SEQUENCE %%s OWNED BY %s.id', id_sequence);" % spans.replace("'", "''"),
            "  END IF;"]


def _rename_indexes(n: SchemaSQL, table_regclass: str, new_name: str, without=()) -> list:
    """PL/pgSQL: rename each index of the table (but its primary key) to the SQL expression new_name over ix.name."""
    return ["  FOR ix IN %s LOOP" % _indexes_of(table_regclass, without),
            "    EXECUTE format('ALTER INDEX %%I.%%I RENAME TO %%I', %s, ix.name, left(%s, 63));"
            % (quote_literal(n.schema), new_name),
            "  END LOOP;"]


# -- the downgrade ------------------------------------------------------------------
#
# Order (docs/revision2-downgrade.md): every refusal first; then the unique
# (id) index the restored primary key needs, built concurrently on the history
# partition; then ONE short switch-back transaction under ACCESS EXCLUSIVE
# (catalog only): every partition detached, the history table is the plain
# otel.spans again, each partition that holds rows an INHERITANCE child of it
# (recorded as CHILD_KIND), the partitioned table dropped. From then on
# otel.spans shows, updates and deletes every row, its children's too, and
# inserts go to it. The rows then move from each child into it in committed
# batches, each under EXCLUSIVE on that child (readers go on; an UPDATE or
# DELETE waits for the batch rather than race it), and each emptied child is
# dropped. The version row stays at the head until the end: an interrupted
# downgrade is finished by rerunning `downgrade`, or by `upgrade`, whose first
# steps (_finish_interrupted_downgrade_steps) move the rest before converting.

CHILD_KIND = "spans child"       # record kind: a former partition, now an inheritance child of the plain spans
OUTLIERS = "spans_outliers"      # a partial upgrade's holding table (LIKE spans): its rows belong in spans
MOVE_LOCK_WAIT_MS = 200          # each batch waits at most this long for its child's lock...
MOVE_LOCK_TRIES = 50             # ...this many times (a pause between), then the run stops (retried, exit 9)


def downgrade_steps(n: SchemaSQL):
    layout = Layout(n)
    index, table, _ = TRACES_START_TIME
    missing_or_invalid = "(%s is null or %s)" % (n.regclass(HISTORY_ID_KEY), n.index_invalid(HISTORY_ID_KEY))
    return [
        Statement(n.create_record_table(), when="%s is null" % n.regclass(RECORD_TABLE)),
        # A partly applied upgrade is undone by these steps alone (plain alembic, repair.undo_partly_applied).
        *_undo_stopped_conversion(n),
        _blockers_refusal(n, layout),
        _duplicate_ids_refusal(n, layout),
        _history_table_step(n, layout),
        Concurrent("DROP INDEX {concurrently}IF EXISTS %s" % n.table(HISTORY_ID_KEY),
                   when="%s and %s" % (layout.converted, n.index_invalid(HISTORY_ID_KEY)),
                   table=LAYOUT.history, lock=Lock.ACCESS_EXCLUSIVE),
        Concurrent("CREATE UNIQUE INDEX {concurrently}IF NOT EXISTS %s ON %s (id)" % (quote(HISTORY_ID_KEY), layout.history),
                   when="%s and %s" % (layout.converted, missing_or_invalid),
                   table=LAYOUT.history, lock=Lock.SHARE, effect=Effect.BUILDS_INDEX),
        _switch_back_step(n, layout),
        # A partial upgrade's leftovers on the plain spans (or an older otelmig's interrupted downgrade).
        Statement("ALTER TABLE %s DROP CONSTRAINT IF EXISTS %s" % (layout.spans, quote(CUTOFF_CHECK)),
                  when="%s and %s" % (layout.plain_spans, layout.check_on("spans")),
                  table="spans", lock=Lock.ACCESS_EXCLUSIVE),
        _adopt_partitioned_step(n, layout, when="%s and %s" % (layout.plain_spans, layout.our_parent)),
        _adopt_outliers_step(n, layout),
        Concurrent("DROP INDEX {concurrently}IF EXISTS %s" % n.table(HISTORY_PKEY),
                   when="%s and %s" % (layout.plain_spans, _plain_index_on(n, HISTORY_PKEY, "spans")),
                   table="spans", lock=Lock.ACCESS_EXCLUSIVE),
        _move_rows_step(n, layout),
        # Concurrently: readers of traces never queue behind the downgrade's last transaction.
        Concurrent("DROP INDEX {concurrently}IF EXISTS %s" % n.table(index),
                   when="%s and %s" % (n.table_exists(index), n.recorded("index", index, "created")),
                   table=table, lock=Lock.ACCESS_EXCLUSIVE),
        Statement("DELETE FROM %s WHERE revision = %s" % (n.record_table(), quote_literal(revision)),
                  when="not %s" % _moving(n, layout)),
    ]


def _finish_interrupted_downgrade_steps(n: SchemaSQL, layout: Layout):
    """The upgrade's first steps: an interrupted downgrade (children of the
    plain spans still holding rows, or an older otelmig's rows left in
    spans_partitioned) is finished, so the conversion starts from the
    baseline's layout with every row in otel.spans."""
    stranded = "%s and %s and not %s" % (layout.plain_spans, layout.our_parent, layout.check_on("spans"))
    return [Statement(n.create_record_table(), when="%s is null" % n.regclass(RECORD_TABLE),
                      condition="if %s.%s is missing" % (n.schema, RECORD_TABLE)),
            _adopt_partitioned_step(n, layout, when=stranded),
            _move_rows_step(n, layout)]


def _relations(n: SchemaSQL, layout: Layout) -> dict:
    """SQL fragments: the partitioned table the downgrade drops (spans
    converted, else a spans_partitioned beside the plain spans), its
    partitions, and the table whose name becomes otel.spans."""
    dropped = "coalesce(case when %s then %s end, %s)" % (layout.converted, n.regclass("spans"), n.regclass(NEW_PARENT))
    heir = "(case when %s then %s else %s end)" % (layout.converted, n.regclass(LAYOUT.history), n.regclass("spans"))
    parts = "(select inhrelid from pg_inherits where inhparent = %s)" % dropped
    return {"dropped": dropped, "heir": heir, "parts": parts,
            "others": "(select inhrelid from pg_inherits where inhparent = %s and inhrelid <> %s)"
                      % (dropped, n.regclass(LAYOUT.history))}


def _blockers_refusal(n: SchemaSQL, layout: Layout) -> Refusal:
    """What would make a later step fail, or be lost with the partitioned
    table: named, each with its fix, before the first change."""
    r = _relations(n, layout)
    dropped, others = r["dropped"], r["others"]
    objects = "(select %s::oid union all %s)" % (dropped, others[1:-1])
    found = "concat_ws('; ', %s)" % ", ".join([
        # views, rules and BEGIN ATOMIC functions over it, foreign keys referencing it
        "(select 'objects that depend on it (drop them, recreate them after the downgrade): ' || "
        "string_agg(distinct case when d.classid = 'pg_rewrite'::regclass then (select %s from pg_rewrite w "
        "where w.oid = d.objid) else (select o.type || ' ' || o.identity "
        "from pg_identify_object(d.classid, d.objid, d.objsubid) o) end, ', ') from pg_depend d "
        "where d.refclassid = 'pg_class'::regclass and d.refobjid in %s and d.deptype = 'n' "
        "and not (d.classid = 'pg_class'::regclass and d.objid in %s) "
        # a plain view of the partitioned spans itself is carried to the plain spans (_read_views)
        "and not (d.refobjid = %s and d.classid = 'pg_rewrite'::regclass and exists (select 1 from pg_rewrite w2 "
        "join pg_class v2 on v2.oid = w2.ev_class where w2.oid = d.objid and w2.rulename = '_RETURN' "
        "and v2.relkind = 'v')) "
        # its own column defaults (generated columns) and constraints go with it
        "and not (d.classid = 'pg_attrdef'::regclass and (select adrelid from pg_attrdef where oid = d.objid) in %s) "
        "and not (d.classid = 'pg_constraint'::regclass and (select conrelid from pg_constraint where oid = d.objid) "
        "in %s))" % (_relation_described("w.ev_class"), objects, objects, dropped, objects, objects),
        "(select 'rules (drop them): ' || string_agg(rulename || ' on ' || %s, ', ') "
        "from pg_rewrite where ev_class in %s and rulename <> '_RETURN')" % (_identity("ev_class"), objects),
        "(select 'triggers (drop them): ' || string_agg(tgname || ' on ' || %s, ', ') "
        "from pg_trigger where tgrelid in %s and not tgisinternal and tgparentid = 0)" % (_identity("tgrelid"), objects),
        "(select 'foreign keys from it (drop them): ' || string_agg(conname, ', ') from pg_constraint "
        "where conrelid = %s and contype = 'f')" % dropped,
        "(select 'row level security policies (drop them): ' || string_agg(polname, ', ') from pg_policy "
        "where polrelid in %s)" % objects,
        "(select 'publications listing it (ALTER PUBLICATION ... DROP TABLE): ' || string_agg(distinct p.pubname, ', ') "
        "from pg_publication_rel x join pg_publication p on p.oid = x.prpubid where x.prrelid in %s)" % objects,
        "(select 'extended statistics (drop them): ' || string_agg(stxname, ', ') from pg_statistic_ext "
        "where stxrelid = %s)" % dropped,
        # ATTACH of the history's part of each index: one the history lacks would be built under the lock
        "(select 'indexes %s has no part of (drop them, or finish them with otelmig repair): ' || "
        "string_agg(c.relname, ', ') from pg_index x join pg_class c on c.oid = x.indexrelid "
        "where x.indrelid = %s and not x.indisprimary "
        "and exists (select 1 from pg_inherits where inhrelid = %s and inhparent = %s) "
        "and not exists (select 1 from pg_inherits i join pg_index hx "
        "on hx.indexrelid = i.inhrelid where i.inhparent = x.indexrelid and hx.indrelid = %s))"
        % (LAYOUT.history, dropped, n.regclass(LAYOUT.history), dropped, n.regclass(LAYOUT.history)),
        # INHERIT needs each of the new spans's CHECK constraints on every child
        "(select 'CHECK constraints that some partitions lack (add them there, or drop them): ' || "
        "string_agg(distinct k.conname || ' (missing on ' || %s || ')', ', ') "
        "from pg_constraint k, pg_class c where k.conrelid = %s and k.contype = 'c' and k.conname <> %s "
        "and c.oid in %s and not exists (select 1 from pg_constraint k2 where k2.conrelid = c.oid "
        "and k2.conname = k.conname and k2.contype = 'c'))" % (_identity("c.oid"), r["heir"], quote_literal(CUTOFF_CHECK),
                                                         others),
        "(select 'views it points back at the plain spans that this role may not replace (run otelmig as their "
        "owner or a member of it, with CREATE on their schema, or drop them and recreate them after): ' || %s)"
        % _views_not_replaceable(dropped),
        "(select 'a relation named %s that is not the index the downgrade builds (rename it)' "
        "from pg_class c where c.oid = %s and not exists (select 1 from pg_index x where x.indexrelid = c.oid "
        "and x.indrelid = %s and x.indisunique))" % (HISTORY_ID_KEY, n.regclass(HISTORY_ID_KEY), n.regclass(LAYOUT.history)),
        "(select 'a relation named %s, the name the partitioned table takes for a moment in the switch-back "
        "(rename it)' where %s and %s is not null)" % (NEW_PARENT, n.is_partitioned("spans"), n.regclass(NEW_PARENT)),
    ])
    return Refusal(when="%s is not null and %s <> ''" % (dropped, found), table="spans", detail=found, message=(
        "the downgrade of %s.spans from time partitions would stop half way, or lose what is attached to the "
        "partitioned table; nothing was changed: " % n.schema))


def _identity(relation_oid: str) -> str:
    """SQL: a relation's schema-qualified name, whatever the search_path."""
    return "(pg_identify_object('pg_class'::regclass, %s, 0)).identity" % relation_oid


def _relation_described(relation_oid: str) -> str:
    """SQL: 'view otel.x' (its kind and qualified name)."""
    return "(select o.type || ' ' || o.identity from pg_identify_object('pg_class'::regclass, %s, 0) o)" % relation_oid


def _duplicate_ids_refusal(n: SchemaSQL, layout: Layout) -> Refusal:
    """The restored primary key is (id); the head's (id, start_time) lets two
    spans share an id on different days. Asked while otel.spans shows every row
    (converted, or its children not yet moved)."""
    duplicates = ("(select string_agg(id::text, ', ') from (select id from %s group by id having count(*) > 1 "
                  "order by id limit 5) d)" % layout.spans)
    return Refusal(
        when="(%s or %s) and %s is not null" % (layout.converted, _moving(n, layout), duplicates),
        table="spans", detail=duplicates, message=(
            "%s.spans holds spans that share an id (the head's key is (id, start_time); the baseline's primary key "
            "is (id)), so the downgrade would stop half way; nothing was changed: give the extra copies new ids "
            "(UPDATE %s SET id = nextval(pg_get_serial_sequence('%s', 'id')) WHERE ...) or delete them, then rerun; "
            "ids shared (at most 5): " % (n.schema, layout.spans, layout.spans.replace("'", "''"))))


def _moving(n: SchemaSQL, layout: Layout) -> str:
    """SQL: the plain spans has a child this revision's downgrade made (rows may still be moving out of it)."""
    return "exists (select 1 from (%s) c)" % _children_query(n)


def _children_query(n: SchemaSQL) -> str:
    """SQL: (rel, name) of each inheritance child of the plain spans recorded as CHILD_KIND."""
    return ("select c.oid::regclass as rel, c.relname::text as name from pg_inherits i join pg_class c "
            "on c.oid = i.inhrelid where i.inhparent = %s and exists (select 1 from %s r where r.object_kind = %s "
            "and r.object_name = c.relname::text) order by 2"
            % (n.regclass("spans"), n.record_table(), quote_literal(CHILD_KIND)))


def _plain_index_on(n: SchemaSQL, index: str, table: str) -> str:
    """SQL: `index` is an index of `table` that no constraint owns."""
    return ("exists (select 1 from pg_index x where x.indexrelid = %s and x.indrelid = %s) and not exists "
            "(select 1 from pg_constraint where conindid = %s)" % (n.regclass(index), n.regclass(table), n.regclass(index)))


def _history_table_step(n: SchemaSQL, layout: Layout) -> Statement:
    """The history partition may be gone (maintain dropped it when it left the
    window): an empty plain table takes its place (the switch-back gives it the
    partitioned table's indexes, owner and grants; its CHECK constraints come
    with LIKE, as a partition has them)."""
    sql = ("CREATE TABLE %s (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING GENERATED)"
           % (layout.history, layout.spans))
    return Statement(sql, when="%s and %s is null" % (layout.converted, n.regclass(LAYOUT.history)))


def _record_child(n: SchemaSQL, name_sql: str) -> str:
    return ("INSERT INTO %s (revision, object_kind, object_name, origin) VALUES (%s, %s, %s, 'created') "
            "ON CONFLICT (object_kind, object_name) DO NOTHING"
            % (n.record_table(), quote_literal(revision), quote_literal(CHILD_KIND), name_sql))


def _set_on_the_partitioned_spans(n: SchemaSQL) -> str:
    """SQL: the statements (text[]) that give the plain spans, once the history
    table has its name, what was set on the partitioned spans since the
    conversion and would go with it: column privileges (a worker granted
    INSERT on some columns only must still write), column comments (as they
    are there, none included), statistics targets, row level security and
    replica identity, column options (n_distinct), comments on its indexes and
    constraints (each has a namesake on the plain spans: the indexes take their
    names back, the primary key is spans_pkey, the CHECKs are inherited).
    Read before the partitioned table is dropped."""
    spans = n.regclass("spans")
    target = quote_literal(n.table("spans"))
    columns = "from pg_attribute a where a.attrelid = %s and a.attnum > 0 and not a.attisdropped" % spans
    grants = ("select format('GRANT %%s (%%I) ON ' || %s || ' TO %%s', x.privilege_type, a.attname, "
              "case when x.grantee = 0 then 'PUBLIC' else quote_ident(pg_get_userbyid(x.grantee)) end) "
              "|| case when x.is_grantable then ' WITH GRANT OPTION' else '' end "
              "from pg_attribute a, aclexplode(a.attacl) x where a.attrelid = %s and a.attnum > 0 "
              "and not a.attisdropped" % (target, spans))
    comments = ("select format('COMMENT ON COLUMN ' || %s || '.%%I IS %%L', a.attname, col_description(a.attrelid, "
                "a.attnum)) %s" % (target, columns))
    statistics = ("select format('ALTER TABLE ' || %s || ' ALTER COLUMN %%I SET STATISTICS %%s', a.attname, "
                  "a.attstattarget) %s and a.attstattarget >= 0" % (target, columns))
    options = ("select format('ALTER TABLE ' || %s || ' ALTER COLUMN %%I SET (%%s)', a.attname, "
               "array_to_string(a.attoptions, ', ')) %s and a.attoptions is not null" % (target, columns))
    index_comments = ("select format('COMMENT ON INDEX %%I.%%I IS %%L', s.nspname, case when x.indisprimary "
                      "then 'spans_pkey' else i.relname::text end, "
                      "obj_description(i.oid, 'pg_class')) from pg_index x join pg_class i on i.oid = x.indexrelid "
                      "join pg_namespace s on s.oid = i.relnamespace where x.indrelid = %s "
                      "and obj_description(i.oid, 'pg_class') is not null" % spans)
    constraint_comments = (
        "select format('COMMENT ON CONSTRAINT %%I ON ' || %s || ' IS %%L', case when k.contype = 'p' "
        "then 'spans_pkey' else k.conname::text end, obj_description(k.oid, 'pg_constraint')) from pg_constraint k "
        "where k.conrelid = %s and obj_description(k.oid, 'pg_constraint') is not null and (k.contype in ('p', 'u') or "
        "exists (select 1 from pg_constraint h where h.conrelid = %s and h.conname = k.conname))"
        % (target, spans, n.regclass(LAYOUT.history)))
    table = "from pg_class c where c.oid = %s" % spans
    security = ("select 'ALTER TABLE ' || %s || ' ENABLE ROW LEVEL SECURITY' %s and c.relrowsecurity "
                "union all select 'ALTER TABLE ' || %s || ' FORCE ROW LEVEL SECURITY' %s and c.relforcerowsecurity"
                % (target, table, target, table))
    identity = ("select 'ALTER TABLE ' || %s || ' REPLICA IDENTITY ' || case c.relreplident when 'f' then 'FULL' "
                "when 'n' then 'NOTHING' else 'USING INDEX ' || quote_ident((select i.relname from pg_index x "
                "join pg_class i on i.oid = x.indexrelid where x.indrelid = c.oid and x.indisreplident)) end "
                "%s and c.relreplident <> 'd'" % (target, table))
    return "array(%s)" % " union all ".join(
        "(%s)" % query for query in (grants, comments, statistics, options, index_comments, constraint_comments,
                                     security, identity))


def _switch_back_step(n: SchemaSQL, layout: Layout) -> Statement:
    """One transaction, catalog only: the history table becomes the plain
    otel.spans again, every partition holding rows an inheritance child of it."""
    spans, history = layout.spans, layout.history
    in_format = spans.replace("'", "''")  # inside a format() string literal
    lines = [
        "DO $switch_back$",
        "DECLARE id_sequence text := pg_get_serial_sequence(%s, 'id'); ix record; part record; g record;"
        % quote_literal(spans),
        "  names text[] := '{}'; uniques text[] := '{}'; bodies text[] := '{}'; own_parts regclass[] := '{}';",
        "  children regclass[] := '{}';",
        "  child regclass; owner_name text; note text; has_rows boolean; carried text[]; statement text; %s"
        % VIEW_VARIABLES,
        "BEGIN",
        "  LOCK TABLE %s IN ACCESS EXCLUSIVE MODE;" % spans,
        # Each index of the partitioned table and the history's part of it, which takes its name back.
        "  FOR ix IN SELECT c.relname::text AS name, CASE WHEN x.indisunique THEN 'UNIQUE ' ELSE '' END AS uniq,",
        "      substring(pg_get_indexdef(x.indexrelid) from ' USING .*$') AS body,",
        "      (SELECT i.inhrelid::regclass FROM pg_inherits i JOIN pg_index hx ON hx.indexrelid = i.inhrelid",
        "       WHERE i.inhparent = x.indexrelid AND hx.indrelid = %s) AS part" % n.regclass(LAYOUT.history),
        "      FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid",
        "      WHERE x.indrelid = %s AND NOT x.indisprimary ORDER BY 1 LOOP" % n.regclass("spans"),
        "    names := names || ix.name; uniques := uniques || ix.uniq; bodies := bodies || ix.body;",
        "    own_parts := own_parts || ix.part;",
        "  END LOOP;",
        "  owner_name := (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = %s);" % n.regclass("spans"),
        "  note := obj_description(%s, 'pg_class');" % n.regclass("spans"),
        # Grants made on the partitioned table since the conversion go to the table that stays.
        "  FOR g IN SELECT a.privilege_type, a.is_grantable, CASE WHEN a.grantee = 0 THEN 'PUBLIC' "
        "ELSE quote_ident(pg_get_userbyid(a.grantee)) END AS grantee",
        "      FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = %s AND a.grantee <> c.relowner LOOP"
        % n.regclass("spans"),
        "    EXECUTE format('GRANT %%s ON %s TO %%s', g.privilege_type, g.grantee)" % history.replace("'", "''"),
        "      || CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END;",
        "  END LOOP;",
        # Detached: the history, and each partition holding rows (recorded: a rerun, or an upgrade,
        # finds it); an empty one is dropped with the partitioned table.
        "  FOR part IN SELECT i.inhrelid::regclass AS rel, c.relname::text AS name FROM pg_inherits i",
        "      JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s ORDER BY 2 LOOP" % n.regclass("spans"),
        "    has_rows := true;",
        "    IF part.name <> %s THEN" % quote_literal(LAYOUT.history),
        "      EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', part.rel) INTO has_rows;",
        "    END IF;",
        "    CONTINUE WHEN NOT has_rows;",
        "    EXECUTE format('ALTER TABLE %s DETACH PARTITION %%s', part.rel);" % in_format,
        "    IF part.name <> %s THEN" % quote_literal(LAYOUT.history),
        "      %s;" % _record_child(n, "part.name"),
        "      children := children || part.rel;",
        "    END IF;",
        "  END LOOP;",
        "  carried := %s;" % _set_on_the_partitioned_spans(n),
        # The table that stays takes the partitioned table's owner first (an ALTER TABLE ... OWNER
        # since the conversion re-owned it and its sequence): a sequence is owned by its table's owner.
        "  IF (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = %s) <> owner_name THEN"
        % n.regclass(LAYOUT.history),
        "    EXECUTE format('ALTER TABLE %s OWNER TO %%I', owner_name);" % history.replace("'", "''"),
        "  END IF;",
        "  IF id_sequence IS NOT NULL THEN  -- so that dropping the partitioned table keeps it",
        "    EXECUTE format('ALTER SEQUENCE %%s OWNED BY %s.id', id_sequence);" % history.replace("'", "''"),
        "  END IF;",
    ] + _read_views(n.regclass("spans")) + [
        # The partitioned table steps aside (its views follow it by oid) until they read the plain spans.
        "  ALTER TABLE %s RENAME TO %s;" % (spans, quote(NEW_PARENT)),
        "  ALTER TABLE %s DROP CONSTRAINT IF EXISTS %s;" % (history, quote(HISTORY_PKEY)),
        "  ALTER TABLE %s RENAME TO spans;" % history,
    ] + _replace_views() + [
        "  DROP TABLE %s;" % layout.parent,
        "  ALTER TABLE %s ADD CONSTRAINT spans_pkey PRIMARY KEY USING INDEX %s;" % (spans, quote(HISTORY_ID_KEY)),
        "  IF (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = %s) <> owner_name THEN" % n.regclass("spans"),
        "    EXECUTE format('ALTER TABLE %s OWNER TO %%I', owner_name);" % in_format,
        "  END IF;",
        # The history's part of each index takes the index's name; one it has no part of (the history
        # was dropped and is recreated empty: refused otherwise) is built, at once on the empty table.
        "  FOR i IN 1 .. coalesce(array_length(names, 1), 0) LOOP",
        "    IF own_parts[i] IS NOT NULL THEN",
        "      EXECUTE format('ALTER INDEX %s RENAME TO %I', own_parts[i], names[i]);",
        "    ELSE",
        "      EXECUTE format('CREATE %%sINDEX %%I ON %s', uniques[i], names[i]) || bodies[i];" % in_format,
        "    END IF;",
        "  END LOOP;",
        "  IF note IS NOT NULL THEN",
        "    EXECUTE format('COMMENT ON TABLE %s IS %%L', note);" % in_format,
        "  END IF;",
        # A setting whose object the plain spans does not have (a UNIQUE constraint of an index
        # rebuilt on an empty history is an index only) is named, never a switch that cannot finish.
        "  FOREACH statement IN ARRAY carried LOOP",
        "    BEGIN",
        "      EXECUTE statement;",
        "    EXCEPTION WHEN undefined_object OR undefined_table OR undefined_column THEN",
        "      RAISE NOTICE 'otelmig: not carried to the plain spans (its object is not there): %', statement;",
        "    END;",
        "  END LOOP;",
        "  FOREACH child IN ARRAY children LOOP",
        "    EXECUTE format('ALTER TABLE %%s INHERIT %s', child);" % in_format,
        "  END LOOP;",
        "END",
        "$switch_back$"]
    return Statement("\n".join(lines), when=layout.converted, table="spans", lock=Lock.ACCESS_EXCLUSIVE,
                     label="switch back: every partition detached, the history table is otel.spans again with "
                           "primary key (id), each partition holding rows an inheritance child of it (its rows "
                           "stay visible), the partitioned table dropped")


def _adopt_partitioned_step(n: SchemaSQL, layout: Layout, when: str) -> Statement:
    """A spans_partitioned beside the plain spans (a partial upgrade's, empty;
    or an older otelmig's interrupted downgrade, holding rows): each partition
    holding rows becomes a child of spans (its rows visible there at once),
    and the partitioned table goes with its empty partitions."""
    parent = layout.parent
    lines = [
        "DO $adopt$",
        "DECLARE id_sequence text := pg_get_serial_sequence(%s, 'id'); part record; has_rows boolean;"
        % quote_literal(parent),
        "  children regclass[] := '{}'; child regclass;",
        "BEGIN",
        "  LOCK TABLE %s, %s IN ACCESS EXCLUSIVE MODE;" % (layout.spans, parent),
        "  FOR part IN SELECT i.inhrelid::regclass AS rel, c.relname::text AS name FROM pg_inherits i",
        "      JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s ORDER BY 2 LOOP" % n.regclass(NEW_PARENT),
        "    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', part.rel) INTO has_rows;",
        "    CONTINUE WHEN NOT has_rows;",
        "    EXECUTE format('ALTER TABLE %s DETACH PARTITION %%s', part.rel);" % parent.replace("'", "''"),
        "    %s;" % _record_child(n, "part.name"),
        "    children := children || part.rel;",
        "  END LOOP;",
        "  IF id_sequence IS NOT NULL THEN",
        "    EXECUTE format('ALTER SEQUENCE %%s OWNED BY %s.id', id_sequence);" % layout.spans.replace("'", "''"),
        "  END IF;",
        "  DROP TABLE %s;" % parent,
        "  FOREACH child IN ARRAY children LOOP",
        "    EXECUTE format('ALTER TABLE %%s INHERIT %s', child);" % layout.spans.replace("'", "''"),
        "  END LOOP;",
        "END",
        "$adopt$"]
    return Statement("\n".join(lines), when=when, table=NEW_PARENT, lock=Lock.ACCESS_EXCLUSIVE,
                     condition=STOPPED_RUN + "%s.%s beside a plain %s.spans" % (n.schema, NEW_PARENT, n.schema),
                     label="%s dropped; each of its partitions holding rows an inheritance child of spans"
                           % NEW_PARENT)


def _adopt_outliers_step(n: SchemaSQL, layout: Layout) -> Statement:
    """A partial upgrade's holding table beside the plain spans: its rows go
    back to spans (a child of it until moved), an empty one is dropped."""
    outliers, spans = n.table(OUTLIERS), layout.spans
    standalone = ("exists (select 1 from pg_class where oid = %s and relkind = 'r' and not relispartition) "
                  "and not exists (select 1 from pg_inherits where inhrelid = %s) and not %s"
                  % (n.regclass(OUTLIERS), n.regclass(OUTLIERS), n.recorded("table", OUTLIERS, "found")))
    lines = [
        "DO $outliers$",
        "BEGIN",
        "  LOCK TABLE %s, %s IN ACCESS EXCLUSIVE MODE;" % (spans, outliers),
        "  IF EXISTS (SELECT 1 FROM %s) THEN" % outliers,
        "    %s;" % _record_child(n, quote_literal(OUTLIERS)),
        "    ALTER TABLE %s INHERIT %s;" % (outliers, spans),
        "  ELSE",
        "    DROP TABLE %s;" % outliers,
        "  END IF;",
        "END",
        "$outliers$"]
    return Statement("\n".join(lines), when="%s and %s" % (layout.plain_spans, standalone), table=OUTLIERS,
                     lock=Lock.ACCESS_EXCLUSIVE, label="%s: its rows back into spans (a child until moved)" % OUTLIERS)


def _move_rows_step(n: SchemaSQL, layout: Layout) -> Concurrent:
    """The rows of each child of the plain spans into spans itself, BATCH_ROWS
    per committed transaction, each under EXCLUSIVE on the child: readers go
    on (they see each row once, in the child or in spans), an UPDATE or DELETE
    through spans waits for the batch instead of racing it (under READ
    COMMITTED it would miss the moved row: the write would be lost). The lock
    is waited for MOVE_LOCK_WAIT_MS at a time, so a writer queues behind a
    waiting batch no longer than that. After each batch, holding no lock, it
    pauses while a connected standby's replay lag exceeds
    OTELMIG_MAX_REPLICA_LAG (otelmig/replicas.py). An emptied child is dropped.

    Runs outside the revision's transaction (it commits as it goes): its
    table is the record, which holds rows whenever a child is recorded."""
    spans_literal = layout.spans.replace("'", "''")
    shown = ("%s.spans" % n.schema).replace("'", "''").replace("%", "%%")
    move = ("WITH moved AS (DELETE FROM ONLY %%1$s WHERE ctid = ANY (ARRAY(SELECT ctid FROM ONLY %%1$s LIMIT %d)) "
            "RETURNING %%2$s) INSERT INTO %s (%%2$s) SELECT %%2$s FROM moved" % (BATCH_ROWS, spans_literal))
    lines = [
        "DO $move$",
        "DECLARE child record; moved bigint; total bigint := 0; columns text;",
        "BEGIN",
        # Generated columns are computed by spans itself, never inserted.
        "  SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO columns FROM pg_attribute",
        "    WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped AND attgenerated = '';" % n.regclass("spans"),
        "  FOR child IN %s LOOP" % _children_query(n),
        "    LOOP",
    ] + _lock_with_retries("child.rel", "EXCLUSIVE") + [
        "      EXECUTE format(%s, child.rel, columns);" % quote_literal(move),
        "      GET DIAGNOSTICS moved = ROW_COUNT;",
        "      EXIT WHEN moved = 0;",
        "      total := total + moved;",
        # otelmig relays these as progress (replicas.relay_pause_notices), one every few seconds and the total.
        "      RAISE NOTICE 'otelmig: moved %% rows back into %s', total;" % shown,
        "      COMMIT;",
        # no lock held here: wait while a connected standby lags (OTELMIG_MAX_REPLICA_LAG)
    ] + replicas.pause_lines("      ") + [
        "    END LOOP;",
        "    COMMIT;",
    ] + _lock_with_retries("child.rel", "ACCESS EXCLUSIVE") + [
        "    EXECUTE format('DROP TABLE %s', child.rel);",
        "    DELETE FROM %s WHERE object_kind = %s AND object_name = child.name;"
        % (n.record_table(), quote_literal(CHILD_KIND)),
        "    COMMIT;",
        "  END LOOP;",
        "  IF total > 0 THEN",
        "    RAISE NOTICE 'otelmig: moved %% rows back into %s in all', total;" % shown,
        "  END IF;",
        "END",
        "$move$"]
    return Concurrent("\n".join(lines), when=_moving(n, layout), table=RECORD_TABLE,
                      lock=Lock.ROW_EXCLUSIVE, effect=Effect.WRITES_ROWS,
                      condition=STOPPED_RUN + "rows in children of %s.spans (an interrupted downgrade)" % n.schema,
                      label="the rows of each child of spans into spans, %d per committed batch under EXCLUSIVE on "
                            "the child; each emptied child dropped" % BATCH_ROWS)


def _lock_with_retries(table_sql: str, mode: str) -> list:
    """PL/pgSQL: LOCK the table, waiting MOVE_LOCK_WAIT_MS at a time (a
    writer never queues behind this request longer), MOVE_LOCK_TRIES times,
    then give up with lock_not_available (the CLI retries, then exit 9)."""
    return [
        "      FOR attempt IN 1 .. %d LOOP" % MOVE_LOCK_TRIES,
        "        BEGIN",
        "          PERFORM set_config('lock_timeout', '%dms', true);" % MOVE_LOCK_WAIT_MS,
        "          EXECUTE format('LOCK TABLE %%s IN %s MODE', %s);" % (mode, table_sql),
        "          EXIT;",
        "        EXCEPTION WHEN lock_not_available THEN",
        "          IF attempt = %d THEN RAISE; END IF;" % MOVE_LOCK_TRIES,
        "          PERFORM pg_sleep(0.05 + random() * 0.1);",
        "        END;",
        "      END LOOP;"]


def upgrade():
    migration_api.run(upgrade_steps)


def downgrade():
    migration_api.run(downgrade_steps)
