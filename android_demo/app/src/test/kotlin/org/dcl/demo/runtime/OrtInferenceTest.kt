package org.dcl.demo.runtime

import java.io.File
import org.dcl.demo.core.Bundle
import org.dcl.demo.core.HostTensor
import org.dcl.demo.core.KIND_INFERENCE
import org.dcl.demo.core.RuntimeKind
import org.dcl.demo.core.Selection
import org.dcl.demo.core.TestBundle
import org.json.JSONObject
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assume.assumeTrue
import org.junit.Test

/**
 * The app's ONNX Runtime code (OrtInference, the same Java API as onnxruntime-training-android
 * 1.19.2) run on the JVM with ORT's desktop build on the real artifact, against PyTorch's numbers
 * that tests/test_android_demo.py computed and passed in (-Ddcl.expected).
 */
class OrtInferenceTest {
    @Test fun matchesPyTorchOnTheRealArtifact() {
        val path = System.getProperty("dcl.expected").orEmpty()
        assumeTrue("-Ddcl.expected not given", path.isNotEmpty())
        val exp = JSONObject(File(path).readText())
        val b = Bundle.open(TestBundle.dir())
        val (p, a) = Selection.choose(b.manifest, RuntimeKind.ONNX, KIND_INFERENCE)
        assertEquals(exp.getString("artifact"), a.name)
        val tol = exp.getDouble("tolerance")
        val rows = exp.getJSONArray("logits")
        var worst = 0.0
        for (i in 0 until rows.length()) {
            val input = b.samples().batch(p.name, a.inputs, i)
            val got = Runtimes.inference(b, a).use { it.infer(input)[0] }
            val want = rows.getJSONArray(i)
            assertEquals(want.length(), got.size)
            for (j in got.indices) worst = maxOf(worst, Math.abs(got[j] - want.getDouble(j)))
        }
        assertTrue("max |ORT(JVM) - PyTorch| = $worst > $tol", worst <= tol)
        File(TestBundle.out(), "ort_jvm_max_abs_diff.txt").writeText("$worst\n")
    }

    @Test fun readsTheInitializersOfARealOnnxModel() {
        val b = Bundle.open(TestBundle.dir())
        val a = b.manifest.artifact("device_step_onnx")
        val init = OnnxInitializers.read(b.file(a))
        assertTrue("float initializers found", init.isNotEmpty())
        for ((name, t) in init) {
            assertEquals(name, t.shape.fold(1L) { x, d -> x * d }.toInt(), t.numel)
        }
    }

    @Test fun refusesHostStepTrainingWithAClearReason() {
        val b = Bundle.open(TestBundle.dir())
        val a = b.manifest.artifact("device_step_onnx_train")
        assumeTrue(a.details.getJSONObject("optimizer").getString("step") == "host")
        try {
            Runtimes.training(b, a).close()
            org.junit.Assert.fail("a host-step ORT artifact cannot train through ORT's Java API")
        } catch (e: org.dcl.demo.core.BundleException) {
            assertTrue(e.message!!, e.message!!.contains("gradient access"))
        }
    }

    @Suppress("unused") private fun unused(t: HostTensor) = t
}
