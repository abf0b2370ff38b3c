package org.dcl.demo.core

import java.io.File
import org.junit.Assume.assumeTrue

/** The bundle `dcl bundle` wrote into a copy of the app (tests/test_android_demo.py passes -Ddcl.bundle). */
object TestBundle {
    fun dir(): File {
        val p = System.getProperty("dcl.bundle").orEmpty()
        assumeTrue("-Ddcl.bundle not given (tests/test_android_demo.py passes it)", p.isNotEmpty())
        return File(p)
    }

    fun out(): File = File(System.getProperty("dcl.out").orEmpty().ifEmpty { "target/jvm-test-out" }).also { it.mkdirs() }

    fun copyOf(tmp: File): File {
        val dest = File(tmp, "bundle")
        dir().copyRecursively(dest)
        return dest
    }
}

/** A runtime stand-in: weights with the artifact's names and shapes, a loss that falls each step. */
class FakeBackend(artifact: Artifact) : TrainingBackend {
    val seen = ArrayList<Map<String, HostTensor>>()
    private val w: MutableMap<String, HostTensor>
    var closed = false

    init {
        val specs = artifact.details.getJSONArray("weights")
        w = (0 until specs.length()).map { specs.getJSONObject(it) }.associate { o ->
            val s = o.getJSONArray("shape")
            val shape = LongArray(s.length()) { s.getLong(it) }
            val n = shape.fold(1L) { a, d -> a * d }.toInt()
            o.getString("name") to HostTensor.of(o.getString("name"), shape, FloatArray(n) { 0.01f * (it % 7) })
        }.toMutableMap()
    }

    override fun step(batch: Map<String, HostTensor>): Float {
        seen += batch
        w.replaceAll { _, t -> HostTensor.of(t.name, t.shape, FloatArray(t.numel) { t.floats!![it] * 0.5f }) }
        return 3.0f / seen.size
    }

    override fun weights(): Map<String, HostTensor> = w

    override fun close() { closed = true }
}
