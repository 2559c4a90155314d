"""Stores an operator may hold before adoption, built on a real server, and
the adoption matrix (tests/test_adoption.py runs it; docs/revisions.md shows it).

The matrix is declared here from the rules in docs/revisions.md "Compatibility rules",
independently of otelmig.compat, so the test checks the code against the rules.
Regenerate the docs/revisions.md table with: .venv/bin/python tests/adoption_stores.py
"""

import os
import sys
import uuid
from typing import Dict, List, NamedTuple, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from otelmig import schema as contract  # noqa: E402
from otelmig.revisions import KNOWN_REVISIONS  # noqa: E402


def _adopted_contract() -> contract.Contract:
    """The matrix is the baseline's adoption rules: stores are shaped after
    what the baseline converges on (its frozen contract), not the head's."""
    import importlib.util
    from otelmig.revisions import versions_dir
    path = next(os.path.join(versions_dir(), name) for name in os.listdir(versions_dir())
                if name.startswith(KNOWN_REVISIONS[0] + "_"))
    spec = importlib.util.spec_from_file_location("baseline_revision", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.frozen_contract()


ADOPTED = _adopted_contract()

ADOPT, CONVERGE, REFUSE, NA = "adopt", "converge", "refuse", "n/a"

# Column shapes, and index shapes: how a head-named object may pre-exist.
COLUMN_SHAPES = ("identical", "other type", "other nullability", "other default", "holding data",
                 "owned by another role")
INDEX_SHAPES = ("identical", "other keys", "other access method", "unique", "partial", "invalid",
                "holding data", "owned by another role")

# The columns the head adds to the legacy layout (the baseline fills them with their default).
HEAD_ADDS = {("traces", "resource_attributes"), ("traces", "trace_attributes"),
             ("spans", "status_message"), ("spans", "created_at")}

OTHER_TYPE = {contract.TEXT: "character varying(200)", contract.TIMESTAMPTZ: "timestamp without time zone",
              contract.DOUBLE: "numeric", contract.INTEGER: "bigint", contract.BIGINT: "integer",
              contract.JSONB: "json"}
SOME_DEFAULT = {contract.TEXT: "'x'::text", contract.TIMESTAMPTZ: "'2020-01-01 00:00:00+00'::timestamp with time zone",
                contract.DOUBLE: "'1'::double precision", contract.INTEGER: "7", contract.BIGINT: "7",
                contract.JSONB: "'{\"x\": 1}'::jsonb"}
SAMPLE = {contract.TEXT: "'v'", contract.TIMESTAMPTZ: "'2024-05-01 10:00:00+00'", contract.DOUBLE: "1.5",
          contract.INTEGER: "3", contract.BIGINT: "42", contract.JSONB: "'{\"k\": \"v\"}'"}


class Case(NamedTuple):
    kind: str    # "column" | "index"
    table: str
    name: str    # column or index name
    shape: str
    outcome: str


def column_outcome(table: contract.Table, column: contract.Column, shape: str) -> str:
    in_primary_key = column.name in table.primary_key_columns
    if shape in ("identical", "holding data"):
        return ADOPT
    if shape in ("other type", "owned by another role"):
        return REFUSE  # otelmig never converts data; it cannot alter another role's table
    if shape == "other nullability":
        if in_primary_key:
            return NA  # a primary key column is NOT NULL by definition
        if column.nullable or (table.name, column.name) in HEAD_ADDS:
            return CONVERGE  # DROP NOT NULL; or filled with the default, then SET NOT NULL
        return REFUSE  # its NULLs would need values otelmig cannot invent
    if shape == "other default":
        return REFUSE if column.default == contract.SEQUENCE_DEFAULT else CONVERGE
    raise ValueError(shape)


def index_outcome(shape: str) -> str:
    if shape in ("identical", "holding data"):
        return ADOPT
    if shape == "invalid":
        return CONVERGE  # a failed concurrent build: dropped and rebuilt
    return REFUSE  # the operator's index of another shape, or a table we cannot alter


def matrix() -> List[Case]:
    cases = []
    for table in ADOPTED.tables:
        for column in table.columns:
            for shape in COLUMN_SHAPES:
                cases.append(Case("column", table.name, column.name, shape, column_outcome(table, column, shape)))
    for index in ADOPTED.indexes:
        for shape in INDEX_SHAPES:
            cases.append(Case("index", index.table, index.name, shape, index_outcome(shape)))
    return cases


def groups() -> Dict[Tuple[str, str, str], List[Case]]:
    """One database per (kind, shape, outcome): every object of the group in that shape at once."""
    grouped: Dict[Tuple[str, str, str], List[Case]] = {}
    for case in matrix():
        if case.outcome != NA:
            grouped.setdefault((case.kind, case.shape, case.outcome), []).append(case)
    return grouped


# -- README ------------------------------------------------------------------

README_START = "<!-- adoption-matrix:start (generated by tests/adoption_stores.py) -->"
README_END = "<!-- adoption-matrix:end -->"


def readme_table() -> str:
    by_object: Dict[Tuple[str, str, str], Dict[str, str]] = {}
    for case in matrix():
        by_object.setdefault((case.kind, case.table, case.name), {})[case.shape] = case.outcome
    lines = [README_START, "",
             "| column | " + " | ".join(COLUMN_SHAPES) + " |",
             "|---|" + "---|" * len(COLUMN_SHAPES)]
    for (kind, table, name), outcomes in by_object.items():
        if kind == "column":
            lines.append("| %s.%s | %s |" % (table, name, " | ".join(outcomes[s] for s in COLUMN_SHAPES)))
    lines += ["", "| index | " + " | ".join(INDEX_SHAPES) + " |", "|---|" + "---|" * len(INDEX_SHAPES)]
    for (kind, table, name), outcomes in by_object.items():
        if kind == "index":
            lines.append("| %s (on %s) | %s |" % (name, table, " | ".join(outcomes[s] for s in INDEX_SHAPES)))
    lines += ["", README_END]
    return "\n".join(lines)


def readme_section(readme_text: str) -> Optional[str]:
    if README_START not in readme_text or README_END not in readme_text:
        return None
    start = readme_text.index(README_START)
    return readme_text[start:readme_text.index(README_END) + len(README_END)]


# -- stores ------------------------------------------------------------------

def head_shaped_ddl(schema: str = "otel") -> List[str]:
    """The contract's tables with no index and no version row: every head-named
    column pre-exists (an operator who created the store by hand)."""
    statements = ["CREATE SCHEMA IF NOT EXISTS %s" % schema]
    for table in ADOPTED.tables:
        columns = []
        for column in table.columns:
            if column.default == contract.SEQUENCE_DEFAULT:
                columns.append("%s bigserial" % column.name)
                continue
            columns.append("%s %s%s%s" % (column.name, column.type, "" if column.nullable else " NOT NULL",
                                          " DEFAULT %s" % column.default if column.default else ""))
        columns.append("CONSTRAINT %s PRIMARY KEY (%s)" % (table.primary_key, ", ".join(table.primary_key_columns)))
        statements.append("CREATE TABLE %s.%s (%s)" % (schema, table.name, ", ".join(columns)))
    return statements


def sample_row(table: contract.Table, schema: str = "otel") -> str:
    columns = [c for c in table.columns if c.default != contract.SEQUENCE_DEFAULT]
    return "INSERT INTO %s.%s (%s) VALUES (%s)" % (schema, table.name, ", ".join(c.name for c in columns),
                                                   ", ".join(SAMPLE[c.type] for c in columns))


def column_shape_sql(table: contract.Table, column: contract.Column, shape: str, schema: str = "otel") -> List[str]:
    target = "%s.%s" % (schema, table.name)
    alter = "ALTER TABLE %s ALTER COLUMN %s " % (target, column.name)
    if shape in ("identical", "holding data", "owned by another role"):
        return []
    if shape == "other type":
        return [alter + "DROP DEFAULT",
                alter + "TYPE %s USING NULL" % OTHER_TYPE[column.type]
                if column.name not in table.primary_key_columns else
                alter + "TYPE %s" % OTHER_TYPE[column.type]]
    if shape == "other nullability":
        return [alter + ("SET NOT NULL" if column.nullable else "DROP NOT NULL")]
    if shape == "other default":
        if column.default == contract.SEQUENCE_DEFAULT:
            return [alter + "DROP DEFAULT"]
        if column.default:
            return [alter + "SET DEFAULT %s" % SOME_DEFAULT[column.type]]
        return [alter + "SET DEFAULT %s" % SOME_DEFAULT[column.type]]
    raise ValueError(shape)


def index_shape_sql(index: contract.Index, shape: str, schema: str = "otel") -> List[str]:
    target = "%s.%s" % (schema, index.table)
    keys = ", ".join(index.keys)
    if shape in ("identical", "holding data", "owned by another role"):
        return ["CREATE INDEX %s ON %s (%s)" % (index.name, target, keys)]
    if shape == "other keys":
        return ["CREATE INDEX %s ON %s (tenant_id)" % (index.name, target)]
    if shape == "other access method":
        return ["CREATE INDEX %s ON %s USING brin (%s)" % (index.name, target, keys.replace(" DESC", ""))]
    if shape == "unique":
        return ["CREATE UNIQUE INDEX %s ON %s (%s)" % (index.name, target, keys)]
    if shape == "partial":
        return ["CREATE INDEX %s ON %s (%s) WHERE tenant_id IS NOT NULL" % (index.name, target, keys)]
    if shape == "invalid":
        return ["CREATE INDEX %s ON %s (%s)" % (index.name, target, keys),
                "UPDATE pg_index SET indisvalid = false WHERE indexrelid = '%s.%s'::regclass" % (schema, index.name)]
    raise ValueError(shape)


def group_store_sql(kind: str, shape: str, cases: List[Case], schema: str = "otel") -> List[str]:
    """A head-shaped store with every object of the group in `shape`."""
    statements = head_shaped_ddl(schema)
    names = {c.name for c in cases}
    if kind == "column":
        for table in ADOPTED.tables:
            for column in table.columns:
                if column.name in names and any(c.table == table.name and c.name == column.name for c in cases):
                    statements += column_shape_sql(table, column, shape, schema)
    else:
        for index in ADOPTED.indexes:
            if index.name in names:
                statements += index_shape_sql(index, shape, schema)
    if shape == "holding data":
        statements += [sample_row(t, schema) for t in ADOPTED.tables]
    return statements


def unique_name(prefix: str) -> str:
    return "%s_%s" % (prefix, uuid.uuid4().hex[:10])


if __name__ == "__main__":
    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "revisions.md")
    text = open(readme).read()
    current = readme_section(text)
    if current is None:
        print(readme_table())
    else:
        open(readme, "w").write(text.replace(current, readme_table()))
        print("docs/revisions.md: matrix regenerated")
