"""Where dcl keeps its caches.

- `cache_dir()`: data caches, the project's `.cache/` unless DCL_CACHE_DIR says otherwise.
- `build_cache_dir()`: native builds (the ExecuTorch runner, the ARM64 root file system), outside
  the work tree so a fresh clone reuses them; each build lives in a folder named by the hash of
  its pinned inputs. DCL_BUILD_CACHE, else $XDG_CACHE_HOME/dcl, else ~/.cache/dcl.
"""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    return Path(os.environ.get("DCL_CACHE_DIR", PROJECT_ROOT / ".cache"))


def build_cache_dir() -> Path:
    if os.environ.get("DCL_BUILD_CACHE"):
        return Path(os.environ["DCL_BUILD_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dcl"
