"""The layers of docs/architecture.md, held against every import in the code.

The table in docs/architecture.md ("## Layers") says, per layer, whether it may import torch and its
ecosystem, whether it may import third-party packages at all, and which other first-party layers it
may import. This test parses the table and every module under the first-party packages (the source
is parsed, never imported, so an import inside a function or under ``TYPE_CHECKING`` is seen like
any other), and fails on an import the table does not allow or on an import circle between
modules. The checker is tested on small made-up trees too, so that it is known to fail.
"""
from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("node", "models", "phantoms", "export", "training", "bench")
TORCH_FAMILY = frozenset({"torch", "torchvision", "timm", "transformers", "peft"})
_ROW = re.compile(r"^\|\s*`(?P<layer>[\w.]+)`[^|]*\|(?P<torch>[^|]*)\|(?P<third>[^|]*)\|(?P<allowed>[^|]*)\|\s*$")


@dataclass(frozen=True)
class Layer:
    name: str
    torch: bool                  # may import the torch family
    third_party: bool            # may import any third-party package (False: standard library only)
    allowed: tuple[str, ...]     # first-party prefixes it may import besides its home package


def parse_layers(markdown: str) -> dict[str, Layer]:
    """The rows of the "## Layers" table of ``markdown``."""
    section = markdown.split("\n## Layers", 1)[1].split("\n## ", 1)[0]
    layers = {}
    for line in section.splitlines():
        m = _ROW.match(line.strip())
        if m:
            allowed = tuple(re.findall(r"`([\w.]+)`", m["allowed"]))
            layers[m["layer"]] = Layer(m["layer"], m["torch"].strip() == "yes",
                                       m["third"].strip() != "standard library", allowed)
    return layers


