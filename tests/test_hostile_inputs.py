"""Input from someone else (a crafted bundle, a user's model module) stays in its place, and
--force replaces only what dcl wrote. Each class of the hostile-input issue has a test here; the
bundles are made by hand (a manifest and small files with their real sha256), so the checks under
test are dcl's own, not an exporter's.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, assert_one_line_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcl_core.bundle import load_manifest, sha256_file
from dcl_core.errors import BundleError, DclError, OutputError
from dcl_core.outputs import MARKER, atomic_output, written_files
from toolkit.apps import bundle_into_app

FORMATS = ("executorch", "onnx", "tflite")


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _artifact(bundle: Path, name: str, rel: str, fmt: str, files: list[str] | None = None) -> dict:
    files = files or [rel]
    entries = []
    for f in files:
        p = bundle / f
        if not os.path.lexists(p):
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(f"{name} {f}".encode())
        entries.append({"path": f, "sha256": sha256_file(p), "bytes": p.stat().st_size})
    return {"name": name, "path": rel, "format": fmt, "kind": "inference", "sha256": entries[0]["sha256"],
            "bytes": sum(e["bytes"] for e in entries), "inputs": [{"name": "x", "shape": [1, 4], "dtype": "float32"}],
            "outputs": [{"name": "logits", "shape": [1, 2], "dtype": "float32"}], "files": entries}


def make_bundle(root: Path, program: str = "net", edit=None) -> Path:
    """A small bundle of one program with an inference artifact per Android format; `edit(raw,
    bundle)` may change the manifest (and files) before it is written."""
    bundle = root / "bundle"
    bundle.mkdir(parents=True)
    arts = [_artifact(bundle, f"{program}_{f}", f"{program}_{f}.bin", f) for f in FORMATS]
    raw = {"format_version": 2, "method": "custom", "target": "host", "created": "", "tool_versions": {},
           "programs": [{"name": program, "artifacts": arts, "not_exported": [],
                         "extra": {"num_classes": 2, "input": {"range": [0.0, 1.0]}}}], "extra": {}}
    if edit:
        edit(raw, bundle)
    (bundle / "manifest.json").write_text(json.dumps(raw))
    return bundle


def android_app(root: Path) -> Path:
    app = root / "app_copy"
    (app / "app" / "src" / "main").mkdir(parents=True)
    (app / "settings.gradle.kts").write_text((ROOT / "android_demo" / "settings.gradle.kts").read_text())
    return app


def _refused(bundle: Path, app: Path, *needles: str) -> None:
    before_app = _tree(app)
    with pytest.raises(BundleError) as e:
        bundle_into_app(bundle, app)
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg
    assert _tree(app) == before_app  # nothing half-copied


def test_a_valid_hand_made_bundle_goes_into_the_app(tmp_path):
    app = android_app(tmp_path)
    s = bundle_into_app(make_bundle(tmp_path), app)
    assets = Path(s["assets"])
    assert sorted(s["artifacts"]) == sorted(f"net_{f}" for f in FORMATS)
    assert (assets / "net_onnx.bin").read_bytes() == b"net_onnx net_onnx.bin"
    # sample files are named by position: a tensor name is manifest data, never a file name
    index = json.loads((assets / "samples" / "index.json").read_text())
    assert [t["file"] for t in index["programs"]["net"]["tensors"]] == ["samples/net_0.bin"]


# -- names from a manifest never become paths -------------------------------------------------

@pytest.mark.parametrize("bad", ["../evil", "/abs", "a/b", ".hidden", "", "..", "x" * 101, "a\\b", "név"])
def test_program_and_artifact_names_must_be_single_components(tmp_path, bad):
    for where in ("program", "artifact"):
        root = tmp_path / f"{where}-{abs(hash(bad))}"

        def edit(raw, bundle, where=where):
            target = raw["programs"][0] if where == "program" else raw["programs"][0]["artifacts"][0]
            target["name"] = bad

        bundle = make_bundle(root, edit=edit)
        with pytest.raises(BundleError, match="manifest schema at programs"):
            load_manifest(bundle)
        _refused(bundle, android_app(root), "manifest schema")


@pytest.mark.parametrize("bad", ["../outside.bin", "/etc/hostname", "a/../../outside.bin", "./net.bin", "a\\..\\x"])
def test_paths_in_a_manifest_stay_inside_the_bundle(tmp_path, bad):
    (tmp_path / "outside.bin").write_bytes(b"secret")

    def edit(raw, bundle):
        art = raw["programs"][0]["artifacts"][0]
        art["path"] = bad
        art["files"][0]["path"] = bad

    bundle = make_bundle(tmp_path, edit=edit)
    app = android_app(tmp_path)
    _refused(bundle, app)
    assert not list(app.rglob("outside.bin")) and not list(app.rglob("hostname"))


def test_details_naming_a_file_outside_the_artifact_are_refused_by_the_runner(tmp_path):
    from dcl_core.bundle import Artifact
    from exporters.runner import open_inference

    (tmp_path / "model").mkdir()
    art = Artifact("m", "model", "executorch", "inference", details={"program": "../../outside.pte"})
    with pytest.raises(BundleError, match="leaves its folder"):
        open_inference("executorch", tmp_path / "model", art)


# -- links are refused, never followed ---------------------------------------------------------

def _link_first_file(kind: str):
    def edit(raw, bundle):
        art = raw["programs"][0]["artifacts"][0]
        target = bundle.parent / "outside.bin"
        target.write_bytes(b"a file outside the bundle")
        p = bundle / art["path"]
        p.unlink()
        if kind == "symlink":
            p.symlink_to(target)
        elif kind == "hardlink":
            os.link(target, p)
        else:  # a linked folder on the way
            (bundle.parent / "elsewhere").mkdir()
            os.rename(target, bundle.parent / "elsewhere" / "f.bin")
            (bundle / "d").symlink_to(bundle.parent / "elsewhere")
            art["path"] = "d/f.bin"
        art["files"][0] = {"path": art["path"], "sha256": sha256_file(bundle / art["path"]),
                           "bytes": (bundle / art["path"]).stat().st_size}
        art["sha256"] = art["files"][0]["sha256"]
    return edit


@pytest.mark.parametrize("kind,needle", [("symlink", "symbolic link"), ("hardlink", "hard link"),
                                         ("linked_folder", "symbolic link")])
def test_a_linked_artifact_is_refused(tmp_path, kind, needle):
    bundle = make_bundle(tmp_path, edit=_link_first_file(kind))
    with pytest.raises(BundleError, match=needle):
        load_manifest(bundle)
    _refused(bundle, android_app(tmp_path), needle)


def test_a_linked_samples_file_is_refused(tmp_path):
    bundle = make_bundle(tmp_path)
    outside = tmp_path / "elsewhere.npz"
    np.savez(outside, x=np.zeros((4, 4), np.float32))
    (bundle / "samples").mkdir()
    (bundle / "samples" / "net.npz").symlink_to(outside)
    _refused(bundle, android_app(tmp_path), "symbolic link")


def test_a_linked_asset_folder_in_the_app_is_refused(tmp_path):
    app = android_app(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (app / "app" / "src" / "main" / "assets").symlink_to(elsewhere)
    with pytest.raises(OutputError, match="symbolic link"):
        bundle_into_app(make_bundle(tmp_path), app)
    assert list(elsewhere.iterdir()) == []


# -- shapes and extra facts a crafted manifest may carry ---------------------------------------

@pytest.mark.parametrize("edit,needle", [
    (lambda raw, b: raw["programs"][0]["artifacts"][0]["inputs"][0].update(shape=[1 << 20, 1 << 20]), "elements"),
    (lambda raw, b: raw["programs"][0]["artifacts"][0]["inputs"][0].update(shape=[2 ** 63]), "manifest schema"),
    (lambda raw, b: raw["programs"][0]["extra"].update(input="grey images"), "manifest schema"),
    (lambda raw, b: raw["programs"][0]["extra"].update(input={"range": [1.0, 0.0]}), "lo < hi"),
    (lambda raw, b: raw["programs"][0]["extra"].update(num_classes=-3), "manifest schema"),
    (lambda raw, b: raw["programs"][0]["artifacts"].append(dict(raw["programs"][0]["artifacts"][0])), "twice"),
])
def test_crafted_shapes_and_extras_are_one_line(tmp_path, edit, needle):
    _refused(make_bundle(tmp_path, edit=edit), android_app(tmp_path), needle)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(min_size=0, max_size=12), path=st.text(min_size=0, max_size=20),
       dims=st.lists(st.integers(-2, 2 ** 64), min_size=0, max_size=4), link=st.booleans(),
       num_classes=st.one_of(st.integers(-5, 2 ** 40), st.text(max_size=3), st.none()))
def test_property_random_manifests_are_refused_in_one_line_or_stay_inside(tmp_path_factory, name, path, dims, link,
                                                                         num_classes):
    root = tmp_path_factory.mktemp("prop")
    (root / "outside.bin").write_bytes(b"outside")

    def edit(raw, bundle):
        prog = raw["programs"][0]
        prog["name"] = name
        art = prog["artifacts"][0]
        art["path"] = path
        art["files"][0]["path"] = path
        art["inputs"][0]["shape"] = dims
        if num_classes is not None:
            prog["extra"]["num_classes"] = num_classes
        if link and path and "\0" not in path:
            try:
                p = bundle / path
                p.parent.mkdir(parents=True, exist_ok=True)
                p.symlink_to(root / "outside.bin")
            except (OSError, ValueError):
                pass

    try:
        bundle = make_bundle(root, edit=edit)
    except (OSError, ValueError):
        return  # a name the file system itself refuses: nothing for dcl to read
    app = android_app(root)
    outside_before = {p for p in root.rglob("*") if not p.is_relative_to(app)}
    try:
        s = bundle_into_app(bundle, app)
    except DclError as e:
        assert "\n" not in str(e)
    else:  # accepted: every copied file is inside the app's asset folder and is a plain file
        assets = Path(s["assets"]).resolve()
        for p in assets.rglob("*"):
            assert p.resolve().is_relative_to(assets) and not p.is_symlink()
    assert {p for p in root.rglob("*") if not p.is_relative_to(app)} == outside_before
    assert (root / "outside.bin").read_bytes() == b"outside"


# -- a user's model module: found where the user pointed, and one line when it fails ------------

USER_MODEL = """
import torch
def make():
    return torch.nn.Linear(4, 2), torch.rand(1, 4)
