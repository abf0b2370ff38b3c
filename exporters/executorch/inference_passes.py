"""Rewrites of an inference program before it is lowered to XNNPACK, so fewer ops stay on the
portable CPU kernels. Every op XNNPACK does not take ends a delegated piece and starts another:
ICIIA's module (EfficientNet-Lite0 features, P = 256) was cut into 11 pieces by its LayerNorms and
by the expand copies of its batched products, which cost it 11% of the backbone's latency where
ONNX Runtime and LiteRT pay 3-4%. Each rewrite computes the same function with ops XNNPACK takes
(the gate checks the result against PyTorch as always):

- `expand` to the shape the tensor already has (torch.matmul writes one before every batched
  product) is the tensor itself: its uses read the input;
- `unsqueeze` of a leading dim and `select` (XNNPACK takes unsqueeze of the trailing dim only,
  and no select) as a `view` to the same shape, after a one-wide `slice` for select;
- LayerNorm over the last dim: mean and variance as a 4-D mean over the two innermost dims
  (XNNPACK's global average pooling), the rest elementwise (sub, mul, add, rsqrt).

The LayerNorm rewrite is a decomposition run on the exported program (only that op: the rest is
left to to_edge, whose decompositions keep what the partitioner asks to keep); the others are
Edge-dialect passes, run by to_edge_transform_and_lower after decomposing and before partitioning
(`EDGE_PASSES`).
"""
from __future__ import annotations

import torch
from executorch.exir.dialects._ops import ops as exir_ops
from executorch.exir.pass_base import PassResult

aten = torch.ops.aten
edge = exir_ops.edge.aten


def _result(gm: torch.fx.GraphModule, changed: int) -> PassResult:
    """A pass's result, with the graph checked and recompiled when it changed."""
    if changed:
        gm.graph.lint()
        gm.recompile()
    return PassResult(gm, bool(changed))


def drop_identity_expands(gm: torch.fx.GraphModule) -> PassResult:
    """Remove, in place, every expand whose output has its input's shape."""
    dropped = 0
    for node in list(gm.graph.nodes):
        if node.target == edge.expand_copy.default:
            source = node.args[0]
            if (isinstance(source, torch.fx.Node) and "val" in source.meta
                    and tuple(source.meta["val"].shape) == tuple(node.meta["val"].shape)):
                node.replace_all_uses_with(source)
                gm.graph.erase_node(node)
                dropped += 1
    return _result(gm, dropped)


def views_for_unsqueeze_and_select(gm: torch.fx.GraphModule) -> PassResult:
    """Rewrite, in place, leading-dim unsqueezes and selects as (slice +) view."""
    changed = 0
    for node in list(gm.graph.nodes):
        is_select = node.target == edge.select_copy.int
        if not (is_select or node.target == edge.unsqueeze_copy.default) or "val" not in node.meta:
            continue
        source, dim = node.args[0], node.args[1]
        rank = source.meta["val"].dim()
        if not is_select and dim in (-1, rank):
            continue  # a trailing unsqueeze XNNPACK takes as is
        with gm.graph.inserting_before(node):
            if is_select:
                index = node.args[2] % source.meta["val"].shape[dim]
                source = gm.graph.call_function(edge.slice_copy.Tensor, (source, dim, index, index + 1))
                source.meta["val"] = node.args[0].meta["val"].narrow(dim, index, 1)
            view = gm.graph.call_function(edge.view_copy.default, (source, list(node.meta["val"].shape)))
        view.meta = dict(node.meta)
        node.replace_all_uses_with(view)
        gm.graph.erase_node(node)
        changed += 1
    return _result(gm, changed)


def _layer_norm_as_pooling(x: torch.Tensor, normalized_shape: list[int], weight: torch.Tensor | None = None,
                           bias: torch.Tensor | None = None, eps: float = 1e-5,
                           cudnn_enable: bool = True) -> torch.Tensor:
    if len(normalized_shape) != 1:  # not the last-dim form: PyTorch's own decomposition
        return torch.nn.functional.layer_norm(x, normalized_shape, weight, bias, eps)
    d = x.shape[-1]
    rows = x.reshape(1, -1, 1, d)  # every normalised row is one "channel" of a 1 x D image
    mean = rows.mean(dim=[2, 3], keepdim=True)
    centred = rows - mean
    var = (centred * centred).mean(dim=[2, 3], keepdim=True)  # two passes: no E[x^2] - E[x]^2 cancellation
    out = (centred * torch.rsqrt(var + eps)).reshape(x.shape)
    if weight is not None:
        out = out * weight
    return out + bias if bias is not None else out


def layer_norm_as_pooling(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    if not any(n.target == aten.layer_norm.default for n in ep.graph.nodes):
        return ep
    return ep.run_decompositions({aten.layer_norm.default: _layer_norm_as_pooling})


EDGE_PASSES = [drop_identity_expands, views_for_unsqueeze_and_select]
