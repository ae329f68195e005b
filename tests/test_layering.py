"""jaxreg's modules import one way: _tree/_validate/_numerics -> masks/_masked -> penalties
and transforms -> flat -> optim -> jaxreg/__init__ (checked on the source, so a new cycle
fails here first)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "jaxreg"

# Each module's layer; a module may import only from layers at or below its own.
LAYERS = {
    "_tree": 0,
    "_validate": 0,
    "_numerics": 0,
    "masks": 1,
    "_masked": 1,
    "_decay": 2,
    "_penalties": 2,
    "_structured": 3,
    "_soft_threshold": 3,
    "_guard": 2,
    "prox": 3,
    "checkpoint": 3,
    "nn": 3,
    "flat": 4,
    "optim": 5,
    "__init__": 6,
}


def _layer(module: str) -> int:
    parts = module.split(".")
    if parts[0] != "jaxreg":
        raise ValueError(module)
    if len(parts) == 1:
        return LAYERS["__init__"]
    return LAYERS[parts[1]]


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxreg"):
            if node.module == "jaxreg":  # from jaxreg import x: the submodule x
                yield [f"jaxreg.{a.name}" for a in node.names], node
            else:
                yield [node.module], node
        elif isinstance(node, ast.Import):
            yield [a.name for a in node.names if a.name.startswith("jaxreg")], node


def test_every_module_has_a_layer():
    modules = {p.relative_to(PKG).parts[0].removesuffix(".py") for p in PKG.rglob("*.py")}
    assert modules <= set(LAYERS), modules - set(LAYERS)


def test_imports_flow_one_way():
    upward = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        here = LAYERS[rel.parts[0].removesuffix(".py")]
        for targets, node in _imports(path):
            for target in targets:
                # the deprecation shim in masks (old names of the param-group helpers)
                # imports jaxreg.optim at call time, by design
                if rel.name == "masks.py" and target == "jaxreg.optim":
                    continue
                if _layer(target) > here:
                    upward.append(f"{rel}:{node.lineno} imports {target}")
    assert not upward, upward
