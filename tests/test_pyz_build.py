"""dist/otelmig.pyz as shipped: contents, start-up in unfriendly environments,
every supported CPython. No database needed.

Builds with ./build.sh only when dist/otelmig.pyz is missing. The slow
reproducibility check builds twice (about 20 s).
"""
import glob
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
from helpers import one_line
from otelmig.revisions import HEAD_REVISION

REPO = Path(__file__).resolve().parents[1]
PYZ_REL = Path("dist") / "otelmig.pyz"
HEAD = HEAD_REVISION
MIB = 1024 * 1024
COMPILED = (".so", ".pyd", ".dylib", ".dll", ".pyc", ".pyo")
VERSION_RE = re.compile(
    r"^otelmig (\S+) \(head (\w+), Python (3\.\d+\.\d+\S*), Alembic (\S+), SQLAlchemy (\S+), pg8000 (\S+)\)$"
)
PYENV = Path.home() / ".pyenv" / "versions"


@pytest.fixture(scope="session")
def names(pyz):
    with zipfile.ZipFile(pyz) as z:
        return z.namelist()


@pytest.fixture(scope="session")
def warm_root(tmp_path_factory):
    """One extraction dir shared by tests that are not about extraction."""
    return tmp_path_factory.mktemp("shiv-root")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIV_")}
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def run(cmd, env, **kw):
    return subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=120, **kw)


def assert_version(proc):
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert HEAD in line
    match = VERSION_RE.match(line)
    assert match, line
    pins = {}
    for spec in (REPO / "requirements.lock").read_text().splitlines():
        if "==" in spec and not spec.startswith("#"):
            name, version = spec.split("#")[0].strip().split("==")
            pins[name.lower()] = version
    for name, shown in zip(("alembic", "sqlalchemy", "pg8000"), match.groups()[3:]):
        assert pins[name] == shown or pins[name].startswith(shown + "."), (name, shown)
    return match


def extracted(root):
    return sorted(Path(root).glob("otelmig.pyz_*/site-packages/otelmig"))


# --- contents ---------------------------------------------------------------

def test_no_compiled_files(names):
    bad = [n for n in names if n.endswith(COMPILED) or ".so." in n or "__pycache__" in n]
    assert bad == []


def test_size(pyz):
    assert pyz.stat().st_size <= 8 * MIB


def test_no_greenlet(names):
    assert not [n for n in names if n.lower().startswith("site-packages/greenlet")]


def test_layout(pyz, names):
    assert pyz.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert pyz.stat().st_mode & stat.S_IXUSR
    with zipfile.ZipFile(pyz) as z:
        env = json.loads(z.read("environment.json"))
        main = z.read("__main__.py").decode()
    assert env["entry_point"] == "otelmig.__main__:run"
    assert 'BUILD_ID = "%s"' % env["build_id"] in main  # our launcher, filled in
    for name in ("otelmig/__main__.py", "otelmig/_version.py", "otelmig/migrations/versions/__init__.py",
                 "markupsafe/_native.py", "sqlalchemy/__init__.py", "alembic/__init__.py", "pg8000/__init__.py"):
        assert "site-packages/" + name in names


def test_nothing_from_the_build_machine(pyz, names):
    assert not [n for n in names if n.endswith("direct_url.json") or n.startswith("site-packages/bin/")]
    with zipfile.ZipFile(pyz) as z:
        for name in names:
            data = z.read(name)
            for needle in (str(REPO), ".build/site-packages", ".build/src", ".build/venv"):
                assert needle.encode() not in data, (name, needle)


def test_bundled_imports(pyz, warm_root):
    """The pure-Python MarkupSafe fallback, and no greenlet from the bundle."""
    code = (
        "import sys, markupsafe, sqlalchemy, alembic, pg8000, mako, dateutil\n"
        "assert markupsafe.escape('<a>') == '&lt;a&gt;'\n"
        "assert markupsafe._escape_inner.__module__ == 'markupsafe._native'\n"
        "assert '.shiv' not in str(sys.modules.get('greenlet'))\n"
        "import otelmig\n"
        "print(sqlalchemy.__file__)\n"
        "print(otelmig.__file__)\n"
    )
    proc = run([sys.executable, pyz, "-c", code], clean_env(SHIV_ROOT=warm_root, SHIV_INTERPRETER=1))
    assert proc.returncode == 0, proc.stderr
    # The bundle wins over whatever the interpreter has installed (an editable otelmig, say).
    for path in proc.stdout.split():
        assert path.startswith(str(warm_root)), path


# --- --version --------------------------------------------------------------

def test_version_python3(pyz, warm_root):
    assert_version(run(["python3", PYZ_REL, "--version"], clean_env(SHIV_ROOT=warm_root), cwd=REPO))


def test_version_executable(pyz, warm_root):
    assert_version(run(["./" + str(PYZ_REL), "--version"], clean_env(SHIV_ROOT=warm_root), cwd=REPO))


