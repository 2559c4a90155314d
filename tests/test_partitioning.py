"""Revision 2: otel.spans converted to daily time partitions in place.

The revision kit (tests/test_revision_kit.py) runs the general checks over it
(up/down/up, offline = online, plan = online, a crash after every statement);
these are the ones particular to the conversion: the worker writing and
reading through it, where rows land, what carries over to the new table (the
operator's indexes, privileges, ownership), what is refused, and the way back.
"""

import datetime
import importlib
import threading

from conftest import connect, load_legacy, run_cli, sql
from adoption_stores import unique_name
from helpers import BASELINE, one_line, verify_ok
from otelmig.schema import SPANS_PARTITIONING as LAYOUT

REV2 = importlib.import_module("otelmig.migrations.versions.826630e38563_partition_spans")

PARTITIONS_SQL = """
select c.relname::text, pg_get_expr(c.relpartbound, c.oid)
from pg_inherits i join pg_class c on c.oid = i.inhrelid
where i.inhparent = 'otel.spans'::regclass order by 1"""


def partitions(url):
    return dict(sql(url, PARTITIONS_SQL))


def partition_of(url, span_id):
    return sql(url, "select tableoid::regclass::text from otel.spans where span_id = %s", (span_id,))[0][0]


def insert(url, span_id, start_time):
    sql(url, "insert into otel.spans (trace_id, span_id, name, service_name, start_time) "
             "values ('t-' || %s, %s, 'op', 'svc', %s)", (span_id, span_id, start_time))


def utc_today(url):
    return sql(url, "select (now() at time zone 'UTC')::date")[0][0]


def test_the_legacy_table_becomes_the_history_partition_with_every_row(db_url):
    load_legacy(db_url, traces=300)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    oid = sql(db_url, "select 'otel.spans'::regclass::oid")[0][0]
    before = sql(db_url, "select id, trace_id, span_id, start_time from otel.spans order by id")
    result = run_cli("upgrade", url=db_url)
    assert result.code == 0, result.err
    assert sql(db_url, "select relkind::text from pg_class where oid = 'otel.spans'::regclass") == [["p"]]
    # not copied: the very table that held the rows is the history partition
    assert sql(db_url, "select 'otel.%s'::regclass::oid" % LAYOUT.history)[0][0] == oid
    assert sql(db_url, "select id, trace_id, span_id, start_time from otel.spans order by id") == before
    found = partitions(db_url)
    assert found[LAYOUT.default] == "DEFAULT"
    assert found[LAYOUT.history].startswith("FOR VALUES FROM (MINVALUE) TO (")
    today = utc_today(db_url)
    for day in range(LAYOUT.ahead_days + 1):
        name = LAYOUT.day_partition(today + datetime.timedelta(days=day))
        assert name in found or day < 2, (name, sorted(found))  # today and tomorrow may be in the history
    verify_ok(db_url)
    assert run_cli("check", url=db_url).code == 0


def test_rows_land_by_start_time_and_none_is_rejected(db_url):
    load_legacy(db_url, traces=20)
    assert run_cli("upgrade", url=db_url).code == 0
    cutoff = sql(db_url, "select substring(pg_get_expr(relpartbound, oid) from 'TO \\(''(.*)''\\)')::timestamptz "
                         "from pg_class where oid = 'otel.%s'::regclass" % LAYOUT.history)[0][0]
    insert(db_url, "old", "2001-01-01 00:00+00")
    insert(db_url, "now", sql(db_url, "select now()")[0][0])
    insert(db_url, "after", cutoff + datetime.timedelta(hours=1))
    insert(db_url, "skewed", "2999-01-01 00:00+00")
    assert partition_of(db_url, "old") == "otel." + LAYOUT.history
    assert partition_of(db_url, "now") == "otel." + LAYOUT.history  # the cutoff is at least a day ahead
    # the partitions are UTC days, whatever the session's zone shows the cutoff in
    assert partition_of(db_url, "after") == "otel." + LAYOUT.day_partition(
        cutoff.astimezone(datetime.timezone.utc).date())
    assert partition_of(db_url, "skewed") == "otel." + LAYOUT.default
    # the worker's reads: by trace_id and by service and time, through the parent's indexes
    assert sql(db_url, "select span_id from otel.spans where trace_id = 't-after'") == [["after"]]
    plan = "\n".join(r[0] for r in sql(db_url, "explain select * from otel.spans where trace_id = 't-after'"))
    assert "ix_spans_trace_id" in plan or "trace_id_idx" in plan, plan


