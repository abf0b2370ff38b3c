"""The `dcl` command line. Thin by design: parses arguments, delegates, prints.

Every user error surfaces as one line on stderr and a non-zero exit code (no traceback).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from toolkit.errors import DclError


def _emit(obj: Any, as_json: bool, table: str) -> None:
    click.echo(json.dumps(obj, indent=2) if as_json else table)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dcl")
def cli() -> None:
    """dcl: device-cloud collaborative learning, from cloud training to verified phone artifacts."""


@cli.group()
def train() -> None:
    """Train a method on the cloud and write a run directory."""


@train.command("dcccl")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML or JSON config file.")
@click.option("--out", default="runs/dcccl", show_default=True, help="Run directory to write.")
@click.option("--quick", is_flag=True, help="Small data, few epochs: a few minutes on 2 cores.")
@click.option("--seed", type=int, default=None, help="Override the config's seed.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable metrics instead of tables.")
def train_dcccl(config_path: str | None, out: str, quick: bool, seed: int | None, as_json: bool) -> None:
    """DC-CCL: cloud submodel, mimic distillation, controlled device rounds, and the baselines."""
    from toolkit.distributed import context
    from toolkit.methods.dcccl import load_config, train_to_dir
    from toolkit.report import results_table

    cfg = load_config(config_path, quick=quick, seed=seed)
    metrics = train_to_dir(cfg, out)
    if context().is_main:
        shown = {k: v for k, v in metrics.items() if k != "log"}
        _emit(shown, as_json, results_table(metrics) + f"\n\nrun written to {out}")


@cli.command("eval")
@click.argument("run_dir")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable metrics instead of tables.")
def eval_cmd(run_dir: str, as_json: bool) -> None:
    """Re-evaluate a run directory from its checkpoints and print the table."""
    from toolkit.methods.dcccl import evaluate_run
    from toolkit.report import results_table

    metrics = evaluate_run(run_dir)
    _emit(metrics, as_json, results_table(metrics))


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
@click.option("--formats", default="", help="Comma-separated subset of executorch,onnx,tflite,coreml (default: all the target supports).")
@click.option("--out", default=None, help="Bundle directory (default: bundles/<target>).")
@click.option("--bn", type=click.Choice(["frozen", "train"]), default="frozen", show_default=True,
              help="BatchNorm in the training programs: frozen statistics, or batch statistics.")
@click.option("--lr", type=float, default=0.01, show_default=True, help="SGD learning rate of the on-device step.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def export_cmd(run_dir: str, target: str, formats: str, out: str | None, bn: str, lr: float, as_json: bool) -> None:
    """Export a DC-CCL run for a phone: verified inference and on-device training artifacts."""
    import dataclasses

    from exporters.methods.dcccl import export_dcccl
    from exporters.targets import get_target, resolve_formats

    t = get_target(target)
    fmts = resolve_formats(t, [f.strip() for f in formats.split(",") if f.strip()])
    out = out or f"bundles/{t.key}"
    log = (lambda *a: None) if as_json else (lambda msg: click.echo(msg, err=True))
    manifest = export_dcccl(run_dir, t.key, fmts, out, bn=bn, lr=lr, log=log)
    _emit(manifest.to_json(), as_json, f"bundle written to {out} ({len(manifest.artifacts)} verified artifacts)")


@cli.command("import-weights")
@click.argument("run_dir")
@click.argument("weights")
@click.option("--name", default="f_d_imported", show_default=True, help="Checkpoint name to write in the run.")
def import_weights_cmd(run_dir: str, weights: str, name: str) -> None:
    """Load f_d weights returned by a device runtime (.safetensors/.npz) into a run's checkpoints."""
    from toolkit.methods.dcccl.transfer import import_device_weights

    info = import_device_weights(run_dir, weights, name)
    click.echo(f"imported {info['imported']} tensors into {info['checkpoint']}")


@cli.group()
def simulate() -> None:
    """Simulate a fleet of devices training inside exported artifacts."""


@simulate.command("dcccl")
@click.argument("run_dir")
@click.option("--runtime", type=click.Choice(["executorch", "onnxruntime", "litert"]), required=True)
@click.option("--devices", type=int, default=2, show_default=True)
@click.option("--rounds", type=int, default=2, show_default=True)
@click.option("--epochs", type=int, default=None, help="Local epochs per round (default: the run's).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable output.")
def simulate_dcccl(run_dir: str, runtime: str, devices: int, rounds: int, epochs: int | None, as_json: bool) -> None:
    """DC-CCL device rounds run inside a runtime's training artifact, compared with PyTorch."""
    import dataclasses

    from tabulate import tabulate

    from runtime_harness.fleet.dcccl import simulate as run_sim

    log = (lambda *a: None) if as_json else (lambda msg: click.echo(msg, err=True))
    res = run_sim(run_dir, runtime, devices, rounds, epochs, log=log)
    rows = [[engine, *acc.values(), res.seconds[engine]] for engine, acc in res.accuracy.items()]
    table = tabulate(rows, headers=["engine", "cloud_test %", "device_test %", "union_test %", "seconds"],
                     tablefmt="github") + f"\n\n|union gap| = {res.union_gap:.2f} points ({res.steps} runtime steps)"
    _emit(dataclasses.asdict(res) | {"union_gap": res.union_gap}, as_json, table)


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

    from runtime_harness.report import compare as compare_results
    from runtime_harness.report import compare_rows, console_table, load_results

    if compare:
        a, b = (load_results(p) for p in compare)
        _emit(compare_rows(a, b), as_json, compare_results(a, b))
        return
    if not bundle_dir:
        raise click.UsageError("give a BUNDLE_DIR to profile, or --compare A.json B.json")
    from runtime_harness.profile import ProfilePlan, profile_bundle

    out_dir = Path(out or Path(bundle_dir) / f"profile-{device}")
    log = (lambda *a: None) if as_json else (lambda msg: click.echo(msg, err=True))
    res = profile_bundle(bundle_dir, device, out_dir, ProfilePlan(runs, duration, threads, sustained), log=log)
    if html_path:
        shutil.copyfile(out_dir / "report.html", html_path)
    _emit(res.to_json(), as_json, console_table(res) + f"\n\nresults: {out_dir / 'results.json'}, report: {out_dir / 'report.html'}")


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