def module_files(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module of ``packages`` under ``root``."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path) -> list[tuple[str, int]]:
    """(imported dotted name, line) for every import statement of the module, wherever it is.

    ``from a.b import c`` yields both ``a.b`` and ``a.b.c`` (``c`` may be a module); relative
    imports are made absolute.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((module, node.lineno))
            out.extend((f"{module}.{alias.name}", node.lineno) for alias in node.names if alias.name != "*")
    return out


def _first_party(target: str, modules: dict[str, Path]) -> str | None:
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _layer_of(module: str, layers: dict[str, Layer]) -> Layer | None:
    best = None
    for name, layer in layers.items():
        if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(best.name)):
            best = layer
    return best


def _home(module: str) -> str:
    """The package a module may always import from: its top-level package, except that ``models``
    is split into independent layers (``models.preprocess`` must not reach ``models.versamammo``)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "models" and len(parts) > 1 else parts[0]


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def import_graph(modules: dict[str, Path]) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """(first-party edges ``{module: {imported module: line}}``, third-party ``{module: {top name: line}}``)."""
    edges: dict[str, dict[str, int]] = {m: {} for m in modules}
    external: dict[str, dict[str, int]] = {m: {} for m in modules}
    for module, path in modules.items():
        for target, line in imports_of(module, path):
            if not target or target == "__future__":
                continue
            resolved = _first_party(target, modules)
            if resolved is not None:
                if resolved != module:
                    edges[module].setdefault(resolved, line)
            elif target.split(".")[0] not in PACKAGES:
                external[module].setdefault(target.split(".")[0], line)
    return edges, external


def violations(modules: dict[str, Path], layers: dict[str, Layer]) -> list[str]:
    """Every import the table does not allow, as ``module:line imports X (why)``."""
    edges, external = import_graph(modules)
    problems = []
    for module in sorted(modules):
        layer = _layer_of(module, layers)
        if layer is None:
            problems.append(f"{module}: in no layer of the table")
            continue
        for target, line in sorted(edges[module].items()):
            if _within(target, _home(module)) or any(_within(target, p) for p in layer.allowed):
                continue
            problems.append(f"{module}:{line} imports {target} (layer {layer.name} may import "
                            f"{', '.join(layer.allowed) or 'no other first-party package'})")
        for top, line in sorted(external[module].items()):
            if top in TORCH_FAMILY and not layer.torch:
                problems.append(f"{module}:{line} imports {top} (layer {layer.name} is torch-free)")
            elif not layer.third_party and top not in sys.stdlib_module_names:
                problems.append(f"{module}:{line} imports {top} (layer {layer.name} uses the standard library only)")
    return problems


def import_circles(modules: dict[str, Path]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    edges, _ = import_graph(modules)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []
    counter = 0

    def visit(v: str) -> None:  # recursion depth is bounded by the number of modules (a few hundred)
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                circles.append(sorted(group))
    for module in sorted(modules):
        if module not in index:
            visit(module)
    return circles


# ---------------------------------------------------------------------------- the repository

@pytest.fixture(scope="module")
def layers() -> dict[str, Layer]:
    return parse_layers((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def modules() -> dict[str, Path]:
    return module_files(ROOT)


def test_the_table_names_the_layers_the_issue_asked_for(layers):
    node = layers["node"]
    assert not node.torch and set(node.allowed) == {"models.preprocess", "models.report", "models.package", "phantoms"}
    for torch_free in ("models.preprocess", "models.report", "models.package", "phantoms"):
        assert not layers[torch_free].torch and layers[torch_free].allowed == ()
    assert layers["models.versamammo"].torch and layers["training"].torch
    assert "training" not in layers["export"].allowed and "training" in layers["export.bootstrap"].allowed


def test_every_import_keeps_to_the_layers(modules, layers):
    assert len(modules) > 150
    problems = violations(modules, layers)
    assert not problems, "imports against docs/architecture.md's layers:\n" + "\n".join(problems)


def test_no_import_circles(modules):
    circles = import_circles(modules)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


# ---------------------------------------------------------------------------- the checker fails

def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return module_files(tmp_path)


_BASE = {"node/__init__.py": "", "node/pipeline.py": "", "models/__init__.py": "",
         "models/preprocess/__init__.py": "import numpy\n", "models/report/__init__.py": "",
         "models/package/__init__.py": "", "models/versamammo/__init__.py": "",
         "models/versamammo/student.py": "import torch\n", "models/mammorg/__init__.py": "",
         "phantoms/__init__.py": "", "export/__init__.py": "", "export/bootstrap.py": "",
         "export/onnx_io.py": "", "training/__init__.py": "", "training/loop.py": "", "bench/__init__.py": ""}

_BAD = {
    "node -> torch inside a function": ("node/cli.py", "def f():\n    import torch\n", "imports torch"),
    "node -> training": ("node/cli.py", "def f():\n    from training.loop import x\n", "imports training.loop"),
    "node -> export": ("node/cli.py", "from export.bootstrap import DEMO\n", "imports export.bootstrap"),
    "node -> models.versamammo (TYPE_CHECKING)": (
        "node/cli.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import models.versamammo.student\n",
        "imports models.versamammo.student"),
    "node -> timm": ("node/cli.py", "import timm.layers\n", "imports timm"),
    "node -> transformers": ("node/cli.py", "from transformers import AutoModel\n", "imports transformers"),
    "models.preprocess -> torch": ("models/preprocess/geometry.py", "import torch\n", "imports torch"),
    "models.report -> numpy": ("models/report/parse.py", "import numpy\n", "standard library only"),
    "models.preprocess -> models.versamammo": ("models/preprocess/geometry.py",
                                               "from models.versamammo.student import S\n", "imports models.versamammo"),
    "phantoms -> training": ("phantoms/study.py", "from ..training.loop import x\n", "imports training.loop"),
    "export (not bootstrap) -> training": ("export/onnx_io.py", "import training.loop\n", "imports training.loop"),
    "training -> export": ("training/loop.py", "from export.bootstrap import x\n", "imports export.bootstrap"),
    "training -> node": ("training/loop.py", "import node.pipeline\n", "imports node.pipeline"),
}


@pytest.mark.parametrize("case", sorted(_BAD))
def test_the_checker_refuses_a_forbidden_arrow(tmp_path, layers, case):
    rel, text, expected = _BAD[case]
    modules = _tree(tmp_path, {**_BASE, rel: text})
    problems = violations(modules, layers)
    assert any(expected in p for p in problems), problems


def test_the_checker_allows_the_table_s_arrows(tmp_path, layers):
    modules = _tree(tmp_path, {**_BASE,
                               "node/cli.py": "from models.package import x\nfrom phantoms import study\nimport numpy\n",
                               "export/bootstrap.py": "import torch\nfrom training.loop import x\nfrom node import cli\n",
                               "models/mammorg/model.py": "from models.versamammo.student import S\nimport transformers\n"})
    assert violations(modules, layers) == []


def test_the_checker_finds_a_circle_held_open_by_a_function_level_import(tmp_path):
    modules = _tree(tmp_path, {**_BASE, "node/a.py": "from node import b\n",
                               "node/b.py": "def f():\n    from node.a import g\n"})
    assert import_circles(modules) == [["node.a", "node.b"]]