def test_a_span_newer_than_today_lands_in_its_day_and_the_cutoff_comes_from_the_clock(db_url):
    """Issue 19 item 3: a future-dated span no longer moves the cutoff (which once
    switched partitioning off for as long): it goes to its own day partition, and
    the history ends at the UTC midnight MARGIN_DAYS after today, whatever the rows hold."""
    load_legacy(db_url, traces=10)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    today = sql(db_url, "select date_trunc('day', now() at time zone 'UTC')")[0][0]
    skewed = sql(db_url, "select (%s::timestamp + interval '4 days 5 hours') at time zone 'UTC'", (today,))[0][0]
    insert(db_url, "ahead", skewed)
    assert run_cli("upgrade", url=db_url).code == 0
    day = today + datetime.timedelta(days=4)
    assert partition_of(db_url, "ahead") == "otel.%s%s" % (LAYOUT.day_prefix, day.strftime("%Y%m%d"))
    bound = partitions(db_url)[LAYOUT.history]
    cutoff = sql(db_url, "select (%s::timestamptz at time zone 'UTC')", (bound.split("TO ('")[1].split("')")[0],))[0][0]
    assert cutoff == today + datetime.timedelta(days=REV2.MARGIN_DAYS)
    verify_ok(db_url)


def test_the_worker_writes_and_reads_through_the_conversion(db_url):
    load_legacy(db_url, traces=3000)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    before = sql(db_url, "select count(*) from otel.spans")[0][0]
    stop, errors, written, reads = threading.Event(), [], [], [0]

    def writer():
        conn = connect(db_url)
        cursor = conn.cursor()
        try:
            while not stop.is_set():
                span_id = "w%d" % len(written)
                cursor.execute("insert into otel.spans (trace_id, span_id, name, service_name, start_time) "
                               "values ('w', %s, 'w', 'w', now())", (span_id,))
                written.append(span_id)
                stop.wait(0.01)
        except Exception as exc:  # any failed insert is a lost span
            errors.append(("writer", exc))
        finally:
            conn.close()

    def reader():
        conn = connect(db_url)
        cursor = conn.cursor()
        try:
            while not stop.is_set():
                cursor.execute("select count(*) from otel.spans where trace_id = 'w'")
                cursor.fetchall()
                cursor.execute("select count(*) from otel.spans where service_name = 'w' "
                               "and start_time > now() - interval '1 hour'")
                cursor.fetchall()
                reads[0] += 1
                stop.wait(0.05)
        except Exception as exc:
            errors.append(("reader", exc))
        finally:
            conn.close()

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    try:
        result = run_cli("upgrade", url=db_url)
        stop.wait(0.3)  # a few more writes and reads after the switch
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert result.code == 0, result.err
    assert errors == []
    assert written and reads[0] > 0
    assert sql(db_url, "select count(*) from otel.spans")[0][0] == before + len(written)
    assert sql(db_url, "select count(*) from otel.spans where trace_id = 'w'") == [[len(written)]]
    verify_ok(db_url)


