"""The dependency rule between the three packages, read from their import statements:
lune_core (the engine) imports neither gradio nor the web service nor the deployment; lune_deploy
never the web service nor gradio; lune_web never the deployment; only app.py joins all three."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "lune_core": {"gradio", "lune_web", "lune_deploy", "spaces"},
    "lune_deploy": {"gradio", "lune_web"},
    "lune_web": {"lune_deploy", "spaces"},
}


def imported(path: Path) -> set[str]:
    """Top-level names of every module the file imports (relative imports resolve inside its package)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_each_package_imports_only_what_the_rule_allows(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    broken = {str(f.relative_to(ROOT)): sorted(imported(f) & FORBIDDEN[package]) for f in files}
    assert not {f: bad for f, bad in broken.items() if bad}


def test_only_app_py_joins_the_three_packages():
    assert {"lune_web", "lune_deploy"} <= imported(ROOT / "app.py")
    joined = [str(f.relative_to(ROOT)) for f in ROOT.glob("lune_*/**/*.py")
              if {"lune_web", "lune_deploy"} <= imported(f)]
    assert joined == []


def test_the_engine_finds_the_repository_only_through_assets():
    """No engine module but lune_core/assets.py climbs out of its package to find files."""
    climbing = [str(f.relative_to(ROOT)) for f in (ROOT / "lune_core").rglob("*.py")
                if "parent.parent" in f.read_text(encoding="utf-8") and f.name != "assets.py"]
    assert climbing == []


def test_app_py_only_builds_and_launches():
    """No handler, renderer or layout in app.py: its functions are at most the preload."""
    tree = ast.parse((ROOT / "app.py").read_text(encoding="utf-8"))
    functions = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert functions == ["preload_default_model"]
    assert len((ROOT / "app.py").read_text(encoding="utf-8").splitlines()) < 50
