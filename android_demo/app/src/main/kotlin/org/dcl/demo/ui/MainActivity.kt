package org.dcl.demo.ui

import android.app.Activity
import android.graphics.Bitmap
import android.graphics.Color
import android.os.Bundle as AndroidBundle
import android.os.Handler
import android.os.Looper
import android.view.View
import android.widget.AdapterView
import android.widget.ArrayAdapter
import android.widget.Button
import android.widget.ImageView
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.Spinner
import android.widget.TextView
import java.io.File
import java.util.concurrent.Executors
import org.dcl.demo.core.Bundle
import org.dcl.demo.core.KIND_INFERENCE
import org.dcl.demo.core.KIND_TRAINING
import org.dcl.demo.core.RuntimeKind
import org.dcl.demo.core.Selection
import org.dcl.demo.core.TrainingLoop
import org.dcl.demo.runtime.Runtimes

/**
 * Two screens in one: classify the bundle's sample images with the chosen runtime's inference
 * artifact, and run on-device training (DC-CCL's controlled step, or any program with a training
 * artifact) showing the loss per step; the trained weights go to files/weights/<artifact>.safetensors,
 * which `adb pull` + `dcl import-weights RUN FILE` bring back into the run.
 */
class MainActivity : Activity() {
    private val worker = Executors.newSingleThreadExecutor()
    private val main = Handler(Looper.getMainLooper())
    private lateinit var bundle: Bundle
    private lateinit var log: TextView
    private lateinit var image: ImageView
    private var runtime = RuntimeKind.EXECUTORCH
    private var sample = 0

    override fun onCreate(savedInstanceState: AndroidBundle?) {
        super.onCreate(savedInstanceState)
        val root = LinearLayout(this).apply { orientation = LinearLayout.VERTICAL; setPadding(24, 24, 24, 24) }
        val picker = Spinner(this).apply {
            adapter = ArrayAdapter(this@MainActivity, android.R.layout.simple_spinner_dropdown_item, RuntimeKind.entries.map { it.display })
            onItemSelectedListener = object : AdapterView.OnItemSelectedListener {
                override fun onItemSelected(p: AdapterView<*>?, v: View?, position: Int, id: Long) { runtime = RuntimeKind.entries[position] }
                override fun onNothingSelected(p: AdapterView<*>?) {}
            }
        }
        image = ImageView(this).apply { minimumHeight = 280; minimumWidth = 280; scaleType = ImageView.ScaleType.FIT_CENTER }
        val classify = Button(this).apply { text = "Classify next sample"; setOnClickListener { classify() } }
        val train = Button(this).apply { text = "Train on device (20 steps)"; setOnClickListener { train(20) } }
        log = TextView(this).apply { textSize = 13f }
        listOf(picker, image, classify, train).forEach(root::addView)
        root.addView(ScrollView(this).apply { addView(log) }, LinearLayout.LayoutParams(LinearLayout.LayoutParams.MATCH_PARENT, 0, 1f))
        setContentView(root)
        background("opening the bundle") {
            bundle = BundleInstaller.open(this)
            val m = bundle.manifest
            "bundle ${m.method} for ${m.target}: programs ${m.programs.joinToString { it.name }}; " +
                "samples: ${bundle.samples().source}; every artifact passed its sha256 check"
        }
    }

    private fun classify() = background("classifying") {
        val (program, artifact) = Selection.choose(bundle.manifest, runtime, KIND_INFERENCE)
        val input = bundle.samples().batch(program.name, artifact.inputs, sample++)
        val x = input.getValue(artifact.inputs.first().name)
        main.post { image.setImageBitmap(toBitmap(x.floats!!, x.shape)) }
        val logits = Runtimes.inference(bundle, artifact).use { it.infer(input)[0] }
        val best = logits.indices.maxByOrNull { logits[it] } ?: -1
        "${runtime.display}: sample ${sample - 1} -> class $best (logit %.3f)".format(logits[best])
    }

    private fun train(steps: Int) = background("training") {
        val (program, artifact) = Selection.choose(bundle.manifest, runtime, KIND_TRAINING)
        val loop = TrainingLoop(program, artifact, bundle.samples())
        val out = File(filesDir, "weights/${artifact.name}.safetensors")
        Runtimes.training(bundle, artifact).use { backend ->
            loop.run(backend, steps) { step, loss -> say("${program.name} ${runtime.display} step $step: loss %.5f".format(loss)) }
            loop.export(backend, out)
        }
        "weights written to $out (adb pull it, then `dcl import-weights RUN ${out.name}`)"
    }

    private fun background(what: String, job: () -> String) {
        say("$what ...")
        worker.execute {
            val line = try { job() } catch (e: Exception) { "$what failed: ${e.message ?: e.javaClass.simpleName}" }
            say(line)
        }
    }

    private fun say(line: String) = main.post { log.append(line + "\n") }

    /** A grey [1,1,H,W] (or [1,C,H,W], first channel) image in [0,1] as a bitmap. */
    private fun toBitmap(x: FloatArray, shape: LongArray): Bitmap {
        val h = shape[shape.size - 2].toInt()
        val w = shape[shape.size - 1].toInt()
        val bmp = Bitmap.createBitmap(w, h, Bitmap.Config.ARGB_8888)
        for (i in 0 until h) for (j in 0 until w) {
            val v = (x[i * w + j].coerceIn(0f, 1f) * 255).toInt()
            bmp.setPixel(j, i, Color.rgb(v, v, v))
        }
        return bmp
    }

    override fun onDestroy() {
        worker.shutdownNow()
        super.onDestroy()
    }
}
