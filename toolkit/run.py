"""Run directories: config.json, metrics.json and safetensors checkpoints.

A run is written into a temporary sibling folder and renamed into place only when complete, so a
crash or Ctrl-C never leaves a half-written run where a user (or `dcl export`) would read it.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from toolkit.errors import CheckpointError


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

    # -- checkpoints
    def checkpoint_path(self, name: str) -> Path:
        return self.path / "checkpoints" / f"{name}.safetensors"

    def save_model(self, name: str, model: nn.Module) -> Path:
        p = self.checkpoint_path(name)
        p.parent.mkdir(parents=True, exist_ok=True)
        # contiguous clones: safetensors refuses shared or strided storage
        save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(p))
        return p

    def load_model(self, name: str, model: nn.Module) -> nn.Module:
        load_state(model, self.checkpoint_path(name))
        return model


def load_state(model: nn.Module, path: Path) -> None:
    """Load a safetensors state dict with one clear line on any problem (never pickle)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is missing; re-run `dcl train` or point at the right run directory")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or not safetensors ({e}); re-run `dcl train`") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "shape mismatch"
        raise CheckpointError(f"checkpoint {path} does not fit the model in config.json ({first})") from None


@contextmanager
def atomic_run_dir(final: str | Path) -> Iterator[RunDir]:
    """Yield a RunDir in a temp folder next to `final`; rename it to `final` on success only."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield RunDir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)


def replace_dir(src: Path, final: Path) -> None:
    """Move a finished folder into place, replacing an old one without a moment of neither."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
        src.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        src.rename(final)
    os.chmod(final, 0o755)


def tensor_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())
