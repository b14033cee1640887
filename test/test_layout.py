"""The package's shape: which folders may import what, no import circles (imports inside
functions included), short functions."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "accel_ros"
# Argument parsers are long lists of options, not logic.
LONG_FUNCTION_EXEMPT = {"add_parser", "add_arguments"}
MAX_FUNCTION_LINES = 80


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


# Folders from the bottom up: a folder imports only folders below it, at module level or inside
# a function (a late import that dodges a circle at load time still ties the layers). Folders
# on one line are peers and do not import each other. The top-level modules (settings,
# palettes, metrics, reports, thread defaults) are the ground floor.
LAYERS = (
    ("",),
    ("io",),
    ("data",),
    ("model",),
    ("deploy",),
    ("stream",),
    ("learn", "replay", "ros", "demo"),
    ("fleet",),
    ("bench",),
    ("gpu",),
    ("cli",),
)
RANK = {folder: rank for rank, floor in enumerate(LAYERS) for folder in floor}


def imports(name: str, path: Path) -> dict[str, int]:
    """accel_ros modules `name` imports, anywhere in the file, with the first line of each."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for target in (module, *(f"{module}.{alias.name}" for alias in node.names)):
                targets.setdefault(target, node.lineno)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                targets.setdefault(alias.name, node.lineno)
    return {t: line for t, line in targets.items()
            if t == "accel_ros" or t.startswith("accel_ros.")}


def folder_of(module: str) -> str:
    """'accel_ros.stream.segmenter' -> 'stream'; a top-level module or the package -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else ""


def test_every_folder_has_a_floor() -> None:
    folders = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert folders - {"weights"} == set(RANK) - {""}


def test_no_folder_imports_a_folder_above_it_or_beside_it() -> None:
    wrong = []
    for name, path in modules().items():
        source = folder_of(name)
        for target, line in imports(name, path).items():
            destination = folder_of(target)
            if destination != source and RANK[destination] >= RANK[source]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_circles() -> None:
    found = modules()
    graph = {name: {t for t in imports(name, path) if t in found and t != name}
             for name, path in found.items()}
    # A package's __init__ re-exporting its modules is not a circle with them.
    graph = {name: {t for t in targets if not name.startswith(t + ".")}
             for name, targets in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycle = [*trail[trail.index(target):], target]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize(("folder", "blocked"), [
    ("io", ("torch", "rclpy")), ("model", ("rclpy",)), ("data", ("rclpy",)),
    ("replay", ("rclpy",)), ("learn", ("rclpy",)), ("fleet", ("rclpy",)),
])
def test_folders_import_only_what_they_may(folder: str, blocked: tuple[str, ...]) -> None:
    names = [n for n in modules() if n.startswith(f"accel_ros.{folder}")]
    code = (f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"
            + "".join(f"import {n}\n" for n in names))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]


def test_no_function_is_longer_than_80_lines() -> None:
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and node.name not in LONG_FUNCTION_EXEMPT:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, long


def test_only_runtime_sets_process_threads() -> None:
    """torch's and OpenCV's thread pools are the process's: only runtime.set_threads changes
    them (called by entry points), so no library function resizes them under its caller."""
    setters = ("set_num_threads", "set_num_interop_threads", "setNumThreads")
    found = []
    for name, path in modules().items():
        if name == "accel_ros.runtime":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in setters):
                found.append(f"{name}:{node.lineno} calls {node.func.attr}")
    assert not found, found
