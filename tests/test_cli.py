"""Exit codes on a real server, one line on stderr, and no password anywhere."""

import json
import uuid

import pytest

import otelmig.state
from conftest import catalog_snapshot, load_legacy, run_cli, sql
from helpers import one_line
from otelmig.revisions import HEAD_REVISION, KNOWN_REVISIONS

SENTINEL = "Sentinel%Pw:9@x"


def test_unreachable_is_3(db_url):
    result = run_cli("upgrade", url="postgresql://u:pw@127.0.0.1:1/d")
    assert result.code == 3 and one_line(result.err) and "connection refused" in result.err, result


def test_bad_password_is_3(server):
    url = server.url("postgres", password="wrong-" + SENTINEL)
    result = run_cli("upgrade", url=url)
    assert result.code == 3 and one_line(result.err) and "password authentication failed" in result.err, result
    assert SENTINEL not in result.err + result.out


def test_no_such_database_is_3(server):
    result = run_cli("current", url=server.url("no_such_db"))
    assert result.code == 3 and one_line(result.err) and "does not exist" in result.err, result


def test_unresolvable_host_is_3():
    result = run_cli("check", url="postgresql://u@nosuchhost.invalid/d")
    assert result.code == 3 and one_line(result.err) and "cannot resolve host" in result.err, result


def test_not_initialised_is_4(db_url):
    assert run_cli("check", url=db_url).code == 4
    load_legacy(db_url, traces=5)
    result = run_cli("check", url=db_url)
    assert result.code == 4 and one_line(result.err) and "upgrade" in result.err and "legacy" in result.err, result


def test_pending_is_5(db_url, monkeypatch):
    assert run_cli("upgrade", url=db_url).code == 0
    # A newer build knows a revision after ours: this database is behind it.
    monkeypatch.setattr(otelmig.state, "HEAD_REVISION", "aaaaaaaaaaaa")
    monkeypatch.setattr(otelmig.state, "KNOWN_REVISIONS", KNOWN_REVISIONS + ("aaaaaaaaaaaa",))
    result = run_cli("check", "--format", "json", url=db_url)
    assert result.code == 5
    assert result.json()["database_revision"] == HEAD_REVISION


def test_unknown_database_revision_is_6(db_url):
    assert run_cli("upgrade", url=db_url).code == 0
    sql(db_url, "update otel.alembic_version set version_num = 'ffffffffffff'")
    before = catalog_snapshot(db_url)
    for command in (["check"], ["upgrade"], ["current"], ["rollback"], ["stamp", "head"], ["plan"]):
        result = run_cli(*command, url=db_url)
        assert result.code == 6, (command, result)
        assert "ffffffffffff" in result.err and one_line(result.err)
    assert catalog_snapshot(db_url) == before


@pytest.mark.parametrize("command", [["upgrade", "nosuchrev"], ["downgrade", "nosuchrev"], ["stamp", "zzz"]])
def test_unknown_revision_name_is_2(db_url, command):
    assert run_cli("upgrade", url=db_url).code == 0
    before = catalog_snapshot(db_url)
    result = run_cli(*command, url=db_url)
    assert result.code == 2 and one_line(result.err) and "unknown revision" in result.err, result
    assert catalog_snapshot(db_url) == before


def test_rollback_too_far_is_2(db_url):
    assert run_cli("upgrade", url=db_url).code == 0
    result = run_cli("rollback", "5", url=db_url)
    assert result.code == 2 and one_line(result.err) and "cannot go back 5" in result.err, result
    assert sql(db_url, "select version_num from otel.alembic_version") == [[HEAD_REVISION]]


def test_rollback_when_nothing_recorded_is_4(db_url):
    result = run_cli("rollback", url=db_url)
    assert result.code == 4 and one_line(result.err), result


def test_read_only_database_is_8(server, db_url):
    load_legacy(db_url, traces=10)
    name = db_url.rsplit("/", 1)[1]
    sql(server.admin_url, "alter database %s set default_transaction_read_only = on" % name)
    before = catalog_snapshot(db_url)
    result = run_cli("upgrade", url=db_url)
    assert result.code == 8 and one_line(result.err) and "read-only" in result.err, result
    assert catalog_snapshot(db_url) == before


