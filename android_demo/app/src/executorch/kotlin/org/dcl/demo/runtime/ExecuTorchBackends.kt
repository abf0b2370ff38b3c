package org.dcl.demo.runtime

import java.io.File
import org.dcl.demo.core.Artifact
import org.dcl.demo.core.BundleException
import org.dcl.demo.core.HostTensor
import org.dcl.demo.core.InferenceBackend
import org.dcl.demo.core.TrainingBackend
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import org.pytorch.executorch.training.SGD
import org.pytorch.executorch.training.TrainingModule

/** Mirrors exporters/executorch/runner.py with executorch-android (org.pytorch.executorch). */
internal object Et {
    fun tensor(t: HostTensor, dtype: String): Tensor = when (dtype) {
        "float32" -> Tensor.fromBlob(t.floats ?: t.longs!!.map { it.toFloat() }.toFloatArray(), t.shape)
        "int64" -> Tensor.fromBlob(t.longs ?: t.floats!!.map { it.toLong() }.toLongArray(), t.shape)
        else -> throw BundleException("ExecuTorch input ${t.name} has dtype $dtype; the app feeds float32 and int64")
    }

    fun inputs(artifact: Artifact, given: Map<String, HostTensor>): Array<EValue> = artifact.inputs.map { s ->
        EValue.from(tensor(given[s.name] ?: throw BundleException("the ExecuTorch program needs input ${s.name}"), s.dtype))
    }.toTypedArray()

    /** The .pte and optional external weights (.ptd) of an artifact: a file, or a folder holding both. */
    fun files(path: File, artifact: Artifact): Pair<File, File?> {
        if (path.isFile) return path to null
        val d = artifact.details
        val program = File(path, d.optString("program", "${artifact.name}.pte"))
        val data = if (d.isNull("data") || d.optString("data").isEmpty()) null else File(path, d.getString("data"))
        return program to data
    }
}

class ExecuTorchInference(path: File, private val artifact: Artifact, threads: Int) : InferenceBackend {
    private val method = artifact.details.optString("method", "forward")
    private val module = Module.load(Et.files(path, artifact).first.path, Module.LOAD_MODE_MMAP, threads)

    override fun infer(inputs: Map<String, HostTensor>): List<FloatArray> =
        module.execute(method, *Et.inputs(artifact, inputs)).take(artifact.outputs.size).map { it.toTensor().dataAsFloatArray }

    override fun close() = module.destroy()
}

/**
 * The joint forward/backward program: "forward" returns the loss first, then gradients and
 * parameters (offsets in the program's __et_training_* methods, which TrainingModule reads); the
 * optimizer is ExecuTorch's SGD with the manifest's hyper-parameters (momentum and weight decay
 * included), stepping the module's parameter tensors in place.
 */
class ExecuTorchTraining(path: File, private val artifact: Artifact) : TrainingBackend {
    private val method = artifact.details.optString("method", "forward")
    private val module: TrainingModule
    private val toTorch: Map<String, String>
    private var sgd: SGD? = null

    init {
        val (program, data) = Et.files(path, artifact)
        module = if (data != null) TrainingModule.load(program.path, data.path) else TrainingModule.load(program.path)
        val p = artifact.details.optJSONObject("parameters")
            ?: throw BundleException("${artifact.name}: details.parameters is missing; re-run `dcl export`")
        toTorch = p.keys().asSequence().associateWith { p.getString(it) }
        val opt = artifact.optimizer ?: throw BundleException("${artifact.name} records no optimizer; re-run `dcl export`")
        if (opt.name != "sgd") throw BundleException("${artifact.name} asks for optimizer ${opt.name}; the app runs SGD")
    }

    override fun step(batch: Map<String, HostTensor>): Float {
        val out = module.executeForwardBackward(method, *Et.inputs(artifact, batch))
        val loss = out[0].toTensor().dataAsFloatArray[0]
        val o = artifact.optimizer!!
        // parameters alias the runtime's weights: created after the first forward/backward, as the
        // official TrainingModule example does, then reused so momentum buffers persist
        val opt = sgd ?: SGD.create(module.namedParameters(method), o.lr, o.momentum, o.dampening, o.weightDecay, o.nesterov)
            .also { sgd = it }
        opt.step(module.namedGradients(method))
        return loss
    }

    override fun weights(): Map<String, HostTensor> = module.namedParameters(method).entries.associate { (name, t) ->
        val torch = toTorch[name] ?: throw BundleException("ExecuTorch trains $name, which the manifest does not map to a PyTorch name")
        torch to HostTensor.of(torch, t.shape(), t.dataAsFloatArray)
    }

    override fun close() = module.close()
}
