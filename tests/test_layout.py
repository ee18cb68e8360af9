"""The package's layout: what modules may use of each other, what ships.

Read with :mod:`ast`, nothing imported (except where a test says so):

- the folders are layers (``LAYERS``, lowest first): a module imports only from its own folder or
  a lower one, at module level or inside a function (data flows one way);
- no module imports a private name (``_x``) from another lightning_fair module, nor reads
  ``module._x`` of one;
- the module-level imports between lightning_fair modules form no cycle;
- private Lightning APIs are used in ``lightning_fair/lightning/private.py`` only;
- ``import lightning_fair`` imports neither Lightning nor jsonargparse, and ``dir(lightning_fair)``
  lists every public name, each of which resolves.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import lightning_fair

PACKAGE = Path(lightning_fair.__file__).resolve().parent
ROOT = "lightning_fair"
#: the package's folders (and config.py), lowest first: statistics -> scores -> allocation -> removal ->
#: repair -> pipeline, with the shared ground (config, runtime, units) below and the glue above
LAYERS = (
    "config",
    "runtime",
    "units",
    "collect",
    "scoring",
    "allocation",
    "removal",
    "repair",
    "pipeline",
    "methods",
    "lightning",
    "demos",
)
#: private Lightning attributes and methods lightning_fair reaches for (see lightning/private.py)
PRIVATE_LIGHTNING = {
    "_data_source",
    "_setup_model",
    "_register_ddp_hooks",
    "_legacy_state_key",
    "_generate_state_key",
    "_trainer",
    "_instantiate_trainer",
}
PRIVATE_LIGHTNING_HOME = "lightning_fair.lightning.private"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


SOURCES: Dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _tree(name: str) -> ast.Module:
    return ast.parse(SOURCES[name].read_text(), filename=str(SOURCES[name]))


def _is_package(name: str) -> bool:
    return SOURCES[name].name == "__init__.py"


def _resolve(importer: str, node: ast.ImportFrom) -> Optional[str]:
    """The absolute module an ``ImportFrom`` reads from (None: not lightning_fair)."""
    if node.level == 0:
        target = node.module or ""
    else:
        base = importer.split(".") if _is_package(importer) else importer.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    return target if target == ROOT or target.startswith(ROOT + ".") else None


def _imported_modules(importer: str, node: ast.AST) -> List[str]:
    """The lightning_fair modules an import statement loads (a ``from pkg import module`` loads that module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in SOURCES]
    if not isinstance(node, ast.ImportFrom):
        return []
    target = _resolve(importer, node)
    if target is None:
        return []
    found = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        found.append(sub if sub in SOURCES else target)
    return [m for m in dict.fromkeys(found) if m in SOURCES]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level(body: List[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements run on import: the module body, into ``if``/``try``/``with`` blocks (not ``if TYPE_CHECKING``)."""
    for node in body:
        yield node
        if isinstance(node, ast.If):
            if not _is_type_checking(node):
                yield from _module_level(node.body)
            yield from _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                yield from _module_level(block)
        elif isinstance(node, ast.With):
            yield from _module_level(node.body)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node: ast.AST) -> Optional[str]:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None


def private_uses(name: str) -> List[str]:
    """``file:line what`` for every private name of another lightning_fair module that ``name`` uses."""
    tree, where, found = _tree(name), SOURCES[name].relative_to(PACKAGE.parent), []
    aliases: Dict[str, str] = {}  # local name -> lightning_fair module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == ROOT or alias.name.startswith(ROOT + "."):
                    if alias.asname:
                        aliases[alias.asname] = alias.name
                    else:
                        aliases[alias.name.split(".")[0]] = ROOT
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(name, node)
            if target is None:
                continue
            for alias in node.names:
                if _private(alias.name) and target != name:
                    found.append(f"{where}:{node.lineno} imports {alias.name} from {target}")
                sub = f"{target}.{alias.name}"
                if sub in SOURCES:
                    aliases[alias.asname or alias.name] = sub
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not _private(node.attr):
            continue
        owner = _dotted(node.value)
        if owner is None:
            continue
        head, _, rest = owner.partition(".")
        if head not in aliases:
            continue
        module = ".".join([aliases[head]] + ([rest] if rest else []))
        if module in SOURCES and module != name:
            found.append(f"{where}:{node.lineno} reads {module}.{node.attr}")
    return found


def import_graph() -> Dict[str, List[str]]:
    """``{module: [lightning_fair modules it imports at module level]}``."""
    graph = {}
    for name in SOURCES:
        edges = []
        for node in _module_level(_tree(name).body):
            edges += [m for m in _imported_modules(name, node) if m != name]
        graph[name] = list(dict.fromkeys(edges))
    return graph


def find_cycle(graph: Dict[str, List[str]]) -> Optional[List[str]]:
    """One import cycle (``[a, b, ..., a]``), or None."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def private_lightning_uses(name: str) -> List[Tuple[int, str]]:
    """``(line, name)`` of every private Lightning attribute, method or string ``name`` touches."""
    found = []
    for node in ast.walk(_tree(name)):
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE_LIGHTNING:
            found.append((node.lineno, node.attr))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in PRIVATE_LIGHTNING:
            found.append((node.lineno, node.name))
        elif isinstance(node, ast.Constant) and node.value in PRIVATE_LIGHTNING:
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.ImportFrom):
            found += [(node.lineno, a.name) for a in node.names if a.name in PRIVATE_LIGHTNING]
    return found


# --------------------------------------------------------------------------- the checks themselves
def test_the_scan_sees_the_package():
    assert {"lightning_fair", "lightning_fair.pipeline.oneshot", "lightning_fair.lightning.private"} <= set(SOURCES)
    graph = import_graph()
    assert "lightning_fair.runtime.guards" in graph["lightning_fair.pipeline.oneshot"]
    assert "lightning_fair.lightning.callback" in graph["lightning_fair.lightning"]
    assert "lightning_fair.lightning.private" in graph["lightning_fair.lightning.mixin"]


def test_no_module_uses_a_private_name_of_another():
    found = [use for name in SOURCES for use in private_uses(name)]
    assert not found, "private names used across lightning_fair modules (give them a public name):\n" + "\n".join(found)


def test_module_level_imports_form_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle between lightning_fair modules: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None


def layer_of(module: str) -> int:
    """The rank of the folder ``module`` lives in (the package's ``__init__``, the facade, is above all)."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else len(LAYERS)


def all_imports(name: str) -> Iterator[Tuple[int, str]]:
    """``(line, module)`` of every lightning_fair module ``name`` imports, anywhere in the file."""
    for node in ast.walk(_tree(name)):
        for target in _imported_modules(name, node):
            if target != name:
                yield node.lineno, target


def upward_imports(sources=None) -> List[str]:
    """``file:line importer -> imported`` for every import from a lower folder into a higher one."""
    found = []
    for name in sorted(sources or SOURCES):
        for line, target in all_imports(name):
            if layer_of(target) > layer_of(name):
                found.append(f"{SOURCES[name].name}:{line} {name} -> {target}")
    return found


def test_every_module_lives_in_a_layer():
    strays = [name for name in SOURCES if name != ROOT and name.split(".")[1] not in LAYERS]
    assert not strays, f"modules outside the layers {LAYERS} (put each in the folder of its concept): {strays}"
    assert set(LAYERS) <= {name.split(".")[1] for name in SOURCES if name != ROOT}


def test_imports_go_only_downwards_between_folders():
    found = upward_imports()
    assert not found, (
        f"imports from a lower folder into a higher one (layers, lowest first: {LAYERS}); move the "
        "shared piece down, or pass it in as an argument:\n" + "\n".join(found)
    )


def test_the_direction_check_sees_an_upward_import(tmp_path, monkeypatch):
    # the check itself can fail: a units/ module importing the pipeline is reported
    stray = tmp_path / "stray.py"
    stray.write_text("from ..pipeline.oneshot import prune\n")
    monkeypatch.setitem(SOURCES, "lightning_fair.units.stray", stray)
    assert any(
        "lightning_fair.units.stray -> lightning_fair.pipeline.oneshot" in line
        for line in upward_imports(["lightning_fair.units.stray"])
    )


def test_private_lightning_apis_are_used_in_private_py_only():
    found = {name: private_lightning_uses(name) for name in SOURCES if name != PRIVATE_LIGHTNING_HOME}
    found = {name: uses for name, uses in found.items() if uses}
    assert not found, f"private Lightning APIs outside {PRIVATE_LIGHTNING_HOME}: {found}"
    assert private_lightning_uses(PRIVATE_LIGHTNING_HOME), "the scan does not see the uses in private.py"


def test_import_lightning_fair_imports_neither_lightning_nor_jsonargparse():
    code = (
        "import json, sys, lightning_fair; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('lightning', 'pytorch_lightning', 'lightning_fabric', 'jsonargparse'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_dir_lists_every_public_name_and_each_resolves():
    listed = dir(lightning_fair)
    missing = [name for name in lightning_fair.__all__ if name not in listed]
    assert not missing, f"dir(lightning_fair) lacks {missing}"
    assert {"FairPruneCallback", "OnTheFlyPruning", "PruningError", "FairPruningMixin"} <= set(lightning_fair.__all__)
    for name in lightning_fair.__all__:
        assert getattr(lightning_fair, name) is not None, name
