"""Rewrites of the joint forward/backward graph before ExecuTorch lowers it, as small passes:
each replaces the nodes of one op by a traced Python function, in place.

1. Ops replaced by PyTorch's own decompositions (torch._decomp):
   - train-mode BatchNorm has no ExecuTorch kernel (decomposed: batch statistics + running-stat
     update; its backward is already decomposed and reads the save_mean/save_rstd outputs
     rewired here; decomposing before the joint export fails: the stats would require grad).
     The statistics are taken on the input shifted by its first sample per channel: PyTorch's
     CPU kernel sums them in float64, a float32 mean is off by ~1e-5 x |mean|, and x - mean
     carries that into the output amplified by |mean| / std (large on the near-constant
     channels of a trained net); shifted values are of the order of std;
   - max-pool backward: ExecuTorch 1.5.1's portable `max_pool2d_with_indices_backward` returns
     wrong input gradients (a ResNet stem's weight gradients were off by a factor ~300, measured),
     while the decomposition (scatter_add of the output gradients at the saved indices) is exact.
2. Hardswish's backward, which PyTorch decomposes into two comparisons and two `where`s (the
   portable `lt`/`le`/`where` kernels: 9.6 ms of a 29 ms DC-CCL device step at batch 32, ETDump),
   as one chain of clamps and products on ExecuTorch's optimized elementwise kernels. Exact: see
   `_hardswish_backward`.
3. Reductions over several dims split into one reduction per dim. ExecuTorch's `mean.dim`,
   `sum.dim_IntList` and `var_mean` kernels accumulate in float32 in one running sum: over a
   batch-statistics BatchNorm's 32x28x28 = 25,088 values per channel their relative error was
   5e-6 (PyTorch's: 5e-8, measured), enough to move 10 SGD steps of a trained DC-CCL f_d 1e-3
   away from PyTorch. Reducing dim by dim sums at most one dim's extent (<= 32 here) at a time.
"""
from __future__ import annotations

import operator
from typing import Callable

import torch
from torch._decomp import decomposition_table

from dcl_core.errors import ExportError

aten = torch.ops.aten


def _all_dims(x: torch.Tensor, dims: list[int] | None) -> list[int]:
    """Normalised, descending reduction dims ([] or None: every dim, as ATen reads it)."""
    return sorted({d % x.dim() for d in (dims or range(x.dim()))}, reverse=True)


