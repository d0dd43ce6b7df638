"""The lower layers never import the gateway: shared/ and registry/ serve the gateway, the CLI and
the runner alike (the registry once took its option table from gateway/options.py)."""

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
