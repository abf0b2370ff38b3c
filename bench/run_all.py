"""Benchmarks: export time, inference latency and training-step time per runtime, as ratios
against PyTorch eager measured in the same run (1 thread). Prints a table; writes bench/results.json.

Models: `fused_cnn` (two CNNs with summed logits, one frozen: the shape of DC-CCL's device step)
and the embedding-MLP recommender. Nothing here is a pass/fail test: it reports what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporters.api import export_model  # noqa: E402
from exporters.reference import PyTorchInference, PyTorchTraining  # noqa: E402
from exporters.runner import open_inference, open_training  # noqa: E402
from runtime_harness import metrics  # noqa: E402
from toolkit.models.examples import embedding_mlp, fused_cnn  # noqa: E402

FORMATS = ["executorch", "onnx", "tflite"]


def bench_model(label: str, ex, runs: int, seconds: float) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        times: dict[str, float] = {}

        def log(msg: str) -> None:  # "  <program> <format> <kind> <summary> (<seconds>s)"; other lines are notes
            if msg.rstrip().endswith("s)"):
                times[msg.split()[1] + "_" + msg.split()[2]] = float(msg.rsplit("(", 1)[1].rstrip("s)"))

        m = export_model(ex.model, ex.inputs, FORMATS + ["coreml"], Path(tmp) / "b", name=label, training=ex.spec,
                         input_names=ex.input_names, output_names=ex.output_names, train_batches=ex.batches, log=log)
        total = time.perf_counter() - t0
        inf_in = dict(zip(ex.input_names, (t.numpy() for t in ex.inputs)))
        batch = {k: v.numpy() for k, v in ex.batches[0].items()}
        eager_inf = metrics.profile_inference(lambda: PyTorchInference(ex.model), inf_in, runs, seconds).timing.runs
        eager_tr = metrics.profile_training(lambda: PyTorchTraining(ex.model, ex.spec), batch, runs, seconds).timing.runs
        for a in m.artifacts:
            if a.format == "coreml":
                continue
            path = Path(tmp) / "b" / a.path
            if a.kind == "inference":
                r = metrics.profile_inference(lambda: open_inference(a.format, path, a, 1), inf_in, runs, seconds).timing.runs
                base = eager_inf
            else:
                r = metrics.profile_training(lambda: open_training(a.format, path, a, 1), batch, runs, seconds).timing.runs
                base = eager_tr
            rows.append({"model": label, "format": a.format, "kind": a.kind, "export_s": times.get(f"{a.format}_{a.kind}"),
                         "p50_ms": r.p50_s * 1e3, "eager_p50_ms": base.p50_s * 1e3, "ratio_vs_eager": r.p50_s / base.p50_s,
                         "parity": a.validation.max_abs_diff if a.kind == "inference" else a.validation.max_rel_weight_diff})
        rows.append({"model": label, "format": "all", "kind": "export (4 formats, with validation)", "export_s": total})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = bench_model("fused_cnn", fused_cnn(batch=32), args.runs, args.seconds)
    rows += bench_model("embedding_mlp", embedding_mlp(), args.runs, args.seconds)
    print(tabulate([[r.get(k) for k in ("model", "format", "kind", "export_s", "p50_ms", "eager_p50_ms", "ratio_vs_eager", "parity")]
                    for r in rows], headers=["model", "format", "kind", "export s", "p50 ms", "eager p50 ms",
                                              "runtime/eager", "parity"], tablefmt="github", floatfmt=".4g"))
    out = Path(__file__).with_name("results.json")
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
