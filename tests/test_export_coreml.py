"""Core ML exports of the reference models, through `exporters.export` (the real gate).

Nothing Core ML runs on Linux: here the gate validates structure (checked=False, with the reason)
and these tests check that the structural validation refuses broken specs. The prediction test
runs on macOS only.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import exporters
from dcl_core.bundle import load_manifest
from dcl_core.errors import DeviceError, ExportError
from exporters.base import ExportJob
from exporters.coreml.exporter import CoreMLExporter, main_ops
from exporters.gate import reference_training
from toolkit.models.examples import embedding_mlp, fused_cnn

ct = pytest.importorskip("coremltools")
QUIET = dict(log=lambda *a: None)


def _export(example, out: Path, training: bool):
    return exporters.export_model(example.model, example.inputs, formats=["coreml"], out_dir=out,
                            training=example.spec if training else None, input_names=example.input_names,
                            output_names=example.output_names, train_batches=example.batches, **QUIET)


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    ex = fused_cnn()
    out = tmp_path_factory.mktemp("coreml") / "fused"
    return ex, out, _export(ex, out, training=False)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    ex = embedding_mlp()
    out = tmp_path_factory.mktemp("coreml") / "mlp"
    return ex, out, _export(ex, out, training=True)


def _job(ex, bundle: Path, name: str) -> ExportJob:
    """The job a training export gets from exporters.export."""
    batch = ex.batches[0]
    return ExportJob(ex.model, tuple(v for k, v in batch.items() if k != "y"), ex.input_names,
                     ex.output_names, bundle, name, target=batch["y"], spec=ex.spec)


def test_fused_cnn_inference_is_an_fp32_ml_program_validated_structurally(fused):
    ex, out, manifest = fused
    (art,) = manifest.artifacts
    assert art.kind == "inference" and art.path.endswith(".mlpackage") and (out / art.path).is_dir()
    assert len(art.files) >= 2 and art.bytes == sum(f.bytes for f in art.files)  # a folder, hashed file by file
    v = art.validation
    assert not v.checked and v.passed and "only on macOS" in v.reason and "fp32 tensors" in v.reason
    assert [(t.name, t.shape, t.dtype) for t in art.inputs] == [("x", [1, 1, 28, 28], "float32")]
    assert [(t.name, t.shape, t.dtype) for t in art.outputs] == [("logits", [1, 20], "float32")]
    spec = ct.utils.load_spec(str(out / art.path))
    ops = {op.type for op in main_ops(spec)}
    assert {"conv", "linear", "add"} <= ops and spec.specificationVersion >= 7
    load_manifest(out)  # sha256 of every file in the package verifies


def test_fused_cnn_training_is_refused_with_the_reason(tmp_path):
    """Core ML cannot backpropagate through the sum of the mimic's and the device model's logits:
    the exporter refuses, and the bundle records it (inference still exported) instead of hiding it."""
    import re

    from exporters.base import ExportJob
    from exporters.coreml.exporter import CoreMLExporter

    ex = fused_cnn()
    b = ex.batches[0]
    job = ExportJob(ex.model, (b["x"],), ["x"], ["logits"], tmp_path, "t", target=b["y"], spec=ex.spec)
    with pytest.raises(ExportError, match=r"'logits' \(add\).*backpropagates only through"):
        CoreMLExporter().export_training(job)
    manifest = _export(ex, tmp_path / "b", training=True)
    assert [a.kind for a in manifest.artifacts] == ["inference"]
    (entry,) = manifest.not_exported
    assert entry["format"] == "coreml" and entry["kind"] == "training"
    assert re.search(r"'logits' \(add\).*backpropagates only through", entry["reason"])


def test_embedding_mlp_inference_takes_int32_ids(mlp):
    ex, out, manifest = mlp
    art = manifest.artifact("model_coreml")
    assert [(t.name, t.dtype) for t in art.inputs] == [("user", "int32"), ("item", "int32")]
    assert art.details["source_dtypes"] == {"user": "int64", "item": "int64"}
    assert not art.validation.checked and art.validation.passed


def test_embedding_mlp_training_updates_the_mlp_as_two_class_cross_entropy(mlp):
    ex, out, manifest = mlp
    art = manifest.artifact("model_coreml_train")
    assert art.path.endswith(".mlmodel") and art.kind == "training"
    assert art.trainable == ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]  # embeddings stay frozen
    v = art.validation
    assert not v.checked and v.passed and "backpropagation path" in v.reason, v.reason
    assert [(t.name, t.shape, t.dtype) for t in art.inputs] == [
        ("user", [1], "float32"), ("item", [1], "float32"), ("y", [1], "int32")]
    spec = ct.utils.load_spec(str(out / art.path))
    update = spec.neuralNetwork.updateParams
    assert spec.isUpdatable and update.lossLayers[0].WhichOneof("LossLayerType") == "categoricalCrossEntropyLossLayer"
    sgd = update.optimizer.sgdOptimizer
    assert (sgd.learningRate.defaultValue, sgd.miniBatchSize.defaultValue, update.epochs.defaultValue) == (0.1, 16, 1)


def test_two_class_head_trains_exactly_like_bce(mlp):
    """The Core ML program, replayed in PyTorch from the spec's weights (Core ML's CE, SGD and
    batchnorm as documented), matches the reference BCE training of the same parameters: this
    checks the reparametrisation and the updatable set, not Core ML's runtime."""
    ex, out, manifest = mlp
    art = manifest.artifact("model_coreml_train")
    spec = ct.utils.load_spec(str(out / art.path))
    layers = {layer.name: layer for layer in spec.neuralNetwork.layers}
    (head, head_names), (hidden, hidden_names) = art.details["updatable_layers"].items()
    w0, b0 = _weights(layers[hidden])
    v, c = _weights(layers[head])
    bn = next(layer.batchnorm for layer in spec.neuralNetwork.layers if layer.WhichOneof("layer") == "batchnorm")
    scale = torch.tensor(bn.gamma.floatValue) / math.sqrt(1.0 + bn.epsilon)
    params = [p.requires_grad_() for p in (w0, b0, v, c)]
    opt = torch.optim.SGD(params, lr=ex.spec.lr, momentum=ex.spec.momentum)
    losses = []
    for i in range(10):
        batch = ex.batches[i % len(ex.batches)]
        with torch.no_grad():
            feats = torch.cat([ex.model.user(batch["user"]), ex.model.item(batch["item"])], dim=-1)
        logits = (F.relu(feats @ w0.T + b0) @ v.T + c) * scale
        loss = F.cross_entropy(logits, batch["y"].long())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    narrowed = dataclasses.replace(ex.spec, trainable=art.trainable)
    ref_losses, ref = reference_training(ex.model, narrowed, ex.batches, "y", 10)
    s = art.details["head_reparametrization"]["scale"]
    got = {hidden_names[0]: w0, hidden_names[1]: b0, head_names[0]: s * (v[1:] - v[:1]), head_names[1]: s * (c[1:] - c[:1])}
    assert np.allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
    for name, value in got.items():
        assert torch.allclose(value.detach(), ref[name], rtol=1e-5, atol=1e-6), name


