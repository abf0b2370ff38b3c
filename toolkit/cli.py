"""The `dcl` command line. Thin by design: parses arguments, looks up the method and format
registries, delegates, prints.

Every user error surfaces as one line on stderr and a non-zero exit code (no traceback).
Only light modules are imported at the top; each command imports the layers it drives (torch, the
exporters, the harness) inside its function, so `dcl --help` and a refused option stay fast.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import click

from dcl_core.config import FLOAT32_MAX, SEED_MAX
from dcl_core.errors import ConfigError, DclError, OutputError
from toolkit.registry import get_method, method_names, method_of_run

FORCE_HELP = "Replace a previous dcl output of the same kind at --out (never anything dcl did not create)."


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange that also refuses nan, inf and what float32 cannot hold (the config files'
    rule, dcl_core.config): nan passes every range comparison, so `--duration nan` would profile
    forever, and `--lr 1e300` ended in an overflow traceback inside the optimizer."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        out = super().convert(value, param, ctx)
        if not (math.isfinite(out) and abs(out) <= FLOAT32_MAX):
            self.fail(f"{value!r} is not a finite float32 number (magnitude <= {FLOAT32_MAX:.6g})", param, ctx)
        return out


# counts with the config files' upper bounds (toolkit/methods/*/config.py): past them a run ends in
# an overflow traceback or never ends
DEVICES, ROUNDS, EPOCHS, RUNS = (click.IntRange(1, n) for n in (100_000, 10_000, 10_000, 1_000_000))
POSITIVE = FiniteFloatRange(min=0, min_open=True)
SEED = click.IntRange(0, SEED_MAX)  # what every seed API dcl uses accepts (dcl_core.config.SEED_MAX)


def _emit(obj: Any, as_json: bool, table: str) -> None:
    click.echo(json.dumps(obj, indent=2) if as_json else table)


def _log(as_json: bool):
    return (lambda *a: None) if as_json else (lambda msg: click.echo(msg, err=True))


def _trainable_formats() -> list[str]:
    from exporters.formats import FORMATS

    return [n for f in FORMATS.values() for n in (f.name, *f.aliases)]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dcl")
@click.option("-v", "--verbose", is_flag=True, help="Also show the runtimes' and converters' own warnings and logs.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """dcl: device-cloud collaborative learning, from cloud training to verified phone artifacts."""
    from toolkit.quiet import quiet_third_party

    ctx.with_resource(quiet_third_party(verbose))


@cli.command("train")
@click.argument("method", type=click.Choice(method_names()), metavar="METHOD")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML or JSON config file.")
@click.option("--out", default=None, help="Run directory to write (default: runs/METHOD).")
@click.option("--quick", is_flag=True, help="Small data, few epochs: a few minutes on 2 cores.")
@click.option("--seed", type=SEED, default=None, help=f"Override the config's seed (0 to {SEED_MAX}).")
@click.option("--force", is_flag=True, help=FORCE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable metrics instead of tables.")
def train_cmd(method: str, config_path: str | None, out: str | None, quick: bool, seed: int | None, force: bool,
              as_json: bool) -> None:
    """Train METHOD on the cloud and write a run directory."""
    from dcl_core.outputs import check_destination
    from toolkit.distributed import context
    from toolkit.run import RUN

    m = get_method(method)
    out = out or f"runs/{method}"
    cfg = m.load_config(config_path, quick, seed)
    check_destination(out, RUN, force)  # before hours of training, not after
    metrics = m.train(cfg, Path(out), force)
    if context().is_main:
        shown = {k: v for k, v in metrics.items() if k != "log"}
        _emit(shown, as_json, m.results_table(metrics) + f"\n\nrun written to {out}")


@cli.command("eval")
@click.argument("run_dir")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable metrics instead of tables.")
def eval_cmd(run_dir: str, as_json: bool) -> None:
    """Re-evaluate a run directory from its checkpoints and print the table."""

    m = method_of_run(run_dir)
    metrics = m.evaluate(Path(run_dir))
    _emit(metrics, as_json, m.results_table(metrics))


@cli.command("compare")
@click.argument("run_dirs", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable output.")
def compare_cmd(run_dirs: tuple[str, ...], as_json: bool) -> None:
    """Mean ± sample std of every result over runs of one method (e.g. one config, several seeds)."""
    from toolkit.compare import compare_runs

    c = compare_runs(list(run_dirs))
    if c.config_differences and not as_json:
        click.echo(f"note: the runs' configs differ in more than the seed: {', '.join(c.config_differences)}",
                   err=True)
    seeds = ", ".join(str(s) for s in c.seeds)
    _emit(c.as_dict(), as_json, f"{c.method}, {len(c.runs)} runs (seeds {seeds})\n\n{c.table()}")


@cli.command("targets")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable output.")
def targets_cmd(as_json: bool) -> None:
    """List the phones (and host) dcl exports for, with what each supports."""
    import dataclasses

    from tabulate import tabulate

    from exporters.targets import all_targets

    ts = all_targets()
    rows = [[t.key, t.name, f"{t.os} {t.os_version}".strip(), t.soc, t.ram_gb or "-", ", ".join(t.formats)]
            for t in ts.values()]
    _emit({k: dataclasses.asdict(t) for k, t in ts.items()}, as_json,
          tabulate(rows, headers=["target", "device", "os", "soc", "ram GB", "formats"], tablefmt="github"))


@cli.command("export")
@click.argument("run_dir", required=False)
@click.option("--model", "model_ref", default=None, metavar="PKG.MODULE:FACTORY",
              help="Export your own model instead of a run: a factory returning (model, example_inputs) or ProgramSpecs.")
@click.option("--target", required=True, help="A phone from `dcl targets`, or host.")
@click.option("--formats", default="", help="Comma-separated formats (default: all the target supports).")
@click.option("--out", default=None, help="Bundle directory (default: bundles/<target>).")
@click.option("--bn", type=click.Choice(["frozen", "train"]), default="frozen", show_default=True,
              help="BatchNorm in a run's training programs: frozen statistics, or batch statistics.")
@click.option("--lr", type=POSITIVE, default=None, help="SGD learning rate of a run's on-device steps (default: the method's).")
@click.option("--force", is_flag=True, help=FORCE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def export_cmd(run_dir: str | None, model_ref: str | None, target: str, formats: str, out: str | None, bn: str,
               lr: float | None, force: bool, as_json: bool) -> None:
    """Export a run (RUN_DIR) or your own model (--model) for a phone: verified inference and
    on-device training artifacts."""
    from dcl_core.outputs import check_destination
    from exporters.api import BUNDLE, export
    from exporters.targets import get_target, resolve_formats

    if (run_dir is None) == (model_ref is None):
        raise click.UsageError("give either a RUN_DIR or --model PKG.MODULE:FACTORY")
    t = get_target(target)
    fmts = resolve_formats(t, [f.strip() for f in formats.split(",") if f.strip()])
    out = out or f"bundles/{t.key}"
    inputs = [run_dir] if run_dir else []
    check_destination(out, BUNDLE, force, inputs)
    log = _log(as_json)
    if model_ref is not None:
        from toolkit.factory import load_programs

        programs, method, extra = load_programs(model_ref), "custom", {"model": model_ref}
        log(f"exporting {model_ref} for {t.key} ({', '.join(fmts)}) -> {out}")
    else:
        from toolkit.plugin import ExportOptions

        m = method_of_run(run_dir)
        log(f"exporting {run_dir} ({m.name}) for {t.key} ({', '.join(fmts)}) -> {out}")
        recipe = m.export_recipe(Path(run_dir), ExportOptions(bn=bn, lr=lr), log)
        programs, method, extra = recipe.programs, m.name, {"run_dir": str(Path(run_dir).resolve()), **recipe.extra}
    manifest = export(programs, fmts, out, target=t.key, method=method, extra=extra, force=force, inputs=inputs,
                      log=log)
    _emit(manifest.to_json(), as_json, f"bundle written to {out} ({len(manifest.artifacts)} verified artifacts)")


@cli.command("import-weights")
@click.argument("run_dir")
@click.argument("weights")
@click.option("--program", default=None, help="The bundle program the weights come from (default: the only one).")
@click.option("--name", default=None, help="Checkpoint name to write in the run (default: the method's).")
@click.option("--force", is_flag=True, help="Replace an existing checkpoint of that name.")
def import_weights_cmd(run_dir: str, weights: str, program: str | None, name: str | None, force: bool) -> None:
    """Load weights returned by a device runtime (.safetensors/.npz) into a run's checkpoints."""

    info = method_of_run(run_dir).import_weights(Path(run_dir), Path(weights), program, name, force)
    click.echo(f"imported {info['imported']} tensors into {info['checkpoint']}")


