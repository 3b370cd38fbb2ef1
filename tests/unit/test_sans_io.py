"""The protocol core does no I/O and reads no clock (design.md): check its imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "parley"
FORBIDDEN = {"asyncio", "socket", "time", "datetime", "threading", "subprocess", "httpx", "openai",
             "websockets", "starlette", "fastapi", "uvicorn", "os", "mcp", "httpx2", "anyio"}


@pytest.mark.parametrize("path", sorted((SRC / "core").glob("*.py")) + sorted((SRC / "protocol").glob("*.py")),
                         ids=lambda p: p.name)
def test_core_and_protocol_import_no_io(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
