"""The `dcl` command line. Thin by design: parses arguments, looks up the method and format
registries, delegates, prints.

Every user error surfaces as one line on stderr and a non-zero exit code (no traceback).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from dcl_core.errors import DclError
from toolkit.methods.registry import method_names


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
@click.argument("method", type=click.Choice(method_names()))
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML or JSON config file.")
@click.option("--out", default=None, help="Run directory to write (default: runs/METHOD).")
@click.option("--quick", is_flag=True, help="Small data, few epochs: a few minutes on 2 cores.")
@click.option("--seed", type=int, default=None, help="Override the config's seed.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable metrics instead of tables.")
def train_cmd(method: str, config_path: str | None, out: str | None, quick: bool, seed: int | None,
              as_json: bool) -> None:
    """Train METHOD on the cloud and write a run directory."""
    from toolkit.distributed import context
    from toolkit.methods.registry import get_method

    m = get_method(method)
    out = out or f"runs/{method}"
    metrics = m.train(m.load_config(config_path, quick, seed), Path(out))
    if context().is_main:
        shown = {k: v for k, v in metrics.items() if k != "log"}
        _emit(shown, as_json, m.results_table(metrics) + f"\n\nrun written to {out}")


@cli.command("eval")
@click.argument("run_dir")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable metrics instead of tables.")
def eval_cmd(run_dir: str, as_json: bool) -> None:
    """Re-evaluate a run directory from its checkpoints and print the table."""
    from toolkit.methods.registry import method_of_run

    m = method_of_run(run_dir)
    metrics = m.evaluate(Path(run_dir))
    _emit(metrics, as_json, m.results_table(metrics))


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
@click.argument("run_dir")
@click.option("--target", required=True, help="A phone from `dcl targets`, or host.")
@click.option("--formats", default="", help="Comma-separated formats (default: all the target supports).")
@click.option("--out", default=None, help="Bundle directory (default: bundles/<target>).")
@click.option("--bn", type=click.Choice(["frozen", "train"]), default="frozen", show_default=True,
              help="BatchNorm in the training programs: frozen statistics, or batch statistics.")
@click.option("--lr", type=float, default=None, help="SGD learning rate of the on-device steps (default: the method's).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def export_cmd(run_dir: str, target: str, formats: str, out: str | None, bn: str, lr: float | None,
               as_json: bool) -> None:
    """Export a run for a phone: verified inference and on-device training artifacts."""
    from exporters.api import export
    from exporters.targets import get_target, resolve_formats
    from toolkit.methods.base import ExportOptions
    from toolkit.methods.registry import method_of_run

    t = get_target(target)
    fmts = resolve_formats(t, [f.strip() for f in formats.split(",") if f.strip()])
    out = out or f"bundles/{t.key}"
    log = _log(as_json)
    m = method_of_run(run_dir)
    log(f"exporting {run_dir} ({m.name}) for {t.key} ({', '.join(fmts)}) -> {out}")
    recipe = m.export_recipe(Path(run_dir), ExportOptions(bn=bn, lr=lr), log)
    manifest = export(recipe.programs, fmts, out, target=t.key, method=m.name,
                      extra={"run_dir": str(Path(run_dir).resolve()), **recipe.extra}, log=log)
    _emit(manifest.to_json(), as_json, f"bundle written to {out} ({len(manifest.artifacts)} verified artifacts)")


@cli.command("import-weights")
@click.argument("run_dir")
@click.argument("weights")
@click.option("--program", default=None, help="The bundle program the weights come from (default: the only one).")
@click.option("--name", default=None, help="Checkpoint name to write in the run (default: the method's).")
def import_weights_cmd(run_dir: str, weights: str, program: str | None, name: str | None) -> None:
    """Load weights returned by a device runtime (.safetensors/.npz) into a run's checkpoints."""
    from toolkit.methods.registry import method_of_run

    info = method_of_run(run_dir).import_weights(Path(run_dir), Path(weights), program, name)
    click.echo(f"imported {info['imported']} tensors into {info['checkpoint']}")


@cli.command("simulate")
@click.argument("run_dir")
@click.option("--runtime", type=click.Choice(_trainable_formats(), case_sensitive=False), required=True,
              help="The runtime whose training artifact the virtual devices step.")
@click.option("--devices", type=int, default=None, help="Virtual devices (default: the method's).")
@click.option("--rounds", type=int, default=None, help="Rounds (default: the method's).")
@click.option("--epochs", type=int, default=None, help="Local epochs per round (default: the run's).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable output.")
def simulate_cmd(run_dir: str, runtime: str, devices: int | None, rounds: int | None, epochs: int | None,
                 as_json: bool) -> None:
    """A fleet of virtual devices training inside a runtime's exported artifact, beside PyTorch."""
    from tabulate import tabulate

    from exporters.formats import get_format
    from toolkit.methods.base import FleetOptions
    from toolkit.methods.registry import method_of_run

    m = method_of_run(run_dir)
    rep = m.simulate(Path(run_dir), get_format(runtime), FleetOptions(devices, rounds, epochs), _log(as_json))
    _emit(rep.record, as_json, tabulate(rep.rows, headers=rep.columns, tablefmt="github") + f"\n\n{rep.summary}")


@cli.command("profile")
@click.argument("bundle_dir", required=False)
@click.option("--device", default="host", show_default=True, help="host, or an adb serial (phone or emulator-5554).")
@click.option("--runs", type=int, default=50, show_default=True, help="Timed runs (at least).")
@click.option("--duration", type=float, default=1.0, show_default=True, help="Minimum timed seconds per artifact.")
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--sustained", type=float, default=0.0, help="Also run each artifact this many seconds and report drift.")
@click.option("--out", default=None, help="Folder for results.json and report.html (default: BUNDLE_DIR/profile-<device>).")
@click.option("--html", "html_path", default=None, help="Also copy the HTML report here.")
@click.option("--compare", nargs=2, default=None, metavar="A.json B.json", help="Show two results side by side as ratios.")
@click.option("--json", "as_json", is_flag=True, help="Print results.json instead of the table.")
def profile_cmd(bundle_dir: str | None, device: str, runs: int, duration: float, threads: int, sustained: float,
                out: str | None, html_path: str | None, compare: tuple[str, str] | None, as_json: bool) -> None:
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
    manifest = load_manifest(bundle_dir)  # sha256-verified: a corrupt bundle stops here
    res = profile_bundle(bundle_dir, device, out_dir, ProfilePlan(runs, duration, threads, sustained),
                         baselines=_baselines(manifest), log=_log(as_json))
    if html_path:
        shutil.copyfile(out_dir / "report.html", html_path)
    _emit(res.to_json(), as_json, console_table(res) + f"\n\nresults: {out_dir / 'results.json'}, report: {out_dir / 'report.html'}")


def _baselines(manifest) -> dict:
    """PyTorch eager programs of the run a bundle was exported from, when that run is still here."""
    from toolkit.methods.registry import method_of_run

    run_dir = manifest.extra.get("run_dir")
    if not run_dir or not (Path(run_dir) / "config.json").is_file():
        return {}
    return method_of_run(run_dir).baselines(Path(run_dir), {p.name: p for p in manifest.programs})


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="dcl", standalone_mode=False)
    except DclError as e:
        click.echo(f"dcl: error: {e}", err=True)
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("dcl: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("dcl: interrupted; nothing was written", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
