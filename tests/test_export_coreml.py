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
from dcl_core.errors import DeviceError, ExportError, TrainingNotExpressible
from exporters.base import ExportJob
from exporters.coreml.exporter import CoreMLExporter, main_ops
from exporters.coreml.plan import FROZEN_BATCHNORM, FROZEN_PARTNER
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
    ok, why = CoreMLExporter().runnable_here("training")  # not even on a Mac: MLUpdateTask has no Python API
    assert not ok and why


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


# ---------------------------------------------------------------- the trainable tail (plan.py)


def _relu_cnn_export(tmp_path: Path, trainable: list[str]):
    model, g = _relu_cnn(), torch.Generator().manual_seed(1)
    batches = [{"x": torch.rand(4, 1, 28, 28, generator=g), "y": torch.randint(0, 5, (4,), generator=g)}]
    spec = exporters.TrainingSpec(trainable=trainable, lr=0.05, momentum=0.9, batch_size=4)
    manifest = exporters.export_model(model, (batches[0]["x"][:1],), formats=["coreml"], out_dir=tmp_path / "b",
                                      training=spec, output_names=["logits"], train_batches=batches, **QUIET)
    return manifest.artifact("model_coreml_train")


def test_full_request_makes_every_weight_layer_of_the_tail_updatable(tmp_path):
    """No cap on the number of updatable layers (Apple's validator has none): both convs and the
    head train; the BatchNorms' affine parameters, though requested, stay frozen, and say why."""
    art = _relu_cnn_export(tmp_path, [exporters.spec.ALL])
    assert art.trainable == ["0.weight", "3.weight", "3.bias", "8.weight", "8.bias"] and art.validation.passed
    assert art.details["trains"] == art.trainable and art.details["backprop_stops_at"] == "the model input 'x'"
    assert art.details["left_frozen"] == {FROZEN_BATCHNORM: ["1.weight", "1.bias", "4.weight", "4.bias"]}
    assert len(art.details["updatable_layers"]) == 3


def test_a_layer_whose_bias_is_frozen_stays_frozen_with_the_reason(tmp_path):
    """Core ML updates a layer's weight and bias together: a request for the head's weight alone
    trains the conv below it and reports the head's weight as left frozen."""
    art = _relu_cnn_export(tmp_path, ["8.weight", "3"])
    assert art.trainable == ["3.weight", "3.bias"] and art.validation.passed
    assert art.details["left_frozen"] == {FROZEN_PARTNER: ["8.weight"]}


def test_a_request_nothing_of_which_can_train_is_refused_with_the_reasons(tmp_path):
    """BatchNorm parameters alone: Core ML updates only convolution and innerProduct layers."""
    model, g = _relu_cnn(), torch.Generator().manual_seed(1)
    x, y = torch.rand(4, 1, 28, 28, generator=g), torch.randint(0, 5, (4,), generator=g)
    job = ExportJob(model, (x,), ["x"], ["logits"], tmp_path, "t", target=y,
                    spec=exporters.TrainingSpec(trainable=["1", "4"], batch_size=4))
    with pytest.raises(TrainingNotExpressible, match="cannot train any requested parameter") as e:
        CoreMLExporter().export_training(job)
    assert f"{FROZEN_BATCHNORM}: 1.weight, 1.bias, 4.weight, 4.bias" in str(e.value)