def _weights(layer) -> tuple[torch.Tensor, torch.Tensor]:
    p = layer.innerProduct
    w = torch.tensor(p.weights.floatValue, dtype=torch.float32).reshape(p.outputChannels, p.inputChannels)
    return w, torch.tensor(p.bias.floatValue, dtype=torch.float32)


def _mark_logit_difference_updatable(spec):
    layer = next(l for l in spec.neuralNetwork.layers if l.name.endswith("_difference"))
    layer.isUpdatable = layer.innerProduct.weights.isUpdatable = True


def _unmark_hidden_layer(spec):
    next(l for l in spec.neuralNetwork.layers if l.isUpdatable and l.name != "linear_1").isUpdatable = False


def _relu_to_linear(spec):
    """A layer Core ML cannot backpropagate through, between the loss and the hidden layer."""
    next(l for l in spec.neuralNetwork.layers if l.WhichOneof("layer") == "activation").activation.linear.alpha = 1.0


def _change_lr(spec):
    spec.neuralNetwork.updateParams.optimizer.sgdOptimizer.learningRate.defaultValue = 0.5


def _change_hidden_weights(spec):
    layer = next(l for l in spec.neuralNetwork.layers if l.isUpdatable and l.name != "linear_1")
    layer.innerProduct.weights.floatValue[0] += 1.0


