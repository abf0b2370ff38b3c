"""Bundles with several named programs (manifest format_version 2), and older bundles refused."""
from __future__ import annotations

import json

import pytest

from dcl_core.bundle import FORMAT_VERSION, load_manifest
from dcl_core.errors import BundleError, ExportError
from exporters.api import ProgramSpec, export
from exporters.runner import open_inference, open_training
from toolkit.models.examples import embedding_mlp, fused_cnn


def _program(name, ex, training=True):
    return ProgramSpec(name, ex.model, ex.inputs, ex.input_names, ex.output_names,
                       training=ex.spec if training else None, train_batches=ex.batches if training else ())


@pytest.fixture(scope="module")
def two_programs(tmp_path_factory):
    out = tmp_path_factory.mktemp("multi") / "bundle"
    manifest = export([_program("classifier", fused_cnn()), _program("recommender", embedding_mlp())],
                      ["onnx"], out, method="custom", log=lambda *a: None)
    return out, manifest


def test_one_bundle_holds_named_programs_each_verified(two_programs):
    out, manifest = two_programs
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["format_version"] == FORMAT_VERSION == 2
    assert [p["name"] for p in raw["programs"]] == ["classifier", "recommender"]
    for p in raw["programs"]:
        assert [(a["format"], a["kind"]) for a in p["artifacts"]] == [("onnx", "inference"), ("onnx", "training")]
        assert all(a["name"].startswith(p["name"] + "_") for a in p["artifacts"])
        assert all(a["validation"]["checked"] and a["validation"]["passed"] for a in p["artifacts"])
    back = load_manifest(out)
    assert back == manifest and back.program("recommender").artifacts[0].inputs[0].name == "user"


def test_each_program_runs_from_the_bundle(two_programs):
    out, manifest = two_programs
    rec = manifest.program("recommender")
    inf, tr = rec.artifacts
    ex = embedding_mlp()
    got = open_inference("onnx", out / inf.path, inf).infer({"user": ex.inputs[0].numpy(), "item": ex.inputs[1].numpy()})
    assert got[0].shape == (1,)
    loss = open_training("onnx", out / tr.path, tr).train_step({k: v.numpy() for k, v in ex.batches[0].items()})
    assert loss > 0


def test_unknown_program_is_one_clear_line(two_programs):
    _, manifest = two_programs
    with pytest.raises(BundleError, match="no program named 'nope'.*classifier, recommender"):
        manifest.program("nope")


def test_duplicate_or_no_program_names_are_refused(tmp_path):
    ex = fused_cnn()
    with pytest.raises(ExportError, match="distinct names"):
        export([_program("a", ex, False), _program("a", ex, False)], ["onnx"], tmp_path / "b", log=lambda *a: None)
    with pytest.raises(ExportError, match="distinct names"):
        export([], ["onnx"], tmp_path / "b", log=lambda *a: None)
    assert not (tmp_path / "b").exists()


def test_version_1_bundle_is_refused_with_what_to_do(two_programs, tmp_path):
    out, _ = two_programs
    raw = json.loads((out / "manifest.json").read_text())
    old = {"format_version": 1, "method": raw["method"], "target": raw["target"], "created": raw["created"],
           "tool_versions": raw["tool_versions"], "artifacts": raw["programs"][0]["artifacts"]}
    (tmp_path / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(BundleError, match=r"format_version 1.*re-run `dcl export`"):
        load_manifest(tmp_path, verify=False)
    (tmp_path / "manifest.json").write_text("[]")
    with pytest.raises(BundleError, match="format_version None"):
        load_manifest(tmp_path, verify=False)
