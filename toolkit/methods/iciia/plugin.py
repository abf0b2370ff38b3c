"""ICIIA as a `dcl` method plug-in (registered in toolkit/methods/registry.py)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from dcl_core.errors import ConfigError
from exporters.formats import Format
from runtime_harness.profile import Baseline
from toolkit.methods.base import (
    ExportOptions,
    ExportRecipe,
    FleetOptions,
    Log,
    Method,
    SimulationReport,
)
from toolkit.methods.iciia import config, pipeline
from toolkit.methods.iciia.report import iciia_table


def _stderr_log(msg: str) -> None:
    from toolkit.train import progress_enabled

    if progress_enabled():
        print(msg, file=sys.stderr)


class ICIIA(Method):
    name = "iciia"
    title = "ICIIA: intra-client inter-image attention over cached features (ICIIA-B/T, baselines, control)"

    def load_config(self, path: str | None, quick: bool, seed: int | None) -> config.ICIIAConfig:
        return config.load_config(path, quick=quick, seed=seed)

    def train(self, cfg: config.ICIIAConfig, out: Path, force: bool = False) -> dict[str, Any]:
        return pipeline.train_to_dir(cfg, out, force, log=_stderr_log)

    def evaluate(self, run_dir: Path) -> dict[str, Any]:
        return pipeline.evaluate_run(run_dir)

    def results_table(self, metrics: dict[str, Any]) -> str:
        return iciia_table(metrics)

    def export_recipe(self, run_dir: Path, options: ExportOptions, log: Log) -> ExportRecipe:
        from toolkit.methods.iciia.export import recipe_programs

        programs, extra = recipe_programs(run_dir, options.bn, options.lr, log)
        return ExportRecipe(programs, extra)

    def baselines(self, run_dir: Path, manifest_programs: dict[str, Any]) -> dict[str, Baseline]:
        import copy

        from exporters.spec import TrainingSpec
        from toolkit.methods.iciia.export import (
            BACKBONE,
            CLASSIFIER,
            HEAD,
            head_training_spec,
        )
        from toolkit.methods.iciia.module import HeadProgram

        cfg, trained, _ = pipeline.load_run(run_dir)
        training = head_training_spec(cfg)
        program = manifest_programs.get(HEAD)
        art = next((a for a in program.artifacts if a.kind == "training" and a.optimizer), None) if program else None
        if art is not None:  # the program as exported: its trainable set and optimizer
            o = art.optimizer
            training = TrainingSpec(trainable=list(art.trainable), loss=art.loss or "cross_entropy", lr=o["lr"],
                                    momentum=o["momentum"], weight_decay=o["weight_decay"],
                                    batch_size=training.batch_size)
        return {CLASSIFIER: Baseline(trained.streaming(pipeline.MAIN)),
                HEAD: Baseline(HeadProgram(copy.deepcopy(trained.variants[pipeline.MAIN].head)), training),
                BACKBONE: Baseline(trained.backbone.eval())}

    def simulate(self, run_dir: Path, runtime: Format, options: FleetOptions, log: Log) -> SimulationReport:
        import dataclasses

        from toolkit.methods.iciia.simulate import TOLERANCE_POINTS, simulate

        res = simulate(run_dir, runtime, options, log)
        rows = [[engine, acc, res.images, res.seconds[engine]] for engine, acc in res.accuracy.items()]
        verdict = "agree" if res.gap <= TOLERANCE_POINTS else "DISAGREE"
        return SimulationReport(
            ["engine", "test_acc %", "images", "seconds"], rows,
            f"|accuracy gap| = {res.gap:.2f} points ({verdict}, tolerance {TOLERANCE_POINTS}); "
            f"predictions agree on {res.prediction_agreement:.2f}% of {res.images} images; "
            f"max |logit diff| {res.max_logit_diff:.2e}, max |feature diff| {res.max_feature_diff:.2e}",
            dataclasses.asdict(res) | {"gap": res.gap, "tolerance": TOLERANCE_POINTS})

    def import_weights(self, run_dir: Path, weights: Path, program: str | None, name: str | None,
                       force: bool = False) -> dict[str, Any]:
        from toolkit.methods.iciia.export import HEAD
        from toolkit.methods.iciia.transfer import DEFAULT_NAME, import_head

        if program not in (None, HEAD):
            raise ConfigError(f"an ICIIA bundle trains one program, {HEAD!r}; got --program {program!r}")
        return import_head(run_dir, weights, DEFAULT_NAME if name is None else name, force)
