"""The repository carries its own contract: docs/ agrees with the code.

docs/schema.md is read as a person reads it (its tables) and compared with
otelmig/schema.py; docs/legacy_schema.sql is the source of the test fixture;
docs/cli.md and the README name exactly the commands and exit codes the
program has (cli.md also its flags). Every relative link in the README and
docs/ leads to a file and heading that exist; the README stays a README.
"""

import glob
import os
import re

import pytest

from conftest import LEGACY_SQL, REPO
from otelmig import schema as contract
from otelmig.cli import build_parser
from otelmig.errors import ExitStatus

DOCS = os.path.join(REPO, "docs")
TYPE_WORDS = {"timestamptz": contract.TIMESTAMPTZ}  # how the doc spells a type -> format_type()
DEFAULT_WORDS = {"identity or sequence": contract.SEQUENCE_DEFAULT}


README = os.path.join(REPO, "README.md")
BENCH_README = os.path.join(REPO, "bench", "README.md")
README_MAX_LINES = 300
BENCH_README_MAX_LINES = 250


def read(name):
    with open(os.path.join(DOCS, name), encoding="utf-8") as handle:
        return handle.read()


def read_path(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def pages():
    """Every Markdown page a reader follows links through."""
    return [README, BENCH_README] + sorted(glob.glob(os.path.join(DOCS, "*.md")))


def markdown_tables(text):
    """{heading: [row dicts]} for every table under a `## ` heading."""
    tables, heading, header = {}, None, None
    for line in text.splitlines():
        if line.startswith("## "):
            heading, header = line[3:].strip(), None
        elif line.startswith("|") and heading is not None:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
            elif not set("".join(cells)) <= set("- "):
                tables.setdefault(heading, []).append(dict(zip(header, cells)))
        else:
            header = None if not line.startswith("|") else header
    return tables


def documented_table(tables, table):
    rows = tables["{schema}.%s" % table.name]
    columns = tuple(contract.Column(r["column"], TYPE_WORDS.get(r["type"], r["type"]), r["null"] == "null",
                                    DEFAULT_WORDS.get(r["default"], r["default"] or None)) for r in rows)
    primary = [(r["column"], m.group(1)) for r in rows for m in [re.search(r"primary key `(\w+)`", r["note"])] if m]
    return columns, primary


@pytest.mark.parametrize("table", contract.TABLES, ids=[t.name for t in contract.TABLES])
def test_schema_md_tables_are_the_contract(table):
    columns, primary = documented_table(markdown_tables(read("schema.md")), table)
    assert sorted(columns) == sorted(table.columns)
    assert primary == [(c, table.primary_key) for c in table.primary_key_columns]


def test_schema_md_indexes_are_the_contract():
    heading = next(h for h in markdown_tables(read("schema.md")) if h.startswith("Indexes"))
    assert "all btree" in heading
    rows = markdown_tables(read("schema.md"))[heading]
    documented = sorted((r["name"], r["table"], r["key"]) for r in rows)
    declared = sorted((i.name, i.table, "(%s)" % ", ".join(i.keys)) for i in contract.INDEXES)
    assert documented == declared
    assert all(i.method == "btree" and not i.unique for i in contract.INDEXES)


def test_schema_md_names_the_version_table():
    assert "`{schema}.%s`" % contract.VERSION_TABLE in read("schema.md")


def test_legacy_layout_is_documented_and_is_what_the_tests_load():
    text = read("legacy_schema.sql")
    assert os.path.samefile(LEGACY_SQL, os.path.join(REPO, "docs", "legacy_schema.sql"))
    for table, columns in contract.LEGACY_ONLY_COLUMNS.items():
        body = re.search(r"CREATE TABLE IF NOT EXISTS otel\.%s \((.*?)\n\);" % table, text, re.S).group(1)
        names = {line.split()[0] for line in body.splitlines() if line.strip() and not line.strip().startswith("--")}
        assert set(columns) <= names, table


def _cli_md_tables():
    return markdown_tables(read("cli.md"))


def test_cli_md_commands_are_the_parsers():
    parser = build_parser()
    commands = next(a for a in parser._subparsers._group_actions).choices
    documented = {r["command"].strip("`").split()[0] for r in _cli_md_tables()["Commands"]}
    assert documented == set(commands)


def test_cli_md_flags_are_the_parsers():
    parser = build_parser()
    flags = {s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"}
    subparsers = next(a for a in parser._subparsers._group_actions).choices.values()
    flags |= {s for p in subparsers for a in p._actions for s in a.option_strings
              if s.startswith("--") and s != "--help"}
    text = read("cli.md")
    documented = set(re.findall(r"`[^`]*?(--[a-z][a-z-]+)", text))
    assert documented == flags


def test_cli_md_exit_codes_are_the_programs():
    rows = _cli_md_tables()["Exit codes"]
    documented = set()
    for row in rows:
        documented.update(int(code) for code in row["code"].split("/"))
    assert documented == {int(status) for status in ExitStatus}


def test_no_reference_to_the_old_spec_folder():
    """README, docs/ and docstrings point at docs/, which a clone has (spec/ was never in the repository).
    Revision scripts are frozen history and keep their words."""
    paths = pages() + [os.path.join(REPO, "otelmig", n)
                                                   for n in os.listdir(os.path.join(REPO, "otelmig"))
                                                   if n.endswith(".py")]
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            assert "spec/" not in handle.read(), path


# --- the README is a README; the pages link to what exists ------------------------

def test_readme_commands_are_the_parsers():
    parser = build_parser()
    commands = next(a for a in parser._subparsers._group_actions).choices
    documented = {r["command"].strip("`").split()[0] for r in markdown_tables(read_path(README))["Commands"]}
    assert documented == set(commands)


def test_readme_exit_codes_are_the_programs():
    documented = set()
    for row in markdown_tables(read_path(README))["Exit codes"]:
        documented.update(int(code) for code in row["code"].split("/"))
    assert documented == {int(status) for status in ExitStatus}


def test_readme_and_bench_readme_stay_short():
    """The README is the front page (the manual is docs/); bench/README.md holds the current figures only."""
    assert len(read_path(README).splitlines()) <= README_MAX_LINES
    assert len(read_path(BENCH_README).splitlines()) <= BENCH_README_MAX_LINES


def test_bench_readme_has_one_table_of_current_figures():
    """One table, every figure with its target, the command that produced it, the machine and the commit
    (`same` repeats the row above)."""
    text = read_path(BENCH_README)
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("|") and not (i and lines[i - 1].startswith("|"))]
    assert len(starts) == 1, "bench/README.md: one table (of current figures), found %d" % len(starts)
    tables = markdown_tables(text)
    assert list(tables) == ["Current figures"], list(tables)
    rows = tables["Current figures"]
    assert rows
    for column in ("figure", "target", "command", "machine, date", "commit"):
        assert column in rows[0], column
        assert all(row[column] for row in rows), column


def heading_anchors(text):
    """The anchors GitHub gives a page's headings (lower case, punctuation dropped, spaces to
    hyphens, a repeated one numbered); headings inside code blocks are not headings."""
    anchors, counts, fenced = set(), {}, False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"#{1,6} (.*)", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug if slug not in counts else "%s-%d" % (slug, counts[slug]))
            counts[slug] = counts.get(slug, 0) + 1
    return anchors


