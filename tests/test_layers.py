"""The import structure of ARCHITECTURE.md: imports point down the layers only, and there is no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

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
    ("jobs", 8),
]


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


def project_imports(path: Path) -> set[str]:
    """Every project module ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if layer_of(name) is not None)
    return found


def modules() -> dict[str, Path]:
    files = [*REPO_ROOT.glob("vsr_models/**/*.py"), *REPO_ROOT.glob("pipelines/**/*.py")]
    files += REPO_ROOT.glob("jobs/*.py")
    named = {module_name(f): f for f in files}
    unplaced = sorted(n for n in named if layer_of(n) is None and n != "pipelines")
    assert not unplaced, f"modules in no layer of ARCHITECTURE.md (add them to LAYERS): {unplaced}"
    return {n: f for n, f in named.items() if n != "pipelines"}  # the bare package root imports nothing


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
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        source = layer_of(name)[0]
        targets = {layer_of(t)[0] for t in project_imports(path)} - {source}
        graph.setdefault(source, set()).update(targets)

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            pytest.fail("import cycle: " + " -> ".join([*trail[trail.index(node) :], node]))
        for target in sorted(graph.get(node, ())):
            visit(target, [*trail, node])

    for package in sorted(graph):
        visit(package, [])


def test_vsr_models_imports_neither_ray_nor_mlflow():
    for path in REPO_ROOT.glob("vsr_models/**/*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] in ("ray", "mlflow", "pipelines") for n in names), path
