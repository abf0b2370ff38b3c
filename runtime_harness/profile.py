"""`dcl profile`: measure every artifact of a bundle on the host or an adb device.

Host: a format with a native runner (ExecuTorch: dcl_et_runner, the C++ runtime as an app links it)
runs there by default, so load time and peak memory are the runtime's own; `python_bindings`
(`dcl profile --python-bindings`) measures through the Python bindings instead, labelled so.
Other formats run in their Python bindings (latency loop, fresh-process peak RSS); the runtime is
imported before a load is timed, so "load" is the artifact's alone. Energy is `estimated:model`
(the host has no power counters). PyTorch eager on the same program is the baseline for ratios,
when the caller hands one in per program (`Baseline`: the harness reads bundles, never run
directories; the CLI asks the run's method for them).
arm64: every artifact on aarch64 under qemu (devices/arm64): parity against PyTorch on the host
(the baseline's model where given) and guest instruction counts, labelled emulated.
adb: inference artifacts run with the runtime's official command-line tool on the device.
Training artifacts on Android need the demo app's entry point (not built yet) and are reported
as not measured, with that reason. A device error mid-run saves the partial results, marked.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
from torch import nn

from dcl_core.bundle import Artifact, Program, load_manifest
from dcl_core.errors import BundleError, DeviceError
from dcl_core.outputs import check_destination
from exporters.formats import get_format, tool_versions
from exporters.reference import PyTorchInference, PyTorchTraining
from exporters.runner import open_inference, open_training
from exporters.spec import TrainingSpec
from exporters.targets import get_target
from runtime_harness import metrics
from runtime_harness.inputs import num_classes, synthetic_inputs
from runtime_harness.devices.host import host_info, peak_rss_of_artifact
from runtime_harness.report.results import ArtifactResult, ProfileResults
from runtime_harness.report.write import PROFILE, write_outputs

EAGER = "pytorch eager"


@dataclasses.dataclass
class Baseline:
    """A bundle program in PyTorch eager: what every runtime is measured against."""

    model: nn.Module
    training: TrainingSpec | None = None
    # Real data as the export gate fed it, where the method gives it: off-host parity (arm64)
    # runs on these instead of synthetic uniform inputs, which can drive a trained model's SGD
    # steps into a regime where float32 rounding alone moves weights by 1e-3 (measured: LiteRT on
    # the host, DC-CCL's device step, 5 steps at lr 0.01 on uniform noise; 6e-7 on real images).
    inputs: dict[str, np.ndarray] | None = None  # one inference input set, by input name
    train_batch: dict[str, np.ndarray] | None = None  # one training batch (inputs and target)


@dataclasses.dataclass
class ProfilePlan:
    runs: int = 50
    min_duration_s: float = 1.0
    threads: int = 1
    sustained_s: float = 0.0
    warmup: int = 3
    python_bindings: bool = False  # measure formats that have a native runner through Python instead


def _host_artifact(bundle: Path, art: Artifact, plan: ProfilePlan, target, classes: int, log=print) -> ArtifactResult:
    path = bundle / art.path
    fmt = get_format(art.format)
    ok, why = fmt.runs_here(art.kind)
    if not ok:
        return ArtifactResult.failed(art.name, art.format, art.kind, art.sha256, art.bytes, f"not runnable here: {why}")
    inputs = synthetic_inputs(art, classes)
    native = fmt.load_native_runner() if not plan.python_bindings else None
    if native is not None:
        found = native.locate()
        if found.binary is not None:
            return _native_artifact(path, art, plan, target, inputs)
        log(f"    {found.why}; measuring {fmt.display} through its Python bindings")
    fmt.load_runner()  # imports the runtime now: the timed load below is the artifact's alone
    opener: Callable = open_inference if art.kind == "inference" else open_training
    open_runner = lambda: opener(art.format, path, art, plan.threads)  # noqa: E731
    if art.kind == "inference":
        prof = metrics.profile_inference(open_runner, inputs, plan.runs, plan.min_duration_s, plan.warmup, target,
                                         plan.sustained_s)
    else:
        prof = metrics.profile_training(open_runner, inputs, plan.runs, plan.min_duration_s, min(plan.warmup, 2),
                                        target, sustained_s=plan.sustained_s)
    rss = peak_rss_of_artifact(art.format, path, dataclasses.asdict(art), art.kind, plan.threads)
    return ArtifactResult.from_profile(art.name, art.format, art.kind, art.sha256, art.bytes, prof, rss, plan.threads)


def _native_artifact(path: Path, art: Artifact, plan: ProfilePlan, target, inputs) -> ArtifactResult:
    from runtime_harness.devices.native import NativePlan, profile_native

    warmup = plan.warmup if art.kind == "inference" else min(plan.warmup, 2)
    try:
        prof, rss, runtime = profile_native(path, art, inputs, NativePlan(plan.runs, warmup, plan.min_duration_s,
                                                                          plan.threads), target, plan.sustained_s)
    except BundleError as e:
        return ArtifactResult.failed(art.name, art.format, art.kind, art.sha256, art.bytes, str(e))
    return ArtifactResult.from_profile(art.name, art.format, art.kind, art.sha256, art.bytes, prof, rss, plan.threads,
                                       runtime)


def _eager_results(program: Program, base: Baseline, plan: ProfilePlan, target) -> list[ArtifactResult]:
    """PyTorch eager on the program's inference and (where exported) training step."""
    out = []
    classes = num_classes(program)
    unmeasured = metrics.Measurement.unavailable("bytes", "baseline: not measured in a fresh process")
    inf = next((a for a in program.artifacts if a.kind == "inference"), None)
    if inf is not None:
        prof = metrics.profile_inference(lambda: PyTorchInference(base.model, plan.threads),
                                         synthetic_inputs(inf, classes), plan.runs, plan.min_duration_s, plan.warmup,
                                         target)
        out.append(ArtifactResult.from_profile(f"{program.name}_pytorch_eager", "pytorch", "inference", "", 0, prof,
                                               unmeasured, plan.threads, EAGER))
    tr = next((a for a in program.artifacts if a.kind == "training" and get_format(a.format).runs_here(a.kind)[0]), None)
    if tr is not None and base.training is not None:
        prof = metrics.profile_training(lambda: PyTorchTraining(base.model, base.training, threads=plan.threads),
                                        synthetic_inputs(tr, classes), plan.runs, plan.min_duration_s, 2, target)
        out.append(ArtifactResult.from_profile(f"{program.name}_pytorch_eager_train", "pytorch", "training", "", 0,
                                               prof, unmeasured, plan.threads, EAGER))
    return out


