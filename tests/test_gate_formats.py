"""The gate refuses a wrong artifact of every runnable format, and a refused export leaves nothing."""
import copy
import dataclasses

import pytest
import torch

import exporters.api as api
from dcl_core.errors import ValidationError
from exporters.base import get_exporter
from toolkit.models.examples import fused_cnn

FORMATS = ["executorch", "onnx", "tflite"]


def _perturbing(fmt: str, kind: str):
    """The real exporter, fed a model with one weight perturbed (as if conversion went wrong)."""
    real = get_exporter(fmt)

    class Perturbing(type(real)):
        def _bad(self, job):
            bad = copy.deepcopy(job.model)
            with torch.no_grad():
                bad.trainable.classifier.bias += 0.05
            return dataclasses.replace(job, model=bad)

        def export_inference(self, job):
            return super().export_inference(self._bad(job) if kind == "inference" else job)

        def export_training(self, job):
            return super().export_training(self._bad(job) if kind == "training" else job)

    return Perturbing()


@pytest.mark.parametrize("kind", ["inference", "training"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_gate_refuses_a_perturbed_artifact(fmt, kind, tmp_path, monkeypatch):
    ex = fused_cnn()
    monkeypatch.setattr(api, "get_exporter", lambda f: _perturbing(f, kind))
    with pytest.raises(ValidationError, match=f"{fmt} {kind} artifact failed validation"):
        api.export_model(ex.model, ex.inputs, formats=[fmt], out_dir=tmp_path / "bundle", training=ex.spec,
                   input_names=ex.input_names, output_names=ex.output_names, train_batches=ex.batches,
                   log=lambda *a: None)
    assert list(tmp_path.iterdir()) == []  # no bundle, no temp folder