def test_privileges_owner_and_the_operators_indexes_carry_over(db_url):
    load_legacy(db_url, traces=20)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    worker = unique_name("worker")
    sql(db_url, "create role %s login password 'w-pw'" % worker)
    sql(db_url, "grant usage on schema otel to %s" % worker)
    sql(db_url, "grant select, insert on otel.spans to %s" % worker)
    sql(db_url, "grant usage on sequence otel.spans_id_seq to %s" % worker)
    sql(db_url, "create index ops_spans_tenant on otel.spans (tenant_id) where tenant_id is not null")
    try:
        assert run_cli("upgrade", url=db_url).code == 0
        grants = sql(db_url, "select privilege_type from information_schema.role_table_grants "
                             "where table_schema = 'otel' and table_name = 'spans' and grantee = %s order by 1",
                     (worker,))
        assert grants == [["INSERT"], ["SELECT"]]
        owners = sql(db_url, "select distinct pg_get_userbyid(relowner) from pg_class where oid = 'otel.spans'::regclass "
                             "or oid in (select inhrelid from pg_inherits where inhparent = 'otel.spans'::regclass)")
        assert len(owners) == 1
        index = sql(db_url, "select pg_get_indexdef('otel.ops_spans_tenant'::regclass)")[0][0]
        assert "ON ONLY otel.spans" in index and "WHERE (tenant_id IS NOT NULL)" in index
        report = verify_ok(db_url)
        assert "otel.ops_spans_tenant" in [e["object"] for e in report["extras"]]
        # back: the plain table keeps the operator's index under its own name
        assert run_cli("downgrade", BASELINE, url=db_url).code == 0
        index = sql(db_url, "select pg_get_indexdef('otel.ops_spans_tenant'::regclass)")[0][0]
        assert "ON otel.spans USING btree (tenant_id)" in index
    finally:
        sql(db_url, "drop owned by %s" % worker)
        sql(db_url, "drop role %s" % worker)


def test_what_would_not_carry_over_is_refused_and_nothing_changes(db_url):
    load_legacy(db_url, traces=5)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    publication = unique_name("pub")
    setups = [
        ("triggers: keep_it", ["create function otel.keep() returns trigger language plpgsql as "
                               "'begin return new; end'", "create trigger keep_it before insert on otel.spans "
                               "for each row execute function otel.keep()"]),
        ("unique indexes besides the primary key: spans_uniq",
         ["create unique index spans_uniq on otel.spans (span_id, id)"]),
        ("publications: %s" % publication, ["create publication %s for table otel.spans" % publication]),
        ("row level security", ["alter table otel.spans enable row level security"]),
        ("foreign keys referencing it", ["create table otel.span_links (span_id bigint references otel.spans (id))"]),
    ]
    for expected, setup in setups:  # each added to the ones before: every one is named
        for statement in setup:
            sql(db_url, statement)
        result = run_cli("upgrade", url=db_url)
        assert result.code == 8 and one_line(result.err) and expected in result.err, (expected, result.err)
        assert sql(db_url, "select version_num from otel.alembic_version") == [[BASELINE]]
        assert sql(db_url, "select relkind::text from pg_class where oid = 'otel.spans'::regclass") == [["r"]]
        assert sql(db_url, "select to_regclass('otel.spans_partitioned')") == [[None]]
    sql(db_url, "drop publication %s" % publication)


def test_an_owner_who_may_not_create_in_the_schema_is_refused(server, db_url):
    load_legacy(db_url, traces=5)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    owner = unique_name("owner")
    sql(db_url, "create role %s" % owner)
    sql(db_url, "alter table otel.spans owner to %s" % owner)
    try:
        result = run_cli("upgrade", url=db_url)
        assert result.code == 8 and one_line(result.err), result.err
        assert "GRANT CREATE ON SCHEMA" in result.err and owner in result.err
        sql(db_url, "grant create on schema otel to %s" % owner)
        assert run_cli("upgrade", url=db_url).code == 0
        assert sql(db_url, "select pg_get_userbyid(relowner) from pg_class where oid = 'otel.spans'::regclass") \
            == [[owner]]
    finally:
        sql(db_url, "drop schema otel cascade")
        sql(db_url, "drop owned by %s" % owner)
        sql(db_url, "drop role %s" % owner)


