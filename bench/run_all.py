"""Benchmarks, all measured in one run at 1 thread: export time, inference latency, and each
runtime's training step at batch 1, 8 and 32 as a ratio to PyTorch eager and to ONNX Runtime
(ExecuTorch twice: through its Python bindings, and as "executorch (native)" in the C++ runner);
load time apart from the first run and from the runtime's Python imports. Prints tables and
writes bench/results.json. Nothing here is a pass/fail test: it reports what it measured.

Models: `dcccl_device_step` (DC-CCL's phone program g(x) + f_d(x) with the default split-mode
architectures, seeded weights: step time does not depend on training), `fused_cnn` (the same
shape, smaller) and the embedding-MLP recommender.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dcl_core.bundle import Manifest  # noqa: E402
from exporters.api import export_model  # noqa: E402
from exporters.reference import PyTorchInference, PyTorchTraining  # noqa: E402
from exporters.formats import get_format  # noqa: E402
from exporters.runner import open_inference, open_training  # noqa: E402
from runtime_harness import metrics  # noqa: E402
from runtime_harness.devices.native import NativePlan, profile_native  # noqa: E402
from toolkit.methods.dcccl.config import load_config  # noqa: E402
from toolkit.methods.dcccl.export import training_spec  # noqa: E402
from toolkit.methods.dcccl.model import build_models, device_program  # noqa: E402
from toolkit.models.examples import Example, embedding_mlp, fused_cnn  # noqa: E402

FORMATS = ["executorch", "onnx", "tflite"]
BATCHES = (1, 8, 32)


def dcccl_device_step(batch: int = 32, seed: int = 0) -> Example:
    cfg = load_config()
    models = build_models(cfg, num_classes=20, pretrained=False)
    model = device_program(models.g, models.f_d).eval()
    gen = torch.Generator().manual_seed(seed)
    batches = [{"x": torch.rand(batch, 1, 28, 28, generator=gen), "y": torch.randint(0, 20, (batch,), generator=gen)}
               for _ in range(4)]
    spec = training_spec(cfg)
    spec.batch_size = batch
    return Example(model, (torch.rand(1, 1, 28, 28, generator=gen),), ["x"], ["logits"], spec, batches)


MODELS = {"dcccl_device_step": dcccl_device_step, "fused_cnn": fused_cnn, "embedding_mlp": embedding_mlp}


def _export(label: str, ex: Example, out: Path, formats: list[str]) -> tuple[Manifest, dict[str, float], float]:
    times: dict[str, float] = {}

    def log(msg: str) -> None:  # "  <program> <format> <kind> <summary> (<seconds>s)"; other lines are notes
        if msg.rstrip().endswith("s)"):
            times[msg.split()[1] + "_" + msg.split()[2]] = float(msg.rsplit("(", 1)[1].rstrip("s)"))

    t0 = time.perf_counter()
    m = export_model(ex.model, ex.inputs, formats, out, name=label, training=ex.spec, input_names=ex.input_names,
                     output_names=ex.output_names, train_batches=ex.batches, log=log)
    return m, times, time.perf_counter() - t0


def _timing_row(label: str, batch: int, a, t: metrics.TimingResult, base: metrics.TimingResult,
                export_s: float | None) -> dict:
    return {"model": label, "batch": batch, "format": a.format, "kind": a.kind, "export_s": export_s,
            "load_ms": (t.load_s or 0.0) * 1e3, "first_ms": t.first_s * 1e3,
            "p50_ms": t.runs.p50_s * 1e3, "eager_p50_ms": base.runs.p50_s * 1e3,
            "ratio_vs_eager": t.runs.p50_s / base.runs.p50_s,
            "parity": a.validation.max_abs_diff if a.kind == "inference" else a.validation.max_rel_weight_diff}


def bench_model(label: str, make, batches: tuple[int, ...], runs: int, seconds: float, tmp: Path) -> list[dict]:
    """Inference at batch 1 (from the first export) and a training step per batch size."""
    rows: list[dict] = []
    for i, batch in enumerate(batches):
        ex = make(batch=batch)
        out = tmp / f"{label}_b{batch}"
        formats = FORMATS + (["coreml"] if i == 0 else [])
        m, times, total = _export(label, ex, out, formats)
        if i == 0:
            rows.append({"model": label, "batch": batch, "format": "all", "kind": "export (4 formats, validated)",
                         "export_s": total})
        train = {k: v.numpy() for k, v in ex.batches[0].items()}
        eager_tr = metrics.profile_training(lambda: PyTorchTraining(ex.model, ex.spec), train, runs, seconds).timing
        if i == 0:
            inf_in = dict(zip(ex.input_names, (t.numpy() for t in ex.inputs)))
            eager_inf = metrics.profile_inference(lambda: PyTorchInference(ex.model), inf_in, runs, seconds).timing
        for a in m.artifacts:
            if a.format == "coreml" or (a.kind == "inference" and i > 0):
                continue
            path = out / a.path
            export_s = times.get(f"{a.format}_{a.kind}")
            if a.kind == "inference":
                t = metrics.profile_inference(lambda: open_inference(a.format, path, a, 1), inf_in, runs, seconds).timing
                rows.append(_timing_row(label, 1, a, t, eager_inf, export_s))
            else:
                t = metrics.profile_training(lambda: open_training(a.format, path, a, 1), train, runs, seconds).timing
                rows.append(_timing_row(label, batch, a, t, eager_tr, export_s))
                rows[-1]["import_s"] = cold_import_s(a.format, path, out)
            native = native_timing(a, path, inf_in if a.kind == "inference" else train, runs, seconds)
            if native is not None:
                rows.append(_timing_row(label, 1 if a.kind == "inference" else batch, a, native,
                                        eager_inf if a.kind == "inference" else eager_tr, None))
                rows[-1]["format"] = f"{a.format} (native)"
    _add_ratio_vs_ort(rows)
    return rows


def native_timing(a, path: Path, inputs: dict, runs: int, seconds: float) -> metrics.TimingResult | None:
    """The same artifact in its format's native runner (ExecuTorch: dcl_et_runner), timed by the
    runner itself; None for formats without one."""
    if get_format(a.format).load_native_runner() is None:
        return None
    profile, _, _ = profile_native(path, a, inputs, NativePlan(runs=runs, warmup=3, min_duration_s=seconds), None)
    return profile.timing


def cold_import_s(fmt: str, path: Path, bundle: Path) -> float | None:
    """The runtime's Python imports, apart from loading: in a fresh process (torch already
    imported, as in any dcl process), the first open of the artifact minus a second open."""
    code = f"""
