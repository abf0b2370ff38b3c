"""The architecture's rules, checked: one-way layers, methods and formats as registry entries."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from dcl_core.errors import ConfigError, DclError
from exporters.formats import FORMATS, get_format
from toolkit.plugin import Method
from toolkit.registry import METHODS, get_method, method_of_run

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dcl_core", "exporters", "runtime_harness", "toolkit")


def test_import_contracts_hold():
    """import-linter's contracts in pyproject.toml: no lower layer imports a higher one."""
    proc = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_lint_imports_catches_a_back_edge(tmp_path):
    """The contracts really bite: a copy of the tree with exporters importing toolkit fails."""
    import shutil

    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    gate = tmp_path / "exporters" / "gate.py"
    gate.write_text(gate.read_text() + "\nimport toolkit.cli  # a back-edge\n")
    proc = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode != 0 and "BROKEN" in proc.stdout.upper(), proc.stdout[-2000:]


def test_the_method_contract_covers_every_shared_toolkit_module():
    """A new shared module of toolkit/ must join the contract that keeps methods behind the registry."""
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    sources = next(c["source_modules"] for c in contracts if c["type"] == "forbidden"
                   and c["forbidden_modules"] == ["toolkit.methods"])
    shared = {f"toolkit.{p.stem}" for p in (ROOT / "toolkit").iterdir()
              if (p.suffix == ".py" and p.stem not in ("__init__", "__main__"))
              or (p.is_dir() and (p / "__init__.py").is_file() and p.name != "methods")}
    assert shared == set(sources)


def test_every_method_folder_has_the_plugin_skeleton():
    """The same role has the same file name in every method: a new method copies this skeleton."""
    skeleton = {"__init__.py", "config.py", "model.py", "pipeline.py", "export.py", "simulate.py", "report.py",
                "plugin.py"}
    for name in METHODS:
        files = {p.name for p in (ROOT / "toolkit" / "methods" / name).glob("*.py")}
        assert skeleton <= files, f"toolkit/methods/{name} lacks {sorted(skeleton - files)}"
        assert METHODS[name] == f"toolkit.methods.{name}.plugin:{METHODS[name].rsplit(':', 1)[1]}"


def test_methods_are_named_only_in_their_folder_and_the_registry():
    registry = ROOT / "toolkit" / "registry.py"
    for name in METHODS:
        word = re.compile(rf"\b{name}\b")
        offenders = [str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
                     if p != registry and name not in p.relative_to(ROOT).parts and word.search(p.read_text())]
        assert not offenders, f"{name!r} named outside toolkit/methods/{name}/ and the registry: {offenders}"


@pytest.mark.parametrize("name", list(METHODS))
def test_registered_methods_implement_the_protocol(name):
    m = get_method(name)
    assert isinstance(m, Method) and m.name == name and m.title


def test_unknown_method_and_run_without_method_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="known methods"):
        get_method("nope")
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(DclError, match="names no method"):
        method_of_run(tmp_path)
    with pytest.raises(DclError, match="does not exist"):
        method_of_run(tmp_path / "missing")


def test_format_descriptors_resolve_aliases_and_load_their_packages():
    seen: set[str] = set()
    for f in FORMATS.values():
        names = {f.name, *f.aliases}
        assert not names & seen, f"alias clash: {names & seen}"
        seen |= names
        for n in names:
            assert get_format(n.upper()) is f
        assert f.load_exporter().format == f.name
        runner = f.load_runner()
        assert callable(runner.open_inference) and callable(runner.open_training)
    with pytest.raises(DclError, match="unknown format"):
        get_format("tensorrt")


def test_core_ml_runs_here_only_on_macos():
    ok, why = get_format("coreml").runs_here()
    assert ok == (sys.platform == "darwin")
    if not ok:
        assert "macOS" in why
