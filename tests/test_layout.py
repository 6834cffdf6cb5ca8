"""The package's import direction: every module imports only its own group or lower layers.

``python -m tests.test_layout`` prints the layers with their modules' line counts and any
violation or import circle (``make layout``). Every ``import`` counts, including the lazy ones
inside functions and those under ``TYPE_CHECKING``: a circle through a lazy import is still a
circle in the design.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# repository folder -> the package it installs as
SOURCE_ROOTS = {"uvc": "uvc", "export": "uvc.export", "bench": "uvc.bench"}

# Lowest first. A module may import its own group and any group of a lower layer; groups that
# share a layer (the three methods) never import each other. README "Layout" shows the same.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("uvc.errors",),
    ("uvc._fs",),
    ("uvc.arch",),
    ("uvc.files",),
    ("uvc.adapters",),
    ("uvc.train",),
    ("uvc.methods.common",),
    ("uvc.methods.uvc", "uvc.methods.nvit", "uvc.methods.uniform"),
    ("uvc.methods",),  # the package face and the method-agnostic search loop
    ("uvc.export",),
    ("uvc.bench",),
    ("uvc.settings",),
    ("uvc.api",),
    ("uvc.tools",),
    ("uvc.pipeline",),
    ("uvc.cli",),
    ("uvc.bench.gpu_check",),  # checks its planned command lines against the real CLI
    ("uvc.__main__", "uvc.preprocess"),  # the entry point; a compatibility name for one release
)
FACE = "uvc"  # uvc/__init__.py: imports errors and the spec, the rest lazily by name


def modules() -> dict[str, Path]:
    """Every module of the installed package ``uvc``, by dotted name."""
    found = {}
    for folder, package in SOURCE_ROOTS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _imported(node: ast.AST) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        yield node.module
        yield from (f"{node.module}.{a.name}" for a in node.names)  # from pkg import submodule


def import_graph() -> dict[str, set[str]]:
    """Module -> the uvc modules it imports (anywhere in the file)."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            for target in _imported(node):
                while target and target not in mods:  # a name inside a module: the module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def group_of(module: str) -> str | None:
    """The longest group of ``LAYERS`` that ``module`` belongs to (None: none)."""
    if module == FACE:
        return FACE
    best = None
    for layer in LAYERS:
        for group in layer:
            if (module == group or module.startswith(group + ".")) and (
                best is None or len(group) > len(best)
            ):
                best = group
    return best


def layer_of(group: str) -> int:
    """The layer index of a group (the package face is above everything)."""
    if group == FACE:
        return len(LAYERS)
    return next(i for i, layer in enumerate(LAYERS) if group in layer)


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports that go up, or sideways between groups of one layer."""
    bad = []
    for src, deps in sorted(graph.items()):
        g = group_of(src)
        for dst in sorted(deps):
            h = group_of(dst)
            if g is None or h is None or g == h:
                continue
            if layer_of(h) >= layer_of(g):
                bad.append(f"{src} (layer {layer_of(g)}) imports {dst} (layer {layer_of(h)})")
    return bad


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected sets of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            members = []
            while True:
                w = stack.pop()
                members.append(w)
                if w == v:
                    break
            if len(members) > 1:
                found.append(sorted(members))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(m for m in modules() if group_of(m) is None)
    assert not unplaced, f"add these to LAYERS in tests/test_layout.py: {unplaced}"


def test_imports_only_go_down() -> None:
    bad = violations(import_graph())
    assert not bad, "\n".join(bad)


def test_no_import_circles() -> None:
    graph = import_graph()
    assert len(graph) > 90  # the walk saw the whole package
    found = circles(graph)
    assert not found, found


def test_the_checks_catch_what_they_are_for() -> None:
    """An upward import, a sideways one and a circle are each reported."""
    graph = {
        "uvc.arch.spec": {"uvc.train.data"},  # up
        "uvc.methods.uvc.dual": {"uvc.methods.nvit.method"},  # sideways, between methods
        "uvc.train.data": {"uvc.train.loaders"},
        "uvc.train.loaders": {"uvc.train.data"},  # a circle within one group
        "uvc.methods.nvit.method": set(),
    }
    bad = violations(graph)
    assert any(b.startswith("uvc.arch.spec (layer 2) imports uvc.train.data") for b in bad)
    assert any(b.startswith("uvc.methods.uvc.dual") for b in bad) and len(bad) == 2
    assert circles(graph) == [["uvc.train.data", "uvc.train.loaders"]]


def test_each_subpackage_says_what_it_holds_and_may_import() -> None:
    for name, path in modules().items():
        if path.name == "__init__.py" and name.count(".") >= 1:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert "import" in doc.lower(), f"{path}: say what it may import"


def test_the_moved_preprocess_module_still_imports() -> None:
    """``uvc.preprocess`` (named by earlier READMEs for users' own scoring code) still works."""
    import importlib
    import sys

    import pytest

    from uvc.arch.preprocess import eval_transform

    sys.modules.pop("uvc.preprocess", None)
    with pytest.warns(DeprecationWarning, match="uvc.arch.preprocess"):
        moved = importlib.import_module("uvc.preprocess")
    assert moved.eval_transform is eval_transform


def main() -> None:
    """Print the layers (modules and line counts), violations and circles."""
    graph, mods = import_graph(), modules()
    for i, layer in enumerate(LAYERS):
        for group in layer:
            members = sorted(m for m in mods if group_of(m) == group)
            lines = sum(len(mods[m].read_text().splitlines()) for m in members)
            print(f"{i:2d}  {group:<22} {len(members):3d} modules {lines:6d} lines")
    bad, found = violations(graph), circles(graph)
    print(f"{len(mods)} modules; {len(bad)} upward/sideways imports; {len(found)} circles")
    for line in bad + [" <-> ".join(c) for c in found]:
        print("  ", line)


if __name__ == "__main__":
    main()
