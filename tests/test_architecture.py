"""The floors of the package (ARCHITECTURE.md): each module imports only from its floor or below.

pure core -> store -> Keras floor -> callbacks -> entry points. A new module must be given a
floor here, and named in ARCHITECTURE.md, or these tests fail.
"""

import ast
import pathlib

import pytest

import keras_ckpt

PACKAGE = pathlib.Path(keras_ckpt.__file__).parent
ROOT = PACKAGE.parent

CORE, STORE, KERAS, CALLBACKS, ENTRY = range(5)
FLOOR_NAMES = ["pure core", "store", "Keras floor", "callbacks", "entry points"]
FLOORS = {
    "records": CORE,
    "ranking": CORE,
    "naming": CORE,
    "policies": CORE,
    "triggers": CORE,
    "decisions": CORE,
    "validation": CORE,
    "swa": CORE,
    "store": STORE,
    "remote": STORE,
    "writer": STORE,
    "keras_adapter": KERAS,
    "processes": KERAS,
    "snapshot": KERAS,
    "schedules": KERAS,
    "loading": KERAS,
    "averaging": KERAS,
    "ema": KERAS,
    "callbacks": CALLBACKS,
    "cli": ENTRY,
    "demo": ENTRY,
    "plots": ENTRY,
    "__init__": ENTRY,
    "__main__": ENTRY,
}
# Libraries below the Keras floor never import (the subprocess test in test_pure.py checks the
# import at run time; this finds it in the source, lazy imports included).
HEAVY = {"keras", "tensorflow", "jax", "torch", "numpy", "h5py"}


def module_key(path: pathlib.Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def package_modules() -> list[pathlib.Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imports_of(source: str) -> list[tuple[int, str]]:
    """``(line, dotted module)`` of every import, skipping ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(source)
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(child) for statement in node.body for child in ast.walk(statement)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            if node.module == "keras_ckpt":
                found += [(node.lineno, f"keras_ckpt.{alias.name}") for alias in node.names]
    return found


def floor_of_import(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "keras_ckpt" or len(parts) == 1:
        return None
    return FLOORS.get(parts[1])


@pytest.mark.parametrize("path", package_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_imports_only_from_its_floor_or_below(path):
    key = module_key(path)
    assert key in FLOORS, f"{key}: give the new module a floor in FLOORS and ARCHITECTURE.md"
    floor = FLOORS[key]
    problems = []
    for line, module in imports_of(path.read_text()):
        target = floor_of_import(module)
        if target is not None and target > floor:
            problems.append(
                f"line {line}: {module} ({FLOOR_NAMES[target]}) from the {FLOOR_NAMES[floor]}"
            )
        if floor <= STORE and module.split(".")[0] in HEAVY:
            problems.append(f"line {line}: {module} below the Keras floor")
    assert not problems, "\n".join(problems)


def test_every_module_is_named_in_the_architecture_document():
    document = (ROOT / "ARCHITECTURE.md").read_text()
    missing = [
        str(path.relative_to(PACKAGE))
        for path in package_modules()
        if path.name not in ("__init__.py", "__main__.py")
        and f"`{path.relative_to(PACKAGE)}`" not in document
        and f"`{path.name}`" not in document
    ]
    assert not missing, f"ARCHITECTURE.md does not name: {missing}"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import keras\n", [(1, "keras")]),
        (
            "from keras_ckpt import store, naming\n",
            [(1, "keras_ckpt"), (1, "keras_ckpt.store"), (1, "keras_ckpt.naming")],
        ),
        ("def f():\n    from keras_ckpt.cli import main\n", [(2, "keras_ckpt.cli")]),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import keras\n",
            [(1, "typing")],
        ),
    ],
)
def test_imports_of_finds_every_import_but_the_type_checking_ones(source, expected):
    assert sorted(imports_of(source)) == sorted(expected)
