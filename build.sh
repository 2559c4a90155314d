#!/usr/bin/env bash
# ./build.sh          write dist/otelmig.pyz (shiv zipapp, pure Python, CPython 3.9-3.13)
# ./build.sh verify   build twice from two copies of the tree, compare sha256
#
# Needs only python3 with venv + pip and the package index.  Tools go into a
# venv under .build/ (override: OTELMIG_BUILD_DIR); the logic is in
# tools/build_pyz.py, the launcher that replaces shiv's __main__.py is
# tools/pyz_main.py.
set -euo pipefail
cd "$(dirname "$0")"
REPO=$PWD
PYTHON=${PYTHON:-python3}
BUILD=${OTELMIG_BUILD_DIR:-$REPO/.build}
VENV=$BUILD/venv

# Timestamps inside the pyz: the commit's time, or a constant outside git.
# A SOURCE_DATE_EPOCH already set (verify does so) wins.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || true)
    export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-315554400}  # shiv's default: 1980-01-01
fi

make_venv() {
    # Rebuilt when the pins or the interpreter change.
    local stamp
    stamp=$(cat requirements-dev.lock tools/build-constraints.txt | sha256sum | cut -c1-16)-$("$PYTHON" -c 'import sys; print(sys.version.split()[0])')
    if [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$stamp" ]; then
        rm -rf "$VENV"
        if ! "$PYTHON" -m venv "$VENV"; then
            # e.g. Debian's python3 without python3-venv (no ensurepip): make
            # the venv bare and let the interpreter's own pip put pip in it.
            echo "build.sh: retrying with the interpreter's pip" >&2
            rm -rf "$VENV"
            "$PYTHON" -m venv --without-pip "$VENV"
            "$PYTHON" -m pip --python "$VENV/bin/python" install --quiet \
                --disable-pip-version-check -c tools/build-constraints.txt pip
        fi
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            -c tools/build-constraints.txt pip
        # shiv's pin from requirements-dev.lock; setuptools/click/pip pinned
        # by tools/build-constraints.txt (setuptools writes otelmig's metadata).
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            -c tools/build-constraints.txt setuptools \
            "$(grep -iE '^shiv==' requirements-dev.lock)"
        echo "$stamp" > "$VENV/.stamp"
    fi
}

build() {
    make_venv
    "$VENV/bin/python" tools/build_pyz.py build "$REPO" "$BUILD" "$REPO/dist/otelmig.pyz"
    echo "dist/otelmig.pyz: $(stat -c %s dist/otelmig.pyz) bytes, sha256 $(sha256sum dist/otelmig.pyz | cut -c1-64)"
}

verify() {
    local a b
    tmp=$(mktemp -d)  # global: the EXIT trap runs after verify returns
    trap 'rm -rf "$tmp"' EXIT
    # Two copies at different paths, each with its own fresh venv; the second
    # under another umask and time zone, which must not leak into the bytes.
    mkdir -p "$tmp/one" "$tmp/the/second/copy"
    "$PYTHON" tools/build_pyz.py copy-source "$REPO" "$tmp/one"
    "$PYTHON" tools/build_pyz.py copy-source "$REPO" "$tmp/the/second/copy"
    (cd "$tmp/one" && ./build.sh)
    (cd "$tmp/the/second/copy" && umask 077 && TZ=Asia/Kolkata ./build.sh)
    a=$(sha256sum < "$tmp/one/dist/otelmig.pyz")
    b=$(sha256sum < "$tmp/the/second/copy/dist/otelmig.pyz")
    if [ "$a" != "$b" ]; then
        echo "verify: NOT reproducible: ${a%% *} vs ${b%% *}" >&2
        exit 1
    fi
    echo "verify: reproducible, sha256 ${a%% *}"
}

case "${1:-build}" in
    build) build ;;
    verify) verify ;;
    *) echo "usage: $0 [build|verify]" >&2; exit 2 ;;
esac
