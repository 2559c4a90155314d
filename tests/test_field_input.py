"""Field conditions for what the operator types and the machine provides
(issue 10): passwords with raw reserved characters in every output channel,
no password while the server asks for one, a SHIV_ROOT that cannot be
written, a missing TLS root certificate, multi-host URLs. Each on a real
PostgreSQL (or the built pyz), never a mock.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import run_pyz
from otelmig.revisions import HEAD_REVISION, KNOWN_REVISIONS

# --- SHIV_ROOT that cannot be written (the pyz launcher) --------------------


def _pyz_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHIV_", "PG", "POSTGRES", "OTEL"))}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _run_pyz_as(pyz_path, env, prefix=(), python=None):
    proc = subprocess.run(list(prefix) + [python or sys.executable, str(pyz_path), "--version"], env=env,
                          capture_output=True, text=True, timeout=120)
    return proc


def _assert_one_line_exit_2(proc, root):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(root) in lines[0] and "SHIV_ROOT" in lines[0] and "writable" in lines[0], lines[0]
    assert proc.stdout == ""


@pytest.mark.parametrize("shape", ["under a regular file", "a regular file", "nested under a file"])
def test_shiv_root_blocked_by_a_file(pyz, tmp_path, shape):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory\n")
    root = {"under a regular file": blocker / "root",
            "a regular file": blocker,
            "nested under a file": blocker / "a" / "b"}[shape]
    proc = _run_pyz_as(pyz, _pyz_env(SHIV_ROOT=root, HOME=tmp_path))
    _assert_one_line_exit_2(proc, root)
    assert blocker.read_text() == "not a directory\n"


def test_a_file_named_dot_shiv_in_home_falls_back_to_the_temp_dir(pyz, tmp_path):
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir(), tmp.mkdir()
    (home / ".shiv").write_text("someone else's file\n")
    (home / ".shiv").chmod(0o755)  # writable and "executable": only a directory check tells
    proc = _run_pyz_as(pyz, _pyz_env(HOME=home, TMPDIR=tmp))
    assert proc.returncode == 0, proc.stderr
    assert (home / ".shiv").read_text() == "someone else's file\n"
    assert list(tmp.glob("otelmig-shiv-*/otelmig.pyz_*/site-packages"))


def test_shiv_root_via_dollar_variable_is_checked_too(pyz, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    proc = _run_pyz_as(pyz, _pyz_env(SHIV_ROOT="$MY_CACHE", MY_CACHE=blocker / "c", HOME=tmp_path))
    _assert_one_line_exit_2(proc, blocker / "c")


def test_shiv_root_on_a_read_only_mount(pyz, tmp_path):
    root = tmp_path / "ro"
    root.mkdir()
    prefix = ()
    if os.geteuid() == 0:  # root writes through mode bits: a read-only bind mount it must respect
        if not shutil.which("unshare") or subprocess.run(["unshare", "-m", "true"]).returncode:
            pytest.skip("root, and no mount namespace for a read-only SHIV_ROOT")
        prefix = ("unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(root))
    else:
        root.chmod(0o555)
    proc = _run_pyz_as(pyz, _pyz_env(SHIV_ROOT=root, HOME=tmp_path), prefix)
    _assert_one_line_exit_2(proc, root)
    assert not list(root.iterdir())


def test_shiv_root_read_only_but_already_unpacked_still_starts(pyz, tmp_path):
    """A cache unpacked at image build time on a read-only root file system is fine."""
    root = tmp_path / "cache"
    assert run_pyz(pyz, "--version", env={"SHIV_ROOT": str(root)}).code == 0
    if os.geteuid() != 0:
        pytest.skip("the read-only mount needs root")
    proc = _run_pyz_as(pyz, _pyz_env(SHIV_ROOT=root, HOME=tmp_path),
                       ("unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(root)))
    assert proc.returncode == 0, proc.stderr
    assert HEAD_REVISION in proc.stdout


def test_shiv_root_parent_not_enterable_as_nobody(pyz):
    if os.geteuid() != 0 or not shutil.which("runuser"):
        pytest.skip("needs root and runuser to run as nobody")
    python = next((p for p in (sys.executable, shutil.which("python3"), "/usr/bin/python3")
                   if p and subprocess.run(["runuser", "-u", "nobody", "--", p, "-c", "pass"]).returncode == 0),
                  None)
    if python is None:
        pytest.skip("no Python that user nobody may run")
    outer = Path(tempfile.mkdtemp(prefix="otelmig-shivroot-"))
    try:
        outer.chmod(0o755)
        shutil.copy(pyz, outer / "otelmig.pyz")
        private = outer / "private"
        private.mkdir(mode=0o700)  # root's; nobody may not enter it
        root = private / "sub" / "shiv"
        proc = _run_pyz_as(outer / "otelmig.pyz", _pyz_env(SHIV_ROOT=root, HOME="/nonexistent"),
                           ("runuser", "-u", "nobody", "--"), python)
        _assert_one_line_exit_2(proc, root)
        assert "Permission denied" in proc.stderr
        assert not (private / "sub").exists()
    finally:
        shutil.rmtree(outer)


# --- helpers for the database tests ------------------------------------------

import json  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import stat  # noqa: E402
import threading  # noqa: E402
import urllib.parse  # noqa: E402

from conftest import run_cli, sql  # noqa: E402
from helpers import error_line, one_line, wait_for  # noqa: E402
from pgcluster import Cluster  # noqa: E402
from standbys import pg_basebackup_for  # noqa: E402

ROLE = "field_pw_role"
# Generated and base64 secrets: every reserved character, a space, combinations.
# The letter groups are distinctive, so a message showing any part of a password is caught.
PASSWORDS = [
    "Zqvw/Kxjb", "Zqvw+Kxjb", "Zqvw=Kxjb", "Zqvw#Kxjb", "Zqvw?Kxjb", "Zqvw@Kxjb", "Zqvw Kxjb",
    "Zqvw:Kxjb",  # a raw % is refused, like libpq: test_unparsable_url_shows_no_part_of_the_userinfo
    "Zqvw/Kxjb+Wmrt=Ypdl#Lvgn?Nbcs@Hsfk Tqzx",
    "Zqvw@Kxjb/Wmrt@Ypdl",            # an @ followed by what looks like a host and a path
    "Zqvw?sslmode=disable@Kxjb",      # what looks like a query inside the password
    "@Zqvw/Kxjb?Wmrt#",               # reserved characters at both ends
    "Zqvw/Kxjb+Wmrt==",               # base64 with padding
    "Zqvw\\Kxjb\"Wmrt'Ypdl",           # what JSON and repr() escape
]


def leaks(password, text):
    """The password, an encoding of it, or any letter group of it in the output."""
    spellings = {password, urllib.parse.quote(password, safe=""), urllib.parse.quote_plus(password, safe=""),
                 json.dumps(password)[1:-1]}
    groups = {g for g in re.findall(r"[A-Za-z0-9]{4,}", password) if g != "sslmode"}
    return sorted(s for s in spellings | groups if s in text)


def raw_url(cluster, password, database, port=None, query=""):
    """The URL as an operator pastes it: the password not encoded at all."""
    return "postgresql://%s:%s@127.0.0.1:%d/%s%s" % (ROLE, password, port or cluster.port, database, query)


@pytest.fixture
def pw_role(server, db_url):
    if server.cluster is None:
        pytest.skip("needs the suite's own cluster (raw-password URLs are built for it)")
    sql(server.admin_url, "drop role if exists %s" % ROLE)
    sql(server.admin_url, "create role %s login" % ROLE)
    database = db_url.rsplit("/", 1)[1]
    sql(server.admin_url, "grant all on database %s to %s" % (database, ROLE))
    sql(db_url, "grant all on schema public to %s" % ROLE)

    def set_password(password):
        sql(server.admin_url, "alter role %s password '%s'" % (ROLE, password.replace("'", "''")))
    yield server.cluster, database, set_password
    sql(db_url, "drop owned by %s" % ROLE)
    sql(server.admin_url, "drop role %s" % ROLE)


def unused_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# (command line, expected exit code with the right password on an empty database)
CHANNELS = [
    (["check"], 4),
    (["check", "--format", "json"], 4),
    (["verify", "--format", "prometheus"], 4),
    (["current", "-v"], 0),
    (["check", "--traceback"], 4),
    (["plan", "--format", "json", "-v"], 5),
]


# --- item 2: raw reserved characters in the URL password ----------------------

@pytest.mark.parametrize("password", PASSWORDS)
def test_raw_password_in_url_every_channel(pw_role, password):
    cluster, database, set_password = pw_role
    set_password(password)
    cases = [("right", raw_url(cluster, password, database)),
             ("wrong", raw_url(cluster, password + "X", database)),
             ("unreachable", raw_url(cluster, password, database, port=unused_port()))]
    for case, url in cases:
        for args, right_code in CHANNELS:
            result = run_cli(*args, url=url)
            seen = result.out + result.err
            assert not leaks(password, seen), (case, args, leaks(password, seen), seen)
            assert "Traceback" not in seen or "--traceback" in args, (case, args, seen)
            expected = right_code if case == "right" else 3
            assert result.code == expected, (case, args, result)
            if case == "wrong":
                assert "login refused" in result.err, result.err
            if "json" in args:
                assert result.json()["exit_code"] == expected
            if "prometheus" in args:
                assert "otelmig_verify_exit_code{schema=\"otel\"} %d" % expected in result.out


@pytest.mark.parametrize("password", ["Zqvw/Kxjb+Wmrt=Ypdl#Lvgn?Nbcs@Hsfk Tqzx", "Zqvw+Kxjb"])
def test_raw_password_upgrade_and_rollback_work(pw_role, password):
    """The migration commands, not only the probes, log in with such a password."""
    cluster, database, set_password = pw_role
    set_password(password)
    url = raw_url(cluster, password, database)
    for args in (["upgrade", "-v"], ["check"], ["rollback"], ["upgrade", "--format", "json"]):
        result = run_cli(*args, url=url)
        assert result.code == 0, (args, result)
        assert not leaks(password, result.out + result.err), args


@pytest.mark.parametrize("where", ["PGPASSWORD", "POSTGRES_PASSWORD_FILE", "PGPASSFILE", "?password="])
def test_reserved_characters_from_every_password_source(pw_role, tmp_path, where):
    cluster, database, set_password = pw_role
    password = "Zqvw/Kxjb+Wmrt=Ypdl#Lvgn?Nbcs@Hsfk Tqzx:Qz\\w"
    set_password(password)
    url, env = "postgresql://%s@127.0.0.1:%d/%s" % (ROLE, cluster.port, database), {}
    if where == "PGPASSWORD":
        env["PGPASSWORD"] = password
    elif where == "POSTGRES_PASSWORD_FILE":
        (tmp_path / "secret").write_text(password + "\n")
        env["POSTGRES_PASSWORD_FILE"] = str(tmp_path / "secret")
    elif where == "PGPASSFILE":
        escaped = password.replace("\\", "\\\\").replace(":", "\\:")
        (tmp_path / "pgpass").write_text("127.0.0.1:%d:%s:%s:%s\n" % (cluster.port, database, ROLE, escaped))
        os.chmod(tmp_path / "pgpass", stat.S_IRUSR | stat.S_IWUSR)
        env["PGPASSFILE"] = str(tmp_path / "pgpass")
    else:  # a + stays a + (libpq), the rest %-encoded
        url += "?password=" + urllib.parse.quote(password, safe="+/=@: ")
    for args, right_code in CHANNELS:
        result = run_cli(*args, url=url, env=env)
        assert result.code == right_code, (args, result)
        assert not leaks(password, result.out + result.err), (args, result)
    wrong = dict(env, PGPASSWORD=password + "X") if where == "PGPASSWORD" else env
    if where != "PGPASSWORD":
        set_password(password + "X")  # the source now holds the wrong one
    result = run_cli("check", "--format", "json", url=url, env=wrong)
    assert result.code == 3 and one_line(result.err) and "login refused" in result.err
    assert not leaks(password, result.out + result.err)


@pytest.mark.parametrize("form", ["socket in the host part", "socket in ?host="])
def test_raw_password_over_a_unix_socket(pw_role, form):
    cluster, database, set_password = pw_role
    password = "Zqvw/Kxjb+Wmrt=Ypdl#Lvgn?Nbcs@Hsfk Tqzx"
    set_password(password)
    socket_dir = urllib.parse.quote(cluster.root, safe="")
    if form == "socket in the host part":
        url = "postgresql://%s:%s@%s:%d/%s" % (ROLE, password, socket_dir, cluster.port, database)
    else:
        url = "postgresql://%s:%s@/%s?host=%s&port=%d" % (ROLE, password, database, socket_dir, cluster.port)
    result = run_cli("check", "--format", "json", url=url)
    assert result.code == 4, result
    assert not leaks(password, result.out + result.err)


def test_plus_in_query_password_is_a_plus(pw_role):
    cluster, database, set_password = pw_role
    set_password("Zqvw+Kxjb")
    url = "postgresql://%s@127.0.0.1:%d/%s?password=Zqvw+Kxjb" % (ROLE, cluster.port, database)
    assert run_cli("check", url=url).code == 4
    set_password("Zqvw Kxjb")  # what parse_qs would have sent
    assert run_cli("check", url=url).code == 3


@pytest.mark.parametrize("url, fragment", [
    ("postgresql://%s:Zqvw%%zzKxjb@127.0.0.1:{port}/d" % ROLE, "%XX escape"),
    ("postgresql://%s:Zqvw%%Kxjb@127.0.0.1:{port}/d" % ROLE, "%XX escape"),
    ("postgresql://%s:Zqvw/Kxjb@127.0.0.1:Wmrt/d" % ROLE, "invalid port"),
    ("postgresql://%s:Zqvw/Kxjb@127.0.0.1:5432:Wmrt/d" % ROLE, "invalid port"),
    ("postgresql://%s:Zqvw/Kxjb@Wmrt@[::1/d" % ROLE, "cannot be parsed"),
    ("postgresql://%s:Zqvw/Kxjb@127.0.0.1/d?Ypdl=Lvgn" % ROLE, "unsupported URL parameter"),
    ("Zqvw:Kxjb://Wmrt@127.0.0.1/d", "not a URL"),
])
def test_unparsable_url_shows_no_part_of_the_userinfo(url, fragment):
    url = url.format(port=unused_port())
    for args in (["check"], ["check", "--format", "json"], ["verify", "--format", "prometheus"],
                 ["current", "-v", "--traceback"], ["upgrade"]):
        result = run_cli(*args, url=url)
        assert result.code == 2, (args, result)
        lines = result.err.strip().splitlines()
        assert fragment in lines[-1], lines
        assert "Traceback" not in result.err or "--traceback" in args
        for secret in ("Zqvw", "Kxjb", "Wmrt", "Ypdl" if "unsupported" not in fragment else "Zqvw"):
            assert secret not in result.out + result.err, (args, secret, result)


def test_raw_password_with_the_pyz(pyz, pw_role):
    cluster, database, set_password = pw_role
    password = "Zqvw/Kxjb+Wmrt=Ypdl#Lvgn?Nbcs@Hsfk Tqzx"
    set_password(password)
    for case, url, code in (("right", raw_url(cluster, password, database), 4),
                            ("wrong", raw_url(cluster, password + "X", database), 3),
                            ("unreachable", raw_url(cluster, password, database, port=unused_port()), 3)):
        for args in (["check", "--format", "json", "--traceback"], ["verify", "--format", "prometheus", "-v"]):
            result = run_pyz(pyz, *args, url=url)
            assert result.code == code, (case, args, result)
            assert not leaks(password, result.out + result.err), (case, args, result)
    bad = run_pyz(pyz, "check", "--format", "json", url="postgresql://u:Zqvw%zzKxjb@127.0.0.1/d")
    assert bad.code == 2 and bad.json()["schema"] == "otel" and not leaks("Zqvw%zzKxjb", bad.out + bad.err)


# --- item 10: what a URL error still reports --------------------------------

def test_json_and_prometheus_name_the_schema_after_a_url_error():
    result = run_cli("check", "--format", "json", "--schema", "otel_b", url="mysql://u@h/d")
    assert result.code == 2 and result.json()["schema"] == "otel_b", result
    result = run_cli("verify", "--format", "prometheus", url="postgresql://u@h:1,h:2,h:3/d?port=1,2")
    assert result.code == 2
    assert 'otelmig_verify_exit_code{schema="otel"} 2' in result.out, result


# --- item 8: no password while the server asks for one ----------------------

class CountingProxy:
    """A TCP relay to the server that counts the connections made through it:
    how many times otelmig tried, without timing anything."""

    def __init__(self, target_port):
        self.target_port, self.accepted = target_port, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source, sink):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        try:  # wakes the thread blocked in accept(); close() alone leaves the port listening
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()


@pytest.fixture
def proxy(server):
    if server.cluster is None:
        pytest.skip("needs the suite's own cluster")
    relay = CountingProxy(server.cluster.port)
    yield relay
    relay.close()


def test_no_password_available_one_line_and_no_retry(proxy, pw_role, tmp_path):
    cluster, database, set_password = pw_role
    set_password("Zqvw/Kxjb")
    url = "postgresql://%s@127.0.0.1:%d/%s?sslmode=disable" % (ROLE, proxy.port, database)
    pgpass = tmp_path / "no-such-pgpass"
    result = run_cli("check", "--wait", "30", url=url, env={"PGPASSFILE": str(pgpass)})
    assert result.code == 3, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    for where in ("password", "URL", "PGPASSWORD", "POSTGRES_PASSWORD_FILE", str(pgpass)):
        assert where in lines[0], (where, lines[0])
    assert "NoneType" not in lines[0]
    assert proxy.accepted == 1, "check --wait retried a login that needs a password: %d attempts" % proxy.accepted


def test_pgpass_readable_by_others_is_named(proxy, pw_role, tmp_path):
    cluster, database, set_password = pw_role
    set_password("Zqvw/Kxjb")
    pgpass = tmp_path / "pgpass"
    pgpass.write_text("*:*:*:*:Zqvw/Kxjb\n")
    os.chmod(pgpass, 0o644)
    url = "postgresql://%s@127.0.0.1:%d/%s?sslmode=disable" % (ROLE, proxy.port, database)
    result = run_cli("check", "--format", "json", url=url, env={"PGPASSFILE": str(pgpass)})
    assert result.code == 3 and one_line(result.err) and "chmod 0600" in result.json()["message"], result
    assert "Zqvw" not in result.out + result.err


def test_wrong_password_is_not_retried_by_wait(proxy, pw_role):
    cluster, database, set_password = pw_role
    set_password("Zqvw/Kxjb")
    url = "postgresql://%s:nope@127.0.0.1:%d/%s?sslmode=disable" % (ROLE, proxy.port, database)
    result = run_cli("check", "--wait", "30", url=url)
    assert result.code == 3 and one_line(result.err) and "login refused" in result.err, result
    assert proxy.accepted == 1, proxy.accepted


def test_unreachable_is_still_retried_by_wait(server):
    """The other side of the rule: a server that is not there yet is waited for."""
    import time
    started = time.monotonic()
    result = run_cli("check", "--wait", "1.5", url="postgresql://u:p@127.0.0.1:%d/d?sslmode=disable" % unused_port())
    # one line per retry while it waits (issue 22 item 6), then the one error line
    assert result.code == 3 and "connection refused" in error_line(result.err), result.err
    assert all(line.startswith("check: waiting") for line in result.err.strip().splitlines()[:-1]), result.err
    assert time.monotonic() - started >= 1.5  # it waited out --wait (a lower bound only: no timing window)


# --- item 10: multi-host URLs (libpq's host list, target_session_attrs) -----

@pytest.fixture(scope="module")
def primary_and_standby():
    """A primary (whose pg_hba rejects one role) and a streaming standby of it."""
    primary = Cluster().start("wal_level = replica\nmax_wal_senders = 5\npassword_encryption = md5\n")
    hba = os.path.join(primary.data, "pg_hba.conf")
    with open(hba) as handle:
        rules = handle.read()
    with open(hba, "w") as handle:  # a rejected role, and the older password methods
        handle.write("host all hba_rejected 127.0.0.1/32 reject\n"
                     "host all pw_md5 127.0.0.1/32 md5\nhost all pw_clear 127.0.0.1/32 password\n" + rules)
    primary.reload()
    standby = Cluster()
    standby.password = primary.password
    basebackup = pg_basebackup_for(primary)
    if basebackup is None:
        primary.stop()
        standby.stop()
        pytest.skip("no pg_basebackup that can stream from PostgreSQL %s here (this build ships none, "
                    "and an older one refuses a newer server): the multi-host tests need a standby" % primary.major)
    try:
        standby._run(basebackup,
                     "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres", "-D", standby.data, "-R",
                     "-X", "stream", env=dict(os.environ, PGPASSWORD=primary.password))
        with open(os.path.join(standby.data, "postgresql.conf"), "a") as conf:
            conf.write("\nport = %d\nunix_socket_directories = '%s'\n" % (standby.port, standby.root))
        standby._run(os.path.join(standby.bindir, "pg_ctl"), "-D", standby.data, "-l",
                     os.path.join(standby.root, "log"), "-w", "-t", "60", "start")
        assert sql(standby.url(), "select pg_is_in_recovery()") == [[True]]
        yield primary, standby
    finally:
        standby.stop()
        primary.stop()


def multi_url(primary, hosts, query=""):
    return "postgresql://postgres:%s@%s/postgres%s" % (
        urllib.parse.quote(primary.password, safe=""), hosts, query)


def landed_on(url, writes=False):
    """(in recovery, port) of the session otelmig's connect() opens for this URL."""
    from otelmig import db
    from otelmig.settings import resolve_conninfo
    db._PINNED.clear()
    conn = db.connect(resolve_conninfo(url, {}, writes=writes))
    try:
        cursor = conn.cursor()
        cursor.execute("select pg_is_in_recovery(), inet_server_port()")
        return tuple(cursor.fetchone())
    finally:
        conn.close()
        db._PINNED.clear()


