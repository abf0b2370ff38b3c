"""Builders for the neural-network ops: convolution, pooling, normalisation, matmuls, softmax,
embedding and activations. Images are computed channels-last (NHWC), what TFLite's kernels
take; weights arrive in the layout the WeightStore chose (conv weights HWIO)."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf
import torch

from exporters.tflite import grads
from exporters.tflite.context import Ctx, Unsupported
from exporters.tflite.ops_tensor import _cast, elementwise, squeeze_val, unsqueeze_val
from exporters.tflite.values import Val, channels_last, identity

A = torch.ops.aten
OPS: dict[Any, Callable[..., Any]] = {}
HWIO = (3, 2, 0, 1)  # the Val layout of an OIHW weight stored as (kh, kw, in, out)
NHWC = channels_last(4)


def op(*targets: Any) -> Callable:
    def register(fn: Callable) -> Callable:
        for t in targets:
            OPS[t] = fn
        return fn
    return register


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = list(v)
    return (int(v[0]), int(v[0] if len(v) == 1 else v[1]))


# ---- convolution ---------------------------------------------------------------------------------

@op(A.convolution.default)
def convolution(ctx: Ctx, x: Val, w: Val, b: Val | None, stride: Sequence[int], padding: Sequence[int],
                dilation: Sequence[int], transposed: bool, output_padding: Sequence[int], groups: int) -> Val:
    if transposed:
        raise Unsupported("transposed convolution (ConvTranspose) has no builtin-only translation here")
    if x.rank == 3:  # conv1d: a conv2d over a height-1 image
        y = convolution(ctx, unsqueeze_val(x, 2), unsqueeze_val(w, 2), b, [1, *stride], [0, *padding],
                        [1, *dilation], False, [0, 0], groups)
        return squeeze_val(y, [2])
    if x.rank != 4:
        raise Unsupported(f"{x.rank - 2}-d convolution (1-d and 2-d only)")
    stride, pad, dil = _pair(stride), _pair(padding), _pair(dilation)
    cin, cout = x.shape[1], w.shape[0]
    t, kernel = x.channels_last(), w.as_layout(HWIO)  # kernel: (kh, kw, cin / groups, cout)
    if groups == 1:
        y = grads.conv2d(t, kernel, stride, pad, dil, depthwise=False)
    elif groups == cin:  # depthwise, with a channel multiplier when cout > cin
        kh, kw = kernel.shape[0], kernel.shape[1]
        y = grads.conv2d(t, tf.reshape(kernel, [kh, kw, cin, cout // cin]), stride, pad, dil, depthwise=True)
    else:  # general groups: one dense conv per group (TF's grouped conv has no builtin gradient)
        parts = zip(tf.split(t, groups, axis=3), tf.split(kernel, groups, axis=3))
        y = tf.concat([grads.conv2d(xg, wg, stride, pad, dil, depthwise=False) for xg, wg in parts], axis=3)
    if b is not None:
        y = y + b.torch()
    return Val(y, NHWC)


# ---- pooling -------------------------------------------------------------------------------------

def _pool_geometry(size: int, k: int, s: int, p: int, ceil: bool) -> tuple[int, int]:
    """PyTorch's pooling output size, and the extra bottom/right padding a VALID TF pool needs
    to produce it (ceil_mode)."""
    out = (size + 2 * p - k + ((s - 1) if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out, max(0, (out - 1) * s + k - (size + 2 * p))


def _pool_input(ctx: Ctx, x: Val, kernel: Any, stride: Any, padding: Any, ceil: bool,
                fill: float) -> tuple[tf.Tensor, tuple[int, int], tuple[int, int], tuple[int, int], list[int]]:
    if x.rank != 4:
        raise Unsupported("pooling of an unbatched (C, H, W) input")
    k = _pair(kernel)
    s = _pair(stride) if stride else k
    p = _pair(padding)
    (oh, eh), (ow, ew) = (_pool_geometry(x.shape[2 + i], k[i], s[i], p[i], ceil) for i in range(2))
    t = x.channels_last()
    if any((p[0], p[1], eh, ew)):
        t = grads.pad(t, [[0, 0], [p[0], p[0] + eh], [p[1], p[1] + ew], [0, 0]], fill)
    return t, k, s, p, [oh, ow]


@op(A.max_pool2d_with_indices.default)
def max_pool2d(ctx: Ctx, x: Val, kernel: Any, stride: Any = (), padding: Any = 0, dilation: Any = 1,
               ceil_mode: bool = False) -> tuple[Val, None]:
    if _pair(dilation) != (1, 1):
        raise Unsupported(f"max pooling with dilation {list(_pair(dilation))}")
    t, k, s, _, _ = _pool_input(ctx, x, kernel, stride, padding, ceil_mode, float("-inf"))
    return Val(grads.max_pool2d(t, k, s), NHWC), None


@op(A.avg_pool2d.default)
def avg_pool2d(ctx: Ctx, x: Val, kernel: Any, stride: Any = (), padding: Any = 0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None) -> Val:
    t, k, s, p, out = _pool_input(ctx, x, kernel, stride, padding, ceil_mode, 0.0)
    y = grads.avg_pool2d(t, k, s)  # sums / (kh * kw)
    divisor = _avg_divisors([x.shape[2], x.shape[3]], k, s, p, out, count_include_pad, divisor_override)
    if not np.all(divisor == k[0] * k[1]):
        y = y * tf.constant((k[0] * k[1] / divisor)[None, :, :, None].astype(np.float32))
    return Val(y, NHWC)


def _avg_divisors(size: list[int], k: tuple[int, int], s: tuple[int, int], p: tuple[int, int], out: list[int],
                  count_include_pad: bool, divisor_override: int | None) -> np.ndarray:
    """PyTorch's divisor per output position: the window clipped to the padded input (or to the
    input itself without count_include_pad), or the override."""
    if divisor_override:
        return np.full(out, float(divisor_override))
    spans = []
    for i in range(2):
        start = np.arange(out[i]) * s[i] - p[i]
        end = np.minimum(start + k[i], size[i] + p[i])
        padded = end - start
        real = np.minimum(end, size[i]) - np.maximum(start, 0)
        spans.append(padded if count_include_pad else real)
    return np.outer(spans[0], spans[1]).astype(np.float64)


@op(A._adaptive_avg_pool2d.default)
def adaptive_avg_pool2d(ctx: Ctx, x: Val, output_size: Sequence[int]) -> Val:
    oh, ow = _pair(output_size)
    h, w = x.shape[2], x.shape[3]
    if (oh, ow) == (1, 1):
        return Val(tf.reduce_mean(x.channels_last(), axis=[1, 2], keepdims=True), NHWC)
    if h % oh == 0 and w % ow == 0:
        k = (h // oh, w // ow)
        return Val(grads.avg_pool2d(x.channels_last(), k, k), NHWC)
    # uneven windows: y = P_h @ x @ P_w^T per channel, with PyTorch's window bounds
    rows = tf.constant(_adaptive_matrix(h, oh))
    cols = tf.constant(_adaptive_matrix(w, ow).T)
    return Val(tf.matmul(tf.matmul(rows, x.torch()), cols))


def _adaptive_matrix(size: int, out: int) -> np.ndarray:
    m = np.zeros((out, size), np.float32)
    for i in range(out):
        start, end = (i * size) // out, -((-(i + 1) * size) // out)
        m[i, start:end] = 1.0 / (end - start)
    return m


# ---- normalisation -------------------------------------------------------------------------------

@op(A._native_batch_norm_legit_no_training.default)
def batch_norm(ctx: Ctx, x: Val, w: Val | None, b: Val | None, mean: Val, var: Val, momentum: float,
               eps: float) -> tuple[Val, None, None]:
    layout = channels_last(x.rank)
    t = x.as_layout(layout)  # channels last: per-channel vectors broadcast along the last axis
    weight = ctx.source(1)
    module = weight.rsplit(".", 1)[0] if weight else None
    if ctx.train and module in ctx.batch_norm:
        xhat = _batch_statistics(ctx, t, eps, ctx.batch_norm[module])
        y = xhat if w is None else xhat * w.t + b.t
    else:
        # folded as PyTorch's CPU kernel does: x * (w / std) + (b - mean * w / std)
        scale = grads.rsqrt(var.t + eps)
        scale = scale if w is None else scale * w.t
        shift = -mean.t * scale if b is None else b.t - mean.t * scale
        y = t * scale + shift
    return Val(y, layout), None, None


def _batch_statistics(ctx: Ctx, t: tf.Tensor, eps: float, momentum: float) -> tf.Tensor:
    """PyTorch train-mode BatchNorm: normalise by the biased batch variance, update the running
    statistics (variables) with the unbiased one.

    The statistics are those of the data shifted by its first sample per channel. PyTorch's CPU
    kernel sums in float64; a float32 MEAN of a channel whose mean is large against its spread
    (common in trained nets) is off by up to ~1e-5 * |mean|, and x - mean carries that error,
    multiplied by |mean| / std once normalised: at mean/std 585 the weights were 9e-4 off
    PyTorch after the gate's 10 steps. Shifted values are of the order of the spread, so their
    float32 mean is accurate and x - mean is computed from them without cancellation (measured:
    within 3e-5 of PyTorch at mean/std 585 and 7e-5 at 5900).

    The means are taken one axis at a time: LiteRT's MEAN over N, H, W adds all 25,088 values of a
    batch-32 28x28 channel into one float32 sum, whose error (~5e-6 relative) moved a trained
    DC-CCL f_d's weights 1e-3 away from PyTorch in 10 steps; axis by axis no sum is longer than
    one axis (measured after: 2.7e-7)."""
    axes = list(range(t.shape.rank - 1))
    n = int(np.prod([t.shape[a] for a in axes]))
    shift = tf.stop_gradient(t[(slice(0, 1),) * len(axes)])  # any value near the mean does; no gradient
    centred = t - shift
    offset = _mean_by_axis(centred, axes)
    d = centred - offset  # x - mean
    var = tf.reshape(_mean_by_axis(d * d, axes), [-1])
    mean = tf.reshape(shift + offset, [-1])
    running_mean, running_var = ctx.state.variable(ctx.source(3)), ctx.state.variable(ctx.source(4))
    running_mean.assign((1.0 - momentum) * running_mean + momentum * mean)
    running_var.assign((1.0 - momentum) * running_var + momentum * var * (n / max(n - 1, 1)))
    return d * grads.rsqrt(var + eps)


def _mean_by_axis(t: tf.Tensor, axes: list[int]) -> tf.Tensor:
    """tf.reduce_mean(t, axes, keepdims=True), one axis at a time (equal blocks: exact)."""
    for a in sorted(axes, reverse=True):
        t = tf.reduce_mean(t, axis=a, keepdims=True)
    return t


@op(A.native_layer_norm.default)
def layer_norm(ctx: Ctx, x: Val, normalized_shape: Sequence[int], w: Val | None, b: Val | None,
               eps: float) -> tuple[Val, None, None]:
    axes = sorted(x.axis(d) for d in range(x.rank - len(normalized_shape), x.rank))
    mean = tf.reduce_mean(x.t, axis=axes, keepdims=True)
    d = x.t - mean
    var = tf.reduce_mean(d * d, axis=axes, keepdims=True)
    y = Val(d * grads.rsqrt(var + eps), x.layout)
    if w is not None:
        y = elementwise(ctx, tf.multiply, y, w)
    if b is not None:
        y = elementwise(ctx, tf.add, y, b)
    return y, None, None


# ---- matmuls and softmax -------------------------------------------------------------------------

def _matmul_operand(v: Val) -> tuple[tf.Tensor, bool]:
    """The operand and whether it is stored transposed (a permuted weight needs no TRANSPOSE:
    FULLY_CONNECTED and BATCH_MATMUL take it as is)."""
    swapped = (*identity(v.rank - 2), v.rank - 1, v.rank - 2)
    if v.layout == swapped:
        return v.t, True
    return v.torch(), False


def _matmul(a: Val, b: Val) -> tf.Tensor:
    (ta, fa), (tb, fb) = _matmul_operand(a), _matmul_operand(b)
    return tf.matmul(ta, tb, transpose_a=fa, transpose_b=fb)


@op(A.mm.default, A.bmm.default)
def mm(ctx: Ctx, a: Val, b: Val) -> Val:
    return Val(_matmul(a, b))


@op(A.addmm.default)
def addmm(ctx: Ctx, bias: Val, a: Val, b: Val, *, beta: float = 1, alpha: float = 1) -> Val:
    product = Val(_matmul(a, b) if alpha == 1 else _matmul(a, b) * alpha)
    return elementwise(ctx, lambda p, c: p + (c if beta == 1 else c * beta), product, bias)


@op(A._softmax.default)
def softmax(ctx: Ctx, x: Val, dim: int, half_to_float: bool = False) -> Val:
    return Val(tf.nn.softmax(x.t, axis=x.axis(dim)), x.layout)


@op(A._log_softmax.default)
def log_softmax(ctx: Ctx, x: Val, dim: int, half_to_float: bool = False) -> Val:
    return Val(tf.nn.log_softmax(x.t, axis=x.axis(dim)), x.layout)


# ---- embedding -----------------------------------------------------------------------------------

@op(A.embedding.default)
def embedding(ctx: Ctx, w: Val, ids: Val, padding_idx: int = -1, scale_grad_by_freq: bool = False,
              sparse: bool = False) -> Val:
    if scale_grad_by_freq and ctx.train:
        raise Unsupported("embedding gradients scaled by frequency (scale_grad_by_freq)")
    return Val(grads.embedding(w.torch(), ids.torch(), padding_idx if padding_idx >= 0 else None))


# ---- activations ---------------------------------------------------------------------------------

def activation(fn: Callable[..., tf.Tensor]) -> Callable[..., Val]:
    def build(ctx: Ctx, x: Val, *args: Any) -> Val:
        return Val(fn(_cast(x.t, tf.float32), *args), x.layout)
    return build


@op(A.hardtanh.default)
def hardtanh(ctx: Ctx, x: Val, min_val: float = -1.0, max_val: float = 1.0) -> Val:
    return Val(grads.clamp(x.t, min_val, max_val, inclusive=False), x.layout)


@op(A.clamp.default)
def clamp(ctx: Ctx, x: Val, min: float | None = None, max: float | None = None) -> Val:  # noqa: A002 - aten's names
    return Val(grads.clamp(_cast(x.t, ctx.out_dtype), min, max, inclusive=True), x.layout)


@op(A.gelu.default)
def gelu(ctx: Ctx, x: Val, *, approximate: str = "none") -> Val:
    return Val(grads.gelu(x.t, approximate == "tanh", fused=not ctx.train), x.layout)


OPS.update({
    A.relu.default: activation(grads.relu),
    A.hardswish.default: activation(grads.hardswish),
    A.hardsigmoid.default: activation(grads.hardsigmoid),
    A.sigmoid.default: activation(grads.sigmoid),
    A.silu.default: activation(grads.silu),
    A.tanh.default: activation(grads.tanh),
    A.leaky_relu.default: activation(lambda t, slope=0.01: grads.leaky_relu(t, slope)),
})
