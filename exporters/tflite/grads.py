"""Differentiable TF primitives whose gradients are built from TFLite builtin ops only.

TF's own gradients of these ops (ReluGrad, Relu6Grad, SigmoidGrad, TanhGrad, RsqrtGrad,
SqrtGrad, Conv2DBackpropFilter, DepthwiseConv2dNativeBackprop*, MaxPoolGrad, AvgPoolGrad,
StridedSliceGrad, InvertPermutation, the Erf inside GELU, UnsortedSegmentSum for gather,
SparseSoftmaxCrossEntropyWithLogits) have no TFLite builtin, so a training graph using them
needs the Flex delegate, which the stock LiteRT interpreter lacks. Each primitive here pairs the
usual forward op with a hand-written gradient, as PyTorch's backward defines it:

- activations: masks and selects instead of *Grad ops; erf as a rational polynomial;
- conv input gradient: TRANSPOSE_CONV (dense) or zero insertion + DEPTHWISE_CONV_2D with the
  flipped kernel (depthwise: TFLite has no grouped transpose conv); dilation by a kernel with
  zeros inserted;
- conv weight gradient: itself one convolution (CONV_2D, or DEPTHWISE_CONV_2D with the batch
  folded into channels) of the input with the output gradient as kernel, the batch reduced;
- pooling: max pooling routes the gradient to the first maximum of each window (PyTorch's
  tie rule) through strided windows; average pooling is a depthwise transpose conv of ones;
- strided slices: zero insertion and PAD;
- embedding gradient: one-hot matmul (STABLEHLO_SCATTER cannot add into a table);
- losses: the analytic gradient of the mean loss.
Gradients run in the training program only, where every shape is static.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import tensorflow as tf


def _zero(g: tf.Tensor) -> tf.Tensor:
    return tf.zeros_like(g)


def relu(x: tf.Tensor) -> tf.Tensor:
    @tf.custom_gradient
    def op(x):
        def grad(g):
            return tf.where(x > 0, g, _zero(g))
        return tf.nn.relu(x), grad
    return op(x)


def clamp(x: tf.Tensor, lo: float | None, hi: float | None, inclusive: bool) -> tf.Tensor:
    """min(max(x, lo), hi). PyTorch's gradient passes where lo <= x <= hi for clamp and strictly
    inside for hardtanh (relu6), hence `inclusive`. (0, 6) and (0, None) forward as RELU6/RELU."""
    @tf.custom_gradient
    def op(x):
        if (lo, hi) == (0, 6):
            y = tf.nn.relu6(x)
        elif lo == 0 and hi is None:
            y = tf.nn.relu(x)
        else:
            y = x if lo is None else tf.maximum(x, lo)
            y = y if hi is None else tf.minimum(y, hi)

        def grad(g):
            bounds = ([x >= lo if inclusive else x > lo] if lo is not None else []) + \
                     ([x <= hi if inclusive else x < hi] if hi is not None else [])
            if not bounds:
                return g
            inside = bounds[0] if len(bounds) == 1 else tf.logical_and(*bounds)
            return tf.where(inside, g, _zero(g))
        return y, grad
    return op(x)


def leaky_relu(x: tf.Tensor, slope: float) -> tf.Tensor:
    @tf.custom_gradient
    def op(x):
        def grad(g):
            return tf.where(x > 0, g, g * slope)
        return tf.nn.leaky_relu(x, slope), grad
    return op(x)


def hardswish(x: tf.Tensor) -> tf.Tensor:
    """PyTorch's x * relu6(x + 3) / 6; gradient as torch's hardswish_backward."""
    @tf.custom_gradient
    def op(x):
        def grad(g):
            inner = tf.where(x <= 3.0, g * (x / 3.0 + 0.5), g)
            return tf.where(x < -3.0, _zero(g), inner)
        return x * tf.nn.relu6(x + 3.0) / 6.0, grad
    return op(x)


def hardsigmoid(x: tf.Tensor) -> tf.Tensor:
    """PyTorch's relu6(x + 3) / 6; gradient 1/6 strictly inside (-3, 3), as torch computes it."""
    @tf.custom_gradient
    def op(x):
        def grad(g):
            inside = tf.logical_and(x > -3.0, x < 3.0)
            return tf.where(inside, g / 6.0, _zero(g))
        return tf.nn.relu6(x + 3.0) / 6.0, grad
    return op(x)


