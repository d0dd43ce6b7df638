"""The lower layers never import the gateway: shared/ and registry/ serve the gateway, the CLI and
the runner alike (the registry once took its option table from gateway/options.py). And the tree
shows the processes: code that runs inside a runner process (runner/process/) and code that
manages runners from outside (runner/supervisor/) never import each other, and the HTTP side
never reaches into the runner process's code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", ["shared", "registry"])
def test_lower_layers_do_not_import_the_gateway(layer: str) -> None:
    offenders = {str(path.relative_to(ROOT)): sorted(n for n in _imports(path)
                                                     if n.split(".")[0] == "gateway")
                 for path in sorted((ROOT / layer).rglob("*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}


def _offenders(folder: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found = {str(path.relative_to(ROOT)): sorted(n for n in _imports(path)
                                                 if n.startswith(forbidden))
             for path in sorted((ROOT / folder).rglob("*.py"))}
    return {k: v for k, v in found.items() if v}


@pytest.mark.parametrize(("folder", "forbidden"), [
    ("runner/process", ("runner.supervisor", "gateway")),
    ("runner/supervisor", ("runner.process", "gateway")),
    ("gateway", ("runner.process",)),
    ("shared", ("runner", "registry", "gateway")),
])
def test_each_process_keeps_to_its_own_code(folder: str, forbidden: tuple[str, ...]) -> None:
    assert _offenders(folder, forbidden) == {}
