"""Issue 22, item 8: a correct one-statement revision passes, after exactly
the edits docs/authoring.md asks for. tests/authored_copy.py copies the
repository and adds the guide's worked example (a nullable spans.links with
its refusing downgrade) with `alembic revision`, plus the two contract edits;
then the kit (the new revision's checks) and the tests a revision touches
(adoption, verify, docs, authors) run on that copy, in their own pytest
session with its own server. The guide's shell lines (the data-loss refusal,
resetting a development database after deleting a revision file) are run as
printed.

The whole suite on such a copy is a by-hand run (it takes the suite's time):
see tests/authored_copy.py.
"""

import os
import shlex
import subprocess
import sys

import pytest

import authored_copy
from conftest import REPO, sql
from otelmig import revisions
from pgcluster import bindir

ALEMBIC_FAILED = 255  # plain alembic's exit on any failure (tests/test_authors.py)
# The tests a revision touches, run in the copy; with the kit's checks of the new revision and its
# walks through every revision (-k below). The kit's other whole-history checks (outlying timestamps,
# field settings: minutes) and its own fixtures are left to the by-hand run of the whole suite.
SENSITIVE = ["tests/test_adoption.py::test_adoption_matrix", "tests/test_adoption.py::test_baseline_converges_on_its_frozen_contract",
             "tests/test_verify.py", "tests/test_docs.py",
             "tests/test_authors.py::test_documented_authors_path", "tests/test_authors.py::test_plain_alembic_matches_otelmig",
             "tests/test_authors.py::test_single_head_revision", "tests/test_authors.py::test_upgrade",
             "tests/test_authors.py::test_up_down_consistency"]
# Revision 2 below a newer head: its interrupted downgrade must still be finished by `upgrade`
# (it was only while revision 2 was the head: state.effective_revision).
PARTITIONING = "826630e38563"
KIT_CHECKS = ("up_down_up or offline_script_matches or plan_lists or crash_after_every or fails_alive or "
              "interrupted_downgrade or writer_during or operator_objects or refuses_or_keeps")


@pytest.fixture(scope="module")
def authored(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("authored") / "repo")
    revision = authored_copy.authored_copy(root)
    return root, revision


def test_the_guide_example_becomes_the_head_of_the_copy(authored):
    root, revision = authored
    head, known = revisions.load(os.path.join(root, "migrations", "versions"))
    assert head == revision and known == revisions.KNOWN_REVISIONS + (revision,)
    with open(os.path.join(root, "otelmig", "schema.py"), encoding="utf-8") as handle:
        assert 'Column("links", JSONB, True)' in handle.read()


def test_the_kit_and_the_revision_sensitive_tests_pass_on_the_copy(authored):
    """Nothing but the guide's edits: the kit's checks of the new revision and
    the adoption, verify, docs and authors tests pass on the copy."""
    root, revision = authored
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PG", "POSTGRES"))}
    ran = subprocess.run([sys.executable, "-m", "pytest", "-n", "0", "-q", "-p", "no:cacheprovider", "-x",
                          "tests/test_revision_kit.py", *SENSITIVE,
                          "-k", "not test_revision_kit or (%s and (%s)) or walks_every_revision or (%s and "
                          "interrupted_downgrade)" % (revision, KIT_CHECKS, PARTITIONING)],
                         cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    summary = ran.stdout.strip().splitlines()[-1] if ran.stdout.strip() else ran.stderr
    assert ran.returncode == 0, ran.stdout[-6000:] + ran.stderr[-2000:]
    assert "passed" in summary and "skipped" not in summary and "deselected" in summary, summary


# --- the guide's shell lines, as printed ------------------------------------------------

def shell_blocks():
    """The sh blocks of the worked example and after: [data-loss refusal, reset]."""
    return [body for language, body in authored_copy.guide_blocks() if language == "sh"]


def run_line(root, url, line):
    """One line of the guide in bash, as an author's shell has it: the venv's alembic, psql, POSTGRES_URL."""
    env = authored_copy.author_env(url)
    env["PATH"] = bindir() + os.pathsep + env["PATH"]
    command = line.split(" #", 1)[0].strip()
    return subprocess.run(["bash", "-c", command], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_guide_shows_a_data_loss_refusal(authored, db_url):
    root, revision = authored
    lines = [line for line in shell_blocks()[0].splitlines() if line.strip()]
    assert [shlex.split(line.split(" #")[0])[-2:] for line in lines[2:]] == [["downgrade", "-1"]] * 2
    for line in lines[:2]:
        done = run_line(root, db_url, line)
        assert done.returncode == 0, (line, done.stdout + done.stderr)
    assert sql(db_url, "select count(*) from otel.spans where links is not null") == [[1]]
    refused = run_line(root, db_url, lines[2])
    failed = [line for line in (refused.stdout + refused.stderr).splitlines() if line.strip()]
    assert refused.returncode == ALEMBIC_FAILED and len(failed) == 1, refused.stdout + refused.stderr
    assert "1 rows in otel.spans.links" in failed[0] and "OTELMIG_ALLOW_DATA_LOSS=1" in failed[0], failed[0]
    assert sql(db_url, "select version_num from otel.alembic_version") == [[revision]]  # nothing changed
    assert sql(db_url, "select count(*) from otel.spans where links is not null") == [[1]]
    lifted = run_line(root, db_url, lines[3])
    assert lifted.returncode == 0, lifted.stdout + lifted.stderr
    assert sql(db_url, "select version_num from otel.alembic_version") == [[revisions.HEAD_REVISION]]
    assert sql(db_url, "select count(*) from otel.spans") == [[1]]  # the span stays; its links are gone
    assert sql(db_url, "select to_regclass('otel.spans') is not null and not exists (select 1 from "
                       "pg_attribute where attrelid = 'otel.spans'::regclass and attname = 'links')") == [[True]]


def test_the_guide_resets_a_dev_database_after_a_revision_file_is_deleted(tmp_path, db_url):
    """The revision file deleted while the database is at it: the guide's reset lines bring it back."""
    root = authored_copy.copy_repository(str(tmp_path / "repo"))
    path = authored_copy.add_revision(root)
    assert run_line(root, db_url, "alembic upgrade head").returncode == 0
    os.unlink(path)
    lost = run_line(root, db_url, "alembic upgrade head")
    assert lost.returncode == ALEMBIC_FAILED and "Can't locate revision" in lost.stdout + lost.stderr, \
        lost.stdout + lost.stderr
    lines = [line for line in shell_blocks()[1].splitlines() if line.strip()]
    for line in lines:
        done = run_line(root, db_url, line)
        assert done.returncode == 0, (line, done.stdout + done.stderr)
    assert sql(db_url, "select version_num from otel.alembic_version") == [[revisions.HEAD_REVISION]]
