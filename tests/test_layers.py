"""Import rules of ../docs DESIGN.md: every module imports only its own layer or below.

Each module of python/ikecore is parsed with ast (nothing is imported); an import of
a higher layer, an unregistered module, or I/O in the sans-IO layers fails the test.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "python" / "ikecore"

LAYERS: dict[str, int] = {
    "errors": 0,
    "_core": 1, "wire": 1,
    "dh": 2, "keymat": 2, "cookies": 2,
    "policy": 3, "events": 3, "sa": 3, "config": 3, "driver": 3, "flood": 3,
    "phase1": 3, "auth": 3, "lifetime": 3, "main_mode": 3, "quick_mode": 3, "informational": 3,
    "nat_traversal": 3, "vendor_ids": 3, "dpd": 3, "aggressive_mode": 3, "persist": 3,
    "engine": 4, "frontdoor": 4, "rekey": 4, "acquire": 4, "transport": 4, "faults": 4, "store": 4,
    "monitor": 5, "cli": 5, "loadtest": 5, "demo": 5, "workers": 5, "exporters": 5, "decode": 5,
    "control": 5, "__main__": 5, "__init__": 5,
    "hostinfo": 5, "views": 5, "stream": 4, "monitor_cli": 5, "sa_listing": 5, "viewtext": 5, "control_client": 5, "entry": 5,
}
SANS_IO = {"policy", "auth", "lifetime", "rekey", "acquire", "events", "sa", "config", "driver", "phase1", "main_mode",
           "quick_mode", "informational", "engine", "nat_traversal", "vendor_ids", "dpd", "aggressive_mode", "keymat", "wire", "dh", "cookies",
           "flood", "persist"}
FORBIDDEN_IN_SANS_IO = {"asyncio", "socket", "selectors", "time", "threading"}


def _imports(tree: ast.Module) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                names.append("ikecore." + node.module)
            else:
                names.append(node.module)
                if node.module == "ikecore":
                    names.extend("ikecore." + alias.name for alias in node.names)
    return names


def test_every_module_is_assigned_a_layer() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules, "package not found"
    unknown = modules - LAYERS.keys()
    assert not unknown, f"add these modules to LAYERS in tests/test_layers.py: {sorted(unknown)}"


def test_no_module_imports_upward_or_does_io_in_sans_io_layers() -> None:
    problems: list[str] = []
    for path in sorted(PACKAGE.glob("*.py")):
        name = path.stem
        layer = LAYERS[name]
        for imported in _imports(ast.parse(path.read_text(), str(path))):
            top = imported.split(".")[0]
            if name in SANS_IO and top in FORBIDDEN_IN_SANS_IO:
                problems.append(f"{name} (sans-IO) imports {imported}")
            if top != "ikecore" or imported == "ikecore":
                continue
            target = imported.split(".")[1]
            if target in LAYERS and LAYERS[target] > layer:
                problems.append(f"{name} (L{layer}) imports {target} (L{LAYERS[target]})")
    assert not problems, "\n".join(problems)
