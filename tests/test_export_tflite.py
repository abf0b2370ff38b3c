"""TFLite/LiteRT export: parity with PyTorch through the shared gate, builtin ops only, the
training artifact's signatures and weight exchange, and clear errors for unsupported ops
(per-op coverage: test_tflite_ops.py).

Each reference model is exported once per module (TF import + conversion dominate the time).
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

from ai_edge_litert import schema_py_generated as schema  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

import exporters  # noqa: E402
from dcl_core.errors import BundleError, ExportError  # noqa: E402
from exporters.reference import PyTorchTraining  # noqa: E402
from exporters.runner import open_inference, open_training  # noqa: E402
from exporters.spec import TrainingSpec  # noqa: E402
from toolkit.models import MobileCNN  # noqa: E402
from toolkit.models.examples import _randomise_bn, embedding_mlp, fused_cnn  # noqa: E402

TRAIN_SIGNATURES = {"train", "infer", "get_weights", "set_weights"}


def _export(example, out: Path, **kw):
    return exporters.export_model(example.model, example.inputs, formats=["tflite"], out_dir=out, training=example.spec,
                            input_names=example.input_names, output_names=example.output_names,
                            train_batches=example.batches, log=lambda *a: None, **kw)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    ex = fused_cnn()
    out = tmp_path_factory.mktemp("tflite") / "cnn"
    return ex, _export(ex, out), out


@pytest.fixture(scope="module")
def emb(tmp_path_factory):
    ex = embedding_mlp()
    out = tmp_path_factory.mktemp("tflite") / "emb"
    return ex, _export(ex, out), out


def _se_example(bn: str):
    """A MobileCNN with squeeze-excite, training a middle stage and the head (SE included)."""
    torch.manual_seed(0)
    model = MobileCNN(10, (8, 16), se=True).eval()
    _randomise_bn(model, 0)
    g = torch.Generator().manual_seed(1)
    batches = [{"x": torch.rand(8, 1, 28, 28, generator=g), "y": torch.randint(0, 10, (8,), generator=g)}
               for _ in range(4)]
    spec = TrainingSpec(trainable=["features.1", "classifier"], lr=0.05, momentum=0.9, weight_decay=1e-3, bn=bn)
    return model, batches, spec


@pytest.fixture(scope="module")
def se_bn_train(tmp_path_factory):
    model, batches, spec = _se_example("train")
    out = tmp_path_factory.mktemp("tflite") / "se"
    manifest = exporters.export_model(model, (torch.rand(1, 1, 28, 28),), formats=["tflite"], out_dir=out, training=spec,
                                train_batches=batches, log=lambda *a: None)
    return model, batches, spec, manifest, out


def _ops(path: Path) -> set[str]:
    """Operator codes in a .tflite flatbuffer; custom ops (Flex included) as CUSTOM:<name>."""
    m = schema.Model.GetRootAs(path.read_bytes(), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    ops = set()
    for i in range(m.OperatorCodesLength()):
        oc = m.OperatorCodes(i)
        code = max(oc.DeprecatedBuiltinCode(), oc.BuiltinCode())
        ops.add(f"CUSTOM:{oc.CustomCode().decode()}" if code == schema.BuiltinOperator.CUSTOM else names[code])
    return ops


def _by_kind(manifest, kind: str):
    return next(a for a in manifest.artifacts if a.kind == kind)


def _assert_validated(manifest) -> None:
    inf, tr = _by_kind(manifest, "inference"), _by_kind(manifest, "training")
    assert inf.format == tr.format == "tflite"
    for a in (inf, tr):
        assert a.validation.checked and a.validation.passed, a.validation.reason
    assert inf.validation.max_abs_diff <= 1e-4
    assert tr.validation.steps >= 10
    assert tr.validation.max_rel_loss_diff <= 1e-4
    assert tr.validation.max_rel_weight_diff <= 1e-4


def test_fused_cnn_matches_pytorch(cnn):
    ex, manifest, _ = cnn
    _assert_validated(manifest)
    tr = _by_kind(manifest, "training")
    assert tr.trainable == ex.spec.trainable_names(ex.model)
    assert [(s.name, s.shape, s.dtype) for s in _by_kind(manifest, "inference").inputs] == [("x", [1, 1, 28, 28], "float32")]
    assert [s.name for s in tr.inputs] == ["x", "y"]


def test_embedding_mlp_matches_pytorch(emb):
    _, manifest, _ = emb
    _assert_validated(manifest)
    # the manifest records the dtypes the converted model really takes
    assert [(s.name, s.dtype) for s in _by_kind(manifest, "training").inputs] == \
        [("user", "int64"), ("item", "int64"), ("y", "float32")]


@pytest.mark.parametrize("which", ["cnn", "emb"])
def test_builtin_ops_only(which, request):
    _, manifest, out = request.getfixturevalue(which)
    for a in manifest.artifacts:
        ops = _ops(out / a.path)
        assert not [op for op in ops if op.startswith("CUSTOM")], ops
    train_ops = _ops(out / _by_kind(manifest, "training").path)
    assert {"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE"} <= train_ops  # state in resource variables
    if which == "cnn":
        assert "TRANSPOSE_CONV" in train_ops  # the dense conv input gradient


def test_signatures(cnn):
    _, manifest, out = cnn
    inf, tr = _by_kind(manifest, "inference"), _by_kind(manifest, "training")
    assert set(Interpreter(model_path=str(out / inf.path)).get_signature_list()) == {"serving_default"}
    sigs = Interpreter(model_path=str(out / tr.path)).get_signature_list()
    assert set(sigs) == TRAIN_SIGNATURES
    assert sorted(sigs["train"]["inputs"]) == ["x", "y"] and sigs["train"]["outputs"] == ["loss"]
    assert sigs["infer"]["outputs"] == ["logits"]


def test_weights_round_trip_in_pytorch_layout(cnn):
    ex, manifest, out = cnn
    tr = _by_kind(manifest, "training")
    runner = open_training("tflite", out / tr.path, tr)
    params = dict(ex.model.named_parameters())
    weights = runner.get_weights()
    assert set(weights) == set(tr.trainable)
    for n, w in weights.items():
        np.testing.assert_array_equal(w, params[n].detach().numpy())
    g = torch.Generator().manual_seed(5)
    new = {n: (torch.from_numpy(w) + 0.1 * torch.randn(w.shape, generator=g)).numpy() for n, w in weights.items()}
    runner.set_weights(new)
    for n, w in runner.get_weights().items():
        np.testing.assert_array_equal(w, new[n])
    # the infer signature runs with the new weights, so layouts map correctly both ways
    model = copy.deepcopy(ex.model)
    model.load_state_dict({n: torch.from_numpy(v) for n, v in new.items()}, strict=False)
    x = torch.rand(3, 1, 28, 28, generator=g)
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    np.testing.assert_allclose(runner.infer({"x": x.numpy()})[0], ref, atol=1e-4, rtol=0)
    with pytest.raises(BundleError, match="lacks trainable"):
        runner.set_weights({})


def test_squeeze_excite_with_batch_statistics(se_bn_train):
    model, batches, spec, manifest, out = se_bn_train
    _assert_validated(manifest)
    # train-mode BN also updates the running statistics, returned with the weights
    tr = _by_kind(manifest, "training")
    runner = open_training("tflite", out / tr.path, tr)
    for i in range(3):
        runner.train_step({k: v.numpy() for k, v in batches[i].items()})
    ref_model = _trained_copy(model, spec, batches, 3)
    got = runner.get_weights()
    stats = [n for n in got if "running_" in n]
    assert stats and all(n.startswith("features.1.") for n in stats)
    for n in stats:
        np.testing.assert_allclose(got[n], ref_model.state_dict()[n].numpy(), atol=1e-5, rtol=0)


def _trained_copy(model: nn.Module, spec: TrainingSpec, batches, steps: int) -> nn.Module:
    """PyTorch's model after `steps` steps of the gate's reference program (buffers included)."""
    ref = PyTorchTraining(model, spec)
    for i in range(steps):
        ref.train_step({k: v.numpy() for k, v in batches[i].items()})
    return ref.model


def test_squeeze_excite_inference_matches(se_bn_train):
    model, _, _, manifest, out = se_bn_train
    inf = _by_kind(manifest, "inference")
    runner = open_inference("tflite", out / inf.path, inf)
    x = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    assert np.max(np.abs(runner.infer({"x": x.numpy()})[0] - ref)) <= 1e-4


class _Variants(nn.Module):
    """Layer variants the reference models lack: strided dense 5x5 conv with bias on an input
    whose padded size leaves a remainder, strided depthwise with bias, strided 1x1, sigmoid,
    channel concat, arithmetic glue, flatten of a 3x3 map (NHWC -> NCHW), Linear without bias."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 5, stride=2, padding=2)
        self.bn = nn.BatchNorm2d(6)
        self.dw = nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6)
        self.pw = nn.Conv2d(6, 4, 1)
        self.c2 = nn.Conv2d(6, 4, 1, stride=2, bias=False)
        self.act = nn.Sigmoid()
        self.fc = nn.Linear(8 * 3 * 3, 5, bias=False)

    def forward(self, x):
        a = self.bn(self.c1(x))
        h = torch.cat([self.pw(self.act(self.dw(a))), self.c2(a)], dim=1)
        h = torch.relu(h) * 0.5 - h / 4
        return self.fc(torch.flatten(h, 1))


