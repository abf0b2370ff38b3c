"""ExecuTorch export: both reference models through the real gate, the runner's weight and
gradient access, external weights, train-mode BatchNorm, and a clear error on unsupported ops.

Exports are module-scoped fixtures (each takes seconds on 2 cores); the tests read them.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import exporters
from conftest import export_bn_train_external
from dcl_core.bundle import Manifest, describe_files, load_manifest
from dcl_core.errors import BundleError, ExportError
from exporters.base import ExportJob
from exporters.executorch.exporter import ExecuTorchExporter
from exporters.gate import validate_training
from exporters.reference import PyTorchTraining
from exporters.runner import open_inference, open_training
from exporters.spec import TrainingSpec, loss_fn
from toolkit.models.examples import Example, embedding_mlp, fused_cnn

TOL = 1e-4


def _export(example: Example, out_dir: Path) -> Manifest:
    return exporters.export_model(example.model, example.inputs, formats=["executorch"], out_dir=out_dir,
                            training=example.spec, input_names=example.input_names,
                            output_names=example.output_names, train_batches=example.batches,
                            log=lambda *a: None)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> tuple[Example, Path, Manifest]:
    ex, out = fused_cnn(), tmp_path_factory.mktemp("et_cnn") / "bundle"
    return ex, out, _export(ex, out)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> tuple[Example, Path, Manifest]:
    ex, out = embedding_mlp(), tmp_path_factory.mktemp("et_mlp") / "bundle"
    return ex, out, _export(ex, out)


def _assert_verified(m: Manifest) -> None:
    kinds = {a.kind: a for a in m.artifacts}
    assert set(kinds) == {"inference", "training"}
    inf, tr = kinds["inference"], kinds["training"]
    for a in (inf, tr):
        assert a.format == "executorch" and a.validation.checked and a.validation.passed, a.validation
    assert inf.validation.max_abs_diff is not None and inf.validation.max_abs_diff <= TOL
    assert inf.details["delegate"] == "xnnpack"
    v = tr.validation
    assert v.steps >= 10 and len(v.loss_runtime) == v.steps
    assert v.max_rel_loss_diff <= TOL and v.max_rel_weight_diff <= TOL
    assert tr.details["delegate"] == "xnnpack (frozen part)"


def _batch_np(batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in batch.items()}


def test_fused_cnn_verified(cnn):
    ex, out, m = cnn
    _assert_verified(m)
    inf = m.artifact("model_executorch")
    assert inf.details["portable_ops"] == [], "the whole CNN should run in the XNNPACK delegate"
    tr = m.artifact("model_executorch_train")
    # the frozen mimic "frozen." is baked in; only the device CNN "trainable." trains
    assert set(tr.details["parameters"].values()) == set(ex.spec.trainable_names(ex.model))
    assert all(n.startswith("trainable.") for n in tr.details["parameters"].values())


def test_embedding_mlp_verified(mlp):
    ex, _, m = mlp
    _assert_verified(m)
    assert [i.dtype for i in m.artifact("model_executorch").inputs] == ["int64", "int64"]
    assert [i.name for i in m.artifact("model_executorch_train").inputs] == ["user", "item", "y"]


def test_bundle_programs_load_and_run(cnn):
    from executorch.runtime import Runtime

    ex, out, _ = cnn
    m = load_manifest(out)  # sha256-verified
    tr = Runtime.get().load_program(out / m.artifact("model_executorch_train").path)
    assert {"forward", "__et_training_fqn_forward"} <= set(tr.method_names)
    runner = open_inference("executorch", out / m.artifact("model_executorch").path,
                            m.artifact("model_executorch"), threads=2)
    x = torch.rand(1, 1, 28, 28)
    got = runner.infer({"x": x.numpy().astype(np.float64)})  # cast to the artifact's dtype
    with torch.no_grad():
        ref = ex.model.eval()(x)
    assert np.max(np.abs(got[0] - ref.numpy())) <= TOL


def test_set_weights_reaches_the_runtime(cnn):
    """set_weights -> get_weights round-trips, and the next step's loss and gradients are
    PyTorch's at those weights (so the runtime really uses them)."""
    ex, out, _ = cnn
    m = load_manifest(out)
    art = m.artifact("model_executorch_train")
    runner = open_training("executorch", out / art.path, art, threads=1)
    assert runner.gradients() is None
    g = torch.Generator().manual_seed(7)
    model = copy.deepcopy(ex.model)
    params = dict(model.named_parameters())
    new = {n: (params[n].detach() + 0.05 * torch.randn(params[n].shape, generator=g)).numpy()
           for n in ex.spec.trainable_names(model)}
    runner.set_weights(new)
    back = runner.get_weights()
    assert set(back) == set(new)
    for n, w in new.items():
        np.testing.assert_array_equal(back[n], w)

    with torch.no_grad():
        for n, w in new.items():
            params[n].copy_(torch.from_numpy(w))
    model.eval()
    batch = ex.batches[0]
    loss = loss_fn(ex.spec.loss)(model(batch["x"]), batch["y"])
    loss.backward()
    assert abs(runner.train_step(_batch_np(batch)) - loss.item()) <= TOL * max(1.0, abs(loss.item()))
    grads = runner.gradients()
    for n in new:
        ref = params[n].grad.numpy()
        assert np.max(np.abs(grads[n] - ref)) <= TOL * max(1.0, float(np.max(np.abs(ref)))), n
    with pytest.raises(BundleError, match="not trainable"):
        runner.set_weights({"frozen.model.classifier.weight": np.zeros((10, 32), np.float32)})


def _pytorch_running_stats(model: nn.Module, spec: TrainingSpec, batches, steps: int) -> dict[str, np.ndarray]:
    ref = PyTorchTraining(model, spec)
    for i in range(steps):
        ref.train_step({k: v.numpy() for k, v in batches[i % len(batches)].items()})
    return {n: b.numpy() for n, b in ref.model.named_buffers() if "running_" in n}


def test_bn_train_with_external_weights(tmp_path):
    """bn="train" (batch statistics, running stats updated on device) written as .pte + .ptd."""
    ex, spec, art = export_bn_train_external(tmp_path)
    folder = tmp_path / art.path
    assert folder.is_dir() and sorted(p.suffix for p in folder.iterdir()) == [".ptd", ".pte"]
    _, _, files = describe_files(tmp_path, art.path)
    assert len(files) == 2
    # trainable weights live in the .ptd, not the program
    assert (folder / art.details["data"]).stat().st_size > sum(
        p.numel() * 4 for n, p in ex.model.named_parameters() if n.startswith("trainable."))

    runner = open_training("executorch", folder, art, threads=1)
    v = validate_training(ex.model, spec, runner, ex.batches, steps=10)
    assert v.passed, v.reason
    assert v.max_rel_loss_diff <= TOL and v.max_rel_weight_diff <= TOL
    # running statistics were initialised from the model and updated like PyTorch's
    ref = _pytorch_running_stats(ex.model, spec, ex.batches, 10)
    got = runner.buffers()
    assert set(got) == {n for n in ref if n.startswith("trainable.")}
    for n, r in got.items():
        assert np.max(np.abs(r - ref[n])) <= TOL, n


def test_unsupported_op_names_the_op(tmp_path):
    class Det(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.det(x)

    job = ExportJob(Det(), (torch.rand(1, 3, 3),), ["x"], ["det"], tmp_path, "det")
    with pytest.raises(ExportError, match=r"aten\._linalg_det") as e:
        ExecuTorchExporter().export_inference(job)
    assert "\n" not in str(e.value)
