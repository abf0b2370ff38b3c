"""Core ML: inference as an ML program (.mlpackage), on-device training as an updatable neural
network (.mlmodel).

Nothing Core ML can be compiled or run on Linux, so on Linux (and for training everywhere, see
the descriptor's `no_host_training`) the gate calls `validate_structure`, which checks the spec with coremltools:
signature, MIL ops and fp32 precision, and for training the rules Apple's compiler enforces on
updatable networks plus agreement with the PyTorch model.

The exporter only orchestrates: `convert` turns PyTorch into Core ML, `plan` decides what can
train (the longest trainable tail of the requested parameters, and explains Core ML's training
rules), `passes` rewrites the neural network into an updatable one, `validate` checks the result
structurally.
"""
from __future__ import annotations

import torch

from dcl_core.bundle import Artifact, TensorSpec, Validation
from exporters.base import Exporter, ExportJob
from exporters.coreml.convert import (
    DEPLOYMENT_TARGET,
    MLPROGRAM_DTYPES,
    NN_DTYPES,
    blob_shapes,
    convert,
    feature_specs,
    save_spec,
    source_dtypes,
    torch_outputs,
)
from exporters.coreml.passes import LOSS_NAME, mse_target_shape, run_passes, training_rewrite
from exporters.coreml.plan import Plan, plan_updatable, supported_spec
from exporters.coreml.validate import main_ops, validate_structure

__all__ = ["CoreMLExporter", "main_ops"]


class CoreMLExporter(Exporter):
    format = "coreml"

    def export_inference(self, job: ExportJob) -> Artifact:
        mlmodel = convert(job.model, job.inputs, job.input_names, job.output_names, "mlprogram")
        rel = f"{job.name}.mlpackage"
        mlmodel.save(str(job.bundle / rel))
        outputs = torch_outputs(job.model, job.inputs)
        return Artifact(
            name=job.name, path=rel, format=self.format, kind="inference",
            inputs=feature_specs(job.input_names, job.inputs, MLPROGRAM_DTYPES),
            outputs=[TensorSpec(n, list(o.shape), "float32") for n, o in zip(job.output_names, outputs)],
            details={"model_type": "mlProgram", "deployment_target": DEPLOYMENT_TARGET,
                     "spec_version": mlmodel.get_spec().specificationVersion, "compute_precision": "float32",
                     "compute_units": "cpuOnly for parity (the GPU and Neural Engine compute in fp16)",
                     "source_dtypes": source_dtypes(job.input_names, job.inputs, MLPROGRAM_DTYPES)})

    def export_training(self, job: ExportJob) -> Artifact:
        spec = supported_spec(job)
        sample = tuple(t[:1] for t in job.inputs)  # Core ML trains per example; see plan's docstring
        mlmodel = convert(job.model, sample, job.input_names, job.output_names, "neuralnetwork")
        model_spec = mlmodel.get_spec()
        shapes = blob_shapes(mlmodel)
        out_shape = list(torch_outputs(job.model, sample)[0].shape)
        plan = plan_updatable(model_spec.neuralNetwork, shapes, job, spec)
        rewrite = training_rewrite(plan, shapes, job.output_names[0], out_shape, spec, job.target_name)
        run_passes(model_spec, rewrite.passes)
        rel = f"{job.name}.mlmodel"
        save_spec(model_spec, job.bundle / rel)
        # the trainable tail may be narrower than the request: `trains` is what the program
        # updates (the gate re-checks against it), `left_frozen` says why the rest does not
        return Artifact(
            name=job.name, path=rel, format=self.format, kind="training",
            inputs=self._training_inputs(job, sample, spec.loss, plan),
            outputs=[TensorSpec(job.output_names[0], out_shape, "float32")],
            trainable=plan.trains,
            details={"model_type": "neuralNetwork", "spec_version": model_spec.specificationVersion,
                     "requested": plan.requested, "trains": plan.trains, "left_frozen": plan.left_frozen,
                     "updatable_layers": plan.params, "backprop_stops_at": plan.stop,
                     "rewrites": [r.record() for r in plan.rewrites],
                     "loss_layer": LOSS_NAME, "loss_input": rewrite.loss_input,
                     "target": job.target_name, "mini_batch_size": spec.batch_size, "epochs": 1,
                     "per_example_features": True, "head_reparametrization": rewrite.reparam,
                     "source_dtypes": source_dtypes(job.input_names, job.inputs, NN_DTYPES)})

    def validate_structure(self, artifact: Artifact, job: ExportJob) -> Validation:
        return validate_structure(job.bundle / artifact.path, artifact, job)

    @staticmethod
    def _training_inputs(job: ExportJob, sample: tuple[torch.Tensor, ...], loss: str, plan: Plan) -> list[TensorSpec]:
        """The features of one training example: the model inputs (neural networks take float arrays
        only, so ids arrive as floats) and the target: a class index, or the head's output for MSE."""
        inputs = feature_specs(job.input_names, sample, NN_DTYPES)
        if loss == "mse":
            return inputs + [TensorSpec(job.target_name, mse_target_shape(plan), "float64")]
        return inputs + [TensorSpec(job.target_name, [1], "int32")]