def test_role_without_privilege_is_8(server, db_url):
    load_legacy(db_url, traces=10)
    role = "reader_" + uuid.uuid4().hex[:10]  # roles are cluster-wide: no name another run could hold
    sql(db_url, "create role %s login password 'reader-pw'" % role)
    try:
        sql(db_url, "grant usage on schema otel to %s" % role)
        sql(db_url, "grant select on all tables in schema otel to %s" % role)
        before = catalog_snapshot(db_url)
        url = server.url(db_url.rsplit("/", 1)[1], user=role, password="reader-pw")
        result = run_cli("upgrade", url=url)
        assert result.code == 8, result
        assert one_line(result.err), result.err
        # the server's words for a missing privilege differ by statement and major
        assert any(words in result.err for words in ("permission denied", "must be owner", "cannot be altered")), \
            result.err
        assert catalog_snapshot(db_url) == before
    finally:
        sql(db_url, "drop owned by %s" % role)
        sql(server.admin_url, "drop role %s" % role)


def test_current_history_heads_json(db_url):
    assert run_cli("upgrade", url=db_url).code == 0
    current = run_cli("current", "--format", "json", url=db_url).json()
    assert current == {"exit_code": 0, "schema": "otel", "head": HEAD_REVISION,
                       "database_revision": HEAD_REVISION, "is_head": True}
    history = run_cli("history", "--format", "json", url=db_url).json()
    assert [r["revision"] for r in history["revisions"]] == list(KNOWN_REVISIONS)
    assert history["revisions"][-1]["is_current"] is True
    assert run_cli("heads", "--format", "json").json()["heads"] == [HEAD_REVISION]
    text = run_cli("history", url=db_url).out
    assert text.splitlines()[-1].startswith("* %s (head)" % HEAD_REVISION)


def test_upgrade_json_reports_applied(db_url):
    result = run_cli("upgrade", "--format", "json", url=db_url)
    payload = result.json()
    assert payload["exit_code"] == 0 and payload["database_revision"] == HEAD_REVISION
    assert [a["revision"] for a in payload["applied"]] == list(KNOWN_REVISIONS)


def test_stamp_records_without_running(db_url):
    load_legacy(db_url, traces=3)
    before = catalog_snapshot(db_url)
    assert run_cli("stamp", "head", url=db_url).code == 0
    assert sql(db_url, "select version_num from otel.alembic_version") == [[HEAD_REVISION]]
    after = catalog_snapshot(db_url)
    assert [c for c in after["columns"] if c[0] not in ("alembic_version", "alembic_version_pkc")] \
        == before["columns"]


def test_error_json_on_stdout(db_url):
    result = run_cli("check", "--format", "json", url="postgresql://u@127.0.0.1:1/d")
    payload = json.loads(result.out)
    assert payload["exit_code"] == 3 and payload["database_revision"] is None


@pytest.mark.parametrize("command", [
    ["check"], ["current"], ["verify"], ["upgrade"], ["rollback"], ["history", "-v"], ["stamp", "head"],
    ["plan"], ["verify", "--format", "json"], ["check", "--format", "json"], ["upgrade", "--sql"],
    ["upgrade", "-v", "--traceback"], ["downgrade", "base", "-v"], ["rollback", "--sql"],
    ["current", "--format", "json"], ["heads"], ["plan", "--format", "json"], ["verify", "--format", "prometheus"],
])
def test_password_never_printed(server, db_url, command):
    role = "sentinel_" + uuid.uuid4().hex[:10]  # roles are cluster-wide: no name another run could hold
    sql(db_url, "create role %s login password '%s'" % (role, SENTINEL))
    try:
        good = server.url(db_url.rsplit("/", 1)[1], user=role, password=SENTINEL)
        bad = server.url(db_url.rsplit("/", 1)[1], user=role, password=SENTINEL + "-wrong")
        unreachable = "postgresql://%s:%s@127.0.0.1:1/d" % (role, SENTINEL.replace("%", "%25").replace(
            ":", "%3A").replace("@", "%40"))
        for url in (good, bad, unreachable):
            result = run_cli(*command, url=url)
            seen = result.out + result.err
            assert SENTINEL not in seen and "Sentinel%25Pw" not in seen, (command, seen)
            assert "Traceback" not in seen or "--traceback" in command
    finally:
        sql(db_url, "drop owned by %s" % role)
        sql(server.admin_url, "drop role %s" % role)


@pytest.mark.parametrize("args, env", [
    (["upgrade", "--schema", 'otel"; drop table otel.spans; --'], {}),
    (["upgrade", "--schema", "OTEL"], {}),
    (["upgrade", "--schema", "pg_catalog"], {}),
    (["upgrade"], {"OTEL_DB_SCHEMA": ""}),
    (["upgrade", "--lock-timeout", "soon"], {}),
    (["upgrade"], {"OTELMIG_LOCK_WAIT": "forever"}),
    (["upgrade", "nosuchrev"], {}),
    (["rollback", "-3"], {}),
    (["downgrade", "+1"], {}),
    (["upgrade", "--format", "yaml"], {}),
    (["upgrade", "--no-such-flag"], {}),
])
def test_bad_input_changes_nothing(db_url, args, env):
    load_legacy(db_url, traces=5)
    before = catalog_snapshot(db_url)
    result = run_cli(*args, url=db_url, env=env)
    assert result.code == 2, result
    assert one_line(result.err)
    assert catalog_snapshot(db_url) == before