@pytest.mark.parametrize("tamper, failure", [
    (_mark_logit_difference_updatable, "updatable layers"),
    (_unmark_hidden_layer, "updatable layers"),
    (_relu_to_linear, "backpropagation path"),
    (_change_lr, "optimizer"),
    (_change_hidden_weights, "does not hold the PyTorch parameters"),
])
def test_validate_structure_refuses_a_wrong_training_spec(mlp, tmp_path, tamper, failure):
    ex, out, manifest = mlp
    art = manifest.artifact("model_coreml_train")
    shutil.copy(out / art.path, tmp_path / art.path)
    exporter, job = CoreMLExporter(), _job(ex, tmp_path, art.name)
    assert exporter.validate_structure(art, job).passed
    spec = ct.utils.load_spec(str(tmp_path / art.path))
    tamper(spec)
    ct.utils.save_spec(spec, str(tmp_path / art.path))
    v = exporter.validate_structure(art, job)
    assert v.checked and not v.passed and failure in v.reason, v.reason


def _relu_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


def test_relu_cnn_updates_its_last_conv_and_head(tmp_path):
    """A CNN Core ML can backpropagate through: the last conv (BatchNorm kept apart, so it holds
    PyTorch's weights) and the head become updatable; the head reads the pooled [1, C, 1, 1] blob."""
    model, g = _relu_cnn(), torch.Generator().manual_seed(1)
    batches = [{"x": torch.rand(4, 1, 28, 28, generator=g), "y": torch.randint(0, 5, (4,), generator=g)}]
    spec = exporters.TrainingSpec(trainable=["3", "8"], lr=0.05, momentum=0.9, batch_size=4)
    manifest = exporters.export_model(model, (batches[0]["x"][:1],), formats=["coreml"], out_dir=tmp_path / "b",
                                training=spec, output_names=["logits"], train_batches=batches, **QUIET)
    art = manifest.artifact("model_coreml_train")
    assert art.trainable == ["3.weight", "3.bias", "8.weight", "8.bias"] and art.validation.passed
    layers = ct.utils.load_spec(str(tmp_path / "b" / art.path)).neuralNetwork.layers
    assert [l.WhichOneof("layer") for l in layers if l.isUpdatable] == ["convolution", "innerProduct"]
    assert sum(l.WhichOneof("layer") == "batchnorm" for l in layers) == 2


def test_unsupported_training_specs_raise_one_line(tmp_path):
    ex = embedding_mlp()
    job = _job(ex, tmp_path, "t")
    with pytest.raises(ExportError, match="no weight decay"):
        CoreMLExporter().export_training(dataclasses.replace(job, spec=dataclasses.replace(ex.spec, weight_decay=1e-4)))
    with pytest.raises(ExportError, match="0/1 targets"):
        CoreMLExporter().export_training(dataclasses.replace(job, target=torch.full_like(job.target, 0.3)))


@pytest.mark.skipif(sys.platform == "darwin", reason="checks the refusal off macOS")
def test_runners_refuse_off_macos(mlp):
    from exporters.runner import open_inference, open_training

    ex, out, manifest = mlp
    for open_runner, art in ((open_inference, manifest.artifacts[0]), (open_training, manifest.artifacts[1])):
        with pytest.raises(DeviceError, match="Core ML runs only on macOS"):
            open_runner("coreml", out / art.path, art)
    assert CoreMLExporter().runnable_here("inference")[0] is False


@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML prediction runs only on macOS")
@pytest.mark.parametrize("make", [fused_cnn, embedding_mlp])
def test_prediction_matches_pytorch(make, tmp_path):
    from exporters.runner import open_inference

    ex = make()
    manifest = _export(ex, tmp_path / "b", training=False)
    art = manifest.artifacts[0]
    assert art.validation.checked and art.validation.max_abs_diff <= 1e-4  # the gate ran predict()
    runner = open_inference("coreml", tmp_path / "b" / art.path, art)
    got = runner.infer({n: t.numpy() for n, t in zip(ex.input_names, ex.inputs)})
    with torch.no_grad():
        want = ex.model(*ex.inputs).numpy()
    assert np.max(np.abs(got[0].reshape(want.shape) - want)) <= 1e-4
