"""Inputs a profile feeds an artifact when it has nothing else: shaped and typed as the artifact
declares, seeded, so every device (host, arm64, a phone) and PyTorch see the same values."""
from __future__ import annotations

import numpy as np

from dcl_core.bundle import Artifact, Program

DTYPES = {"float32": np.float32, "int64": np.int64, "int32": np.int32}


def num_classes(program: Program) -> int:
    """Classes of a program's model: the last dimension of an inference artifact's output."""
    for a in program.artifacts:
        if a.kind == "inference" and a.outputs and a.outputs[0].shape:
            return max(int(a.outputs[0].shape[-1]), 2)
    return 2


def synthetic_inputs(art: Artifact, classes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs at the artifact's shapes: uniform [0, 1) floats, labels in [0, classes), ids 0."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in art.inputs:
        dt = DTYPES.get(t.dtype, np.float32)
        if np.issubdtype(dt, np.floating):
            out[t.name] = rng.random(t.shape, dtype=np.float32).astype(dt)
        elif t.name == "y":
            out[t.name] = rng.integers(0, classes, size=t.shape).astype(dt)
        else:  # ids: row 0 always exists
            out[t.name] = np.zeros(t.shape, dtype=dt)
    return out
