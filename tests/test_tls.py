"""TLS with libpq's sslmode semantics over pg8000, against a cluster that the
suite starts with a test CA it generates. A server built without OpenSSL (the
18-minimal build) cannot start with ssl = on: the tests that need TLS are then
skipped with that reason, never counted as passing; the rest still run."""

import os
import shutil
import subprocess

import pytest

from conftest import run_cli
from helpers import one_line
from pgcluster import Cluster, selected


def openssl(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True, capture_output=True)


def make_ca(directory, name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", name + ".key", "-out", name + ".crt",
            "-days", "2", "-subj", "/CN=otelmig test %s" % name,
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=directory)


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    certs = tmp_path_factory.mktemp("certs")
    make_ca(certs, "ca")
    make_ca(certs, "other_ca")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=localhost", cwd=certs)
    (certs / "ext.cnf").write_text("subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n"
                                   "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf", cwd=certs)
    cluster = Cluster()
    for name in ("server.crt", "server.key"):
        shutil.copy(certs / name, os.path.join(cluster.root, name))
        os.chmod(os.path.join(cluster.root, name), 0o600)
        if cluster.as_root:
            shutil.chown(os.path.join(cluster.root, name), "postgres", "postgres")
    try:
        cluster.start("ssl = on\nssl_cert_file = '%s/server.crt'\nssl_key_file = '%s/server.key'\n"
                      % (cluster.root, cluster.root))
    except subprocess.CalledProcessError:
        log = cluster.log()
        cluster.stop()
        if "SSL is not supported by this build" in log:
            pytest.skip("PostgreSQL %s (%s) is built without OpenSSL: TLS cannot be tested on it"
                        % (selected(), cluster.bindir))
        raise
    try:
        yield cluster, certs
    finally:
        cluster.stop()


def check(url):
    return run_cli("check", "-v", url=url)


def test_verify_full_with_the_right_ca(tls_cluster):
    cluster, certs = tls_cluster
    result = check(cluster.url(host="localhost", sslmode="verify-full", sslrootcert=str(certs / "ca.crt")))
    assert result.code == 4, result.err  # connected over verified TLS; the database is simply empty


def test_verify_full_with_the_wrong_ca(tls_cluster):
    cluster, certs = tls_cluster
    result = check(cluster.url(host="localhost", sslmode="verify-full", sslrootcert=str(certs / "other_ca.crt")))
    assert result.code == 3 and one_line(result.err) and "unknown CA" in result.err


def test_verify_full_host_name_mismatch(tls_cluster):
    cluster, certs = tls_cluster
    result = check(cluster.url(host="127.0.0.1", sslmode="verify-full", sslrootcert=str(certs / "ca.crt")))
    assert result.code == 3 and one_line(result.err) and "host name mismatch" in result.err


def test_verify_ca_ignores_the_host_name(tls_cluster):
    cluster, certs = tls_cluster
    result = check(cluster.url(host="127.0.0.1", sslmode="verify-ca", sslrootcert=str(certs / "ca.crt")))
    assert result.code == 4, result.err


def test_verify_ca_missing_root_cert_is_a_usage_error(tls_cluster, tmp_path):
    cluster, _ = tls_cluster
    result = check(cluster.url(sslmode="verify-ca", sslrootcert=str(tmp_path / "absent.crt")))
    assert result.code == 2 and one_line(result.err) and "sslrootcert" in result.err


def test_require_against_a_server_without_tls(server):
    result = check(server.url("postgres", sslmode="require"))
    assert result.code == 3 and one_line(result.err) and "does not support TLS" in result.err


def test_prefer_and_disable_connect_to_a_server_without_tls(server):
    for url in (server.url("postgres", sslmode="prefer"), server.url("postgres", sslmode="disable")):
        assert check(url).code == 4, url


def test_prefer_and_allow_connect_to_a_server_with_tls(tls_cluster):
    cluster, _ = tls_cluster
    for url in (cluster.url(sslmode="prefer"), cluster.url(sslmode="allow")):
        assert check(url).code == 4, url


def test_tls_is_really_used(tls_cluster):
    """pg_stat_ssl from our own session: verify-full encrypts, disable does not."""
    import otelmig.db
    from otelmig.settings import resolve_conninfo

    cluster, certs = tls_cluster
    for mode, expected in (("verify-full", True), ("require", True), ("prefer", True), ("allow", False),
                           ("disable", False)):
        info = resolve_conninfo(cluster.url(host="localhost", sslmode=mode, sslrootcert=str(certs / "ca.crt")), {})
        conn = otelmig.db.connect(info)
        cursor = conn.cursor()
        cursor.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
        assert cursor.fetchone()[0] is expected, mode
        conn.close()


def test_pgsslmode_env(server):
    env = {"PGHOST": "127.0.0.1", "PGPORT": str(server.cluster.port), "PGUSER": "postgres",
           "PGPASSWORD": server.cluster.password, "PGDATABASE": "postgres", "PGSSLMODE": "require"}
    result = run_cli("check", env=env)
    assert result.code == 3 and one_line(result.err) and "does not support TLS" in result.err
