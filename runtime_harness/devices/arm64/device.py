"""`dcl profile --device arm64`: every artifact of a bundle on aarch64 under qemu, with parity
against the host and guest instruction counts.

Per artifact:
- it runs where it would on an ARM Linux board: ExecuTorch in dcl_et_runner cross-compiled for
  aarch64, LiteRT and ONNX Runtime through dcl's own runner modules in the guest's Python with
  their aarch64 wheels (guest.py). Core ML (Apple only) and ONNX Runtime training
  (onnxruntime-training has no aarch64 build) get a row saying so;
- parity: its outputs (inference) or its losses and weights after `steps` steps (training) are
  judged by the export gate's rule against PyTorch eager on the host when the caller gives the
  program's model, else against the same artifact in its host runtime;
- cost: guest instructions per call, as the difference between a run of `calls[1]` calls and one
  of `calls[0]` (so loading and the first call cancel out), measured `repeats` times. Wall time,
  memory and energy under emulation are not a device's and are not reported.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dcl_core.bundle import Artifact
from dcl_core.errors import BundleError, DclError, DeviceError
from dcl_core.paths import PROJECT_ROOT
from exporters.formats import get_format
from exporters.gate import compare_training, reference_training, validate_inference
from exporters.runner import InferenceRunner, open_inference, open_training
from runtime_harness.devices.arm64 import CPU, PROVENANCE, QEMU, SUITE, Arm64Env
from runtime_harness.devices.base import DeviceInfo
from runtime_harness.devices.native import Launcher, NativePlan, run_native
from runtime_harness.metrics import Measurement
from runtime_harness.report.results import ArtifactResult, InstructionCount, Parity

GUEST = Path(__file__).with_name("guest.py")
NOT_A_DEVICE = "emulated: qemu's figure, not an ARM device's"


@dataclass
class Arm64Plan:
    steps: int = 5  # training steps compared with the reference
    calls: tuple[int, int] = (2, 5)  # the two runs whose difference is counted (at least 2 calls each)
    repeats: int = 2
    threads: int = 1
    timeout_s: float = 1800.0


def arm64_info(env: Arm64Env) -> DeviceInfo:
    version = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    return DeviceInfo(kind="arm64", serial="qemu-aarch64", model="aarch64 Linux under qemu user-mode emulation",
                      soc=f"emulated {CPU} ({version[0] if version else QEMU}, TCG)", abi="arm64-v8a",
                      os_version=f"Debian {SUITE} root file system", fingerprint=str(env.root), is_emulator=True,
                      extra={"provenance": PROVENANCE, "host": platform.machine()})


def profile_artifact(env: Arm64Env, bundle: Path, art: Artifact, inputs: dict[str, np.ndarray],
                     baseline: Any, plan: Arm64Plan) -> ArtifactResult:
    fmt = get_format(art.format)
    result = ArtifactResult(name=art.name, format=art.format, kind=art.kind, sha256=art.sha256,  # type: ignore[arg-type]
                            bytes=art.bytes, threads=plan.threads, provenance=PROVENANCE,
                            file_size=ArtifactResult.file_size_of(art.bytes),
                            peak_rss=Measurement.unavailable("bytes", NOT_A_DEVICE),
                            energy=Measurement.unavailable("J", NOT_A_DEVICE))
    if "linux" not in fmt.host_platforms:
        result.error = f"not runnable on arm64 Linux: {fmt.display} runs only on {', '.join(fmt.devices)}"
        return result
    run = _NativeGuest(env, plan) if fmt.native_runner else _PythonGuest(env, plan)
    result.runtime = run.runtime(art)
    path = bundle / art.path
    lo, hi = plan.calls
    if art.kind == "training":
        lo, hi = max(lo, plan.steps), max(lo, plan.steps) + (hi - lo)
    try:
        counts, first = [], None
        for _ in range(plan.repeats):
            low, high = run(path, art, inputs, lo), run(path, art, inputs, hi)
            first = first or low
            counts.append((high.insns - low.insns) // (hi - lo))
        result.parity = _parity(art, path, inputs, first, baseline, plan)
    except DclError as e:
        result.error = str(e)
        return result
    if art.kind == "training":
        result.batch_size = int(next(iter(inputs.values())).shape[0]) if inputs else None
    mid = int(statistics.median(counts))
    result.instructions = InstructionCount(
        count=mid, per=result.per, repeats=counts, spread=(max(counts) - min(counts)) / mid if mid else 0.0,
        how=f"qemu TCG plugin (dcl insn_count): guest instructions of a {hi}-call run minus a {lo}-call run, "
            f"divided by {hi - lo}; median of {plan.repeats} repeats")
    return result


@dataclass
class GuestRun:
    insns: int
    outputs: list[np.ndarray]  # inference: the last call's outputs
    losses: list[float]  # training: every step's loss
    weights: dict[str, np.ndarray]  # training: after the last step, PyTorch names


class _Guest:
    """One way of running an artifact in the guest, counting its instructions."""

    how = ""  # how the runtime is reached, named in the results' runtime string

    def __init__(self, env: Arm64Env, plan: Arm64Plan):
        self.env, self.plan = env, plan

    def runtime(self, art: Artifact) -> str:
        return f"{art.format} ({self.how}, qemu-aarch64)"


class _NativeGuest(_Guest):
    """ExecuTorch: the aarch64 dcl_et_runner under qemu, with the counting plugin."""

    how = "native runner"

    def __call__(self, path: Path, art: Artifact, inputs: dict[str, np.ndarray], calls: int) -> GuestRun:
        with tempfile.TemporaryDirectory(prefix="dcl-arm64-") as tmp:
            count = Path(tmp) / "insns.txt"
            launcher = Launcher(self.env.toolchain(), tuple(self.env.qemu(count)), self.runtime(art))
            run = run_native(path, art, inputs, NativePlan(runs=calls - 1, warmup=0, threads=self.plan.threads,
                                                           timeout_s=self.plan.timeout_s), dump=True, launcher=launcher)
            insns = _read_count(count)
        dumped = run.dumped
        if art.kind == "training":
            return GuestRun(insns, [], run.output.losses, dumped)
        return GuestRun(insns, [dumped[f"output_{i}"] for i in range(len(dumped))], [], {})


class _PythonGuest(_Guest):
    """LiteRT, ONNX Runtime: dcl's runner module in the guest's Python (guest.py)."""

    how = "python bindings"

    def __call__(self, path: Path, art: Artifact, inputs: dict[str, np.ndarray], calls: int) -> GuestRun:
        with tempfile.TemporaryDirectory(prefix="dcl-arm64-") as tmp:
            t = Path(tmp)
            files = {}
            for name, value in inputs.items():
                files[name] = str(t / f"in_{len(files)}.npy")
                np.save(files[name], value, allow_pickle=False)
            job = {"format": art.format, "kind": art.kind, "path": str(path), "artifact": dataclasses.asdict(art),
                   "inputs": files, "calls": calls, "threads": self.plan.threads, "out": tmp}
            (t / "job.json").write_text(json.dumps(job))
            count = t / "insns.txt"
            # bytecode: the host's __pycache__ serves the guest too (both are CPython 3.11)
            guest_env = {"PYTHONPATH": f"{PROJECT_ROOT}{os.pathsep}{self.env.site}", "PYTHONHASHSEED": "0",
                         "OMP_NUM_THREADS": "1"}
            argv = [*self.env.qemu(count), *(a for k, v in guest_env.items() for a in ("-E", f"{k}={v}")),
                    str(self.env.python), str(GUEST), str(t / "job.json")]
            try:
                p = subprocess.run(argv, capture_output=True, text=True, timeout=self.plan.timeout_s)
            except subprocess.TimeoutExpired:
                raise DeviceError(f"{art.name} did not finish on arm64 within {self.plan.timeout_s:g} s") from None
            if p.returncode != 0:
                errors = [ln[len("DCL-ERROR "):] for ln in p.stderr.splitlines() if ln.startswith("DCL-ERROR ")]
                tail = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
                raise BundleError(f"{art.format} on arm64 could not run {art.name}: "
                                  f"{errors[-1] if errors else (tail[-1] if tail else f'exit {p.returncode}')}")
            result = json.loads((t / "result.json").read_text())
            insns = _read_count(count)
            if art.kind == "training":
                weights = {n: np.load(t / f"weight_{i}.npy", allow_pickle=False)
                           for i, n in enumerate(result["weights"])}
                return GuestRun(insns, [], [float(v) for v in result["losses"]], weights)
            outputs = [np.load(t / f"output_{i}.npy", allow_pickle=False) for i in range(int(result["outputs"]))]
            return GuestRun(insns, outputs, [], {})


def _read_count(path: Path) -> int:
    try:
        text = path.read_text().split()
        if len(text) == 2 and text[0] == "DCL-INSNS":
            return int(text[1])
    except (OSError, ValueError):
        pass
    raise DeviceError(f"the instruction-count plugin wrote no count ({path}); re-run `make setup`")


class _Given(InferenceRunner):
    """Outputs already computed on the device, fed to the gate's comparison."""

    def __init__(self, outputs: list[np.ndarray]):
        self.outputs = outputs

    def infer(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.outputs


class _HostRuntime(nn.Module):
    """The artifact in its host runtime, as the reference where no PyTorch model is given."""

    def __init__(self, runner: InferenceRunner, names: list[str]):
        super().__init__()
        self.runner, self.names = runner, names

    def forward(self, *xs: torch.Tensor):
        outs = self.runner.infer({n: x.numpy() for n, x in zip(self.names, xs)})
        return tuple(torch.from_numpy(np.asarray(o)) for o in outs)


def _parity(art: Artifact, path: Path, inputs: dict[str, np.ndarray], run: GuestRun, baseline: Any,
            plan: Arm64Plan) -> Parity:
    fmt = get_format(art.format)
    tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}
    if art.kind == "inference":
        if baseline is not None:
            model, reference = baseline.model, "pytorch eager (host)"
        else:
            model = _HostRuntime(open_inference(art.format, path, art, 1), [s.name for s in art.inputs])
            reference = f"{art.format} (host)"
        v = validate_inference(model, _Given(run.outputs), [tensors], fmt.inference_tolerance, rtol=fmt.inference_rtol)
        return Parity(v.passed, reference, v.reason, max_abs_diff=v.max_abs_diff, tolerance=v.tolerance, rtol=v.rtol)
    if baseline is not None and baseline.training is not None:
        losses, weights = reference_training(baseline.model, baseline.training, [tensors], "y", len(run.losses))
        ref_weights, reference = {n: w.numpy() for n, w in weights.items()}, "pytorch eager (host)"
    else:
        host = open_training(art.format, path, art, 1)
        losses = [host.train_step(inputs) for _ in range(len(run.losses))]
        ref_weights, reference = host.get_weights(), f"{art.format} (host)"
    v = compare_training(run.losses, run.weights, losses, ref_weights, fmt.training_tolerance, reference=reference)
    return Parity(v.passed, reference, v.reason, tolerance=v.tolerance, steps=v.steps,
                  max_rel_loss_diff=v.max_rel_loss_diff, max_rel_weight_diff=v.max_rel_weight_diff)
