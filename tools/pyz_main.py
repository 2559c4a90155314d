# -*- coding: utf-8 -*-
"""__main__.py of dist/otelmig.pyz (tools/build_pyz.py puts it in place of shiv's).

shiv unpacks the bundled site-packages once into $SHIV_ROOT, else ~/.shiv, and
fails when HOME is unset or read-only.  When SHIV_ROOT is unset this picks:
  1. ~/.shiv, if HOME is set and ~/.shiv is (or can be made) writable;
  2. else <tempdir>/otelmig-shiv-<uid>, made 0700; one that is not a private
     directory of ours (other owner, symlink, group/other-writable) is refused.
On a warm start it then puts the unpacked site-packages on sys.path and calls
the entry point itself; otherwise it hands over to shiv's bootstrap, which
unpacks under a file lock (so simultaneous first starts are safe).
Before a first start unpacks, it makes sure the root can be written: one
line and exit 2 (a configuration problem) instead of shiv's traceback.
This runs on every start: it imports nothing Python has not loaded already,
except tempfile in case 2 (and shiv's bootstrap when unpacking).
"""
import os
import stat  # loaded by os already, like everything imported here
import sys

# Filled in by tools/build_pyz.py from shiv's environment.json.
BUILD_ID = "@BUILD_ID@"
ENTRY_POINT = "@ENTRY_POINT@"


USAGE_EXIT = 2  # otelmig's exit code for a configuration problem
FIX = "set SHIV_ROOT to a writable directory of this user, or unset it to use ~/.shiv or the temp dir"


def _refuse(message):
    """One line on stderr, exit 2: the launcher's only way to fail."""
    sys.stderr.write("otelmig: %s\n" % " ".join(message.split()))
    sys.exit(USAGE_EXIT)


def _home_root():
    home = os.environ.get("HOME")
    if not home:
        return None
    root = os.path.join(home, ".shiv")
    if not os.path.isdir(root):
        try:
            os.mkdir(root)  # as shiv would, but failing here is not fatal
        except FileExistsError:  # another process just made it
            pass
        except OSError:  # HOME missing, read-only, not ours...
            return None
    # A file named ~/.shiv is not ours to replace: use the temp dir instead.
    return root if os.path.isdir(root) and os.access(root, os.W_OK | os.X_OK) else None


def _temp_root():
    import tempfile  # only on this path: it costs a few ms

    uid = os.getuid() if hasattr(os, "getuid") else None
    root = os.path.join(tempfile.gettempdir(), "otelmig-shiv-%s" % ("x" if uid is None else uid))
    try:
        os.mkdir(root, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(root)
    # A directory that someone else made, or can write to, could be seeded
    # with code that we would then import: never use it.
    if uid is not None and (not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o022):
        _refuse("refusing to unpack into %s: not a private directory of uid %s; "
                "remove it, or set SHIV_ROOT to a writable directory of your own" % (root, uid))
    return root


def _configured_root():
    """SHIV_ROOT as shiv's cache_path() reads it ("$VAR" and ~ expanded)."""
    root = os.environ["SHIV_ROOT"]
    if root.startswith("$"):
        root = os.environ.get(root[1:], root[1:])
    return os.path.expanduser(root)


def _site_packages():
    name = os.path.basename(os.path.realpath(sys.argv[0]))
    return os.path.join(_configured_root(), "%s_%s" % (name, BUILD_ID), "site-packages")


def _ensure_writable(root):
    """shiv makes `root` (with parents), then a lock file and a tree in it:
    try exactly that, so a read-only mount, a file in the way or a parent we
    may not enter is one line now rather than a traceback half way."""
    try:
        os.makedirs(root, exist_ok=True)
        probe = os.path.join(root, ".otelmig-write-test-%d" % os.getpid())
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, FileExistsError):  # makedirs: the path is a file
            reason = "it exists and is not a directory"
        _refuse("cannot unpack into SHIV_ROOT %s: %s; %s" % (root, reason, FIX))


def _stem(path):  # pathlib.Path(path).stem without importing pathlib
    return os.path.splitext(os.path.basename(path.rstrip(os.sep)))[0]


def _warm_start():
    """Do what shiv 1.0.8's _bootstrap.bootstrap() does once site-packages is
    unpacked, minus importing it and re-reading the zip: ~25 ms of ~90 ms.
    Any SHIV_* override other than SHIV_ROOT takes shiv's own path."""
    if not BUILD_ID.isalnum() or any(k.startswith("SHIV_") and k != "SHIV_ROOT" for k in os.environ):
        return
    site_packages = _site_packages()
    if not os.path.isdir(site_packages):
        return  # first start: shiv unpacks
    import site

    # Same sys.path as shiv: ours goes before the first site-packages (or at
    # the end; shiv's "or" also sends index 0 there).
    length = len(sys.path)
    index = next((i for i, p in enumerate(sys.path) if _stem(p) in ("site-packages", "dist-packages")), None)
    index = index or length
    site.addsitedir(site_packages)
    sys.path = sys.path[:index] + sys.path[length:] + sys.path[index:length]
    module, _, func = ENTRY_POINT.partition(":")
    sys.exit(getattr(__import__(module, fromlist=[func]), func)())


def main():
    if not os.environ.get("SHIV_ROOT"):
        try:
            os.environ["SHIV_ROOT"] = _home_root() or _temp_root()
        except OSError as exc:  # e.g. no writable temp dir at all
            _refuse("no writable directory to unpack into (%s); set SHIV_ROOT to a writable directory"
                    % (exc.strerror or exc))
    if not os.path.isdir(_site_packages()) or os.environ.get("SHIV_FORCE_EXTRACT"):
        _ensure_writable(_configured_root())
    # Each module is compiled on its first import; keeping that bytecode in
    # our private unpack dir is what makes warm starts fast (~0.6 s saved
    # when Alembic is imported), so write it even under PYTHONDONTWRITEBYTECODE
    # or -B, which are meant to keep __pycache__ out of source trees.
    # Delete this line to honour them.
    sys.dont_write_bytecode = False
    _warm_start()
    import _bootstrap  # shiv's runtime, at the top of this zip

    _bootstrap.bootstrap()


main()
