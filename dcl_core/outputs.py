"""Every output dcl writes (a run, a bundle, a profile, an app's assets), owned in one place.

- Checked before any work: the destination must be creatable (its parent a writable folder), must
  not equal, contain or sit inside an input of the command (a command may name `containers`, the
  inputs its output may live in: `dcl profile` writes into its bundle), and must not be something
  dcl did not make. An existing non-empty folder is replaced only if it is a dcl output of the
  same kind (its marker file says so) and the user passed --force; a plain file, or a folder of
  the user's, never.
- --force replaces exactly what dcl wrote: the marker lists every file the output wrote. Any other
  file in the folder (the user's notes, a profile that `dcl profile` put inside a bundle) is
  carried into the new output unchanged and named in one line; a foreign file where the new output
  must write a file refuses the command with nothing changed.
- Written atomically: into a hidden temporary sibling, renamed into place only when complete, so a
  crash, Ctrl-C or SIGTERM (the CLI turns it into KeyboardInterrupt) leaves no half-written output
  and no temporary folder. A SIGKILL can leave the temporary folder; the next command writing the
  same output removes it (its stamp names the dead process).
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

from dcl_core.errors import OutputError

MARKER = ".dcl-output.json"  # in every folder dcl writes: what kind of output it is, which files it wrote
TEMP_STAMP = ".dcl-temp.json"  # in every temporary folder: the process that writes it


def check_destination(path: str | Path, kind: str, force: bool = False, inputs: Iterable[str | Path] = (),
                      containers: Iterable[str | Path] = ()) -> Path:
    """Refuse (OutputError, one line) an output that would replace what dcl did not make, touch an
    input, or cannot be created; returns the resolved path. Creates nothing that stays."""
    final = Path(path).expanduser().resolve()
    may_hold = {Path(c).expanduser().resolve() for c in containers}
    for given in [*inputs, *containers]:
        inp = Path(given).expanduser().resolve()
        if final == inp or inp.is_relative_to(final):
            raise OutputError(f"output {path} would replace the input {given}; choose another output folder")
        if final.is_relative_to(inp) and inp not in may_hold:
            raise OutputError(f"output {path} lies inside the input {given}; choose an output folder outside it")
    if final.is_file() or final.is_symlink():
        raise OutputError(f"output {path} is an existing file; dcl writes a folder there: choose another output folder")
    _remove_stale_temporaries(final)
    if final.is_dir() and any(final.iterdir()):
        record = _marker(final)
        if record is None:
            raise OutputError(f"output {path} is a non-empty folder dcl did not create; choose another output folder "
                              "(dcl never replaces your files)")
        if record["kind"] != kind:
            raise OutputError(f"output {path} holds a dcl {record['kind']}, not a {kind}; choose another output folder")
        if not force:
            raise OutputError(f"output {path} already holds a dcl {kind}; pass --force to replace it, "
                              "or choose another output folder")
        if not isinstance(record.get("files"), list):
            raise OutputError(f"output {path} was written by an older dcl that did not record its files, so --force "
                              "cannot tell them from yours; move what you keep and delete it, or choose another output folder")
    _probe_parent(final, path)
    return final


@contextmanager
def atomic_output(path: str | Path, kind: str, force: bool = False, inputs: Iterable[str | Path] = (),
                  containers: Iterable[str | Path] = (), note: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success it gets the marker (listing its files)
    and becomes `path`, replacing a previous dcl output of the same kind when `force` while keeping
    every file that output did not write (said in one line through `note`, default stderr).
    On any failure the temporary folder is removed and `path` is unchanged."""
    inputs, containers = list(inputs), list(containers)
    final = check_destination(path, kind, force, inputs, containers)
    tmp = _make_temp(final, path)
    try:
        yield tmp
        (tmp / TEMP_STAMP).unlink()
        written = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file() or p.is_symlink())
        (tmp / MARKER).write_text(json.dumps({"dcl": "output", "kind": kind, "created": _now(),
                                              "files": written}, indent=1) + "\n")
        check_destination(final, kind, force, inputs, containers)  # nothing else took the place meanwhile
        kept = _carry_foreign(final, tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace(tmp, final, kept)
    if kept:
        shown = ", ".join(kept[:5]) + (f" and {len(kept) - 5} more" if len(kept) > 5 else "")
        (note or _stderr)(f"kept in {path} what dcl did not write there: {shown}")


def written_files(folder: str | Path) -> list[str] | None:
    """The files a dcl output's marker says it wrote (None: not a dcl output, or an older one)."""
    record = _marker(Path(folder))
    files = record.get("files") if record else None
    return list(files) if isinstance(files, list) else None


def _marker(folder: Path) -> dict | None:
    try:
        record = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(record, dict) and record.get("dcl") == "output" and isinstance(record.get("kind"), str)
    return record if ok else None


def _carry_foreign(final: Path, tmp: Path, given: str | Path) -> list[str]:
    """Move what the previous output at `final` did not write into `tmp` (same relative places).
    Refuses, moving nothing, when such an entry sits where the new output wrote something."""
    if not final.is_dir():
        return []
    ours = set(written_files(final) or ()) | {MARKER}
    foreign = _foreign_entries(final, final, ours)
    for rel in foreign:
        clash = tmp / rel
        if clash.exists() or clash.is_symlink() or any((tmp / p).is_file() for p in Path(rel).parents if str(p) != "."):
            raise OutputError(f"output {given} holds your {rel} where dcl must write; move it and re-run "
                              "(nothing was changed)")
    moved: list[str] = []
    try:
        for rel in foreign:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            os.rename(final / rel, tmp / rel)
            moved.append(rel)
    except BaseException:
        _move_back(tmp, final, moved)  # all or nothing: the caller removes tmp next
        raise
    return foreign


def _move_back(src: Path, final: Path, carried: list[str]) -> None:
    for rel in carried:
        if (src / rel).exists() or (src / rel).is_symlink():
            (final / rel).parent.mkdir(parents=True, exist_ok=True)
            os.rename(src / rel, final / rel)


def _foreign_entries(root: Path, folder: Path, ours: set[str]) -> list[str]:
    """Topmost entries under `folder` holding nothing dcl wrote (a folder of them moves as one)."""
    out = []
    for entry in sorted(folder.iterdir()):
        rel = str(entry.relative_to(root))
        if entry.is_dir() and not entry.is_symlink():
            if any(o == rel or o.startswith(rel + "/") for o in ours):
                out += _foreign_entries(root, entry, ours)
            else:
                out.append(rel)
        elif rel not in ours:
            out.append(rel)
    return out


_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)(?:-.*)?")


