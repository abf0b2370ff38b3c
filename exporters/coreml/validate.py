"""Structural validation of Core ML artifacts, for where they cannot run (Linux; training everywhere).

Checks the spec with coremltools: for inference the signature, MIL ops and fp32 precision; for
training the rules Apple's compiler enforces on updatable networks (see `plan`) plus agreement
with the PyTorch model: the updatable layers hold exactly the parameters the manifest says train,
the manifest accounts for every requested parameter, and each layer rewritten for
backpropagation computes what it replaced. Checks run in order and stop at the first failure.
"""
from __future__ import annotations

import math
from collections import Counter, deque
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from dcl_core.bundle import Artifact, TensorSpec, Validation
from exporters.base import ExportJob
from exporters.coreml.convert import DEPLOYMENT_TARGET, first_line
from exporters.coreml.plan import LOSS_KINDS, WEIGHT_LAYERS, backpropagable, describe, layer_weight, producers
from exporters.spec import TrainingSpec

# a named check: returns "" when it passes, else what is wrong
Checks = Iterator[tuple[str, Callable[[], str]]]

_FEATURE_DTYPES = {"FLOAT32": "float32", "DOUBLE": "float64", "INT32": "int32", "FLOAT16": "float16"}


def validate_structure(path: Path, artifact: Artifact, job: ExportJob) -> Validation:
    """Load the spec at `path` and run the inference or training checks on it."""
    import coremltools as ct

    try:
        spec = ct.utils.load_spec(str(path))
    except Exception as e:  # noqa: BLE001 - an unreadable spec is a structural failure, not a crash
        return Validation(True, False, f"cannot load {artifact.path}: {type(e).__name__}: {first_line(e)}")
    checks = inference_checks(spec, artifact) if artifact.kind == "inference" else training_checks(spec, artifact, job)
    passed: list[str] = []
    for name, check in checks:
        failure = check()
        if failure:
            return Validation(True, False, f"{name}: {failure}" + (f" (passed: {', '.join(passed)})" if passed else ""))
        passed.append(name)
    return Validation(True, True, f"{len(passed)} checks passed: {', '.join(passed)}")


def main_ops(spec: Any) -> list:
    """The operations of an ML program's main function (top-level block)."""
    main = spec.mlProgram.functions["main"]
    return list(main.block_specializations[main.opset].operations)


def inference_checks(spec: Any, artifact: Artifact) -> Checks:
    is_program = spec.WhichOneof("Type") == "mlProgram"
    ops = main_ops(spec) if is_program else []
    counts = Counter(op.type for op in ops)
    yield "ML program", lambda: "" if is_program else f"model type is {spec.WhichOneof('Type')}, not mlProgram"
    yield f"spec version >= 7 ({DEPLOYMENT_TARGET})", lambda: (
        "" if spec.specificationVersion >= 7 else f"spec version {spec.specificationVersion}")
    yield "inputs", lambda: _compare_features("inputs", _features(spec.description.input), artifact.inputs)
    yield "outputs", lambda: _compare_features("outputs", _features(spec.description.output), artifact.outputs)
    yield f"{len(ops)} MIL ops ({', '.join(f'{t} {n}' for t, n in counts.most_common(3))})", lambda: (
        "" if set(counts) - {"const"} else "the program has no compute op")
    yield "fp32 tensors", lambda: _fp16_tensors(ops)


def training_checks(spec: Any, artifact: Artifact, job: ExportJob) -> Checks:
    nn = spec.neuralNetwork if spec.WhichOneof("Type") == "neuralNetwork" else None
    yield "updatable neural network", lambda: (
        "" if nn is not None and spec.isUpdatable and spec.specificationVersion >= 4
        else f"type {spec.WhichOneof('Type')}, isUpdatable={spec.isUpdatable}, spec version {spec.specificationVersion}")
    yield "inputs", lambda: _compare_features(
        "training inputs", _features(spec.description.trainingInput), artifact.inputs)
    yield "outputs", lambda: _compare_features("outputs", _features(spec.description.output), artifact.outputs)
    yield "layer order", lambda: _check_order(nn, spec)
    yield "requested parameters accounted for", lambda: _check_accounting(artifact, job)
    yield "updatable layers", lambda: _check_updatable(nn, artifact, job)
    yield "backpropagation path", lambda: _check_backprop(nn)
    yield "rewrites", lambda: _check_rewrites(nn, artifact)
    yield "loss", lambda: _check_loss(nn, spec, artifact, job)
    yield "optimizer", lambda: _check_optimizer(nn, job.spec)


