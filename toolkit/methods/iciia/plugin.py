"""ICIIA as a `dcl` method plug-in (one line in toolkit/registry.py); the shape every method's
plugin.py has is described in toolkit/plugin.py."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit.plugin import (ExportOptions, ExportRecipe, FleetOptions, Log, Method, SimulationReport,
                            exported_training)


class ICIIA(Method):
    name = "iciia"
    title = "ICIIA: intra-client inter-image attention over cached features (ICIIA-B/T, baselines, control)"
    fleet_clients, fleet_rounds = 0, 1  # every test client; nothing trains, so a round repeats itself

    def export_recipe(self, run_dir: Path, options: ExportOptions, log: Log) -> ExportRecipe:
        from toolkit.methods.iciia.export import recipe_programs

        programs, extra = recipe_programs(run_dir, options.bn, options.lr, log)
        return ExportRecipe(programs, extra)

    def baselines(self, run_dir: Path, manifest_programs: dict[str, Any]) -> dict[str, Any]:
        import copy

        from runtime_harness.profile import Baseline
        from toolkit.methods.iciia.export import BACKBONE, CLASSIFIER, HEAD, head_training_spec
        from toolkit.methods.iciia.model import HeadProgram
        from toolkit.methods.iciia.pipeline import MAIN, load_run

        cfg, trained, _ = load_run(run_dir)
        default = head_training_spec(cfg)  # what the exporter writes when the bundle has no head program
        training = exported_training(manifest_programs, HEAD, "cross_entropy", batch_size=default.batch_size)
        return {CLASSIFIER: Baseline(trained.streaming(MAIN)),
                HEAD: Baseline(HeadProgram(copy.deepcopy(trained.variants[MAIN].head)), training or default),
                BACKBONE: Baseline(trained.backbone.eval())}

    def simulate(self, run_dir: Path, runtime: Any, options: FleetOptions, log: Log) -> SimulationReport:
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

        self.check_program(program, HEAD)
        return import_head(run_dir, weights, DEFAULT_NAME if name is None else name, force)
