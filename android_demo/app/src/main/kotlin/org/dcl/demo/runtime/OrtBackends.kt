package org.dcl.demo.runtime

import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import ai.onnxruntime.OrtTrainingSession
import java.io.File
import java.nio.FloatBuffer
import java.nio.LongBuffer
import org.dcl.demo.core.Artifact
import org.dcl.demo.core.BundleException
import org.dcl.demo.core.HostTensor
import org.dcl.demo.core.InferenceBackend
import org.dcl.demo.core.TrainingBackend

/** Mirrors exporters/onnx/runner.py with ONNX Runtime's Java API (onnxruntime-training-android 1.19.2). */
internal object Ort {
    val env: OrtEnvironment by lazy { OrtEnvironment.getEnvironment() }

    fun options(threads: Int): OrtSession.SessionOptions = OrtSession.SessionOptions().apply {
        setIntraOpNumThreads(threads)
        setInterOpNumThreads(1)
        setSessionLogLevel(ai.onnxruntime.OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR)
    }

    /** ORT does not cast: each input gets the artifact's dtype (float32 or int64). */
    fun tensor(t: HostTensor, dtype: String): OnnxTensor = when (dtype) {
        "float32" -> OnnxTensor.createTensor(env, FloatBuffer.wrap(t.floats ?: t.longs!!.map { it.toFloat() }.toFloatArray()), t.shape)
        "int64" -> OnnxTensor.createTensor(env, LongBuffer.wrap(t.longs ?: t.floats!!.map { it.toLong() }.toLongArray()), t.shape)
        else -> throw BundleException("ONNX input ${t.name} has dtype $dtype; the app feeds float32 and int64")
    }

    fun floats(t: OnnxTensor): FloatArray = t.floatBuffer.let { b -> FloatArray(b.remaining()).also { b.get(it) } }
}

class OrtInference(file: File, private val artifact: Artifact, threads: Int) : InferenceBackend {
    private val session: OrtSession = Ort.options(threads).use { Ort.env.createSession(file.path, it) }

    override fun infer(inputs: Map<String, HostTensor>): List<FloatArray> {
        val feed = artifact.inputs.associate { s ->
            s.name to Ort.tensor(inputs[s.name] ?: throw BundleException("the ONNX model needs input ${s.name}"), s.dtype)
        }
        try {
            session.run(feed).use { r ->
                return artifact.outputs.map { o -> Ort.floats(r.get(o.name).orElseThrow() as OnnxTensor) }
            }
        } finally {
            feed.values.forEach { it.close() }
        }
    }

    override fun close() = session.close()
}

/**
 * ORT's training artifacts (checkpoint + training/eval/optimizer models). Only artifacts whose
 * optimizer step is "ort" (plain SGD: momentum = weight decay = 0) train here: ORT's Java API (1.19.2)
 * exposes no gradients or parameters (OrtCheckpointState has properties only), so the torch-style
 * momentum / weight decay that a "host" step needs cannot be applied by an app. Weights come out
 * through exportModelForInference (the eval model with the trained values) read by [OnnxInitializers].
 */
class OrtTraining(private val folder: File, private val artifact: Artifact, threads: Int) : TrainingBackend {
    private val session: OrtTrainingSession
    private val toTorch: Map<String, String>
    private val trainInputs: List<String>

    init {
        val d = artifact.details
        val opt = d.getJSONObject("optimizer")
        if (opt.optString("step") != "ort") {
            throw BundleException(
                "${artifact.name}: SGD with momentum ${opt.optDouble("momentum")} / weight decay ${opt.optDouble("weight_decay")} " +
                    "needs gradient access, which ONNX Runtime's Java API 1.19.2 does not give; train with ExecuTorch or LiteRT, " +
                    "or export with momentum = weight decay = 0",
            )
        }
        val f = d.getJSONObject("files")
        session = Ort.options(threads).use {
            Ort.env.createTrainingSession(
                File(folder, f.getString("checkpoint")).path, File(folder, f.getString("training_model")).path,
                File(folder, f.getString("eval_model")).path, File(folder, f.getString("optimizer_model")).path, it,
            )
        }
        session.setLearningRate(opt.getDouble("lr").toFloat())
        val p = d.getJSONObject("parameters")
        toTorch = p.keys().asSequence().associateWith { p.getString(it) }
        val ti = d.getJSONArray("train_inputs")
        trainInputs = (0 until ti.length()).map { ti.getString(it) }
    }

    override fun step(batch: Map<String, HostTensor>): Float {
        val specs = artifact.inputs.associateBy { it.name }
        val feed = LinkedHashMap<String, OnnxTensor>()
        try {
            for (n in trainInputs) feed[n] = Ort.tensor(batch[n] ?: throw BundleException("training needs input $n"), specs.getValue(n).dtype)
            session.lazyResetGrad() // this step's gradients only, as after torch's zero_grad()
            val loss = session.trainStep(feed).use { r -> Ort.floats(r.get(0) as OnnxTensor)[0] }
            session.optimizerStep()
            return loss
        } finally {
            feed.values.forEach { it.close() }
        }
    }

    override fun weights(): Map<String, HostTensor> {
        val tmp = File.createTempFile("dcl-ort-", ".onnx", folder.parentFile)
        try {
            val outputs = artifact.details.getJSONArray("output_names")
            session.exportModelForInference(tmp.toPath(), Array(outputs.length()) { outputs.getString(it) })
            val init = OnnxInitializers.read(tmp)
            return toTorch.entries.associate { (onnx, torch) ->
                val t = init[onnx] ?: throw BundleException("the exported ONNX model lacks parameter $onnx")
                torch to HostTensor.of(torch, t.shape, t.floats!!)
            }
        } finally {
            tmp.delete()
        }
    }

    override fun close() = session.close()
}