def test_a_sum_of_branches_is_refused_even_for_a_full_request(tmp_path):
    class TwoBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 3), nn.Linear(6, 3)

        def forward(self, x):
            return self.a(x) + self.b(x)

    g = torch.Generator().manual_seed(0)
    batches = [{"x": torch.rand(4, 6, generator=g), "y": torch.randint(0, 3, (4,), generator=g)}]
    manifest = exporters.export_model(TwoBranch().eval(), (batches[0]["x"][:1],), formats=["coreml"],
                                      out_dir=tmp_path / "b", training=exporters.TrainingSpec(trainable=["*"]),
                                      output_names=["logits"], train_batches=batches, **QUIET)
    (entry,) = manifest.not_exported
    assert entry["kind"] == "training" and "'logits' (add)" in entry["reason"]
    assert "backpropagates only through" in entry["reason"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """corpus(name, training) -> (program, bundle dir, manifest), each exported once per module."""
    from dcl_core.errors import DataMissingError
    from toolkit.models.corpus import CORPUS

    done = {}

    def get(name: str, training: str):
        if (name, training) not in done:
            try:
                program = CORPUS[name](training)
            except DataMissingError as e:
                pytest.skip(str(e))
            out = tmp_path_factory.mktemp("corpus") / f"{name}_{training}"
            done[name, training] = program, out, exporters.export([program], ["coreml"], out, **QUIET)
        return done[name, training]

    return get


def _training_artifact(manifest):
    (art,) = [a for a in manifest.artifacts if a.kind == "training"]
    return art


def _batchnorm_params(model: nn.Module) -> list[str]:
    return [f"{m}.{p}" for m, module in model.named_modules() if isinstance(module, nn.BatchNorm2d)
            for p, _ in module.named_parameters(recurse=False)]


_SLOW = pytest.mark.slow  # EfficientNet-Lite0 at 224x224: ~30 s per export on 2 cores
_MOBILENET_TAIL = ["features.6.block.0.0.weight", "features.6.block.1.0.weight", "features.6.block.2.weight",
                   "features.7.0.weight", "classifier.weight", "classifier.bias"]


@pytest.mark.parametrize("name, trains, stop, rewrites", [
    # the last inverted residual (expand, depthwise, project; no skip) and the last conv: ReLU6 and
    # the spatial mean rewritten; the skip connection's add before them stops backpropagation
    ("mobilenet_v2", _MOBILENET_TAIL, "(add)", ["clip", "clip", "clip", "mean"]),
    ("resnet", ["fc.weight", "fc.bias"], "(add)", []),  # every block ends in its residual add
    ("transformer", ["head.weight", "head.bias"], "(reduceMean)", []),  # a mean over the sequence axis
    pytest.param("efficientnet_lite0", ["net._fc.weight", "net._fc.bias"], "(multiply)", [],  # swish
                 marks=_SLOW),
])
def test_full_network_request_trains_the_longest_tail(corpus, name, trains, stop, rewrites):
    program, _, manifest = corpus(name, "full")
    art = _training_artifact(manifest)
    requested = [n for n, _ in program.model.named_parameters()]
    assert art.trainable == trains and art.details["trains"] == trains and art.details["requested"] == requested
    assert art.details["backprop_stops_at"].endswith(stop)
    assert sorted(r["kind"] for r in art.details["rewrites"]) == rewrites
    frozen = art.details["left_frozen"]
    assert sorted(n for names in frozen.values() for n in names) == sorted(set(requested) - set(trains))
    assert frozen.get(FROZEN_BATCHNORM, []) == _batchnorm_params(program.model)
    assert all(why == FROZEN_BATCHNORM or why.startswith("backpropagation from the loss stops at") for why in frozen)
    v = art.validation
    assert not v.checked and v.passed and "rewrites" in v.reason and "accounted for" in v.reason, v.reason
    assert [n["kind"] for n in manifest.not_exported] == []


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet", "transformer", "embedding_mlp",
                                  pytest.param("efficientnet_lite0", marks=_SLOW)])
def test_head_fine_tune_of_every_corpus_model_passes_the_structural_gate(corpus, name):
    program, _, manifest = corpus(name, "head")
    art = _training_artifact(manifest)
    head = program.training.trainable_names(program.model)
    assert art.trainable == head and len(head) == 2 and art.details["left_frozen"] == {}
    assert list(art.details["updatable_layers"].values()) == [head] and art.details["rewrites"] == []
    assert not art.validation.checked and art.validation.passed, art.validation.reason


