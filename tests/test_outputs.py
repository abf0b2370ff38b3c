"""dcl_core.outputs: what an output may replace, and atomic writes that leave nothing on failure."""
from __future__ import annotations

import errno
import json

import pytest

from dcl_core.errors import OutputError
from dcl_core.outputs import MARKER, atomic_output, check_destination


def _user_folder(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("my notes")
    return d


def test_new_and_empty_destinations_are_fine(tmp_path):
    assert check_destination(tmp_path / "new" / "out", "run") == (tmp_path / "new" / "out").resolve()
    (tmp_path / "empty").mkdir()
    with atomic_output(tmp_path / "empty", "run") as tmp:
        (tmp / "a").write_text("1")
    assert (tmp_path / "empty" / "a").read_text() == "1"
    assert json.loads((tmp_path / "empty" / MARKER).read_text())["kind"] == "run"


def test_a_users_folder_or_file_is_never_replaced(tmp_path):
    mine = _user_folder(tmp_path)
    for force in (False, True):
        with pytest.raises(OutputError, match="did not create"):
            check_destination(mine, "run", force)
    f = tmp_path / "file.txt"
    f.write_text("keep")
    with pytest.raises(OutputError, match="existing file"):
        check_destination(f, "bundle", True)
    assert (mine / "notes.txt").read_text() == "my notes" and f.read_text() == "keep"


def test_a_dcl_output_is_replaced_only_with_force_and_same_kind(tmp_path):
    out = tmp_path / "out"
    with atomic_output(out, "bundle") as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(OutputError, match="pass --force"):
        check_destination(out, "bundle")
    with pytest.raises(OutputError, match="holds a dcl bundle, not a run"):
        check_destination(out, "run", True)
    with atomic_output(out, "bundle", force=True) as tmp:
        (tmp / "v").write_text("2")
    assert (out / "v").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or old folder left


def test_an_output_never_equals_or_contains_an_input(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(OutputError, match="would replace the input"):
        check_destination(run, "bundle", True, [run])
    with pytest.raises(OutputError, match="would replace the input"):
        check_destination(tmp_path, "bundle", True, [run])


@pytest.mark.parametrize("where", ["/proc/dcl-out", "FILE/out"])
def test_unwritable_places_fail_before_any_work(tmp_path, where):
    (tmp_path / "FILE").write_text("x")
    path = where if where.startswith("/") else tmp_path / where
    with pytest.raises(OutputError, match="cannot write output"):
        check_destination(path, "run")


def test_failure_midway_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(OSError):
        with atomic_output(out, "run") as tmp:
            (tmp / "half").write_text("x")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "half"))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(out, "run"):
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
