"""Names and paths that come from a file someone else made (a bundle's manifest, a user's program
spec, a device's weights) and become places dcl reads or writes.

Three rules, each in one place:
- A name (program, artifact, checkpoint) matches NAME: letters, digits, `_`, `.`, `-`, starting
  with a letter or digit, at most 100 characters. So it is one path component, never `..`, never
  absolute, never hidden. The pattern lives in the manifest's JSON Schema (`$defs.name`), so the
  schema, the apps and every writer here check the same thing.
- A relative path from such a file resolves inside its root (`inside`): no absolute path, no `..`,
  and no symbolic link on the way, so the resolved path is the one written down.
- A file read from a bundle is a plain file with one name (`plain_file`): not a symbolic link,
  not a device or fifo, not a hard link (whose other name may be anywhere on the disk).
"""
from __future__ import annotations

import os
import re
import stat
from functools import lru_cache
from pathlib import Path, PurePosixPath

from dcl_core.errors import DclError
from dcl_core.schema import manifest_schema


@lru_cache(maxsize=1)
def name_pattern() -> re.Pattern[str]:
    return re.compile(manifest_schema()["$defs"]["name"]["pattern"])


NAME_RULE = "letters, digits, '_', '.' or '-', starting with a letter or digit, at most 100 characters"


def check_name(name: object, what: str, error: type[DclError] = DclError) -> str:
    """`name` if it is a safe single path component (NAME), else `error` naming `what`."""
    if not isinstance(name, str) or not name_pattern().fullmatch(name):
        shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."
        raise error(f"{what} {shown} is not a valid name ({NAME_RULE})")
    return name


def inside(root: str | Path, rel: object, what: str, error: type[DclError] = DclError) -> Path:
    """`root / rel`, refused (`error`, one line) unless it stays inside `root` with no link on the way."""
    if not isinstance(rel, str) or not rel or "\0" in rel:
        raise error(f"{what} {rel!r} is not a relative path")
    parts = PurePosixPath(rel).parts
    if PurePosixPath(rel).is_absolute() or "\\" in rel or any(p in ("..", ".") for p in parts):
        raise error(f"{what} {rel!r} leaves its folder (absolute or with '..'); it must be a path inside it")
    base = Path(root).resolve()
    path = base.joinpath(*parts)
    if path.resolve() != path:  # a symbolic link somewhere on the way (it may point anywhere)
        raise error(f"{what} {rel!r} goes through a symbolic link; dcl follows no links from files it did not write")
    return path


def plain_file(path: Path, what: str, error: type[DclError] = DclError) -> Path:
    """`path` if it is a regular file with a single name; else `error` (one line)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise error(f"{what} {path} is missing") from None
    except OSError as e:
        raise error(f"{what} {path} cannot be read ({e.strerror})") from None
    if stat.S_ISLNK(st.st_mode):
        raise error(f"{what} {path} is a symbolic link; dcl follows no links from files it did not write")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {path} is not a regular file")
    if st.st_nlink > 1:
        raise error(f"{what} {path} is a hard link ({st.st_nlink} names); copy the file itself into the folder")
    return path


__all__ = ["NAME_RULE", "check_name", "inside", "name_pattern", "plain_file"]