def sigmoid(x: tf.Tensor) -> tf.Tensor:
    @tf.custom_gradient
    def op(x):
        y = tf.sigmoid(x)

        def grad(g):
            return g * y * (1.0 - y)
        return y, grad
    return op(x)


def silu(x: tf.Tensor) -> tf.Tensor:
    @tf.custom_gradient
    def op(x):
        s = tf.sigmoid(x)

        def grad(g):
            return g * s * (1.0 + x * (1.0 - s))
        return x * s, grad
    return op(x)


def tanh(x: tf.Tensor) -> tf.Tensor:
    @tf.custom_gradient
    def op(x):
        y = tf.tanh(x)

        def grad(g):
            return g * (1.0 - y * y)
        return y, grad
    return op(x)


def rsqrt(x: tf.Tensor) -> tf.Tensor:
    @tf.custom_gradient
    def op(x):
        y = tf.math.rsqrt(x)

        def grad(g):
            return g * -0.5 * y * y * y
        return y, grad
    return op(x)


def sqrt(x: tf.Tensor) -> tf.Tensor:
    @tf.custom_gradient
    def op(x):
        y = tf.sqrt(x)

        def grad(g):
            return g * 0.5 / y
        return y, grad
    return op(x)


def power(x: tf.Tensor, exponent: float) -> tf.Tensor:
    """x ** exponent for a constant exponent (TF's gradient also differentiates the exponent)."""
    @tf.custom_gradient
    def op(x):
        def grad(g):
            return g * exponent * tf.pow(x, exponent - 1.0)
        return tf.pow(x, exponent), grad
    return op(x)


# Eigen's float erf: x * P(x^2) / Q(x^2) on [-4, 4] (|erf| rounds to 1 beyond), a few ulp; TFLite
# has no ERF builtin
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)


def _erf_value(x: tf.Tensor) -> tf.Tensor:
    x = tf.clip_by_value(x, -4.0, 4.0)
    x2 = x * x
    p, q = _ERF_P[0], _ERF_Q[0]
    for c in _ERF_P[1:]:
        p = p * x2 + c
    for c in _ERF_Q[1:]:
        q = q * x2 + c
    return x * p / q


def erf(x: tf.Tensor) -> tf.Tensor:
    @tf.custom_gradient
    def op(x):
        def grad(g):
            return g * (2.0 / math.sqrt(math.pi)) * tf.exp(-x * x)
        return _erf_value(x), grad
    return op(x)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu(x: tf.Tensor, approximate: bool, fused: bool = True) -> tf.Tensor:
    """GELU, exact or tanh-approximated; gradient as torch's gelu_backward.

    The exact forward is TF's 0.5 * x * erfc(-x / sqrt(2)) when `fused`: the converter fuses it
    into the GELU builtin (Erfc has none), but only while nothing else computes 0.5 * x of the
    same tensor (common subexpressions are merged first). Training programs, whose gradients
    reuse x, use x * Phi(x) with the polynomial erf instead. The tanh form is written out here
    (TF's also starts with 0.5 * x).
    """
    @tf.custom_gradient
    def op(x):
        if approximate:
            y = x * (0.5 + 0.5 * tf.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))
        elif fused:
            y = tf.nn.gelu(x, approximate=False)
        else:
            y = x * _normal_cdf(x)

        def grad(g):
            if not approximate:
                pdf = tf.exp(x * x * -0.5) * (1.0 / math.sqrt(2.0 * math.pi))
                return g * (_normal_cdf(x) + x * pdf)
            x2 = x * x
            inner = tf.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x2 * x))
            d_inner = (1.0 - inner * inner) * _SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x2)
            return g * (0.5 + 0.5 * inner + x * (0.5 * d_inner))
        return y, grad
    return op(x)


def _normal_cdf(x: tf.Tensor) -> tf.Tensor:
    return 0.5 + 0.5 * _erf_value(x * (1.0 / math.sqrt(2.0)))


