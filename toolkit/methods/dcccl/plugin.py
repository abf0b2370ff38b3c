"""DC-CCL as a `dcl` method plug-in (registered in toolkit/methods/registry.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from exporters.formats import Format
from exporters.spec import TrainingSpec
from runtime_harness.profile import Baseline
from toolkit.methods.base import ExportOptions, ExportRecipe, FleetOptions, Log, Method, SimulationReport
from toolkit.methods.dcccl import config, pipeline
from toolkit.methods.dcccl.export import PROGRAM, device_step_program, phone_program
from toolkit.methods.dcccl.report import dcccl_table


class DCCCL(Method):
    name = "dcccl"
    title = "DC-CCL: cloud submodel, mimic distillation, controlled device rounds, and the baselines"
    simulate_noise_floor = True

    def load_config(self, path: str | None, quick: bool, seed: int | None) -> config.DCCCLConfig:
        return config.load_config(path, quick=quick, seed=seed)

    def train(self, cfg: config.DCCCLConfig, out: Path, force: bool = False) -> dict[str, Any]:
        return pipeline.train_to_dir(cfg, out, force)

    def evaluate(self, run_dir: Path) -> dict[str, Any]:
        return pipeline.evaluate_run(run_dir)

    def results_table(self, metrics: dict[str, Any]) -> str:
        return dcccl_table(metrics)

    def export_recipe(self, run_dir: Path, options: ExportOptions, log: Log) -> ExportRecipe:
        return ExportRecipe([device_step_program(run_dir, options.bn, options.lr)])

    def baselines(self, run_dir: Path, manifest_programs: dict[str, Any]) -> dict[str, Baseline]:
        _, model, _ = phone_program(run_dir)
        training = None
        program = manifest_programs.get(PROGRAM)
        art = next((a for a in program.artifacts if a.kind == "training" and a.optimizer), None) if program else None
        if art is not None:  # the same program as exported: its trainable set and optimizer
            o = art.optimizer
            training = TrainingSpec(trainable=list(art.trainable), loss=art.loss or "cross_entropy", lr=o["lr"],
                                    momentum=o["momentum"], weight_decay=o["weight_decay"])
        return {PROGRAM: Baseline(model, training)}

    def simulate(self, run_dir: Path, runtime: Format, options: FleetOptions, log: Log) -> SimulationReport:
        import dataclasses

        from toolkit.methods.dcccl.simulate import simulate

        res = simulate(run_dir, runtime, options, log)
        rows = [[engine, *acc.values(), res.seconds[engine]] for engine, acc in res.accuracy.items()]
        summary = f"|union gap| = {res.union_gap:.2f} points ({res.steps} runtime steps)"
        record = dataclasses.asdict(res) | {"union_gap": res.union_gap}
        if res.noise_floor is not None:
            summary += f"; PyTorch from a start 1 ulp away: {res.noise_floor:.2f} points (rounding alone)"
            record["noise_floor"] = res.noise_floor
        return SimulationReport(["engine", "cloud_test %", "device_test %", "union_test %", "seconds"], rows,
                                summary, record)

    def import_weights(self, run_dir: Path, weights: Path, program: str | None, name: str | None,
                       force: bool = False) -> dict[str, Any]:
        from dcl_core.errors import ConfigError
        from toolkit.methods.dcccl.transfer import import_device_weights

        if program not in (None, PROGRAM):
            raise ConfigError(f"a DC-CCL bundle has one program, {PROGRAM!r}; got --program {program!r}")
        return import_device_weights(run_dir, weights, "f_d_imported" if name is None else name, force)
