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
