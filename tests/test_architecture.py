"""The package layers of docs/architecture.md hold: no module imports a layer above its own.

Layers, lowest first (a module may import its own unit and any unit of a lower layer):
    0  datamodules.types                                         (torch only)
    1  callbacks.estimators | datamodules.math | datamodules.sandbox   (independent of each other)
    2  datamodules (the rest: records, stream, the DataModule, tasks)
    3  modules
    4  callbacks (the rest: the objectives and helper callbacks)
    5  app
Every import counts, function-local and TYPE_CHECKING ones included; bench/ and tests/ may import anything.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "modules", "datamodules", "callbacks")
UNITS = {"datamodules.types": 0, "callbacks.estimators": 1, "datamodules.math": 1, "datamodules.sandbox": 1,
         "datamodules": 2, "modules": 3, "callbacks": 4, "app": 5}


def unit_of(module: str) -> str | None:
    """The unit (a key of UNITS) a dotted module name belongs to: its longest matching prefix."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in UNITS:
            return prefix
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.AST, importer: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, dotted name) of every module an AST imports; `from pkg import sub` counts as pkg.sub when sub is a
    module of the repository (e.g. `from callbacks import estimators`)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                package = importer.split(".") if is_package else importer.split(".")[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:
                sub = REPO.joinpath(*base.split("."), alias.name)
                is_module = sub.with_suffix(".py").is_file() or (sub / "__init__.py").is_file()
                found.append((node.lineno, f"{base}.{alias.name}" if is_module else base))
    return found


def layer_violations() -> list[str]:
    problems = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            importer = module_name(path)
            own = unit_of(importer)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for line, target in imported_modules(tree, importer, path.name == "__init__.py"):
                unit = unit_of(target)
                if unit is None or unit == own:
                    continue
                if UNITS[unit] >= UNITS[own]:
                    problems.append(f"{path.relative_to(REPO)}:{line}: {importer} (layer {UNITS[own]}, {own}) imports "
                                    f"{target} (layer {UNITS[unit]}, {unit})")
    return problems


def test_no_module_imports_a_layer_above_its_own():
    problems = layer_violations()
    assert not problems, "imports against the layering of docs/architecture.md:\n" + "\n".join(problems)


def test_the_checker_sees_every_kind_of_import():
    tree = ast.parse("import app.cli\ndef f():\n    from callbacks import estimators, MeanReward\n"
                     "from . import records\nfrom .math import answers\n")
    found = {name: unit_of(name) for _, name in imported_modules(tree, "datamodules.stream", is_package=False)}
    assert found == {"app.cli": "app", "callbacks.estimators": "callbacks.estimators", "callbacks": "callbacks",
                     "datamodules.records": "datamodules", "datamodules.math.answers": "datamodules.math"}


def test_verifiers_import_without_torch_and_estimators_without_lightning():
    # verifier worker processes import datamodules.math.answers: the package __init__ files above it must stay light
    code = ("import sys, datamodules.math.answers, datamodules.sandbox\n"
            "assert not {'torch', 'lightning'} & set(sys.modules), 'the verifiers loaded torch or lightning'\n"
            "import callbacks.estimators\n"
            "assert not {'lightning', 'modules'} & set(sys.modules), 'callbacks.estimators loaded lightning'\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
