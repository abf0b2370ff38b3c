"""Op-level profile of a LiteRT training program's `train` signature, and its step time against
PyTorch eager measured in the same run (1 thread).

The Python LiteRT interpreter has no op profiler, so each operator of the signature's subgraph is
cut out into a one-op model (its constant inputs kept, the rest fed with the values a real step
produced) and timed alone. Resource-variable ops (VAR_HANDLE, READ_VARIABLE, ASSIGN_VARIABLE,
CALL_ONCE) cannot run alone and are counted, not timed. The sum of the op times is printed next to
the measured step so the coverage of the profile is visible.

    .venv/bin/python bench/litert_profile.py                      # fused_cnn, batch 32
    .venv/bin/python bench/litert_profile.py --model some_train.tflite --top 30
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ai_edge_litert import schema_py_generated as schema  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from ai_edge_litert.tools import flatbuffer_utils  # noqa: E402

from exporters.api import export_model  # noqa: E402
from exporters.reference import PyTorchTraining  # noqa: E402
from exporters.runner import open_training  # noqa: E402
from runtime_harness import metrics  # noqa: E402
from toolkit.models.examples import Example, fused_cnn  # noqa: E402

_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_UNTIMED = {"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE"}  # need the resource state
_NUMPY = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.INT32: np.int32,
          schema.TensorType.INT64: np.int64, schema.TensorType.BOOL: np.bool_}


@dataclass
class OpTime:
    index: int
    op: str
    output: str  # the first output tensor's name (carries the TF name scope, e.g. gradients/...)
    shapes: str  # input shapes -> output shapes
    seconds: float  # p50 of the timed runs (the harness's time_runs)


def _op_name(model: flatbuffer_utils.ModelT, op: schema.OperatorT) -> str:
    code = model.operatorCodes[op.opcodeIndex]
    return _OP_NAMES.get(max(code.builtinCode, code.deprecatedBuiltinCode), str(code.builtinCode))


def _subgraph_of(model: flatbuffer_utils.ModelT, signature: str) -> int:
    for sd in model.signatureDefs:
        key = sd.signatureKey.decode() if isinstance(sd.signatureKey, bytes) else sd.signatureKey
        if key == signature:
            return sd.subgraphIndex
    raise SystemExit(f"no signature {signature!r} in the model")


def _has_data(model: flatbuffer_utils.ModelT, tensor: schema.TensorT) -> bool:
    data = model.buffers[tensor.buffer].data
    return data is not None and len(data) > 0


def one_op_model(model: flatbuffer_utils.ModelT, subgraph: int, index: int) -> tuple[bytes, list[int]]:
    """Operator `index` of `subgraph` alone: constant inputs keep their data, every other input
    becomes a model input. Returns the flatbuffer and the original tensor ids of its inputs."""
    sg, op = model.subgraphs[subgraph], model.subgraphs[subgraph].operators[index]
    tensors, buffers, ids = [], [schema.BufferT()], {}

    def take(t: int) -> int:
        if t < 0 or t in ids:
            return ids.get(t, t)
        tensor = copy.copy(sg.tensors[t])
        if _has_data(model, tensor):
            buffers.append(model.buffers[tensor.buffer])
            tensor.buffer = len(buffers) - 1
        else:
            tensor.buffer = 0
        ids[t] = len(tensors)
        tensors.append(tensor)
        return ids[t]

    new_op = copy.copy(op)
    new_op.opcodeIndex = 0
    new_op.inputs = [take(t) for t in op.inputs]
    fed = [t for t in op.inputs if t >= 0 and not _has_data(model, sg.tensors[t])]
    new_op.outputs = [take(t) for t in op.outputs]
    graph = schema.SubGraphT()
    graph.tensors, graph.operators = tensors, [new_op]
    graph.inputs, graph.outputs = [ids[t] for t in fed], list(new_op.outputs)
    alone = schema.ModelT()
    alone.version, alone.operatorCodes = 3, [model.operatorCodes[op.opcodeIndex]]
    alone.subgraphs, alone.buffers = [graph], buffers
    return bytes(flatbuffer_utils.convert_object_to_bytearray(alone)), fed


def step_values(path: Path, signature: str, feed: dict[str, np.ndarray]) -> Interpreter:
    """An interpreter that ran one step keeping every intermediate tensor (real operand values:
    indices in range, masks as the step makes them)."""
    it = Interpreter(model_path=str(path), num_threads=1, experimental_preserve_all_tensors=True)
    it.get_signature_runner(signature)(**feed)
    return it


def _operand(it: Interpreter, subgraph: int, tensor: schema.TensorT, t: int) -> np.ndarray:
    try:
        value = it.get_tensor(t, subgraph_index=subgraph)
        if value is not None and list(value.shape) == list(tensor.shape):
            return value
    except ValueError:
        pass
    return np.zeros(tensor.shape, _NUMPY.get(tensor.type, np.float32))


def profile_ops(path: Path, feed: dict[str, np.ndarray], signature: str = "train",
                runs: int = 30) -> tuple[list[OpTime], dict[str, int]]:
    """Every timeable operator of `signature` timed alone; plus the counts of untimed ops."""
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    subgraph = _subgraph_of(model, signature)
    values = step_values(path, signature, feed)
    sg = model.subgraphs[subgraph]
    out, untimed = [], defaultdict(int)
    for i, op in enumerate(sg.operators):
        name = _op_name(model, op)
        if name in _UNTIMED:
            untimed[name] += 1
            continue
        data, fed = one_op_model(model, subgraph, i)
        it = Interpreter(model_content=data, num_threads=1)
        it.allocate_tensors()
        for detail, t in zip(it.get_input_details(), fed):
            it.set_tensor(detail["index"], _operand(values, subgraph, sg.tensors[t], t).astype(detail["dtype"]))
        shapes = (" ".join(str(list(sg.tensors[t].shape)) for t in op.inputs if t >= 0) + " -> "
                  + " ".join(str(list(sg.tensors[t].shape)) for t in op.outputs))
        output = sg.tensors[op.outputs[0]].name
        out.append(OpTime(i, name, output.decode() if isinstance(output, bytes) else str(output), shapes,
                          metrics.time_runs(it.invoke, runs, 0.0, warmup=1).runs.p50_s))
    return out, dict(untimed)


def report(ops: list[OpTime], untimed: dict[str, int], top: int) -> None:
    total = sum(o.seconds for o in ops)
    by_type: dict[str, list[OpTime]] = defaultdict(list)
    for o in ops:
        by_type[o.op].append(o)
    print(f"\nby op type (sum of one-op timings {total * 1e3:.2f} ms over {len(ops)} ops; untimed {untimed}):")
    for name, group in sorted(by_type.items(), key=lambda kv: -sum(o.seconds for o in kv[1])):
        t = sum(o.seconds for o in group)
        print(f"  {name:20s} {len(group):4d} ops {t * 1e3:8.3f} ms {100 * t / total:5.1f}%")
    print(f"\ntop {top} ops:")
    for o in sorted(ops, key=lambda o: -o.seconds)[:top]:
        print(f"  {o.seconds * 1e3:7.3f} ms  #{o.index:<4d} {o.op:18s} {o.shapes:60s} {o.output[:70]}")


def export_training(ex: Example, out: Path) -> Path:
    """The example's LiteRT training program, through the gate as `dcl export` makes it."""
    m = export_model(ex.model, ex.inputs, ["tflite"], out, name="profile", training=ex.spec,
                     input_names=ex.input_names, output_names=ex.output_names, train_batches=ex.batches,
                     force=True, log=print)
    art = next(a for a in m.programs[0].artifacts if a.kind == "training")
    return out / art.path, art


