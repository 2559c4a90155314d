"""Where the connection comes from, and what is refused (no database needed)."""

import os
import stat

import pytest

from conftest import run_cli
from helpers import one_line
from otelmig import redact
from otelmig.errors import UsageError
from otelmig.settings import resolve_conninfo, validate_schema


def test_flag_beats_env_beats_libpq():
    env = {"POSTGRES_URL": "postgresql://envuser@envhost/envdb", "PGHOST": "pghost", "PGUSER": "pguser"}
    assert resolve_conninfo("postgres://flaguser@flaghost/flagdb", env).host == "flaghost"
    assert resolve_conninfo(None, env).host == "envhost"
    del env["POSTGRES_URL"]
    info = resolve_conninfo(None, env)
    assert (info.host, info.user, info.database, info.port) == ("pghost", "pguser", "pguser", 5432)


def test_libpq_defaults():
    info = resolve_conninfo(None, {})
    assert (info.host, info.port, info.sslmode, info.connect_timeout, info.application_name) == \
        ("localhost", 5432, "prefer", 10.0, "otelmig")


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+pg8000"])
def test_url_schemes(scheme):
    info = resolve_conninfo("%s://u:p@h:6543/d" % scheme, {})
    assert (info.user, info.password, info.host, info.port, info.database) == ("u", "p", "h", 6543, "d")


def test_query_parameters_translate():
    info = resolve_conninfo("postgresql://u@h/d?connect_timeout=3&application_name=worker&sslmode=require", {})
    assert (info.connect_timeout, info.application_name, info.sslmode) == (3.0, "worker", "require")


def test_percent_colon_at_in_password():
    info = resolve_conninfo("postgresql://u:a%25b%3Ac%40d@h/db", {})
    assert info.password == "a%b:c@d"


def test_password_sources_in_order(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    url = "postgresql://u@h/d"
    assert resolve_conninfo(url, {"PGPASSWORD": "from-env", "POSTGRES_PASSWORD_FILE": str(secret)}).password \
        == "from-env"
    assert resolve_conninfo(url, {"POSTGRES_PASSWORD_FILE": str(secret)}).password == "from-file"
    assert resolve_conninfo("postgresql://u:inurl@h/d", {"POSTGRES_PASSWORD_FILE": str(secret)}).password == "inurl"


def test_pgpass(tmp_path):
    passfile = tmp_path / "pgpass"
    passfile.write_text("otherhost:*:*:*:nope\nh:5432:d:u:pa\\:ss\n")
    os.chmod(passfile, stat.S_IRUSR | stat.S_IWUSR)
    assert resolve_conninfo("postgresql://u@h/d", {"PGPASSFILE": str(passfile)}).password == "pa:ss"
    os.chmod(passfile, 0o644)  # libpq ignores a password file others can read
    assert resolve_conninfo("postgresql://u@h/d", {"PGPASSFILE": str(passfile)}).password is None


@pytest.mark.parametrize("url, fragment", [
    ("mysql://u@h/d", "unsupported URL scheme"),
    ("not a url", "not a URL"),
    ("postgresql://u@h:99999/d", "invalid port"),
    ("postgresql://u@h:0/d", "invalid port"),
    ("postgresql://u@h:abc/d", "invalid port"),
    ("postgresql://u@h/d?sslmode=sometimes", "invalid sslmode"),
    ("postgresql://u@h/d?connect_timeout=soon", "connect_timeout must be a number"),
    ("postgresql://u@h/d?frobnicate=1", "unsupported URL parameter"),
])
def test_bad_urls_are_usage_errors(url, fragment):
    with pytest.raises(UsageError, match=fragment):
        resolve_conninfo(url, {})


@pytest.mark.parametrize("name", ['otel"; drop table x; --', "otel;", "Otel", "x" * 64, "pg_catalog",
                                  "information_schema", "", "1otel", "otel-prod", "otel schema", "o'tel"])
def test_bad_schema_names(name):
    with pytest.raises(UsageError):
        validate_schema(name)


@pytest.mark.parametrize("name", ["otel", "otel_staging", "_x", "a" * 63])
def test_good_schema_names(name):
    assert validate_schema(name) == name


def test_redactor_masks_registered_and_url_passwords():
    redact.register("s3cr%t")
    assert "s3cr" not in redact.redact("login failed for s3cr%t and s3cr%25t")
    assert redact.redact("postgresql://bob:hunter2@db/x") == "postgresql://bob:***@db/x"


@pytest.mark.parametrize("args, fragment", [
    (["frobnicate"], "invalid choice"),
    (["upgrade", "--schema", "Bad"], "invalid schema name"),
    (["check", "--wait", "soon"], "--wait must be a number"),
    (["upgrade", "--lock-timeout", "x"], "--lock-timeout must be a number"),
    (["rollback", "-3"], "rollback takes a positive number of revisions, not -3"),
    (["rollback", "zero"], "rollback takes a number"),
    (["current", "--format", "prometheus"], "prometheus is for check, maintain and verify only"),
    ([], "no command given"),
])
def test_usage_errors_exit_2_with_one_line(args, fragment):
    result = run_cli(*args, url="postgresql://u:Sentinel-pw-1@127.0.0.1:1/d")
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0]
    assert "Traceback" not in result.err


def test_env_lock_timeout_and_schema_are_validated():
    result = run_cli("current", url="postgresql://u@127.0.0.1:1/d", env={"OTELMIG_LOCK_TIMEOUT": "-1"})
    assert result.code == 2 and one_line(result.err) and "--lock-timeout must be between" in result.err, result
    result = run_cli("current", url="postgresql://u@127.0.0.1:1/d", env={"OTEL_DB_SCHEMA": "x;y"})
    assert result.code == 2 and one_line(result.err) and "invalid schema name" in result.err, result


def test_fast_pbkdf2_equals_scramps_own():
    import hashlib
    import os
    import scramp.utils
    from otelmig.db import _pbkdf2
    for hash_factory in (hashlib.sha256, hashlib.sha1):
        for iterations in (1, 2, 4096):
            password, salt = os.urandom(12), os.urandom(16)
            assert _pbkdf2(hash_factory, password, salt, iterations) == \
                scramp.utils.hi(hash_factory, password, salt, iterations)


def test_init_db_leaves_the_host_processs_scramp_alone(db_url):
    """init_db() runs inside the worker: it must not patch a library for the
    whole process (only the command line, which owns its process, does)."""
    code = ("import scramp.core\n"
            "before = scramp.core.hi\n"
            "import otelmig, otelmig.db\n"
            "try:\n"
            "    otelmig.init_db(url=%r)\n"
            "except otelmig.SchemaNotReady as exc:\n"
            "    assert exc.exit_code == 4, exc\n"
            "assert scramp.core.hi is before, 'scramp patched'\n"
            "from otelmig.cli import main\n"
            "import io\n"
            "main(['check', '--url', %r], env={}, out=io.StringIO(), err=io.StringIO())\n"
            "assert scramp.core.hi is not before, 'the command line should use hashlib'\n" % (db_url, db_url))
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
