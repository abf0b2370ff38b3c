"""ExecuTorch: an XNNPACK-delegated inference program and an on-device training program.

Inference: torch.export -> rewrites that keep ops on XNNPACK (inference_passes.py) ->
to_edge_transform_and_lower(XNNPACK) -> to_executorch().
Training: the model wrapped so forward(*inputs, y) returns the loss first, the joint
forward/backward graph from `_export_forward_backward`; the part computed from inputs and frozen
weights only is delegated to XNNPACK, the rest (trainable forward, backward) runs on the CPU
kernels (why not all of it: partition.py); trainable 1x1 convs and convs on the input become
matrix products first (conv_rewrites.py), and the joint graph's BatchNorm and reductions are
rewritten for accuracy (joint_passes.py). The runtime's SGD applies the step.
"""
from __future__ import annotations

import contextlib
import copy
import re
import shutil
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from dcl_core.bundle import Artifact, TensorSpec
from dcl_core.errors import ExportError
from exporters.base import Exporter, ExportJob
from exporters.executorch.conv_rewrites import rewrite_trainable_convs
from exporters.executorch.inference_passes import EDGE_PASSES, layer_norm_as_pooling
from exporters.executorch.joint_passes import rewrite_joint_graph
from exporters.reference import set_train_modes
from exporters.spec import TrainingSpec, loss_fn

METHOD = "forward"
# The loss wrapper holds the model as `.model`, so ExecuTorch names parameters "model.<name>".
WRAPPED = "model"


class ExecuTorchExporter(Exporter):
    format = "executorch"

    def export_inference(self, job: ExportJob) -> Artifact:
        model = job.model.eval()
        with _stage("torch.export of the inference model"):
            ep = layer_norm_as_pooling(torch.export.export(model, job.inputs))
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        with _stage("lowering to XNNPACK"):
            edge = to_edge_transform_and_lower(ep, transform_passes=EDGE_PASSES, partitioner=[XnnpackPartitioner()])
        portable = _undelegated_ops(edge.exported_program())  # before emission rewrites ops to out variants
        with _stage("emitting the ExecuTorch program"):
            program = edge.to_executorch()
        path = job.bundle / f"{job.name}.pte"
        _write_program(program, path)
        return Artifact(name=job.name, path=path.name, format=self.format, kind="inference",
                        inputs=_input_specs(job), outputs=_output_specs(model, job),
                        details={"delegate": "xnnpack", "method": METHOD,
                                 "portable_ops": portable})

    def export_training(self, job: ExportJob) -> Artifact:
        spec = _training_spec(job)
        model, trainable = _training_copy(job.model, spec)
        with _stage("rewriting trainable convolutions as matrix products"):
            rewritten = rewrite_trainable_convs(model, job.inputs)
        wrapped = _LossModule(model, loss_fn(spec.loss), _running_stats(model))
        joint = _joint_graph(wrapped, (*job.inputs, job.target))
        external = bool(job.options.get("external_weights"))
        program, cpu_ops = _emit_training(joint, [_et_name(n) for n in trainable], external)
        path, data_file = _write_training(program, job, external)
        outputs = [TensorSpec("loss", [], "float32")] + [TensorSpec.of(n, model.get_buffer(n)) for n in wrapped.stats]
        return Artifact(name=job.name, path=path, format=self.format, kind="training",
                        inputs=_input_specs(job), outputs=outputs,
                        trainable=trainable, loss=spec.loss, optimizer=spec.optimizer_record(),
                        details={"method": METHOD, "bn": spec.bn,
                                 "delegate": "xnnpack (frozen part)", "portable_ops": cpu_ops,
                                 "conv_rewrites": rewritten,
                                 "program": f"{job.name}.pte", "data": data_file,
                                 # ExecuTorch name -> PyTorch name, in the program's gradient order
                                 "parameters": {_et_name(n): n for n in trainable},
                                 # outputs 1.. after the loss: running statistics after the step
                                 "state_outputs": list(wrapped.stats)})


class _LossModule(nn.Module):
    """forward(*inputs, y) -> (loss, *running stats). The joint graph differentiates the FIRST
    output; the running statistics of train-mode BatchNorm follow (detached copies), since the
    program updates them in place where no caller could otherwise read them."""

    def __init__(self, model: nn.Module, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 stats: list[str]):
        super().__init__()
        self.model = model
        self.loss = loss
        self.stats = stats

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        *inputs, target = args
        loss = self.loss(self.model(*inputs), target)
        return (loss, *[self.model.get_buffer(n).detach().clone() for n in self.stats])


