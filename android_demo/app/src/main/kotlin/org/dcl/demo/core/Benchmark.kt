package org.dcl.demo.core

import java.io.File
import org.json.JSONArray
import org.json.JSONObject

/**
 * The benchmark entry point's logic (BenchmarkActivity only wires it to Android):
 * load once, first run, warm-up, then `runs` timed runs; inference runs the bundle's first sample,
 * training steps walk through the sample batches. Result: one JSON file that
 * runtime_harness/devices/app.py reads (format "dcl-app-benchmark", version 1).
 */
object Benchmark {
    const val RESULT_FORMAT = "dcl-app-benchmark"
    const val RESULT_VERSION = 1
    /** Under the app's external files folder: /sdcard/Android/data/org.dcl.demo/files/ (adb pull needs no root). */
    const val RESULT_FILE = "dcl_benchmark.json"

    data class Result(
        val artifact: String,
        /** The artifact's sha256 in the app's bundle: the harness checks it is the bundle it profiles. */
        val sha256: String,
        val format: String,
        val kind: String,
        val runtime: String,
        val threads: Int,
        val batchSize: Int,
        val loadS: Double,
        val firstS: Double,
        val warmupS: List<Double>,
        val samplesS: List<Double>,
        val losses: List<Float>,
        val error: String = "",
    ) {
        fun toJson(): JSONObject = JSONObject()
            .put("format", RESULT_FORMAT).put("version", RESULT_VERSION)
            .put("artifact", artifact).put("sha256", sha256).put("artifact_format", format).put("kind", kind).put("runtime", runtime)
            .put("threads", threads).put("batch_size", batchSize).put("load_s", loadS).put("first_s", firstS)
            .put("warmup_s", JSONArray(warmupS)).put("samples_s", JSONArray(samplesS))
            .put("losses", JSONArray(losses.map { it.toDouble() })).put("error", error)
    }

    fun failed(artifact: String, format: String, kind: String, error: String) =
        Result(artifact, "", format, kind, "", 1, 0, 0.0, 0.0, emptyList(), emptyList(), emptyList(), error)

    /** Time `runs` training steps of a loaded backend (created by `open`, timed as the load). */
    fun training(loop: TrainingLoop, artifact: Artifact, runtime: String, runs: Int, warmup: Int, threads: Int,
                 open: () -> TrainingBackend): Result {
        var step = 0
        return measure(artifact, runtime, runs, warmup, threads, loop.batchSize, open) { b -> b.step(loop.batch(step++)) }
    }

    fun inference(bundle: Bundle, program: Program, artifact: Artifact, runtime: String, runs: Int, warmup: Int,
                  threads: Int, open: () -> InferenceBackend): Result {
        val input = bundle.samples().batch(program.name, artifact.inputs, 0)
        return measure(artifact, runtime, runs, warmup, threads, artifact.inputs.first().shape.first().toInt().coerceAtLeast(1), open) { b ->
            b.infer(input); null
        }
    }

    private fun <B : AutoCloseable> measure(artifact: Artifact, runtime: String, runs: Int, warmup: Int, threads: Int,
                                            batch: Int, open: () -> B, once: (B) -> Float?): Result {
        require(runs >= 1) { "runs must be >= 1" }
        val t0 = System.nanoTime()
        val backend = open()
        backend.use { b ->
            val loadS = (System.nanoTime() - t0) / 1e9
            val losses = ArrayList<Float>()
            fun timed(): Double {
                val s = System.nanoTime()
                once(b)?.let { losses += it }
                return (System.nanoTime() - s) / 1e9
            }
            val first = timed()
            val warm = (0 until warmup).map { timed() }
            val samples = (0 until runs).map { timed() }
            return Result(artifact.name, artifact.sha256, artifact.format, artifact.kind, runtime, threads, batch, loadS, first, warm, samples, losses)
        }
    }

    fun write(result: Result, folder: File): File {
        folder.mkdirs()
        val tmp = File(folder, "$RESULT_FILE.tmp")
        tmp.writeText(result.toJson().toString(2) + "\n")
        val out = File(folder, RESULT_FILE)
        if (!tmp.renameTo(out)) throw BundleException("cannot write $out")
        return out
    }
}