def test_multi_host_target_session_attrs(primary_and_standby):
    primary, standby = primary_and_standby
    p, s, dead = primary.port, standby.port, unused_port()
    both = "127.0.0.1:%d,127.0.0.1:%d" % (s, p)
    assert landed_on(multi_url(primary, both)) == (True, s)  # any: the first that answers
    assert landed_on(multi_url(primary, "127.0.0.1:%d,127.0.0.1:%d" % (dead, p))) == (False, p)
    for attrs, expected in (("read-write", (False, p)), ("primary", (False, p)), ("read-only", (True, s)),
                            ("standby", (True, s)), ("prefer-standby", (True, s)), ("any", (True, s))):
        assert landed_on(multi_url(primary, both, "?target_session_attrs=" + attrs)) == expected, attrs
    reverse = "127.0.0.1:%d,127.0.0.1:%d" % (p, s)
    assert landed_on(multi_url(primary, reverse, "?target_session_attrs=standby")) == (True, s)
    only_primary = "127.0.0.1:%d,127.0.0.1:%d" % (dead, p)
    assert landed_on(multi_url(primary, only_primary, "?target_session_attrs=prefer-standby")) == (False, p)
    # a host list in the query, ports matched per host, and one port for every host
    assert landed_on(multi_url(primary, "", "?host=127.0.0.1,127.0.0.1&port=%d,%d" % (s, p)
                               + "&target_session_attrs=read-write")) == (False, p)


