"""Before an adoption changes anything: is what it would adopt compatible?

The baseline adopts whatever it finds under the head's names (columns,
indexes) and converges what it can in the catalog alone: a missing nullable
column is added, a default is set, NOT NULL is dropped where the contract
allows null, an INVALID index is rebuilt, and the columns the head adds are
filled with their default. Anything else would record the head over a schema
that is not the contract, so it is refused (exit 8) before the first
statement, each conflict named with its fix. The comparison is verify's
(otelmig.catalog.compare over the one declaration in otelmig/schema.py), on the catalog
as it will be after the renames.

The rules, in short (README "Compatibility rules" has the matrix):
- a head-named column of another type: refuse (otelmig never converts data);
- contract NOT NULL, found nullable: converge for the columns the head adds
  (filled with their default), refuse for the others (their values cannot be
  invented: fill them, SET NOT NULL, rerun);
- a missing contract column: the head's new columns and nullable ones are
  added; a NOT NULL one is refused (same reason);
- other default: converge, except spans.id (its values come from a sequence);
- a contract-named index of another table, keys, method, uniqueness or
  predicate: refuse (it is the operator's; we do not drop it); an INVALID
  one, whatever its shape, is a failed build: dropped and rebuilt;
- a table the current role cannot alter (owned by a role it is not a member
  of): refuse;
- a primary key that is not the contract's: refuse (a partitioned table's key
  plus the partition key is accepted).
"""

from typing import Dict, List, NamedTuple, Set, Tuple

from otelmig import schema as contract
from otelmig.errors import PROGRAM
from otelmig.quoting import quote_ident
from otelmig.catalog import LiveCatalog, LiveIndex, compare


class Conflict(NamedTuple):
    object: str
    problem: str
    fix: str

    def line(self) -> str:
        return "%s: %s (fix: %s)" % (self.object, self.problem, self.fix)


def adoption_conflicts(catalog: LiveCatalog, schema: str, renames: Dict[str, Tuple[Tuple[str, str], ...]],
                       added: Set[Tuple[str, str]], wanted: contract.Contract) -> List[Conflict]:
    """`wanted`: the contract the adopting revision converges on (its own, frozen)."""
    projected, found_as = _after_renames(catalog, renames)
    both = _both_names(catalog, schema, renames)
    report = compare(schema, projected, wanted)
    # An INVALID index (a failed build) serves no query and enforces nothing: it is rebuilt, whatever its shape.
    rebuilt = {"%s.%s" % (schema, i.name) for i in catalog.indexes.values() if not i.valid}
    conflicts = [c for c in both.values()]
    conflicts += [c for c in (_conflict(schema, p, found_as, added, wanted.tables) for p in report.problems
                              if p.object not in both and p.object not in rebuilt) if c]
    for table in wanted.tables:
        relation = catalog.details.get(table.name)
        if relation is not None and not relation.ours_to_alter:
            conflicts.append(Conflict("%s.%s" % (schema, table.name), "owned by role %s, which the migrating role "
                                      "is not a member of, so it cannot be altered" % relation.owner,
                                      "run otelmig as %s, or GRANT %s TO the migrating role, then rerun"
                                      % (relation.owner, relation.owner)))
    return conflicts


def _both_names(catalog: LiveCatalog, schema: str, renames) -> Dict[str, Conflict]:
    """A legacy column and its head name side by side: which one holds the truth is the operator's call."""
    found = {}
    for table, pairs in renames.items():
        columns = catalog.relations.get(table, {})
        for old, new in pairs:
            if old in columns and new in columns:
                name = "%s.%s.%s" % (schema, table, new)
                found[name] = Conflict(name, "%s.%s has both %s and %s" % (schema, table, old, new),
                                       "merge them by hand (keep %s), then rerun" % new)
    return found


def _after_renames(catalog: LiveCatalog, renames):
    """The catalog as the baseline's renames will leave it, and each renamed column's found name."""
    relations = {t: dict(cols) for t, cols in catalog.relations.items()}
    found_as: Dict[Tuple[str, str], str] = {}
    for table, pairs in renames.items():
        columns = relations.get(table)
        if columns is None:
            continue
        for old, new in pairs:
            if old in columns and new not in columns:
                columns[new] = columns.pop(old)
                found_as[(table, new)] = old
    mapping = {(t, old): new for (t, new), old in found_as.items()}
    indexes = {name: _rename_keys(index, mapping) for name, index in catalog.indexes.items()}
    details = {name: relation._replace(partition_key=tuple(mapping.get((name, c), c) for c in relation.partition_key))
               for name, relation in catalog.details.items()}
    return LiveCatalog(relations, catalog.kinds, indexes, details), found_as


def _rename_keys(index: LiveIndex, mapping) -> LiveIndex:
    keys = []
    for key in index.keys:
        column, _, rest = key.partition(" ")
        new = mapping.get((index.table, column))
        keys.append(new + (" " + rest if rest else "") if new else key)
    return index._replace(keys=tuple(keys))


