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
2. Reductions over several dims split into one reduction per dim. ExecuTorch's `mean.dim`,
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
