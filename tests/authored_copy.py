"""A copy of the repository with a one-statement revision added exactly as
docs/authoring.md says (issue 22, item 8): `alembic revision -m ...`, the
worked example's step functions pasted in, the contract edits to
otelmig/schema.py and docs/schema.md. Nothing else is edited: what then fails
in the copy is what the guide left out.

    .venv/bin/python tests/authored_copy.py DEST    # makes the copy (and its dist/otelmig.pyz)
    cd DEST && /path/to/repo/.venv/bin/python -m pytest -n 2 -p no:cacheprovider   # the whole suite on it

tests/test_one_statement_revision.py runs the kit and the revision-sensitive
tests on such a copy.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(sys.executable)
GUIDE = os.path.join(REPO, "docs", "authoring.md")
EXAMPLE_HEADING = "**A worked example: one statement.**"
MESSAGE = "add span links"
# Not copied: what a clone does not have, or what the copy makes itself.
LEFT_OUT = (".git", ".venv", ".build", "dist", "__pycache__", ".pytest_cache", "*.egg-info")
# What `alembic revision` writes (migrations/script.py.mako), replaced by the guide's example.
EMPTY_STEPS = ("def upgrade_steps(n: SchemaSQL):\n    return []\n\n\n"
               "def downgrade_steps(n: SchemaSQL):\n    return []\n")


def guide_blocks(text: str = None) -> List[tuple]:
    """(language, body) of each fenced block of the guide's worked example and after, in order."""
    if text is None:
        with open(GUIDE, encoding="utf-8") as handle:
            text = handle.read()
    tail = text.split(EXAMPLE_HEADING, 1)[1]
    return re.findall(r"^```(\w+)\n(.*?)^```", tail, re.M | re.S)


def example() -> Dict[str, str]:
    """The guide's example: the step functions, the schema.py line, the schema.md row."""
    blocks = guide_blocks()
    python = [body for language, body in blocks if language == "python"]
    text = [body for language, body in blocks if language == "text"]
    return {"steps": python[0], "column": python[1], "row": text[0]}


def author_env(url: str = None, **extra) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES", "OTEL", "PYTEST_"))}
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    if url is not None:
        env["POSTGRES_URL"] = url
    env.update(extra)
    return env


def copy_repository(dest: str) -> str:
    shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(*LEFT_OUT))
    return dest


def add_revision(root: str) -> str:
    """`alembic revision -m MESSAGE` in root, its steps replaced by the guide's. Returns its path."""
    made = subprocess.run(["alembic", "revision", "-m", MESSAGE], cwd=root, env=author_env(),
                          capture_output=True, text=True, timeout=120)
    if made.returncode != 0:
        raise RuntimeError("alembic revision: %s" % (made.stderr or made.stdout))
    path = re.search(r"Generating (\S+\.py)", made.stdout + made.stderr).group(1)
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if EMPTY_STEPS not in text:
        raise RuntimeError("migrations/script.py.mako no longer writes the empty step functions "
                           "this copy replaces: update tests/authored_copy.py EMPTY_STEPS")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text.replace(EMPTY_STEPS, example()["steps"]))
    return path


def edit_contract(root: str) -> None:
    """The guide's two contract edits: the column last in SPANS, the row last in the spans table."""
    edits = example()
    path = os.path.join(root, "otelmig", "schema.py")
    text = open(path, encoding="utf-8").read()
    spans_end = '), "spans_pkey"'
    assert text.count(spans_end) == 1, "otelmig/schema.py: SPANS no longer ends with %r" % spans_end
    open(path, "w", encoding="utf-8").write(text.replace(spans_end, edits["column"] + spans_end))
    path = os.path.join(root, "docs", "schema.md")
    lines = open(path, encoding="utf-8").read().split("\n")
    start = lines.index("## {schema}.spans")
    last = start + 1
    while not lines[last].startswith("|"):
        last += 1
    while lines[last + 1].startswith("|"):
        last += 1
    lines.insert(last + 1, edits["row"].rstrip("\n"))
    open(path, "w", encoding="utf-8").write("\n".join(lines))


def build_pyz(root: str) -> None:
    """root/dist/otelmig.pyz, with the repository's build venv (./build.sh made it) and a work dir of its own."""
    python = os.path.join(os.environ.get("OTELMIG_BUILD_DIR", os.path.join(REPO, ".build")), "venv", "bin", "python")
    if not os.path.exists(python):
        subprocess.run([os.path.join(REPO, "build.sh")], cwd=REPO, check=True, capture_output=True)
    work = tempfile.mkdtemp(prefix="otelmig-build-")
    try:
        subprocess.run([python, os.path.join(root, "tools", "build_pyz.py"), "build", root, work,
                        os.path.join(root, "dist", "otelmig.pyz")], cwd=root, check=True, capture_output=True,
                       env=dict(os.environ, SOURCE_DATE_EPOCH="315554400"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def authored_copy(dest: str) -> str:
    """The copy with the revision added as documented; returns the new revision's id."""
    copy_repository(dest)
    path = add_revision(dest)
    edit_contract(dest)
    build_pyz(dest)
    return re.search(r'^revision = [\'"](\w+)[\'"]', open(path, encoding="utf-8").read(), re.M).group(1)


if __name__ == "__main__":
    if len(sys.argv) != 2 or os.path.exists(sys.argv[1]):
        sys.exit("usage: tests/authored_copy.py DEST (a path that does not exist yet)")
    print("revision %s added in %s" % (authored_copy(os.path.abspath(sys.argv[1])), sys.argv[1]))