def _features(descriptions: Any) -> list[TensorSpec]:
    from coremltools.proto import FeatureTypes_pb2

    out = []
    for d in descriptions:
        t = d.type.multiArrayType
        out.append(TensorSpec(d.name, [int(s) for s in t.shape],
                              _FEATURE_DTYPES.get(FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(t.dataType), "?")))
    return out


def _compare_features(kind: str, got: list[TensorSpec], expected: list[TensorSpec]) -> str:
    g = [(t.name, list(t.shape), t.dtype) for t in got]
    e = [(t.name, list(t.shape), t.dtype) for t in expected]
    return "" if g == e else f"spec {kind} {g} != artifact {e}"


def _fp16_tensors(ops: list) -> str:
    from coremltools.proto import MIL_pb2

    fp16 = [f"{op.type}:{o.name}" for op in ops for o in op.outputs
            if o.type.WhichOneof("type") == "tensorType" and o.type.tensorType.dataType == MIL_pb2.FLOAT16]
    return f"{len(fp16)} fp16 tensors, e.g. {fp16[:3]}" if fp16 else ""


def _check_order(nn: Any, spec: Any) -> str:
    """Core ML needs every layer's inputs defined before it (model inputs or earlier layers), and
    unique layer and loss names in an updatable model."""
    names = Counter([layer.name for layer in nn.layers] + [loss.name for loss in nn.updateParams.lossLayers])
    if max(names.values(), default=1) > 1:
        return f"layer names used twice: {sorted(n for n, k in names.items() if k > 1)}"
    defined = {d.name for d in spec.description.input}
    for layer in nn.layers:
        missing = [i for i in layer.input if i not in defined]
        if missing:
            return f"{describe(layer)} reads {missing} before any layer produces them"
        defined.update(layer.output)
    return ""


def _check_accounting(artifact: Artifact, job: ExportJob) -> str:
    """The manifest records the request and splits it exactly into what trains and what was left
    frozen (with a reason)."""
    details, requested = artifact.details, job.spec.trainable_names(job.model)
    if details.get("requested") != requested:
        return f"details record requested {details.get('requested')}, the training spec requests {requested}"
    trains = details.get("trains")
    if trains != list(artifact.trainable):
        return f"details record trains {trains}, artifact.trainable is {artifact.trainable}"
    frozen = [n for names in details.get("left_frozen", {}).values() for n in names]
    if sorted(trains + frozen) != sorted(requested):
        return f"trains {trains} and left_frozen {sorted(frozen)} do not split the requested parameters exactly"
    return ""


def _check_updatable(nn: Any, artifact: Artifact, job: ExportJob) -> str:
    """Exactly the planned layers are updatable, each fully (weights and bias), and each holds the
    PyTorch parameters it is named after, which the spec lets train."""
    planned = artifact.details.get("updatable_layers", {})
    marked = {layer.name: layer for layer in nn.layers if layer.isUpdatable}
    if set(marked) != set(planned):
        return f"updatable layers {sorted(marked)} != planned {sorted(planned)}"
    names = [n for ns in planned.values() for n in ns]
    if set(names) != set(artifact.trainable):
        return f"updatable layers hold {sorted(names)}, artifact.trainable is {sorted(artifact.trainable)}"
    allowed = set(job.spec.trainable_names(job.model))
    if not set(names) <= allowed:
        return f"{sorted(set(names) - allowed)} are updatable but the training spec freezes them"
    params = {n: p.detach().numpy() for n, p in job.model.named_parameters()}
    for name, layer in marked.items():
        failure = _check_layer(layer, planned[name], params, artifact.details.get("head_reparametrization"))
        if failure:
            return failure
    return ""