def _by_dim(reduce_one: Callable[[torch.Tensor, int], torch.Tensor]) -> Callable[..., torch.Tensor]:
    """An ATen-style reduction (dims, keepdim, dtype) made of `reduce_one` over one dim at a time
    (a mean of equal-sized blocks' means is the mean)."""
    def reduction(x: torch.Tensor, dims: list[int] | None, keepdim: bool = False, *,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
        axes = _all_dims(x, dims)
        out = x if dtype is None else x.to(dtype)
        for d in axes:
            out = reduce_one(out, d)
        return out if keepdim else out.squeeze(axes)
    return reduction


_sum_by_dim = _by_dim(lambda t, d: t.sum(dim=d, keepdim=True))
_mean_by_dim = _by_dim(lambda t, d: t.mean(dim=d, keepdim=True))


def _var_mean_by_dim(x: torch.Tensor, dims: list[int] | None = None, *, correction: float | None = None,
                     keepdim: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    axes = _all_dims(x, dims)
    n = 1
    for d in axes:
        n *= x.shape[d]
    mean = _mean_by_dim(x, axes, keepdim=True)
    centered = x - mean  # two-pass variance: no cancellation between E[x^2] and E[x]^2
    var = _mean_by_dim(centered * centered, axes, keepdim=True)
    c = 1.0 if correction is None else float(correction)
    if c:
        var = var * (n / max(n - c, 1))
    return (var, mean) if keepdim else (var.squeeze(axes), mean.squeeze(axes))


# (x - 3) in float32 is 0 or at least 2.4e-7 in size near 3 (and exact, by Sterbenz's lemma), so
# times 1e30 it is 0 or beyond 2.4e23: clamped to [0, 1] it is an exact step, never a ramp.
_STEP = 1e30


def _hardswish_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """PyTorch 2.13's decomposition, where(x <= -3, 0, where(x < 3, grad * (x / 3 + 0.5), grad)),
    bit for bit on finite x, without comparisons or `where`."""
    above = torch.clamp((x - 3.0) * _STEP + 1.0, 0.0, 1.0)  # 1 where x >= 3
    inside = torch.clamp((3.0 - x.abs()) * _STEP, 0.0, 1.0)  # 1 where -3 < x < 3
    return grad * ((x / 3.0 + 0.5) * inside + above)


def _is(node: object, op: torch._ops.OpOverload) -> bool:
    return isinstance(node, torch.fx.Node) and node.target == op


def hardswish_backward_roots(gm: torch.fx.GraphModule) -> list[tuple[torch.fx.Node, list[torch.fx.Node]]]:
    """The outer `where` of each decomposed hardswish backward, with its (grad, x): exactly
    where(le(x, -3), 0, where(lt(x, 3), mul(grad, x / 3 + 0.5), grad)); anything else is left."""
    found = []
    for n in gm.graph.nodes:
        if not _is(n, aten.where.self):
            continue
        cond, zero, inner = n.args
        if not (_is(cond, aten.le.Scalar) and cond.args[1] == -3 and _is(inner, aten.where.self)
                and _is(zero, aten.scalar_tensor.default) and zero.args[0] == 0):
            continue
        x = cond.args[0]
        inner_cond, product, grad = inner.args
        if (_is(inner_cond, aten.lt.Scalar) and inner_cond.args[1] == 3 and inner_cond.args[0] is x
                and _is(product, aten.mul.Tensor) and product.args[0] is grad and isinstance(grad, torch.fx.Node)):
            found.append((n, [grad, x]))
    return found


_BATCH_NORM = aten._native_batch_norm_legit_functional.default


def _shifted_batch_norm(input: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                        running_mean: torch.Tensor, running_var: torch.Tensor, training: bool, momentum: float,
                        eps: float) -> tuple[torch.Tensor, ...]:
    decomposition = decomposition_table[_BATCH_NORM]
    if not training:
        return decomposition(input, weight, bias, running_mean, running_var, training, momentum, eps)
    shift = input[(slice(0, 1), slice(None)) + (slice(0, 1),) * (input.dim() - 2)].detach()
    out, mean, rstd, new_mean, new_var = decomposition(input - shift, weight, bias, running_mean, running_var,
                                                       training, momentum, eps)
    s = shift.flatten()
    return out, mean + s, rstd, new_mean + momentum * s, new_var


def _several_dims(node: torch.fx.Node) -> bool:
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    return dims is None or len(dims) != 1


# (op, replacement, which of its nodes): applied in this order
JOINT_REWRITES: tuple[tuple[torch._ops.OpOverload, Callable, Callable[[torch.fx.Node], bool]], ...] = (
    (_BATCH_NORM, _shifted_batch_norm, lambda n: True),
    (aten.max_pool2d_with_indices_backward.default,
     decomposition_table[aten.max_pool2d_with_indices_backward.default], lambda n: True),
    (aten.var_mean.correction, _var_mean_by_dim, _several_dims),
    (aten.mean.dim, _mean_by_dim, _several_dims),
    (aten.sum.dim_IntList, _sum_by_dim, _several_dims),
)


def rewrite_joint_graph(gm: torch.fx.GraphModule) -> None:
    for op, replacement, where in JOINT_REWRITES:
        replace_op(gm, op, replacement, where)
    for node, inputs in hardswish_backward_roots(gm):
        replace_node(gm, node, inputs, _hardswish_backward)
    gm.graph.eliminate_dead_code()  # the comparisons and inner `where`s the roots used
    gm.graph.lint()
    gm.recompile()


def replace_node(gm: torch.fx.GraphModule, node: torch.fx.Node, inputs: list[torch.fx.Node],
                 replacement: Callable) -> None:
    """Replace one single-output node by `replacement(*inputs)` traced to Core ATen."""
    from torch._decomp import core_aten_decompositions
    from torch.fx.experimental.proxy_tensor import make_fx

    examples = [torch.zeros(i.meta["val"].shape, dtype=i.meta["val"].dtype) for i in inputs]
    sub = make_fx(replacement, decomposition_table=core_aten_decompositions(), tracing_mode="fake")(*examples)
    placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
    with gm.graph.inserting_before(node):
        out = gm.graph.graph_copy(sub.graph, dict(zip(placeholders, inputs)))
    node.replace_all_uses_with(out)
    gm.graph.erase_node(node)


def replace_op(gm: torch.fx.GraphModule, op: torch._ops.OpOverload, replacement: Callable,
               where: Callable[[torch.fx.Node], bool]) -> None:
    """Replace every `op` node that `where` accepts, in place, by `replacement` traced to Core
    ATen on the node's own (fake) inputs."""
    from torch._decomp import core_aten_decompositions
    from torch.fx.experimental.proxy_tensor import make_fx

    graph = gm.graph
    for node in [n for n in graph.nodes if n.target == op and where(n)]:
        positions = [i for i, a in enumerate(node.args) if isinstance(a, torch.fx.Node)]

        def call(*tensors: torch.Tensor, args: tuple = node.args, kwargs: dict = dict(node.kwargs),
                 at: list[int] = positions):
            full = list(args)
            for i, t in zip(at, tensors):
                full[i] = t
            return replacement(*full, **kwargs)

        examples = [torch.zeros(node.args[i].meta["val"].shape, dtype=node.args[i].meta["val"].dtype)
                    for i in positions]
        sub = make_fx(call, decomposition_table=core_aten_decompositions(), tracing_mode="fake")(*examples)
        placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
        with graph.inserting_before(node):
            outs = graph.graph_copy(sub.graph, dict(zip(placeholders, [node.args[i] for i in positions])))
        if isinstance(outs, torch.fx.Node):  # a single output, used as is
            node.replace_all_uses_with(outs)
        else:
            for user in list(node.users):
                if user.target is not operator.getitem:
                    raise ExportError(f"unexpected use of {op} in the joint graph ({user.target}); the ExecuTorch "
                                      "exporter cannot rewrite it (with BatchNorm: use bn='frozen')")
                user.replace_all_uses_with(outs[user.args[1]])
                graph.erase_node(user)
        graph.erase_node(node)
    graph.lint()
    gm.recompile()
