"""Where the shipped data lives (prompt sets, presets, curated neighbours): one place for the path.

A source checkout keeps it in assets/ beside the package; an installed package in
<prefix>/share/lune/assets (pyproject's data files); LUNE_ASSETS overrides both."""
from __future__ import annotations

import os
import sys
from pathlib import Path


def assets_dir() -> Path:
    if os.environ.get("LUNE_ASSETS"):
        return Path(os.environ["LUNE_ASSETS"])
    beside = Path(__file__).resolve().parent.parent / "assets"
    return beside if beside.is_dir() else Path(sys.prefix) / "share" / "lune" / "assets"


def asset(name: str) -> Path:
    return assets_dir() / name