def transpose(x: tf.Tensor, perm: list[int]) -> tf.Tensor:
    """Transpose whose gradient uses the inverse permutation computed here (TF's emits
    InvertPermutation, which has no builtin)."""
    inverse = sorted(range(len(perm)), key=perm.__getitem__)

    @tf.custom_gradient
    def op(x):
        def grad(g):
            return tf.transpose(g, inverse)
        return tf.transpose(x, perm), grad
    return op(x)


def slice_axis(x: tf.Tensor, axis: int, start: int, stop: int | None, step: int) -> tf.Tensor:
    """x[start:stop:step] along `axis` (non-negative start); the gradient puts g back in place
    with zero insertion and PAD (TF's is StridedSliceGrad)."""
    index = [slice(None)] * x.shape.rank
    index[axis] = slice(start, stop, step)

    @tf.custom_gradient
    def op(x):
        def grad(g):
            size = x.shape[axis]
            spread = insert_zeros(g, step, axis)
            spread = _take(spread, axis, min(spread.shape[axis], size - start))
            paddings = [[0, 0] for _ in range(x.shape.rank)]
            paddings[axis] = [start, size - start - spread.shape[axis]]
            return pad(spread, paddings)
        return x[tuple(index)], grad
    return op(x)


def _take(x: tf.Tensor, axis: int, n: int) -> tf.Tensor:
    """The first n entries along `axis` (inside gradients only: no gradient of its own)."""
    if n == x.shape[axis]:
        return x
    index = [slice(None)] * x.shape.rank
    index[axis] = slice(0, n)
    return x[tuple(index)]


def insert_zeros(g: tf.Tensor, s: int, axis: int) -> tf.Tensor:
    """Put s-1 zeros after every element along `axis` (the transpose of a stride-s subsample)."""
    if s == 1:
        return g
    stacked = tf.stack([g] + [tf.zeros_like(g)] * (s - 1), axis=axis + 1)
    shape = g.shape.as_list()
    shape[axis] *= s
    return tf.reshape(stacked, shape)


def _dilate_kernel(w: tf.Tensor, dilation: tuple[int, int]) -> tf.Tensor:
    """A (kh, kw, ...) kernel with dilation-1 zeros between taps: (k - 1) * d + 1 per axis."""
    for axis, d in enumerate(dilation):
        if d > 1:
            w = _take(insert_zeros(w, d, axis), axis, (w.shape[axis] - 1) * d + 1)
    return w


def pad(x: tf.Tensor, paddings: list[list[int]], value: float = 0.0) -> tf.Tensor:
    """tf.pad; a channels-last tensor with few channels is padded as (..., W * C) instead.
    LiteRT's 4-d PAD kernel copies one innermost row at a time: (32, 28, 28, 1) pads in
    0.21 ms, (32, 28, 28 * 1) in 0.015 ms; with 64 channels the 4-d kernel is the faster one."""
    paddings = [[int(p[0]), int(p[1])] for p in paddings]
    padded = [a for a, p in enumerate(paddings) if p != [0, 0]]
    if not padded:
        return x
    shape, last = x.shape.as_list(), padded[-1]
    if last == len(shape) - 1 or shape[-1] > _SHORT_ROW or None in shape[last:] or shape.count(None) > 1:
        return tf.pad(x, paddings, constant_values=value)
    run = int(np.prod(shape[last + 1:]))  # the unpadded trailing dims, merged into the last padded one
    dims = [-1 if d is None else d for d in shape]
    merged = tf.pad(tf.reshape(x, dims[:last] + [dims[last] * run]),
                    paddings[:last] + [[p * run for p in paddings[last]]], constant_values=value)
    return tf.reshape(merged, [d if d == -1 else d + sum(p) for d, p in zip(dims, paddings)])


_SHORT_ROW = 8  # innermost sizes up to this pad faster merged (measured on the PAD kernel)


