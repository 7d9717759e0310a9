"""The layers: the product's logic and the stores never import Flask or werkzeug, and the
package's imports form a tree (no cycle, not even under ``TYPE_CHECKING``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "flask_tokenguard"

_BLOCKED = """
import importlib, pkgutil, sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("flask", "werkzeug"):
            raise ImportError(f"{name} may not be imported here")
        return None

sys.meta_path.insert(0, Blocked())
import flask_tokenguard.errors, flask_tokenguard.models, flask_tokenguard.config
import flask_tokenguard.core, flask_tokenguard.stores
for package in (flask_tokenguard.core, flask_tokenguard.stores):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)
from flask_tokenguard.stores import store_from_url
store_from_url("memory://").close()
print("ok")
"""


def test_core_and_stores_import_without_flask_or_werkzeug() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _BLOCKED],
        capture_output=True,
        text=True,
        cwd=PACKAGE.parent,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    """Every module of the package that ``path`` imports, at any place in the file."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("flask_tokenguard"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - node.level + 1]
                module = ".".join(anchor + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("flask_tokenguard"):
                module = node.module
            else:
                continue
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)
    return found


def test_imports_form_a_tree() -> None:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {
        name: {m for m in _imports(path, name) if m in files and m != name}
        for name, path in files.items()
    }
    # A package's __init__ re-exporting its parts is not a cycle through its parts.
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            raise AssertionError(
                "import cycle: " + " -> ".join([*trail[trail.index(name) :], name])
            )
        if name in done:
            return
        for imported in sorted(graph[name]):
            visit(imported, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_core_and_stores_never_name_flask_or_werkzeug() -> None:
    lower = [PACKAGE / "errors.py", PACKAGE / "models.py", PACKAGE / "config.py"]
    lower += [*(PACKAGE / "core").rglob("*.py"), *(PACKAGE / "stores").rglob("*.py")]
    for path in lower:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in ("flask", "werkzeug"), f"{path}: {name}"
