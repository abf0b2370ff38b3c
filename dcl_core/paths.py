"""Where dcl keeps its caches. The project's `.cache/` folder unless DCL_CACHE_DIR says otherwise."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    return Path(os.environ.get("DCL_CACHE_DIR", PROJECT_ROOT / ".cache"))