def _remove_stale_temporaries(final: Path) -> None:
    """Temporary and old folders of this output left by a process that no longer runs (SIGKILL,
    power loss). Only folders dcl stamped are removed: a temporary one holds TEMP_STAMP, an old
    one the output marker."""
    parent = final.parent
    if not parent.is_dir():
        return
    for entry in parent.glob(f".{glob.escape(final.name)}.*-*"):
        m = _TEMP_NAME.fullmatch(entry.name)
        if not m or m["name"] != final.name or not entry.is_dir() or entry.is_symlink() or _alive(int(m["pid"])):
            continue
        if (entry / TEMP_STAMP).is_file() or _marker(entry) is not None:
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _probe_parent(final: Path, given: str | Path) -> None:
    """Creates and removes a temporary folder where the output will go: proves it is writable."""
    shutil.rmtree(_make_temp(final, given), ignore_errors=True)


def _make_temp(final: Path, given: str | Path) -> Path:
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=parent))
        (tmp / TEMP_STAMP).write_text(json.dumps({"pid": os.getpid(), "created": _now()}) + "\n")
        return tmp
    except OSError as e:
        raise OutputError(f"cannot write output {given} ({e.strerror or e}: {e.filename or parent}); "
                          "choose a writable output folder") from None


def _replace(src: Path, final: Path, carried: list[str]) -> None:
    """Move a finished folder into place, replacing an old one without a moment of neither."""
    try:
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
            try:
                src.rename(final)
            except OSError:
                old.rename(final)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            src.rename(final)
        os.chmod(final, 0o755)
    except OSError as e:
        _move_back(src, final, carried)  # the user's files go back where they were
        shutil.rmtree(src, ignore_errors=True)
        raise OutputError(f"cannot move the finished output into {final} ({e.strerror or e}); nothing was written") from None


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


__all__ = ["MARKER", "atomic_output", "check_destination", "written_files"]
