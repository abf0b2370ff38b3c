"""EfficientNet-Lite0 (pre-trained, 224x224 RGB, batch 1, 1 thread): each runtime's inference p50
as a ratio to PyTorch eager and to the fastest runtime, all measured in this one run.

Every artifact is exported and verified by the gate first (foolbox's real ImageNet images among
the checked inputs). Prints a table and writes bench/efficientnet_results.json. A benchmark, not
a test: it reports what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporters.api import export  # noqa: E402
from exporters.reference import PyTorchInference  # noqa: E402
from exporters.runner import open_inference  # noqa: E402
from runtime_harness import metrics  # noqa: E402
from toolkit.models.corpus import efficientnet_lite0  # noqa: E402

RUNTIMES = ["executorch", "onnx", "tflite"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--formats", default=",".join(RUNTIMES))
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    program = efficientnet_lite0("none")
    x = {"x": program.example_inputs[0].numpy()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = export([program], args.formats.split(","), Path(tmp) / "b", log=print)
        eager = metrics.profile_inference(lambda: PyTorchInference(program.model, 1), x, args.runs, args.seconds)
        rows.append({"runtime": "pytorch eager", "p50_ms": eager.timing.runs.p50_s * 1e3, "parity": 0.0})
        for a in manifest.artifacts:
            path = Path(tmp) / "b" / a.path
            prof = metrics.profile_inference(lambda: open_inference(a.format, path, a, 1), x, args.runs, args.seconds)
            rows.append({"runtime": a.format, "p50_ms": prof.timing.runs.p50_s * 1e3,
                         "parity": a.validation.max_abs_diff})
    fastest = min(r["p50_ms"] for r in rows if r["runtime"] != "pytorch eager")
    for r in rows:
        r["vs_eager"] = r["p50_ms"] / rows[0]["p50_ms"]
        r["vs_fastest_runtime"] = r["p50_ms"] / fastest
    print(tabulate([[r["runtime"], r["p50_ms"], r["vs_eager"], r["vs_fastest_runtime"], r["parity"]] for r in rows],
                   headers=["runtime", "p50 ms", "x eager", "x fastest runtime", "max|diff| vs PyTorch"],
                   tablefmt="github", floatfmt=".4g"))
    out = Path(__file__).with_name("efficientnet_results.json")
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
