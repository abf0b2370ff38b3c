"""ExecuTorch runners (Python bindings of the C++ runtime).

Inference runs the .pte through `executorch.runtime.Runtime`. Training loads the program with
the lower-level binding (`_load_program` + `load_method`), which is what
`_load_for_executorch_for_training` wraps, for two reasons: it accepts the external `.ptd`, and
its method's outputs alias the runtime's trainable weights before the first step, so weights can
be read and replaced without running a throwaway forward/backward first. Gradient/parameter
offsets and names come from the program's own `__et_training_*` metadata methods, as the C++
TrainingModule on a phone reads them.

The runtime is imported with this module (not when an artifact opens), so a timed load is the
artifact's load alone. Without Python, the same runtime runs as `native/` (dcl_et_runner).

Threads: XNNPACK (inference) uses the runtime's process-wide thread pool, resized to `threads`;
the portable kernels of the training program are single-threaded whatever `threads` says.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcl_core.imports import without

# The bindings import `executorch.exir` (the compiler, ~4 s of CPU) only for its decorator module
# `exir._warnings`: running programs needs none of the rest.
with without("executorch.exir", keep_submodules=True):
    from executorch.extension.pybindings.portable_lib import (
        _load_program,
        _threadpool_get_thread_count,
        _unsafe_reset_threadpool,
    )
    from executorch.extension.training import get_sgd_optimizer
    from executorch.runtime import Runtime

from dcl_core.bundle import Artifact, TensorSpec
from dcl_core.errors import BundleError
from dcl_core.untrusted import inside
from exporters.runner import InferenceRunner, TrainingRunner, feed

_GRAD_INDEX = "__et_training_gradients_index_"
_PARAM_INDEX = "__et_training_parameters_index_"
_FQN = "__et_training_fqn_"


def open_inference(path: Path, art: Artifact, threads: int) -> InferenceRunner:
    program, data = artifact_files(path, art)
    return ExecuTorchInference(program, data, art, threads)


def open_training(path: Path, art: Artifact, threads: int) -> TrainingRunner:
    program, data = artifact_files(path, art)
    return ExecuTorchTraining(program, data, art, threads)


class ExecuTorchInference(InferenceRunner):
    format = "executorch"

    def __init__(self, program: Path, data: Path | None, art: Artifact, threads: int):
        _set_threads(threads)
        loaded = Runtime.get().load_program(program, data_path=data)
        self._method = loaded.load_method(art.details.get("method", "forward"))
        self._inputs = art.inputs

    def infer(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        outs = self._method.execute(_tensors(inputs, self._inputs))
        return [o.numpy().copy() for o in outs]


class ExecuTorchTraining(TrainingRunner):
    format = "executorch"

    def __init__(self, program: Path, data: Path | None, art: Artifact, threads: int):
        _set_threads(threads)
        name = art.details.get("method", "forward")
        self._program = _load_program(str(program), data_path=str(data) if data else None)
        self._method = self._program.load_method(name)
        self._grad_start = int(self._metadata(_GRAD_INDEX + name)[0])
        self._param_start = int(self._metadata(_PARAM_INDEX + name)[0])
        self._et_names: list[str] = list(self._metadata(_FQN + name))
        self._to_torch: dict[str, str] = dict(art.details.get("parameters", {}))
        unknown = [n for n in self._et_names if n not in self._to_torch]
        if unknown:
            raise BundleError(f"ExecuTorch program trains {unknown[:3]} which the manifest does not map to "
                              "PyTorch names; re-run `dcl export`")
        # Not cloned: these tensors ARE the runtime's weights, updated in place by the optimizer.
        outs = self._method.get_outputs(clone_outputs=False)
        n = len(self._et_names)
        if self._param_start - self._grad_start != n or len(outs) != self._param_start + n:
            raise BundleError(f"{program.name}: its training metadata does not match its {len(outs)} outputs "
                              "(written by an exporter without the ExecuTorch 1.5.1 offset fix); re-run `dcl export`")
        self._params: dict[str, torch.Tensor] = dict(zip(self._et_names, outs[self._param_start:]))
        self._grads: dict[str, torch.Tensor] | None = None
        self._state_names: list[str] = list(art.details.get("state_outputs", []))
        self._state: dict[str, np.ndarray] = {}
        self._inputs = art.inputs
        opt = art.optimizer or {}
        if opt.get("name", "sgd") != "sgd":
            raise BundleError(f"ExecuTorch runner supports SGD only, the artifact asks for {opt.get('name')!r}")
        self._optimizer = get_sgd_optimizer(self._params, float(opt.get("lr", 0.01)),
                                            float(opt.get("momentum", 0.0)), float(opt.get("dampening", 0.0)),
                                            float(opt.get("weight_decay", 0.0)), bool(opt.get("nesterov", False)))

    def _metadata(self, method: str) -> list[Any]:
        m = self._program.load_method(method)
        m.execute()
        return m.get_outputs()

    def train_step(self, inputs: dict[str, np.ndarray]) -> float:
        self._method.set_inputs(_tensors(inputs, self._inputs))
        self._method.execute()
        outs = self._method.get_outputs(clone_outputs=False)
        self._grads = dict(zip(self._et_names, outs[self._grad_start:self._param_start]))
        loss = float(outs[0].item())
        self._state = {n: t.numpy().copy() for n, t in zip(self._state_names, outs[1:])}
        self._optimizer.step(self._grads)
        return loss

    def get_weights(self) -> dict[str, np.ndarray]:
        return {self._to_torch[n]: t.detach().numpy().copy() for n, t in self._params.items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        by_torch = {t: e for e, t in self._to_torch.items()}
        unknown = sorted(set(weights) - set(by_torch))
        if unknown:
            raise BundleError(f"set_weights: {unknown[:3]} are not trainable in this ExecuTorch program")
        for name, value in weights.items():
            target = self._params[by_torch[name]]
            value = np.asarray(value, dtype=np.float32)
            if value.shape != tuple(target.shape):
                raise BundleError(f"set_weights: {name} has shape {value.shape}, the program expects "
                                  f"{tuple(target.shape)}")
            target.copy_(torch.from_numpy(value))

    def buffers(self) -> dict[str, np.ndarray]:
        """Running statistics of train-mode BatchNorm after the last step (PyTorch names); empty
        before the first step or when the program updates none."""
        return dict(self._state)

    def gradients(self) -> dict[str, np.ndarray] | None:
        if self._grads is None:
            return None
        return {self._to_torch[n]: g.detach().numpy().copy() for n, g in self._grads.items()}


def artifact_files(path: Path, art: Artifact) -> tuple[Path, Path | None]:
    """The .pte and optional .ptd: `path` is the .pte itself, or a folder holding both."""
    if path.is_file():
        return path, None
    # the names come from the manifest (someone else's file): they must stay inside the folder
    program = inside(path, art.details.get("program", f"{art.name}.pte"), "ExecuTorch program", BundleError)
    data = inside(path, art.details["data"], "ExecuTorch data file", BundleError) if art.details.get("data") else None
    for p in (program, data):
        if p is not None and not p.is_file():
            raise BundleError(f"ExecuTorch artifact file {p} is missing; re-run `dcl export`")
    return program, data


def _tensors(inputs: dict[str, np.ndarray], specs: list[TensorSpec]) -> list[torch.Tensor]:
    """Inputs in the program's order, cast to the dtypes it was exported with."""
    return [torch.from_numpy(a) for a in feed(inputs, specs, "the ExecuTorch program").values()]


def _set_threads(threads: int) -> None:
    # process-wide and unsafe while a method runs: runners here are used one at a time
    if threads > 0 and _threadpool_get_thread_count() != threads:
        _unsafe_reset_threadpool(threads)