def test_a_run_stays_on_the_host_it_landed_on(primary_and_standby):
    """The lock, the migration and the progress watcher of one run must share a
    server: once landed, a later connection does not move to the next host."""
    from otelmig import db
    from otelmig.errors import ConnectError
    from otelmig.settings import resolve_conninfo
    primary, standby = primary_and_standby
    relay = CountingProxy(primary.port)
    db._PINNED.clear()
    try:
        info = resolve_conninfo(multi_url(primary, "127.0.0.1:%d,127.0.0.1:%d" % (relay.port, standby.port),
                                          "?sslmode=disable"), {})
        first = db.connect(info)
        cursor = first.cursor()
        cursor.execute("select pg_is_in_recovery()")
        assert cursor.fetchone()[0] is False
        first.close()
        relay.close()  # the host it landed on goes away
        with pytest.raises(ConnectError, match="127.0.0.1:%d" % relay.port):
            db.connect(info)  # not silently the standby
    finally:
        relay.close()
        db._PINNED.clear()


def test_multi_host_ports_lists():
    from otelmig.settings import resolve_conninfo
    assert resolve_conninfo("postgresql://a,b:6000/d", {}).host_list == (("a", 5432), ("b", 6000))
    assert resolve_conninfo("postgresql://u@/d?host=a,b&port=7000", {}).host_list == (("a", 7000), ("b", 7000))
    assert resolve_conninfo(None, {"PGHOST": "a,b,c", "PGPORT": "1,2,3"}).host_list == (("a", 1), ("b", 2), ("c", 3))
    result = run_cli("check", url="postgresql://u@a,b,c/d?port=1,2")
    assert result.code == 2 and one_line(result.err) and "3 hosts" in result.err
    assert resolve_conninfo(None, {"PGHOST": "a,b", "PGTARGETSESSIONATTRS": "standby"}).target_session_attrs \
        == "standby"
    assert resolve_conninfo("postgresql://a,b/d", {"PGTARGETSESSIONATTRS": "primary"}).target_session_attrs \
        == "primary"  # like libpq, the environment fills in what the URL leaves out
    assert resolve_conninfo("postgresql://a,b/d", {}, writes=True).target_session_attrs == "read-write"
    assert resolve_conninfo("postgresql://a/d", {}, writes=True).target_session_attrs == "any"
    result = run_cli("check", url="postgresql://u@a,b/d?target_session_attrs=read-mostly")
    assert result.code == 2 and one_line(result.err) and "invalid target_session_attrs" in result.err


