"""DC-CCL as a `dcl` method plug-in (one line in toolkit/registry.py); the shape every method's
plugin.py has is described in toolkit/plugin.py."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit.plugin import (ExportOptions, ExportRecipe, FleetOptions, Log, Method, SimulationReport,
                            exported_training)


class DCCCL(Method):
    name = "dcccl"
    title = "DC-CCL: cloud submodel, mimic distillation, controlled device rounds, and the baselines"
    simulate_noise_floor = True
    fleet_clients = 0  # the run's devices, each one client (more: shards of their data)

    def export_recipe(self, run_dir: Path, options: ExportOptions, log: Log) -> ExportRecipe:
        from toolkit.methods.dcccl.export import device_step_program

        return ExportRecipe([device_step_program(run_dir, options.bn, options.lr)])

    def baselines(self, run_dir: Path, manifest_programs: dict[str, Any]) -> dict[str, Any]:
        from runtime_harness.profile import Baseline
        from toolkit.methods.dcccl.export import PROGRAM, phone_program, real_batches

        _, model, sc = phone_program(run_dir)
        training = exported_training(manifest_programs, PROGRAM, "cross_entropy")
        record = manifest_programs.get(PROGRAM)
        art = next((a for a in record.artifacts if a.kind == "training"), None) if record else None
        batch = real_batches(sc, int(art.inputs[0].shape[0]), 1)[0] if art else None
        return {PROGRAM: Baseline(model, training, inputs={"x": sc.device_test.x[:1].numpy()},
                                  train_batch={k: v.numpy() for k, v in batch.items()} if batch else None)}

    def simulate(self, run_dir: Path, runtime: Any, options: FleetOptions, log: Log) -> SimulationReport:
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
        from toolkit.methods.dcccl.export import PROGRAM
        from toolkit.methods.dcccl.transfer import DEFAULT_NAME, import_device_weights

        self.check_program(program, PROGRAM)
        return import_device_weights(run_dir, weights, DEFAULT_NAME if name is None else name, force)
