"""The package's shape: layers that import only downward (docs/development.md, "Layers").

Read with `ast`, no import executed: every import of an otelmig module, at
module level or inside a function (`import otelmig.x`, `from otelmig import x`,
`from otelmig.x import y`, relative forms). A module belongs to exactly one
layer below; it may import its own layer or lower ones, never a higher one,
and a command never imports another command (what two commands share moves
down a layer). An import inside a function is kept only where it keeps a heavy
dependency (Alembic, SQLAlchemy, Mako) off `check`'s path, and a comment on its
line or the line above says so.
"""

import ast
import pathlib
import re

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "otelmig"

CONTRACT, CONFIGURATION, CONNECTIONS, CATALOG, ENGINE, COMMANDS, ENTRANCES = range(7)
LAYER_NAMES = ("contract and errors", "configuration", "connections and sessions", "reading the catalog",
               "migration engine", "commands", "entrances")

LAYERS = {
    # 0: what the store must hold, errors and their exit codes, output, the run model: no database.
    "_version": CONTRACT, "schema": CONTRACT, "revisions": CONTRACT, "errors": CONTRACT, "output": CONTRACT,
    "redact": CONTRACT, "run": CONTRACT, "quoting": CONTRACT, "plan_text": CONTRACT,
    # 1: settings from flags and the environment.
    "settings": CONFIGURATION, "pgurl": CONFIGURATION, "tls": CONFIGURATION,
    # 2: a connection and the session it runs in.
    "db": CONNECTIONS, "session": CONNECTIONS, "pooler": CONNECTIONS, "lock": CONNECTIONS, "interrupt": CONNECTIONS,
    # 3: what a database holds, read from its catalog, and what follows from it.
    "state": CATALOG, "catalog": CATALOG, "partitions": CATALOG, "retention": CATALOG, "compat": CATALOG,
    "runlog": CATALOG, "replicas": CATALOG,
    # 4: steps, revision scripts, repairs, and the session a changing run holds.
    "ddl": ENGINE, "scripts": ENGINE, "migration_api": ENGINE, "migration_session": ENGINE, "repair": ENGINE,
    "preflight": ENGINE, "progress": ENGINE, "drift": ENGINE, "default_partition": ENGINE, "tracestore": ENGINE, "otlp": ENGINE,
    # 5: one module per command (authors: the command line of plain `alembic`, through migrations/env.py).
    "check": COMMANDS, "verify": COMMANDS, "plan": COMMANDS, "migrate": COMMANDS, "maintain": COMMANDS,
    "offline": COMMANDS, "log": COMMANDS, "authors": COMMANDS, "converge": COMMANDS,
    # 6: what parses the command line or is imported by a program.
    "cli": ENTRANCES, "api": ENTRANCES, "__main__": ENTRANCES, "__init__": ENTRANCES,
}

# cli imports each command only when it runs; that is its job, not a dodge.
LAZY_BY_DESIGN = {"cli", "api"}
MAX_FUNCTION_IMPORTS = 6
STARTUP_REASON = re.compile(r"#.*\b(alembic|sqlalchemy|mako)\b.*\bcheck\b|#.*\bcheck\b.*\b(alembic|sqlalchemy|mako)\b",
                            re.IGNORECASE)


def _imports(path: pathlib.Path):
    """(imported otelmig module, line, inside a function) for every import in the file."""
    found = []

    def visit(node, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name.split(".")[1], child.lineno, in_function)
                             for alias in child.names if alias.name.startswith("otelmig."))
            elif isinstance(child, ast.ImportFrom):
                module = child.module or ""
                if child.level == 0 and module == "otelmig" or child.level == 1 and not module:
                    found.extend((alias.name, child.lineno, in_function) for alias in child.names)
                elif child.level == 0 and module.startswith("otelmig."):
                    found.append((module.split(".")[1], child.lineno, in_function))
                elif child.level == 1:
                    found.append((module.split(".")[0], child.lineno, in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


MODULES = sorted(path.stem for path in PACKAGE.glob("*.py"))
IMPORTS = {name: _imports(PACKAGE / (name + ".py")) for name in MODULES}
GRAPH = {name: sorted({target for target, _, _ in found if target != name}) for name, found in IMPORTS.items()}


def test_the_reader_sees_every_form_of_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import otelmig.db\nfrom otelmig import state, errors as e\nfrom otelmig.schema import HEAD\n"
                      "from . import pgurl\nfrom .tls import x\n\ndef f():\n    from otelmig import check\n")
    assert [(m, inside) for m, _, inside in _imports(sample)] == [
        ("db", False), ("state", False), ("errors", False), ("schema", False), ("pgurl", False), ("tls", False),
        ("check", True)]


def test_every_module_has_one_layer():
    assert [name for name in MODULES if name not in LAYERS] == [], "add it to LAYERS (docs/development.md)"
    assert [name for name in LAYERS if name not in MODULES] == [], "a module in LAYERS that no longer exists"


def test_no_import_cycle():
    cycles, done, path = [], set(), []

    def walk(name):
        if name in path:
            cycles.append(" -> ".join(path[path.index(name):] + [name]))
            return
        if name in done:
            return
        path.append(name)
        for target in GRAPH.get(name, ()):
            walk(target)
        path.pop()
        done.add(name)

    for name in MODULES:
        walk(name)
    assert cycles == []


def test_imports_go_only_downward():
    upward = ["%s (%s) imports %s (%s) on line %d" % (name, LAYER_NAMES[LAYERS[name]], target,
                                                      LAYER_NAMES[LAYERS[target]], line)
              for name, found in IMPORTS.items() for target, line, _ in found
              if name in LAYERS and target in LAYERS and LAYERS[target] > LAYERS[name]]
    assert upward == []


def test_a_command_never_imports_another_command():
    crossing = ["%s imports %s on line %d" % (name, target, line)
                for name, found in IMPORTS.items() for target, line, _ in found
                if LAYERS.get(name) == COMMANDS and LAYERS.get(target) == COMMANDS and target != name]
    assert crossing == [], "move what they share down a layer"


def _function_imports():
    return [(name, target, line) for name, found in IMPORTS.items() if name not in LAZY_BY_DESIGN
            for target, line, inside in found if inside]


def test_few_imports_inside_functions():
    found = _function_imports()
    assert len(found) <= MAX_FUNCTION_IMPORTS, found


def test_an_import_inside_a_function_says_why():
    silent = []
    for name, target, line in _function_imports():
        lines = (PACKAGE / (name + ".py")).read_text(encoding="utf-8").splitlines()
        if not STARTUP_REASON.search(lines[line - 1] + "\n" + (lines[line - 2] if line > 1 else "")):
            silent.append("%s line %d imports %s" % (name, line, target))
    assert silent == [], ("import these at module level, or say in a comment on the line or the one above which "
                          "heavy dependency (Alembic, SQLAlchemy, Mako) each keeps off check's path")


def test_the_reason_names_a_heavy_dependency_and_check():
    assert STARTUP_REASON.search("    # keeps Alembic off check's path")
    assert not STARTUP_REASON.search("    # avoids a cycle")
    assert not STARTUP_REASON.search("    # Alembic is heavy")
