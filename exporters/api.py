"""`exporters.export(programs, ...)`: named PyTorch programs -> one verified bundle.

For each program and format: export inference, run the gate; export training, run the gate. Any
failure raises (ValidationError / ExportError) and the temporary bundle is deleted, so a bundle
on disk is always complete and verified. Formats that cannot run here (Core ML on Linux) are validated
structurally and recorded with checked=false and the reason.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from dcl_core.bundle import Artifact, Manifest, Program, TensorSpec, Validation, describe_files, now
from dcl_core.errors import ExportError, TrainingNotExpressible, ValidationError
from dcl_core.outputs import atomic_output
from dcl_core.untrusted import check_name
from exporters.base import ExportJob, get_exporter
from exporters.formats import FORMATS, get_format, tool_versions
from exporters.gate import TRAINING_STEPS, validate_inference, validate_training
from exporters.runner import open_inference, open_training
from exporters.spec import TrainingSpec


@dataclass
class ProgramSpec:
    """One named program of a bundle: a module, its example inputs and, optionally, its on-device
    training program. Methods build these; the exporters know nothing else about a method.

    example_inputs: inference inputs (fixed shapes, batch 1 typical). validation_inputs: extra
    (e.g. real) input sets checked besides a random one. train_batches: dicts of the model's
    inputs plus the target "y" at the training batch size; required when `training` is given.
    options: per-format exporter options, e.g. {"executorch": {"external_weights": True}}.
    extra: facts an app needs to feed the program (input layout, range, classes), kept in the
    manifest.
    """

    name: str
    model: nn.Module
    example_inputs: Sequence[torch.Tensor]
    input_names: Sequence[str] | None = None
    output_names: Sequence[str] = ("logits",)
    training: TrainingSpec | None = None
    validation_inputs: Sequence[Sequence[torch.Tensor]] = ()
    train_batches: Sequence[dict[str, torch.Tensor]] = ()
    options: dict[str, dict] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def names(self) -> list[str]:
        n = len(self.example_inputs)
        return list(self.input_names or (["x"] if n == 1 else [f"input_{i}" for i in range(n)]))


BUNDLE = "bundle"  # the output kind of a bundle folder


def export(programs: Sequence[ProgramSpec], formats: Sequence[str] = tuple(FORMATS), out_dir: str | Path = "bundle",
           *, target: str = "host", method: str = "custom", steps: int = TRAINING_STEPS,
           extra: dict | None = None, force: bool = False, inputs: Sequence[str | Path] = (), log=print) -> Manifest:
    """Export every program to every format in `formats`, each artifact verified by the gate;
    write one bundle (manifest.json + artifacts) and return its manifest.

    A format that cannot express a training program at all (TrainingNotExpressible) is recorded
    in that program's `not_exported` with its reason and reported; every other failure aborts
    the export and leaves no bundle. The bundle replaces only a previous dcl bundle, with `force`,
    and never one of `inputs` (dcl_core.outputs).
    """
    check_programs(programs)
    formats = [get_format(f).name for f in formats]
    for p in programs:
        if p.training is not None and not p.train_batches:
            raise ExportError(f"program {p.name!r}: a training export needs train_batches (model inputs + target 'y')")
    manifest = Manifest(method=method, target=target, tool_versions=tool_versions(), created=now(),
                        extra=dict(extra or {}))
    with atomic_output(out_dir, BUNDLE, force, inputs) as tmp:
        for spec in programs:
            program = Program(spec.name, extra=dict(spec.extra))
            manifest.programs.append(program)
            for fmt in formats:
                _export_program_format(spec, program, fmt, tmp, steps, log)
        manifest.write(tmp)
    return manifest


def export_model(model: nn.Module, example_inputs: Sequence[torch.Tensor], formats: Sequence[str] = tuple(FORMATS),
                 out_dir: str | Path = "bundle", *, name: str = "model", target: str = "host",
                 method: str = "custom", steps: int = TRAINING_STEPS, extra: dict | None = None,
                 force: bool = False, log=print, **program: Any) -> Manifest:
    """A bundle of one program: `export([ProgramSpec(name, model, example_inputs, **program)], ...)`."""
    return export([ProgramSpec(name, model, tuple(example_inputs), **program)], formats, out_dir, target=target,
                  method=method, steps=steps, extra=extra, force=force, log=log)


def _export_program_format(spec: ProgramSpec, program: Program, fmt: str, bundle: Path, steps: int, log) -> None:
    model = spec.model.eval()
    inputs, input_names = tuple(spec.example_inputs), spec.names()
    exporter = get_exporter(fmt)
    options = dict(spec.options.get(fmt, {}))
    job = ExportJob(model, inputs, input_names, list(spec.output_names), bundle, f"{spec.name}_{fmt}", options=options)
    t0 = time.perf_counter()
    art = exporter.export_inference(job)
    _finish(art, bundle, job)
    sets = [dict(zip(input_names, _random_like(inputs)))] + [dict(zip(input_names, s)) for s in spec.validation_inputs]
    art.validation = _gate_inference(exporter, art, bundle, model, sets, job)
    program.artifacts.append(art)
    log(f"  {spec.name} {fmt:10s} inference  {_summary(art)}  ({time.perf_counter() - t0:.1f}s)")
    if spec.training is None:
        return
    t0 = time.perf_counter()
    batch0 = spec.train_batches[0]
    tjob = ExportJob(model, tuple(v for k, v in batch0.items() if k != "y"), input_names, list(spec.output_names),
                     bundle, f"{spec.name}_{fmt}_train", target=batch0["y"], spec=spec.training, options=options)
    try:
        tart = exporter.export_training(tjob)
    except TrainingNotExpressible as e:
        program.not_exported.append({"format": fmt, "kind": "training", "reason": str(e)})
        log(f"  {spec.name} {fmt:10s} training   NOT EXPORTED: {e}")
        return
    _finish(tart, bundle, tjob)
    # an exporter may narrow what trains (Core ML: only updatable layers); the gate then checks
    # the program it actually wrote
    training = spec.training if not tart.trainable else dataclasses.replace(spec.training, trainable=list(tart.trainable))
    tart.trainable = training.trainable_names(model)
    tart.loss, tart.optimizer = spec.training.loss, spec.training.optimizer_record()
    tart.validation = _gate_training(exporter, tart, bundle, model, training, list(spec.train_batches), steps, tjob)
    program.artifacts.append(tart)
    log(f"  {spec.name} {fmt:10s} training   {_summary(tart)}  ({time.perf_counter() - t0:.1f}s)")


def check_programs(programs: Sequence[ProgramSpec]) -> None:
    """Refuse (ExportError, one line) programs that cannot make a bundle: a name that is not one
    safe path component (names become file names), names given twice, example inputs the gate
    cannot feed."""
    names = [check_name(p.name, "program name", ExportError) for p in programs]
    if not programs or len(set(names)) != len(names):
        raise ExportError(f"a bundle needs one or more programs with distinct names, got {names}")
    for p in programs:
        _check_inputs(p)


def _check_inputs(p: ProgramSpec) -> None:
    """Example inputs the gate can feed: tensors with at least one element, one name each."""
    if len(p.names()) != len(p.example_inputs):
        raise ExportError(f"program {p.name!r}: {len(p.example_inputs)} example inputs but {len(p.names())} input names")
    for name, t in zip(p.names(), p.example_inputs):
        if not isinstance(t, torch.Tensor):
            raise ExportError(f"program {p.name!r}: example input {name!r} is a {type(t).__name__}, not a tensor")
        if t.numel() == 0:
            raise ExportError(f"program {p.name!r}: example input {name!r} has no elements (shape {list(t.shape)}); "
                              "give an example with at least one element per dimension")


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
    fmt = get_format(art.format)
    return _require(validate_inference(model, runner, sets, fmt.inference_tolerance, rtol=fmt.inference_rtol,
                                       labels=["random"] + [f"given_{i}" for i in range(len(sets) - 1)]), art)


def _gate_training(exporter, art, bundle, model, spec, batches, steps, job) -> Validation:
    ok, why = exporter.runnable_here("training")
    if not ok:
        return _structural(exporter, art, job, why)
    runner = open_training(art.format, bundle / art.path, art, threads=1)
    return _require(validate_training(model, spec, runner, batches, steps=steps,
                                      tolerance=get_format(art.format).training_tolerance), art)


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
        return f"{art.bytes:,} B, max|diff| {v.max_abs_diff:.2e} (bound {v.tolerance:g} + {v.rtol or 0:g}|ref|)"
    return f"{art.bytes:,} B, {v.steps} steps, loss rel {v.max_rel_loss_diff:.1e}, weights rel {v.max_rel_weight_diff:.1e}"
