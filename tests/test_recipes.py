"""The cron recipes in the docs, run exactly as printed (issue 22, item 1).

Each recipe sits between `<!-- recipe:NAME -->` and `<!-- /recipe -->` in
README.md or docs/*.md, as a cron.d file: `NAME=value` lines, then one job line
(five schedule fields, the user, the command). The test takes the command text
as printed, runs it with `sh -c` as cron would, and changes only what the
recipe itself names as variables: the pyz (`OTELMIG`), the textfile collector's
directory (`TEXTFILE_DIR`) and the database (`POSTGRES_URL`,
`POSTGRES_PASSWORD_FILE`). A healthy run
must publish `otelmig_verify_ok 1`; a failing one must replace it with the
failed run's metrics, and no run may leave another file in the directory, and
the job's exit status must be otelmig's.
"""

import glob
import os
import re
import subprocess

import pytest

from conftest import REPO, run_cli, sql
from helpers import parse_prometheus

RECIPE = re.compile(r"<!-- recipe:([a-z0-9-]+) -->\n(.*?)<!-- /recipe -->", re.S)
FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)
ASSIGNMENT = re.compile(r"([A-Z_][A-Z0-9_]*)=(.*)")
UNREACHABLE = "postgresql://otelmig@127.0.0.1:1/telemetry"
LABEL = '{schema="otel"}'


def doc_paths():
    return [os.path.join(REPO, "README.md")] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))


def recipes():
    """{name: (doc path, the code block between the markers)}."""
    found = {}
    for path in doc_paths():
        with open(path, encoding="utf-8") as handle:
            for name, body in RECIPE.findall(handle.read()):
                assert name not in found, "recipe %s printed twice (%s, %s)" % (name, found.get(name), path)
                blocks = FENCE.findall(body)
                assert len(blocks) == 1, "recipe %s in %s: one code block between the markers" % (name, path)
                found[name] = (path, blocks[0])
    return found


def cron_job(block):
    """(the variables a cron.d file sets, the command of its one job line)."""
    assigned, commands = {}, []
    for line in block.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        assignment = ASSIGNMENT.fullmatch(line)
        if assignment:
            assigned[assignment.group(1)] = assignment.group(2)
            continue
        fields = line.split(None, 6)
        assert len(fields) == 7, "not a cron.d job line (schedule, user, command): %r" % line
        commands.append(fields[6])
    assert len(commands) == 1, block
    return assigned, commands[0]


def run_recipe(name, textfile_dir, pyz, url):
    assigned, command = cron_job(recipes()[name][1])
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"),
           "SHELL": "/bin/sh"}
    env.update(assigned)
    env.update(OTELMIG=str(pyz), TEXTFILE_DIR=str(textfile_dir), POSTGRES_URL=url)
    if "POSTGRES_PASSWORD_FILE" in assigned:  # the test URLs carry their password; the file must exist
        secret = os.path.join(os.path.dirname(str(textfile_dir)), "password-" + name)
        with open(secret, "w") as handle:
            handle.write("not-the-password\n")
        env["POSTGRES_PASSWORD_FILE"] = secret
    return subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, timeout=300)


def published(textfile_dir):
    """The one file the recipe left in the directory, and its metrics."""
    left = sorted(os.listdir(str(textfile_dir)))
    assert len(left) == 1 and left[0].endswith(".prom"), "files left: %s" % left
    with open(os.path.join(str(textfile_dir), left[0]), encoding="utf-8") as handle:
        text = handle.read()
    return parse_prometheus(text)


@pytest.fixture
def textfile_dir(tmp_path):
    """The collector's directory, alone in it (the password file sits beside it)."""
    directory = tmp_path / "textfile"
    directory.mkdir()
    return directory


def test_the_docs_print_the_cron_recipes():
    assert set(recipes()) == {"verify-cron", "maintain-cron"}
    for name, (path, block) in recipes().items():
        assigned, command = cron_job(block)
        # cron turns an unescaped % into a newline: the printed line would not be what runs
        assert "%" not in command, (name, path)
        # the test substitutes only what the recipe itself names
        assert {"OTELMIG", "TEXTFILE_DIR", "POSTGRES_URL"} <= set(assigned), (name, path)
        assert '"$OTELMIG"' in command and "$TEXTFILE_DIR" in command, (name, path)


@pytest.mark.parametrize("failure", ["drift", "unreachable"])
def test_verify_recipe_publishes_a_failure(failure, db_url, pyz, textfile_dir):
    assert run_cli("upgrade", url=db_url).code == 0
    healthy = run_recipe("verify-cron", textfile_dir, pyz, db_url)
    assert healthy.returncode == 0, healthy.stderr
    assert published(textfile_dir)["otelmig_verify_ok" + LABEL] == 1

    if failure == "drift":
        sql(db_url, "DROP INDEX otel.ix_spans_trace_id")
        url, expected = db_url, 7
    else:
        url, expected = UNREACHABLE, 3
    failed = run_recipe("verify-cron", textfile_dir, pyz, url)
    assert failed.returncode == expected, failed.stderr
    metrics = published(textfile_dir)
    assert metrics["otelmig_verify_ok" + LABEL] == 0
    assert metrics["otelmig_verify_exit_code" + LABEL] == expected


@pytest.mark.parametrize("failure", ["not initialised", "unreachable"])
def test_maintain_recipe_publishes_a_failure(failure, db_url, new_database, pyz, textfile_dir):
    assert run_cli("upgrade", url=db_url).code == 0
    healthy = run_recipe("maintain-cron", textfile_dir, pyz, db_url)
    assert healthy.returncode == 0, healthy.stderr
    assert published(textfile_dir)["otelmig_maintain_exit_code" + LABEL] == 0

    url, expected = (new_database(), 4) if failure == "not initialised" else (UNREACHABLE, 3)
    failed = run_recipe("maintain-cron", textfile_dir, pyz, url)
    assert failed.returncode == expected, failed.stderr
    assert published(textfile_dir)["otelmig_maintain_exit_code" + LABEL] == expected


@pytest.mark.parametrize("name", ["verify-cron", "maintain-cron"])
def test_a_recipe_that_cannot_start_otelmig_unpublishes_the_old_metrics(name, db_url, pyz, textfile_dir):
    """No pyz where the recipe says (a usage error prints no metrics either): the
    old file must not stay published as if the last run were this one."""
    assert run_cli("upgrade", url=db_url).code == 0
    assert run_recipe(name, textfile_dir, pyz, db_url).returncode == 0
    failed = run_recipe(name, textfile_dir, textfile_dir.parent / "missing.pyz", db_url)
    assert failed.returncode != 0
    assert published(textfile_dir) == {}