def test_multi_host_migrations_land_on_the_read_write_host(primary_and_standby):
    primary, standby = primary_and_standby
    p, s = primary.port, standby.port
    sql(primary.url(), "drop schema if exists otel cascade")
    url = multi_url(primary, "127.0.0.1:%d,127.0.0.1:%d" % (s, p))  # the standby first, no attrs
    result = run_cli("upgrade", url=url)
    assert result.code == 0, result
    assert sql(primary.url(), "select version_num from otel.alembic_version") == [[HEAD_REVISION]]
    wait_for(lambda: sql(standby.url(), "select to_regclass('otel.alembic_version') is not null") == [[True]],
             "the standby to replay the upgrade")
    assert run_cli("check", url=url).code == 0  # the probe reads the standby: replicated, ready
    for attrs in ("read-only", "standby", "prefer-standby"):
        result = run_cli("rollback", url=url + "?target_session_attrs=" + attrs)
        assert result.code == 2 and one_line(result.err) and "cannot migrate" in result.err, (attrs, result)
    result = run_cli("rollback", url=multi_url(primary, "127.0.0.1:%d,127.0.0.1:%d" % (s, unused_port())))
    assert result.code == 3 and one_line(result.err) and "read-only" in result.err and "read-write" in result.err, result
    assert sql(primary.url(), "select version_num from otel.alembic_version") == [[HEAD_REVISION]]
    assert run_cli("rollback", url=url).code == 0
    assert sql(primary.url(), "select version_num from otel.alembic_version") == [[KNOWN_REVISIONS[-2]]]


