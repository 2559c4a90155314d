# -*- coding: utf-8 -*-
"""__main__.py of dist/otelmig.pyz (tools/build_pyz.py puts it in place of shiv's).

shiv unpacks the bundled site-packages once into $SHIV_ROOT, else ~/.shiv, and
fails when HOME is unset or read-only.  When SHIV_ROOT is unset this picks:
  1. ~/.shiv, if HOME is set and ~/.shiv is (or can be made) writable;
  2. else <tempdir>/otelmig-shiv-<uid>, made 0700; one that is not a private
     directory of ours (other owner, symlink, group/other-writable) is refused.
Then it hands over to shiv's own bootstrap, which extracts under a file lock
(so simultaneous first starts are safe) and calls otelmig.__main__:run.
Runs on every start: imports nothing beyond what Python has already loaded,
except tempfile in case 2.
"""
import os
import stat  # already loaded by os: free
import sys

_W = os.W_OK | os.X_OK


def _home_root():
    home = os.environ.get("HOME")
    if not home:
        return None
    root = os.path.join(home, ".shiv")
    if os.path.isdir(root):
        return root if os.access(root, _W) else None
    try:
        os.mkdir(root)  # same as shiv would do, but here failure is not fatal
    except FileExistsError:  # another process just made it
        pass
    except OSError:  # HOME missing, read-only, not ours...
        return None
    return root if os.access(root, _W) else None


def _temp_root():
    import tempfile  # only on this path: it costs a few ms

    uid = os.getuid() if hasattr(os, "getuid") else None
    root = os.path.join(tempfile.gettempdir(), "otelmig-shiv-%s" % ("x" if uid is None else uid))
    try:
        os.mkdir(root, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(root)
    # A directory someone else made (or can write to) could be pre-seeded
    # with code that we would then import: never use it.
    if uid is not None and (
        not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o022
    ):
        sys.exit(
            "otelmig: refusing to unpack into %s: not a private directory of uid %s.\n"
            "Remove it, or set SHIV_ROOT to a writable directory of your own." % (root, uid)
        )
    return root


def main():
    if not os.environ.get("SHIV_ROOT"):
        try:
            os.environ["SHIV_ROOT"] = _home_root() or _temp_root()
        except OSError as exc:  # e.g. no writable temp dir at all
            sys.exit("otelmig: no writable directory to unpack into (%s); set SHIV_ROOT." % exc)
    # Each module is compiled on its first import; keeping that bytecode in
    # our private unpack dir is what makes warm starts fast (~0.6 s saved), so
    # write it even under PYTHONDONTWRITEBYTECODE / -B, which exist to keep
    # __pycache__ out of source trees. Delete this line to honour them.
    sys.dont_write_bytecode = False
    import _bootstrap  # shiv's runtime, at the top of this zip

    _bootstrap.bootstrap()


main()
