"""PyTorch -> Core ML conversion: an ML program (.mlpackage) for inference, a neural network spec
for training (the only kind Core ML can update), and the facts about them the other modules need.

Conversion goes through `torch.export` (coremltools' "TorchExport" frontend), not `torch.jit.trace`:
a trace keeps PadLogits' shape arithmetic, whose `aten::Int` coremltools 9 cannot convert.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcl_core.bundle import TensorSpec
from dcl_core.errors import ExportError

DEPLOYMENT_TARGET = "iOS16"  # iPhone 13-15 all run iOS 16+; ML programs need iOS 15+
# Core ML feature dtypes: ML programs take int32 (not int64) ids; neural networks take float arrays only
MLPROGRAM_DTYPES = {torch.float32: "float32", torch.int64: "int32", torch.int32: "int32"}
NN_DTYPES = {torch.float32: "float32", torch.int64: "float32", torch.int32: "float32"}
_NP_DTYPES = {"float32": np.float32, "int32": np.int32}


def convert(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], input_names: list[str],
            output_names: list[str], convert_to: str) -> Any:
    """The coremltools MLModel of `model` at the inputs' fixed shapes; convert_to is "mlprogram"
    (fp32, DEPLOYMENT_TARGET) or "neuralnetwork" (BatchNorm left unfolded)."""
    import coremltools as ct

    ct_inputs = [ct.TensorType(name=n, shape=tuple(t.shape), dtype=_NP_DTYPES[MLPROGRAM_DTYPES[t.dtype]])
                 for n, t in zip(input_names, inputs)]
    if convert_to == "mlprogram":
        options = dict(compute_precision=ct.precision.FLOAT32,
                       minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET))
    else:
        # an updatable conv must hold PyTorch's weights, not weights with BatchNorm folded in
        pipeline = ct.PassPipeline.DEFAULT
        pipeline.remove_passes(["common::fuse_conv_batchnorm"])
        options = dict(pass_pipeline=pipeline)
    try:
        program = torch.export.export(model.eval(), inputs).run_decompositions({})
        return ct.convert(program, inputs=ct_inputs, outputs=[ct.TensorType(name=n) for n in output_names],
                          convert_to=convert_to, **options)
    except Exception as e:  # noqa: BLE001 - torch.export / coremltools raise many types; one line for the user
        raise ExportError(f"coremltools could not convert the model to a Core ML {convert_to}: "
                          f"{type(e).__name__}: {first_line(e)}") from e


def torch_outputs(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """PyTorch's outputs at `inputs` (their shapes are the Core ML outputs' shapes)."""
    with torch.no_grad():
        out = model.eval()(*inputs)
    return [out] if isinstance(out, torch.Tensor) else list(out)


def feature_specs(names: list[str], tensors: tuple[torch.Tensor, ...], dtypes: dict) -> list[TensorSpec]:
    """The Core ML features for these tensors, with dtypes mapped by MLPROGRAM_DTYPES or NN_DTYPES."""
    return [TensorSpec(n, list(t.shape), dtypes[t.dtype]) for n, t in zip(names, tensors)]


def source_dtypes(names: list[str], tensors: tuple[torch.Tensor, ...], dtypes: dict) -> dict[str, str]:
    """Inputs whose PyTorch dtype differs from the Core ML feature's (apps cast before feeding)."""
    sources = [TensorSpec.of(n, t) for n, t in zip(names, tensors)]
    return {s.name: s.dtype for s, t in zip(sources, tensors) if s.dtype != dtypes[t.dtype]}


def blob_shapes(mlmodel: Any) -> dict[str, tuple[int, ...]]:
    """Static shapes of every blob, the model inputs included, from the MIL program the neural
    network was translated from (the NN spec itself does not record intermediate shapes)."""
    main = mlmodel._mil_program.functions["main"]
    shapes = {name: tuple(int(d) for d in var.shape) for name, var in main.inputs.items()}
    for op in main.operations:
        for out in op.outputs:
            shapes[out.name] = tuple(int(d) for d in out.shape)
    return shapes


def save_spec(spec: Any, path: Path) -> None:
    import coremltools as ct

    ct.utils.save_spec(spec, str(path))


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "no message"