def test_pg_hba_reject_is_not_retried_and_stops_the_host_list(primary_and_standby):
    primary, standby = primary_and_standby
    sql(primary.url(), "drop role if exists hba_rejected")
    sql(primary.url(), "create role hba_rejected login password 'Zqvw/Kxjb'")
    relay = CountingProxy(primary.port)
    try:
        url = "postgresql://hba_rejected:Zqvw/Kxjb@127.0.0.1:%d,127.0.0.1:%d/postgres?sslmode=disable" % (
            relay.port, standby.port)
        result = run_cli("check", "--wait", "30", url=url)
        assert result.code == 3 and one_line(result.err) and "pg_hba.conf" in result.err, result
        assert relay.accepted == 1, relay.accepted
        assert "Zqvw" not in result.out + result.err
    finally:
        relay.close()


@pytest.mark.parametrize("role", ["pw_md5", "pw_clear"])
def test_no_password_for_md5_and_cleartext_methods(primary_and_standby, tmp_path, role):
    """SCRAM fails one way inside the driver, md5 and cleartext another: the same one line for all."""
    primary, _ = primary_and_standby
    sql(primary.url(), "drop role if exists %s" % role)
    sql(primary.url(), "create role %s login password 'Zqvw/Kxjb'" % role)
    relay = CountingProxy(primary.port)
    try:
        url = "postgresql://%s@127.0.0.1:%d/postgres?sslmode=disable" % (role, relay.port)
        result = run_cli("check", "--wait", "30", url=url, env={"PGPASSFILE": str(tmp_path / "none")})
        assert result.code == 3 and one_line(result.err) and "asks for a password" in result.err and "PGPASSWORD" in result.err, result
        assert one_line(result.err)
        assert relay.accepted == 1, relay.accepted
        good = run_cli("check", url=url, env={"PGPASSWORD": "Zqvw/Kxjb"})
        # the method itself works with a password: logged in (what check then finds depends on the database)
        assert good.code in (4, 8) and "password" not in good.err, good
    finally:
        relay.close()


