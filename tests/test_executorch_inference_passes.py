"""The inference rewrites that keep ops on ExecuTorch's XNNPACK delegate (LayerNorm as pooling,
identity expands dropped, leading unsqueezes and selects as views): the ICIIA module lowers into
one delegated piece and still matches PyTorch through the gate."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import exporters
from exporters.executorch.inference_passes import _layer_norm_as_pooling
from toolkit.methods.iciia.model import ICIIA, StreamingClassifier


def test_layer_norm_as_pooling_matches_layer_norm():
    torch.manual_seed(0)
    norm = nn.LayerNorm(64).eval()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(3, 5, 64) * 4 + 2
    got = _layer_norm_as_pooling(x, [64], norm.weight, norm.bias, norm.eps)
    assert got.shape == x.shape
    assert torch.allclose(got, norm(x), atol=1e-5, rtol=1e-5)
    # a multi-dim normalized shape falls back to PyTorch's own op
    assert torch.allclose(_layer_norm_as_pooling(x, [5, 64]), nn.functional.layer_norm(x, [5, 64]))


class _Shapes(nn.Module):
    """A leading unsqueeze, a select and a batched product (with its expand) in one program."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = x.reshape(6, 4, 2).transpose(0, 1)  # (4, T, 2)
        y = torch.matmul(groups, self.w)  # batched: torch writes an expand to the same shape first
        return (y + 1.0)[:, 0].unsqueeze(0)  # the first token of each group, with a leading dim


@pytest.fixture(scope="module")
def iciia_bundle(tmp_path_factory):
    torch.manual_seed(0)
    model = StreamingClassifier(nn.Identity(), ICIIA(dim=64, num_classes=10, layers=1, heads=4, partitions=8)).eval()
    inputs = (torch.rand(1, 64), torch.rand(7, 64), torch.tensor([1.0, 1, 1, 0, 0, 0, 0]))
    out = tmp_path_factory.mktemp("passes") / "bundle"
    m = exporters.export_model(model, inputs, formats=["executorch"], out_dir=out, input_names=["x", "history", "mask"],
                               output_names=["logits", "feature", "attended"], log=lambda *a: None)
    return m


def test_iciia_module_is_one_delegated_piece_and_verified(iciia_bundle):
    (art,) = iciia_bundle.artifacts
    assert art.validation.passed and art.validation.max_abs_diff <= 1e-4
    assert art.details["portable_ops"] == [], art.details["portable_ops"]


def test_unsqueeze_select_and_expand_stay_delegated(tmp_path):
    torch.manual_seed(0)
    model = _Shapes().eval()
    m = exporters.export_model(model, (torch.rand(6, 8),), formats=["executorch"], out_dir=tmp_path / "b",
                               input_names=["x"], output_names=["y"], log=lambda *a: None)
    (art,) = m.artifacts
    assert art.validation.passed, art.validation.reason
    assert art.details["portable_ops"] == [], art.details["portable_ops"]
    from exporters.runner import open_inference

    x = np.random.default_rng(1).random((6, 8), dtype=np.float32)
    (got,) = open_inference("executorch", tmp_path / "b" / art.path, art).infer({"x": x})
    with torch.no_grad():
        assert np.allclose(got, model(torch.from_numpy(x)).numpy(), atol=1e-5)
