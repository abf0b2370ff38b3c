"""TFLite op translation, op by op: each small model exercises a group of Core ATen ops and must
pass the gate (inference within 1e-4; a few SGD steps whose losses and weights match PyTorch),
with a builtin-only training program (the converter refuses anything else), and its `infer`
signature must take another batch size than the one it was exported with.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

from exporters.api import export_model  # noqa: E402
from exporters.runner import open_training  # noqa: E402
from exporters.spec import ALL, TrainingSpec  # noqa: E402

STEPS = 3


class Convs(nn.Module):
    """Grouped (general, depthwise with multiplier), strided, unequal strides, dilated, 1-d."""

    def __init__(self):
        super().__init__()
        self.grouped = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
        self.mult = nn.Conv2d(4, 8, 3, stride=(1, 2), padding=1, groups=4)
        self.dilated = nn.Conv2d(4, 3, 3, padding=2, dilation=2)
        self.dilated_strided = nn.Conv2d(4, 3, 3, stride=2, padding=1, dilation=2, bias=False)
        self.depthwise_dilated = nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=4)
        self.conv1d = nn.Conv1d(4, 2, 3, padding=1)

    def forward(self, x):
        parts = [self.grouped(x), self.mult(x), self.dilated(x), self.dilated_strided(x), self.depthwise_dilated(x)]
        seq = self.conv1d(x.mean(2))
        return torch.cat([p.flatten(1) for p in parts] + [seq.flatten(1)], 1)


class Padding(nn.Module):
    """ZeroPad2d's asymmetric zero padding before a conv, F.pad with a value, on NHWC activations."""

    def __init__(self):
        super().__init__()
        self.pad = nn.ZeroPad2d((0, 1, 2, 0))
        self.conv = nn.Conv2d(3, 4, 3, stride=2)

    def forward(self, x):
        y = self.conv(self.pad(x))
        return F.pad(y, (1, 1, 0, 2), value=0.5).flatten(1)


class Pooling(nn.Module):
    """Max pooling (padding, ceil mode), average pooling (both count_include_pad, ceil mode,
    divisor override), adaptive average pooling to even and uneven windows."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        h = self.conv(x)
        parts = [F.max_pool2d(h, 3, 2, 1, ceil_mode=True), F.max_pool2d(h, 2),
                 F.avg_pool2d(h, 3, 2, 1), F.avg_pool2d(h, 3, 2, 1, ceil_mode=True, count_include_pad=False),
                 F.avg_pool2d(h, 2, divisor_override=3), F.adaptive_avg_pool2d(h, (3, 2)),
                 F.adaptive_avg_pool2d(h, 3), F.adaptive_avg_pool2d(h, 1)]
        return torch.cat([p.flatten(1) for p in parts], 1)


class Activations(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        h = self.fc(x) * 4
        acts = [F.relu(h), F.relu6(h), F.hardtanh(h, -2.0, 2.5), h.clamp(-1.0, 3.0), h.clamp(min=0.5),
                F.gelu(h), F.gelu(h, approximate="tanh"), F.silu(h), torch.tanh(h), torch.sigmoid(h),
                F.leaky_relu(h, 0.1), F.hardswish(h), F.hardsigmoid(h), torch.erf(h)]
        return torch.cat(acts, 1)


class Elementwise(nn.Module):
    """Broadcasting arithmetic with scalars, vectors and NHWC activations; unary math."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.scale = nn.Parameter(torch.rand(4, 1, 1) + 0.5)
        self.shift = nn.Parameter(torch.rand(5))

    def forward(self, x):
        h = self.conv(x)  # NHWC inside
        a = (h * self.scale - 1.5) / (self.scale + 1) + self.shift  # channel and last-dim broadcasts
        b = 2 - a
        pos = a.abs() + 0.1
        return torch.cat([a.flatten(1), b.flatten(1), pos.sqrt().flatten(1), pos.rsqrt().flatten(1),
                          pos.log().flatten(1), (-a).exp().flatten(1), pos.reciprocal().flatten(1),
                          a.pow(2).flatten(1), pos.pow(1.5).flatten(1), torch.maximum(a, b).flatten(1)], 1)


