package org.dcl.demo.core

import org.json.JSONArray
import org.json.JSONObject

/** A bundle problem (unknown format version, corrupt or missing file, no such program): one line. */
class BundleException(message: String) : Exception(message)

data class TensorSpec(val name: String, val shape: List<Long>, val dtype: String) {
    /** Elements of one tensor of this spec; a dynamic (-1) leading dimension counts as 1. */
    val numel: Int get() = shape.fold(1L) { acc, d -> acc * (if (d < 0) 1 else d) }.toInt()
}

data class FileEntry(val path: String, val sha256: String, val bytes: Long)

/** torch.optim.SGD's hyper-parameters, as the manifest records them. */
data class Optimizer(
    val name: String,
    val lr: Double,
    val momentum: Double,
    val weightDecay: Double,
    val dampening: Double,
    val nesterov: Boolean,
)

data class Artifact(
    val name: String,
    val path: String,
    val format: String,
    val kind: String,
    val sha256: String,
    val bytes: Long,
    val inputs: List<TensorSpec>,
    val outputs: List<TensorSpec>,
    val trainable: List<String>,
    val loss: String?,
    val optimizer: Optimizer?,
    val files: List<FileEntry>,
    /** Format-specific facts (signature names, weight keys, ORT's training files, ...). */
    val details: JSONObject,
) {
    val isTraining: Boolean get() = kind == KIND_TRAINING
}

data class Program(val name: String, val artifacts: List<Artifact>, val notExported: List<JSONObject>, val extra: JSONObject)

data class Manifest(
    val formatVersion: Int,
    val method: String,
    val target: String,
    val created: String,
    val toolVersions: Map<String, String>,
    val programs: List<Program>,
) {
    val artifacts: List<Artifact> get() = programs.flatMap { it.artifacts }

    fun program(name: String): Program = programs.firstOrNull { it.name == name }
        ?: throw BundleException("no program named '$name' in the bundle; it has: ${programs.joinToString { it.name }}")

    fun artifact(name: String): Artifact = artifacts.firstOrNull { it.name == name }
        ?: throw BundleException("no artifact named '$name' in the manifest; it has: ${artifacts.joinToString { it.name }}")
}

const val KIND_INFERENCE = "inference"
const val KIND_TRAINING = "training"

/** manifest.json -> [Manifest], strictly: the same contract as dcl_core/bundle.py (format_version 2). */
object ManifestParser {
    /** The only version this app reads; dcl_core/manifest.schema.json pins the same constant. */
    const val FORMAT_VERSION = 2

    /** Keys every manifest / program / artifact must have (the JVM tests compare with the schema). */
    val MANIFEST_REQUIRED = listOf("format_version", "method", "target", "programs")
    val PROGRAM_REQUIRED = listOf("name", "artifacts")
    val ARTIFACT_REQUIRED = listOf("name", "path", "format", "kind", "sha256", "bytes", "inputs", "outputs", "files")

    fun parse(text: String): Manifest {
        val root = try {
            JSONObject(text)
        } catch (e: Exception) {
            throw BundleException("manifest.json is not JSON (${e.message}); re-run `dcl export`")
        }
        val version = root.opt("format_version")
        if (version !is Int || version != FORMAT_VERSION) {
            throw BundleException(
                "manifest.json has format_version $version; this app reads version $FORMAT_VERSION: " +
                    "re-run `dcl export` and `dcl bundle` with the dcl that matches this app"
            )
        }
        return try {
            require(root, MANIFEST_REQUIRED, "manifest")
            val tools = root.optJSONObject("tool_versions") ?: JSONObject()
            Manifest(
                formatVersion = version,
                method = root.getString("method"),
                target = root.getString("target"),
                created = root.optString("created", ""),
                toolVersions = tools.keys().asSequence().associateWith { tools.get(it).toString() },
                programs = objects(root.getJSONArray("programs")).map(::program),
            )
        } catch (e: BundleException) {
            throw e
        } catch (e: Exception) {
            throw BundleException("manifest.json is corrupt (${e.message}); re-run `dcl export`")
        }
    }

    private fun program(o: JSONObject): Program {
        require(o, PROGRAM_REQUIRED, "program")
        return Program(
            o.getString("name"),
            objects(o.getJSONArray("artifacts")).map(::artifact),
            objects(o.optJSONArray("not_exported") ?: JSONArray()),
            o.optJSONObject("extra") ?: JSONObject(),
        )
    }

    private fun artifact(o: JSONObject): Artifact {
        require(o, ARTIFACT_REQUIRED, "artifact ${o.optString("name")}")
        val kind = o.getString("kind")
        if (kind != KIND_INFERENCE && kind != KIND_TRAINING) throw BundleException("artifact ${o.getString("name")} has unknown kind '$kind'")
        val opt = o.optJSONObject("optimizer")
        return Artifact(
            name = o.getString("name"),
            path = o.getString("path"),
            format = o.getString("format"),
            kind = kind,
            sha256 = o.getString("sha256"),
            bytes = o.getLong("bytes"),
            inputs = objects(o.getJSONArray("inputs")).map(::spec),
            outputs = objects(o.getJSONArray("outputs")).map(::spec),
            trainable = strings(o.optJSONArray("trainable") ?: JSONArray()),
            loss = if (o.isNull("loss")) null else o.optString("loss"),
            optimizer = opt?.let {
                Optimizer(
                    it.optString("name", "sgd"), it.getDouble("lr"), it.optDouble("momentum", 0.0),
                    it.optDouble("weight_decay", 0.0), it.optDouble("dampening", 0.0), it.optBoolean("nesterov", false),
                )
            },
            files = objects(o.getJSONArray("files")).map { FileEntry(it.getString("path"), it.getString("sha256"), it.getLong("bytes")) },
            details = o.optJSONObject("details") ?: JSONObject(),
        )
    }

    private fun spec(o: JSONObject): TensorSpec {
        val shape = o.getJSONArray("shape")
        return TensorSpec(o.getString("name"), (0 until shape.length()).map { shape.getLong(it) }, o.getString("dtype"))
    }

    private fun require(o: JSONObject, keys: List<String>, what: String) {
        val missing = keys.filter { !o.has(it) }
        if (missing.isNotEmpty()) throw BundleException("manifest.json is corrupt: $what lacks $missing; re-run `dcl export`")
    }

    internal fun objects(a: JSONArray): List<JSONObject> = (0 until a.length()).map { a.getJSONObject(it) }

    internal fun strings(a: JSONArray): List<String> = (0 until a.length()).map { a.getString(it) }
}
