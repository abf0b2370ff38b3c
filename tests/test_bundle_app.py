"""`dcl bundle BUNDLE --app APP` (toolkit/apps.py) and the manifest's JSON Schema (dcl_core/schema.py):
a verified bundle goes into a demo app's assets with only its platform's artifacts, a manifest and
samples; a corrupt file, a missing platform format, an unknown app or an occupied folder is one line
and leaves nothing half-copied; --force replaces only a previous `dcl bundle`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dcl_core.bundle import load_manifest, sha256_file
from dcl_core.errors import BundleError
from dcl_core.outputs import MARKER
from dcl_core.schema import validate_manifest_schema
from tests.conftest import ROOT

ANDROID_FORMATS = {"executorch", "onnx", "tflite"}


def _android(tmp: Path) -> Path:
    app = tmp / "android_app"
    (app / "app" / "src" / "main").mkdir(parents=True)
    shutil.copy(ROOT / "android_demo" / "settings.gradle.kts", app)
    return app


def _ios(tmp: Path) -> Path:
    app = tmp / "ios_app"
    (app / "Sources" / "DclDemo").mkdir(parents=True)
    shutil.copy(ROOT / "ios_demo" / "Package.swift", app)
    return app


def dcl(*args: str, capsys) -> tuple[int, str, str]:
    """The real CLI in-process, with `bundle` registered as toolkit/cli.py will register it."""
    from toolkit.apps import bundle_command
    from toolkit.cli import cli, main

    if "bundle" not in cli.commands:
        cli.add_command(bundle_command)
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(err: str, *needles: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _copy(bundle: Path, tmp: Path) -> Path:
    dest = tmp / "bundle_copy"
    shutil.copytree(bundle, dest)
    return dest


def test_android_app_gets_its_formats_a_valid_manifest_and_samples(bundle, tmp_path, capsys):
    app = _android(tmp_path)
    rc, out, err = dcl("bundle", str(bundle[0]), "--app", str(app), "--json", capsys=capsys)
    assert rc == 0, err
    s = json.loads(out)
    assets = app / "app" / "src" / "main" / "assets" / "bundle"
    assert s["platform"] == "android" and Path(s["assets"]) == assets
    m = load_manifest(assets, verify=True)  # every copied file passes its sha256
    validate_manifest_schema(json.loads((assets / "manifest.json").read_text()))
    assert {a.format for a in m.artifacts} == ANDROID_FORMATS and len(m.artifacts) == 6
    assert not any(p.name.endswith(".mlpackage") for p in assets.iterdir())  # Core ML stays out
    assert m.extra["app_bundle"]["source_manifest_sha256"] == sha256_file(bundle[0] / "manifest.json")
    index = json.loads((assets / "samples" / "index.json").read_text())
    tensors = {t["name"]: t for t in index["programs"]["device_step"]["tensors"]}
    assert "synthesized" in index["source"] and set(tensors) == {"x", "y"}
    x = np.frombuffer((assets / tensors["x"]["file"]).read_bytes(), "<f4").reshape(tensors["x"]["shape"])
    y = np.frombuffer((assets / tensors["y"]["file"]).read_bytes(), "<i8")
    assert x.shape[1:] == (1, 28, 28) and x.shape[0] >= 32 and 0 <= x.min() and x.max() <= 1
    assert y.min() >= 0 and y.max() < 20 and len(y) == x.shape[0]
    assert (assets / MARKER).is_file() and not [p for p in assets.parent.iterdir() if p.name.startswith(".bundle")]
    # again: refused without --force, replaced with it
    rc, _, err = dcl("bundle", str(bundle[0]), "--app", str(app), capsys=capsys)
    assert rc != 0
    one_line(err, "--force")
    rc, out, err = dcl("bundle", str(bundle[0]), "--app", str(app), "--force", capsys=capsys)
    assert rc == 0 and "6 artifacts" in out, err


def test_ios_app_gets_the_core_ml_artifacts(bundle, tmp_path, capsys):
    app = _ios(tmp_path)
    rc, out, err = dcl("bundle", str(bundle[0]), "--app", str(app), "--json", capsys=capsys)
    assert rc == 0, err
    assets = app / "Sources" / "DclDemo" / "Resources" / "bundle"
    m = load_manifest(assets, verify=True)
    assert {a.format for a in m.artifacts} == {"coreml"}
    # DC-CCL's Core ML training is not expressible: the reason travels with the program
    assert any(n["format"] == "coreml" and n["kind"] == "training" for p in m.programs for n in p.not_exported)


def test_bundle_samples_folder_is_used_when_present(bundle, tmp_path, capsys):
    src = _copy(bundle[0], tmp_path)
    (src / "samples").mkdir()
    rng = np.random.default_rng(1)
    x = rng.random((40, 1, 28, 28), dtype=np.float32)
    y = np.arange(40, dtype=np.int64) % 20
    np.savez(src / "samples" / "device_step.npz", x=x, y=y)
    app = _android(tmp_path)
    rc, out, err = dcl("bundle", str(src), "--app", str(app), "--json", capsys=capsys)
    assert rc == 0, err
    assets = Path(json.loads(out)["assets"])
    index = json.loads((assets / "samples" / "index.json").read_text())
    assert index["source"] == "bundle samples/" and index["programs"]["device_step"]["count"] == 40
    got = np.frombuffer((assets / "samples" / "device_step_0.bin").read_bytes(), "<f4").reshape(x.shape)
    assert np.array_equal(got, x)
    # a samples file without the target is one line
    np.savez(src / "samples" / "device_step.npz", x=x)
    rc, _, err = dcl("bundle", str(src), "--app", str(app), "--force", capsys=capsys)
    assert rc == 2
    one_line(err, "device_step.npz", "'y'")


def test_corrupt_bundle_file_is_one_line_and_nothing_is_copied(bundle, tmp_path, capsys):
    src = _copy(bundle[0], tmp_path)
    f = src / "device_step_onnx_train" / "checkpoint"
    f.write_bytes(f.read_bytes()[:-1] + bytes([f.read_bytes()[-1] ^ 1]))
    app = _android(tmp_path)
    rc, _, err = dcl("bundle", str(src), "--app", str(app), capsys=capsys)
    assert rc != 0
    one_line(err, "checkpoint", "sha256")
    assert not (app / "app" / "src" / "main" / "assets").exists() or not any((app / "app" / "src" / "main" / "assets").iterdir())


def test_missing_platform_format_is_one_line(bundle, tmp_path, capsys):
    src = _copy(bundle[0], tmp_path)
    raw = json.loads((src / "manifest.json").read_text())
    for p in raw["programs"]:
        p["artifacts"] = [a for a in p["artifacts"] if a["format"] != "tflite"]
    (src / "manifest.json").write_text(json.dumps(raw))
    app = _android(tmp_path)
    rc, _, err = dcl("bundle", str(src), "--app", str(app), capsys=capsys)
    assert rc != 0
    one_line(err, "no tflite artifact", "--formats")
    assert not (app / "app" / "src" / "main" / "assets" / "bundle").exists()


def test_a_folder_dcl_did_not_make_is_never_replaced(bundle, tmp_path, capsys):
    app = _android(tmp_path)
    mine = app / "app" / "src" / "main" / "assets" / "bundle"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    rc, _, err = dcl("bundle", str(bundle[0]), "--app", str(app), "--force", capsys=capsys)
    assert rc != 0
    one_line(err, "did not create")
    assert (mine / "notes.txt").read_text() == "mine" and len(list(mine.iterdir())) == 1


def test_not_an_app_and_not_a_bundle_are_one_line(bundle, tmp_path, capsys):
    rc, _, err = dcl("bundle", str(bundle[0]), "--app", str(tmp_path), capsys=capsys)
    assert rc == 2
    one_line(err, "not a dcl demo app")
    rc, _, err = dcl("bundle", str(tmp_path), "--app", str(_android(tmp_path)), capsys=capsys)
    assert rc == 2
    one_line(err, "manifest.json", "missing")


def test_schema_accepts_real_manifests_and_names_the_first_problem(bundle):
    raw = json.loads((bundle[0] / "manifest.json").read_text())
    validate_manifest_schema(raw)
    cases = [
        (lambda m: m.update(format_version=1), "format_version"),
        (lambda m: m["programs"][0]["artifacts"][0].update(sha256="nothex"), "programs[0].artifacts[0].sha256"),
        (lambda m: m["programs"][0]["artifacts"][0].update(kind="both"), "programs[0].artifacts[0].kind"),
        (lambda m: m["programs"][0]["artifacts"][0].update(path="../x.pte"), "programs[0].artifacts[0].path"),
        (lambda m: m["programs"][0]["artifacts"][0].pop("files"), "files"),
        (lambda m: m.update(surprise=1), "surprise"),
    ]
    for edit, needle in cases:
        m = json.loads(json.dumps(raw))
        edit(m)
        with pytest.raises(BundleError) as e:
            validate_manifest_schema(m)
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_schema_is_draft_2020_12_and_matches_the_dataclasses():
    import dataclasses

    from dcl_core.bundle import Artifact, FileEntry, Manifest, Program, TensorSpec, Validation
    from dcl_core.schema import manifest_schema

    s = manifest_schema()
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    d = s["$defs"]
    for cls, props in ((Manifest, s["properties"]), (Program, d["program"]["properties"]),
                       (Artifact, d["artifact"]["properties"]), (TensorSpec, d["tensor"]["properties"]),
                       (FileEntry, d["file"]["properties"]), (Validation, d["validation"]["properties"])):
        assert {f.name for f in dataclasses.fields(cls)} == set(props), cls.__name__
