"""The package's import structure, read from the source: no import circle between modules or
between the package's parts, the model importing only what it is built from, and no private
name imported across modules."""
import ast
import os
from collections import defaultdict

from tests.conftest import REPO

PACKAGE = os.path.join(REPO, "fullyqt")


def _modules():
    out = {}
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                name = os.path.relpath(path[:-3], REPO).replace(os.sep, ".")
                out[name[:-len(".__init__")] if name.endswith(".__init__") else name] = path
    return out


def _imports(modules):
    """``{module: [(imported module, names)]}`` of every import statement, lazy ones too."""
    out = defaultdict(list)
    for name, path in modules.items():
        package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1])
                    target = f"{base}.{node.module}" if node.module else base
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    out[name].append((sub if sub in modules else target, alias.name))
            elif isinstance(node, ast.Import):
                out[name] += [(alias.name, None) for alias in node.names]
    return {m: [(t, n) for t, n in targets if t in modules] for m, targets in out.items()}


def _part(module):
    """The package part a module belongs to: ``fullyqt.quant.grid`` -> ``quant``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _cycles(edges):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


MODULES = _modules()
IMPORTS = _imports(MODULES)


def test_the_import_graph_finds_the_imports_it_should():
    """The reader itself: relative, lazy and package imports are all seen."""
    quant_feature = {t for t, _ in IMPORTS["fullyqt.quant.feature"]}
    assert {"fullyqt.feature", "fullyqt.quant.inference", "fullyqt.quant.config"} <= quant_feature
    assert "fullyqt.quant.native" in {t for t, _ in IMPORTS["fullyqt.quant.inference"]}  # lazy
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]


def test_no_module_imports_itself_through_others():
    edges = {m: [t for t, _ in targets if t != "fullyqt"] for m, targets in IMPORTS.items()}
    assert _cycles(edges) == []


def test_the_package_parts_form_no_circle():
    edges = defaultdict(set)
    for module, targets in IMPORTS.items():
        for target, _ in targets:
            a, b = _part(module), _part(target)
            if a and b and a != b:
                edges[a].add(b)
    assert _cycles(edges) == []


def test_the_model_imports_only_what_it_is_built_from():
    parts = {_part(t) for m, targets in IMPORTS.items() if _part(m) == "models"
             for t, _ in targets}
    assert parts <= {"models", "quant", "feature"}, parts


def test_no_private_name_is_imported_from_another_module():
    private = [(m, t, n) for m, targets in IMPORTS.items() for t, n in targets
               if n and n.startswith("_") and not n.startswith("__") and t != m]
    assert private == []