def test_layer_variants_train_like_pytorch(tmp_path):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    batches = [{"x": torch.rand(4, 3, 12, 12, generator=g), "y": torch.rand(4, 5, generator=g)} for _ in range(2)]
    spec = TrainingSpec(trainable=["c1", "bn", "dw", "pw", "c2", "fc"], loss="mse", lr=0.1, momentum=0.9,
                        weight_decay=0.01, bn="train")
    manifest = exporters.export_model(_Variants().eval(), (torch.rand(1, 3, 12, 12),), formats=["tflite"],
                                out_dir=tmp_path / "b", training=spec, train_batches=batches, log=lambda *a: None)
    _assert_validated(manifest)


class _Cumsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x).cumsum(1)


class _Deconv(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(2, 2, 3, stride=2)

    def forward(self, x):
        return self.up(x.view(-1, 2, 1, 2))


@pytest.mark.parametrize("model, op, line, reason", [
    (_Cumsum(), "aten.cumsum.default", "return self.fc(x).cumsum(1)", "no translation to TFLite builtin ops"),
    (_Deconv(), "aten.convolution.default", "return self.up(x.view(-1, 2, 1, 2))", "transposed convolution"),
])
def test_unsupported_op_is_named_with_its_source_line(model, op, line, reason, tmp_path):
    with pytest.raises(ExportError) as err:
        exporters.export_model(model, (torch.rand(2, 4),), formats=["tflite"], out_dir=tmp_path / "b", log=lambda *a: None)
    message = str(err.value)
    assert message.startswith(f"{op} at test_export_tflite.py:") and f"(`{line}`)" in message, message
    assert reason in message
    # an unknown op lists the known ones; a known op's unsupported variant says only why
    assert ("supported ops: aten." in message) == (op != "aten.convolution.default")
    assert "\n" not in message
    assert not (tmp_path / "b").exists()


def test_supported_ops_are_listed():
    from exporters.tflite import SUPPORTED_OPS

    assert {"aten.convolution.default", "aten.native_layer_norm.default", "aten.max_pool2d_with_indices.default",
            "aten.gelu.default", "aten.embedding.default", "aten.where.self"} <= set(SUPPORTED_OPS)
    assert "aten.cumsum.default" not in SUPPORTED_OPS


def test_conversion_refuses_non_builtin_ops():
    import tensorflow as tf

    from exporters.tflite.convert import convert

    fn = tf.function(lambda x: {"y": tf.raw_ops.ReluGrad(gradients=x, features=x)},
                     input_signature=[tf.TensorSpec([2], tf.float32, name="x")])
    with pytest.raises(ExportError, match="conversion of probe failed: no TFLite builtin op for tf.ReluGrad"):
        convert(tf.Module(), {"serving_default": fn.get_concrete_function()}, "probe")
