"""The Method protocol: what a device-cloud method implements to plug into `dcl`.

A method is one folder under toolkit/methods/ with a class derived from `Method` (in its
`plugin.py`), plus one line in `toolkit/registry.py`. The CLI, the exporters and the harness know methods only through
this interface: `dcl train METHOD`, and for a run directory (whose config.json names its
method) `dcl eval`, `dcl export`, `dcl simulate`, `dcl import-weights`, and the PyTorch baseline
`dcl profile` compares runtimes with.

Every method folder has the same skeleton, the same file name for the same role:

    toolkit/methods/NAME/
      __init__.py   one docstring: the method and its paper (no re-exports)
      config.py     the config dataclass (strict, ranges declared) and load_config(path, quick, seed)
      model.py      the method's modules
      pipeline.py   train_to_dir(cfg, out, force), evaluate_run(run), load_run(run) (via toolkit.run.open_run)
      export.py     the bundle's named programs (ProgramSpecs) for a run
      simulate.py   the fleet in a runtime's training artifacts beside PyTorch
      fleet.py      the device rounds as a fleet task (`dcl fleet`, a Flower app): fleet_task, export_artifact
      report.py     metrics_table(metrics): the console table
      transfer.py   device weights back into a run (via toolkit.run.weights_for), if the method takes any
      plugin.py     the Method subclass: what differs per method (export recipe, baselines, simulate's
                    table, weight import), delegating to the modules above, each imported inside the
                    method that needs it, so `dcl --help` and other methods' commands never pay for
                    this method's imports (torch, the runtimes, its data); config, train, evaluate and
                    the results table come from the skeleton's modules by their file names (Method.module)

plus whatever else the method needs (data.py, service.py, ...). Adding a method is copying this
skeleton and adding one line to toolkit/registry.py; import-linter keeps methods independent of
each other and out of every shared module.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from dcl_core.errors import ConfigError

if TYPE_CHECKING:  # kept out of `dcl --help`'s imports (they pull in torch and the runtimes)
    from exporters.api import ProgramSpec
    from exporters.formats import Format
    from exporters.spec import TrainingSpec
    from runtime_harness.fleet.flower import FleetTask
    from runtime_harness.profile import Baseline

Log = Callable[[str], None]


@dataclass
class ExportOptions:
    """What a user may choose about the on-device training programs of any method."""

    bn: str = "frozen"  # BatchNorm in training programs: "frozen" statistics or batch "train"
    lr: float | None = None  # on-device SGD learning rate (None: the method's default)


@dataclass
class ExportRecipe:
    """The named programs of one bundle and the bundle-level facts to record."""

    programs: list[ProgramSpec]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class FleetOptions:
    """Knobs of a fleet simulation; a method uses those that apply to it (None: its default)."""

    devices: int | None = None
    rounds: int | None = None
    epochs: int | None = None
    # also run the PyTorch reference from start weights 1 ulp away: how far float rounding alone
    # moves the final accuracy over the same steps, the yardstick for a runtime's gap
    noise_floor: bool = False
    clients: int | None = None  # `dcl fleet`: clients in the Flower federation
    fraction: float = 1.0  # `dcl fleet`: share of the clients sampled per round


@dataclass
class SimulationReport:
    """What `dcl simulate` prints: a table (one row per engine) and a one-line verdict."""

    columns: list[str]
    rows: list[list[Any]]
    summary: str
    record: dict[str, Any]  # the JSON form (--json)


class Method(ABC):
    name: str  # the registry key, also written into every run's config.json
    title: str  # one line for `dcl train --help`
    # a click command serving the method's cloud side over HTTP (`dcl serve METHOD ...`), if any
    serve_command: Any = None
    # whether `simulate` honours FleetOptions.noise_floor (methods that train on the fleet)
    simulate_noise_floor: bool = False

    # -- cloud: the skeleton's modules of the method's folder, by their role's file name
    def load_config(self, path: str | None, quick: bool, seed: int | None) -> Any:
        """The method's config dataclass: defaults, then the file, then quick/seed overrides
        (config.py's load_config)."""
        return self.module("config").load_config(path, quick=quick, seed=seed)

    def train(self, cfg: Any, out: Path, force: bool = False) -> dict[str, Any]:
        """Train on the cloud and write the run directory `out` atomically (toolkit.run's
        atomic_run_dir: replacing a previous run only with `force`); return its metrics
        (pipeline.py's train_to_dir)."""
        return self.module("pipeline").train_to_dir(cfg, out, force)

    def evaluate(self, run_dir: Path) -> dict[str, Any]:
        """Re-evaluate a run from its checkpoints; the same metrics shape `train` returns
        (pipeline.py's evaluate_run)."""
        return self.module("pipeline").evaluate_run(run_dir)

    def results_table(self, metrics: dict[str, Any]) -> str:
        """The console table of a run's metrics (report.py's metrics_table)."""
        return self.module("report").metrics_table(metrics)

    def module(self, role: str) -> Any:
        """The method folder's module of a skeleton role ("config", "pipeline", ...), imported on
        first use so `dcl --help` and other methods' commands never pay for it."""
        return importlib.import_module(f"{type(self).__module__.rpartition('.')[0]}.{role}")

    # -- devices
    @abstractmethod
    def export_recipe(self, run_dir: Path, options: ExportOptions, log: Log) -> ExportRecipe:
        """The bundle's programs for a run, with real validation inputs and training batches."""

    @abstractmethod
    def baselines(self, run_dir: Path, manifest_programs: dict[str, Any]) -> dict[str, Baseline]:
        """PyTorch eager programs for `dcl profile`, keyed by program name. `manifest_programs`
        maps program names to their manifest records (e.g. to read the exported optimizer)."""

    def simulate(self, run_dir: Path, runtime: Format, options: FleetOptions, log: Log) -> SimulationReport:
        raise ConfigError(f"method {self.name} has no fleet simulation")

    # -- the fleet (`dcl fleet`: the device rounds as a Flower app, toolkit/fleet/)
    fleet_clients: int = 2  # clients when --clients is not given (0: every client the method has)
    fleet_rounds: int = 2

    def fleet_export(self, run_dir: Path, runtime: str, dest: Path, log: Log) -> None:
        """Export (verified) the training and inference artifacts a fleet client of `runtime`
        opens into the bundle folder `dest` (fleet.py's export_artifact)."""
        self.module("fleet").export_artifact(run_dir, runtime, dest, log)

    def fleet_task(self, run_dir: Path, runtime: str, options: FleetOptions, bundle: Path | None) -> FleetTask:
        """The method's device rounds for runtime_harness.fleet.flower: `runtime` is a format name
        (its artifacts in `bundle`) or "pytorch" (fleet.py's fleet_task)."""
        return self.module("fleet").fleet_task(run_dir, runtime, options, bundle)

    def import_weights(self, run_dir: Path, weights: Path, program: str | None, name: str | None,
                       force: bool = False) -> dict[str, Any]:
        raise ConfigError(f"method {self.name} does not import device weights")

    def check_program(self, given: str | None, trains: str) -> None:
        """`--program` of import-weights: the one program whose weights this method takes back."""
        if given not in (None, trains):
            raise ConfigError(f"a {self.name} bundle trains one program on devices, {trains!r}; got --program {given!r}")


def exported_training(manifest_programs: dict[str, Any], program: str, default_loss: str,
                      **fields: Any) -> TrainingSpec | None:
    """The training program `program` as the bundle exported it (trainable set, loss, optimizer),
    for the PyTorch baseline `dcl profile` runs beside the runtimes; None when the bundle has no
    training artifact for it. `fields` sets what a manifest does not record (batch_size)."""
    from exporters.spec import TrainingSpec

    record = manifest_programs.get(program)
    art = next((a for a in record.artifacts if a.kind == "training" and a.optimizer), None) if record else None
    return None if art is None else TrainingSpec.from_artifact(art, default_loss, **fields)
