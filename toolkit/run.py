"""Run directories: config.json, metrics.json and safetensors checkpoints, written atomically."""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, TypeVar

from dcl_core.config import check_number, from_dict
from dcl_core.errors import CheckpointError, ConfigError
from dcl_core.outputs import atomic_output
from dcl_core.untrusted import check_name

if TYPE_CHECKING:  # torch is imported where checkpoints are read or written: `dcl compare` and
    import torch  # other commands that only read a run's JSON records start without it
    from torch import nn

T = TypeVar("T")
REDO = "the file was changed or damaged: re-run `dcl train` to recreate the run"


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # -- json records
    def write_json(self, name: str, obj: Any) -> Path:
        target = self.path / name
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
        tmp.replace(target)
        return target

    def read_json(self, name: str) -> Any:
        p = self.path / name
        if not p.is_file():
            raise CheckpointError(f"{p} is missing; is {self.path} a dcl run directory (made by `dcl train`)?")
        try:
            return json.loads(p.read_text())
        except ValueError as e:
            raise CheckpointError(f"{p} is corrupt ({e}); re-run `dcl train` to recreate the run") from None

    def read_config(self, cls: type[T]) -> T:
        """config.json's config, decoded as strictly as a config file (types, ranges, finite)."""
        record = self.read_json("config.json")
        config = record.get("config") if isinstance(record, dict) else None
        where = str(self.path / "config.json")
        if not isinstance(config, dict):
            raise CheckpointError(f"{where} has no \"config\" table; {REDO}")
        try:
            return from_dict(cls, config, f"{where}: config")
        except ConfigError as e:
            raise CheckpointError(f"{e}; {REDO}") from None

    def read_results(self) -> dict[str, dict[str, float]]:
        """metrics.json's results: per result, per metric a score within its range (`score_range`);
        a string, nan, inf or 1.8e19 where a score belongs is refused with one line."""
        metrics = self.read_json("metrics.json")
        results = metrics.get("results") if isinstance(metrics, dict) else None
        where = f"{self.path / 'metrics.json'}: results"
        if not isinstance(results, dict):
            raise CheckpointError(f"{self.path / 'metrics.json'} has no \"results\" table; {REDO}")
        try:
            return {name: _scores(row, f"{where}.{name}") for name, row in results.items()}
        except ConfigError as e:
            raise CheckpointError(f"{e}; {REDO}") from None

    # -- checkpoints
    def checkpoint_path(self, name: str) -> Path:
        return self.path / "checkpoints" / f"{name}.safetensors"

    def save_model(self, name: str, model: nn.Module) -> Path:
        p = self.checkpoint_path(name)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp")  # never half a checkpoint under its real name
        from safetensors.torch import save_file

        try:
            # contiguous clones: safetensors refuses shared or strided storage
            save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(tmp))
            tmp.replace(p)
        finally:
            tmp.unlink(missing_ok=True)
        return p

    def save_new_checkpoint(self, name: str, model: nn.Module, force: bool = False) -> Path:
        """Save under a user-given name: a plain file name, never replacing a checkpoint unless asked."""
        check_name(name, "checkpoint name", CheckpointError)
        path = self.checkpoint_path(name)
        if path.exists() and not force:
            raise CheckpointError(f"checkpoint {path} exists; pass --force to replace it, or --name another name")
        return self.save_model(name, model)

    def load_model(self, name: str, model: nn.Module) -> nn.Module:
        load_state(model, self.checkpoint_path(name))
        return model