class Reductions(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        h = self.conv(x)
        return torch.cat([h.mean((2, 3)), h.sum((1, 3)), h.amax((2, 3)), h.amax(1).flatten(1),
                          h.var((2, 3)), h.mean(-1, keepdim=True).flatten(1), h.max(dim=2).values.flatten(1)], 1)


class Shapes(nn.Module):
    """view/reshape, permute/transpose, flatten, cat, slice (steps), select, unsqueeze, squeeze,
    expand, chunk/split, repeat."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 12)

    def forward(self, x):
        h = self.fc(x).view(x.shape[0], 3, 4)
        t = h.transpose(1, 2)  # (N, 4, 3)
        a, b = torch.chunk(t, 2, dim=1)
        c = h[:, 1:, ::2] * h[:, 0].unsqueeze(1)[:, :, :2]
        d = torch.split(h, [1, 2], dim=1)[1].permute(0, 2, 1).reshape(x.shape[0], -1)
        e = h[:, :1].expand(-1, 3, 4) + h.unsqueeze(1).squeeze(1)
        f = h[:, -1:, 1:3].repeat(1, 2, 2)
        return torch.cat([(a * b).flatten(1), c.flatten(1), d, e.flatten(1), f.flatten(1), t[:, 2]], 1)


class Matmuls(nn.Module):
    """Linear on 3-d input, matmul/bmm with transposed operands, softmax and log-softmax on
    several dims."""

    def __init__(self):
        super().__init__()
        self.q = nn.Linear(8, 8)
        self.k = nn.Linear(8, 8, bias=False)

    def forward(self, x):  # (N, T, 8)
        q, k = self.q(x), self.k(x)
        scores = q @ k.transpose(-1, -2) / 8 ** 0.5
        att = torch.softmax(scores, -1) @ x
        other = torch.bmm(F.log_softmax(scores, dim=1), k)
        return (att + other).mean(1)


class NormsAndAttention(nn.Module):
    """nn.MultiheadAttention (eq/any/logical_not/where/full_like in its decomposition), LayerNorm,
    GELU MLP, dropout in eval."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, dropout=0.1, batch_first=True)
        self.norm = nn.LayerNorm(8)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Dropout(0.1), nn.Linear(16, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        a, _ = self.attn(x, x, x, need_weights=False)
        h = self.norm(x + a)
        return self.head((h + self.mlp(h)).mean(1))


class Recurrent(nn.Module):
    """LSTM and GRU: torch.export unrolls them into addmm, sigmoid, tanh, split and slices."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 5, batch_first=True)
        self.gru = nn.GRU(5, 3, batch_first=True)

    def forward(self, x):  # (N, T, 4)
        return self.gru(self.lstm(x)[0])[0][:, -1]


class BatchNorms(nn.Module):
    """BatchNorm2d and BatchNorm1d (frozen statistics, or batch statistics with bn='train')."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)
        self.bn1 = nn.BatchNorm1d(5, momentum=0.3)
        for m in (self.bn, self.bn1):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        return self.bn1(self.fc(F.relu(self.bn(self.conv(x))).mean((2, 3))))


class Embeddings(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4, padding_idx=0)
        self.fc = nn.Linear(12, 2)

    def forward(self, ids):  # (N, 3) int64
        return self.fc(self.emb(ids).flatten(1))


def _images(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.rand(n, 3, 9, 9, generator=g)


CASES = {
    "convs": (Convs, lambda n, g: torch.rand(n, 4, 9, 10, generator=g)),
    "padding": (Padding, _images),
    "pooling": (Pooling, lambda n, g: torch.rand(n, 3, 9, 8, generator=g)),
    "activations": (Activations, lambda n, g: torch.randn(n, 6, generator=g)),
    "elementwise": (Elementwise, lambda n, g: torch.rand(n, 3, 4, 5, generator=g)),
    "reductions": (Reductions, _images),
    "shapes": (Shapes, lambda n, g: torch.randn(n, 6, generator=g)),
    "matmuls": (Matmuls, lambda n, g: torch.randn(n, 5, 8, generator=g)),
    "attention": (NormsAndAttention, lambda n, g: torch.randn(n, 5, 8, generator=g)),
    "recurrent": (Recurrent, lambda n, g: torch.randn(n, 3, 4, generator=g)),
    "batch_norm": (BatchNorms, _images),
    "embedding": (Embeddings, lambda n, g: torch.randint(0, 10, (n, 3), generator=g)),
}


def _export(model: nn.Module, make, tmp_path, bn: str = "frozen", batch: int = 4):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        out = model(make(batch, g))
    batches = [{"x": make(batch, g), "y": torch.randn(out.shape, generator=g)} for _ in range(2)]
    spec = TrainingSpec(trainable=[ALL], loss="mse", lr=0.05, momentum=0.9, weight_decay=1e-3, bn=bn)
    return export_model(model, (make(1, g),), ["tflite"], tmp_path / "b", training=spec, train_batches=batches,
                        steps=STEPS, log=lambda *a: None)


def _assert_passed(manifest) -> None:
    for a in manifest.artifacts:
        v = a.validation
        assert v.checked and v.passed, v.reason
        if a.kind == "inference":
            assert v.max_abs_diff <= 1e-4
        else:
            assert v.steps == STEPS and v.max_rel_loss_diff <= 1e-4 and v.max_rel_weight_diff <= 1e-4


@pytest.mark.parametrize("case", list(CASES))
def test_op_group_matches_pytorch(case, tmp_path):
    build, make = CASES[case]
    torch.manual_seed(0)
    model = build().eval()
    manifest = _export(model, make, tmp_path)
    _assert_passed(manifest)
    # the training artifact's infer signature takes any batch (here 3, exported at 4)
    tr = next(a for a in manifest.artifacts if a.kind == "training")
    runner = open_training("tflite", tmp_path / "b" / tr.path, tr)
    x = make(3, torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(runner.infer({"x": x.numpy()})[0], ref, atol=1e-4, rtol=0)


def test_batch_statistics_update_running_stats(tmp_path):
    torch.manual_seed(0)
    manifest = _export(BatchNorms().eval(), _images, tmp_path, bn="train")
    _assert_passed(manifest)
    tr = next(a for a in manifest.artifacts if a.kind == "training")
    kinds = {w["name"]: w["kind"] for w in tr.details["weights"]}
    assert {kinds[f"{m}.running_{s}"] for m in ("bn", "bn1") for s in ("mean", "var")} == {"buffer"}
