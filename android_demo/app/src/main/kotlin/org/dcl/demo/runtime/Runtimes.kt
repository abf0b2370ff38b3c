package org.dcl.demo.runtime

import org.dcl.demo.core.Artifact
import org.dcl.demo.core.Bundle
import org.dcl.demo.core.InferenceBackend
import org.dcl.demo.core.RuntimeKind
import org.dcl.demo.core.TrainingBackend

/** Opens an artifact in its runtime after checking its hashes again (files may change after opening the bundle). */
object Runtimes {
    fun inference(bundle: Bundle, artifact: Artifact, threads: Int = 1): InferenceBackend {
        bundle.verify(artifact)
        val f = bundle.file(artifact)
        return when (RuntimeKind.of(artifact.format)) {
            RuntimeKind.EXECUTORCH -> ExecuTorchInference(f, artifact, threads)
            RuntimeKind.ONNX -> OrtInference(f, artifact, threads)
            RuntimeKind.TFLITE -> LiteRtInference(f, artifact, threads)
        }
    }

    fun training(bundle: Bundle, artifact: Artifact, threads: Int = 1): TrainingBackend {
        bundle.verify(artifact)
        val f = bundle.file(artifact)
        return when (RuntimeKind.of(artifact.format)) {
            RuntimeKind.EXECUTORCH -> ExecuTorchTraining(f, artifact)
            RuntimeKind.ONNX -> OrtTraining(f, artifact, threads)
            RuntimeKind.TFLITE -> LiteRtTraining(f, artifact, threads)
        }
    }

    /** What ran it, for benchmark results. */
    fun describe(format: String): String = when (RuntimeKind.of(format)) {
        RuntimeKind.EXECUTORCH -> "executorch-android"
        RuntimeKind.ONNX -> "onnxruntime-training-android"
        RuntimeKind.TFLITE -> "tensorflow-lite"
    }
}
