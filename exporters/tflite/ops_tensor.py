"""Builders for layout, shape, elementwise, comparison, reduction and creation ops.

Each builder takes the op's arguments as translated values (`Val` for tensors, Python numbers,
int lists, scalar int32 tensors for dynamic sizes) and returns the op's result the same way.
Builders keep their input's layout wherever the op allows (see values.py).
"""
from __future__ import annotations

import operator
from typing import Any, Callable, Sequence

import tensorflow as tf
import torch

from exporters.tflite import grads
from exporters.tflite.context import Ctx, Unsupported, tf_dtype
from exporters.tflite.values import (
    Dim,
    Val,
    align,
    compress,
    dynamic_shape,
    inverse,
    reshape_arg,
    shape_arg,
)

A = torch.ops.aten
OPS: dict[Any, Callable[..., Any]] = {}


def op(*targets: Any) -> Callable:
    def register(fn: Callable) -> Callable:
        for t in targets:
            OPS[t] = fn
        return fn
    return register


def _cast(v: Any, dtype: tf.DType | None) -> Any:
    if dtype is None or not isinstance(v, tf.Tensor) or v.dtype == dtype:
        return v
    return tf.cast(v, dtype)


def elementwise(ctx: Ctx, fn: Callable[..., tf.Tensor], *operands: Any, dtype: tf.DType | None = None) -> Val:
    """fn over broadcast operands in one layout, computed in `dtype` (default: the output's)."""
    values, layout = align(*operands)
    dtype = dtype or ctx.out_dtype
    return Val(fn(*(_cast(v, dtype) for v in values)), layout)


# ---- layout and shape ----------------------------------------------------------------------------

@op(A.permute.default)
def permute(ctx: Ctx, x: Val, dims: Sequence[int]) -> Val:
    return Val(x.t, [x.axis(d) for d in dims])  # no TF op: only the layout changes


@op(A.view.default, A._unsafe_view.default, A.reshape.default)
def view(ctx: Ctx, x: Val, shape: Sequence[Dim]) -> Val:
    dims = list(shape)
    if _same_shape(x, dims):
        return x
    return Val(tf.reshape(x.t if x.torch_ordered else x.torch(), reshape_arg(dims)))


def _same_shape(x: Val, dims: list[Dim]) -> bool:
    """Whether a view keeps the shape (a dynamic size matches the dynamic dim in its place:
    the element counts agree, and only the batch is dynamic)."""
    return len(dims) == x.rank and all(have is None if isinstance(want, tf.Tensor) else want == have
                                       for have, want in zip(x.shape, dims))


def unsqueeze_val(x: Val, dim: int) -> Val:
    dim %= x.rank + 1
    at = x.layout[dim - 1] + 1 if dim > 0 else 0  # next to its neighbour: identity stays identity
    layout = [a + (a >= at) for a in x.layout]
    layout.insert(dim, at)
    return Val(tf.expand_dims(x.t, at), layout)


def squeeze_val(x: Val, dims: Sequence[int] | None) -> Val:
    """Drop the given (default: all) dims of static size 1; others stay, as in PyTorch (a dynamic
    dim is never 1 in the exported graph's assumptions)."""
    candidates = range(x.rank) if dims is None else [d % x.rank for d in dims]
    drop = {d for d in candidates if x.shape[d] == 1}
    if not drop:
        return x
    return Val(tf.squeeze(x.t, sorted(x.axis(d) for d in drop)), compress(x.layout, drop))


@op(A.unsqueeze.default)
def unsqueeze(ctx: Ctx, x: Val, dim: int) -> Val:
    return unsqueeze_val(x, dim)


@op(A.squeeze.dims)
def squeeze_dims(ctx: Ctx, x: Val, dims: Sequence[int]) -> Val:
    return squeeze_val(x, dims)


@op(A.squeeze.dim)
def squeeze_dim(ctx: Ctx, x: Val, dim: int) -> Val:
    return squeeze_val(x, [dim])


@op(A.squeeze.default)
def squeeze_all(ctx: Ctx, x: Val) -> Val:
    return squeeze_val(x, None)


@op(A.expand.default)
def expand(ctx: Ctx, x: Val, sizes: Sequence[Dim], implicit: bool = False) -> Val:
    while x.rank < len(sizes):
        x = unsqueeze_val(x, 0)
    grow = {k: s for k, s in enumerate(sizes) if x.shape[k] == 1 and not (isinstance(s, int) and s in (-1, 1))}
    if not grow:
        return x
    current = dynamic_shape(x.t)
    order = inverse(x.layout)
    target = [grow.get(order[j], current[j]) for j in range(x.rank)]
    return Val(tf.broadcast_to(x.t, shape_arg(target)), x.layout)