def test_fast_path_matches_shiv(pyz, warm_root):
    """The launcher's warm start sets up sys.path exactly like shiv's bootstrap
    (which any SHIV_* variable besides SHIV_ROOT selects)."""
    code = (
        "import json, runpy, sys, types\n"
        "fake = types.ModuleType('otelmig.__main__')\n"
        "fake.run = lambda: print(json.dumps(sys.path))\n"
        "sys.modules['otelmig.__main__'] = fake\n"
        "sys.argv = [sys.argv[1], '--version']\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    run([sys.executable, pyz, "--version"], clean_env(SHIV_ROOT=warm_root))  # make sure it is unpacked
    paths = []
    for extra in ({}, {"SHIV_FORCE_EXTRACT": "0"}):
        proc = run([sys.executable, "-c", code, pyz], clean_env(SHIV_ROOT=warm_root, **extra))
        assert proc.returncode == 0, proc.stderr
        paths.append(json.loads(proc.stdout))
    assert paths[0] == paths[1]
    assert any(p.startswith(str(warm_root)) for p in paths[0])


@pytest.mark.parametrize("minor", range(9, 14))
def test_version_each_python(pyz, warm_root, minor):
    found = sorted(glob.glob(str(PYENV / ("3.%d.*" % minor) / "bin" / "python3")))
    if not found:
        pytest.skip("no CPython 3.%d under %s" % (minor, PYENV))
    match = assert_version(run([found[-1], pyz, "--version"], clean_env(SHIV_ROOT=warm_root)))
    assert match.group(3).startswith("3.%d." % minor)


# --- where it unpacks -------------------------------------------------------

def test_home_unset(pyz, tmp_path):
    proc = run([sys.executable, pyz, "--version"], clean_env(HOME=None, TMPDIR=tmp_path))
    assert_version(proc)
    root = tmp_path / ("otelmig-shiv-%d" % os.getuid())
    assert extracted(root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


def test_home_writable(pyz, tmp_path):
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir(), tmp.mkdir()
    assert_version(run([sys.executable, pyz, "--version"], clean_env(HOME=home, TMPDIR=tmp)))
    assert extracted(home / ".shiv") and not list(tmp.iterdir())


def test_home_read_only(pyz, tmp_path):
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir(), tmp.mkdir()
    home.chmod(0o555)
    cmd = [sys.executable, pyz, "--version"]
    if os.geteuid() == 0:  # root writes through mode bits: make it a read-only mount
        if not shutil.which("unshare") or run(["unshare", "-m", "true"], None).returncode:
            pytest.skip("root, and no mount namespace for a read-only HOME")
        cmd = ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', home, *cmd]
    try:
        assert_version(run(cmd, clean_env(HOME=home, TMPDIR=tmp)))
    finally:
        home.chmod(0o755)
    assert not (home / ".shiv").exists()
    assert extracted(tmp / ("otelmig-shiv-%d" % os.getuid()))


def test_shiv_root_wins(pyz, tmp_path):
    home, tmp, root = tmp_path / "home", tmp_path / "tmp", tmp_path / "root"
    home.mkdir(), tmp.mkdir()
    assert_version(run([sys.executable, pyz, "--version"], clean_env(HOME=home, TMPDIR=tmp, SHIV_ROOT=root)))
    assert extracted(root)
    assert not (home / ".shiv").exists() and not list(tmp.iterdir())


@pytest.mark.parametrize("problem", ["group-writable", "other owner", "symlink"])
def test_refuses_foreign_temp_dir(pyz, tmp_path, problem):
    uid = os.getuid()
    target = tmp_path / ("otelmig-shiv-%d" % uid)
    if problem == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        target.symlink_to(tmp_path / "elsewhere")
    else:
        target.mkdir()
        target.chmod(0o777 if problem == "group-writable" else 0o700)
    if problem == "other owner":
        if uid != 0:
            pytest.skip("needs root to chown")
        os.chown(target, 65534, 65534)
    proc = run([sys.executable, pyz, "--version"], clean_env(HOME=None, TMPDIR=tmp_path))
    assert proc.returncode == 2, proc.stderr  # SHIV_ROOT not usable: a configuration error
    assert one_line(proc.stderr) and "refusing" in proc.stderr and "SHIV_ROOT" in proc.stderr, proc.stderr
    assert not list(target.iterdir())


def nobody_python():
    for python in (sys.executable, shutil.which("python3"), "/usr/bin/python3", "/usr/local/bin/python3"):
        if python and run(["runuser", "-u", "nobody", "--", python, "-c", "pass"], None).returncode == 0:
            return python
    return None


def test_as_nobody(pyz):
    if os.geteuid() != 0 or not shutil.which("runuser"):
        pytest.skip("needs root and runuser")
    python = nobody_python()
    if not python:
        pytest.skip("no Python that user nobody may run")
    # pytest's tmp_path is private to root: use dirs that nobody can reach.
    outer = Path(tempfile.mkdtemp(prefix="otelmig-nobody-"))
    try:
        outer.chmod(0o755)
        shutil.copy(pyz, outer / "otelmig.pyz")
        (outer / "otelmig.pyz").chmod(0o755)
        tmp = outer / "tmp"
        tmp.mkdir()
        tmp.chmod(0o1777)
        env = clean_env(HOME="/nonexistent", TMPDIR=tmp)
        proc = run(["runuser", "-u", "nobody", "--", python, outer / "otelmig.pyz", "--version"], env)
        assert_version(proc)
        root = tmp / "otelmig-shiv-65534"
        assert root.stat().st_uid == 65534 and extracted(root)
    finally:
        shutil.rmtree(outer)


@pytest.mark.parametrize("where", ["SHIV_ROOT", "temp dir"])
def test_simultaneous_first_starts(pyz, tmp_path, where):
    env = clean_env(SHIV_ROOT=tmp_path / "root") if where == "SHIV_ROOT" else clean_env(HOME=None, TMPDIR=tmp_path)
    procs = [
        subprocess.Popen([sys.executable, str(pyz), "--version"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert HEAD in out


# --- reproducibility (slow) -------------------------------------------------

def test_build_is_reproducible():
    proc = subprocess.run([str(REPO / "build.sh"), "verify"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "reproducible" in proc.stdout
