"""Device -> cloud: a client's fine-tuned head (the `head_finetune` program's weights, as a runtime
returned them: "head.weight", "head.bias", .safetensors or .npz) saved into the run as a
per-client head checkpoint. The run's ICIIA-T head fixes the expected shapes."""
from __future__ import annotations

import copy
from pathlib import Path

from toolkit.methods.iciia.model import HeadProgram
from toolkit.methods.iciia.pipeline import MAIN, load_run
from toolkit.run import read_weights, weights_for

DEFAULT_NAME = "head_client"


def import_head(run_dir: str | Path, weights: str | Path, name: str = DEFAULT_NAME, force: bool = False) -> dict:
    _, trained, run = load_run(run_dir)
    program = HeadProgram(copy.deepcopy(trained.variants[MAIN].head))
    got = {k if k.startswith("head.") else f"head.{k}": v for k, v in read_weights(weights).items()}
    # the whole state is required: the head has no buffers, and a partial head is no head
    program.load_state_dict(weights_for(program, got, str(run_dir), "the head_finetune program",
                                        required=program.state_dict()))
    path = run.save_new_checkpoint(name, program, force)
    return {"imported": len(got), "checkpoint": str(path)}
