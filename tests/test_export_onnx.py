"""ONNX / ONNX Runtime export: inference model and ORT training artifacts, verified by the gate.

Each reference model is exported once per module (the export runs the gate itself); the other
tests reuse those bundles through the runner, as an app or `dcl` would.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnxruntime.training.api import CheckpointState
from torch import nn

import exporters
from dcl_core.bundle import Manifest
from dcl_core.errors import BundleError, ExportError
from exporters.onnx.exporter import export_inference_from_checkpoint
from exporters.reference import set_train_modes
from exporters.runner import open_training
from exporters.spec import loss_fn
from toolkit.models.examples import Example, embedding_mlp, fused_cnn

EXAMPLES = {"cnn": fused_cnn, "emb": embedding_mlp}


def _export(example: Example, out: Path, **spec_changes) -> Manifest:
    spec = dataclasses.replace(example.spec, **spec_changes)
    return exporters.export_model(example.model, example.inputs, formats=["onnx"], out_dir=out, training=spec,
                            input_names=example.input_names, output_names=example.output_names,
                            train_batches=example.batches, log=lambda *a: None)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, tuple[Example, Path, Manifest]]:
    out = {}
    for key, make in EXAMPLES.items():
        example = make()
        path = tmp_path_factory.mktemp(key) / "bundle"
        out[key] = (example, path, _export(example, path))
    return out


def _training(bundle: tuple[Example, Path, Manifest]):
    example, path, manifest = bundle
    art = next(a for a in manifest.artifacts if a.kind == "training")
    return example, path, art


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in batch.items()}


def _with_weights(model: nn.Module, weights: dict[str, np.ndarray]) -> nn.Module:
    model = copy.deepcopy(model).eval()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(torch.from_numpy(value))
    return model


def _run_onnx(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


@pytest.mark.parametrize("key", EXAMPLES)
def test_gate_passes_inference_and_training(bundles, key):
    _, _, manifest = bundles[key]
    inference, training = manifest.artifacts
    assert (inference.kind, training.kind) == ("inference", "training")
    assert inference.validation.checked and inference.validation.passed
    assert inference.validation.max_abs_diff <= 1e-4
    # both parts of the bound, as the format's descriptor states them, are in the manifest
    from exporters.formats import get_format

    fmt = get_format("onnx")
    assert (inference.validation.tolerance, inference.validation.rtol) == (fmt.inference_tolerance, fmt.inference_rtol)
    v = training.validation
    assert v.checked and v.passed and v.steps >= 10
    assert v.max_rel_loss_diff <= 1e-4 and v.max_rel_weight_diff <= 1e-4
    assert len(v.loss_runtime) == v.steps and np.all(np.isfinite(v.loss_runtime))
    # momentum needs the runner's own SGD step; plain SGD runs ORT's optimizer model
    assert training.details["optimizer"]["step"] == ("host" if training.optimizer["momentum"] else "ort")


@pytest.mark.parametrize("key", EXAMPLES)
def test_every_model_file_is_ir10_opset18(bundles, key):
    _, path, manifest = bundles[key]
    models = sorted(path.rglob("*.onnx"))
    assert {p.name for p in models} >= {"model_onnx.onnx", "training_model.onnx", "eval_model.onnx",
                                        "optimizer_model.onnx"}
    for p in models:
        m = onnx.load(p)
        assert m.ir_version == 10, p.name
        assert {o.version for o in m.opset_import if o.domain in ("", "ai.onnx")} == {18}, p.name
    training = manifest.artifacts[1]
    assert (path / training.path).is_dir() and {f.path for f in training.files} >= \
        {f"{training.path}/{n}" for n in training.details["files"].values()}


def test_only_trainable_parameters_are_in_the_checkpoint(bundles):
    example, path, art = _training(bundles["cnn"])
    state = CheckpointState.load_checkpoint(path / art.path / "checkpoint")
    names = {n for n, _ in state.parameters}
    assert names == set(example.spec.trainable_names(example.model)) == set(art.trainable)
    assert all(n.startswith("trainable.") for n in names)  # the mimic "frozen." is baked in as constants


@pytest.mark.parametrize("key", EXAMPLES)
def test_set_get_weights_round_trip(bundles, key):
    example, path, art = _training(bundles[key])
    # a runner opened from the manifest JSON (what an app or `dcl` reads) works the same
    record = next(a for a in json.loads((path / "manifest.json").read_text())["programs"][0]["artifacts"]
                  if a["kind"] == "training")
    runner = open_training("onnx", path / art.path, record)
    start = runner.get_weights()
    params = dict(example.model.named_parameters())
    assert set(start) == set(art.trainable)
    for name, w in start.items():
        np.testing.assert_array_equal(w, params[name].detach().numpy())
    changed = {n: (w + 0.25).astype(np.float32) for n, w in start.items()}
    runner.set_weights(changed)
    for name, w in runner.get_weights().items():
        np.testing.assert_array_equal(w, changed[name])
    with pytest.raises(BundleError, match="shape"):
        runner.set_weights({next(iter(start)): np.zeros((1, 2, 3), np.float32)})
    with pytest.raises(BundleError, match="not trainable"):
        runner.set_weights({"nope.weight": np.zeros(1, np.float32)})


@pytest.mark.parametrize("key", EXAMPLES)
def test_gradients_match_pytorch(bundles, key):
    example, path, art = _training(bundles[key])
    runner = open_training("onnx", path / art.path, art)
    assert runner.gradients() is None
    batch = example.batches[0]
    runner.train_step(_inputs(batch))
    model = copy.deepcopy(example.model)
    set_train_modes(model, example.spec, art.trainable)
    inputs = [v for k, v in batch.items() if k != "y"]
    loss_fn(example.spec.loss)(model(*inputs), batch["y"]).backward()
    params = dict(model.named_parameters())
    for name, g in runner.gradients().items():
        ref = params[name].grad.numpy()
        assert np.max(np.abs(g - ref)) <= 1e-4 * max(np.max(np.abs(ref)), 1e-3), name


@pytest.mark.parametrize("key", EXAMPLES)
def test_inference_model_reexported_after_training_matches_pytorch(bundles, key, tmp_path):
    example, path, art = _training(bundles[key])
    runner = open_training("onnx", path / art.path, art)
    for batch in example.batches:
        runner.train_step(_inputs(batch))
    out = runner.export_inference(tmp_path / "trained.onnx")
    assert onnx.load(out).ir_version == 10
    trained = _with_weights(example.model, runner.get_weights())
    gen = torch.Generator().manual_seed(7)
    feeds = {n: (torch.rand(t.shape, generator=gen) if t.is_floating_point() else
                 torch.randint(0, int(t.max()) + 1, t.shape, generator=gen))
             for n, t in zip(example.input_names, example.batches[0].values())}
    got = _run_onnx(out, {n: t.numpy() for n, t in feeds.items()})
    with torch.no_grad():
        ref = trained(*feeds.values()).numpy()
        untrained = example.model.eval()(*feeds.values()).numpy()
    assert np.max(np.abs(got - ref)) <= 1e-4
    assert np.max(np.abs(got - untrained)) > 1e-3  # training did change the served model


def test_export_inference_from_checkpoint(bundles, tmp_path):
    example, path, art = _training(bundles["emb"])
    out = export_inference_from_checkpoint(path / art.path, tmp_path / "from_ckpt.onnx", example.output_names)
    assert onnx.load(out).ir_version == 10
    batch = example.batches[1]
    got = _run_onnx(out, {n: batch[n].numpy() for n in example.input_names})
    with torch.no_grad():
        ref = example.model.eval()(batch["user"], batch["item"]).numpy()
    assert np.max(np.abs(got - ref)) <= 1e-4
    with pytest.raises(ExportError, match="cannot load"):
        export_inference_from_checkpoint(tmp_path, tmp_path / "x.onnx", example.output_names)


def test_bn_train_uses_batch_statistics(bundles, tmp_path):
    example = fused_cnn()
    manifest = _export(example, tmp_path / "bundle", bn="train")
    art = manifest.artifacts[1]
    assert art.validation.passed and art.validation.max_rel_weight_diff <= 1e-4
    folder = tmp_path / "bundle" / art.path
    train_ops = {n.op_type for n in onnx.load(folder / "training_model.onnx").graph.node}
    eval_ops = {n.op_type for n in onnx.load(folder / "eval_model.onnx").graph.node}
    assert "BatchNormInternal" in train_ops and "BatchNormalization" in eval_ops
    # batch statistics really differ from running ones here, so the gate would catch a mix-up
    frozen = bundles["cnn"][2].artifacts[1].validation.loss_runtime
    assert abs(frozen[0] - art.validation.loss_runtime[0]) > 1e-3


def test_weight_decay_and_bce_stay_exact_for_saturated_logits(tmp_path):
    example = embedding_mlp()
    with torch.no_grad():  # logits around +-30: ORT's own BCE (log(1 - sigmoid)) is inf there
        example.model.mlp[2].weight.mul_(40.0)
        example.model.mlp[2].bias.fill_(30.0)
    manifest = _export(example, tmp_path / "bundle", weight_decay=0.01, momentum=0.5)
    v = manifest.artifacts[1].validation
    assert v.passed and np.all(np.isfinite(v.loss_runtime)) and max(v.loss_runtime) > 1.0
    assert manifest.artifacts[1].details["optimizer"]["step"] == "host"


def test_mse_with_batchnorm1d_and_hardsigmoid(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Hardsigmoid(), nn.Linear(8, 3)).eval()
    with torch.no_grad():  # eval-mode BN differs from batch statistics only with non-trivial stats
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 1.5)
    batches = [{"x": torch.rand(4, 6), "y": torch.rand(4, 3)} for _ in range(3)]
    manifest = exporters.export_model(model, (torch.rand(1, 6),), formats=["onnx"], out_dir=tmp_path / "b",
                                training=exporters.TrainingSpec(trainable=["0", "1"], loss="mse", lr=0.1),
                                train_batches=batches, output_names=["out"], log=lambda *a: None)
    v = manifest.artifacts[1].validation
    assert v.passed and v.max_rel_loss_diff <= 1e-4 and v.max_rel_weight_diff <= 1e-4


class _FunctionalHardswish(nn.Module):
    """F.hardswish is not an nn.Hardswish module, so it reaches ORT as a HardSwish node."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardswish(self.fc(x))


def test_op_without_ort_gradient_is_named(tmp_path):
    model = _FunctionalHardswish().eval()
    batches = [{"x": torch.rand(2, 4), "y": torch.tensor([0, 2])}]
    with pytest.raises(ExportError, match="no gradient for op HardSwish"):
        exporters.export_model(model, (torch.rand(1, 4),), formats=["onnx"], out_dir=tmp_path / "b",
                         training=exporters.TrainingSpec(trainable=["fc"]), train_batches=batches,
                         log=lambda *a: None)
    assert not (tmp_path / "b").exists()


def test_bad_training_specs_raise_one_line(tmp_path):
    example = embedding_mlp()
    with pytest.raises(ExportError, match="needs a torch.int64 target"):
        _export(example, tmp_path / "a", loss="cross_entropy")
    with pytest.raises(ExportError, match="unknown TrainingSpec.bn"):
        _export(example, tmp_path / "b", bn="sometimes")