@pytest.mark.parametrize("url", ["mysql://u:pw@h/d", "postgresql://u:pw@h:70000/d", "postgresql://[::1/d", "::::"])
def test_bad_url_env_is_2(url):
    result = run_cli("check", env={"POSTGRES_URL": url})
    assert result.code == 2 and one_line(result.err)


@pytest.mark.parametrize("target", ["base", "-1"])
def test_upgrade_backwards_is_2(db_url, target):
    assert run_cli("upgrade", url=db_url).code == 0
    result = run_cli("upgrade", target, url=db_url)
    assert result.code == 2 and one_line(result.err) and "goes" in result.err, result
    assert sql(db_url, "select version_num from otel.alembic_version") == [[HEAD_REVISION]]


@pytest.mark.parametrize("command", [["current"], ["plan"], ["upgrade"], ["downgrade", "base"], ["history"],
                                     ["verify"], ["check"]])
def test_json_errors_are_one_object_on_stdout(command):
    result = run_cli(*command, "--format", "json", url="postgresql://u@127.0.0.1:1/d")
    payload = json.loads(result.out)
    if command == ["history"]:  # history works without a database; it only cannot mark the current one
        assert payload["exit_code"] == 0
        return
    assert payload["exit_code"] == result.code == 3
    assert payload["schema"] == "otel" and "connection refused" in payload["message"]


def test_prometheus_error_still_writes_metrics():
    result = run_cli("verify", "--format", "prometheus", url="postgresql://u@127.0.0.1:1/d")
    assert result.code == 3
    assert 'otelmig_verify_ok{schema="otel"} 0' in result.out
    assert 'otelmig_verify_exit_code{schema="otel"} 3' in result.out


# -- help and messages (issue 22, item 6) ------------------------------------------

def help_of(*args) -> str:
    result = run_cli(*args, "--help")
    assert result.code == 0, result
    return result.out


def test_top_level_help_lists_every_exit_code_and_environment_variable():
    from otelmig import authors, session, settings
    from otelmig.errors import ExitStatus
    text = help_of()
    for status in ExitStatus:
        assert "\n  %-4d" % int(status) in text, status
    for name in (settings.ENV_URL, settings.ENV_PASSWORD_FILE, settings.ENV_SCHEMA, settings.ENV_LOCK_TIMEOUT,
                 settings.ENV_LOCK_WAIT, settings.ENV_MIGRATION_URL, session.ENV_IDLE_TIMEOUT,
                 authors.ENV_ALLOW_DATA_LOSS, "PGHOST"):
        assert name in text, name


def test_each_command_lists_only_the_options_that_apply():
    assert "--lock-timeout" not in help_of("heads") and "--url" not in help_of("heads")
    assert "--lock-timeout" not in help_of("check") and "prometheus" in help_of("check")
    assert "prometheus" in help_of("verify") and "--lock-timeout" not in help_of("verify")
    assert "--lock-timeout" in help_of("upgrade") and "prometheus" not in help_of("upgrade")
    assert "--lock-timeout" in help_of("maintain") and "prometheus" in help_of("maintain")


def test_downgrade_help_explains_its_targets():
    text = help_of("downgrade")
    assert "-N" in text and "base" in text and "rollback" in text


def test_downgrade_without_a_target_suggests_one():
    result = run_cli("downgrade", url="postgresql://u@127.0.0.1:1/d")
    assert result.code == 2 and one_line(result.err), result
    assert "rollback" in result.err and "-1" in result.err and "base" in result.err, result.err


def test_no_url_given_says_so_and_that_libpq_defaults_were_tried(monkeypatch):
    """Nothing names a server: the defaults (here pointed at a closed port) are tried, and the line says so."""
    from otelmig import settings
    monkeypatch.setattr(settings, "DEFAULT_PORT", 1)
    monkeypatch.setattr(settings, "DEFAULT_HOST", "127.0.0.1")
    result = run_cli("check")
    assert result.code == 3 and one_line(result.err), result
    assert "no URL was given" in result.err and "POSTGRES_URL" in result.err and "--url" in result.err, result.err


def test_history_against_an_unreachable_database_warns():
    result = run_cli("history", url="postgresql://u@127.0.0.1:1/d")
    assert result.code == 0 and "163d8f446eb9" in result.out
    assert "could not read the database's revision" in result.err and "connection refused" in result.err, result.err
