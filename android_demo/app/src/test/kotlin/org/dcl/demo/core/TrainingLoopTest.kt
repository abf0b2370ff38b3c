package org.dcl.demo.core

import java.io.File
import org.json.JSONObject
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test

class TrainingLoopTest {
    private fun setup(): Triple<Bundle, Program, Artifact> {
        val b = Bundle.open(TestBundle.dir())
        val (p, a) = Selection.choose(b.manifest, RuntimeKind.TFLITE, KIND_TRAINING, "device_step")
        return Triple(b, p, a)
    }

    @Test fun stepsThroughSampleBatchesAndReportsEveryLoss() {
        val (b, p, a) = setup()
        val loop = TrainingLoop(p, a, b.samples())
        val fake = FakeBackend(a)
        val reported = ArrayList<Pair<Int, Float>>()
        val losses = loop.run(fake, 3) { step, loss -> reported += step to loss }
        assertEquals(listOf(3.0f, 1.5f, 1.0f), losses)
        assertEquals(listOf(1, 2, 3), reported.map { it.first })
        assertEquals(3, fake.seen.size)
        assertEquals(setOf("x", "y"), fake.seen[0].keys)
        assertEquals(loop.batchSize, fake.seen[0].getValue("y").numel)
        // 64 samples, batch 32: step 3 wraps around to the first batch
        assertArrayEquals(fake.seen[0].getValue("x").floats, fake.seen[2].getValue("x").floats, 0f)
    }

    @Test fun exportsWeightsDclImportWeightsReads() {
        val (b, p, a) = setup()
        val loop = TrainingLoop(p, a, b.samples())
        val fake = FakeBackend(a)
        loop.run(fake, 2)
        val out = loop.export(fake, File(TestBundle.out(), "weights.safetensors"))
        val back = WeightsFile.read(out)
        assertEquals(fake.weights().keys, back.keys)
        for ((k, t) in fake.weights()) {
            assertArrayEquals(k, t.shape, back.getValue(k).shape)
            assertArrayEquals(k, t.floats, back.getValue(k).floats, 0f)
        }
        assertTrue(a.trainable.all { it in back })
        // header: JSON, 8-byte aligned, F32 only
        val n = java.nio.ByteBuffer.wrap(out.readBytes(), 0, 8).order(java.nio.ByteOrder.LITTLE_ENDIAN).long.toInt()
        assertEquals(0, n % 8)
        val header = JSONObject(String(out.readBytes(), 8, n))
        assertEquals("F32", header.getJSONObject(a.trainable[0]).getString("dtype"))
    }

    @Test fun refusesANonFiniteLoss() {
        val (b, p, a) = setup()
        val nan = object : TrainingBackend {
            override fun step(batch: Map<String, HostTensor>) = Float.NaN
            override fun weights() = emptyMap<String, HostTensor>()
            override fun close() {}
        }
        try {
            TrainingLoop(p, a, b.samples()).run(nan, 2)
            org.junit.Assert.fail("a NaN loss must stop training")
        } catch (e: BundleException) {
            assertTrue(e.message!!, e.message!!.contains("non-finite"))
        }
    }

    @Test fun benchmarkResultIsWhatTheHarnessReads() {
        val (b, p, a) = setup()
        val loop = TrainingLoop(p, a, b.samples())
        var opened: FakeBackend? = null
        val r = Benchmark.training(loop, a, "fake", runs = 5, warmup = 2, threads = 1) { FakeBackend(a).also { opened = it } }
        assertTrue("the benchmark closes its backend", opened!!.closed)
        assertEquals(5, r.samplesS.size)
        assertEquals(2, r.warmupS.size)
        assertEquals(1 + 2 + 5, r.losses.size)
        assertEquals(32, r.batchSize)
        val f = Benchmark.write(r, TestBundle.out())
        val j = JSONObject(f.readText())
        assertEquals(Benchmark.RESULT_FORMAT, j.getString("format"))
        assertEquals("training", j.getString("kind"))
        assertEquals(a.name, j.getString("artifact"))
    }
}