def test_identity_id_is_refused(db_url):
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    sql(db_url, "alter table otel.spans alter column id drop default")
    sql(db_url, "alter table otel.spans alter column id add generated by default as identity")
    result = run_cli("upgrade", url=db_url)
    assert result.code == 8 and one_line(result.err) and "identity" in result.err, result.err


def test_downgrade_moves_every_row_back_even_after_the_history_partition_was_dropped(db_url):
    load_legacy(db_url, traces=50)
    assert run_cli("upgrade", url=db_url).code == 0
    cutoff = sql(db_url, "select substring(pg_get_expr(relpartbound, oid) from 'TO \\(''(.*)''\\)')::timestamptz "
                         "from pg_class where oid = 'otel.%s'::regclass" % LAYOUT.history)[0][0]
    for n in range(25):
        insert(db_url, "day%d" % n, cutoff + datetime.timedelta(hours=n))  # two day partitions
    insert(db_url, "late", "2999-01-01 00:00+00")  # the default partition
    everything = sql(db_url, "select id, span_id, start_time from otel.spans order by id")
    result = run_cli("downgrade", BASELINE, url=db_url)
    assert result.code == 0, result.err
    assert sql(db_url, "select relkind::text from pg_class where oid = 'otel.spans'::regclass") == [["r"]]
    assert sql(db_url, "select id, span_id, start_time from otel.spans order by id") == everything
    assert sql(db_url, "select to_regclass('otel.spans_partitioned')") == [[None]]
    assert sql(db_url, "select conname::text from pg_constraint where conrelid = 'otel.spans'::regclass "
                       "and contype = 'p'") == [["spans_pkey"]]
    insert(db_url, "after-rollback", "2020-01-01 00:00+00")  # the sequence still feeds id
    assert run_cli("check", url=db_url).code == 5  # behind the head, nothing else wrong
    # and when maintain had dropped the history partition (its rows left the window)
    assert run_cli("upgrade", url=db_url).code == 0
    sql(db_url, "alter table otel.spans detach partition otel.%s" % LAYOUT.history)
    sql(db_url, "drop table otel.%s" % LAYOUT.history)
    insert(db_url, "kept", cutoff + datetime.timedelta(hours=3))
    kept = sql(db_url, "select id, span_id from otel.spans order by id")
    assert run_cli("downgrade", BASELINE, url=db_url).code == 0
    assert sql(db_url, "select id, span_id from otel.spans order by id") == kept
    assert run_cli("upgrade", url=db_url).code == 0
    verify_ok(db_url)


def test_plan_shows_the_conversion_with_its_locks_and_scans(db_url):
    load_legacy(db_url, traces=200)
    assert run_cli("upgrade", BASELINE, url=db_url).code == 0
    sql(db_url, "analyze otel.spans")
    text = run_cli("plan", url=db_url)
    assert text.code == 5
    lines = text.out.split("\nrevision ", 1)[1].splitlines()  # the statements, after the summary

    def lock_of(fragment):
        at = next(i for i, line in enumerate(lines) if fragment in line)
        return lines[at + 1]

    assert lock_of("CREATE UNIQUE INDEX CONCURRENTLY").startswith("      lock: SHARE UPDATE EXCLUSIVE; builds an index")
    assert "~1000 rows" in lock_of("CREATE UNIQUE INDEX CONCURRENTLY")
    assert lock_of("VALIDATE CONSTRAINT").startswith("      lock: SHARE UPDATE EXCLUSIVE; scans the table")
    assert lock_of("DO: switch").startswith("      lock: ACCESS EXCLUSIVE; catalog only")
    statements = run_cli("plan", "--format", "json", url=db_url).json()["pending"][0]["statements"]
    assert [s["outside_transaction"] for s in statements if "VALIDATE" in s["sql"]] == [True]
    assert any(s.get("label", "").startswith("switch") and "ATTACH PARTITION" in s["sql"] for s in statements)
