"""Build dist/otelmig.pyz: run by build.sh with the build venv's Python.

    build_pyz.py build REPO WORKDIR OUTPUT   stage site-packages, run shiv, rewrite the zip
    build_pyz.py copy-source REPO DEST       copy the source tree (what `build` reads)

One pure-Python pyz for CPython 3.9-3.13 on any platform, byte-for-byte
reproducible given SOURCE_DATE_EPOCH (build.sh sets it from git).
"""
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

PY_FLOOR = "3.9"  # oldest CPython we support: pick wheels for it
PURE = ["--implementation", "py", "--python-version", PY_FLOOR, "--platform", "any"]
# Packages without a pure-Python wheel: take the CPython wheel for a fixed
# platform (so the bytes do not depend on the build machine) and drop these
# files, leaving the package's own pure-Python fallback.
NO_PURE_WHEEL = {
    "markupsafe": (
        ["--implementation", "cp", "--python-version", PY_FLOOR, "--abi", "cp39",
         "--platform", "manylinux2014_x86_64"],
        "markupsafe/_speedups.*",  # the C extension, its .c source and .pyi stub
    ),
}
COMPILED = (".so", ".pyd", ".dylib", ".dll", ".pyc", ".pyo")
# What building otelmig (and build.sh itself) reads, besides top-level files.
SOURCE_DIRS = {"otelmig", "migrations", "tools"}
ZIP_EPOCH_MIN = 315532800  # 1980-01-01, the earliest time a zip entry can hold


def pip(*args):
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile",
           "--no-warn-script-location", "--disable-pip-version-check", *args]
    subprocess.run(cmd, check=True)


def source_files(repo):
    """Top-level files plus SOURCE_DIRS of the work tree (not .venv, .build,
    dist...), honouring .gitignore when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            check=True, capture_output=True).stdout.decode()
        names = [n for n in out.split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = [str(p.relative_to(repo)) for p in repo.rglob("*")]
    for name in sorted(set(names)):
        parts = Path(name).parts
        if len(parts) > 1 and (parts[0] not in SOURCE_DIRS or "__pycache__" in parts):
            continue
        if (repo / name).is_file():
            yield name


def copy_source(repo, dest):
    for name in source_files(repo):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, dest / name)


def requirements(lock):
    pins = []
    for line in lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name = re.split(r"[=<>!~\[; ]", line, maxsplit=1)[0]
            pins.append((re.sub(r"[-_.]+", "-", name).lower(), line))
    return pins


def stage(repo, work, site):
    pins = requirements(repo / "requirements.lock")
    pure = [spec for name, spec in pins if name not in NO_PURE_WHEEL]
    pip("--only-binary=:all:", *PURE, "--target", str(site), *pure)
    shutil.rmtree(site / "bin")  # console scripts: their shebang is the venv's path
    for name, spec in pins:
        if name in NO_PURE_WHEEL:
            flags, drop = NO_PURE_WHEEL[name]
            pip("--only-binary=:all:", *flags, "--target", str(site), spec)
            for path in site.glob(drop):
                path.unlink()
    # otelmig itself, built from a copy so the work tree gets no build/ or
    # *.egg-info; setuptools comes pinned from the venv (no build isolation).
    src = work / "src"
    shutil.rmtree(src, ignore_errors=True)
    copy_source(repo, src)
    pip("--no-build-isolation", "--target", str(site), str(src))

    # Drop what depends on the build machine: console scripts, direct_url.json
    # (the source path), any bytecode.
    shutil.rmtree(site / "bin", ignore_errors=True)
    for path in list(site.rglob("*")):
        if path.name in ("direct_url.json", "__pycache__") or path.suffix in (".pyc", ".pyo"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    # ...and their lines in RECORD, so RECORD lists exactly what ships.
    for record in site.glob("*.dist-info/RECORD"):
        lines = record.read_text().splitlines(keepends=True)
        keep = [ln for ln in lines if (site / ln.split(",", 1)[0]).resolve().is_relative_to(site.resolve())
                and (site / ln.split(",", 1)[0]).is_file()]
        record.write_text("".join(keep))

    bad = [str(p) for p in site.rglob("*") if p.suffix in COMPILED or ".so." in p.name]
    if bad:
        sys.exit("compiled files would be bundled: %s" % bad)
    if list(site.glob("greenlet*")):
        sys.exit("greenlet must not be bundled")


def rewrite(shiv_zip, output, main_py, epoch):
    """Rewrite shiv's zip: our __main__.py, sorted entries, fixed metadata."""
    date_time = time.gmtime(epoch)[:6]
    tmp = output.with_name(output.name + ".tmp")
    with zipfile.ZipFile(shiv_zip) as src, open(tmp, "wb") as fd:
        fd.write(b"#!/usr/bin/env python3\n")
        with zipfile.ZipFile(fd, "w") as dst:
            for name in sorted(src.namelist()):
                data = main_py if name == "__main__.py" else src.read(name)
                info = zipfile.ZipInfo(name, date_time)
                info.create_system = 3  # Unix, whatever the build OS
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                dst.writestr(info, data, compresslevel=9)
    os.chmod(tmp, 0o755)
    os.replace(tmp, output)


def launcher(shiv_zip):
    """tools/pyz_main.py with the build id and entry point filled in."""
    with zipfile.ZipFile(shiv_zip) as z:
        env = json.loads(z.read("environment.json"))
    # The launcher's warm start assumes shiv's defaults for all else.
    plain = dict(preamble=None, script=None, no_modify=False, extend_pythonpath=False,
                 prepend_pythonpath=None, root=None, always_write_cache=False)
    assert all(env[k] == v for k, v in plain.items()), env
    text = (Path(__file__).parent / "pyz_main.py").read_text()
    text = text.replace("@BUILD_ID@", env["build_id"]).replace("@ENTRY_POINT@", env["entry_point"])
    return text.encode()


def build(repo, work, output):
    epoch = max(int(os.environ["SOURCE_DATE_EPOCH"]), ZIP_EPOCH_MIN)
    site = work / "site-packages"
    shutil.rmtree(site, ignore_errors=True)
    stage(repo, work, site)
    shiv_zip = work / "shiv.pyz"
    subprocess.run(
        [sys.executable, "-m", "shiv", "--site-packages", str(site), "--reproducible",
         "--entry-point", "otelmig.__main__:run", "--python", "/usr/bin/env python3",
         "--output-file", str(shiv_zip)],
        check=True, env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)})
    output.parent.mkdir(parents=True, exist_ok=True)
    rewrite(shiv_zip, output, launcher(shiv_zip), epoch)


if __name__ == "__main__":
    os.umask(0o022)  # modes of staged files must not depend on the caller's umask
    cmd, repo, dest = sys.argv[1], Path(sys.argv[2]).resolve(), Path(sys.argv[3]).resolve()
    if cmd == "copy-source":
        copy_source(repo, dest)
    elif cmd == "build":
        build(repo, dest, Path(sys.argv[4]).resolve())
    else:
        sys.exit(__doc__)
