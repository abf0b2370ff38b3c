"""Runs inside the arm64 guest (its Python 3.11 under qemu): one artifact through dcl's own runner
module for its format (exporters/<format>/runner.py, the code the host runs), `calls` times.

    python3.11 guest.py JOB.json

JOB.json (written by device.py): format, kind, path, artifact (the manifest's record), inputs
({name: .npy file}), calls, threads, out (a folder). Writes into `out`: output_<i>.npy (inference,
the last call's outputs) or weight_<i>.npy (training, after the last step), and result.json with
the losses and the weights' PyTorch names. Nothing is pickled either way (np.load refuses
pickles, the rest is JSON). Errors: one line on stderr, exit status 2.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main(job_file: str) -> None:
    import numpy as np

    from exporters.runner import open_inference, open_training

    job = json.loads(Path(job_file).read_text())
    out = Path(job["out"])
    inputs = {name: np.load(path, allow_pickle=False) for name, path in job["inputs"].items()}
    result: dict = {"calls": job["calls"]}
    if job["kind"] == "inference":
        runner = open_inference(job["format"], job["path"], job["artifact"], job["threads"])
        outputs = [runner.infer(inputs) for _ in range(job["calls"])][-1]
        for i, o in enumerate(outputs):
            np.save(out / f"output_{i}.npy", np.asarray(o), allow_pickle=False)
        result["outputs"] = len(outputs)
    else:
        runner = open_training(job["format"], job["path"], job["artifact"], job["threads"])
        result["losses"] = [float(runner.train_step(inputs)) for _ in range(job["calls"])]
        weights = runner.get_weights()
        result["weights"] = list(weights)
        for i, w in enumerate(weights.values()):
            np.save(out / f"weight_{i}.npy", np.asarray(w), allow_pickle=False)
    (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except Exception as e:  # noqa: BLE001 - the host reads one line and reports it per artifact
        from dcl_core.errors import DclError

        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"DCL-ERROR {first if isinstance(e, DclError) else f'{type(e).__name__}: {first}'}", file=sys.stderr)
        sys.exit(2)