@cli.command("simulate")
@click.argument("run_dir")
@click.option("--runtime", type=click.Choice(_trainable_formats(), case_sensitive=False), required=True,
              help="The runtime whose training artifact the virtual devices step.")
@click.option("--devices", type=DEVICES, default=None, help="Virtual devices (default: the method's).")
@click.option("--rounds", type=ROUNDS, default=None, help="Rounds (default: the method's).")
@click.option("--epochs", type=EPOCHS, default=None, help="Local epochs per round (default: the run's).")
@click.option("--noise-floor", is_flag=True,
              help="Also run PyTorch from start weights 1 ulp away: the gap float rounding alone gives.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable output.")
def simulate_cmd(run_dir: str, runtime: str, devices: int | None, rounds: int | None, epochs: int | None,
                 noise_floor: bool, as_json: bool) -> None:
    """A fleet of virtual devices training inside a runtime's exported artifact, beside PyTorch."""
    from tabulate import tabulate

    from toolkit.plugin import FleetOptions

    fmt = _runtime_here(runtime)
    m = method_of_run(run_dir)
    if noise_floor and not m.simulate_noise_floor:
        raise ConfigError(f"{m.name}'s simulate has no --noise-floor run; drop the flag")
    rep = m.simulate(Path(run_dir), fmt, FleetOptions(devices, rounds, epochs, noise_floor), _log(as_json))
    _emit(rep.record, as_json, tabulate(rep.rows, headers=rep.columns, tablefmt="github") + f"\n\n{rep.summary}")


