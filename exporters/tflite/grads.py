"""Differentiable TF primitives whose gradients are built from TFLite builtin ops only.

TF's own gradients of these ops (ReluGrad, Relu6Grad, RsqrtGrad, Conv2DBackpropFilter,
DepthwiseConv2dNativeBackprop*, SparseSoftmaxCrossEntropyWithLogits, UnsortedSegmentSum for
gather) have no TFLite builtin, so a training graph using them needs the Flex delegate, which the
stock LiteRT interpreter lacks (neither ai-edge-litert nor TensorFlow ships it). Each primitive here pairs the usual
forward op with a hand-written gradient:

- activations: masks and selects instead of *Grad ops;
- conv input gradient: TRANSPOSE_CONV (dense) or zero insertion + DEPTHWISE_CONV_2D with the
  flipped kernel (depthwise: TFLite has no grouped transpose conv);
- conv weight gradient: strided slices of the padded input (an im2col) and one matmul;
- embedding gradient: one-hot matmul (STABLEHLO_SCATTER cannot add into a table);
- losses: the analytic gradient of the mean loss.
All tensors are NHWC with static shapes (training programs have a fixed batch).
"""
from __future__ import annotations

from typing import Callable

import tensorflow as tf


def relu(x: tf.Tensor) -> tf.Tensor:
    @tf.custom_gradient
    def op(x):
        def grad(g):
            return tf.where(x > 0, g, tf.zeros_like(g))
        return tf.nn.relu(x), grad
    return op(x)


def hardswish(x: tf.Tensor) -> tf.Tensor:
    """PyTorch's x * relu6(x + 3) / 6; gradient as torch's hardswish_backward."""
    @tf.custom_gradient
    def op(x):
        def grad(g):
            inner = tf.where(x <= 3.0, g * (x / 3.0 + 0.5), g)
            return tf.where(x < -3.0, tf.zeros_like(g), inner)
        return x * tf.nn.relu6(x + 3.0) / 6.0, grad
    return op(x)


def hardsigmoid(x: tf.Tensor) -> tf.Tensor:
    """PyTorch's relu6(x + 3) / 6; gradient 1/6 strictly inside (-3, 3), as torch computes it."""
    @tf.custom_gradient
    def op(x):
        def grad(g):
            inside = tf.logical_and(x > -3.0, x < 3.0)
            return tf.where(inside, g / 6.0, tf.zeros_like(g))
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


def rsqrt(x: tf.Tensor) -> tf.Tensor:
    @tf.custom_gradient
    def op(x):
        y = tf.math.rsqrt(x)

        def grad(g):
            return g * -0.5 * y * y * y
        return y, grad
    return op(x)


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


def conv2d(x: tf.Tensor, w: tf.Tensor, stride: tuple[int, int], pad: tuple[int, int],
           depthwise: bool) -> tf.Tensor:
    """PyTorch Conv2d semantics (symmetric zero padding, no dilation) on NHWC input.

    w is HWIO for a dense conv and (kh, kw, C, 1) for a depthwise one. Padding is explicit (a PAD
    op and a VALID conv) because TF's "SAME" pads bottom/right only for even inputs at stride 2.
    """
    ph, pw = pad
    strides = [1, stride[0], stride[1], 1]

    def forward(xp: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
        if depthwise:
            return tf.nn.depthwise_conv2d(xp, w, strides, "VALID")
        return tf.nn.conv2d(xp, w, strides, "VALID")

    @tf.custom_gradient
    def op(x, w):
        xp = tf.pad(x, [[0, 0], [ph, ph], [pw, pw], [0, 0]]) if ph or pw else x
        y = forward(xp, w)

        def grad(g):
            input_grad = _depthwise_input_grad if depthwise else _dense_input_grad
            dxp = input_grad(g, w, xp.shape, stride)
            dx = dxp[:, ph:ph + x.shape[1], pw:pw + x.shape[2], :]
            return dx, _weight_grad(xp, g, w.shape, stride, depthwise)
        return y, grad
    return op(x, w)


def _dense_input_grad(g: tf.Tensor, w: tf.Tensor, padded_shape: tf.TensorShape,
                      stride: tuple[int, int]) -> tf.Tensor:
    return tf.nn.conv2d_transpose(g, w, padded_shape.as_list(), [1, stride[0], stride[1], 1], "VALID")


def _depthwise_input_grad(g: tf.Tensor, w: tf.Tensor, padded_shape: tf.TensorShape,
                          stride: tuple[int, int]) -> tf.Tensor:
    """dx[p] = sum_j g_dilated[p - j] * w[j]: a full convolution of the stride-dilated output
    gradient, i.e. a VALID depthwise correlation with the flipped kernel after padding k-1."""
    kh, kw = w.shape[0], w.shape[1]
    gd = _insert_zeros(_insert_zeros(g, stride[0], axis=1), stride[1], axis=2)
    gp = tf.pad(gd, [[0, 0], [kh - 1, kh - 1], [kw - 1, kw - 1], [0, 0]])
    full = tf.nn.depthwise_conv2d(gp, tf.reverse(w, [0, 1]), [1, 1, 1, 1], "VALID")
    # the full convolution is at least as large as the padded input; the excess is past its end
    return full[:, :padded_shape[1], :padded_shape[2], :]


def _insert_zeros(g: tf.Tensor, s: int, axis: int) -> tf.Tensor:
    """Put s-1 zeros after every element along `axis` (the transpose of a stride-s subsample)."""
    if s == 1:
        return g
    stacked = tf.stack([g] + [tf.zeros_like(g)] * (s - 1), axis=axis + 1)
    shape = g.shape.as_list()
    shape[axis] *= s
    return tf.reshape(stacked, shape)


def _weight_grad(xp: tf.Tensor, g: tf.Tensor, w_shape: tf.TensorShape, stride: tuple[int, int],
                 depthwise: bool) -> tf.Tensor:
    """dW[i, j] = sum over batch and output positions of xp[strided window (i, j)] * g."""
    kh, kw = w_shape[0], w_shape[1]
    oh, ow = g.shape[1], g.shape[2]
    sh, sw = stride
    patches = [xp[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw, :]
               for i in range(kh) for j in range(kw)]
    if depthwise:
        dw = tf.reduce_sum(tf.stack(patches) * g, axis=[1, 2, 3])  # (kh*kw, C)
        return tf.reshape(dw, w_shape)
    rows = g.shape[0] * oh * ow
    cols = tf.reshape(tf.concat(patches, axis=-1), [rows, -1])  # (rows, kh*kw*Cin), (i, j, c) order
    dw = tf.matmul(cols, tf.reshape(g, [rows, -1]), transpose_a=True)
    return tf.reshape(dw, w_shape)


def embedding(table: tf.Tensor, ids: tf.Tensor, padding_idx: int | None) -> tf.Tensor:
    """Row lookup; the table gradient is one_hot(ids)^T @ g (rows of padding_idx get none,
    as in PyTorch)."""
    rows = table.shape[0]

    @tf.custom_gradient
    def op(table):
        def grad(g):
            hot = tf.one_hot(tf.reshape(ids, [-1]), rows, dtype=g.dtype)
            if padding_idx is not None:
                hot = hot * tf.constant([0.0 if r == padding_idx else 1.0 for r in range(rows)], g.dtype)
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