def test_verify_ca_without_root_certificate_is_exit_2(pyz, server, tmp_path):
    """No sslrootcert and no ~/.postgresql/root.crt: a configuration error, as the README says."""
    url = server.url("postgres") + "?sslmode=verify-ca"
    for args in (["check", "--wait", "30"], ["check", "--format", "json"]):
        result = run_pyz(pyz, *args, url=url, env={"HOME": str(tmp_path)})
        assert result.code == 2, result
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and str(tmp_path / ".postgresql" / "root.crt") in lines[0], lines
        assert "sslrootcert=system" in lines[0]


def test_redactor_masks_json_and_repr_spellings():
    """A message that did carry a password (a driver's, say) is masked however it is quoted."""
    from otelmig import redact
    password = "Zqvw\\Kxjb\"Wmrt'Ypdl/é"
    redact.register(password)
    for text in (json.dumps({"message": "failed: " + password}), json.dumps(password, ensure_ascii=False),
                 "failed: %r" % password, "postgresql://u:%s@h/d" % urllib.parse.quote(password, safe="")):
        assert not leaks(password, redact.redact(text)), text
    # a URL password never registered: masked up to the last @ of the word
    assert redact.redact("postgresql://bob:Zqvw@Kxjb/Wmrt@db/x") == "postgresql://bob:***@db/x"


