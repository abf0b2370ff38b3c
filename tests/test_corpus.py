"""The architecture corpus through every format: inference, head fine-tune and full training, each
artifact through the real gate (3 SGD steps for training here, to keep CI fast; the gate's rule
is the same as for methods' 10 steps).

Core ML runs only on macOS: its artifacts are validated structurally, and its training program
is the largest tail of the requested set that Core ML can update (recorded in the manifest).
"""
from __future__ import annotations

import dataclasses

import pytest

from exporters.api import export
from exporters.formats import get_format
from toolkit.models.corpus import CORPUS, head_of

FORMATS = ["executorch", "onnx", "tflite", "coreml"]
# Training modes per model and format. The smaller corpus models train whole in every format, and
# their head fine-tune in ONNX Runtime (its inference artifact is the same network again, and
# the head-only path of every exporter is covered by EfficientNet-Lite0). EfficientNet-Lite0 at
# 224x224: full training on ExecuTorch's portable kernels takes minutes a step on 2 cores, so
# the corpus checks its head fine-tune in every format (the whole network trains in the smaller
# models, which use the same layer kinds).
HEAD_FORMATS = ("onnx",)


def modes(arch: str, fmt: str) -> tuple[str, ...]:
    if arch == "efficientnet_lite0":
        return ("head",)
    return ("head", "full") if fmt in HEAD_FORMATS else ("full",)


STEPS = 3
# a training batch of one image at 224x224 for EfficientNet-Lite0: the gate's steps and their
# PyTorch reference run the whole frozen backbone forward, and one image exercises the same ops
BATCH = {"efficientnet_lite0": {"batch": 1}}


@pytest.fixture(scope="module", params=[(a, f) for a in CORPUS for f in FORMATS], ids=lambda p: f"{p[0]}-{p[1]}")
def bundle(request, tmp_path_factory):
    arch, fmt = request.param
    programs = [dataclasses.replace(CORPUS[arch](mode, **BATCH.get(arch, {})), name=mode) for mode in modes(arch, fmt)]
    out = tmp_path_factory.mktemp(f"{arch}-{fmt}") / "bundle"
    return arch, fmt, export(programs, [fmt], out, steps=STEPS, log=lambda *a: None)


def test_every_program_exports_and_passes_the_gate(bundle):
    arch, fmt, manifest = bundle
    runs_here = get_format(fmt).runs_here()[0]
    for program in manifest.programs:
        kinds = [a.kind for a in program.artifacts]
        assert kinds == ["inference", "training"], (program.name, kinds, program.not_exported)
        for a in program.artifacts:
            v = a.validation
            assert v.passed and v.checked == runs_here, (program.name, a.kind, v.reason)
            if runs_here and a.kind == "training":
                assert v.steps == STEPS and v.max_rel_loss_diff <= 1e-4 and v.max_rel_weight_diff <= 1e-4


def test_training_programs_train_what_was_asked(bundle):
    arch, fmt, manifest = bundle
    for program in manifest.programs:
        spec = CORPUS[arch](program.name).training
        model = CORPUS[arch]("none").model
        requested = spec.trainable_names(model)
        train = next(a for a in program.artifacts if a.kind == "training")
        if fmt != "coreml":
            assert train.trainable == requested
            continue
        # Core ML: the largest updatable tail of the request, and exactly that is recorded
        assert train.trainable and set(train.trainable) <= set(requested)
        head = [n for n in requested if n.startswith(head_of(model)[0] + ".")]
        assert set(head) <= set(train.trainable)  # a head fine-tune always works
        if program.name == "head":
            assert train.trainable == requested