def _check_layer(layer: Any, names: list[str], params: dict[str, np.ndarray], reparam: dict | None) -> str:
    kind = layer.WhichOneof("layer")
    if kind not in WEIGHT_LAYERS:
        return f"{describe(layer)} is updatable; Core ML updates only convolution and innerProduct"
    p = getattr(layer, kind)
    if not p.weights.isUpdatable or (p.hasBias and not p.bias.isUpdatable):
        return f"{describe(layer)} has weights or a bias not marked updatable"
    w, b = layer_weight(layer)
    if reparam and reparam["layer"] == layer.name:  # see passes.TwoClassHead
        w = reparam["scale"] * (w[1:] - w[:1])
        b = None if b is None else reparam["scale"] * (b[1:] - b[:1])
    ref = [params[n] for n in names]
    got = [w] + ([b] if b is not None else [])
    if len(got) != len(ref) or any(g.shape != r.shape or not np.allclose(g, r, rtol=1e-5, atol=1e-6)
                                   for g, r in zip(got, ref)):
        return f"{describe(layer)} does not hold the PyTorch parameters {names}"
    return ""


def _check_backprop(nn: Any) -> str:
    """Apple's rule: walking back (breadth first) from the loss, no updatable layer may come after
    a layer that cannot backpropagate (a softmax right before a cross-entropy loss is allowed)."""
    producer = producers(nn)
    for loss in nn.updateParams.lossLayers:
        kind = loss.WhichOneof("LossLayerType")
        queue, seen, blocker = deque([(loss.name, [getattr(loss, kind).input])]), set(), ""
        while queue:
            child, blobs = queue.popleft()
            for parent in (producer[b] for b in blobs if b in producer):
                if parent.name in seen:
                    continue
                seen.add(parent.name)
                queue.append((parent.name, list(parent.input)))
                if parent.isUpdatable and blocker:
                    return f"{blocker}, which cannot backpropagate, lies between the loss and updatable {parent.name!r}"
                softmax_before_loss = (parent.WhichOneof("layer") == "softmax" and child == loss.name
                                       and kind == "categoricalCrossEntropyLossLayer")
                if not backpropagable(parent) and not softmax_before_loss:
                    blocker = blocker or describe(parent)
    return ""


def _check_rewrites(nn: Any, artifact: Artifact) -> str:
    """Each layer rewritten for backpropagation (plan.Rewrite) computes what it replaced: a
    bypassed reshape's reader reads its source; the layers now between a clip's or a mean's
    source and output blobs, evaluated on a probe spanning the clip's bounds, agree with it."""
    producer, layers = producers(nn), {layer.name: layer for layer in nn.layers}
    for r in artifact.details.get("rewrites", []):
        where = f"rewrite of {r['layer']!r} ({r['kind']})"
        if r["kind"] == "bypass":
            reader = layers.get(r["reader"])
            if reader is None or reader.input[0] != r["source"]:
                return f"{where}: {r['reader']!r} does not read {r['source']!r}"
            continue
        path = _path(producer, r["source"], r["output"])
        if path is None:
            return f"{where}: no single-input path of layers from {r['source']!r} to {r['output']!r}"
        lo, hi = r.get("bounds", (-1.0, 1.0))
        x = np.linspace(lo - 1.0, hi + 1.0, r["channels"] * 9, dtype=np.float32).reshape(1, r["channels"], 3, 3)
        want = np.clip(x, lo, hi) if r["kind"] == "clip" else x.mean((2, 3), keepdims=True)
        got = _evaluate(path, x)
        if isinstance(got, str):
            return f"{where}: {got}"
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, abs(hi - lo))):
            return f"{where}: the layers from {r['source']!r} to {r['output']!r} do not compute the {r['kind']} they replace"
    return ""