def _conflict(schema: str, problem, found_as, added, tables):
    kind = problem.kind
    if kind in ("missing_table", "missing_index", "invalid_index"):
        return None  # created or rebuilt
    if kind in ("missing_primary_key", "wrong_primary_key"):
        table = next(t for t in tables if "%s.%s" % (schema, t.primary_key) == problem.object)
        return Conflict("%s.%s" % (schema, table.name), "primary key: " + problem.detail,
                        "give %s the primary key %s (%s), then rerun"
                        % (_qualified(schema, table.name), quote_ident(table.primary_key),
                           ", ".join(table.primary_key_columns)))
    if kind == "wrong_index":
        name = problem.object
        return Conflict(name, "an index of another shape has the contract's name: " + problem.detail,
                        "rename yours (ALTER INDEX %s RENAME TO another name) or drop it, then rerun"
                        % _qualified(schema, name.split(".", 1)[1]))
    table_name, column_name = problem.object.split(".")[-2:]
    table = next(t for t in tables if t.name == table_name)
    column = table.column(column_name)
    found = "%s.%s.%s" % (schema, table_name, found_as.get((table_name, column_name), column_name))
    qualified = _qualified(schema, table_name)
    found_column = quote_ident(found.rsplit(".", 1)[1])
    is_added = (table_name, column_name) in added
    if kind == "missing_column":
        if is_added or column.nullable:
            return None  # the baseline adds it
        return Conflict(problem.object, "missing, and NOT NULL without values otelmig could fill in",
                        "restore the column with its values (ALTER TABLE %s ADD COLUMN %s %s, fill it, "
                        "SET NOT NULL), then rerun" % (qualified, quote_ident(column_name), column.type))
    if kind == "wrong_type":
        return Conflict(found, "type: " + problem.detail,
                        "convert it (ALTER TABLE %s ALTER COLUMN %s TYPE %s USING %s::%s) or rename yours "
                        "out of the way, then rerun" % (qualified, found_column, column.type, found_column, column.type))
    if kind == "wrong_nullability":
        if column.nullable or is_added:
            return None  # DROP NOT NULL, or filled with the default
        return Conflict(found, "nullable, the contract has NOT NULL, and otelmig cannot invent the missing values",
                        "fill its NULLs and ALTER TABLE %s ALTER COLUMN %s SET NOT NULL, then rerun"
                        % (qualified, found_column))
    if kind == "wrong_default":
        if column.default != contract.SEQUENCE_DEFAULT:
            return None  # set to the contract's
        return Conflict(found, "default: " + problem.detail,
                        "give it a sequence default or make it an identity column, then rerun")
    return Conflict(problem.object, problem.detail, "see `%s verify`" % PROGRAM)


# What a later revision carries from the store it starts on into the head: drift
# from the contract of the revision the store is at would surface only in the head's
# contract check, after the revision's scans and switch. Refused before its first change.
DRIFT_KINDS = ("missing_table", "missing_column", "wrong_type", "wrong_nullability", "wrong_default",
               "missing_index", "wrong_index", "missing_primary_key", "wrong_primary_key")


def drift_conflicts(catalog: LiveCatalog, schema: str, wanted: contract.Contract, revision: str,
                    kinds=DRIFT_KINDS) -> List[Conflict]:
    """The differences between the store and `wanted` (the contract of `revision`,
    which the store is at), each with the one statement that restores it where
    there is one (printed runnable: names quoted)."""
    return [Conflict(problem.object, "differs from the contract of revision %s, which the store is at: %s"
                     % (revision, problem.detail), _restoring(schema, problem, wanted, catalog))
            for problem in compare(schema, catalog, wanted).problems if problem.kind in kinds]


def _restoring(schema: str, problem, wanted: contract.Contract, catalog: LiveCatalog) -> str:
    then = ", then rerun"
    if problem.kind in ("missing_index", "wrong_index"):
        index = next((i for i in wanted.indexes if "%s.%s" % (schema, i.name) == problem.object), None)
        if index is not None:
            return _restoring_index(schema, index, catalog, problem.kind) + then
    if problem.kind not in ("missing_column", "wrong_type", "wrong_nullability", "wrong_default"):
        return "restore it as the contract has it (docs/schema.md)" + then
    table_name, column_name = problem.object.split(".")[-2:]
    column = next(t for t in wanted.tables if t.name == table_name).column(column_name)
    alter = "ALTER TABLE %s %s COLUMN %s " % (_qualified(schema, table_name), "ADD" if problem.kind == "missing_column"
                                              else "ALTER", quote_ident(column_name))
    if problem.kind == "missing_column":
        if not column.nullable and not column.default:
            return "add it with its values (%s%s), then SET NOT NULL%s" % (alter, column.type, then)
        default = " DEFAULT %s" % column.default if column.default and column.default != contract.SEQUENCE_DEFAULT else ""
        return alter + column.type + ("" if column.nullable else " NOT NULL") + default + then
    if problem.kind == "wrong_type":
        return alter + "TYPE %s" % column.type + then
    if problem.kind == "wrong_nullability":
        return (alter + "DROP NOT NULL" if column.nullable else "fill its NULLs, then " + alter + "SET NOT NULL") + then
    if column.default == contract.SEQUENCE_DEFAULT:
        return "give it back its sequence default (nextval)" + then
    return alter + ("SET DEFAULT %s" % column.default if column.default else "DROP DEFAULT") + then


def _restoring_index(schema: str, index: contract.Index, catalog: LiveCatalog, kind: str) -> str:
    """The contract's index under its name: an index of its shape under another name
    is renamed (building a second would leave the first as an extra), else built."""
    same_shape = [live.name for live in catalog.indexes.values()
                  if live.table == index.table and tuple(live.keys) == tuple(index.keys) and live.valid
                  and not live.unique and not live.predicate and live.method == "btree" and live.name != index.name]
    if kind == "missing_index" and same_shape:
        return "ALTER INDEX %s RENAME TO %s" % (_qualified(schema, same_shape[0]), quote_ident(index.name))
    build = "CREATE INDEX CONCURRENTLY %s ON %s (%s)" % (quote_ident(index.name), _qualified(schema, index.table),
                                                         ", ".join(index.keys))
    if kind == "wrong_index":
        return "rename the index of that name out of the way, then " + build
    return build


def _qualified(schema: str, name: str) -> str:
    return "%s.%s" % (quote_ident(schema), quote_ident(name))
