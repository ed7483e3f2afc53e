"""The package's layers: every import of another zero_rl part, at module level or inside a
function, goes to a part of the same layer or one below it, so nothing runs upward and no two
parts import each other."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "zero_rl"

# Lowest first. A part may import parts of its own layer or of any layer before it.
LAYERS = [
    {"sharding", "tokenizer", "summaries", "optim", "checkpoint", "sandbox"},  # no other part
    {"models", "rl", "rewards"},
    {"data", "sampler", "tasks"},
    {"sampling"},
    {"config"},
    {"describe"},
    {"eval"},
    {"train"},
    {"tools"},
]
RANK = {part: rank for rank, layer in enumerate(LAYERS) for part in layer}


def _part(path: pathlib.Path) -> str:
    """The top-level part of the package a file belongs to: "eval" for zero_rl/eval/grade.py,
    "sampler" for zero_rl/sampler.py."""
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _imported_parts(tree: ast.AST) -> set[str]:
    parts = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        else:
            continue
        for module in modules:
            names = module.split(".")
            if names[0] == "zero_rl" and len(names) > 1:
                parts.add(names[1])
    return parts


def _package_files():
    return sorted(
        p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE
    )


def test_every_part_of_the_package_has_a_layer():
    parts = {_part(p) for p in _package_files()}
    assert parts - set(RANK) == set(), "add the new part to LAYERS"
    assert set(RANK) - parts == set(), "LAYERS names a part that no longer exists"


@pytest.mark.parametrize("path", _package_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_or_sideways_only(path):
    own = _part(path)
    imported = _imported_parts(ast.parse(path.read_text(encoding="utf-8"))) - {own}
    upward = sorted(part for part in imported if RANK.get(part, -1) > RANK[own])
    assert not upward, f"{path.relative_to(PACKAGE)} ({own}) imports {upward} from above"


def test_the_checker_sees_lazy_and_aliased_imports():
    """What the check must catch, so a passing run means something."""
    code = "def f():\n    from zero_rl.train import loop\n    import zero_rl.tools.plan as p\n"
    assert _imported_parts(ast.parse(code)) == {"train", "tools"}
    assert _imported_parts(ast.parse("from zero_rl import config as c")) == {"config"}
