"""TF functions -> a .tflite flatbuffer of builtin ops only, and what the result really holds.

The stock LiteRT interpreter (ai_edge_litert, and the Android/iOS runtimes without the 6-180 MB
select-TF-ops library) runs builtin ops only, so conversion allows nothing else and the written
model is checked again for custom/Flex ops.
"""
from __future__ import annotations

import logging
import re
import tempfile
from typing import Any

import numpy as np
import tensorflow as tf
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from dcl_core.errors import ExportError
from dcl_core.bundle import TensorSpec


class _ExpectedWarnings(logging.Filter):
    """Loading our SavedModel warns that its custom gradients were not saved: by design (the
    gradients are already in the train graph), so the warning is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "with ops with unsaved custom gradients" not in record.getMessage()


logging.getLogger("absl").addFilter(_ExpectedWarnings())

_BUILTIN_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def convert(module: tf.Module, signatures: dict[str, Any], what: str) -> bytes:
    """Convert `signatures` (name -> concrete function of `module`) to builtin-only TFLite."""
    with tempfile.TemporaryDirectory(prefix="dcl-tflite-") as saved:
        # the gradients are already part of the train graph; re-tracing custom gradients for
        # the SavedModel fails on the dynamic-batch `infer` signature and is not needed
        options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
        tf.saved_model.save(module, saved, signatures=signatures, options=options)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=list(signatures))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.experimental_enable_resource_variables = True  # training state lives in variables
        try:
            model = converter.convert()
        except Exception as e:  # noqa: BLE001 - the converter raises several types for one problem
            raise ExportError(f"TFLite conversion of {what} failed: {_first_error(str(e))}") from None
    foreign = sorted(op for op in operator_names(model) if op.startswith("CUSTOM") or op.startswith("Flex"))
    if foreign:
        raise ExportError(f"the converted {what} needs non-builtin ops {foreign}, which the stock LiteRT "
                          "interpreter cannot run; export refused")
    return model


def _first_error(message: str) -> str:
    """One line from the converter's multi-line report: the ops it could not map, else the
    first error."""
    missing = sorted(set(re.findall(r"'(tf\.\w+)' op is neither a custom op nor a flex op", message)))
    if missing:
        return f"no TFLite builtin op for {', '.join(missing)}"
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    for ln in lines:
        if "error:" in ln:
            return ln[ln.index("error:"):]
    return lines[0] if lines else "unknown converter error"


def operator_names(model: bytes) -> set[str]:
    """Operator codes of a flatbuffer: builtin names, or "CUSTOM:<name>" (Flex ops are custom)."""
    m = schema.Model.GetRootAs(model, 0)
    names = set()
    for i in range(m.OperatorCodesLength()):
        oc = m.OperatorCodes(i)
        code = max(oc.DeprecatedBuiltinCode(), oc.BuiltinCode())
        if code == schema.BuiltinOperator.CUSTOM:
            names.add(f"CUSTOM:{(oc.CustomCode() or b'').decode()}")
        else:
            names.add(_BUILTIN_NAMES.get(code, str(code)))
    return names


_DTYPES = {np.float32: "float32", np.int64: "int64", np.int32: "int32"}


def signature_specs(model: bytes, key: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The inputs and outputs of signature `key` as the converted model has them (real dtypes;
    -1 for a dynamic dimension). Inputs keep their order in the signature definition."""
    runner = Interpreter(model_content=model).get_signature_runner(key)

    def specs(details: dict[str, dict]) -> list[TensorSpec]:
        return [TensorSpec(name, [int(s) for s in d["shape_signature"]], _DTYPES.get(d["dtype"], str(np.dtype(d["dtype"]))))
                for name, d in details.items()]
    return specs(runner.get_input_details()), specs(runner.get_output_details())
