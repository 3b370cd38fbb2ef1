"""`node` for tests that run Node clients: the binary, with tests/node's pinned packages installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
MIN_NODE = 20


def node_with(packages: tuple[str, ...], purpose: str) -> tuple[str, str]:
    """(node, npm) once `packages` are in tests/node/node_modules (`npm ci` when one is missing);
    skips the test when node/npm are missing or older than MIN_NODE, fails it when `npm ci` fails."""
    node_bin, npm_bin = shutil.which("node"), shutil.which("npm")
    if not node_bin or not npm_bin:
        pytest.skip(f"node and npm are needed {purpose} (not found on PATH)")
    version = subprocess.run([node_bin, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < MIN_NODE:
        pytest.skip(f"Node >= {MIN_NODE} is needed {purpose} (found {version})")
    modules = NODE_DIR / "node_modules"
    if not all((modules / p / "package.json").exists() for p in packages):
        done = subprocess.run([npm_bin, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            pytest.fail(f"npm ci in {NODE_DIR} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return node_bin, npm_bin
