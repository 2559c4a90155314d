"""What differs between PostgreSQL majors, asserted the same way on each
(./test.sh --pg all runs this module on 13 to 18 and the minimal 18 build)."""


import pytest

from conftest import load_legacy, run_cli, sql
from helpers import wait_for
from pgcluster import pgbin, selected


def server_major(url) -> int:
    return int(sql(url, "show server_version_num")[0][0]) // 10000


def test_the_server_is_the_selected_build(server):
    """The switch really changes the server: major and TLS support are the pinned build's."""
    if server.cluster is None:
        pytest.skip("OTELMIG_TEST_URL names an outside server, not one of tools/pgbin.py's builds")
    url = server.url("postgres")
    pin = pgbin.PINS[selected()]
    assert server_major(url) == int(pin.server.split(".")[0])
    version = sql(url, "show server_version")[0][0]
    assert (version + ".").startswith(pin.server + "."), version
    # ssl_library is '' on a server built without OpenSSL (the minimal build).
    assert sql(url, "show ssl_library")[0][0] == ("" if selected().endswith("-minimal") else "OpenSSL")


def not_validated_not_null(url, table, column, name):
    """A NOT NULL that existing rows were never checked against: a NOT NULL ... NOT
    VALID constraint on 18+ (which sets pg_attribute.attnotnull), the CHECK that
    plays its part before 18."""
    sql(url, "alter table otel.%s alter column %s drop not null" % (table, column))
    if server_major(url) >= 18:
        sql(url, "alter table otel.%s add constraint %s not null %s not valid" % (table, name, column))
        assert sql(url, "select attnotnull from pg_attribute where attrelid = 'otel.%s'::regclass and attname = %%s"
                   % table, (column,)) == [[True]]
    else:
        sql(url, "alter table otel.%s add constraint %s check (%s is not null) not valid" % (table, name, column))


def test_verify_counts_a_not_validated_not_null_as_nullable(db_url):
    assert run_cli("upgrade", url=db_url).code == 0
    not_validated_not_null(db_url, "spans", "name", "spans_name_nn")
    result = run_cli("verify", "--format", "json", url=db_url)
    assert result.code == 7, result.out  # drift
    problems = [p for p in result.json()["problems"] if "name" in p["object"] and "spans" in p["object"]]
    assert problems and "not null" in problems[0]["detail"], result.out
    if server_major(db_url) >= 18:  # validated, it is an ordinary NOT NULL again
        sql(db_url, "alter table otel.spans validate constraint spans_name_nn")
        assert run_cli("verify", url=db_url).code == 0


def wait_for_live_rows(url, table, rows):
    """The loading session reports its inserts to the statistics system when it
    ends; before 15 that goes through the collector, later still."""
    wait_for(lambda: sql(url, "select n_live_tup from pg_stat_all_tables where relid = %s::regclass", (table,))[0][0]
             == rows, "%s: n_live_tup to reach %d" % (table, rows))


def test_plan_estimates_rows_of_a_table_never_analyzed(db_url):
    """Before 14 reltuples is 0 (not -1) for a table never vacuumed, analyzed or
    indexed since its rows came: plan must not say 0 rows there."""
    load_legacy(db_url, traces=20)  # 20 traces, 100 spans, indexes made before the rows
    wait_for_live_rows(db_url, "otel.spans", 100)
    result = run_cli("plan", "--format", "json", url=db_url)
    assert result.code == 5, result.err
    estimates = {s["rows_estimate"] for s in result.json()["pending"][0]["statements"] if s["table"] == "otel.spans"}
    assert estimates == {100}, result.out


@pytest.fixture(scope="module")
def postgres_12():
    """A real PostgreSQL 12 (tools/pgbin.py pins one for this test only), with the legacy store."""
    from pgcluster import Cluster
    cluster = Cluster(pg="12").start()
    try:
        url = cluster.url("postgres")
        load_legacy(url, traces=10)
        yield url
    finally:
        cluster.stop()


@pytest.mark.parametrize("command", [("check",), ("verify",), ("plan",), ("upgrade",), ("stamp", "head"),
                                     ("downgrade", "base")])
def test_a_server_older_than_13_is_refused_before_anything_changes(postgres_12, command):
    before = sql(postgres_12, "select c.relname::text, a.attname::text from pg_attribute a "
                              "join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace "
                              "where n.nspname = 'otel' and a.attnum > 0 order by 1, 2")
    result = run_cli(*command, url=postgres_12)
    assert result.code == 8, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "PostgreSQL 12" in lines[0] and "13 or newer" in lines[0], result.err
    assert "Traceback" not in result.err
    assert sql(postgres_12, "select c.relname::text, a.attname::text from pg_attribute a "
                            "join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace "
                            "where n.nspname = 'otel' and a.attnum > 0 order by 1, 2") == before
    assert sql(postgres_12, "select count(*) from pg_namespace where nspname = 'otel'") == [[1]]