def test_raw_password_migration_commands_wrong_and_unreachable(pw_role):
    cluster, database, set_password = pw_role
    password = "Zqvw/Kxjb+Wmrt=Ypdl#Lvgn?Nbcs@Hsfk Tqzx"
    set_password(password)
    for url in (raw_url(cluster, password + "X", database), raw_url(cluster, password, database, port=unused_port())):
        for args in (["upgrade", "-v"], ["rollback", "--format", "json"], ["stamp", "head", "--traceback"],
                     ["downgrade", "base", "--format", "json", "-v"]):
            result = run_cli(*args, url=url)
            assert result.code == 3, (args, result)
            assert not leaks(password, result.out + result.err), (args, result)


def test_no_host_with_the_wanted_attrs_is_waited_for(primary_and_standby):
    """During a failover no host may take writes yet: check --wait keeps trying."""
    import time
    primary, standby = primary_and_standby
    relay = CountingProxy(standby.port)
    try:
        url = multi_url(primary, "127.0.0.1:%d" % relay.port, "?target_session_attrs=read-write&sslmode=disable")
        started = time.monotonic()
        result = run_cli("check", "--wait", "1.5", url=url)
        assert result.code == 3 and "is read-only (target_session_attrs=read-write)" in error_line(result.err), result
        assert all(line.startswith("check: waiting") for line in result.err.strip().splitlines()[:-1]), result.err
        assert time.monotonic() - started >= 1.5 and relay.accepted >= 2, relay.accepted
    finally:
        relay.close()
