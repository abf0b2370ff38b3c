"""Atomic output folders: written in a temporary sibling, renamed into place only when complete.

A crash or Ctrl-C never leaves a half-written run or bundle where a user (or the next command)
would read it.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary folder next to `final`; it becomes `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)


def replace_dir(src: Path, final: Path) -> None:
    """Move a finished folder into place, replacing an old one without a moment of neither."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
        src.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        src.rename(final)
    os.chmod(final, 0o755)
