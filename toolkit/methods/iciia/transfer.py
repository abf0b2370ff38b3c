"""Device -> cloud: a client's fine-tuned head (the `head_finetune` program's weights, as a runtime
returned them: "head.weight", "head.bias", .safetensors or .npz) saved into the run as a
per-client head checkpoint. The run's ICIIA-T head fixes the expected shapes."""
from __future__ import annotations

import copy
from pathlib import Path

from dcl_core.errors import CheckpointError
from toolkit.methods.iciia.module import HeadProgram
from toolkit.methods.iciia.pipeline import MAIN, load_run
from toolkit.run import read_weights

DEFAULT_NAME = "head_client"


def import_head(run_dir: str | Path, weights: str | Path, name: str = DEFAULT_NAME, force: bool = False) -> dict:
    _, trained, run = load_run(run_dir)
    program = HeadProgram(copy.deepcopy(trained.variants[MAIN].head))
    state = program.state_dict()
    got = {k if k.startswith("head.") else f"head.{k}": v for k, v in read_weights(weights).items()}
    unknown = sorted(set(got) - set(state))
    if unknown:
        raise CheckpointError(f"weights file has {unknown[0]!r}, which the head_finetune program of {run_dir} "
                              "does not have; was it exported from this run?")
    missing = sorted(set(state) - set(got))
    if missing:
        raise CheckpointError(f"weights file lacks {missing[0]!r}; pass the full get_weights() output")
    for k, v in got.items():
        if tuple(v.shape) != tuple(state[k].shape):
            raise CheckpointError(f"weight {k!r} has shape {tuple(v.shape)}, the head expects {tuple(state[k].shape)}")
    program.load_state_dict(got)
    path = run.save_new_checkpoint(name, program, force)
    return {"imported": len(got), "checkpoint": str(path)}
