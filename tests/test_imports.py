"""The package's layering, read from the source: no import circle between modules (counting
imports inside functions too: a lazy import is still a dependency), and the floors the
README states (workers and workflow never import the graph, training or serving code)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "ray_conductor"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports() -> dict[str, set[str]]:
    """module -> the ray_conductor modules it imports (anywhere in its body)."""
    mods = {module_name(p): p for p in ROOT.rglob("*.py")}
    out: dict[str, set[str]] = {}
    for mod, path in mods.items():
        deps: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for n in names:
                if n in mods and n != mod:
                    deps.add(n)
        out[mod] = deps
    return out


def _runtime_nodes(tree: ast.AST):
    """Every node, except those under `if TYPE_CHECKING:` (never imported at run time)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def package_of(mod: str) -> str:
    parts = mod.split(".")
    return ".".join(parts[:2])


def test_no_import_circle_between_modules():
    assert cycles(imports()) == []


def test_no_import_circle_between_packages():
    pkgs: dict[str, set[str]] = {}
    for mod, deps in imports().items():
        src = package_of(mod)
        pkgs.setdefault(src, set()).update(package_of(d) for d in deps if package_of(d) != src)
    assert cycles(pkgs) == []


def test_lower_floors_never_import_upper_ones():
    forbidden = {
        "ray_conductor.workers": ("ray_conductor.graph", "ray_conductor.rl",
                                  "ray_conductor.policy", "ray_conductor.eval",
                                  "ray_conductor.serve", "ray_conductor.online"),
        "ray_conductor.workflow": ("ray_conductor.graph", "ray_conductor.rl",
                                   "ray_conductor.policy", "ray_conductor.eval",
                                   "ray_conductor.serve", "ray_conductor.data"),
        "ray_conductor.data": ("ray_conductor.graph", "ray_conductor.rl",
                               "ray_conductor.policy", "ray_conductor.eval",
                               "ray_conductor.serve"),
        "ray_conductor.policy": ("ray_conductor.rl", "ray_conductor.eval",
                                 "ray_conductor.serve", "ray_conductor.graph"),
        "ray_conductor.eval": ("ray_conductor.rl", "ray_conductor.serve", "ray_conductor.online"),
        "ray_conductor.features": ("ray_conductor.graph", "ray_conductor.rl",
                                   "ray_conductor.policy", "ray_conductor.eval",
                                   "ray_conductor.serve", "ray_conductor.lite",
                                   "ray_conductor.workers", "ray_conductor.data"),
        "ray_conductor.lite": ("ray_conductor.rl", "ray_conductor.eval", "ray_conductor.serve",
                               "ray_conductor.online"),
        "ray_conductor.serve": ("ray_conductor.rl", "ray_conductor.online", "ray_conductor.eval"),
        "ray_conductor.graph": ("ray_conductor.rl", "ray_conductor.serve", "ray_conductor.online",
                                "ray_conductor.eval", "ray_conductor.lite", "ray_conductor.record",
                                "ray_conductor.policy"),
        "ray_conductor.record": ("ray_conductor.rl", "ray_conductor.lite",
                                 "ray_conductor.policy", "ray_conductor.serve",
                                 "ray_conductor.online", "ray_conductor.eval"),
        "ray_conductor.online": ("ray_conductor.cli",),  # rl: the LM tier's GRPO (lm_trainer)
    }
    bad = []
    for mod, deps in imports().items():
        for floor, above in forbidden.items():
            if mod == floor or mod.startswith(floor + "."):
                bad += [(mod, d) for d in deps if d.startswith(above)]
    assert bad == []
