package org.dcl.demo.runtime

import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import org.dcl.demo.core.Artifact
import org.dcl.demo.core.BundleException
import org.dcl.demo.core.HostTensor
import org.dcl.demo.core.InferenceBackend
import org.dcl.demo.core.TrainingBackend
import org.tensorflow.lite.DataType
import org.tensorflow.lite.Interpreter

/**
 * Mirrors exporters/tflite/runner.py with the TFLite/LiteRT Java API: everything through signature
 * runners addressed by the manifest's names; weights through get_weights/set_weights, whose keys
 * (w000, ...) details["weights"] maps to PyTorch names and shapes.
 */
internal object Tfl {
    fun interpreter(file: File, threads: Int) = Interpreter(file, Interpreter.Options().setNumThreads(threads))

    /** A direct buffer in the program's own dtype for the signature input `name`. */
    fun input(interp: Interpreter, signature: String, name: String, t: HostTensor): ByteBuffer {
        val type = interp.getInputTensorFromSignature(name, signature).dataType()
        val size = when (type) {
            DataType.FLOAT32, DataType.INT32 -> 4
            DataType.INT64 -> 8
            else -> throw BundleException("LiteRT input $name has type $type; the app feeds float32, int32 and int64")
        }
        val b = ByteBuffer.allocateDirect(size * t.numel).order(ByteOrder.nativeOrder())
        for (i in 0 until t.numel) {
            when (type) {
                DataType.FLOAT32 -> b.putFloat(t.floats?.get(i) ?: t.longs!![i].toFloat())
                DataType.INT32 -> b.putInt((t.longs?.get(i) ?: t.floats!![i].toLong()).toInt())
                else -> b.putLong(t.longs?.get(i) ?: t.floats!![i].toLong())
            }
        }
        b.rewind()
        return b
    }

    fun outputBuffer(interp: Interpreter, signature: String, name: String): ByteBuffer =
        ByteBuffer.allocateDirect(interp.getOutputTensorFromSignature(name, signature).numBytes()).order(ByteOrder.nativeOrder())

    fun floats(b: ByteBuffer): FloatArray {
        b.rewind()
        return FloatArray(b.remaining() / 4).also { b.asFloatBuffer().get(it) }
    }

    fun run(interp: Interpreter, signature: String, inputs: Map<String, ByteBuffer>, outputs: List<String>): Map<String, ByteBuffer> {
        val out = outputs.associateWith { outputBuffer(interp, signature, it) }
        interp.runSignature(HashMap<String, Any>(inputs), HashMap<String, Any>(out), signature)
        return out
    }
}

class LiteRtInference(file: File, private val artifact: Artifact, threads: Int) : InferenceBackend {
    private val interp = Tfl.interpreter(file, threads)
    private val signature = artifact.details.getString("signature")

    override fun infer(inputs: Map<String, HostTensor>): List<FloatArray> {
        val feed = artifact.inputs.associate { s ->
            s.name to Tfl.input(interp, signature, s.name, inputs[s.name] ?: throw BundleException("the LiteRT program needs input ${s.name}"))
        }
        val out = Tfl.run(interp, signature, feed, artifact.outputs.map { it.name })
        return artifact.outputs.map { Tfl.floats(out.getValue(it.name)) }
    }

    override fun close() = interp.close()
}

class LiteRtTraining(file: File, private val artifact: Artifact, threads: Int) : TrainingBackend {
    private val interp = Tfl.interpreter(file, threads)
    private val sig = artifact.details.getJSONObject("signatures")
    private val weightsSpec = artifact.details.getJSONArray("weights").let { a -> (0 until a.length()).map { a.getJSONObject(it) } }

    override fun step(batch: Map<String, HostTensor>): Float {
        val train = sig.getString("train")
        val feed = artifact.inputs.associate { s ->
            s.name to Tfl.input(interp, train, s.name, batch[s.name] ?: throw BundleException("the train signature needs input ${s.name}"))
        }
        return Tfl.floats(Tfl.run(interp, train, feed, listOf("loss")).getValue("loss"))[0]
    }

    /** Trainable parameters (and BatchNorm statistics where training updates them), PyTorch names. */
    override fun weights(): Map<String, HostTensor> {
        val out = Tfl.run(interp, sig.getString("get_weights"), emptyMap(), weightsSpec.map { it.getString("key") })
        return weightsSpec.associate { w ->
            val s = w.getJSONArray("shape")
            w.getString("name") to HostTensor.of(w.getString("name"), LongArray(s.length()) { s.getLong(it) }, Tfl.floats(out.getValue(w.getString("key"))))
        }
    }

    override fun close() = interp.close()
}
