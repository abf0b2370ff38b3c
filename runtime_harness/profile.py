"""`dcl profile`: measure every artifact of a bundle on the host or an adb device.

Host: each artifact runs in its runtime's Python bindings (latency loop, fresh-process peak RSS,
energy `estimated:model` since the host has no power counters), plus PyTorch eager on the same
program as the baseline for ratios, when the bundle records the run it came from.
adb: inference artifacts run with the runtime's official command-line tool on the device.
Training artifacts on Android need the demo app's entry point (not built yet) and are reported
as not measured, with that reason. A device error mid-run saves the partial results, marked.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

from exporters.manifest import Artifact, Manifest, load_manifest, tool_versions
from exporters.spec import TrainingSpec
from exporters.targets import get_target
from runtime_harness import metrics
from runtime_harness.devices.host import host_info, peak_rss_of_artifact
from runtime_harness.report import ArtifactResult, ProfileResults, write_outputs
from runtime_harness.runners import open_inference, open_training
from toolkit.errors import DeviceError

NOT_ON_LINUX = {"coreml": "Core ML runs only on macOS/iOS; profile it with the ios_demo app"}
DTYPES = {"float32": np.float32, "int64": np.int64, "int32": np.int32}


@dataclasses.dataclass
class ProfilePlan:
    runs: int = 50
    min_duration_s: float = 1.0
    threads: int = 1
    sustained_s: float = 0.0
    warmup: int = 3


def num_classes(manifest: Manifest) -> int:
    """Classes of the bundle's model: the last dimension of an inference artifact's output."""
    for a in manifest.artifacts:
        if a.kind == "inference" and a.outputs and a.outputs[0].shape:
            return max(int(a.outputs[0].shape[-1]), 2)
    return 2


def synthetic_inputs(art: Artifact, classes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs at the artifact's shapes: uniform [0, 1) floats, labels in [0, classes), ids 0."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in art.inputs:
        dt = DTYPES.get(t.dtype, np.float32)
        if np.issubdtype(dt, np.floating):
            out[t.name] = rng.random(t.shape, dtype=np.float32).astype(dt)
        elif t.name == "y":
            out[t.name] = rng.integers(0, classes, size=t.shape).astype(dt)
        else:  # ids: row 0 always exists
            out[t.name] = np.zeros(t.shape, dtype=dt)
    return out


def _pytorch_baseline(manifest: Manifest) -> tuple[object, TrainingSpec | None] | None:
    """The same device program in PyTorch eager, from the run the bundle records (DC-CCL)."""
    run_dir = manifest.extra.get("run_dir")
    if manifest.method != "dcccl" or not run_dir or not Path(run_dir).is_dir():
        return None
    from exporters.methods.dcccl import device_program

    _, model, _ = device_program(run_dir)
    train = next((a for a in manifest.artifacts if a.kind == "training"), None)
    spec = None
    if train is not None and train.optimizer:
        o = train.optimizer
        spec = TrainingSpec(trainable=list(train.trainable), loss=train.loss or "cross_entropy", lr=o["lr"],
                            momentum=o["momentum"], weight_decay=o["weight_decay"])
    return model, spec


def _host_artifact(bundle: Path, art: Artifact, plan: ProfilePlan, target, classes: int) -> ArtifactResult:
    path = bundle / art.path
    if art.format in NOT_ON_LINUX:
        return ArtifactResult.failed(art.name, art.format, art.kind, art.sha256, art.bytes,
                                     f"not runnable here: {NOT_ON_LINUX[art.format]}")
    inputs = synthetic_inputs(art, classes)
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


def _eager_results(manifest: Manifest, plan: ProfilePlan, target) -> list[ArtifactResult]:
    from runtime_harness.runners.pytorch import PyTorchInference, PyTorchTraining

    base = _pytorch_baseline(manifest)
    if base is None:
        return []
    model, spec = base
    out = []
    inf = next((a for a in manifest.artifacts if a.kind == "inference"), None)
    if inf is not None:
        prof = metrics.profile_inference(lambda: PyTorchInference(model, plan.threads), synthetic_inputs(inf, num_classes(manifest)),
                                         plan.runs, plan.min_duration_s, plan.warmup, target)
        out.append(ArtifactResult.from_profile("pytorch_eager", "pytorch", "inference", "", 0, prof,
                                               metrics.Measurement.unavailable("bytes", "baseline: not measured in a fresh process"),
                                               plan.threads, "pytorch eager"))
    tr = next((a for a in manifest.artifacts if a.kind == "training" and a.format != "coreml"), None)
    if tr is not None and spec is not None:
        prof = metrics.profile_training(lambda: PyTorchTraining(model, spec, threads=plan.threads),
                                        synthetic_inputs(tr, num_classes(manifest)), plan.runs, plan.min_duration_s, 2, target)
        out.append(ArtifactResult.from_profile("pytorch_eager_train", "pytorch", "training", "", 0, prof,
                                               metrics.Measurement.unavailable("bytes", "baseline: not measured in a fresh process"),
                                               plan.threads, "pytorch eager"))
    return out


def profile_bundle(bundle: str | Path, device: str, out_dir: str | Path, plan: ProfilePlan = ProfilePlan(),
                   log=print) -> ProfileResults:
    """Profile every artifact; writes results.json and report.html into out_dir (also when partial)."""
    bundle = Path(bundle)
    manifest = load_manifest(bundle)  # sha256-verified: a corrupt bundle stops here
    if device == "host":
        info, target = host_info(), get_target("host")
    else:
        from runtime_harness.devices.adb import AdbDevice

        adb = AdbDevice(device)
        info = adb.fingerprint()
        target = None
    results = ProfileResults(device=info, tool_versions=tool_versions(), target=manifest.target, bundle=str(bundle))
    try:
        for art in manifest.artifacts:
            log(f"  profiling {art.name} ({art.format} {art.kind}) on {info.kind}")
            if device == "host":
                results.artifacts.append(_host_artifact(bundle, art, plan, target, num_classes(manifest)))
            else:
                results.artifacts.append(_adb_artifact(adb, bundle, art, plan))
        if device == "host":
            log("  profiling the PyTorch eager baseline")
            results.artifacts.extend(_eager_results(manifest, plan, target))
    except DeviceError as e:
        results.mark_partial(str(e))
        write_outputs(results, out_dir)
        raise DeviceError(f"{e} (partial results saved to {Path(out_dir) / 'results.json'})") from None
    write_outputs(results, out_dir)
    return results


def _adb_artifact(adb, bundle: Path, art: Artifact, plan: ProfilePlan) -> ArtifactResult:
    from runtime_harness.devices.tools import RunPlan

    if art.kind == "training":
        return ArtifactResult.failed(art.name, art.format, art.kind, art.sha256, art.bytes,
                                     "not measured: Android's command-line tools run inference only; "
                                     "training steps need the android_demo app's benchmark entry point")
    if art.format == "coreml":
        return ArtifactResult.failed(art.name, art.format, art.kind, art.sha256, art.bytes,
                                     "not runnable on Android: Core ML is iOS/macOS only")
    run = adb.benchmark(art.format, bundle / art.path, RunPlan(plan.runs, plan.warmup, plan.min_duration_s, plan.threads))
    return ArtifactResult.from_android(art.name, art.format, art.sha256, art.bytes, run, plan.threads)
