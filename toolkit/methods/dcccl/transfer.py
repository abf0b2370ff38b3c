"""Device -> cloud: load f_d weights that came back from a phone runtime into a run.

Runtimes hand weights back keyed by PyTorch names of the exported device program, where f_d is
the submodule "f_d." (see export.py); the prefix is optional here. Accepted files:
.safetensors or .npz (what the runners' get_weights() and the demo apps write).
"""
from __future__ import annotations

from pathlib import Path

from toolkit.methods.dcccl.export import DEVICE_PART
from toolkit.methods.dcccl.pipeline import load_run
from toolkit.run import read_weights, weights_for

DEVICE_PREFIX = f"{DEVICE_PART}."
DEFAULT_NAME = "f_d_imported"  # the checkpoint written when --name is not given


def import_device_weights(run_dir: str | Path, weights: str | Path, name: str = DEFAULT_NAME,
                          force: bool = False) -> dict:
    """Load returned f_d weights over the run's f_d (parameters only; BN statistics are kept, since
    a frozen-BN training program never changes them) and save them as checkpoints/<name>."""
    cfg, trained, run = load_run(run_dir)
    f_d = trained.models.f_d
    got = {k[len(DEVICE_PREFIX):] if k.startswith(DEVICE_PREFIX) else k: v for k, v in read_weights(weights).items()}
    state = weights_for(f_d, got, str(run_dir), "f_d")
    f_d.load_state_dict(state)
    run.save_new_checkpoint(name, f_d, force)
    return {"imported": len(got), "checkpoint": str(run.checkpoint_path(name))}
