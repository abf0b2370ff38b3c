"""Where an ExecuTorch training step spends its time: the DC-CCL device step (batch 32 by
default) exported for ExecuTorch, run by the native runner with ETDump on, and the runtime's own
per-operator times summed per step. Prints the table (ops by time per step, share of the step)
and writes bench/et_training_profile.json. A report, not a test.

    .venv/bin/python bench/et_training_profile.py [--batch 32] [--steps 20] [--top 15]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from exporters.base import ExportJob  # noqa: E402
from exporters.executorch import native  # noqa: E402
from exporters.executorch.exporter import ExecuTorchExporter  # noqa: E402
from run_all import dcccl_device_step  # noqa: E402
from runtime_harness.devices.native import NativePlan, run_native  # noqa: E402

# ETDump's bookkeeping events (they contain the operators, or are instants)
_WRAPPERS = {"Method::execute", "OPERATOR_CALL", "Program::load_method", "Method::init"}


def op_table(etdump: Path, steps: int) -> list[dict]:
    """Per operator: calls per step and median-per-call times summed, ms per step."""
    from executorch.devtools import Inspector

    frame = Inspector(etdump_path=str(etdump)).to_dataframe()
    # XNNPACK's own events are inside DELEGATE_CALL: counted there once
    frame = frame[(frame.event_block_name == "Execute") & ~frame.is_delegated_op.fillna(False).astype(bool)]
    per_op: dict[str, list[float]] = defaultdict(list)
    for name, raw in zip(frame.event_name, frame.raw):
        if name not in _WRAPPERS and len(raw):
            per_op[name.removeprefix("native_call_")].append(statistics.median(raw))
    step_ms = sum(statistics.median(r) for n, r in zip(frame.event_name, frame.raw) if n == "Method::execute")
    rows = [{"op": op, "calls": len(ms), "ms_per_step": sum(ms), "share": sum(ms) / step_ms if step_ms else None}
            for op, ms in per_op.items()]
    rows.sort(key=lambda r: -r["ms_per_step"])
    return [{"op": "Method::execute (the whole step)", "calls": 1, "ms_per_step": step_ms, "share": 1.0}] + rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    native.build(log=lambda m: print(m, file=sys.stderr))
    ex = dcccl_device_step(batch=args.batch)
    b0 = ex.batches[0]
    with tempfile.TemporaryDirectory() as tmp:
        job = ExportJob(ex.model, (b0["x"],), ["x"], ["logits"], Path(tmp), "step", target=b0["y"], spec=ex.spec)
        art = ExecuTorchExporter().export_training(job)
        etdump = Path(tmp) / "step.etdp"
        run = run_native(Path(tmp) / art.path, art, {k: v.numpy() for k, v in b0.items()},
                         NativePlan(runs=args.steps, warmup=2, extra_args=(f"--etdump={etdump}",)))
        rows = op_table(etdump, args.steps)
    p50 = statistics.median(run.output.timings.samples_s) * 1e3
    print(f"DC-CCL device step, batch {args.batch}, ExecuTorch native runner, 1 thread: p50 {p50:.2f} ms "
          f"(with ETDump on)\n")
    print(tabulate([[r["op"], r["calls"], r["ms_per_step"], r["share"]] for r in rows[:args.top + 1]],
                   headers=["operator", "calls/step", "ms/step", "share"], tablefmt="github", floatfmt=".3g"))
    out = Path(__file__).with_name("et_training_profile.json")
    out.write_text(json.dumps({"batch": args.batch, "p50_ms": p50, "rows": rows}, indent=2) + "\n")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