def _running_stats(model: nn.Module) -> list[str]:
    """Buffer names of the running statistics that train-mode BatchNorm updates."""
    names = []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            if m.momentum is None:  # a cumulative average would be baked in as one constant factor
                raise ExportError(f"BatchNorm {name} has momentum=None, which an ExecuTorch training program "
                                  "cannot express; give it a momentum or use bn='frozen'")
            names += [f"{name}.running_mean", f"{name}.running_var"]
    return names


def _training_spec(job: ExportJob) -> TrainingSpec:
    if job.spec is None or job.target is None:
        raise ExportError("an ExecuTorch training export needs a TrainingSpec and a target batch")
    if job.spec.optimizer != "sgd":
        raise ExportError(f"ExecuTorch training supports optimizer 'sgd' only, not {job.spec.optimizer!r}")
    return job.spec


def _training_copy(model: nn.Module, spec: TrainingSpec) -> tuple[nn.Module, list[str]]:
    """A copy where only the trainable parameters require grad (the rest become program
    constants) and module modes follow the gate's rule (BN eval unless bn="train")."""
    model = copy.deepcopy(model)
    trainable = spec.trainable_names(model)
    chosen = set(trainable)
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
    set_train_modes(model, spec, trainable)
    return model, trainable


def _et_name(torch_name: str) -> str:
    return f"{WRAPPED}.{torch_name}"