@op(A.repeat.default)
def repeat(ctx: Ctx, x: Val, repeats: Sequence[int]) -> Val:
    while x.rank < len(repeats):
        x = unsqueeze_val(x, 0)
    order = inverse(x.layout)
    return Val(tf.tile(x.t, [int(repeats[order[j]]) for j in range(x.rank)]), x.layout)


@op(A.cat.default)
def cat(ctx: Ctx, tensors: Sequence[Val], dim: int = 0) -> Val:
    first = tensors[0]
    parts = [_cast(v.as_layout(first.layout), ctx.out_dtype) for v in tensors]
    return Val(tf.concat(parts, axis=first.axis(dim)), first.layout)


@op(A.split_with_sizes.default)
def split_with_sizes(ctx: Ctx, x: Val, sizes: Sequence[int], dim: int = 0) -> list[Val]:
    return [Val(t, x.layout) for t in tf.split(x.t, list(sizes), axis=x.axis(dim))]


@op(A.split.Tensor)
def split(ctx: Ctx, x: Val, size: int, dim: int = 0) -> list[Val]:
    total = x.shape[dim]
    if total is None:
        raise Unsupported("splitting the dynamic batch dimension")
    sizes = [size] * (total // size) + ([total % size] if total % size else [])
    return split_with_sizes(ctx, x, sizes, dim)


@op(A.slice.Tensor)
def slice_(ctx: Ctx, x: Val, dim: int = 0, start: Dim | None = None, end: Dim | None = None, step: int = 1) -> Val:
    size = x.shape[dim]
    start = 0 if start is None else start
    if isinstance(start, int) and isinstance(end, (int, type(None))) and size is not None:
        start = min(max(start + size if start < 0 else start, 0), size)
        end = size if end is None else min(max(end + size if end < 0 else end, 0), size)
        end = max(end, start)
        if start == 0 and end == size and step == 1:
            return x
    elif isinstance(end, int) and end >= 1 << 62:  # "to the end" of a dynamic dim
        end = None
    return Val(grads.slice_axis(x.t, x.axis(dim), start, end, step), x.layout)


@op(A.select.int)
def select(ctx: Ctx, x: Val, dim: int, index: Dim) -> Val:
    size = x.shape[dim]
    if isinstance(index, int) and index < 0 and size is not None:
        index += size
    end = None if isinstance(index, int) and index == -1 else index + 1
    one = slice_(ctx, x, dim, index, end)
    return squeeze_val(one, [dim])


@op(A.constant_pad_nd.default)
def constant_pad(ctx: Ctx, x: Val, pad: Sequence[int], value: float = 0.0) -> Val:
    if any(p < 0 for p in pad):
        raise Unsupported(f"negative padding {list(pad)} (cropping)")
    paddings = [[0, 0] for _ in range(x.rank)]
    for i in range(len(pad) // 2):  # (before, after) pairs from the last dim backwards
        paddings[x.axis(-1 - i)] = [int(pad[2 * i]), int(pad[2 * i + 1])]
    return Val(grads.pad(x.t, paddings, value), x.layout)


@op(A.clone.default, A.alias.default, A.detach.default, A.lift_fresh_copy.default, A.contiguous.default)
def identity(ctx: Ctx, x: Val, *args: Any, **kwargs: Any) -> Val:
    return x


@op(A._to_copy.default)
def to_copy(ctx: Ctx, x: Val, dtype: torch.dtype | None = None, **kwargs: Any) -> Val:
    return x if dtype is None else Val(_cast(x.t, tf_dtype(dtype)), x.layout)


# ---- elementwise arithmetic ----------------------------------------------------------------------

@op(A.add.Tensor, A.add.Scalar)
def add(ctx: Ctx, a: Any, b: Any, alpha: float = 1) -> Val:
    return elementwise(ctx, lambda x, y: x + (y if alpha == 1 else y * alpha), a, b)


@op(A.sub.Tensor, A.sub.Scalar)
def sub(ctx: Ctx, a: Any, b: Any, alpha: float = 1) -> Val:
    return elementwise(ctx, lambda x, y: x - (y if alpha == 1 else y * alpha), a, b)


@op(A.rsub.Scalar, A.rsub.Tensor)
def rsub(ctx: Ctx, a: Any, b: Any, alpha: float = 1) -> Val:
    return sub(ctx, b, a, alpha)


@op(A.mul.Tensor, A.mul.Scalar)
def mul(ctx: Ctx, a: Any, b: Any) -> Val:
    return elementwise(ctx, operator.mul, a, b)


@op(A.div.Tensor, A.div.Scalar)
def div(ctx: Ctx, a: Any, b: Any) -> Val:
    return elementwise(ctx, operator.truediv, a, b)


@op(A.div.Tensor_mode, A.div.Scalar_mode)
def div_mode(ctx: Ctx, a: Any, b: Any, rounding_mode: str | None = None) -> Val:
    if rounding_mode is None:
        return div(ctx, a, b)
    if rounding_mode == "floor":
        return elementwise(ctx, tf.math.floordiv, a, b)
    raise Unsupported(f"division with rounding_mode={rounding_mode!r}")


@op(A.maximum.default)
def maximum(ctx: Ctx, a: Val, b: Val) -> Val:
    return elementwise(ctx, tf.maximum, a, b)


@op(A.minimum.default)
def minimum(ctx: Ctx, a: Val, b: Val) -> Val:
    return elementwise(ctx, tf.minimum, a, b)


def unary(fn: Callable[[tf.Tensor], tf.Tensor]) -> Callable[..., Val]:
    def build(ctx: Ctx, x: Val) -> Val:
        return Val(fn(_cast(x.t, ctx.out_dtype)), x.layout)
    return build


OPS.update({
    A.neg.default: unary(tf.negative),
    A.abs.default: unary(tf.abs),
    A.exp.default: unary(tf.exp),
    A.log.default: unary(tf.math.log),
    A.sqrt.default: unary(grads.sqrt),
    A.rsqrt.default: unary(grads.rsqrt),
    A.reciprocal.default: unary(lambda t: 1.0 / t),
    A.erf.default: unary(grads.erf),
})


@op(A.pow.Tensor_Scalar)
def pow_scalar(ctx: Ctx, x: Val, exponent: float) -> Val:
    special: dict[float, Callable[[tf.Tensor], tf.Tensor]] = {
        1: lambda t: t, 2: lambda t: t * t, 3: lambda t: t * t * t, 0.5: grads.sqrt, -0.5: grads.rsqrt,
        -1: lambda t: 1.0 / t,
    }
    fn = special.get(exponent, lambda t: grads.power(t, float(exponent)))
    return unary(fn)(ctx, x)


@op(A.where.self)
def where(ctx: Ctx, cond: Val, a: Any, b: Any) -> Val:
    values, layout = align(cond, a, b)
    dtype = ctx.out_dtype
    return Val(tf.where(values[0], _cast(values[1], dtype), _cast(values[2], dtype)), layout)


# ---- comparisons and logic -----------------------------------------------------------------------

def comparison(fn: Callable[[Any, Any], tf.Tensor]) -> Callable[..., Val]:
    def build(ctx: Ctx, a: Any, b: Any) -> Val:
        tensors = [v for v in (a, b) if isinstance(v, Val)]
        floating = any(v.dtype.is_floating for v in tensors) or any(isinstance(v, float) for v in (a, b))
        return elementwise(ctx, fn, a, b, dtype=tf.float32 if floating else tensors[0].dtype)
    return build


for _name, _fn in (("eq", tf.equal), ("ne", tf.not_equal), ("lt", tf.less), ("le", tf.less_equal),
                   ("gt", tf.greater), ("ge", tf.greater_equal)):
    OPS[getattr(A, _name).Tensor] = OPS[getattr(A, _name).Scalar] = comparison(_fn)

OPS[A.logical_not.default] = unary(tf.logical_not)
OPS[A.logical_and.default] = comparison(tf.logical_and)
OPS[A.logical_or.default] = comparison(tf.logical_or)


# ---- reductions ----------------------------------------------------------------------------------

def reduce(x: Val, dims: Sequence[int] | int | None, keepdim: bool, fn: Callable[..., tf.Tensor]) -> Val:
    if isinstance(dims, int):
        dims = [dims]
    chosen = set(range(x.rank)) if not dims else {d % x.rank for d in dims}
    t = fn(x.t, axis=sorted(x.axis(d) for d in chosen), keepdims=keepdim)
    return Val(t, x.layout if keepdim else compress(x.layout, chosen))


@op(A.mean.dim)
def mean_dim(ctx: Ctx, x: Val, dims: Sequence[int] | None, keepdim: bool = False, dtype: Any = None) -> Val:
    return reduce(x, dims, keepdim, tf.reduce_mean)


@op(A.mean.default)
def mean(ctx: Ctx, x: Val, dtype: Any = None) -> Val:
    return reduce(x, None, False, tf.reduce_mean)


@op(A.sum.dim_IntList)
def sum_dim(ctx: Ctx, x: Val, dims: Sequence[int] | None, keepdim: bool = False, dtype: Any = None) -> Val:
    return reduce(Val(_cast(x.t, ctx.out_dtype), x.layout), dims, keepdim, tf.reduce_sum)


@op(A.sum.default)
def sum_all(ctx: Ctx, x: Val, dtype: Any = None) -> Val:
    return sum_dim(ctx, x, None)


@op(A.amax.default)
def amax(ctx: Ctx, x: Val, dims: Sequence[int] = (), keepdim: bool = False) -> Val:
    return reduce(x, dims, keepdim, tf.reduce_max)  # TF's gradient splits ties evenly, as torch's


@op(A.amin.default)
def amin(ctx: Ctx, x: Val, dims: Sequence[int] = (), keepdim: bool = False) -> Val:
    return reduce(x, dims, keepdim, tf.reduce_min)


def _extremum(reducer: Callable[..., tf.Tensor], arg: Callable[..., tf.Tensor]) -> Callable[..., tuple[Val, Val]]:
    def build(ctx: Ctx, x: Val, dim: int, keepdim: bool = False) -> tuple[Val, Val]:
        values = reduce(x, [dim], keepdim, reducer)
        t = x.torch()  # indices count along the torch dim
        index = arg(t, axis=dim % x.rank, output_type=tf.int64)
        return values, Val(tf.expand_dims(index, dim % x.rank) if keepdim else index)
    return build


OPS[A.max.dim] = _extremum(tf.reduce_max, tf.argmax)
OPS[A.min.dim] = _extremum(tf.reduce_min, tf.argmin)


@op(A.argmax.default)
def argmax(ctx: Ctx, x: Val, dim: int | None = None, keepdim: bool = False) -> Val:
    if dim is None:
        raise Unsupported("argmax over all dims")
    return OPS[A.max.dim](ctx, x, dim, keepdim)[1]


@op(A.any.dim, A.any.dims, A.any.default)
def any_(ctx: Ctx, x: Val, dims: Sequence[int] | int | None = None, keepdim: bool = False) -> Val:
    return reduce(Val(_cast(x.t, tf.bool), x.layout), dims, keepdim, tf.reduce_any)


@op(A.var.correction)
def var(ctx: Ctx, x: Val, dims: Sequence[int] | None = None, *, correction: float | None = None,
        keepdim: bool = False) -> Val:
    correction = 1 if correction is None else correction
    chosen = set(range(x.rank)) if not dims else {d % x.rank for d in dims}
    n = 1
    for d in chosen:
        if x.shape[d] is None:
            raise Unsupported("variance over the dynamic batch dimension")
        n *= x.shape[d]
    centred = Val(x.t - reduce(x, list(chosen), True, tf.reduce_mean).t, x.layout)
    total = reduce(Val(centred.t * centred.t, x.layout), list(chosen), keepdim, tf.reduce_sum)
    return Val(total.t / max(n - correction, 0), total.layout)


# ---- creation ------------------------------------------------------------------------------------

@op(A.full_like.default)
def full_like(ctx: Ctx, x: Val, value: float, *, dtype: torch.dtype | None = None, **kwargs: Any) -> Val:
    out = tf_dtype(dtype) if dtype is not None else x.dtype
    return Val(tf.fill(shape_arg(dynamic_shape(x.t)), tf.constant(value, out)), x.layout)


@op(A.full.default)
def full(ctx: Ctx, size: Sequence[Dim], value: float, *, dtype: torch.dtype | None = None, **kwargs: Any) -> Val:
    out = tf_dtype(dtype) if dtype is not None else ctx.out_dtype
    return Val(tf.fill(shape_arg(list(size)), tf.constant(value, out)))


@op(A.scalar_tensor.default)
def scalar_tensor(ctx: Ctx, value: float, *, dtype: torch.dtype | None = None, **kwargs: Any) -> Val:
    return Val(tf.constant(value, tf_dtype(dtype) if dtype is not None else ctx.out_dtype))


# ---- symbolic sizes (dynamic batch) and graph plumbing -------------------------------------------

@op(A.sym_size.int)
def sym_size(ctx: Ctx, x: Val, dim: int) -> Dim:
    return x.dims()[dim]


def _python(fn: Callable[..., Any]) -> Callable[..., Any]:
    return lambda ctx, *args: fn(*args)


# size arithmetic on ints (static) or int32 scalars (dynamic batch), and the comparisons feeding
# torch.export's runtime asserts (which are no-ops here)
for _fn in (operator.add, operator.sub, operator.mul, operator.floordiv, operator.mod, operator.neg, operator.truediv,
            operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge):
    OPS[_fn] = _python(_fn)


@op(operator.getitem)
def getitem(ctx: Ctx, seq: Sequence[Any], i: int) -> Any:
    if seq[i] is None:
        raise Unsupported(f"output {i} of {ctx.node.args[0]} (e.g. pooling indices, saved statistics) is not "
                          "translated")
    return seq[i]


@op(A._assert_scalar.default, A.sym_constrain_range_for_size.default, A._assert_tensor_metadata.default)
def no_op(ctx: Ctx, *args: Any, **kwargs: Any) -> None:
    return None