def relative_links(text):
    """(target, anchor) of every Markdown link that is not a URL, outside code blocks and spans."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    prose = re.sub(r"`[^`\n]*`", "", prose)
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if not re.match(r"[a-z][a-z0-9+.-]*:", target):
            path, _, anchor = target.partition("#")
            yield path, anchor


def test_heading_anchors_as_github_makes_them():
    anchors = heading_anchors("# otelmig\n## What the baseline revision does (`163d8f446eb9`)\n"
                              "```\n# not a heading\n```\n## Exit codes\n## Exit codes\n")
    assert anchors == {"otelmig", "what-the-baseline-revision-does-163d8f446eb9", "exit-codes", "exit-codes-1"}


@pytest.mark.parametrize("page", pages(), ids=lambda p: os.path.relpath(p, REPO))
def test_relative_links_resolve(page):
    """Every relative link leads to a file of the repository, and its #anchor to a heading of it."""
    text = read_path(page)
    links = list(relative_links(text))
    if page == README:
        assert links, "the README links to the manual in docs/"
    for path, anchor in links:
        target = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        assert os.path.exists(target), "%s links to %s, which does not exist" % (page, path)
        if anchor:
            assert target.endswith(".md"), (page, path, anchor)
            assert anchor in heading_anchors(read_path(target)), \
                "%s links to %s#%s: no such heading" % (page, path or "itself", anchor)
