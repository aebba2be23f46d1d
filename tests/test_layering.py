"""The package's import graph: no cycles, and every import goes to the same or a lower layer.

The graph is read with `ast` from every module under ``edgeseg/`` (every import
statement, including those inside functions, so a lazy import is an edge too);
nothing is imported. ``from edgeseg.x import y`` is an edge to ``edgeseg.x.y`` when
that is a module, else to ``edgeseg.x``. The package ``__init__`` that Python runs
before a submodule is not an edge of its own: only what a module names counts.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import edgeseg

PACKAGE = Path(edgeseg.__file__).parent

#: Layers, lowest first; a module may import its own layer or a lower one. The stage
#: order (data -> train -> export -> runtime -> bench) is how files flow, not how code
#: depends: export verifies and times what it builds through the runtime's own
#: backends, frame geometry and predictor (one place for each concept, so the accuracy
#: gates see the runtime's pixels), and the runtime must install without torch. So the
#: torch-free runtime sits below models/train/export, and the contract both read
#: (ONNX metadata, engine manifest) sits below everything that reads it.
LAYERS: list[tuple[str, list[str]]] = [
    # the version, errors, files, label spaces, argument types, recipes/profiles, scoring
    # maths and the stage contracts: no edgeseg imports above this layer
    ("base", ["edgeseg", "edgeseg.errors", "edgeseg.fileio", "edgeseg.labels",
              "edgeseg.argtypes", "edgeseg.config", "edgeseg.metrics", "edgeseg.contract",
              "edgeseg.videoio"]),
    ("data", ["edgeseg.data"]),
    # scoring a dataset and drawing the results: numpy/OpenCV only, used by the runtime's
    # online mIoU as well as by eval and bench, so below the runtime
    ("scoring", ["edgeseg.evaluate", "edgeseg.viz"]),
    ("runtime", ["edgeseg.runtime"]),
    ("models", ["edgeseg.models"]),
    ("train", ["edgeseg.train"]),
    ("export", ["edgeseg.export"]),
    ("bench", ["edgeseg.bench"]),
    # commands that combine stages: `edgeseg eval` (checkpoint, ONNX or engine) and the demo
    ("commands", ["edgeseg.eval_cli", "edgeseg.demo"]),
    ("cli", ["edgeseg.cli"]),
]
#: never imported by these, even lazily: the vehicle installs numpy/OpenCV/TensorRT only
TORCH_FREE = ("edgeseg.runtime", "edgeseg.contract")
FORBIDDEN_FOR_RUNTIME = ("edgeseg.export", "edgeseg.train", "edgeseg.models", "edgeseg.bench")


def module_files() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = module_files()


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_of(module: str) -> int:
    """Index into LAYERS of the most specific prefix that matches ``module``."""
    best, length = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if within(module, prefix) and len(prefix) > length:
                best, length = index, len(prefix)
    return best


def _resolve(name: str) -> str:
    """The module an imported dotted name lives in (``a.b.func`` -> ``a.b``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imports_of(module: str) -> Iterator[tuple[str, int, bool]]:
    """(imported name, line, at module level) for every import statement in ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top = {id(n) for n in tree.body} | {id(n) for node in tree.body
                                        if isinstance(node, (ast.If, ast.Try))
                                        for n in ast.walk(node)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, id(node) in top
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            for alias in node.names:
                yield f"{name}.{alias.name}", node.lineno, id(node) in top


def edgeseg_edges() -> dict[str, dict[str, int]]:
    """module -> {imported edgeseg module: first line}; self-imports dropped."""
    graph: dict[str, dict[str, int]] = {}
    for module in MODULES:
        targets: dict[str, int] = {}
        for name, line, _ in imports_of(module):
            if within(name, "edgeseg"):
                target = _resolve(name)
                if target and target != module:
                    targets.setdefault(target, line)
        graph[module] = targets
    return graph


GRAPH = edgeseg_edges()


def where(module: str, target: str) -> str:
    return f"{MODULES[module].relative_to(PACKAGE.parent)}:{GRAPH[module][target]}"


def test_every_module_has_a_layer() -> None:
    missing = [m for m in MODULES if layer_of(m) < 0]
    assert not missing, f"modules outside every layer (add them to LAYERS): {missing}"


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph.get(child, {}))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    found = cycles(GRAPH)
    lines = []
    for component in found:
        members = set(component)
        edges = [f"    {m} -> {t} ({where(m, t)})" for m in component for t in GRAPH[m]
                 if t in members]
        lines.append("  cycle: " + ", ".join(component) + "\n" + "\n".join(edges))
    assert not found, "import cycles between modules:\n" + "\n".join(lines)


def test_imports_go_to_the_same_or_a_lower_layer() -> None:
    bad = []
    for module, targets in GRAPH.items():
        for target in targets:
            if layer_of(target) > layer_of(module):
                bad.append(f"  {module} ({LAYERS[layer_of(module)][0]}) -> {target} "
                           f"({LAYERS[layer_of(target)][0]}) at {where(module, target)}")
    assert not bad, "imports into a higher layer:\n" + "\n".join(sorted(bad))


def test_runtime_imports_no_training_or_export_code() -> None:
    bad = [f"  {m} -> {t} at {where(m, t)}" for m, targets in GRAPH.items()
           if within(m, "edgeseg.runtime") for t in targets
           if any(within(t, f) for f in FORBIDDEN_FOR_RUNTIME)]
    assert not bad, "the runtime imports export/train/models/bench:\n" + "\n".join(bad)


def _third_party(module: str, top_level_only: bool) -> Iterator[tuple[str, int]]:
    for name, line, top in imports_of(module):
        if not within(name, "edgeseg") and (top or not top_level_only):
            yield name.split(".")[0], line


@pytest.mark.parametrize("prefix", TORCH_FREE)
def test_torch_free_packages_never_import_torch(prefix: str) -> None:
    bad = [f"  {MODULES[m].relative_to(PACKAGE.parent)}:{line}" for m in MODULES
           if within(m, prefix) for name, line in _third_party(m, top_level_only=False)
           if name == "torch"]
    assert not bad, f"{prefix} imports torch:\n" + "\n".join(bad)


def _closure(roots: list[str]) -> set[str]:
    """Modules loaded by importing ``roots``: module-level edgeseg imports and the package
    ``__init__`` files Python runs on the way (lazy imports inside functions excluded)."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parent = module.rpartition(".")[0]
        if parent:
            todo.append(parent)
        todo += [_resolve(n) for n, _, top in imports_of(module) if top and within(n, "edgeseg")]
    return seen


def test_importing_the_runtime_loads_no_torch() -> None:
    """What ``import edgeseg.runtime.<anything>`` loads, lower layers included, is torch-free
    at import time (a lazy ``import torch`` in a function the runtime never calls is fine)."""
    loaded = _closure([m for m in MODULES if within(m, "edgeseg.runtime")])
    bad = [f"  {MODULES[m].relative_to(PACKAGE.parent)}:{line}" for m in sorted(loaded)
           for name, line in _third_party(m, top_level_only=True) if name == "torch"]
    assert not bad, "importing edgeseg.runtime loads torch through:\n" + "\n".join(bad)
