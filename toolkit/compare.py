"""Several runs of one method side by side (usually the same config over seeds): the mean and
sample standard deviation of every result, so a difference can be judged against the spread.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabulate import tabulate

from dcl_core.config import to_dict
from dcl_core.errors import ConfigError
from toolkit.registry import method_of_run
from toolkit.run import RunDir

# config keys expected to differ between the runs being compared
VARYING = ("seed",)
_MISSING = object()  # a config key one run has and another lacks


@dataclass
class Spread:
    values: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation (n - 1), the spread a reader expects from a few seeds."""
        return statistics.stdev(self.values)


@dataclass
class Comparison:
    method: str
    runs: list[str]
    seeds: list[Any]
    # result -> metric -> spread over the runs; a metric missing from any run is left out
    results: dict[str, dict[str, Spread]]
    config_differences: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "runs": self.runs, "seeds": self.seeds,
                "config_differences": self.config_differences,
                "results": {r: {m: {"mean": s.mean, "std": s.std, "n": len(s.values), "values": s.values}
                                for m, s in ms.items()} for r, ms in self.results.items()}}

    def table(self) -> str:
        columns = list(dict.fromkeys(m for ms in self.results.values() for m in ms))
        rows = [[r] + [_cell(ms.get(c)) for c in columns] for r, ms in self.results.items()]
        return tabulate(rows, headers=["result"] + [f"{c} (mean ± std)" for c in columns], tablefmt="github")


def _cell(s: Spread | None) -> str:
    return "-" if s is None else f"{s.mean:.2f} ± {s.std:.2f}"


def compare_runs(run_dirs: list[str | Path]) -> Comparison:
    """Read each run's config.json and metrics.json (nothing is re-evaluated)."""
    if len(run_dirs) < 2:
        raise ConfigError("compare needs at least 2 run directories (e.g. the same config over seeds)")
    if len({Path(r).resolve() for r in run_dirs}) < len(run_dirs):
        raise ConfigError("a run directory is given twice; each run counts once in the mean")
    methods = [method_of_run(r).name for r in run_dirs]
    if len(set(methods)) > 1:
        pairs = ", ".join(f"{r} ({m})" for r, m in zip(run_dirs, methods))
        raise ConfigError(f"runs of different methods cannot be compared: {pairs}")
    # decoded like `dcl eval` decodes them: a string, nan or 1e20 in a record is one line, not a
    # traceback or a silently skewed mean
    cls = type(method_of_run(run_dirs[0]).load_config(None, False, None))
    configs = [to_dict(RunDir(r).read_config(cls)) for r in run_dirs]
    per_run = [RunDir(r).read_results() for r in run_dirs]

    results: dict[str, dict[str, Spread]] = {}
    for name in dict.fromkeys(n for res in per_run for n in res):
        metrics = dict.fromkeys(m for res in per_run for m in res.get(name, {}))
        spreads = {m: Spread([res[name][m] for res in per_run]) for m in metrics
                   if all(m in res.get(name, {}) for res in per_run)}
        if spreads:
            results[name] = spreads
    return Comparison(method=methods[0], runs=[str(r) for r in run_dirs],
                      seeds=[c.get("seed") for c in configs], results=results,
                      config_differences=_differences(configs))


def _differences(configs: list[dict[str, Any]]) -> list[str]:
    """Dotted config keys (other than the seed) whose values are not the same in every run."""
    flat = [_flatten(c) for c in configs]
    keys = dict.fromkeys(k for f in flat for k in f)
    return [k for k in keys if k not in VARYING
            and any(f.get(k, _MISSING) != flat[0].get(k, _MISSING) for f in flat)]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out