@cli.command("fleet")
@click.argument("run_dir")
@click.option("--runtime", type=click.Choice([*_trainable_formats(), "pytorch"], case_sensitive=False), required=True,
              help="The runtime whose artifacts every client runs (pytorch: the reference program).")
@click.option("--clients", type=click.IntRange(1, 100_000), default=None,
              help="Virtual clients of the simulation (default: the method's).")
@click.option("--rounds", type=ROUNDS, default=None, help="Rounds in all (default: the method's).")
@click.option("--fraction", type=FiniteFloatRange(0.0, 1.0, min_open=True), default=1.0, show_default=True,
              help="Share of the clients sampled per round.")
@click.option("--min-clients", type=click.IntRange(1, 100_000), default=1, show_default=True,
              help="The fewest clients a round goes on with.")
@click.option("--epochs", type=EPOCHS, default=None, help="Local epochs per round (default: the run's).")
@click.option("--deploy", is_flag=True,
              help="Flower's Deployment Engine: a SuperLink and --supernodes SuperNode processes on 127.0.0.1.")
@click.option("--supernodes", type=click.IntRange(1, 64), default=4, show_default=True,
              help="With --deploy: SuperNode processes, one client each.")
@click.option("--insecure", is_flag=True, help="With --deploy: plain HTTP instead of TLS on loopback.")
@click.option("--out", default=None, help="Output folder (default: RUN/fleet-RUNTIME[-deploy]).")
@click.option("--force", is_flag=True, help="Replace a previous fleet output there.")
@click.option("--resume", is_flag=True, help="Continue a stopped fleet from its last completed round.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable output.")
def fleet_cmd(run_dir: str, runtime: str, clients: int | None, rounds: int | None, fraction: float, min_clients: int,
              epochs: int | None, deploy: bool, supernodes: int, insecure: bool, out: str | None, force: bool,
              resume: bool, as_json: bool) -> None:
    """The device rounds as a Flower app: virtual clients on Flower's Simulation Engine (Ray), or
    SuperNode processes on its Deployment Engine (--deploy)."""
    from tabulate import tabulate

    from toolkit.fleet.run import run_fleet
    from toolkit.plugin import FleetOptions

    if not deploy and insecure:
        raise ConfigError("--insecure applies to --deploy only; drop it")
    name = runtime.lower() if runtime.lower() == "pytorch" else _runtime_here(runtime).name
    run, folder = run_fleet(Path(run_dir), name, FleetOptions(rounds=rounds, epochs=epochs, clients=clients,
                                                              fraction=fraction), _log(as_json),
                            supernodes=supernodes if deploy else None, tls=not insecure,
                            out=Path(out) if out else None, force=force, resume=resume, min_clients=min_clients)
    keys = list(run.rounds[0].metrics) if run.rounds else []
    rows = [[r.round, r.clients, r.refused, r.failed, *r.metrics.values(), r.seconds] for r in run.rounds]
    _emit({**run.to_json(), "runtime": name, "out": str(folder)}, as_json,
          tabulate(rows, headers=["round", "clients", "refused", "failed", *keys, "seconds"], tablefmt="github")
          + f"\n\n{run.engine}: {run.clients} clients; results in {folder}")