def conv2d(x: tf.Tensor, w: tf.Tensor, stride: tuple[int, int], padding: tuple[int, int],
           dilation: tuple[int, int], depthwise: bool) -> tf.Tensor:
    """PyTorch Conv2d semantics (symmetric zero padding) on NHWC input.

    w is HWIO for a dense conv and (kh, kw, C, multiplier) for a depthwise one. A stride-1 conv
    padded by half its (dilated) kernel is TF's "SAME" (no PAD op); other padding is a PAD and a
    VALID conv, because TF's "SAME" pads bottom/right only for even inputs at stride 2.
    """
    same = _is_same(w.shape, stride, padding, dilation)

    @tf.custom_gradient
    def op(x, w):
        xp = x if same else _pad_spatial(x, padding)
        y = _conv_forward(xp, w, stride, dilation, depthwise, "SAME" if same else "VALID")

        def grad(g):
            dx = _input_grad(g, w, x.shape, stride, padding, dilation, depthwise, same)
            return dx, _weight_grad(x, g, w.shape, stride, padding, dilation, depthwise)
        return y, grad
    return op(x, w)


def _is_same(w_shape: tf.TensorShape, stride: tuple[int, int], padding: tuple[int, int],
             dilation: tuple[int, int]) -> bool:
    return stride == (1, 1) and all(2 * p == (k - 1) * d for p, k, d in zip(padding, w_shape[:2], dilation))


def _pad_spatial(x: tf.Tensor, padding: tuple[int, int], extent: tuple[int, int] | None = None) -> tf.Tensor:
    """x (N, H, W, C) zero-padded by `padding` before each spatial axis and after it up to
    `extent` (default: by `padding` again); rows past the extent are dropped."""
    extent = extent or (x.shape[1] + 2 * padding[0], x.shape[2] + 2 * padding[1])
    after = [e - s - p for e, s, p in zip(extent, x.shape[1:3], padding)]
    x = pad(x, [[0, 0], [padding[0], max(after[0], 0)], [padding[1], max(after[1], 0)], [0, 0]])
    return x[:, :extent[0], :extent[1], :] if min(after) < 0 else x


def _conv_forward(xp: tf.Tensor, w: tf.Tensor, stride: tuple[int, int], dilation: tuple[int, int],
                  depthwise: bool, padding: str) -> tf.Tensor:
    sh, sw = stride
    dilated = dilation != (1, 1)
    if dilated and stride != (1, 1):
        # TF's convs take dilation with unit strides only: dilate the kernel instead
        w, dilation, dilated = _dilate_kernel(w, dilation), (1, 1), False
    if not depthwise:
        return tf.nn.conv2d(xp, w, [1, sh, sw, 1], padding, dilations=[1, *dilation, 1])
    if sh != sw:  # TF's depthwise conv takes equal strides only: subsample a stride-1 result
        return tf.nn.depthwise_conv2d(xp, w, [1, 1, 1, 1], padding, dilations=dilation)[:, ::sh, ::sw, :]
    return tf.nn.depthwise_conv2d(xp, w, [1, sh, sw, 1], padding, dilations=dilation if dilated else None)


def _input_grad(g: tf.Tensor, w: tf.Tensor, x_shape: tf.TensorShape, stride: tuple[int, int],
                padding: tuple[int, int], dilation: tuple[int, int], depthwise: bool, same: bool) -> tf.Tensor:
    """dL/dx: the gradient for the padded input, cropped to x (a "SAME" dense conv's transpose
    is the exact shape already)."""
    wd = _dilate_kernel(w, dilation)
    if same and not depthwise:
        return tf.nn.conv2d_transpose(g, wd, x_shape.as_list(), [1, 1, 1, 1], "SAME")
    (ph, pw), (n, h, w_, c) = padding, x_shape.as_list()
    padded = [n, h + 2 * ph, w_ + 2 * pw, c]
    if depthwise:
        dxp = _depthwise_input_grad(g, wd, padded, stride)
    else:
        dxp = tf.nn.conv2d_transpose(g, wd, padded, [1, stride[0], stride[1], 1], "VALID")
    return dxp[:, ph:ph + h, pw:pw + w_, :] if ph or pw else dxp