def bad_inputs():
    return torch.nn.Linear(4, 2), 5
def empty_ids():
    return torch.nn.Embedding(10, 2), torch.zeros(0, dtype=torch.int64)
"""


def _dcl_in(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DCL_NO_PROGRESS="1")
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, "-m", "toolkit", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.fixture
def user_project(tmp_path):
    d = tmp_path / "proj"
    d.mkdir()
    (d / "mymodel.py").write_text(USER_MODEL)
    # files named like dependencies: importing any of them is code running where it must not
    for dep in ("numpy", "torch", "click", "onnx"):
        (d / f"{dep}.py").write_text(f"open({str(d / ('PWNED_' + dep))!r}, 'w').write('ran')\n")
    return d


def test_a_file_named_like_a_dependency_never_shadows_it(user_project):
    proc = _dcl_in(user_project, "export", "--model", "mymodel:make", "--target", "host", "--formats", "onnx",
                   "--out", "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not list(user_project.glob("PWNED_*"))
    assert load_manifest(user_project / "out").programs[0].name == "make"


def test_a_module_by_file_path_and_a_name_taken_by_an_installed_module(user_project):
    (user_project / "json.py").write_text(USER_MODEL)  # "json" is the standard library's
    proc = _dcl_in(user_project, "export", "--model", "json:make", "--target", "host", "--formats", "onnx",
                   "--out", "out")
    assert_one_line_error(proc, "installed module", "json.py:make")
    proc = _dcl_in(user_project, "export", "--model", "json.py:make", "--target", "host", "--formats", "onnx",
                   "--out", "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not list(user_project.glob("PWNED_*"))


@pytest.mark.parametrize("source,ref,needle", [
    ("def make(:\n", "broken:make", "syntax error at"),
    ("import no_such_dependency_xyz\n", "broken:make", "no_such_dependency_xyz"),
    ("raise RuntimeError('boom at import')\n", "broken:make", "RuntimeError: boom at import"),
    ("import sys\nsys.exit(3)\n", "broken:make", "SystemExit"),
    (USER_MODEL, "broken:bad_inputs", "example inputs of type int"),
    (USER_MODEL, "broken:empty_ids", "has no elements"),
    (USER_MODEL, "broken:no_such", "no function 'no_such'"),
    (USER_MODEL, "broken", "give --model as"),
    (USER_MODEL, "nothere/broken.py:make", "is not a file"),
])
def test_a_failing_user_module_is_one_line(tmp_path, source, ref, needle):
    (tmp_path / "broken.py").write_text(source)
    out = tmp_path / "out"
    proc = _dcl_in(tmp_path, "export", "--model", ref, "--target", "host", "--formats", "onnx", "--out", str(out))
    assert_one_line_error(proc, needle)
    assert not out.exists()


def test_a_program_name_that_is_a_path_is_refused_before_writing(tmp_path):
    import torch

    from dcl_core.errors import ExportError
    from exporters.api import ProgramSpec, export

    for bad in ("../evil", "a/b", ".x", ""):
        with pytest.raises(ExportError, match="is not a valid name"):
            export([ProgramSpec(bad, torch.nn.Linear(4, 2), (torch.rand(1, 4),))], ["onnx"], tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


# -- --force replaces exactly what dcl wrote ---------------------------------------------------

def _write(out: Path, files: dict[str, str], force: bool = False, note=None, **kw) -> None:
    with atomic_output(out, "bundle", force, note=note, **kw) as tmp:
        for rel, text in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text)


def test_force_keeps_every_file_dcl_did_not_write_and_says_so(tmp_path):
    out = tmp_path / "out"
    _write(out, {"manifest.json": "v1", "net.onnx": "v1", "old_only.bin": "v1"})
    assert written_files(out) == ["manifest.json", "net.onnx", "old_only.bin"]
    (out / "my notes.txt").write_text("mine")
    _write(out / "profile-host", {"results.json": "profile"})  # another dcl output inside it
    (out / "sub").mkdir()
    (out / "sub" / "keep.txt").write_text("mine too")
    said: list[str] = []
    _write(out, {"manifest.json": "v2", "net.onnx": "v2"}, force=True, note=said.append)
    assert (out / "manifest.json").read_text() == "v2" and not (out / "old_only.bin").exists()
    assert (out / "my notes.txt").read_text() == "mine" and (out / "sub" / "keep.txt").read_text() == "mine too"
    assert (out / "profile-host" / "results.json").read_text() == "profile"
    assert len(said) == 1 and "my notes.txt" in said[0] and "profile-host" in said[0]
    assert written_files(out) == ["manifest.json", "net.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or old folder


def test_force_refuses_when_a_users_file_sits_where_dcl_must_write(tmp_path):
    out = tmp_path / "out"
    _write(out, {"manifest.json": "v1"})
    (out / "report.html").write_text("my report")
    before = _tree(out)
    with pytest.raises(OutputError, match="report.html where dcl must write"):
        _write(out, {"manifest.json": "v2", "report.html": "dcl's"}, force=True)
    assert _tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_force_refuses_an_output_of_an_older_dcl_that_lists_no_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.bin").write_text("?")
    (out / MARKER).write_text(json.dumps({"dcl": "output", "kind": "bundle", "created": ""}))
    with pytest.raises(OutputError, match="did not record its files"):
        _write(out, {"a.bin": "new"}, force=True)
    assert (out / "a.bin").read_text() == "?"


def test_bundle_into_app_force_keeps_the_users_files_in_the_assets(tmp_path, capsys):
    app = android_app(tmp_path)
    bundle = make_bundle(tmp_path)
    assets = Path(bundle_into_app(bundle, app)["assets"])
    (assets / "README.txt").write_text("my own asset notes")
    bundle_into_app(bundle, app, force=True)
    assert (assets / "README.txt").read_text() == "my own asset notes"
    assert "README.txt" in capsys.readouterr().err


def test_an_output_inside_an_input_is_refused(tmp_path):
    from dcl_core.outputs import check_destination

    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(OutputError, match="inside the input"):
        check_destination(run / "bundle", "bundle", False, [run])
    # a container input (dcl profile writes into its bundle) may hold the output, never be it
    assert check_destination(run / "profile", "profile", False, containers=[run]) == (run / "profile").resolve()
    with pytest.raises(OutputError, match="would replace the input"):
        check_destination(run, "profile", True, containers=[run])


def test_export_into_its_own_run_is_refused_on_the_command_line(tiny_run):
    from conftest import run_dcl

    run = tiny_run[0]
    before = _tree(run)
    assert_one_line_error(run_dcl("export", str(run), "--target", "host", "--out", str(run / "bundle")),
                          "inside the input")
    assert _tree(run) == before


KILLED_WRITER = """
import os, signal, sys
from dcl_core.outputs import atomic_output
with atomic_output(sys.argv[1], "bundle") as tmp:
    (tmp / "half.bin").write_text("half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_sigkilled_writer_leaves_a_temporary_folder_the_next_run_removes(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out)], capture_output=True, cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".out.tmp-") and not out.exists()
    # a folder of the user's that merely looks like one (same dead process id) is never touched
    mine = tmp_path / f".out.tmp-{left[0].split('-')[1]}-mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    _write(out, {"manifest.json": "v1"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [mine.name, "out"]
    assert (out / "manifest.json").read_text() == "v1"
