"""The pack's import structure (docs/ARCHITECTURE.md): arrows run nodes -> pipelines and cli -> pipelines,
inside pipelines/ from the methods down to the shared foundations, and nothing imports in a circle.

Every import statement counts, at module level or inside a function (a lazy import is still an
arrow). Read from the source with ``ast``; nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

PACK = "keyframe_propagation"
COMFY = {"comfy", "comfy_api", "comfy_execution", "comfy_extras", "folder_paths", "server", "nodes"}

# Layers of pipelines/, lowest first: a module imports only from its own layer's package or below.
PIPELINE_LAYERS = [
    {"errors"},
    {"progress", "types", "checks"},
    {"ops", "weights", "ffc", "spill"},
    {"clip", "flow"},
    {"propagate", "preview"},
    {"two_stream", "refine", "svd"},
    {"testing"},
]
RANK = {name: i for i, names in enumerate(PIPELINE_LAYERS) for name in names}


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([PACK, *parts])


def _sources() -> dict[str, Path]:
    out = {}
    for top in ("pipelines", "nodes", "cli"):
        for path in sorted((REPO / top).rglob("*.py")):
            out[_module_name(path)] = path
    out[PACK] = REPO / "__init__.py"
    out[f"{PACK}.__main__"] = REPO / "__main__.py"
    return out


def _imports(name: str, path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(the pack's modules ``name`` imports, the top-level names of other packages it imports)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    own, other = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                (own if alias.name.startswith(PACK) else other).add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith(PACK):
                other.add(target.split(".")[0])
                continue
            # "from . import x" / "from .pkg import mod": the names may be modules themselves.
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                own.add(sub if sub in known else target)
    return {m.split(".")[0] if not m.startswith(PACK) else m for m in own}, {o.split(".")[0] for o in other}


@pytest.fixture(scope="module")
def graph() -> dict[str, tuple[set[str], set[str]]]:
    sources = _sources()
    known = set(sources)
    return {name: _imports(name, path, known) for name, path in sources.items()}


def _area(module: str) -> str:
    """'pipelines', 'nodes' or 'cli' (or the pack's root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _pipeline_unit(module: str) -> str:
    """The top-level module or subpackage of pipelines/ a module belongs to ('clip', 'flow', ...)."""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 else ""


def test_every_module_is_found(graph):
    assert f"{PACK}.pipelines.clip.prepare" in graph and f"{PACK}.cli.main" in graph
    assert f"{PACK}.nodes.keyframes" in graph and len(graph) > 40


def test_pipelines_never_import_comfyui_nodes_or_cli(graph):
    bad = []
    for mod, (own, other) in graph.items():
        if _area(mod) != "pipelines":
            continue
        bad += [f"{mod} -> {o}" for o in sorted(other & COMFY)]
        bad += [f"{mod} -> {o}" for o in sorted(own) if _area(o) in ("nodes", "cli")]
    assert not bad, bad


def test_nodes_and_cli_do_not_import_each_other(graph):
    bad = []
    for mod, (own, _) in graph.items():
        area = _area(mod)
        if area in ("nodes", "cli"):
            bad += [f"{mod} -> {o}" for o in sorted(own) if _area(o) in ("nodes", "cli") and _area(o) != area]
    assert not bad, bad
    assert not [m for m, (_, other) in graph.items() if _area(m) == "cli" and other & COMFY]


def test_pipelines_import_only_downwards(graph):
    units = {_pipeline_unit(m) for m in graph if _area(m) == "pipelines"} - {""}
    assert units <= set(RANK), f"pipelines/ modules without a layer in this test: {sorted(units - set(RANK))}"
    bad = []
    for mod, (own, _) in graph.items():
        if _area(mod) != "pipelines" or not _pipeline_unit(mod):
            continue
        src = _pipeline_unit(mod)
        for target in own:
            dst = _pipeline_unit(target) if _area(target) == "pipelines" else None
            if dst and dst != src and RANK[dst] >= RANK[src]:
                bad.append(f"{mod} -> {target} (layer {RANK[src]} -> {RANK[dst]})")
    assert not bad, bad


def test_no_import_cycles(graph):
    edges = {m: {t for t in own if t in graph and t != m} for m, (own, _) in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            # A package's __init__ re-exporting its submodules is not a cycle with them.
            if m.startswith(t + "."):
                continue
            if state.get(t) == 1:
                return stack[stack.index(t) :] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (cycle := visit(m)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_pyproject_lists_every_package():
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {PACK}
    for top in ("pipelines", "nodes", "cli"):
        for init in (REPO / top).rglob("__init__.py"):
            found.add(_module_name(init))
    assert found == listed, f"missing {sorted(found - listed)}, extra {sorted(listed - found)}"