def _run_tail(nn_spec, source: str, x: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """Core ML's layers from blob `source` to the loss input, replayed in torch as the NeuralNetwork
    proto defines them (the kinds a trainable tail holds). `weights` gets each weight layer's
    weight and bias as leaves, updatable ones requiring grad."""
    from exporters.coreml.plan import layer_weight, producers

    producer, loss = producers(nn_spec), nn_spec.updateParams.lossLayers[0]
    path, blob = [], getattr(loss, loss.WhichOneof("LossLayerType")).input
    while blob != source:
        path.append(producer[blob])
        blob = producer[blob].input[0]
    for layer in reversed(path):
        kind = layer.WhichOneof("layer")
        if kind in ("convolution", "innerProduct"):
            w, b = (torch.tensor(t).requires_grad_(layer.isUpdatable) if t is not None else None for t in layer_weight(layer))
            weights[layer.name], weights[layer.name + ".bias"] = w, b
            if kind == "innerProduct":
                x = (x.reshape(len(x), -1) @ w.T + (0 if b is None else b))[..., None, None]
            else:
                c = layer.convolution
                (top, left) = ((a.startEdgeSize, a.endEdgeSize) for a in c.valid.paddingAmounts.borderAmounts)
                x = F.conv2d(F.pad(x, (*left, *top)), w, b, stride=list(c.stride), groups=c.nGroups)
        elif kind == "batchnorm":
            bn = layer.batchnorm
            gamma, beta, mean, var = (torch.tensor(v.floatValue).reshape(1, -1, 1, 1)
                                      for v in (bn.gamma, bn.beta, bn.mean, bn.variance))
            x = (x - mean) / torch.sqrt(var + bn.epsilon) * gamma + beta
        elif kind == "activation":
            x = F.relu(x)
        elif kind == "pooling":
            x = x.mean((2, 3), keepdim=True)
        elif kind == "softmax":
            x = F.softmax(x, dim=1)
        else:
            raise AssertionError(f"{layer.name} ({kind}) has no place in a trainable tail")
    return x


def test_mobilenet_tail_computes_pytorchs_loss_and_gradients(corpus):
    """The rewritten tail (ReLU6 as ReLUs and batchnorm affines, the mean as pooling), replayed from
    the spec from PyTorch's activation where it starts, gives PyTorch's loss and the gradient of
    every parameter that trains: this checks the rewrites and the updatable set, not Core ML's runtime."""
    program, out, manifest = corpus("mobilenet_v2", "full")
    art = _training_artifact(manifest)
    nn_spec = ct.utils.load_spec(str(out / art.path)).neuralNetwork
    earliest = next(layer for layer in nn_spec.layers if layer.isUpdatable)  # layers are in topological order
    model, batch = program.model, program.train_batches[0]
    x, y = batch["x"][:1], batch["y"][:1]
    entry = {}
    hook = model.features[6].register_forward_pre_hook(lambda m, a: entry.setdefault("x", a[0].detach()))
    params = dict(model.named_parameters())
    for n, p in params.items():
        p.requires_grad_(n in art.trainable)
    try:
        loss = F.cross_entropy(model(x), y)
        grads = dict(zip(art.trainable, torch.autograd.grad(loss, [params[n] for n in art.trainable])))
    finally:
        hook.remove()
        for p in params.values():
            p.requires_grad_(True)
    weights: dict[str, torch.Tensor] = {}
    probabilities = _run_tail(nn_spec, earliest.input[0], entry["x"], weights)
    core_ml_loss = -torch.log(probabilities.reshape(-1)[y])
    core_ml_loss.sum().backward()
    assert math.isclose(core_ml_loss.item(), loss.item(), rel_tol=1e-5)
    for layer, names in art.details["updatable_layers"].items():
        for tensor, name in zip((weights[layer], weights[layer + ".bias"]), names):
            assert torch.allclose(tensor.grad, grads[name], rtol=1e-4, atol=1e-6), name


def _corrupt_clip_rewrite(spec):
    next(l for l in spec.neuralNetwork.layers if l.name.endswith("_flip")).batchnorm.beta.floatValue[0] = 5.0


def _mark_a_conv_beyond_the_stop_updatable(spec):
    layer = next(l for l in spec.neuralNetwork.layers if l.WhichOneof("layer") == "convolution")
    layer.isUpdatable = layer.convolution.weights.isUpdatable = True


def _restore_a_clip(spec):
    """Put a clip back where a rewrite replaced it: backpropagation cannot pass it."""
    layer = next(l for l in spec.neuralNetwork.layers if l.name.endswith("_unflip"))
    layer.clip.maxVal = 6.0


@pytest.mark.parametrize("tamper, failure", [
    (_corrupt_clip_rewrite, "do not compute the clip"),
    (_mark_a_conv_beyond_the_stop_updatable, "updatable layers"),
    (_restore_a_clip, "backpropagation path"),
])
def test_validate_structure_refuses_a_wrong_tail(corpus, tmp_path, tamper, failure):
    program, out, manifest = corpus("mobilenet_v2", "full")
    art = _training_artifact(manifest)
    shutil.copy(out / art.path, tmp_path / art.path)
    batch = program.train_batches[0]
    job = ExportJob(program.model, (batch["x"],), ["x"], ["logits"], tmp_path, art.name, target=batch["y"],
                    spec=program.training)
    exporter = CoreMLExporter()
    assert exporter.validate_structure(art, job).passed
    spec = ct.utils.load_spec(str(tmp_path / art.path))
    tamper(spec)
    ct.utils.save_spec(spec, str(tmp_path / art.path))
    v = exporter.validate_structure(art, job)
    assert v.checked and not v.passed and failure in v.reason, v.reason


def test_validate_structure_refuses_a_manifest_that_hides_a_frozen_parameter(corpus, tmp_path):
    program, out, manifest = corpus("mobilenet_v2", "full")
    art = _training_artifact(manifest)
    frozen = {why: names[1:] for why, names in art.details["left_frozen"].items()}
    batch = program.train_batches[0]
    job = ExportJob(program.model, (batch["x"],), ["x"], ["logits"], out, art.name, target=batch["y"],
                    spec=program.training)
    v = CoreMLExporter().validate_structure(dataclasses.replace(art, details={**art.details, "left_frozen": frozen}), job)
    assert not v.passed and "requested parameters accounted for" in v.reason, v.reason