def profile_bundle(bundle: str | Path, device: str, out_dir: str | Path, plan: ProfilePlan = ProfilePlan(),
                   baselines: dict[str, Baseline] | None = None, force: bool = False, log=print) -> ProfileResults:
    """Profile every artifact of every program, and on the host each program's PyTorch eager
    baseline where one is given; writes results.json and report.html into out_dir (also when
    partial)."""
    bundle = Path(bundle)
    check_destination(out_dir, PROFILE, force, containers=[bundle])  # before any measuring; it may sit in the bundle
    manifest = load_manifest(bundle)  # sha256-verified: a corrupt bundle stops here
    arm64 = None
    if device == "host":
        info, target = host_info(), get_target("host")
    elif device == "arm64":
        from runtime_harness.devices import arm64 as arm64_env
        from runtime_harness.devices.arm64.device import arm64_info

        arm64 = arm64_env.locate()  # a DeviceError naming `make setup` when it is not made
        info, target = arm64_info(arm64), None
    else:
        from runtime_harness.devices.adb import AdbDevice

        adb = AdbDevice(device)
        info = adb.fingerprint()
        target = None
    results = ProfileResults(device=info, tool_versions=tool_versions(), target=manifest.target, bundle=str(bundle))
    try:
        for program in manifest.programs:
            for art in program.artifacts:
                log(f"  profiling {art.name} ({art.format} {art.kind}) on {info.kind}")
                if device == "host":
                    results.artifacts.append(_host_artifact(bundle, art, plan, target, num_classes(program), log))
                elif arm64 is not None:
                    results.artifacts.append(_arm64_artifact(arm64, bundle, art, num_classes(program),
                                                             (baselines or {}).get(program.name), plan))
                else:
                    results.artifacts.append(_adb_artifact(adb, bundle, art, plan))
            base = (baselines or {}).get(program.name)
            if device == "host" and base is not None:
                log(f"  profiling {program.name} in PyTorch eager (the baseline)")
                results.artifacts.extend(_eager_results(program, base, plan, target))
    except DeviceError as e:
        results.mark_partial(str(e))
        write_outputs(results, out_dir, force, containers=(bundle,))
        raise DeviceError(f"{e} (partial results saved to {Path(out_dir) / 'results.json'})") from None
    write_outputs(results, out_dir, force, containers=(bundle,))
    return results


def _arm64_artifact(env, bundle: Path, art: Artifact, classes: int, base: Baseline | None,
                    plan: ProfilePlan) -> ArtifactResult:
    from runtime_harness.devices.arm64.device import Arm64Plan, profile_artifact

    given = base and (base.train_batch if art.kind == "training" else base.inputs)
    inputs = given if given and _fits(given, art) else synthetic_inputs(art, classes)
    return profile_artifact(env, bundle, art, inputs, base, Arm64Plan(threads=plan.threads))


def _fits(values: dict[str, np.ndarray], art: Artifact) -> bool:
    """Whether given inputs have the artifact's input names and shapes."""
    return all(s.name in values and list(values[s.name].shape) == list(s.shape) for s in art.inputs)


def _adb_artifact(adb, bundle: Path, art: Artifact, plan: ProfilePlan) -> ArtifactResult:
    from runtime_harness.devices.tools import RunPlan

    fmt = get_format(art.format)
    if "android" not in fmt.devices:
        return ArtifactResult.failed(art.name, art.format, art.kind, art.sha256, art.bytes,
                                     f"not runnable on Android: {fmt.display} runs on {', '.join(fmt.devices)}")
    if art.kind == "training":  # Android's command-line tools run inference only: the demo app's entry point
        from runtime_harness.devices.app import AppBenchmark, AppNotReady, to_artifact_result

        try:
            return to_artifact_result(art, AppBenchmark(adb).run(art, plan.runs, plan.warmup, plan.threads))
        except AppNotReady as e:
            return ArtifactResult.failed(art.name, art.format, art.kind, art.sha256, art.bytes, f"not measured: {e}")
    run = adb.benchmark(art.format, bundle / art.path, RunPlan(plan.runs, plan.warmup, plan.min_duration_s, plan.threads))
    return ArtifactResult.from_android(art.name, art.format, art.sha256, art.bytes, run, plan.threads)
