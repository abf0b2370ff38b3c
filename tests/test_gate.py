"""The validation gate itself: it passes exact runtimes and refuses wrong ones.

Runtime-free checks use the PyTorch runner (a correct "runtime") and deliberately wrong variants
of it; tests/test_gate_formats.py perturbs real artifacts of each format.
"""
import copy

import pytest
import torch

from exporters.gate import validate_inference, validate_training
from exporters.reference import PyTorchInference, PyTorchTraining
from toolkit.models.examples import embedding_mlp, fused_cnn


class Offset(PyTorchInference):
    def infer(self, inputs):
        return [o + 2e-4 for o in super().infer(inputs)]


@pytest.mark.parametrize("make", [fused_cnn, embedding_mlp])
def test_inference_gate_passes_exact_and_refuses_offset(make):
    ex = make()
    sets = [dict(zip(ex.input_names, ex.inputs))]
    ok = validate_inference(ex.model, PyTorchInference(copy.deepcopy(ex.model)), sets, 1e-4)
    assert ok.passed and ok.checked and ok.max_abs_diff == 0.0
    bad = validate_inference(ex.model, Offset(copy.deepcopy(ex.model)), sets, 1e-4)
    assert not bad.passed and bad.max_abs_diff == pytest.approx(2e-4, rel=1e-3)
    assert "max |runtime - pytorch|" in bad.reason


class NaNOutputs(PyTorchInference):
    def infer(self, inputs):
        return [o * float("nan") for o in super().infer(inputs)]


def test_inference_gate_refuses_non_finite_outputs():
    """NaN compares false with everything: the gate must not read NaN outputs as a 0.0 difference."""
    ex = fused_cnn()
    v = validate_inference(ex.model, NaNOutputs(copy.deepcopy(ex.model)), [{"x": ex.inputs[0]}], 1e-4)
    assert not v.passed and "non-finite" in v.reason and v.max_abs_diff is None


def test_inference_gate_refuses_a_perturbed_weight():
    ex = fused_cnn()
    wrong = copy.deepcopy(ex.model)
    with torch.no_grad():
        wrong.frozen.model.classifier.bias[0] += 0.01  # a frozen part of the program
    v = validate_inference(ex.model, PyTorchInference(wrong), [{"x": ex.inputs[0]}], 1e-4)
    assert not v.passed and v.max_abs_diff > 1e-3


@pytest.mark.parametrize("make", [fused_cnn, embedding_mlp])
def test_training_gate_passes_the_same_program(make):
    ex = make()
    v = validate_training(ex.model, ex.spec, PyTorchTraining(ex.model, ex.spec), ex.batches, steps=10)
    assert v.passed and v.steps == 10 and v.max_rel_loss_diff == 0.0 and v.max_rel_weight_diff == 0.0
    assert len(v.loss_runtime) == 10 and v.loss_runtime[-1] < v.loss_runtime[0]


def test_training_gate_refuses_a_different_learning_rate():
    ex = fused_cnn()
    wrong = copy.deepcopy(ex.spec)
    wrong.lr *= 1.01
    v = validate_training(ex.model, ex.spec, PyTorchTraining(ex.model, wrong), ex.batches, steps=10)
    assert not v.passed and v.max_rel_weight_diff > 1e-4


def test_training_gate_refuses_a_perturbed_frozen_weight():
    ex = fused_cnn()
    wrong = copy.deepcopy(ex.model)
    with torch.no_grad():
        wrong.frozen.model.classifier.bias[:5] += 0.05  # g inside the training program
    v = validate_training(ex.model, ex.spec, PyTorchTraining(wrong, ex.spec), ex.batches, steps=10)
    assert not v.passed and v.max_rel_loss_diff > 1e-4


def test_training_gate_refuses_missing_weights():
    ex = embedding_mlp()

    class Forgetful(PyTorchTraining):
        def get_weights(self):
            w = super().get_weights()
            w.pop("item.weight")
            return w

    v = validate_training(ex.model, ex.spec, Forgetful(ex.model, ex.spec), ex.batches, steps=10)
    assert not v.passed and "item.weight" in v.reason


def test_training_gate_refuses_a_diverging_program():
    """Both sides NaN must not count as agreement."""
    ex = fused_cnn()
    spec = copy.deepcopy(ex.spec)
    spec.lr = 1e6
    v = validate_training(ex.model, spec, PyTorchTraining(ex.model, spec), ex.batches, steps=10)
    assert not v.passed and "diverged" in v.reason


class Wide(torch.nn.Module):
    """Outputs like ICIIA's classifier: a raw 1280-wide feature with values up to ~23 beside small logits."""

    def forward(self, x):
        feature = torch.linspace(-22.6, 22.6, 1280).expand(x.shape[0], 1280) + 0 * x.sum()
        return feature[:, :10] * 1e-3, feature


class AddToOutputs(PyTorchInference):
    def __init__(self, model, offset=0.0, relative=0.0):
        super().__init__(model)
        self.offset, self.relative = offset, relative

    def infer(self, inputs):
        return [o + self.offset + self.relative * abs(o) for o in super().infer(inputs)]


def _wide_gate(runner, rtol):
    sets = [{"x": torch.rand(1, 4)}]
    return validate_inference(Wide(), runner, sets, 1e-4, rtol=rtol)


def test_the_bound_scales_with_the_output():
    # float32 rounding grows with the value: 1.09e-4 on a feature element of 22.6 (LiteRT's measured
    # gap on ICIIA's classifier), 9.3e-6 on its logits. Over any fixed 1e-4, inside 1e-4 + 1e-5 * |x|.
    class Rounding(PyTorchInference):
        def infer(self, inputs):
            logits, feature = super().infer(inputs)
            return [logits + 9.3e-6, feature + feature * (1.09e-4 / 22.6)]
    assert not _wide_gate(Rounding(Wide()), rtol=0.0).passed
    v = _wide_gate(Rounding(Wide()), rtol=1e-5)
    assert v.passed and v.rtol == 1e-5 and v.tolerance == 1e-4 and v.max_abs_diff == pytest.approx(1.09e-4, rel=1e-2)  # float32 outputs
    # the same absolute gap is still wrong on the small logits alone: the bound is per element
    class SmallOnly(PyTorchInference):
        def infer(self, inputs):
            logits, feature = super().infer(inputs)
            return [logits + 1.09e-4, feature]
    v = _wide_gate(SmallOnly(Wide()), rtol=1e-5)
    assert not v.passed and "magnitude 0.0" in v.reason


@pytest.mark.parametrize("rtol", [0.0, 1e-5])
def test_a_relative_perturbation_of_1e_3_fails_whatever_the_rtol(rtol):
    v = _wide_gate(AddToOutputs(Wide(), relative=1e-3), rtol=rtol)
    assert not v.passed and v.max_abs_diff == pytest.approx(22.6e-3, rel=1e-3)


def test_nan_fails_with_a_relative_bound_too():
    ex = fused_cnn()
    v = validate_inference(ex.model, NaNOutputs(copy.deepcopy(ex.model)), [{"x": ex.inputs[0]}], 1e-4, rtol=1e-5)
    assert not v.passed and "non-finite" in v.reason
