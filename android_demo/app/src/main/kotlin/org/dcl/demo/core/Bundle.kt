package org.dcl.demo.core

import java.io.File
import java.security.MessageDigest

/**
 * A bundle on disk (what `dcl bundle --app` put in the app's assets, copied to the app's files):
 * manifest.json, the artifacts and samples/. Opening it parses the manifest (refusing an unknown
 * format_version) and checks the sha256 of every file of every artifact before any runtime sees one.
 */
class Bundle private constructor(val root: File, val manifest: Manifest) {

    /** The artifact's path on disk (a file, or the folder of ORT's training artifacts). */
    fun file(artifact: Artifact): File = inside(artifact.path)

    fun samples(): Samples = Samples.read(root)

    private fun inside(rel: String): File {
        val f = File(root, rel).canonicalFile
        if (!f.path.startsWith(root.canonicalFile.path + File.separator)) {
            throw BundleException("manifest path '$rel' points outside the bundle; re-run `dcl bundle`")
        }
        return f
    }

    /** Every file's sha256 and byte count, and the artifact's own hash (a folder's = hash of its file list). */
    fun verify(artifact: Artifact) {
        if (artifact.files.isEmpty()) throw BundleException("artifact ${artifact.name} lists no files; re-run `dcl export`")
        for (e in artifact.files) {
            val f = inside(e.path)
            if (!f.isFile) throw BundleException("bundle file ${e.path} is missing; re-run `dcl bundle`")
            if (f.length() != e.bytes || sha256(f) != e.sha256) {
                throw BundleException("bundle file ${e.path} fails its sha256 check (corrupt or modified); re-run `dcl bundle`")
            }
        }
        val whole = if (artifact.files.size == 1 && artifact.files[0].path == artifact.path) artifact.files[0].sha256
        else folderHash(artifact.files)
        if (whole != artifact.sha256) {
            throw BundleException("artifact ${artifact.name}: its files do not add up to its sha256; re-run `dcl export`")
        }
    }

    companion object {
        const val MANIFEST = "manifest.json"

        fun open(root: File, verify: Boolean = true): Bundle {
            val m = File(root, MANIFEST)
            if (!m.isFile) throw BundleException("$m is missing; run `dcl bundle BUNDLE --app android_demo` first")
            val bundle = Bundle(root, ManifestParser.parse(m.readText()))
            if (verify) bundle.manifest.artifacts.forEach(bundle::verify)
            return bundle
        }

        fun sha256(f: File): String {
            val md = MessageDigest.getInstance("SHA-256")
            f.inputStream().use { s ->
                val buf = ByteArray(1 shl 16)
                while (true) {
                    val n = s.read(buf)
                    if (n < 0) break
                    md.update(buf, 0, n)
                }
            }
            return hex(md.digest())
        }

        /** dcl_core.bundle.describe_files: sha256 over "path\0sha\n" of the sorted file entries. */
        fun folderHash(files: List<FileEntry>): String {
            val text = files.sortedBy { it.path }.joinToString("") { "${it.path}\u0000${it.sha256}\n" }
            return hex(MessageDigest.getInstance("SHA-256").digest(text.toByteArray(Charsets.UTF_8)))
        }

        private fun hex(b: ByteArray): String = b.joinToString("") { "%02x".format(it) }
    }
}

/** The runtimes this app embeds, by the manifest's format names. */
enum class RuntimeKind(val format: String, val display: String) {
    EXECUTORCH("executorch", "ExecuTorch"),
    ONNX("onnx", "ONNX Runtime"),
    TFLITE("tflite", "LiteRT (TFLite)");

    companion object {
        fun of(format: String): RuntimeKind = entries.firstOrNull { it.format == format }
            ?: throw BundleException("format '$format' does not run in this app (it runs ${entries.joinToString { it.format }})")
    }
}

/** Which artifact to run: the program (default: the first) and the runtime's artifact of a kind. */
object Selection {
    fun choose(manifest: Manifest, runtime: RuntimeKind, kind: String, program: String? = null): Pair<Program, Artifact> {
        val p = if (program == null) manifest.programs.firstOrNull() ?: throw BundleException("the bundle has no programs")
        else manifest.program(program)
        val a = p.artifacts.firstOrNull { it.format == runtime.format && it.kind == kind }
        if (a == null) {
            val why = p.notExported.firstOrNull { it.optString("format") == runtime.format && it.optString("kind") == kind }
                ?.optString("reason")
            throw BundleException("program ${p.name} has no ${runtime.display} $kind artifact" + (why?.let { ": $it" } ?: ""))
        }
        return p to a
    }

    /** Programs that have a training artifact for the runtime (DC-CCL: device_step). */
    fun trainable(manifest: Manifest, runtime: RuntimeKind): List<Program> =
        manifest.programs.filter { p -> p.artifacts.any { it.format == runtime.format && it.isTraining } }
}
