"""The import structure of ARCHITECTURE.md: imports point down the layers only, and there is no cycle.

Every import statement counts: at module level, under ``if TYPE_CHECKING:`` and inside functions.
Nothing in the repository needs a deferred import to break a cycle, so a function-level import is no
way around these tests (the two circles they were written against, ``vsr_models.ttvsr`` <->
``ttvsr_fast`` and ``vsr_models.vsrt`` <-> ``vsrt_fast``, were a module-level import one way and a
``TYPE_CHECKING`` import the other). An edge goes to the module an import names (``from a.b import c``:
``a.b.c`` where that is a module, else ``a.b``), not to the parent packages Python initialises on the
way: every package's ``__init__`` re-exports its modules, so those would make every package a cycle.

``bench/`` is the top layer beside ``jobs/``: it may import ``vsr_models`` and ``pipelines``; nothing but
the tests imports it (its oracles, e.g. ``bench/reference_degradations.py``, serve both), and it
imports nothing from ``tests/``, not by putting a ``tests/`` folder on ``sys.path`` either. Its scripts
import each other by bare name (they run as ``python bench/<script>.py``).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# Lower rank = lower layer. A module may import its own package and anything of a lower rank.
LAYERS = [
    ("vsr_models", 0),
    ("pipelines.common", 1),
    ("pipelines.data", 2),
    ("pipelines.tracking", 2),
    ("pipelines.inference", 3),
    ("pipelines.evaluation", 4),
    ("pipelines.training", 5),
    ("pipelines.tuning", 6),
    ("pipelines.demo", 6),
    ("bench", 7),
    ("jobs", 8),
]
IMPORTED_BY_TESTS_ONLY = ("bench",)


def layer_of(module: str) -> tuple[str, int] | None:
    for prefix, rank in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return prefix, rank
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> list[Path]:
    files = [*REPO_ROOT.glob("vsr_models/**/*.py"), *REPO_ROOT.glob("pipelines/**/*.py")]
    return files + [*REPO_ROOT.glob("jobs/*.py"), *REPO_ROOT.glob("bench/*.py")]


def modules() -> dict[str, Path]:
    named = {module_name(f): f for f in source_files()}
    unplaced = sorted(n for n in named if layer_of(n) is None and n != "pipelines")
    assert not unplaced, f"modules in no layer of ARCHITECTURE.md (add them to LAYERS): {unplaced}"
    return {n: f for n, f in named.items() if n != "pipelines"}  # the bare package root imports nothing


def imported_names(path: Path) -> list[str]:
    """What every absolute import statement in ``path`` names, wherever it stands: ``import a.b`` gives
    ``a.b``, ``from a.b import c`` gives ``a.b.c`` (a module or a name defined in ``a.b``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def project_imports(path: Path) -> set[str]:
    """Every project module or name ``path`` imports (a bench script's bare sibling names as ``bench.<name>``)."""
    found = set()
    bench_scripts = {p.stem for p in REPO_ROOT.glob("bench/*.py")}
    for name in imported_names(path):
        if path.parent.name == "bench" and name.split(".")[0] in bench_scripts:
            name = "bench." + name
        if layer_of(name) is not None:
            found.add(name)
    return found


def module_imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports: ``from a.b import c`` is ``a.b.c`` where that is a module."""
    found = set()
    for name in project_imports(path):
        if name in known:
            found.add(name)
        elif name.rpartition(".")[0] in known:  # a name defined in a module or package __init__
            found.add(name.rpartition(".")[0])
    return found


def first_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` (node -> nodes it points to) as a closed path, or None."""
    done: set[str] = set()

    def visit(node: str, trail: list[str]) -> list[str] | None:
        if node in trail:
            return [*trail[trail.index(node) :], node]
        if node in done:
            return None
        for target in sorted(graph.get(node, ())):
            if cycle := visit(target, [*trail, node]):
                return cycle
        done.add(node)
        return None

    for node in sorted(graph):
        if cycle := visit(node, []):
            return cycle
    return None


def test_every_import_points_down_the_layers():
    upward = []
    for name, path in modules().items():
        own_package, own_rank = layer_of(name)
        for target in project_imports(path):
            package, rank = layer_of(target)
            if package != own_package and rank >= own_rank:
                upward.append(f"{name} imports {target} ({package}: layer {rank} >= {own_rank})")
    assert not upward, "\n".join(sorted(upward))


def test_packages_import_no_cycle():
    """Package-level graph (pipelines.data -> pipelines.common, ...) has no cycle."""
    graph: dict[str, set[str]] = {}
    for name, path in modules().items():
        source = layer_of(name)[0]
        targets = {layer_of(t)[0] for t in project_imports(path)} - {source}
        graph.setdefault(source, set()).update(targets)
    cycle = first_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_modules_import_no_cycle():
    """Module-level graph, inside a package too (vsr_models.ttvsr.network -> vsr_models.ttvsr.fast -> ...)."""
    known = modules()
    graph = {name: module_imports(path, known) - {name} for name, path in known.items()}
    cycle = first_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_a_model_family_network_never_imports_its_fast_path():
    """The family's ``implementations`` table selects the fast path (docs/models.md#code-layout)."""
    networks = sorted(REPO_ROOT.glob("vsr_models/*/network.py"))
    assert networks, "no vsr_models/<family>/network.py"
    for path in networks:
        fast = module_name(path).rpartition(".")[0] + ".fast"
        assert not any(n == fast or n.startswith(fast + ".") for n in imported_names(path)), path


def test_only_the_tests_import_bench():
    importers = [
        f"{name} imports {target}"
        for name, path in modules().items()
        for target in project_imports(path)
        if layer_of(target)[0] in IMPORTED_BY_TESTS_ONLY and layer_of(name)[0] != layer_of(target)[0]
    ]
    assert not importers, "\n".join(sorted(importers))


def test_bench_imports_nothing_from_tests():
    test_modules = {p.stem for p in REPO_ROOT.glob("tests/**/*.py")} | {"tests"}
    reaching = []
    for path in sorted(REPO_ROOT.glob("bench/*.py")):
        tree = ast.parse(path.read_text())
        reaching += [
            f"{path.name} imports {n}" for n in imported_names(path) if n.split(".")[0] in test_modules
        ]
        for node in ast.walk(tree):
            # sys.path.insert(0, ... "tests" ...), sys.path.append(...), sys.path += [...]
            target = node.func if isinstance(node, ast.Call) else getattr(node, "target", None)
            on_sys_path = isinstance(target, ast.Attribute) and "sys.path" in ast.unparse(target)
            if on_sys_path and "tests" in ast.unparse(node):
                reaching.append(f"{path.name}:{node.lineno} puts tests/ on sys.path: {ast.unparse(node)}")
    assert not reaching, "\n".join(reaching)


def test_vsr_models_imports_neither_ray_nor_mlflow():
    for path in REPO_ROOT.glob("vsr_models/**/*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] in ("ray", "mlflow", "pipelines") for n in names), path
