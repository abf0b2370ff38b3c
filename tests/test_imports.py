"""dcl_core.imports.without: a library imported without a heavy dependency, leaving no trace."""
from __future__ import annotations

import importlib
import sys

import pytest

from dcl_core.imports import without


@pytest.fixture
def packages(tmp_path, monkeypatch):
    """`heavy` (a package whose body records that it ran, with a small submodule `light`) and
    `lib` (imports `heavy.light` and tolerates a missing `optional_dep`)."""
    (tmp_path / "heavy").mkdir()
    (tmp_path / "heavy" / "__init__.py").write_text("import builtins\nbuiltins.HEAVY_RAN = True\nBODY = 'ran'\n")
    (tmp_path / "heavy" / "light.py").write_text("VALUE = 42\n")
    (tmp_path / "optional_dep.py").write_text("PRESENT = True\n")
    (tmp_path / "lib.py").write_text(
        "from heavy.light import VALUE\ntry:\n    import optional_dep\nexcept ModuleNotFoundError:\n    optional_dep = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import builtins
    monkeypatch.delattr(builtins, "HEAVY_RAN", raising=False)
    yield builtins
    for name in ("heavy", "heavy.light", "optional_dep", "lib"):
        sys.modules.pop(name, None)


def test_an_optional_dependency_is_skipped_then_importable(packages):
    with without("optional_dep"), without("heavy", keep_submodules=True):
        lib = importlib.import_module("lib")
    assert lib.optional_dep is None and lib.VALUE == 42
    assert not hasattr(packages, "HEAVY_RAN")  # heavy's body never ran, its submodule did
    assert "optional_dep" not in sys.modules and "heavy" not in sys.modules and "heavy.light" not in sys.modules
    assert importlib.import_module("optional_dep").PRESENT is True
    heavy = importlib.import_module("heavy")  # in full, afterwards
    assert heavy.BODY == "ran" and packages.HEAVY_RAN is True
    assert importlib.import_module("heavy.light").VALUE == 42


def test_an_already_imported_module_is_left_alone(packages):
    heavy = importlib.import_module("heavy")
    with without("heavy", keep_submodules=True):
        assert sys.modules["heavy"] is heavy
    assert sys.modules["heavy"] is heavy


def test_a_module_that_is_not_a_package_cannot_keep_submodules(packages):
    with pytest.raises(ModuleNotFoundError, match="not an installed package"):
        with without("optional_dep", keep_submodules=True):
            pass
    assert "optional_dep" not in sys.modules
