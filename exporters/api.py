"""`exporters.export(...)`: any nn.Module -> a verified bundle (manifest.json + artifacts).

For each format: export inference, run the gate; export training, run the gate. Any failure
raises (ValidationError / ExportError) and the temporary bundle is deleted, so a bundle on disk
is always complete and verified. Formats that cannot run here (Core ML on Linux) are validated
structurally and recorded with checked=false and the reason.
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from exporters.base import ExportJob, get_exporter
from exporters.manifest import FORMATS, Artifact, Manifest, Validation, describe_files, now, tool_versions
from exporters.spec import TensorSpec, TrainingSpec
from exporters.validate import INFERENCE_TOLERANCE, TRAINING_STEPS, validate_inference, validate_training
from runtime_harness.runners import open_inference, open_training
from toolkit.errors import ExportError, TrainingNotExpressible, ValidationError
from toolkit.run import replace_dir


def export(model: nn.Module, example_inputs: Sequence[torch.Tensor], formats: Sequence[str] = FORMATS,
           out_dir: str | Path = "bundle", training: TrainingSpec | None = None, *, target: str = "host",
           method: str = "custom", name: str = "model", input_names: Sequence[str] | None = None,
           output_names: Sequence[str] = ("logits",), validation_inputs: Sequence[Sequence[torch.Tensor]] = (),
           train_batches: Sequence[dict[str, torch.Tensor]] = (), steps: int = TRAINING_STEPS,
           options: dict[str, dict] | None = None, extra: dict | None = None, log=print) -> Manifest:
    """Export `model` to every format in `formats`, verified; returns the written manifest.

    example_inputs: inference inputs (fixed shapes, batch 1 typical). validation_inputs: extra
    (e.g. real) input sets checked besides a random one. train_batches: dicts of the model's
    inputs plus the target "y" at the training batch size; required when `training` is given.
    options: per-format exporter options, e.g. {"executorch": {"external_weights": True}}.
    A format that cannot express the training program at all (TrainingNotExpressible) is recorded
    in manifest.not_exported with its reason and reported; every other failure aborts the export.
    """
    options = options or {}
    model = model.eval()
    example_inputs = tuple(example_inputs)
    input_names = list(input_names or (["x"] if len(example_inputs) == 1 else [f"input_{i}" for i in range(len(example_inputs))]))
    if training is not None and not train_batches:
        raise ExportError("a training export needs train_batches (model inputs + target 'y')")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    manifest = Manifest(method=method, target=target, tool_versions=tool_versions(), created=now(),
                        extra=dict(extra or {}))
    try:
        for fmt in formats:
            exporter = get_exporter(fmt)
            job = ExportJob(model, example_inputs, input_names, list(output_names), tmp, f"{name}_{fmt}",
                            options=dict(options.get(fmt, {})))
            t0 = time.perf_counter()
            art = exporter.export_inference(job)
            _finish(art, tmp, job)
            sets = [dict(zip(input_names, _random_like(example_inputs)))] + \
                   [dict(zip(input_names, s)) for s in validation_inputs]
            art.validation = _gate_inference(exporter, art, tmp, model, sets, job)
            manifest.artifacts.append(art)
            log(f"  {fmt:10s} inference  {_summary(art)}  ({time.perf_counter() - t0:.1f}s)")
            if training is None:
                continue
            t0 = time.perf_counter()
            batch0 = train_batches[0]
            tjob = ExportJob(model, tuple(v for k, v in batch0.items() if k != "y"), input_names,
                             list(output_names), tmp, f"{name}_{fmt}_train", target=batch0["y"], spec=training,
                             options=dict(options.get(fmt, {})))
            try:
                tart = exporter.export_training(tjob)
            except TrainingNotExpressible as e:
                manifest.not_exported.append({"format": fmt, "kind": "training", "reason": str(e)})
                log(f"  {fmt:10s} training   NOT EXPORTED: {e}")
                continue
            _finish(tart, tmp, tjob)
            # an exporter may narrow what trains (Core ML: only updatable layers); the gate then
            # checks the program it actually wrote
            spec = training if not tart.trainable else dataclasses.replace(training, trainable=list(tart.trainable))
            tart.trainable = spec.trainable_names(model)
            tart.loss, tart.optimizer = training.loss, training.optimizer_record()
            tart.validation = _gate_training(exporter, tart, tmp, model, spec, list(train_batches), steps, tjob)
            manifest.artifacts.append(tart)
            log(f"  {fmt:10s} training   {_summary(tart)}  ({time.perf_counter() - t0:.1f}s)")
        manifest.write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out_dir)
    return manifest


def _random_like(inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    out = []
    for t in inputs:
        if t.is_floating_point():
            out.append(torch.rand(t.shape, generator=g, dtype=t.dtype))
        else:  # ids: stay inside the range the example uses (an embedding's rows)
            hi = max(int(t.max().item()) + 1, 1)
            out.append(torch.randint(0, hi, t.shape, generator=g, dtype=t.dtype))
    return out


def _finish(art: Artifact, bundle: Path, job: ExportJob) -> None:
    art.sha256, art.bytes, art.files = describe_files(bundle, art.path)
    if not art.inputs:
        art.inputs = [TensorSpec.of(n, t) for n, t in zip(job.input_names, job.inputs)]
        if job.target is not None:
            art.inputs.append(TensorSpec.of(job.target_name, job.target))


def _gate_inference(exporter, art, bundle, model, sets, job) -> Validation:
    ok, why = exporter.runnable_here("inference")
    if not ok:
        return _structural(exporter, art, job, why)
    runner = open_inference(art.format, bundle / art.path, art, threads=1)
    return _require(validate_inference(model, runner, sets, INFERENCE_TOLERANCE[art.format],
                                       labels=["random"] + [f"given_{i}" for i in range(len(sets) - 1)]), art)


def _gate_training(exporter, art, bundle, model, spec, batches, steps, job) -> Validation:
    ok, why = exporter.runnable_here("training")
    if not ok:
        return _structural(exporter, art, job, why)
    runner = open_training(art.format, bundle / art.path, art, threads=1)
    return _require(validate_training(model, spec, runner, batches, steps=steps), art)


def _structural(exporter, art: Artifact, job: ExportJob, why: str) -> Validation:
    """A format that cannot run here: its structural checks, recorded as not numerically checked."""
    v = exporter.validate_structure(art, job)
    v.reason = f"{why}; structure validated: {v.reason}" if v.reason else f"{why}; structure validated"
    return _require(v, art, structural=True)


def _require(v: Validation, art: Artifact, structural: bool = False) -> Validation:
    if not v.passed:
        raise ValidationError(f"{art.format} {art.kind} artifact failed validation: {v.reason}; export refused")
    if structural:
        v.checked = False
    return v


def _summary(art: Artifact) -> str:
    v = art.validation
    if not v.checked:
        return f"{art.bytes:,} B, not run here ({v.reason})"
    if art.kind == "inference":
        return f"{art.bytes:,} B, max|diff| {v.max_abs_diff:.2e} <= {v.tolerance:g}"
    return f"{art.bytes:,} B, {v.steps} steps, loss rel {v.max_rel_loss_diff:.1e}, weights rel {v.max_rel_weight_diff:.1e}"
