"""The layers of DESIGN.md §1, read from the import statements of every module.

Each module of the package belongs to exactly one layer, found from its path
alone (no module is exempted by its name):

- core: ``outlast`` itself and everything under ``outlast._core`` -- the
  standard library only;
- integrations: the public driver, framework and background-work modules --
  the standard library, the core, other integrations and the third-party
  packages listed for them here;
- chaos: ``outlast.chaos`` -- the standard library and itself (uvloop optional);
- tools: ``outlast.cli``, ``outlast.demo``, ``outlast.drill``, ``outlast.testing``
  -- anything.

Every import counts: at module level, inside functions and under
``TYPE_CHECKING``. A second test proves the import graph has no cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import outlast

PACKAGE = Path(outlast.__file__).parent

# Third-party packages each integration may import (its extra installs them).
INTEGRATIONS: dict[str, frozenset[str]] = {
    "outlast.asyncpg": frozenset({"asyncpg"}),
    "outlast.django": frozenset({"django", "asgiref"}),
    "outlast.flask": frozenset({"flask", "werkzeug"}),
    # psycopg 3 for the queue, its pools and its LISTEN connection.
    "outlast.jobs": frozenset({"psycopg", "psycopg_pool"}),
    # The lock session is psycopg 3; the runners drive Alembic and Django when asked.
    "outlast.migrate": frozenset({"psycopg", "alembic", "sqlalchemy", "django"}),
    "outlast.otel": frozenset({"opentelemetry"}),
    # /metrics is served by the framework the app already runs (imported lazily).
    "outlast.prometheus": frozenset({"prometheus_client", "starlette", "django"}),
    "outlast.psycopg": frozenset({"psycopg", "psycopg_pool"}),
    "outlast.psycopg2": frozenset({"psycopg2"}),
    # Standard library only: it connects through outlast.psycopg or outlast.psycopg2.
    "outlast.replication": frozenset(),
    "outlast.sqlalchemy": frozenset({"sqlalchemy"}),
    "outlast.starlette": frozenset({"starlette"}),
    "outlast.supervise": frozenset(),
}
TOOLS = ("outlast.__main__", "outlast.cli", "outlast.demo", "outlast.drill", "outlast.testing")
CHAOS_OPTIONAL = frozenset({"uvloop"})


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module `name` imports, resolved to absolute names (submodules when they exist)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = [
                f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES
            ]
            found.update(submodules)
            if len(submodules) < len(node.names):
                found.add(target)
    return found


def _layer(name: str) -> str:
    if name == "outlast" or name.startswith("outlast._core"):
        return "core"
    if name == "outlast.chaos" or name.startswith("outlast.chaos."):
        return "chaos"
    for tool in TOOLS:
        if name == tool or name.startswith(tool + "."):
            return "tools"
    for integration in INTEGRATIONS:
        if name == integration or name.startswith(integration + "."):
            return "integrations"
    return "unknown"


def _integration_of(name: str) -> str:
    return next(i for i in INTEGRATIONS if name == i or name.startswith(i + "."))


def _allowed(name: str, imported: str) -> bool:
    top = imported.split(".")[0]
    layer = _layer(name)
    if top in sys.stdlib_module_names or top == "__future__":
        return True
    if layer == "tools":
        return True
    if top != "outlast":
        if layer == "integrations":
            return top in INTEGRATIONS[_integration_of(name)]
        return layer == "chaos" and top in CHAOS_OPTIONAL
    target_layer = _layer(imported)
    if layer == "core":
        return target_layer == "core"
    if layer == "chaos":
        return target_layer == "chaos"
    return target_layer in {"core", "integrations"}  # an integration


def test_every_module_belongs_to_a_layer() -> None:
    unknown = sorted(n for n in MODULES if _layer(n) == "unknown")
    assert not unknown, f"place these modules in a layer (tests/test_layers.py): {unknown}"


def test_each_layer_imports_only_what_it_may() -> None:
    crossings = sorted(
        f"{name} ({_layer(name)}) imports {imported}"
        for name, path in MODULES.items()
        for imported in _imports(name, path)
        if not _allowed(name, imported)
    )
    assert not crossings, "\n".join(crossings)


# Inside the core, concepts stand on each other in tiers: the fault model and
# time at the bottom, the web half and supervision on top. A module may import
# its own tier and the tiers below.
CORE_TIERS = {
    "faults": 0,
    "timing": 1,
    "guard": 2,
    "connections": 2,
    "transactions": 2,
    "web": 3,
    "supervise": 3,
    "telemetry": 4,
}


def _concept(name: str) -> str | None:
    parts = name.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "_core" else None


def test_core_concepts_import_only_their_tier_and_below() -> None:
    assert {_concept(n) for n in MODULES if _concept(n)} == set(CORE_TIERS)
    upward = sorted(
        f"{name} imports {imported}"
        for name, path in MODULES.items()
        if (concept := _concept(name)) is not None
        for imported in _imports(name, path)
        if (target := _concept(imported)) is not None and CORE_TIERS[target] > CORE_TIERS[concept]
    )
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycle() -> None:
    graph = {
        name: sorted(i for i in _imports(name, path) if i in MODULES and i != name)
        for name, path in MODULES.items()
    }
    # A package importing its own submodules (re-exports) is how packages work;
    # the reverse edge, a submodule importing its package's __init__, would close
    # a cycle and is counted.
    for name, edges in graph.items():
        graph[name] = [e for e in edges if not (e.startswith(name + ".") and name in MODULES)]
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_core_modules_import_only_the_standard_library_at_run_time() -> None:
    # The static check above, confirmed by Python itself: import every core
    # module in a fresh interpreter and list what got loaded that is neither the
    # standard library nor outlast.
    core = sorted(n for n in MODULES if _layer(n) == "core")
    code = (
        "import importlib, sys\n"
        f"for m in {core!r}:\n"
        "    importlib.import_module(m)\n"
        "tops = {n.split('.')[0] for n in sys.modules}\n"
        "extra = sorted(t for t in tops if t not in sys.stdlib_module_names"
        " and t not in {'outlast', '__main__', '_distutils_hack', '__mp_main__'}"
        " and not t.startswith('_'))\n"
        "print(extra)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert len(core) > 20  # the walk found the core


def test_the_top_level_holds_public_modules_and_packages_only() -> None:
    loose = sorted(
        p.name
        for p in PACKAGE.glob("*.py")
        if p.name.startswith("_") and p.name not in {"__init__.py", "__main__.py"}
    )
    assert not loose, f"private modules belong in a package of the core: {loose}"
