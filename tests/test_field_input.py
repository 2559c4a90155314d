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
    assert "163d8f446eb9" in proc.stdout


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
