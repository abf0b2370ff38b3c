"""Run directories: config.json, metrics.json and safetensors checkpoints, written atomically."""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from dcl_core.atomic import atomic_dir
from dcl_core.errors import CheckpointError


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
    """Yield a RunDir in a temp folder next to `final`; it becomes `final` on success only."""
    with atomic_dir(final) as tmp:
        yield RunDir(tmp)


def tensor_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"weights file {p} does not exist; pass the .safetensors or .npz the device returned")
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                return {k: torch.from_numpy(np.array(z[k])) for k in z.files}
        return load_file(str(p))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"weights file {p} is corrupt or not .safetensors/.npz ({e})") from None