def _path(producer: dict[str, Any], source: str, output: str) -> list | None:
    """The single-input layers leading from blob `source` to blob `output`, in order."""
    path, blob = [], output
    while blob != source:
        layer = producer.get(blob)
        if layer is None or len(layer.input) != 1 or len(path) > len(producer):
            return None
        path.append(layer)
        blob = layer.input[0]
    return path[::-1]


def _evaluate(path: list, x: np.ndarray) -> np.ndarray | str:
    """The values the layers a rewrite produces (batchnorm, ReLU, global average pooling) compute
    from x [N, C, H, W], as Core ML defines them; or which layer is none of those."""
    from coremltools.proto import NeuralNetwork_pb2 as pb

    for layer in path:
        kind = layer.WhichOneof("layer")
        if kind == "batchnorm":
            bn, shape = layer.batchnorm, (1, -1, 1, 1)
            gamma, beta, mean, var = (np.asarray(v.floatValue, np.float32).reshape(shape)
                                      for v in (bn.gamma, bn.beta, bn.mean, bn.variance))
            x = (x - mean) / np.sqrt(var + np.float32(bn.epsilon)) * gamma + beta
        elif kind == "activation" and layer.activation.WhichOneof("NonlinearityType") == "ReLU":
            x = np.maximum(x, 0.0)
        elif kind == "pooling" and layer.pooling.globalPooling and layer.pooling.type == pb.PoolingLayerParams.AVERAGE:
            x = x.mean((2, 3), keepdims=True)
        else:
            return f"{describe(layer)} is not a layer the rewrite makes"
    return x


def _check_loss(nn: Any, spec: Any, artifact: Artifact, job: ExportJob) -> str:
    losses = list(nn.updateParams.lossLayers)
    if len(losses) != 1:
        return f"{len(losses)} loss layers; Core ML supports exactly one"
    loss = losses[0]
    kind = loss.WhichOneof("LossLayerType")
    if kind != LOSS_KINDS[job.spec.loss]:
        return f"loss layer is {kind}, spec loss {job.spec.loss!r} needs {LOSS_KINDS[job.spec.loss]}"
    params = getattr(loss, kind)
    producer = producers(nn)
    source = producer.get(params.input)
    if source is None:
        return f"loss input {params.input!r} is not produced by the network"
    if kind == "categoricalCrossEntropyLossLayer" and source.WhichOneof("layer") != "softmax":
        return f"cross-entropy loss input {params.input!r} comes from {describe(source)}, Core ML needs a softmax layer"
    target = artifact.details.get("target")
    if params.target != target or params.target in producer:
        return f"loss target {params.target!r} must be the external feature {target!r}"
    if params.target not in {d.name for d in spec.description.trainingInput}:
        return f"loss target {params.target!r} is not a training input"
    if not {d.name for d in spec.description.input} & {d.name for d in spec.description.trainingInput}:
        return "no model input is a training input"
    return ""


def _check_optimizer(nn: Any, spec: TrainingSpec) -> str:
    update = nn.updateParams
    if update.optimizer.WhichOneof("OptimizerType") != "sgdOptimizer":
        return f"optimizer is {update.optimizer.WhichOneof('OptimizerType')}, spec asks for sgd"
    sgd = update.optimizer.sgdOptimizer
    got = (sgd.learningRate.defaultValue, sgd.momentum.defaultValue, sgd.miniBatchSize.defaultValue,
           update.epochs.defaultValue)
    want = (spec.lr, spec.momentum, spec.batch_size, 1)
    if not (math.isclose(got[0], want[0]) and math.isclose(got[1], want[1]) and got[2:] == want[2:]):
        return f"SGD lr/momentum/batch/epochs {got} != spec {want}"
    if not sgd.learningRate.range.minValue <= spec.lr <= sgd.learningRate.range.maxValue:
        return f"lr {spec.lr} outside its allowed range"
    if spec.batch_size not in sgd.miniBatchSize.set.values or 1 not in update.epochs.set.values:
        return "batch size or epochs outside their allowed sets"
    return ""
