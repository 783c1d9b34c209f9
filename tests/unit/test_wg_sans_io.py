"""The WireGuard core stays sans-I/O: no module in probe/wireguard imports sockets, event loops or clocks."""

import ast
from pathlib import Path

import probe.wireguard

FORBIDDEN = {"socket", "asyncio", "time", "datetime", "selectors", "select", "trio", "anyio"}
PACKAGE_DIR = Path(probe.wireguard.__file__).parent


def imported_modules(tree: ast.AST) -> set[str]:
    """Top-level names of every module a source file imports, including via __import__/importlib."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if called in {"__import__", "import_module"} and isinstance(node.args[0].value, str):
                names.add(node.args[0].value.split(".")[0])
    return names


def test_no_wireguard_module_imports_io_or_clock_modules() -> None:
    sources = sorted(PACKAGE_DIR.rglob("*.py"))
    assert len(sources) >= 8  # the walk really found the package
    offenders = {
        path.name: sorted(imported_modules(ast.parse(path.read_text(), str(path))) & FORBIDDEN) for path in sources
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_checker_itself_catches_forbidden_imports() -> None:
    sample = "import time\nfrom asyncio import sleep\nimport socket as s\n__import__('datetime')\n"
    assert imported_modules(ast.parse(sample)) >= {"time", "asyncio", "socket", "datetime"}
