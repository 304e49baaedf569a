"""The house rules of python/ikecore, read from the code (ast; nothing is imported).

The package is a root of shared vocabulary and six wings, each a subpackage. Arrows only
go down: a module imports its own wing, the root, and the wings below it, never a wing
above. Inside the root, floors order the vocabulary the same way. Nothing imports in a
circle, not even inside a wing. The sans-IO wings (the root, ``protocol``, ``engine``)
never touch sockets, threads, clocks or asyncio.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "python" / "ikecore"

#: Wings from the bottom up, with what each owns.
WINGS: dict[str, str] = {
    "protocol": "one SA's exchanges and their helpers (Main, Aggressive, Quick Mode, Informational)",
    "engine": "the many-SA sans-IO engine: dispatch, timers, admission, acquires, rekeys, persistence",
    "gateway": "asyncio and the OS: sockets, the Rust front door, workers, DH threads, the store",
    "monitor": "the IP Security Monitor: counters, views, listings, text, exporters, control socket",
    "loadtest": "the load generator: simulated peers against any IKEv1 gateway",
    "cli": "the ikecore command: serve, connect, decode, demo",
}
RANK = {wing: rank for rank, wing in enumerate(WINGS, start=1)}

#: The root's shared vocabulary, floor by floor (a floor imports only its own or lower ones).
ROOT_FLOORS: dict[str, int] = {
    "errors": 0, "steering": 0,
    "_core": 1, "wire": 1,
    "dh": 2, "keymat": 2, "events": 2, "policy": 2,
    "sa": 3, "driver": 3, "credentials": 3,
    "config": 4,
    "__init__": 5,
}
#: ``python -m ikecore`` runs the command line: the one root module above every wing.
TOP = {"__main__"}

SANS_IO_WINGS = {"", "protocol", "engine"}
FORBIDDEN_IN_SANS_IO = {"asyncio", "socket", "selectors", "time", "threading", "concurrent", "subprocess"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _wing(module: str) -> str:
    """'' for the root, else the subpackage's name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in WINGS) else ""


def _imports(module: str, tree: ast.Module, known: set[str]) -> list[str]:
    """Every name this module imports, as dotted paths; ikecore modules resolved to modules."""
    package = module if module in known and _modules_is_package(module) else module.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("ikecore"):
                for alias in node.names:
                    child = f"{base}.{alias.name}"
                    found.append(child if child in known else base)
            else:
                found.append(base)
    return found


def _modules_is_package(module: str) -> bool:
    return (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists()


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules) | {"ikecore._core"}
    return {name: {imp for imp in _imports(name, ast.parse(path.read_text(), str(path)), known)
                   if imp.startswith("ikecore.") and imp != name}
            for name, path in modules.items()}


def test_every_module_lives_in_a_wing_or_on_a_root_floor() -> None:
    problems = []
    for module in _modules():
        if module == "ikecore":
            continue
        parts = module.split(".")
        if len(parts) == 2 and parts[1] not in ROOT_FLOORS and parts[1] not in TOP and parts[1] not in WINGS:
            problems.append(f"{module}: add it to ROOT_FLOORS or move it into a wing")
        if len(parts) > 3 or (len(parts) == 3 and parts[1] not in WINGS):
            problems.append(f"{module}: not in a known wing ({', '.join(WINGS)})")
    assert not problems, "\n".join(problems)
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()} == set(WINGS)


def _rank(module: str) -> tuple[int, int]:
    """(wing rank, floor) of a module: the root is wing 0, its floors order it inside."""
    name = module.split(".")[1] if "." in module else "__init__"
    if name in TOP:
        return (len(WINGS) + 1, 0)
    wing = _wing(module)
    if wing:
        return (RANK[wing], 0)
    return (0, ROOT_FLOORS.get(name, ROOT_FLOORS["__init__"]))


def test_arrows_only_go_down() -> None:
    problems = []
    for module, imported in _graph().items():
        for target in imported:
            if target == "ikecore":
                target = "ikecore.__init__"
            if _rank(target) > _rank(module):
                problems.append(f"{module} imports {target}, which is above it")
    assert not problems, "\n".join(sorted(problems))


def test_no_import_circle() -> None:
    graph = _graph()
    # A package's __init__ may import its own modules (re-exports): those edges point down.
    edges = {m: {t for t in ts if not (m.startswith(t + ".") and t in graph)} for m, ts in graph.items()}
    state: dict[str, int] = {}
    circles: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt in edges and not state.get(nxt):
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(edges):
        if not state.get(module):
            visit(module, [module])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_sans_io_wings_do_no_io() -> None:
    problems = []
    modules = _modules()
    known = set(modules)
    for module, path in modules.items():
        if _wing(module) not in SANS_IO_WINGS or module.split(".")[-1] in TOP:
            continue
        for imported in _imports(module, ast.parse(path.read_text(), str(path)), known):
            if imported.split(".")[0] in FORBIDDEN_IN_SANS_IO:
                problems.append(f"{module} (sans-IO) imports {imported}")
    assert not problems, "\n".join(problems)


def test_the_rules_see_the_house() -> None:
    """The checks above are not vacuous: the graph has the arrows we know are there."""
    graph = _graph()
    assert "ikecore.protocol.main_mode" in graph["ikecore.engine.core"]
    assert "ikecore.wire" in graph["ikecore.protocol.main_mode"]
    assert "ikecore.engine.core" in graph["ikecore.gateway.transport"]
    assert _rank("ikecore.cli.main") > _rank("ikecore.monitor.views") > _rank("ikecore.engine.core")
    assert _rank("ikecore.config") > _rank("ikecore.wire") > _rank("ikecore.errors")