def _joint_graph(wrapped: nn.Module, args: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    from torch.export.experimental import _export_forward_backward

    with _stage("torch.export of the training model"):
        ep = torch.export.export(wrapped, args)
        # attention: the CPU flash kernel that SDPA lowers to has no ExecuTorch backward kernel;
        # as plain math (matmuls + softmax) it differentiates into ops that have one. Only then:
        # decomposing turns train-mode BatchNorm's running statistics into outputs needing grad.
        if any(n.target == _SDPA for n in ep.graph.nodes):
            ep = ep.run_decompositions({_SDPA: _attention_math})
    with _stage("building the joint forward/backward graph"):
        joint = _export_forward_backward(ep, joint_loss_index=0)
        rewrite_joint_graph(joint.graph_module)
    return joint


_SDPA = torch.ops.aten.scaled_dot_product_attention.default


def _attention_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
                    dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                    enable_gqa: bool = False) -> torch.Tensor:
    """F.scaled_dot_product_attention as the reference formula (the programs run in eval mode,
    so there is no attention dropout)."""
    if dropout_p or enable_gqa:
        raise ExportError("scaled_dot_product_attention with dropout or grouped-query attention in a training "
                          "program is not supported by the ExecuTorch exporter; put attention dropout in eval mode")
    scores = (q @ k.transpose(-2, -1)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if is_causal:
        causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return torch.softmax(scores, dim=-1) @ v


def _emit_training(joint: torch.export.ExportedProgram, trainable: list[str], external: bool):
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes.init_mutable_pass import InitializedMutableBufferPass

    from exporters.executorch.partition import FrozenPartXnnpackPartitioner

    # the joint graph holds ops (e.g. threshold_backward) outside the Edge IR verifier's core set
    with _stage("converting the joint graph to Edge and lowering its frozen part to XNNPACK"):
        edge = to_edge_transform_and_lower(joint, partitioner=[FrozenPartXnnpackPartitioner(trainable)],
                                           compile_config=EdgeCompileConfig(_check_ir_validity=False))
    # Mutated buffers (BN running stats) are memory-planned and start uninitialised unless
    # marked: give them their exported values. The pass matches placeholder names as substrings.
    # (Not emit_mutable_buffer_names: in 1.5.1 that dedupes a buffer's initial bytes against
    # constants and points it at the wrong segment, e.g. num_batches_tracked = 0.)
    sig = joint.graph_signature
    mutated = set(sig.buffers_to_mutate.values())
    placeholders = [p for p, b in sig.inputs_to_buffers.items() if b in mutated]
    # With external weights, a view of a weight (the conv rewrites reshape theirs) as a zero-copy
    # alias fails emission (the alias has no external tag): keep views as copies there.
    config = ExecutorchBackendConfig(external_constants=external, external_mutable_weights=external,
                                     remove_view_copy=not external,
                                     passes=[InitializedMutableBufferPass(placeholders)] if placeholders else [])
    cpu_ops = _undelegated_ops(edge.exported_program())  # before emission rewrites ops to out variants
    with _stage("emitting the ExecuTorch training program"), _fixed_training_metadata():
        return edge.to_executorch(config), cpu_ops


@contextlib.contextmanager
def _fixed_training_metadata() -> Iterator[None]:
    """ExecuTorch 1.5.1's `_get_training_metadata` counts BUFFER_MUTATION outputs, which the
    emitted program does not return, so with mutated buffers (train-mode BN) the gradient and
    parameter offsets it writes are off and gradients come back as the wrong tensors. Swap in a
    corrected version for this emission only."""
    from executorch.exir.emit import _emit_program

    original = _emit_program._get_training_metadata
    _emit_program._get_training_metadata = _training_metadata
    try:
        yield
    finally:
        _emit_program._get_training_metadata = original


def _training_metadata(methods: dict[str, torch.export.ExportedProgram]) -> dict[str, object]:
    """The `__et_training_*` getters: gradient offset, parameter offset and parameter names,
    counted over the outputs the program really returns."""
    from torch.export.graph_signature import OutputKind

    meta: dict[str, object] = {}
    for name, ep in methods.items():
        emitted = [s for s in ep.graph_signature.output_specs if s.kind != OutputKind.BUFFER_MUTATION]
        kinds = [s.kind for s in emitted]
        names = [s.target for s in emitted if s.kind == OutputKind.GRADIENT_TO_PARAMETER]
        if not names:
            continue
        meta[f"__et_training_gradients_index_{name}"] = kinds.index(OutputKind.GRADIENT_TO_PARAMETER)
        # weights_to_outputs_pass appends the trained weights as TOKEN outputs
        meta[f"__et_training_parameters_index_{name}"] = kinds.index(OutputKind.TOKEN)
        meta[f"__et_training_fqn_{name}"] = names
    return meta


def _write_training(program, job: ExportJob, external: bool) -> tuple[str, str | None]:
    """Write the program; with external weights, a folder holding `<name>.pte` and `<name>.ptd`.
    Returns the artifact path (relative to the bundle) and the data file name, if any."""
    if not external:
        path = job.bundle / f"{job.name}.pte"
        _write_program(program, path)
        return path.name, None
    folder = job.bundle / job.name
    folder.mkdir(parents=True, exist_ok=True)
    _write_program(program, folder / f"{job.name}.pte")
    staging = folder / ".data"
    staging.mkdir()
    program.write_tensor_data_to_file(str(staging))
    written = sorted(staging.glob("*.ptd"))
    if len(written) != 1:
        raise ExportError(f"ExecuTorch wrote {len(written)} weight files for {job.name}, expected one .ptd; "
                          "export without external_weights")
    # the runtime is handed the data file explicitly, so its name is ours to choose
    data = folder / f"{job.name}.ptd"
    written[0].rename(data)
    shutil.rmtree(staging)
    return folder.name, data.name


def _write_program(program, path: Path) -> None:
    with open(path, "wb") as f:
        program.write_to_file(f)


def _input_specs(job: ExportJob) -> list[TensorSpec]:
    specs = [TensorSpec.of(n, t) for n, t in zip(job.input_names, job.inputs)]
    if job.target is not None:
        specs.append(TensorSpec.of(job.target_name, job.target))
    return specs


def _output_specs(model: nn.Module, job: ExportJob) -> list[TensorSpec]:
    with torch.no_grad():
        out = model(*job.inputs)
    outs = [out] if isinstance(out, torch.Tensor) else list(out)
    if len(outs) != len(job.output_names):
        raise ExportError(f"the model returns {len(outs)} outputs but {len(job.output_names)} output names "
                          f"were given ({job.output_names}); pass one name per output")
    return [TensorSpec.of(n, t) for n, t in zip(job.output_names, outs)]


def _undelegated_ops(ep: torch.export.ExportedProgram) -> list[str]:
    """Ops left to portable kernels after partitioning (empty when XNNPACK took everything)."""
    skip = {"executorch_call_delegate", "getitem"}
    ops = {str(getattr(n.target, "__name__", n.target)) for n in ep.graph.nodes if n.op == "call_function"}
    return sorted(o for o in ops if o not in skip)


_OP = re.compile(r"\b(?:aten|edge|quantized_decomposed|dim_order_ops)(?:::|\.)[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?")


@contextlib.contextmanager
def _stage(what: str) -> Iterator[None]:
    """Turn a converter failure into one ExportError line naming the stage (and the op, if any)."""
    try:
        yield
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - any converter failure is reported the same way
        text = str(e)
        op = _OP.search(text)
        first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
        where = f" at op {op.group(0)}" if op else ""
        raise ExportError(f"ExecuTorch {what} failed{where}: {first[:300]}; "
                          "replace that layer or export another format") from e
