package org.dcl.demo.core

import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import org.json.JSONObject

/** A host tensor: float32 or int64 data in row-major order, as the manifest's TensorSpecs describe. */
class HostTensor private constructor(
    val name: String,
    val shape: LongArray,
    val floats: FloatArray?,
    val longs: LongArray?,
) {
    val dtype: String get() = if (floats != null) "float32" else "int64"
    val numel: Int get() = floats?.size ?: longs!!.size

    companion object {
        fun of(name: String, shape: LongArray, data: FloatArray) = HostTensor(name, shape, data, null)
        fun of(name: String, shape: LongArray, data: LongArray) = HostTensor(name, shape, null, data)
    }
}

/**
 * Sample inputs `dcl bundle` wrote into samples/: index.json lists, per program, tensors keyed by the
 * artifacts' input names (first dimension = sample count), each a little-endian raw file.
 * {"version": 1, "source": "...", "programs": {"device_step": {"count": N, "tensors": [
 *   {"name": "x", "shape": [N,1,28,28], "dtype": "float32", "file": "samples/device_step_0.bin"}, ...]}}}
 */
class Samples(val source: String, private val byProgram: Map<String, Map<String, HostTensor>>) {

    fun of(program: String): Map<String, HostTensor> = byProgram[program]
        ?: throw BundleException("samples/index.json has no samples for program $program; re-run `dcl bundle`")

    /** Rows [start, start+count) of every tensor of a program, wrapping around the sample count. */
    fun batch(program: String, specs: List<TensorSpec>, index: Int): Map<String, HostTensor> {
        val all = of(program)
        return specs.associate { spec ->
            val t = all[spec.name] ?: throw BundleException("samples lack input '${spec.name}' of program $program")
            val rows = spec.shape.firstOrNull()?.takeIf { it > 0 }?.toInt() ?: 1
            spec.name to rows(t, index * rows, rows, spec)
        }
    }

    companion object {
        const val VERSION = 1

        fun read(root: File): Samples {
            val index = File(root, "samples/index.json")
            if (!index.isFile) throw BundleException("$index is missing; re-run `dcl bundle`")
            val o = JSONObject(index.readText())
            if (o.optInt("version") != VERSION) throw BundleException("samples/index.json has version ${o.opt("version")}; re-run `dcl bundle`")
            val progs = o.getJSONObject("programs")
            val out = progs.keys().asSequence().associateWith { p ->
                ManifestParser.objects(progs.getJSONObject(p).getJSONArray("tensors")).associate { t ->
                    val shapeJ = t.getJSONArray("shape")
                    val shape = LongArray(shapeJ.length()) { shapeJ.getLong(it) }
                    val raw = File(root, t.getString("file")).readBytes()
                    val buf = ByteBuffer.wrap(raw).order(ByteOrder.LITTLE_ENDIAN)
                    val n = shape.fold(1L) { a, d -> a * d }.toInt()
                    val name = t.getString("name")
                    name to when (val dt = t.getString("dtype")) {
                        "float32" -> { check(raw.size == 4 * n) { "sample $name has ${raw.size} bytes" }; HostTensor.of(name, shape, FloatArray(n).also { buf.asFloatBuffer().get(it) }) }
                        "int64" -> { check(raw.size == 8 * n) { "sample $name has ${raw.size} bytes" }; HostTensor.of(name, shape, LongArray(n).also { buf.asLongBuffer().get(it) }) }
                        else -> throw BundleException("sample $name has dtype $dt; samples are float32 or int64")
                    }
                }
            }
            return Samples(o.optString("source"), out)
        }

        private fun rows(t: HostTensor, start: Int, count: Int, spec: TensorSpec): HostTensor {
            val n = t.shape[0].toInt()
            val row = t.numel / n
            val shape = longArrayOf(count.toLong()) + t.shape.copyOfRange(1, t.shape.size)
            if (spec.shape.size == shape.size && spec.shape.drop(1) != shape.drop(1).toList()) {
                throw BundleException("samples for '${spec.name}' have shape ${t.shape.toList()}, the artifact takes ${spec.shape}")
            }
            val rowsIdx = (0 until count).map { (start + it) % n }
            return if (spec.dtype == "int64") {
                val src = t.longs ?: t.floats!!.map { it.toLong() }.toLongArray()
                HostTensor.of(spec.name, shape, LongArray(count * row).also { d -> rowsIdx.forEachIndexed { i, r -> System.arraycopy(src, r * row, d, i * row, row) } })
            } else {
                val src = t.floats ?: t.longs!!.map { it.toFloat() }.toFloatArray()
                HostTensor.of(spec.name, shape, FloatArray(count * row).also { d -> rowsIdx.forEachIndexed { i, r -> System.arraycopy(src, r * row, d, i * row, row) } })
            }
        }
    }
}
