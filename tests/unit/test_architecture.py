"""The layering of ARCHITECTURE.md, checked on every import under spider/ (also those inside functions).

A module may import its own layer or a lower one, never a higher one; and no import cycle may
join two modules, nor two units (a sub-package such as ``spider.pipeline``, or a top-level module).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "spider"

# Lowest first; the longest matching prefix decides. Keep in step with ARCHITECTURE.md.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("spider", "spider.errors", "spider.registry", "spider.io", "spider.paths", "spider._procs",
              "spider.progress", "spider.schedules")),
    ("library", ("spider.store", "spider.store_versions", "spider.store_checks", "spider.metrics",
                 "spider.baselines", "spider.aggregate", "spider.priors", "spider.familiarity", "spider.reference", "spider.zoo",
                 "spider.modules", "spider.evaluate", "spider.synthetic", "spider.transfergraph")),
    ("data", ("spider.datamodules",)),
    ("pipeline", ("spider.pipeline",)),
    ("training", ("spider.config", "spider.config_schema", "spider.train", "spider.callbacks", "spider.trainer",
                  "spider.run_inputs", "spider.run_lock", "spider.transfergraph.zoo",
                  "spider.incremental")),
    ("cli", ("spider.cli", "spider.fit", "spider.rank", "spider.rank_core", "spider.rank_images", "spider.labels",
             "spider.extract", "spider.model_score", "spider.baselines.__main__", "spider.zoo.__main__",
             "spider.transfergraph.cli", "spider.transfergraph.__main__")),
    # The benchmark report's library sits on top: it trains and ranks through the public entry points.
    ("benchmark", ("spider.benchmark",)),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """spider modules that ``name`` imports anywhere in its file (resolved to modules we have)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # ``from pkg import sub`` imports the module pkg.sub when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # ``import spider.zoo.x.attr`` -> nearest module
                target = target.rpartition(".")[0]
            if target.startswith("spider") and target != name:
                out.add(target)
    return out


def layer_of(name: str) -> int:
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best is None:
        raise AssertionError(f"{name}: in no layer of tests/unit/test_architecture.py (place it, and in ARCHITECTURE.md)")
    return best


def unit_of(name: str, modules: dict[str, Path]) -> str:
    """``spider.x`` for everything inside sub-package x; a top-level module, and a package's
    ``__main__`` (a CLI entry), is its own unit."""
    parts = name.split(".")
    if parts[-1] == "__main__":
        return name
    if len(parts) >= 2 and modules.get(".".join(parts[:2]), Path()).name == "__init__.py":
        return ".".join(parts[:2])
    return name


def graph() -> tuple[dict[str, Path], dict[str, set[str]]]:
    modules = all_modules()
    known = set(modules)
    return modules, {name: imports_of(name, path, known) for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    for name in all_modules():
        layer_of(name)


def test_no_module_imports_a_higher_layer():
    _, edges = graph()
    bad = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
           for a, targets in sorted(edges.items()) for b in sorted(targets) if layer_of(b) > layer_of(a)]
    assert not bad, "\n".join(bad)


def test_the_datamodules_never_import_the_pipeline():
    _, edges = graph()
    bad = [(a, b) for a, targets in edges.items() if a.startswith("spider.datamodules")
           for b in targets if b.startswith("spider.pipeline")]
    assert not bad


def test_no_import_cycle_between_modules():
    _, edges = graph()
    assert cycles(edges) == []


def test_no_import_cycle_between_units():
    modules, edges = graph()
    units: dict[str, set[str]] = {}
    for a, targets in edges.items():
        ua = unit_of(a, modules)
        units.setdefault(ua, set()).update(u for u in (unit_of(b, modules) for b in targets) if u != ua)
    assert cycles(units) == []


# The checker itself must be able to fail.

def test_the_checks_catch_an_upward_import_and_a_cycle():
    assert layer_of("spider.datamodules.episodes") < layer_of("spider.pipeline.labelling")
    assert LAYERS[layer_of("spider.zoo.__main__")][0] == "cli"  # the CLI entry, not the zoo library
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("elsewhere.module")


def test_imports_inside_functions_count(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from spider.pipeline import labelling\n    import spider.io\n")
    found = imports_of("spider.datamodules.mod", source, {"spider.pipeline", "spider.pipeline.labelling", "spider.io"})
    assert found == {"spider.pipeline.labelling", "spider.io"}
