"""Trainable convolutions rewritten as matrix products before an ExecuTorch training export.

Why: a conv whose weight trains cannot go to XNNPACK (partition.py), so it runs on ExecuTorch's
portable `convolution` / `convolution_backward` kernels, which are plain loops. On DC-CCL's device
step (batch 32, 1 thread, ETDump) a 1x1 conv took 7.7 ms forward and 8.7 ms backward, and the
3x3 stem on the input image 9.8 + 15.9 ms. Two rewrites give the same arithmetic (up to float
summation order; the gate checks it against PyTorch's own convolution) on kernels that are fast:

- 1x1 convolutions (stride 1, no padding, groups 1) as one matrix product per sample: forward and
  both gradients become `bmm`/`mm` on ExecuTorch's optimized (BLAS) kernels;
- convolutions whose input needs no gradient (a first layer fed by the image) as im2col + matrix
  product: the padded input's k*k shifted slices depend on the input only, so XNNPACK computes
  them (partition.py), and the weight gradient is one matrix product. Not used where the input
  needs a gradient: the gradient of those slices would be a negative pad, which ExecuTorch's
  `constant_pad_nd` kernel refuses, and scatter-adds that cost more than they save.

Replacements keep the conv's own `weight` and `bias` Parameters under the same module path, so
parameter names, optimizer state and the manifest do not change. Measured on DC-CCL's device step
at batch 32: 56.6 ms per step -> 27.0 ms, same loss to the last digit.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class PointwiseConv(nn.Module):
    """A 1x1 conv (stride 1, no padding, groups 1) as a matrix product."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight = conv.weight
        self.bias = conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        out = torch.matmul(self.weight.reshape(self.weight.shape[0], c), x.reshape(b, c, h * w))
        out = out.reshape(b, -1, h, w)
        return out if self.bias is None else out + self.bias.reshape(1, -1, 1, 1)


class Im2colConv(nn.Module):
    """A groups-1 conv whose input needs no gradient, as shifted slices + a matrix product."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight = conv.weight
        self.bias = conv.bias
        self.kernel, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        ph, pw = self.padding
        x = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
        b, c, h, w = x.shape
        ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
        windows = [x[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
                   for i in range(kh) for j in range(kw)]
        # rows ordered (channel, kernel row, kernel column), as the weight flattens
        cols = torch.stack(windows, dim=2).reshape(b, c * kh * kw, ho * wo)
        out = torch.matmul(self.weight.reshape(self.weight.shape[0], -1), cols).reshape(b, -1, ho, wo)
        return out if self.bias is None else out + self.bias.reshape(1, -1, 1, 1)


def _plain(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.groups == 1 and conv.padding_mode == "zeros"
            and isinstance(conv.padding, tuple) and conv.weight.requires_grad)


def _pointwise(conv: nn.Conv2d) -> bool:
    return conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0)


def rewrite_trainable_convs(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> dict[str, int]:
    """Swap, in place, the trainable convs the rewrites above apply to; returns how many of each.
    Which convs see an input needing no gradient is observed on one forward pass of a copy (a
    train-mode BatchNorm would update the model's own running statistics)."""
    convs = {name: m for name, m in model.named_modules() if _plain(m)}
    input_needs_grad: dict[str, bool] = {}
    probe = copy.deepcopy(model)
    for name in convs:
        probe.get_submodule(name).register_forward_pre_hook(
            lambda _, args, n=name: input_needs_grad.__setitem__(n, args[0].requires_grad))
    with torch.enable_grad():
        probe(*example_inputs)
    counts = {"pointwise_matmul": 0, "input_im2col": 0}
    for name, conv in convs.items():
        if _pointwise(conv):
            replacement: nn.Module = PointwiseConv(conv)
            counts["pointwise_matmul"] += 1
        elif not input_needs_grad.get(name, True):
            replacement = Im2colConv(conv)
            counts["input_im2col"] += 1
        else:
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, replacement)
    return counts