def step_p50(ex: Example, path: Path, art, runs: int, seconds: float) -> tuple[float, float]:
    """p50 of one training step, LiteRT and PyTorch eager, in this run (1 thread each)."""
    batch = {k: v.numpy() for k, v in ex.batches[0].items()}
    eager = metrics.profile_training(lambda: PyTorchTraining(ex.model, ex.spec), batch, runs, seconds)
    litert = metrics.profile_training(lambda: open_training("tflite", path, art, 1), batch, runs, seconds)
    return litert.timing.runs.p50_s, eager.timing.runs.p50_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--model", type=Path, help="profile this .tflite instead of exporting fused_cnn")
    ap.add_argument("--signature", default="train")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--op-runs", type=int, default=30)
    ap.add_argument("--runs", type=int, default=200, help="training steps timed per runtime")
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ex = fused_cnn(batch=args.batch)
    feed = {k: v.numpy() for k, v in ex.batches[0].items()}
    with tempfile.TemporaryDirectory() as tmp:
        path, art = (args.model, None) if args.model else export_training(ex, Path(tmp) / "b")
        ops, untimed = profile_ops(path, feed, args.signature, args.op_runs)
        report(ops, untimed, args.top)
        if art is not None:
            litert, eager = step_p50(ex, path, art, args.runs, args.seconds)
            print(f"\ntraining step p50, batch {args.batch}, 1 thread: LiteRT {litert * 1e3:.2f} ms, "
                  f"PyTorch eager {eager * 1e3:.2f} ms, LiteRT/eager {litert / eager:.2f}x")


if __name__ == "__main__":
    main()
