"""The layering the package promises: a sans-I/O core, edges that only use its public face.

- No core module imports asyncio, sockets, logging, an HTTP or Redis client, a server, or a
  module that reads the clock or the environment, and none calls ``time.*``, ``datetime.now``
  or ``os.environ`` / ``os.getenv`` (a call into the core can only depend on its arguments).
- No edge module (``server/``, the top-level tools) reads an underscore attribute of another
  object, or compares anything with the name of a session state: the edge asks the core
  (``close_expected()``, ``close_code()``, records) instead of inspecting it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mise_twilio"
CORE = sorted((PACKAGE / "core").glob("*.py"))
EDGE = sorted((PACKAGE / "server").rglob("*.py")) + sorted(PACKAGE.glob("*.py"))

FORBIDDEN_IMPORTS = {
    "asyncio",
    "socket",
    "ssl",
    "selectors",
    "logging",
    "structlog",
    "starlette",
    "uvicorn",
    "httpx",
    "redis",
    "websockets",
    "prometheus_client",
    "time",
    "os",
    "subprocess",
    "threading",
    "pydantic_settings",
    "mise_twilio.server",
}
FORBIDDEN_CALLS = {
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
    ("date", "today"),
    ("os", "getenv"),
}
STATE_NAMES = {"awaiting_start", "streaming", "closed", "rejected"}


def _imports(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _forbidden(module: str) -> bool:
    return any(module == bad or module.startswith(bad + ".") for bad in FORBIDDEN_IMPORTS)


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_module_is_sans_io(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert not {m for m in _imports(tree) if _forbidden(m)}, path.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Name):
                assert (owner.id, node.func.attr) not in FORBIDDEN_CALLS, (path.name, node.lineno)
        if isinstance(node, ast.Attribute) and node.attr == "environ":
            raise AssertionError(f"{path.name}:{node.lineno} reads the environment")


def test_the_import_check_would_catch_an_offender() -> None:
    offender = ast.parse(
        "import asyncio\nfrom time import monotonic\nimport mise_twilio.server.app"
    )
    assert {m for m in _imports(offender) if _forbidden(m)} == {
        "asyncio",
        "time",
        "mise_twilio.server.app",
    }


def _private_reads(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            found.append((node.lineno, node.attr))
    return found


def _state_comparisons(tree: ast.AST) -> list[int]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Constant) and o.value in STATE_NAMES for o in operands):
                found.append(node.lineno)
    return found


@pytest.mark.parametrize("path", EDGE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_edge_uses_only_the_public_face_of_other_objects(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert _private_reads(tree) == [], path
    assert _state_comparisons(tree) == [], path


def test_the_edge_check_would_catch_an_offender() -> None:
    offender = ast.parse('if session.state == "closed" and session._lockstep: pass')
    assert _private_reads(offender) == [(1, "_lockstep")]
    assert _state_comparisons(offender) == [1]


def test_the_package_imports_its_public_names_on_first_use() -> None:
    import subprocess
    import sys

    probe = (
        "import sys, mise_twilio\n"
        "heavy = sorted(m for m in ('numpy', 'pydantic', 'mise_twilio.core.call',"
        " 'mise_twilio.server.app') if m in sys.modules)\n"
        "missing = [n for n in mise_twilio.__all__ if getattr(mise_twilio, n, None) is None]\n"
        "print(heavy, missing, set(mise_twilio.__all__) <= set(dir(mise_twilio)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[] [] True", result.stdout + result.stderr
