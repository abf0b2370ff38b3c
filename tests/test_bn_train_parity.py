"""bn="train" on ill-conditioned channels: every format's training program must match PyTorch.

A trained network has BatchNorm inputs whose channel mean is hundreds of times their spread
(near-constant channels). PyTorch's CPU kernel accumulates the batch statistics in float64; a
float32 MEAN of such a channel is off by ~1e-5 * |mean|, and (x - mean) / std multiplies that
by |mean| / std, so a program computing the statistics naively drifts from PyTorch (weights
~1e-3 off after the gate's 10 steps, measured at mean/std 585) and the gate refuses it. The
model here makes half of the first conv's channels so: small weights, a large bias.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from exporters.api import export_model
from exporters.gate import TRAINING_STEPS
from exporters.reference import PyTorchTraining
from exporters.runner import open_training
from exporters.spec import ALL, TrainingSpec

OFFSET, SPREAD = 10.0, 0.1  # channels 0-3 of the first conv: mean ~10, std ~0.017
RUNTIMES = {"tflite": "ai_edge_litert", "onnx": "onnxruntime", "executorch": "executorch"}


class IllConditioned(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.bn2 = nn.BatchNorm2d(8)
        self.act = nn.Hardswish()
        self.fc = nn.Linear(8, 10)
        with torch.no_grad():
            self.conv.weight[:4] *= SPREAD
            self.conv.bias[:4] += OFFSET

    def forward(self, x):
        h = self.act(self.bn(self.conv(x)))
        h = self.act(self.bn2(self.pw(h)))
        return self.fc(h.mean((2, 3)))


def _example(batch: int = 32):
    torch.manual_seed(0)
    model = IllConditioned().eval()
    g = torch.Generator().manual_seed(1)
    batches = [{"x": torch.rand(batch, 3, 16, 16, generator=g), "y": torch.randint(0, 10, (batch,), generator=g)}
               for _ in range(4)]
    spec = TrainingSpec(trainable=[ALL], loss="cross_entropy", lr=0.05, momentum=0.9, bn="train", batch_size=batch)
    return model, spec, batches


def test_the_model_is_ill_conditioned():
    model, _, batches = _example()
    with torch.no_grad():
        h = model.conv(batches[0]["x"])
    ratio = (h.mean((0, 2, 3)).abs() / h.std((0, 2, 3))).max().item()
    assert ratio > 300, ratio  # what makes a float32 mean visibly wrong


def _export(fmt: str, tmp_path):
    pytest.importorskip(RUNTIMES[fmt])
    model, spec, batches = _example()
    manifest = export_model(model, (batches[0]["x"][:1],), [fmt], tmp_path / "b", training=spec,
                            train_batches=batches, log=lambda *a: None)  # raises if the gate refuses
    return model, spec, batches, next(a for a in manifest.artifacts if a.kind == "training")


@pytest.mark.parametrize("fmt", ["tflite", "onnx", "executorch"])
def test_batch_statistics_training_passes_the_gate(fmt, tmp_path):
    _, _, _, art = _export(fmt, tmp_path)
    v = art.validation
    assert v.passed and v.steps == TRAINING_STEPS and v.max_rel_weight_diff <= 1e-4


def test_litert_running_statistics_match_pytorch(tmp_path):
    """The running statistics (not compared by the gate): momentum update, unbiased variance."""
    model, spec, batches, art = _export("tflite", tmp_path)
    runner = open_training("tflite", tmp_path / "b" / art.path, art)
    reference = PyTorchTraining(model, spec)
    for i in range(3):
        batch = {k: v.numpy() for k, v in batches[i].items()}
        runner.train_step(batch)
        reference.train_step(batch)
    got = runner.get_weights()
    buffers = dict(reference.model.named_buffers())
    for m in ("bn", "bn2"):
        for stat in ("running_mean", "running_var"):
            ref = buffers[f"{m}.{stat}"].numpy()
            np.testing.assert_allclose(got[f"{m}.{stat}"], ref, rtol=1e-4, atol=1e-6, err_msg=f"{m}.{stat}")