@cli.command("serve", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("method", type=click.Choice(method_names()), metavar="METHOD")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def serve_cmd(method: str, args: tuple[str, ...]) -> None:
    """Serve METHOD's cloud side over HTTP (`dcl serve METHOD --help` for its options)."""

    command = get_method(method).serve_command
    if command is None:
        raise ConfigError(f"method {method} has no cloud service to serve")
    command.main(args=list(args), prog_name=f"dcl serve {method}", standalone_mode=False)


@cli.command("profile")
@click.argument("bundle_dir", required=False)
@click.option("--device", default="host", show_default=True, help="host, arm64 (aarch64 under qemu: parity and instruction counts), or an adb serial "
                   "(phone or emulator-5554).")
@click.option("--runs", type=RUNS, default=50, show_default=True, help="Timed runs (at least).")
@click.option("--duration", type=FiniteFloatRange(0, 3600), default=1.0, show_default=True,
              help="Minimum timed seconds per artifact.")
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True)
@click.option("--sustained", type=FiniteFloatRange(0, 24 * 3600), default=0.0,
              help="Also run each artifact this many seconds and report drift.")
@click.option("--python-bindings", is_flag=True,
              help="Host: measure ExecuTorch through its Python bindings instead of the native runner.")
@click.option("--out", default=None, help="Folder for results.json and report.html (default: BUNDLE_DIR/profile-<device>).")
@click.option("--html", "html_path", default=None, help="Also copy the HTML report here.")
@click.option("--compare", nargs=2, default=None, metavar="A.json B.json", help="Show two results side by side as ratios.")
@click.option("--force", is_flag=True, help=FORCE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print results.json instead of the table.")
def profile_cmd(bundle_dir: str | None, device: str, runs: int, duration: float, threads: int, sustained: float,
                python_bindings: bool, out: str | None, html_path: str | None, compare: tuple[str, str] | None, force: bool,
                as_json: bool) -> None:
    """Measure latency, memory and energy of every artifact in a bundle."""
    import shutil

    from runtime_harness.report.compare import compare_rows, compare_table
    from runtime_harness.report.console import console_table
    from runtime_harness.report.results import load_results

    if compare:
        a, b = (load_results(p) for p in compare)
        _emit(compare_rows(a, b), as_json, compare_table(a, b))
        return
    if not bundle_dir:
        raise click.UsageError("give a BUNDLE_DIR to profile, or --compare A.json B.json")
    from dcl_core.bundle import load_manifest
    from runtime_harness.profile import ProfilePlan, profile_bundle

    out_dir = Path(out or Path(bundle_dir) / f"profile-{device}")
    if html_path:
        _check_file_output(Path(html_path), force)
    manifest = load_manifest(bundle_dir)  # sha256-verified: a corrupt bundle stops here
    res = profile_bundle(bundle_dir, device, out_dir, ProfilePlan(runs, duration, threads, sustained, python_bindings=python_bindings),
                         baselines=_baselines(manifest), force=force, log=_log(as_json))
    if html_path:
        shutil.copyfile(out_dir / "report.html", html_path)
    _emit(res.to_json(), as_json, console_table(res) + f"\n\nresults: {out_dir / 'results.json'}, report: {out_dir / 'report.html'}")


def _runtime_here(name: str):
    """The --runtime of `dcl simulate`, refused up front (one line naming the runtimes that can)
    when this machine cannot run its training artifacts (Core ML on Linux)."""
    from exporters.formats import FORMATS, get_format

    fmt = get_format(name)
    ok, why = fmt.runs_here("training")
    if not ok:
        able = [f.name for f in FORMATS.values() if f.runs_here("training")[0]]
        raise ConfigError(f"--runtime {fmt.name}: {why}; runtimes that can run here: {', '.join(able) or 'none'}")
    return fmt


def _register_commands() -> None:
    from toolkit.apps import bundle_command

    cli.add_command(bundle_command)


_register_commands()


def _check_file_output(path: Path, force: bool) -> None:
    """A single-file output (--html): its folder must exist, and an existing file is replaced
    only with --force; checked before any work."""

    if not path.parent.is_dir():
        raise OutputError(f"--html {path}: folder {path.parent} does not exist; create it or choose another path")
    if path.is_dir():
        raise OutputError(f"--html {path} is a folder; give a file path")
    if path.exists() and not force:
        raise OutputError(f"--html {path} exists; pass --force to replace it, or choose another path")


def _baselines(manifest) -> dict:
    """PyTorch eager programs of the run a bundle was exported from, when that run is still here."""

    run_dir = manifest.extra.get("run_dir")
    if not run_dir or not (Path(run_dir) / "config.json").is_file():
        return {}
    return method_of_run(run_dir).baselines(Path(run_dir), {p.name: p for p in manifest.programs})


class Terminated(BaseException):
    """SIGTERM (what a scheduler or CI sends), unwound like Ctrl-C so outputs are cleaned up (not a
    KeyboardInterrupt, which click would turn into a plain "aborted")."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    import signal

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        cli.main(args=argv, prog_name="dcl", standalone_mode=False)
    except DclError as e:
        click.echo(f"dcl: error: {e}", err=True)
        return e.exit_code
    except click.exceptions.Abort:  # click's form of Ctrl-C
        click.echo("dcl: interrupted; nothing was written", err=True)
        return 130
    except Terminated:
        click.echo("dcl: terminated (SIGTERM); nothing was written", err=True)
        return 143
    except KeyboardInterrupt:
        click.echo("dcl: interrupted; nothing was written", err=True)
        return 130
    except OSError as e:  # a full disk, a vanished folder: the system's reason, in one line
        where = f": {e.filename}" if e.filename else ""
        click.echo(f"dcl: error: {e.strerror or e}{where}; nothing was written", err=True)
        return 1
    except click.ClickException as e:  # bad usage: one line, with where to read more
        hint = f"; see `{e.ctx.command_path} --help`" if isinstance(e, click.UsageError) and e.ctx else ""
        click.echo(f"dcl: error: {e.format_message().rstrip('.')}{hint}", err=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
