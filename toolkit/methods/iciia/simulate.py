"""`dcl simulate RUN --runtime R` for ICIIA: the test clients' phones, in a real runtime.

The run's `classifier` program is exported (and gate-verified) for the runtime into a temporary
folder; then every test client streams its images one at a time through the runtime's artifact,
with the ring buffer of its last B-1 features kept outside the program, as an app keeps it (the
features written back are the runtime's own `feature` outputs). The accuracy is compared with
PyTorch's streaming evaluation of the same clients (the one `dcl train` reports); they must
agree within 0.1 points. `--devices K` streams the first K test clients (default: all);
rounds and epochs do not apply (no on-device training happens here).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from exporters.api import export
from exporters.formats import Format
from exporters.runner import open_inference
from toolkit.plugin import FleetOptions, Log
from toolkit.methods.iciia.export import CLASSIFIER, classifier_program
from toolkit.methods.iciia.fleet import stream_in_runtime
from toolkit.methods.iciia.pipeline import MAIN, load_data, load_run, stream_outputs
from toolkit.train import progress

TOLERANCE_POINTS = 0.1


@dataclass
class StreamResult:
    runtime: str
    clients: int
    images: int
    accuracy: dict[str, float] = field(default_factory=dict)  # engine -> test accuracy %
    seconds: dict[str, float] = field(default_factory=dict)
    max_logit_diff: float = 0.0  # runtime vs PyTorch, over every streamed image
    max_feature_diff: float = 0.0
    prediction_agreement: float = 0.0  # % of images where both predict the same class

    @property
    def gap(self) -> float:
        return round(abs(self.accuracy[self.runtime] - self.accuracy["pytorch"]), 4)


def simulate(run_dir: str | Path, runtime: Format, options: FleetOptions, log: Log) -> StreamResult:
    fmt = runtime.name
    cfg, trained, _ = load_run(run_dir)
    clients, feats = load_data(cfg, trained, log)
    test = clients.stream("test")[: options.devices or None]
    labels = [clients.images.y[c] for c in test]
    res = StreamResult(fmt, len(test), sum(len(c) for c in test))

    t0 = time.perf_counter()
    outs = stream_outputs(trained.variants[MAIN], feats, test, cfg.attention.history)
    ref_logits = [o[0] for o in outs]
    res.seconds["pytorch"] = round(time.perf_counter() - t0, 2)
    res.accuracy["pytorch"] = _accuracy(ref_logits, labels)

    with tempfile.TemporaryDirectory(prefix="dcl-iciia-sim-") as tmp:
        log(f"exporting the {fmt} {CLASSIFIER} program (verified) ...")
        manifest = export([classifier_program(trained, clients, cfg)], [fmt], Path(tmp) / "bundle", method="iciia",
                          log=log)
        art = next(a for a in manifest.artifacts if a.kind == "inference")
        runner = open_inference(fmt, Path(tmp) / "bundle" / art.path, art, threads=1)
        t0 = time.perf_counter()
        got, agree = [], 0
        x = clients.images.x.numpy()
        for own, ref, own_feats in progress(list(zip(test, ref_logits, (feats[c] for c in test))), f"{fmt}: clients"):
            logits, features = stream_in_runtime(runner, x, own.tolist(), cfg.attention.history, trained.dim)
            res.max_feature_diff = max(res.max_feature_diff, float(np.max(np.abs(features - own_feats.numpy()))))
            got.append(torch.from_numpy(logits))
            res.max_logit_diff = max(res.max_logit_diff, float((got[-1] - ref).abs().max()))
            agree += int((got[-1].argmax(-1) == ref.argmax(-1)).sum())
        res.seconds[fmt] = round(time.perf_counter() - t0, 2)
    res.accuracy[fmt] = _accuracy(got, labels)
    res.prediction_agreement = round(100.0 * agree / max(res.images, 1), 2)
    return res


def _accuracy(logits: list[torch.Tensor], labels: list[torch.Tensor]) -> float:
    correct = torch.cat([lg.argmax(-1) == y for lg, y in zip(logits, labels)])
    return round(100.0 * correct.float().mean().item(), 2)
