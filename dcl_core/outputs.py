"""Every output dcl writes (a run, a bundle, a profile), owned in one place.

- Checked before any work: the destination must be creatable (its parent a writable folder), must
  not equal or contain an input of the command, and must not be something dcl did not make. An
  existing non-empty folder is replaced only if it is a dcl output of the same kind (its marker
  file says so) and the user passed --force; a plain file, or a folder of the user's, never.
- Written atomically: into a hidden temporary sibling, renamed into place only when complete, so a
  crash, Ctrl-C or SIGTERM (the CLI turns it into KeyboardInterrupt) leaves no half-written output
  and no temporary folder.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

from dcl_core.errors import OutputError

MARKER = ".dcl-output.json"  # in every folder dcl writes: what kind of output it is


def check_destination(path: str | Path, kind: str, force: bool = False, inputs: Iterable[str | Path] = ()) -> Path:
    """Refuse (OutputError, one line) an output that would replace what dcl did not make, touch an
    input, or cannot be created; returns the resolved path. Creates nothing that stays."""
    final = Path(path).expanduser().resolve()
    for given in inputs:
        inp = Path(given).expanduser().resolve()
        if final == inp or inp.is_relative_to(final):
            raise OutputError(f"output {path} would replace the input {given}; choose another --out")
    if final.is_file() or final.is_symlink():
        raise OutputError(f"output {path} is an existing file; dcl writes a folder there: choose another --out")
    if final.is_dir() and any(final.iterdir()):
        made = _marker_kind(final)
        if made is None:
            raise OutputError(f"output {path} is a non-empty folder dcl did not create; choose another --out "
                              "(dcl never replaces your files)")
        if made != kind:
            raise OutputError(f"output {path} holds a dcl {made}, not a {kind}; choose another --out")
        if not force:
            raise OutputError(f"output {path} already holds a dcl {kind}; pass --force to replace it, "
                              "or choose another --out")
    _probe_parent(final, path)
    return final


@contextmanager
def atomic_output(path: str | Path, kind: str, force: bool = False,
                  inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success it gets the marker and becomes `path`
    (replacing a previous dcl output of the same kind when `force`). On any failure it is removed."""
    final = check_destination(path, kind, force, inputs)
    tmp = _make_temp(final, path)
    try:
        yield tmp
        (tmp / MARKER).write_text(json.dumps({"dcl": "output", "kind": kind, "created": _now()}) + "\n")
        check_destination(final, kind, force, inputs)  # nothing else took the place meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace(tmp, final)


def _marker_kind(folder: Path) -> str | None:
    try:
        record = json.loads((folder / MARKER).read_text())
        return record["kind"] if record.get("dcl") == "output" else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _probe_parent(final: Path, given: str | Path) -> None:
    """Creates and removes a temporary folder where the output will go: proves it is writable."""
    shutil.rmtree(_make_temp(final, given), ignore_errors=True)


def _make_temp(final: Path, given: str | Path) -> Path:
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
    except OSError as e:
        raise OutputError(f"cannot write output {given} ({e.strerror or e}: {e.filename or parent}); "
                          "choose a writable --out") from None


def _replace(src: Path, final: Path) -> None:
    """Move a finished folder into place, replacing an old one without a moment of neither."""
    try:
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
            src.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            src.rename(final)
        os.chmod(final, 0o755)
    except OSError as e:
        shutil.rmtree(src, ignore_errors=True)
        raise OutputError(f"cannot move the finished output into {final} ({e.strerror or e}); nothing was written") from None


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


__all__ = ["MARKER", "atomic_output", "check_destination"]