def _depthwise_input_grad(g: tf.Tensor, w: tf.Tensor, padded_shape: list[int],
                          stride: tuple[int, int]) -> tf.Tensor:
    """dx[p] = sum_j g_dilated[p - j] * w[j]: a full convolution of the stride-dilated output
    gradient, i.e. a VALID depthwise correlation with the flipped kernel after padding k-1; the
    multiplier's output channels of one input channel are summed."""
    kh, kw, channels, mult = w.shape
    gd = insert_zeros(insert_zeros(g, stride[0], axis=1), stride[1], axis=2)
    gp = pad(gd, [[0, 0], [kh - 1, kh - 1], [kw - 1, kw - 1], [0, 0]])
    flipped = tf.reshape(tf.reverse(w, [0, 1]), [kh, kw, channels * mult, 1])
    full = tf.nn.depthwise_conv2d(gp, flipped, [1, 1, 1, 1], "VALID")
    if mult > 1:
        n, h, w_, _ = full.shape
        full = tf.reduce_sum(tf.reshape(full, [n, h, w_, channels, mult]), axis=-1)
    # the full convolution is at least as large as the padded input; the excess is past its end
    return full[:, :padded_shape[1], :padded_shape[2], :]


def _weight_grad(x: tf.Tensor, g: tf.Tensor, w_shape: tf.TensorShape, stride: tuple[int, int],
                 padding: tuple[int, int], dilation: tuple[int, int], depthwise: bool) -> tf.Tensor:
    """dW[i, j] = sum over batch and output positions n, o of xp[n, i*d + s*o] * g[n, o]: itself a
    convolution, with the batch as the reduced channel axis, the taps as output positions and g
    as a kernel dilated by the forward stride. One CONV_2D (dense) or DEPTHWISE_CONV_2D
    (depthwise, the batch folded into channels and summed after) instead of an im2col of
    kh * kw strided slices and a matmul: LiteRT's STRIDED_SLICE and last-axis CONCATENATION
    copy element by element (fused_cnn's first conv: 1.5 ms -> 0.16 ms at batch 32)."""
    kh, kw = w_shape[0], w_shape[1]
    n, oh, ow = g.shape[:3]
    (sh, sw), (dh, dw) = stride, dilation
    extent = ((oh - 1) * sh + (kh - 1) * dh + 1, (ow - 1) * sw + (kw - 1) * dw + 1)  # the input the taps read
    if depthwise:  # x (N, H, W, C), g (N, OH, OW, C * m): per channel, over the batch
        channels, mult = w_shape[2], w_shape[3]
        xt = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, x.shape[1], x.shape[2], n * channels])
        gt = tf.reshape(tf.transpose(g, [1, 2, 0, 3]), [oh, ow, n * channels, mult])
        taps = tf.nn.depthwise_conv2d(_pad_spatial(xt, padding, extent), gt, [1, 1, 1, 1], "VALID",
                                      dilations=(sh, sw))  # (1, taps h, taps w, N * C * m)
        taps = tf.reduce_sum(tf.reshape(taps, [taps.shape[1], taps.shape[2], n, channels, mult]), axis=2)
    else:  # x as (Cin, H, W, N) images, g as an (OH, OW, N, Cout) kernel
        xt = tf.transpose(x, [3, 1, 2, 0])
        gt = tf.transpose(g, [1, 2, 0, 3])
        taps = tf.nn.conv2d(_pad_spatial(xt, padding, extent), gt, [1, 1, 1, 1], "VALID",
                            dilations=[1, sh, sw, 1])  # (Cin, taps h, taps w, Cout)
        taps = tf.transpose(taps, [1, 2, 0, 3])
    return taps[::dh, ::dw] if (dh, dw) != (1, 1) else taps


def _windows(xp: tf.Tensor, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
             out: tuple[int, int]) -> list[tf.Tensor]:
    """For each kernel tap (i, j) in row-major order, the input values it meets at every output
    position: xp[:, i*dh + s*oh, j*dw + s*ow, :]."""
    (sh, sw), (dh, dw), (oh, ow) = stride, dilation, out
    return [xp[:, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw, :]
            for i in range(kernel[0]) for j in range(kernel[1])]


