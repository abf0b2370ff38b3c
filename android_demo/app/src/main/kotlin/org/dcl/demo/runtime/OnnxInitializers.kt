package org.dcl.demo.runtime

import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import org.dcl.demo.core.HostTensor

/**
 * The float32 initializers of an ONNX model (ModelProto.graph.initializer), read with a minimal
 * protobuf decoder: enough for the weights ORT exports after training (no external data).
 * Field numbers from onnx.proto: ModelProto.graph = 7; GraphProto.initializer = 5;
 * TensorProto.dims = 1, data_type = 2 (FLOAT = 1), float_data = 4, name = 8, raw_data = 9.
 */
object OnnxInitializers {
    fun read(file: File): Map<String, HostTensor> = read(file.readBytes())

    fun read(bytes: ByteArray): Map<String, HostTensor> {
        val out = LinkedHashMap<String, HostTensor>()
        Reader(bytes, 0, bytes.size).fields { f, r -> if (f == 7) r.fields { g, t -> if (g == 5) tensor(t)?.let { out[it.name] = it } } }
        return out
    }

    private fun tensor(r: Reader): HostTensor? {
        val dims = ArrayList<Long>()
        var type = 0
        var name = ""
        var raw: ByteArray? = null
        val floats = ArrayList<Float>()
        r.fields { f, v ->
            when (f) {
                1 -> if (v.packed) v.varints { dims += it } else dims += v.value
                2 -> type = v.value.toInt()
                4 -> if (v.packed) v.fixed32 { floats += Float.fromBits(it) } else floats += Float.fromBits(v.value.toInt())
                8 -> name = v.string()
                9 -> raw = v.bytes()
            }
        }
        if (type != 1) return null
        val data = raw?.let { b -> FloatArray(b.size / 4).also { ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(it) } }
            ?: floats.toFloatArray()
        return HostTensor.of(name, dims.toLongArray(), data)
    }

    /** One protobuf message (or a length-delimited field's payload). */
    private class Reader(val b: ByteArray, var pos: Int, val end: Int) {
        var value = 0L
        var packed = false
        private var start = 0
        private var len = 0

        fun varint(): Long {
            var shift = 0
            var result = 0L
            while (true) {
                val x = b[pos++].toInt()
                result = result or ((x and 0x7f).toLong() shl shift)
                if (x and 0x80 == 0) return result
                shift += 7
            }
        }

        /** Calls `each(fieldNumber, reader)`; for a length-delimited field `reader` reads its payload. */
        fun fields(each: (Int, Reader) -> Unit) {
            while (pos < end) {
                val key = varint()
                val field = (key ushr 3).toInt()
                when ((key and 7).toInt()) {
                    0 -> { value = varint(); packed = false; each(field, this) }
                    1 -> { value = ByteBuffer.wrap(b, pos, 8).order(ByteOrder.LITTLE_ENDIAN).long; pos += 8; packed = false; each(field, this) }
                    5 -> { value = ByteBuffer.wrap(b, pos, 4).order(ByteOrder.LITTLE_ENDIAN).int.toLong(); pos += 4; packed = false; each(field, this) }
                    2 -> {
                        val n = varint().toInt()
                        val sub = Reader(b, pos, pos + n).also { it.packed = true; it.start = pos; it.len = n }
                        pos += n
                        each(field, sub)
                    }
                    else -> throw IllegalStateException("unsupported protobuf wire type in ONNX file")
                }
            }
        }

        fun string(): String = String(b, start, len, Charsets.UTF_8)
        fun bytes(): ByteArray = b.copyOfRange(start, start + len)
        fun varints(each: (Long) -> Unit) { while (pos < end) each(varint()) }
        fun fixed32(each: (Int) -> Unit) {
            val bb = ByteBuffer.wrap(b, start, len).order(ByteOrder.LITTLE_ENDIAN)
            repeat(len / 4) { each(bb.int) }
        }
    }
}