def load_state(model: nn.Module, path: Path) -> None:
    """Load a safetensors state dict with one clear line on any problem (never pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is missing; re-run `dcl train` or point at the right run directory")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or not safetensors ({e}); re-run `dcl train`") from None
    expected = model.state_dict()
    for problem in (_missing(expected, state), _unexpected(expected, state), _wrong_shape(expected, state)):
        if problem:
            raise CheckpointError(f"checkpoint {path} does not fit the model in config.json: {problem}; "
                                  "re-run `dcl train` or point at the right run directory")
    model.load_state_dict(state, strict=True)


def _missing(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> str:
    names = sorted(set(expected) - set(got))
    return f"tensor {names[0]!r} is missing" if names else ""


def _unexpected(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> str:
    names = sorted(set(got) - set(expected))
    return f"tensor {names[0]!r} is not in the model" if names else ""


def _wrong_shape(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> str:
    for name, t in expected.items():
        if tuple(got[name].shape) != tuple(t.shape):
            return f"tensor {name!r} has shape {tuple(got[name].shape)}, the model expects {tuple(t.shape)}"
    return ""


def score_range(metric: str) -> tuple[float, float]:
    """Every result a method reports is a score: an AUC (its name says so) in [0, 1], any other an
    accuracy in percent, [0, 100]."""
    return (0.0, 1.0) if "auc" in metric.lower() else (0.0, 100.0)


def _scores(row: Any, where: str) -> dict[str, float]:
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: expected a table of scores, got {row!r}")
    out = {}
    for metric, value in row.items():
        lo, hi = score_range(metric)
        out[metric] = float(check_number(value, f"{where}.{metric}", ge=lo, le=hi))
    return out


RUN = "run"  # the output kind of a run directory


@contextmanager
def atomic_run_dir(final: str | Path, force: bool = False) -> Iterator[RunDir]:
    """Yield a RunDir in a temp folder next to `final`; it becomes `final` on success only
    (replacing a previous run there only with `force`)."""
    with atomic_output(final, RUN, force) as tmp:
        yield RunDir(tmp)


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights a device returned (.safetensors or .npz, never pickle): float32 and finite only,
    since every runtime trains in float32 and a cast or a NaN would silently corrupt a model."""
    import numpy as np
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"weights file {p} does not exist; pass the .safetensors or .npz the device returned")
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                weights = {k: torch.from_numpy(np.array(z[k])) for k in z.files}
        else:
            weights = load_file(str(p))
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"weights file {p} is corrupt or not .safetensors/.npz ({e})") from None
    for name, t in weights.items():
        if t.dtype != torch.float32:
            raise CheckpointError(f"weights file {p}: tensor {name!r} is {str(t.dtype).removeprefix('torch.')}; "
                                  "device weights must be float32 (as the runtimes return them)")
        if not torch.isfinite(t).all():
            raise CheckpointError(f"weights file {p}: tensor {name!r} has NaN or Inf values; the device's training "
                                  "diverged (lower its learning rate), nothing was imported")
    return weights


def open_run(path: str | Path, method: str, config_cls: type[T]) -> tuple[T, RunDir]:
    """A run directory of `method` and its config (decoded strictly by `RunDir.read_config`); every
    method's `load_run` starts here."""
    run = RunDir(path)
    if not run.path.is_dir():
        raise CheckpointError(f"run directory {run.path} does not exist; run `dcl train {method} --out {run.path}` first")
    return run.read_config(config_cls), run


def weights_for(module: nn.Module, got: dict[str, torch.Tensor], source: str, what: str,
                required: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """`module`'s state with the device's weights `got` in place, after the checks every import
    needs: no name the module lacks (a file from another run), no required name missing (by
    default every parameter), every shape the module's. One line naming the tensor otherwise."""
    state = module.state_dict()
    unknown = sorted(set(got) - set(state))
    if unknown:
        raise CheckpointError(f"weights file has {unknown[0]!r}, which {what} of {source} does not have; "
                              "was it exported from this run?")
    needed = set(dict(module.named_parameters()) if required is None else required)
    missing = sorted(needed - set(got))
    if missing:
        raise CheckpointError(f"weights file lacks {missing[0]!r}; pass the full get_weights() output")
    for k, v in got.items():
        if tuple(v.shape) != tuple(state[k].shape):
            raise CheckpointError(f"weight {k!r} has shape {tuple(v.shape)}, {what} expects {tuple(state[k].shape)}")
    return state | got
