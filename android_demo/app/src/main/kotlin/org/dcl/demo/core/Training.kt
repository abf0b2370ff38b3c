package org.dcl.demo.core

import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import org.json.JSONArray
import org.json.JSONObject

/** One runtime's inference artifact, loaded. Outputs in manifest order, float32. */
interface InferenceBackend : AutoCloseable {
    fun infer(inputs: Map<String, HostTensor>): List<FloatArray>
}

/** One runtime's training artifact, loaded: a forward/backward/optimizer step and the weights. */
interface TrainingBackend : AutoCloseable {
    /** One step on a batch (the model's inputs + the target); returns the loss. */
    fun step(batch: Map<String, HostTensor>): Float

    /** Trainable weights under their PyTorch names and layouts, float32. */
    fun weights(): Map<String, HostTensor>
}

/**
 * The on-device training loop: batches from the bundle's samples at the artifact's batch size, one
 * step each, the loss per step reported as it goes, and the weights written where `dcl import-weights`
 * reads them (safetensors, float32, PyTorch names).
 */
class TrainingLoop(private val program: Program, private val artifact: Artifact, private val samples: Samples) {
    init {
        require(artifact.isTraining) { "${artifact.name} is not a training artifact" }
    }

    val batchSize: Int get() = artifact.inputs.first().shape.first().toInt()

    fun batch(step: Int): Map<String, HostTensor> = samples.batch(program.name, artifact.inputs, step)

    fun run(backend: TrainingBackend, steps: Int, onStep: (Int, Float) -> Unit = { _, _ -> }): List<Float> {
        require(steps >= 1) { "steps must be >= 1" }
        val losses = ArrayList<Float>(steps)
        for (i in 0 until steps) {
            val loss = backend.step(batch(i))
            if (!loss.isFinite()) throw BundleException("training step ${i + 1} of ${artifact.name} gave a non-finite loss ($loss)")
            losses += loss
            onStep(i + 1, loss)
        }
        return losses
    }

    /** The weights after training, checked against the artifact's trainable names, written to `out`. */
    fun export(backend: TrainingBackend, out: File): File {
        val w = backend.weights()
        val missing = artifact.trainable.filter { it !in w }
        if (missing.isNotEmpty()) throw BundleException("the runtime returned no weights for ${missing.take(3)}")
        return WeightsFile.write(out, w, mapOf("artifact" to artifact.name, "program" to program.name, "format" to artifact.format))
    }
}

/** safetensors writer (the format `dcl import-weights` reads): float32 tensors keyed by PyTorch names. */
object WeightsFile {
    fun write(out: File, weights: Map<String, HostTensor>, metadata: Map<String, String> = emptyMap()): File {
        val header = JSONObject()
        if (metadata.isNotEmpty()) header.put("__metadata__", JSONObject(metadata))
        var offset = 0L
        val names = weights.keys.sorted()
        for (n in names) {
            val t = weights.getValue(n)
            val data = t.floats ?: throw BundleException("weight $n is ${t.dtype}; weights are float32")
            header.put(n, JSONObject().put("dtype", "F32").put("shape", JSONArray(t.shape.toList()))
                .put("data_offsets", JSONArray(listOf(offset, offset + 4L * data.size))))
            offset += 4L * data.size
        }
        var h = header.toString().toByteArray(Charsets.UTF_8)
        val pad = (8 - h.size % 8) % 8
        h += ByteArray(pad) { ' '.code.toByte() }
        val buf = ByteBuffer.allocate(8 + h.size + offset.toInt()).order(ByteOrder.LITTLE_ENDIAN)
        buf.putLong(h.size.toLong()).put(h)
        for (n in names) weights.getValue(n).floats!!.forEach { buf.putFloat(it) }
        out.parentFile?.mkdirs()
        val tmp = File(out.path + ".tmp")
        tmp.writeBytes(buf.array())
        if (!tmp.renameTo(out)) throw BundleException("cannot write $out")
        return out
    }

    /** Read back (tests; a device can also resume from its own file). */
    fun read(file: File): Map<String, HostTensor> {
        val b = ByteBuffer.wrap(file.readBytes()).order(ByteOrder.LITTLE_ENDIAN)
        val n = b.getLong().toInt()
        val header = JSONObject(String(file.readBytes(), 8, n, Charsets.UTF_8))
        val base = 8 + n
        return header.keys().asSequence().filter { it != "__metadata__" }.associateWith { k ->
            val e = header.getJSONObject(k)
            val s = e.getJSONArray("shape")
            val off = e.getJSONArray("data_offsets")
            val count = ((off.getLong(1) - off.getLong(0)) / 4).toInt()
            val fb = ByteBuffer.wrap(file.readBytes(), base + off.getLong(0).toInt(), count * 4).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer()
            HostTensor.of(k, LongArray(s.length()) { s.getLong(it) }, FloatArray(count).also { fb.get(it) })
        }
    }
}
