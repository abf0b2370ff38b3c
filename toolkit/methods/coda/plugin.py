"""CoDA as a `dcl` method plug-in (one line in toolkit/registry.py); the shape every method's
plugin.py has is described in toolkit/plugin.py."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit.plugin import (ExportOptions, ExportRecipe, FleetOptions, Log, Method, SimulationReport,
                            exported_training)


class CoDA(Method):
    name = "coda"
    title = "CoDA: cloud-coordinated data augmentation (coarse matching, on-device filtering, personalization)"
    # the users `dcl simulate` samples; a phone starts from the run's model every round, so one round
    fleet_clients, fleet_rounds = 6, 1

    @property
    def serve_command(self):
        """`dcl serve coda RUN`: the cloud side over HTTP (service.py)."""
        from toolkit.methods.coda.service import serve_command

        return serve_command

    def export_recipe(self, run_dir: Path, options: ExportOptions, log: Log) -> ExportRecipe:
        from toolkit.methods.coda.export import bundle_programs

        programs, extra = bundle_programs(run_dir, options.lr)
        return ExportRecipe(programs, extra)

    def baselines(self, run_dir: Path, manifest_programs: dict[str, Any]) -> dict[str, Any]:
        from runtime_harness.profile import Baseline
        from toolkit.methods.coda.device import KEY_ENCODER
        from toolkit.methods.coda.export import key_encoder
        from toolkit.methods.coda.pipeline import load_run

        cfg, models, _ = load_run(run_dir)
        return {name: Baseline(model, exported_training(manifest_programs, name, "bce_with_logits"))
                for name, model in models.templates().items()} | {KEY_ENCODER: Baseline(key_encoder(models, cfg.matching))}

    def simulate(self, run_dir: Path, runtime: Any, options: FleetOptions, log: Log) -> SimulationReport:
        from toolkit.methods.coda.simulate import simulate

        r = simulate(run_dir, runtime, options, log)
        rows = [[engine, res["cloud_only"]["user_auc"], res["coda"]["user_auc"], res["coda"]["auc"], r["steps"][engine],
                 r["seconds"][engine]] for engine, res in r["results"].items()]
        summary = (f"{len(r['users'])} devices; |coda user AUC gap| = {r['user_auc_gap']:.4f}, |overall AUC gap| = "
                   f"{r['auc_gap']:.4f} ({'within' if r['agrees'] else 'OUTSIDE'} {r['tolerance']}); "
                   f"{r['runtime_steps']} runtime steps")
        q = r.get("requests")
        if q:
            summary += (f"; requests keyed by the runtime's key_encoder ({q['key_encoder_calls']} calls, max |key - "
                        f"PyTorch| {q['max_key_diff'] or 0.0:.1e}, {q['same_batch_as_recorded']}/{q['users']} batches as "
                        f"recorded)")
        if r.get("pytorch_vs_run_max_gap") is not None:
            summary += f"; pytorch engine vs the run's recorded per-user AUC: max gap {r['pytorch_vs_run_max_gap']:.4f}"
        return SimulationReport(["engine", "cloud_only user AUC", "coda user AUC", "coda AUC", "train steps", "seconds"],
                                rows, summary, r)