def _place_windows(parts: list[tf.Tensor], kernel: tuple[int, int], stride: tuple[int, int],
                   padded_shape: list[int]) -> tf.Tensor:
    """The transpose of `_windows` (no dilation): scatter each tap's (N, OH, OW, C) values back
    onto the padded input and sum."""
    total = None
    for (i, j), part in zip(((i, j) for i in range(kernel[0]) for j in range(kernel[1])), parts):
        spread = insert_zeros(insert_zeros(part, stride[0], axis=1), stride[1], axis=2)
        spread = _take(_take(spread, 1, min(spread.shape[1], padded_shape[1] - i)), 2,
                       min(spread.shape[2], padded_shape[2] - j))
        placed = pad(spread, [[0, 0], [i, padded_shape[1] - i - spread.shape[1]],
                              [j, padded_shape[2] - j - spread.shape[2]], [0, 0]])
        total = placed if total is None else total + placed
    return total


def max_pool2d(xp: tf.Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> tf.Tensor:
    """VALID max pooling of an already (-inf) padded NHWC input; each output's gradient goes to
    the first maximum of its window in row-major order, as PyTorch's indices do."""
    @tf.custom_gradient
    def op(xp):
        y = tf.nn.max_pool2d(xp, list(kernel), [1, *stride, 1], "VALID")

        def grad(g):
            taken = None
            parts = []
            for window in _windows(xp, kernel, stride, (1, 1), (y.shape[1], y.shape[2])):
                hit = tf.equal(window, y)
                if taken is not None:
                    hit = tf.logical_and(hit, tf.logical_not(taken))
                taken = hit if taken is None else tf.logical_or(taken, hit)
                parts.append(tf.where(hit, g, _zero(g)))
            return _place_windows(parts, kernel, stride, xp.shape.as_list())
        return y, grad
    return op(xp)


def avg_pool2d(xp: tf.Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> tf.Tensor:
    """VALID average pooling of an already (zero) padded NHWC input; its gradient is a depthwise
    transpose conv of g / (kh * kw) with a kernel of ones."""
    @tf.custom_gradient
    def op(xp):
        def grad(g):
            ones = tf.ones([kernel[0], kernel[1], xp.shape[3], 1], g.dtype)
            return _depthwise_input_grad(g / float(kernel[0] * kernel[1]), ones, xp.shape.as_list(), stride)
        return tf.nn.avg_pool2d(xp, list(kernel), [1, *stride, 1], "VALID"), grad
    return op(xp)


def embedding(table: tf.Tensor, ids: tf.Tensor, padding_idx: int | None) -> tf.Tensor:
    """Row lookup; the table gradient is one_hot(ids)^T @ g (rows of padding_idx get none,
    as in PyTorch)."""
    rows = table.shape[0]

    @tf.custom_gradient
    def op(table):
        def grad(g):
            hot = tf.one_hot(tf.reshape(ids, [-1]), rows, dtype=g.dtype)
            if padding_idx is not None:
                hot = hot * tf.constant(np.arange(rows) != padding_idx, g.dtype)
            return tf.matmul(hot, tf.reshape(g, [-1, table.shape[1]]), transpose_a=True)
        return tf.gather(table, ids), grad
    return op(table)


def cross_entropy(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Mean softmax cross-entropy of (N, C) logits against class ids, as F.cross_entropy."""
    n, classes = logits.shape

    @tf.custom_gradient
    def op(logits):
        logp = tf.nn.log_softmax(logits)
        hot = tf.one_hot(y, classes, dtype=logits.dtype)
        loss = -tf.reduce_sum(hot * logp) / n

        def grad(g):
            return g * (tf.exp(logp) - hot) / n
        return loss, grad
    return op(logits)


def bce_with_logits(z: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Mean binary cross-entropy on logits, in the overflow-safe form PyTorch uses."""
    n = z.shape.num_elements()

    @tf.custom_gradient
    def op(z):
        loss = tf.reduce_sum(tf.nn.relu(z) - z * y + tf.math.log(1.0 + tf.exp(-tf.abs(z)))) / n

        def grad(g):
            return g * (tf.sigmoid(z) - y) / n
        return loss, grad
    return op(z)


def mse(z: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    n = z.shape.num_elements()

    @tf.custom_gradient
    def op(z):
        d = z - y

        def grad(g):
            return g * 2.0 * d / n
        return tf.reduce_sum(d * d) / n, grad
    return op(z)


LOSSES: dict[str, Callable[[tf.Tensor, tf.Tensor], tf.Tensor]] = {
    "cross_entropy": cross_entropy,
    "bce_with_logits": bce_with_logits,
    "mse": mse,
}
