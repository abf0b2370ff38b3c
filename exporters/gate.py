"""The one validation gate, shared by every format.

- Inference: the runtime's outputs on several input sets (random and real) against PyTorch;
  passed iff every element has |runtime - pytorch| <= atol + rtol * |pytorch| (the form numpy's
  allclose uses; both per format on its descriptor). A bound that scales with the output keeps
  large float32 outputs from failing for rounding alone, while a wrong output still fails.
- Training: `steps` steps on fixed batches in the real runtime and in PyTorch with the same
  optimizer from the same weights; passed iff every step's loss and every final trainable weight
  agree within `tolerance`, relative: |a - b| / max(|b|, 1) for losses, and
  max|w_rt - w_pt| / max(max|w_pt|, 1e-6) per tensor for weights (element-wise relative error
  is meaningless for weights near zero).
The gate knows formats only through their runners and descriptors' tolerances.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dcl_core.bundle import Validation
from exporters.reference import PyTorchTraining
from exporters.runner import InferenceRunner, TrainingRunner
from exporters.spec import TrainingSpec

DEFAULT_TOLERANCE = 1e-4  # each format's descriptor states its own (exporters.formats)
TRAINING_STEPS = 10


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def validate_inference(model: nn.Module, runner: InferenceRunner, input_sets: list[dict[str, torch.Tensor]],
                       tolerance: float, labels: list[str] | None = None, rtol: float = 0.0) -> Validation:
    """`tolerance` is the absolute part (atol), `rtol` the relative one, per element."""
    model = model.eval()
    worst, worst_excess, where = 0.0, 0.0, ""
    for inputs in input_sets:
        with torch.no_grad():
            ref = model(*inputs.values())
        refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        got = runner.infer({k: _np(v) for k, v in inputs.items()})
        if len(got) != len(refs):
            return Validation(True, False, f"runtime returned {len(got)} outputs, PyTorch {len(refs)}",
                              tolerance=tolerance)
        for g, r in zip(got, refs):
            g = np.asarray(g, dtype=np.float64).reshape(tuple(r.shape))
            if not (np.all(np.isfinite(g)) and torch.isfinite(r).all()):
                # NaN compares false with everything: without this, NaN outputs would "match"
                who = "the runtime" if not np.all(np.isfinite(g)) else "PyTorch"
                return Validation(True, False, f"{who} produced non-finite outputs (NaN or Inf)",
                                  tolerance=tolerance, inputs_checked=labels)
            if not r.numel():
                continue
            ref64 = _np(r).astype(np.float64)
            diff = np.abs(g - ref64)
            excess = diff / (tolerance + rtol * np.abs(ref64))  # > 1: outside the bound
            i = int(np.argmax(excess))
            worst = max(worst, float(diff.max()))
            if excess.flat[i] > worst_excess:
                worst_excess = float(excess.flat[i])
                where = f"{diff.flat[i]:.3g} at an element of magnitude {abs(ref64.flat[i]):.3g}"
    passed = bool(worst_excess <= 1.0)
    reason = "" if passed else (f"max |runtime - pytorch| {worst:.3g}; worst element {where} > "
                                f"{tolerance:g} + {rtol:g} * |pytorch|")
    return Validation(True, passed, reason, max_abs_diff=worst, tolerance=tolerance, rtol=rtol, inputs_checked=labels)


def reference_training(model: nn.Module, spec: TrainingSpec, batches: list[dict[str, torch.Tensor]],
                       target_name: str, steps: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    """PyTorch's loss trajectory and final trainable weights for the same program."""
    runner = PyTorchTraining(model, spec, target_name, threads=torch.get_num_threads())
    losses = [runner.train_step({k: _np(v) for k, v in batches[i % len(batches)].items()}) for i in range(steps)]
    return losses, {n: torch.from_numpy(w) for n, w in runner.get_weights().items()}


def validate_training(model: nn.Module, spec: TrainingSpec, runner: TrainingRunner,
                      batches: list[dict[str, torch.Tensor]], target_name: str = "y",
                      steps: int = TRAINING_STEPS, tolerance: float = DEFAULT_TOLERANCE) -> Validation:
    ref_losses, ref_weights = reference_training(model, spec, batches, target_name, steps)
    rt_losses = [float(runner.train_step({k: _np(v) for k, v in batches[i % len(batches)].items()}))
                 for i in range(steps)]
    return compare_training(rt_losses, runner.get_weights(), ref_losses,
                            {n: _np(w) for n, w in ref_weights.items()}, tolerance, spec.lr)


def compare_training(rt_losses: list[float], rt_weights: dict[str, np.ndarray], ref_losses: list[float],
                     ref_weights: dict[str, np.ndarray], tolerance: float, lr: float | None = None,
                     reference: str = "PyTorch") -> Validation:
    """The gate's verdict on a runtime's training run against a reference run of the same steps:
    every loss and every weight within `tolerance` relative error."""
    steps = len(ref_losses)
    for who, losses in ((reference, ref_losses), ("the runtime", rt_losses)):
        if not np.all(np.isfinite(losses)):
            # NaN compares false with everything: without this a diverged pair would "match"
            hint = f"; lower the learning rate (now {lr:g})" if lr is not None else ""
            return Validation(True, False, f"training diverged in {who} (non-finite loss){hint}", steps=steps,
                              tolerance=tolerance, loss_runtime=rt_losses, loss_pytorch=ref_losses)
    if len(rt_losses) != steps:
        return Validation(True, False, f"the runtime ran {len(rt_losses)} steps, {reference} {steps}", steps=steps,
                          tolerance=tolerance)
    loss_err = max(abs(a - b) / max(abs(b), 1.0) for a, b in zip(rt_losses, ref_losses))
    missing = sorted(set(ref_weights) - set(rt_weights))
    if missing:
        return Validation(True, False, f"runtime returned no weights for {missing[:3]}", steps=steps,
                          tolerance=tolerance, loss_runtime=rt_losses, loss_pytorch=ref_losses)
    w_err = 0.0
    for n, ref in ref_weights.items():
        got = np.asarray(rt_weights[n], dtype=np.float64)
        if got.shape != tuple(ref.shape):
            return Validation(True, False, f"weight {n} came back as {got.shape}, expected {tuple(ref.shape)}",
                              steps=steps, tolerance=tolerance)
        r = np.asarray(ref, dtype=np.float64)
        w_err = max(w_err, float(np.max(np.abs(got - r)) / max(np.max(np.abs(r)), 1e-6)))
    passed = bool(loss_err <= tolerance and w_err <= tolerance)
    reason = "" if passed else (f"training diverges from {reference}: loss rel err {loss_err:.3g}, "
                                f"weight rel err {w_err:.3g} (tolerance {tolerance:g})")
    return Validation(True, passed, reason, steps=steps, tolerance=tolerance, loss_runtime=rt_losses,
                      loss_pytorch=ref_losses, max_rel_loss_diff=loss_err, max_rel_weight_diff=w_err,
                      max_abs_diff=None)