import json, sys, time, torch
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from dcl_core.bundle import load_manifest
from exporters.runner import open_training
m = load_manifest({str(bundle)!r})
a = next(x for x in m.artifacts if x.format == {fmt!r} and x.kind == "training")
opens = []
for _ in range(2):
    t = time.perf_counter(); open_training({fmt!r}, {str(path)!r}, a, 1); opens.append(time.perf_counter() - t)
print(json.dumps(opens))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"cold import of {fmt} failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    first, second = json.loads(done.stdout.strip().splitlines()[-1])
    return first - second


def _add_ratio_vs_ort(rows: list[dict]) -> None:
    ort = {(r["model"], r["batch"], r["kind"]): r["p50_ms"] for r in rows if r["format"] == "onnx"}
    for r in rows:
        base = ort.get((r["model"], r["batch"], r["kind"]))
        if base and "p50_ms" in r:
            r["ratio_vs_ort"] = r["p50_ms"] / base


COLUMNS = [("model", "model"), ("batch", "batch"), ("format", "format"), ("kind", "kind"), ("p50_ms", "p50 ms"),
           ("eager_p50_ms", "eager p50 ms"), ("ratio_vs_eager", "/ eager"), ("ratio_vs_ort", "/ ORT"),
           ("load_ms", "load ms"), ("first_ms", "first run ms"), ("import_s", "imports s"),
           ("export_s", "export s"), ("parity", "parity")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for label in args.models:
            # the recommender's batch is its own (16); the CNNs run at every requested batch
            batches = tuple(args.batches) if label != "embedding_mlp" else (16,)
            rows += bench_model(label, MODELS[label], batches, args.runs, args.seconds, Path(tmp))
    print(tabulate([[r.get(k) for k, _ in COLUMNS] for r in rows], headers=[h for _, h in COLUMNS],
                   tablefmt="github", floatfmt=".4g"))
    out = Path(__file__).with_name("results.json")
    out.write_text(json.dumps({"threads": 1, "rows": rows}, indent=2) + "\n")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
