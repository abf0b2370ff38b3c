"""CoDA as a `dcl` method plug-in (registered in toolkit/methods/registry.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from exporters.formats import Format
from exporters.spec import TrainingSpec
from runtime_harness.profile import Baseline
from toolkit.methods.base import ExportOptions, ExportRecipe, FleetOptions, Log, Method, SimulationReport
from toolkit.methods.coda import config


class CoDA(Method):
    name = "coda"
    title = "CoDA: cloud-coordinated data augmentation (coarse matching, on-device filtering, personalization)"

    @property
    def serve_command(self):
        """`dcl serve coda RUN`: the cloud side over HTTP (service.py)."""
        from toolkit.methods.coda.service import serve_command

        return serve_command

    def load_config(self, path: str | None, quick: bool, seed: int | None) -> config.CoDAConfig:
        return config.load_config(path, quick=quick, seed=seed)

    def train(self, cfg: config.CoDAConfig, out: Path, force: bool = False) -> dict[str, Any]:
        from toolkit.methods.coda.pipeline import train_to_dir

        return train_to_dir(cfg, out, force)

    def evaluate(self, run_dir: Path) -> dict[str, Any]:
        from toolkit.methods.coda.pipeline import evaluate_run

        return evaluate_run(run_dir)

    def results_table(self, metrics: dict[str, Any]) -> str:
        from toolkit.methods.coda.report import coda_table

        return coda_table(metrics)

    def export_recipe(self, run_dir: Path, options: ExportOptions, log: Log) -> ExportRecipe:
        from toolkit.methods.coda.export import bundle_programs

        programs, extra = bundle_programs(run_dir, options.lr)
        return ExportRecipe(programs, extra)

    def baselines(self, run_dir: Path, manifest_programs: dict[str, Any]) -> dict[str, Baseline]:
        from toolkit.methods.coda.pipeline import load_run

        _, models, _ = load_run(run_dir)
        out = {}
        for name, model in models.templates().items():
            training = None
            program = manifest_programs.get(name)
            art = next((a for a in program.artifacts if a.kind == "training" and a.optimizer), None) if program else None
            if art is not None:  # the program as exported: its trainable set and optimizer
                o = art.optimizer
                training = TrainingSpec(trainable=list(art.trainable), loss=art.loss or "bce_with_logits", lr=o["lr"],
                                        momentum=o["momentum"], weight_decay=o["weight_decay"])
            out[name] = Baseline(model, training)
        return out

    def simulate(self, run_dir: Path, runtime: Format, options: FleetOptions, log: Log) -> SimulationReport:
        from toolkit.methods.coda.simulate import simulate

        return simulate(run_dir, runtime, options, log)
