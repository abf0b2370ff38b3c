package org.dcl.demo.ui

import android.app.Activity
import android.os.Bundle as AndroidBundle
import android.util.Log
import java.io.File
import org.dcl.demo.core.Benchmark
import org.dcl.demo.core.TrainingLoop
import org.dcl.demo.runtime.Runtimes

/**
 * The benchmark entry point dcl's harness starts over adb (runtime_harness/devices/app.py):
 *   adb shell am start -W -n org.dcl.demo/.ui.BenchmarkActivity --es artifact NAME --ei runs N [--ei warmup W] [--ei threads T]
 * It runs the named artifact (inference or training steps) and writes the result to
 * /sdcard/Android/data/org.dcl.demo/files/dcl_benchmark.json, then logs "DCL-BENCHMARK-DONE" and finishes.
 */
class BenchmarkActivity : Activity() {
    override fun onCreate(savedInstanceState: AndroidBundle?) {
        super.onCreate(savedInstanceState)
        val name = intent.getStringExtra("artifact") ?: ""
        val runs = intent.getIntExtra("runs", 20)
        val warmup = intent.getIntExtra("warmup", 3)
        val threads = intent.getIntExtra("threads", 1)
        val folder = getExternalFilesDir(null) ?: filesDir
        Thread {
            val result = try {
                val bundle = BundleInstaller.open(this)
                val artifact = bundle.manifest.artifact(name)
                val program = bundle.manifest.programs.first { p -> p.artifacts.any { it === artifact } }
                val runtime = Runtimes.describe(artifact.format)
                if (artifact.isTraining) {
                    Benchmark.training(TrainingLoop(program, artifact, bundle.samples()), artifact, runtime, runs, warmup, threads) {
                        Runtimes.training(bundle, artifact, threads)
                    }
                } else {
                    Benchmark.inference(bundle, program, artifact, runtime, runs, warmup, threads) { Runtimes.inference(bundle, artifact, threads) }
                }
            } catch (e: Exception) {
                Benchmark.failed(name, "", "", e.message ?: e.javaClass.simpleName)
            }
            val out: File = Benchmark.write(result, folder)
            Log.i(TAG, "DCL-BENCHMARK-DONE $out")
            runOnUiThread { finish() }
        }.start()
    }

    companion object {
        const val TAG = "DclBenchmark"
    }
}
