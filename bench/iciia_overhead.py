"""ICIIA-T's cost over its backbone (issue P7): the pre-trained EfficientNet-Lite0 at 224x224 RGB
(ImageNet-1k, weights from its package, nothing downloads) as the frozen backbone, batch 1, 1 thread.

For each P: params and FLOPs (torch's FlopCounterMode: 2 per multiply-add of matmul/conv) of the
bare backbone vs backbone + ICIIA-T, then p50 latency of both in PyTorch eager and in every host
runtime, all measured in this one run. The two programs are the ones the ICIIA bundle ships:
`backbone` (BackboneProgram: extractor + its own 1000-class classifier) and `classifier`
(StreamingClassifier: extractor + ICIIA-T over the target and B-1 = 15 cached features, whose
head replaces the classifier), with N, H and B-1 from configs/iciia_efficientnet.toml. The ICIIA
weights are untrained (seeded): latency and FLOPs do not depend on them.

A third program per P, `iciia_alone` (the same StreamingClassifier with an identity extractor: the
target's feature in place of the image), times the module by itself; it includes ICIIA's head,
which replaces the backbone's classifier, so it slightly overstates what ICIIA adds.

Every artifact is exported and verified by the gate first (real ImageNet images, and histories
of real features: empty, partial and full); one bundle per program and format, so a refusal is
reported with its exact message and the rest still runs. A refused program is (unless --strict)
still timed from the same exporter's artifact without the gate, marked REFUSED, with where it
differs from PyTorch. Latency: each runtime's runners are opened once, then `--rounds` short
`profile_inference` calls each of the backbone and every program in turn (interleaved, so a busy
phase of a shared machine hits every program alike). Reported: p50 over all rounds' samples
(latency %), the median over rounds of the paired per-round p50 ratio (paired %), and the ratio
of the harness's CPU time per run (CPU-time %: at 1 thread, time spent waiting for a core on a
shared machine is not counted). Prints the tables and writes bench/iciia_overhead.json (with the
ops ExecuTorch left outside XNNPACK). A benchmark, not a test: it reports what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tabulate import tabulate
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dcl_core.bundle import Artifact  # noqa: E402
from exporters.api import ProgramSpec, _random_like, export  # noqa: E402
from exporters.base import ExportJob, get_exporter  # noqa: E402
from exporters.reference import PyTorchInference  # noqa: E402
from exporters.formats import get_format  # noqa: E402
from exporters.runner import open_inference  # noqa: E402
from runtime_harness import metrics  # noqa: E402
from runtime_harness.devices.native import NativePlan, profile_native  # noqa: E402
from toolkit.data.sources import load_foolbox_images  # noqa: E402
from toolkit.methods.iciia.config import load_config  # noqa: E402
from toolkit.methods.iciia.export import BACKBONE, CLASSIFIER, INPUT_NAMES, OUTPUT_NAMES  # noqa: E402
from toolkit.methods.iciia.model import (  # noqa: E402
    BackboneProgram,
    FeatureExtractor,
    StreamingClassifier,
    count_flops,
    formula_macs,
)
from toolkit.methods.iciia.pipeline import build_variant  # noqa: E402
from toolkit.models import count_params  # noqa: E402
from toolkit.models.corpus import efficientnet_lite0  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "iciia_efficientnet.toml"
RUNTIMES = ["executorch", "onnx", "tflite"]
EAGER = "pytorch eager"
ALONE = "iciia_alone"  # the ICIIA-T module without the backbone (its share of the latency)
CLASSES = 1000  # ImageNet-1k: ICIIA's head replaces the backbone's own classifier
PAPER = {"backbone": "MobileNetV3-L, 224, ImageNet", "P": 256, "params_pct": 2.47, "flops_pct": 1.62,
         "latency_ms": [5.0, 5.2], "latency_pct": 4.0}


def build(partitions: list[int]):
    """The backbone program and one ICIIA-T classifier program per P, sharing one extractor."""
    cfg = load_config(str(CONFIG), overrides={"attention": {"sweep": []}})
    corpus = efficientnet_lite0("none")  # _Head(package net) with `last_layer` = its ImageNet classifier
    net = corpus.model.eval()
    classifier = net.last_layer
    extractor = FeatureExtractor(net).eval()  # replaces the classifier by identity: image -> (1, 1280)
    backbone = BackboneProgram(extractor, classifier).eval()
    dim = extractor.dim
    variants = {}
    for k, p in enumerate(partitions):
        cfg.attention.partitions = p
        variants[p] = StreamingClassifier(extractor, build_variant(cfg, dim, CLASSES, p, True, k)).eval()
    return cfg, backbone, variants, dim


def real_inputs(extractor, history: int):
    """Real images (foolbox's ImageNet samples, normalised as the package expects) and histories of
    their real features: an empty, a partly filled and a full ring buffer."""
    images, _ = load_foolbox_images("imagenet", 224)
    xs = (images.float() - 127.0) / 128.0
    with torch.no_grad():
        feats = torch.cat([extractor(xs[i:i + 1]) for i in range(1, 1 + history)])
    cases = []
    for filled in (0, max(1, history // 3), history):
        mask = torch.zeros(history)
        mask[:filled] = 1.0
        hist = torch.zeros(history, feats.shape[1])
        hist[:filled] = feats[:filled]
        target = xs[(history + 1 + len(cases)) % len(xs)][None]
        cases.append((target, hist, mask))
    return cases


def export_ungated(spec: ProgramSpec, fmt: str, bundle: Path):
    """The artifact the gate refused, exported again by the same exporter without the gate (only
    to time it, marked as such), and where it differs from PyTorch: the gate's input sets (a
    random one and the given ones), max |diff| per output."""
    bundle.mkdir(parents=True)
    model, inputs = spec.model.eval(), tuple(spec.example_inputs)
    job = ExportJob(model, inputs, spec.names(), list(spec.output_names), bundle, f"{spec.name}_{fmt}")
    art = get_exporter(fmt).export_inference(job)
    runner = open_inference(fmt, bundle / art.path, art, 1)
    sets = [("random", tuple(_random_like(inputs)))] + [(f"given_{i}", tuple(v)) for i, v in
                                                          enumerate(spec.validation_inputs)]
    per_output: dict[str, float] = {}
    worst = (0.0, "")
    for label, values in sets:
        with torch.no_grad():
            ref = model(*values)
        refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        got = runner.infer(dict(zip(spec.names(), (v.numpy() for v in values))))
        for name, g, r in zip(spec.output_names, got, refs):
            d = float(np.max(np.abs(np.asarray(g, dtype=np.float64).reshape(r.shape) - r.double().numpy())))
            per_output[name] = max(per_output.get(name, 0.0), d)
            if d > worst[0]:
                worst = (d, f"max|diff| {d:.3g} on output {name!r}, input set {label}, |output| max "
                            f"{float(r.abs().max()):.3g}")
    return art, {"max_abs_diff": worst[0], "worst": worst[1],
                 "per_output": {k: float(f"{v:.3g}") for k, v in per_output.items()}}


class NativeProgram(NamedTuple):
    """An artifact the round loop runs in its format's native runner (a process per round)."""

    path: Path
    artifact: Artifact


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=4, help="min measured runs per program per round")
    ap.add_argument("--seconds", type=float, default=0.1, help="min seconds per program per round")
    ap.add_argument("--rounds", type=int, default=50,
                    help="interleaved rounds per runtime (each: backbone, then every program of every P)")
    ap.add_argument("--p", default="64,256", help="comma-separated ICIIA-T partitions P")
    ap.add_argument("--formats", default=",".join(RUNTIMES))
    ap.add_argument("--strict", action="store_true",
                    help="time only gated artifacts (default: a program the gate refuses is still timed, "
                         "exported by the same exporter without the gate, and marked REFUSED)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("iciia_overhead.json")))
    args = ap.parse_args()
    t_start = time.perf_counter()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    partitions = [int(p) for p in args.p.split(",") if p]
    formats = [f for f in args.formats.split(",") if f]

    cfg, backbone, variants, dim = build(partitions)
    cfg.check_dim(dim)
    a = cfg.attention
    cases = real_inputs(backbone.extractor, a.history)
    x0 = cases[-1][0]
    with torch.no_grad():  # the module alone takes the target's feature instead of the image
        feature_cases = [(backbone.extractor(c[0]), c[1], c[2]) for c in cases]

    # (a) params and FLOPs
    base_params, base_flops = count_params(backbone), count_flops(backbone, x0)
    cost = {}
    for p, model in variants.items():
        params, flops = count_params(model), count_flops(model, *cases[-1])
        cost[p] = {"params": params, "added_params": params - base_params,
                   "attention_params": model.iciia.attention_params(),
                   "params_pct": 100.0 * (params / base_params - 1), "flops": flops,
                   "added_flops": flops - base_flops, "flops_pct": 100.0 * (flops / base_flops - 1),
                   "formula_flops": 2 * formula_macs(dim, p, a.layers, a.history + 1)}
    print(f"EfficientNet-Lite0 224x224, D = {dim}: {base_params:,} params, {base_flops / 1e6:.1f} MFLOPs; "
          f"ICIIA-T N = {a.layers}, H = {a.heads}, B = {a.history + 1}, {CLASSES} classes", flush=True)

    # (b) the programs; export + gate
    specs = [ProgramSpec(BACKBONE, backbone, (x0,), ["x"], ["logits"], validation_inputs=[(c[0],) for c in cases])]
    inputs = {BACKBONE: (x0,)}
    for p, model in variants.items():
        specs.append(ProgramSpec(f"{CLASSIFIER}_p{p}", model, cases[-1], INPUT_NAMES, OUTPUT_NAMES,
                                 validation_inputs=cases, extra={"partitions": p, "history": a.history}))
        # the module alone: the same wrapper with an identity extractor (its cost without the backbone's)
        alone = StreamingClassifier(nn.Identity(), model.iciia).eval()
        specs.append(ProgramSpec(f"{ALONE}_p{p}", alone, feature_cases[-1], ["target_feature"] + INPUT_NAMES[1:],
                                 OUTPUT_NAMES, validation_inputs=feature_cases))
        inputs[f"{CLASSIFIER}_p{p}"], inputs[f"{ALONE}_p{p}"] = cases[-1], feature_cases[-1]
    feeds = {s.name: dict(zip(s.names(), (t.numpy() for t in inputs[s.name]))) for s in specs}
    export_times: dict[str, float] = {}

    def log(msg: str) -> None:
        print(msg, flush=True)
        if msg.rstrip().endswith("s)"):
            export_times[f"{msg.split()[0]} {msg.split()[1]}"] = float(msg.rsplit("(", 1)[1].rstrip("s)"))

    failures: list[str] = []
    gate: dict[str, dict[str, str]] = {}
    parity: dict[str, dict[str, float]] = {}
    portable: dict[str, list] = {}  # ExecuTorch: the ops left outside XNNPACK (they split its partitions)
    timed: dict[str, dict[str, dict[str, list[float]]]] = {}  # runtime -> program -> samples / round stats
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        openers = {EAGER: {s.name: (lambda m=s.model: PyTorchInference(m, 1)) for s in specs}}
        for fmt in formats:
            for spec in specs:  # one bundle per program and format: a refusal is reported, the rest still runs
                where = Path(tmp) / fmt / spec.name
                try:
                    art = export([spec], [fmt], where, log=log).programs[0].artifacts[0]
                    parity.setdefault(fmt, {})[spec.name] = art.validation.max_abs_diff
                    gate.setdefault(fmt, {})[spec.name] = "passed"
                    if "portable_ops" in art.details:
                        portable[spec.name] = art.details["portable_ops"]
                except Exception as e:  # noqa: BLE001 - a benchmark reports what failed, exactly
                    failures.append(f"export {spec.name} {fmt}: {type(e).__name__}: {e}")
                    print(f"  FAILED {failures[-1]}", flush=True)
                    if args.strict:
                        continue
                    where = Path(tmp) / "ungated" / fmt / spec.name
                    art, detail = export_ungated(spec, fmt, where)
                    parity.setdefault(fmt, {})[spec.name] = detail["max_abs_diff"]
                    gate.setdefault(fmt, {})[spec.name] = f"REFUSED ({detail['worst']})"
                    failures[-1] += f" [{detail['worst']}; max|diff| per output {detail['per_output']}]"
                    print(f"  {spec.name} {fmt}: timed UNGATED (the same exporter's artifact; --strict skips it): "
                          f"{detail['worst']}; per output {detail['per_output']}", flush=True)
                openers.setdefault(fmt, {})[spec.name] = (
                    lambda f=fmt, pth=where / art.path, ar=art: open_inference(f, pth, ar, 1))
                if get_format(fmt).load_native_runner() is not None:  # also as an app runs it, without Python
                    openers.setdefault(f"{fmt} (native)", {})[spec.name] = (
                        lambda pth=where / art.path, ar=art: NativeProgram(pth, ar))
        export_s = time.perf_counter() - t0

        # (c) latency: every runner opened once, then interleaved rounds of short profiles
        t1 = time.perf_counter()
        for rt, progs in openers.items():
            if BACKBONE not in progs:
                continue
            runners = {n: op() for n, op in progs.items()}
            timed[rt] = {n: {"samples_s": [], "round_p50_s": [], "round_cpu_s": []} for n in runners}
            for _ in range(args.rounds):
                for n, runner in runners.items():
                    if isinstance(runner, NativeProgram):  # one runner process per round: its own timings
                        prof, _, _ = profile_native(runner.path, runner.artifact, feeds[n], NativePlan(
                            runs=args.runs, warmup=1, min_duration_s=args.seconds), None)
                    else:
                        prof = metrics.profile_inference(lambda r=runner: r, feeds[n], args.runs, args.seconds,
                                                         warmup=0)
                    timed[rt][n]["samples_s"] += prof.timing.samples_s
                    timed[rt][n]["round_p50_s"].append(prof.timing.runs.p50_s)
                    timed[rt][n]["round_cpu_s"].append(prof.timing.cpu_per_run_s)
            del runners
            print(f"  timed {rt}: " + ", ".join(f"{n} {metrics.latency_stats(v['samples_s']).p50_s * 1e3:.2f} ms"
                                                for n, v in timed[rt].items()), flush=True)
        timing_s = time.perf_counter() - t1

    # results
    rows = []
    for rt, progs in timed.items():
        base = progs[BACKBONE]
        b50 = metrics.latency_stats(base["samples_s"]).p50_s
        bcpu = statistics.median(base["round_cpu_s"])
        for p in partitions:
            c, m = progs.get(f"{CLASSIFIER}_p{p}"), progs.get(f"{ALONE}_p{p}")
            if c is None:
                continue
            c50 = metrics.latency_stats(c["samples_s"]).p50_s
            paired = [100.0 * (x / y - 1) for x, y in zip(c["round_p50_s"], base["round_p50_s"])]
            ccpu = statistics.median(c["round_cpu_s"])
            rows.append({
                "runtime": rt, "P": p, "backbone_p50_ms": b50 * 1e3, "iciia_p50_ms": c50 * 1e3,
                "latency_pct": 100.0 * (c50 / b50 - 1),
                "latency_pct_paired_median": statistics.median(paired),
                "latency_pct_paired_quartiles": [float(q) for q in statistics.quantiles(paired, n=4)]
                if len(paired) > 1 else paired,
                "backbone_cpu_ms": bcpu * 1e3, "iciia_cpu_ms": ccpu * 1e3, "cpu_pct": 100.0 * (ccpu / bcpu - 1),
                "module_alone_p50_ms": metrics.latency_stats(m["samples_s"]).p50_s * 1e3 if m else None,
                "module_alone_pct": 100.0 * metrics.latency_stats(m["samples_s"]).p50_s / b50 if m else None,
                "runs": [len(base["samples_s"]), len(c["samples_s"])],
                "gate": [gate.get(rt, {}).get(BACKBONE, "-"), gate.get(rt, {}).get(f"{CLASSIFIER}_p{p}", "-"),
                         gate.get(rt, {}).get(f"{ALONE}_p{p}", "-")],
                "parity": [parity.get(rt, {}).get(BACKBONE), parity.get(rt, {}).get(f"{CLASSIFIER}_p{p}"),
                           parity.get(rt, {}).get(f"{ALONE}_p{p}")]})
    wall_s = time.perf_counter() - t_start

    print()
    print(tabulate([[p, c["attention_params"], c["params_pct"], c["added_flops"] / 1e6, c["flops_pct"],
                     c["formula_flops"] / 1e6] for p, c in cost.items()],
                   headers=["P", "added params", "params %", "added MFLOPs", "FLOPs %", "formula MFLOPs"],
                   tablefmt="github", floatfmt=".4g"))
    print()
    print(tabulate([[r["runtime"], r["P"], r["backbone_p50_ms"], r["iciia_p50_ms"], r["latency_pct"],
                     r["latency_pct_paired_median"], r["cpu_pct"], r["module_alone_p50_ms"], r["module_alone_pct"],
                     " / ".join(g.split(" (")[0] for g in r["gate"])] for r in rows],
                   headers=["runtime", "P", "backbone p50 ms", "+ICIIA-T p50 ms", "latency %", "paired %",
                            "CPU-time %", "module alone p50 ms", "alone % of backbone",
                            "gate (backbone / +ICIIA / alone)"], tablefmt="github", floatfmt=".4g"))
    for f in failures:
        print(f"FAILED: {f}")
    print(f"\nwall time {wall_s:.0f} s (export + gate {export_s:.0f} s, timing {timing_s:.0f} s)")
    out = {"backbone": "efficientnet_lite0 (pre-trained ImageNet-1k), 224x224 RGB, batch 1", "threads": 1,
           "feature_dim": dim, "layers": a.layers, "heads": a.heads, "history": a.history, "tokens": a.history + 1,
           "classes": CLASSES, "backbone_params": base_params, "backbone_flops": base_flops,
           "cost": {str(p): c for p, c in cost.items()}, "latency": rows, "failures": failures, "gate": gate,
           "parity": parity, "executorch_portable_ops": portable, "args": vars(args), "export_s": export_s,
           "export_times_s": export_times,
           "timing_s": timing_s, "wall_s": wall_s, "paper": PAPER, "host": platform.platform(),
           "cpus": os.cpu_count(), "loadavg_end": list(os.getloadavg()), "torch": torch.__version__,
           "programs": [s.name for s in specs]}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
