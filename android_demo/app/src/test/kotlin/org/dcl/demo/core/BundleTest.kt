package org.dcl.demo.core

import java.io.File
import org.json.JSONObject
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Rule
import org.junit.Test
import org.junit.rules.TemporaryFolder

class BundleTest {
    @get:Rule val tmp = TemporaryFolder()

    @Test fun opensAndVerifiesTheRealBundle() {
        val b = Bundle.open(TestBundle.dir())
        assertEquals(ManifestParser.FORMAT_VERSION, b.manifest.formatVersion)
        val p = b.manifest.program("device_step")
        for (rt in RuntimeKind.entries) {
            val (prog, inf) = Selection.choose(b.manifest, rt, KIND_INFERENCE)
            assertEquals("device_step", prog.name)
            assertEquals(listOf(1L, 1L, 28L, 28L), inf.inputs[0].shape)
            val (_, tr) = Selection.choose(b.manifest, rt, KIND_TRAINING, "device_step")
            assertTrue(tr.trainable.isNotEmpty() && tr.trainable.all { it.startsWith("f_d.") })
            assertTrue(tr.optimizer!!.lr > 0)
        }
        assertEquals(3, Selection.trainable(b.manifest, RuntimeKind.TFLITE).let { p.artifacts.size / 2 })
        val onnxTrain = b.manifest.artifact("device_step_onnx_train")
        assertTrue("a folder artifact lists its files", onnxTrain.files.size == 4)
        assertEquals(onnxTrain.sha256, Bundle.folderHash(onnxTrain.files))
    }

    /** RuntimeKind is the app's typed enum of formats; `dcl bundle` writes the Android formats it
     *  derives from dcl's format descriptors into the manifest: the two must name the same set. */
    @Test fun runtimeKindsAreTheFormatsDclBundlesForAndroid() {
        val raw = JSONObject(File(TestBundle.dir(), "manifest.json").readText())
        val formats = ManifestParser.strings(raw.getJSONObject("extra").getJSONObject("app_bundle").getJSONArray("formats"))
        assertEquals(formats.toSet(), RuntimeKind.entries.map { it.format }.toSet())
    }

    @Test fun refusesACorruptedArtifact() {
        val copy = TestBundle.copyOf(tmp.root)
        val f = File(copy, "device_step_tflite.tflite")
        val bytes = f.readBytes()
        bytes[bytes.size / 2] = (bytes[bytes.size / 2].toInt() xor 0x1).toByte()
        f.writeBytes(bytes)
        val e = expectBundleError { Bundle.open(copy) }
        assertTrue(e, e.contains("device_step_tflite.tflite") && e.contains("sha256"))
    }

    @Test fun refusesAMissingFileInAFolderArtifact() {
        val copy = TestBundle.copyOf(tmp.root)
        assertTrue(File(copy, "device_step_onnx_train/checkpoint").delete())
        val e = expectBundleError { Bundle.open(copy) }
        assertTrue(e, e.contains("checkpoint") && e.contains("missing"))
    }

    @Test fun refusesAnUnknownFormatVersion() {
        val copy = TestBundle.copyOf(tmp.root)
        val m = File(copy, Bundle.MANIFEST)
        for (v in listOf(1, 3)) {
            m.writeText(JSONObject(File(TestBundle.dir(), Bundle.MANIFEST).readText()).put("format_version", v).toString())
            val e = expectBundleError { Bundle.open(copy) }
            assertTrue(e, e.contains("format_version $v"))
        }
        m.writeText("{not json")
        assertTrue(expectBundleError { Bundle.open(copy) }.contains("not JSON"))
    }

    @Test fun refusesAPathOutsideTheBundle() {
        val copy = TestBundle.copyOf(tmp.root)
        val m = File(copy, Bundle.MANIFEST)
        m.writeText(m.readText().replace("\"path\": \"device_step_tflite.tflite\"", "\"path\": \"../device_step_tflite.tflite\""))
        assertTrue(expectBundleError { Bundle.open(copy) }.contains("outside the bundle"))
    }

    /** The app's parser and dcl_core/manifest.schema.json describe the same contract. */
    @Test fun parserMatchesTheManifestSchema() {
        val path = System.getProperty("dcl.schema").orEmpty()
        org.junit.Assume.assumeTrue(path.isNotEmpty() && File(path).isFile)
        val schema = JSONObject(File(path).readText())
        assertEquals(ManifestParser.FORMAT_VERSION, schema.getJSONObject("properties").getJSONObject("format_version").getInt("const"))
        fun required(o: JSONObject) = ManifestParser.strings(o.getJSONArray("required")).toSet()
        val defs = schema.getJSONObject("\$defs")
        assertEquals(ManifestParser.MANIFEST_REQUIRED.toSet(), required(schema))
        assertEquals(ManifestParser.PROGRAM_REQUIRED.toSet(), required(defs.getJSONObject("program")))
        assertEquals(ManifestParser.ARTIFACT_REQUIRED.toSet(), required(defs.getJSONObject("artifact")))
        val kinds = ManifestParser.strings(defs.getJSONObject("artifact").getJSONObject("properties").getJSONObject("kind").getJSONArray("enum"))
        assertEquals(setOf(KIND_INFERENCE, KIND_TRAINING), kinds.toSet())
        // every key the app reads from an artifact is one the schema declares
        val props = defs.getJSONObject("artifact").getJSONObject("properties").keySet()
        for (k in listOf("trainable", "loss", "optimizer", "details")) assertTrue(k, k in props)
    }

    @Test fun samplesFormBatchesAtTheArtifactsShapes() {
        val b = Bundle.open(TestBundle.dir())
        val train = b.manifest.artifact("device_step_tflite_train")
        val s = b.samples()
        val b0 = s.batch("device_step", train.inputs, 0)
        val b1 = s.batch("device_step", train.inputs, 1)
        assertEquals(32 * 28 * 28, b0.getValue("x").numel)
        assertEquals(listOf(32L), b0.getValue("y").shape.toList())
        assertTrue(b0.getValue("y").longs!!.all { it in 0 until 20 })
        assertTrue("two batches differ", !b0.getValue("x").floats!!.contentEquals(b1.getValue("x").floats!!))
    }

    private fun expectBundleError(block: () -> Unit): String {
        try {
            block()
        } catch (e: BundleException) {
            return e.message!!
        }
        fail("expected a BundleException")
        throw AssertionError()
    }
}
