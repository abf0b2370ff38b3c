"""ExecuTorch training programs and XNNPACK: why the stock partitioner breaks training (a minimal
reproduction) and that the frozen-part partitioner keeps training exact while delegating.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("executorch")

from exporters.executorch import exporter as et  # noqa: E402
from exporters.executorch.partition import FrozenPartXnnpackPartitioner, step_dependent_nodes  # noqa: E402
from exporters.spec import TrainingSpec, loss_fn  # noqa: E402


def _joint(model: nn.Module, spec: TrainingSpec, x: torch.Tensor, y: torch.Tensor):
    copy, trainable = et._training_copy(model, spec)
    wrapped = et._LossModule(copy, loss_fn(spec.loss), et._running_stats(copy))
    return et._joint_graph(wrapped, (x, y)), [et._et_name(n) for n in trainable]


def _lower(joint, partitioner):
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    return to_edge_transform_and_lower(joint, partitioner=[partitioner],
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False)).exported_program()


def _small_cnn() -> tuple[nn.Module, TrainingSpec, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    spec = TrainingSpec(trainable=["*"], loss="cross_entropy", lr=0.1, batch_size=4)
    return model, spec, torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])


def test_stock_xnnpack_partitioner_takes_trainable_parameters_out_of_the_program():
    """The reproduction of the NaN: on the joint graph the stock partitioner delegates the conv
    together with its trainable weight and bias, so the program no longer reads them as
    parameters (the delegate holds copies) and the optimizer's updates never reach the forward."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    model, spec, x, y = _small_cnn()
    joint, trainable = _joint(model, spec, x, y)
    before = set(joint.graph_signature.inputs_to_parameters.values())
    assert {"model.0.weight", "model.0.bias"} <= before
    lowered = _lower(joint, XnnpackPartitioner())
    read_by_program = set(lowered.graph_signature.inputs_to_parameters.values())
    assert "model.0.bias" not in read_by_program, "stock XNNPACK no longer absorbs the trainable conv bias"
    plain = [n.name for n in lowered.graph.nodes if n.op == "placeholder"]
    assert any(n.endswith("_copy_0") for n in plain), "the delegate no longer packs a copy of the trainable weight"


def test_frozen_part_partitioner_leaves_every_trainable_parameter_to_the_program():
    model, spec, x, y = _small_cnn()
    joint, trainable = _joint(model, spec, x, y)
    lowered = _lower(joint, FrozenPartXnnpackPartitioner(trainable))
    assert set(trainable) <= set(lowered.graph_signature.inputs_to_parameters.values())
    assert not any(n.target == torch.ops.higher_order.executorch_call_delegate for n in lowered.graph.nodes), \
        "everything here depends on trainable weights, nothing may be delegated"


def test_step_dependent_nodes_follow_trainable_weights_and_mutated_buffers():
    from toolkit.models.examples import fused_cnn

    ex = fused_cnn(batch=4)
    joint, trainable = _joint(ex.model, ex.spec, ex.batches[0]["x"], ex.batches[0]["y"])
    dependent = step_dependent_nodes(joint, trainable)
    convs = [n for n in joint.graph.nodes if n.target == torch.ops.aten.convolution.default]
    frozen = [n for n in convs if "frozen" in str(n.args[1].target if n.args[1].op == "get_attr" else n.args[1].name)]
    assert frozen and all(n not in dependent for n in frozen)
    assert all(n in dependent for n in convs if n not in frozen)
    loss = next(iter(joint.graph.find_nodes(op="output"))).args[0][0]
    assert loss in dependent


def test_fused_cnn_training_program_delegates_the_frozen_part(tmp_path):
    """The DC-CCL-shaped program: the frozen mimic's forward runs in XNNPACK, the device CNN
    trains on the CPU kernels, and the gate (10 steps vs PyTorch) still passes."""
    import exporters
    from toolkit.models.examples import fused_cnn

    ex = fused_cnn(batch=8)
    m = exporters.export_model(ex.model, ex.inputs, formats=["executorch"], out_dir=tmp_path / "b",
                               training=ex.spec, input_names=ex.input_names, output_names=ex.output_names,
                               train_batches=ex.batches, log=lambda *a: None)
    tr = m.artifact("model_executorch_train")
    assert tr.validation.passed and tr.validation.max_rel_weight_diff <= 1e-4
    assert tr.details["delegate"] == "xnnpack (frozen part)"
    program = (tmp_path / "b" / tr.path).read_bytes()
    assert b"XnnpackBackend" in program, "the frozen mimic should be delegated to XNNPACK"
    assert "aten.convolution_backward.default" in tr.details["portable_ops"]


@pytest.mark.parametrize("conv", [nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=False),
                                  nn.Conv2d(2, 3, 3, dilation=2), nn.Conv2d(8, 16, 1)])
def test_conv_rewrites_compute_the_conv_and_its_weight_gradient(conv):
    from exporters.executorch.conv_rewrites import Im2colConv, PointwiseConv

    torch.manual_seed(0)
    x = torch.rand(2, conv.in_channels, 9, 9)
    rewritten = PointwiseConv(conv) if conv.kernel_size == (1, 1) else Im2colConv(conv)
    expected, got = conv(x), rewritten(x)
    assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5)
    g_expected = torch.autograd.grad(expected.square().sum(), conv.weight)[0]
    g_got = torch.autograd.grad(got.square().sum(), rewritten.weight)[0]
    assert rewritten.weight is conv.weight and torch.allclose(g_got, g_expected, rtol=1e-4, atol=1e-5)


def test_only_convs_that_qualify_are_rewritten():
    from exporters.executorch.conv_rewrites import Im2colConv, PointwiseConv, rewrite_trainable_convs
    from toolkit.models.examples import fused_cnn

    ex = fused_cnn(batch=2)
    model, trainable = et._training_copy(ex.model, ex.spec)
    names_before = [n for n, _ in model.named_parameters()]
    counts = rewrite_trainable_convs(model, ex.inputs)
    assert [n for n, _ in model.named_parameters()] == names_before  # same names, same tensors
    modules = dict(model.named_modules())
    assert isinstance(modules["trainable.features.0.0"], Im2colConv)  # the stem sees the image
    assert counts["input_im2col"] == 1 and counts["pointwise_matmul"] >= 2
    assert not any(isinstance(m, (PointwiseConv, Im2colConv)) for n, m in modules.items() if n.startswith("frozen."))
    depthwise = [m for m in modules.values() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise  # left as convs: their input needs a gradient
