"""The `dcl` command line. Thin by design: parses arguments, delegates, prints.

Every user error surfaces as one line on stderr and a non-zero exit code (no traceback).
"""
from __future__ import annotations

import json
import sys
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
