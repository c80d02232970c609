"""The house: subpackages whose imports point down, no import circle, a command line that
answers ``--help`` without PyTorch, ``import glaclip`` without OpenCV or Pillow, small modules
and functions. Read from the source (``ast``) and in fresh interpreters."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "glaclip"

FOUNDATION = {"config", "registry", "constants", "atomic"}
# what each layer may import (besides itself and the standard and third-party libraries)
ALLOWED = {
    "foundation": {"foundation"},
    "images": {"foundation"},
    "text": {"foundation"},
    "model": {"foundation", "images", "text"},
    "io": {"foundation", "images", "text", "model"},
    "data": {"foundation", "images", "text"},
    "evaluation": {"foundation", "images", "text", "model", "io", "data"},
    "demo": {"foundation", "images", "text", "model", "io", "data"},
    "cli": {"foundation", "images", "text", "model", "io", "data", "evaluation", "demo"},
    "main": {"cli"},
    "package": set(),
}
# the registry imports the built-in base methods on its first lookup (their registration)
PLUGINS = {("glaclip.registry", "glaclip.model.bases")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(name: str) -> str:
    parts = name.split(".")
    if len(parts) == 1:
        return "package"
    if parts[1] in FOUNDATION:
        return "foundation"
    return "main" if parts[1] == "__main__" else parts[1]


def imports(path: Path, top_level_only: bool) -> list[str]:
    """The glaclip modules ``path`` imports (without ``if TYPE_CHECKING:`` blocks; with
    ``top_level_only``, those it imports when it is imported)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[str] = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.extend(a.name for a in node.names if a.name.startswith("glaclip"))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("glaclip"):
                found.extend(f"{node.module}.{a.name}" for a in node.names)
            if top_level_only:
                if isinstance(node, (ast.If, ast.Try)):
                    visit(node.body)
                    visit(getattr(node, "orelse", []))
                    for handler in getattr(node, "handlers", []):
                        visit(handler.body)
            else:
                visit([n for n in ast.iter_child_nodes(node) if isinstance(n, ast.stmt)])

    visit(tree.body)
    return found


def resolve(name: str, modules: set[str]) -> str:
    """``glaclip.x.y.Name`` -> the module ``glaclip.x.y`` (or the module itself)."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def test_arrows_point_down() -> None:
    """Each subpackage imports only what its ``__init__`` docstring allows: the model no I/O,
    evaluation or demo; evaluation no demo; nothing the command line."""
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    wrong = []
    for path in paths:
        me = module_name(path)
        for target in {resolve(n, modules) for n in imports(path, top_level_only=False)}:
            there = layer(target)
            if there == layer(me) or (me, target) in PLUGINS or target == "glaclip":
                continue
            if there not in ALLOWED[layer(me)]:
                wrong.append(f"{me} -> {target}")
    assert wrong == []


def test_no_import_circle() -> None:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    graph = {
        module_name(p): {resolve(n, modules) for n in imports(p, top_level_only=True)}
        - {module_name(p)}
        for p in paths
    }
    circles = []

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    for module in graph:
        if module in reach(module):
            circles.append(module)
    assert circles == []


def test_the_rules_are_those_the_packages_say() -> None:
    """Every subpackage's docstring says what it holds and what it may import."""
    for pkg in ("images", "text", "model", "io", "data", "evaluation", "demo", "cli"):
        doc = ast.get_docstring(ast.parse((PACKAGE / pkg / "__init__.py").read_text()))
        assert doc and "May import" in doc, pkg


def _loaded_after(code: str) -> set[str]:
    probe = code + "\nimport sys\nprint(' '.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_the_parser_imports_no_pytorch() -> None:
    """``glaclip --help`` and every subcommand's ``--help`` build this parser only."""
    loaded = _loaded_after("import glaclip.cli.main as m; m.build_parser().format_help()")
    assert "glaclip.cli.parser" in loaded and "glaclip.registry" in loaded
    assert loaded.isdisjoint({"torch", "open_clip", "timm", "cv2", "gradio"})


def test_import_glaclip_loads_no_image_library() -> None:
    assert _loaded_after("import glaclip").isdisjoint({"cv2", "PIL", "torch"})
    # the Segmenter loads PyTorch, and still no image library until an image is read
    loaded = _loaded_after("from glaclip import Segmenter")
    assert "torch" in loaded and loaded.isdisjoint({"cv2", "PIL"})


def test_modules_and_functions_are_small() -> None:
    """No module over 400 lines unless its docstring says why (``Long:``); no function over 50
    lines, counted from its ``def`` to its last line (signature, docstring and body; decorators
    aside)."""
    long_modules, long_functions = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        doc = ast.get_docstring(tree) or ""
        if len(source.splitlines()) > 400 and "Long:" not in doc:
            long_modules.append(str(path.relative_to(PACKAGE)))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1  # the docstring counts too
                if lines > 50:
                    long_functions.append(f"{path.relative_to(PACKAGE)}:{node.name} ({lines})")
    assert long_modules == [], f"modules over 400 lines without a Long: reason: {long_modules}"
    assert long_functions == [], f"functions over 50 lines, docstring included: {long_functions}"
